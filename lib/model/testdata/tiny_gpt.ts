/**
 * The tiny GPT shape tests across the project build models from: small enough for finite
 * differences and per-target oracles, with every kind of layer present.
 *
 * @module
 */
import type { GPTConfig } from "../gpt.ts";

/** 2 layers, 2 heads, d_model 8, MLP 16, context 6, vocabulary 11. */
export const TINY: Readonly<GPTConfig> = Object.freeze({
  nLayer: 2,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 6,
  vocabSize: 11,
  lnEps: 1e-5,
});

/**
 * The tiny GPT shape tests across the project build models from: small enough for finite
 * differences and per-target oracles, with every kind of layer present.
 *
 * @module
 */
import { saveCheckpoint } from "../checkpoint.ts";
import { GPT, type GPTConfig } from "../gpt.ts";
import { gptTensors } from "../gpt_checkpoint.ts";

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

/**
 * 1 layer, 2 heads, d_model 8, MLP 16, context 16, vocabulary 128: a character-level model (any
 * text encodes) whose activation caches fill in milliseconds, for tests of whole runs.
 */
export const CHAR_TINY: Readonly<GPTConfig> = Object.freeze({
  nLayer: 1,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 16,
  vocabSize: 128,
  lnEps: 1e-5,
});

/**
 * Writes a randomly initialised character-level model as a trained-model folder (what
 * `deno task train-model` leaves), for tests that need a model on disk.
 *
 * @param dir The folder to create.
 * @param config The model shape.
 * @param seed The initialisation seed.
 */
export async function saveRandomToyModel(
  dir: string,
  config: GPTConfig,
  seed: number,
): Promise<void> {
  const model = GPT.init(config, seed);
  try {
    await saveCheckpoint(dir, {
      config: { format: "scalar-lab/gpt", model: config, tokenizer: "char" },
      params: gptTensors(config, await model.parameterValues()),
    });
  } finally {
    model.dispose();
  }
}

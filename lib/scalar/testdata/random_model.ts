/**
 * A toy GPT for the VJP tests whose every parameter is drawn, so that no path through a block is
 * trivial (a fresh `GPT.init` has zero biases and unit norm gains).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { GPT, type GPTConfig } from "../../model/gpt.ts";
import { createRng, normalArray } from "../../util/rng.ts";

/**
 * A model with every parameter drawn N(0, 0.4), norm gains around 1 and DynamicTanh's α at 0.7.
 *
 * @param config The model's shape.
 * @param seed Seed of the init and of the draws.
 * @returns The model (the caller disposes it).
 *
 * @example
 * ```ts
 * import { TINY } from "../../model/testdata/tiny_gpt.ts";
 * import { randomModel } from "./random_model.ts";
 * randomModel(TINY, 1).dispose();
 * ```
 */
export function randomModel(config: GPTConfig, seed: number): GPT {
  const model = GPT.init(config, seed);
  const rng = createRng(seed + 1);
  for (const [name, v] of model.params) {
    const values = normalArray(rng, v.size, 0.4);
    if (/ln_.*\.(weight|gamma)$/.test(name)) values.forEach((x, i) => values[i] = 1 + x);
    if (name.endsWith(".alpha")) values.fill(0.7);
    v.assign(tf.tensor(values, v.shape));
  }
  return model;
}

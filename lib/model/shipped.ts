/**
 * The models committed with the project, by folder, with the sha256 of their weights: a run on a
 * shipped model is checked against it, so an edited or damaged copy stops the run with a message
 * instead of giving results under the shipped model's name.
 *
 * @module
 */

/** A model committed in the repository's `models/` folder. */
export interface ShippedModel {
  /** Lower-case hex sha256 of its `model.safetensors`. */
  sha256: string;
  /** Its validation loss (nats per character) at the checkpoint kept. */
  valLoss: number;
  /** The manifest that trains it again. */
  manifest: string;
}

/** Every shipped model, by folder relative to the repository root. */
export const SHIPPED_MODELS: Readonly<Record<string, ShippedModel>> = Object.freeze({
  "models/toy-model": {
    sha256: "47af873f66a1dfc688b4a19ee73eb7f672103bc50f985bc3904c8f72e5ccb5ae",
    valLoss: 1.6023,
    manifest: "experiments/toy-model.yaml",
  },
});

/**
 * Why a model folder's weights cannot stand for the shipped model of that folder, if they cannot.
 *
 * @param dir The folder as a manifest names it, normalised (no `./`, no trailing slash).
 * @param sha256 The sha256 of the folder's `model.safetensors`.
 * @param shipped The registry to check against.
 * @returns A message naming both hashes and how to restore the folder, or `undefined` when the
 * folder is not a shipped one or holds the shipped weights.
 *
 * @example
 * ```ts
 * import { equal, match } from "node:assert/strict";
 * import { shippedModelProblem } from "./shipped.ts";
 *
 * const shipped = { "models/m": { sha256: "ab".repeat(32), valLoss: 1.6, manifest: "m.yaml" } };
 * equal(shippedModelProblem("models/m", "ab".repeat(32), shipped), undefined);
 * equal(shippedModelProblem("results/models/m", "cd".repeat(32), shipped), undefined);
 * match(shippedModelProblem("models/m", "cd".repeat(32), shipped)!, /git checkout -- models\/m/);
 * ```
 */
export function shippedModelProblem(
  dir: string,
  sha256: string,
  shipped: Readonly<Record<string, ShippedModel>> = SHIPPED_MODELS,
): string | undefined {
  const entry = shipped[dir];
  if (entry === undefined || entry.sha256 === sha256) return undefined;
  return `Cannot use shipped model "${dir}": its weights' sha256 is ${sha256.slice(0, 12)}…, ` +
    `the shipped model's is ${entry.sha256.slice(0, 12)}…; restore it with ` +
    `\`git checkout -- ${dir}\` (or train it again with \`deno task train-model ` +
    `${entry.manifest}\` into a folder of another name)`;
}

/**
 * Activations SAE-training tests can learn: each token is the sum of 2 of 12 fixed random
 * directions with random scales, so a small SAE with k = 2 reconstructs them well.
 *
 * @module
 */
import { createRng } from "../../util/rng.ts";
import type { ActivationSource } from "../train.ts";

/**
 * Builds the source, the same for every call with the same arguments.
 *
 * @param tokens Rows per hook.
 * @param hooks The hooks it serves.
 * @param d Width of each row.
 * @param poison A row of one hook set to NaN, to test divergence detection.
 * @returns The source.
 */
export function sparseSource(
  tokens: number,
  hooks: readonly string[],
  d: number,
  poison?: { hook: string; row: number },
): ActivationSource {
  const rng = createRng(4);
  const dirs = Array.from({ length: 12 }, () => Array.from({ length: d }, () => rng.normal()));
  const data = new Map(hooks.map((h) => {
    const a = new Float32Array(tokens * d);
    for (let t = 0; t < tokens; t++) {
      for (let n = 0; n < 2; n++) {
        const dir = dirs[rng.int(12)]!, scale = 1 + rng.uniform();
        for (let i = 0; i < d; i++) a[t * d + i]! += scale * dir[i]!;
      }
    }
    if (poison?.hook === h) a[poison.row * d] = NaN;
    return [h, a];
  }));
  return {
    tokens,
    batch: (hooks, start, count) =>
      Promise.resolve(
        new Map(hooks.map((h) => [h, data.get(h)!.slice(start * d, (start + count) * d)])),
      ),
  };
}

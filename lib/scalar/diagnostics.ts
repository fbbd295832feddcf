/**
 * Staircase diagnostics of one SAE pair (issue 16): how much of the downstream SAE's activity sits
 * in the chunk it shares with the upstream SAE, and how many of the top-ranked edges connect a
 * latent to itself. A Staircase pair's downstream SAE uses the upstream dictionary as its first
 * chunk (latent i is the same direction at both hooks), so a feature that merely passes through the
 * segment can stay one latent and its edge i → i can carry it; these two numbers say how far that
 * happens. For TopK pairs (independent dictionaries) they are the chance baseline: every downstream
 * latent counts as "shared" when the widths are equal, and a diagonal edge means nothing special.
 *
 * Stored per pair with the run's metrics, under SAELens-style names ({@link DIAGNOSTIC_METRICS}).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { evalBatches } from "../data/batches.ts";
import type { GPT } from "../model/gpt.ts";
import type { SaeSet } from "../sae/architectures.ts";
import { encode } from "../sae/sae.ts";

/** The edge counts n whose top-n diagonal share is stored. */
export const DIAGONAL_TOP_N: readonly number[] = Object.freeze([512, 4096, 32768]);

/** The metric names {@link pairDiagnostics} returns, in order. */
export const DIAGNOSTIC_METRICS: readonly string[] = Object.freeze([
  "shared_chunk_fraction",
  ...DIAGONAL_TOP_N.map((n) => `diagonal_share_top${n}`),
]);

/**
 * The fraction of a downstream SAE's activity that lies in the shared chunk: Σ_{j < shared} c_j /
 * Σ_j c_j, where c_j counts the tokens on which latent j is active, i.e. the share of all (token,
 * active latent) pairs whose latent index is below the upstream SAE's width.
 *
 * @param activeCounts Per downstream latent, the tokens it is active on.
 * @param shared The upstream SAE's width (the shared chunk is latents 0 … shared − 1).
 * @returns The fraction in [0, 1]; NaN when no latent is ever active.
 * @throws {RangeError} If `shared` is not an integer in [0, latents].
 *
 * @example Latents 0–1 shared: 3 + 1 of 8 activations
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { sharedChunkFraction } from "./diagnostics.ts";
 * equal(sharedChunkFraction([3, 1, 0, 4], 2), 0.5);
 * ```
 */
export function sharedChunkFraction(activeCounts: ArrayLike<number>, shared: number): number {
  if (!Number.isInteger(shared) || shared < 0 || shared > activeCounts.length) {
    throw new RangeError(
      `Cannot take a shared chunk of ${shared} latents of ${activeCounts.length}: need an ` +
        `integer in [0, ${activeCounts.length}]`,
    );
  }
  let inShared = 0, total = 0;
  for (let j = 0; j < activeCounts.length; j++) {
    total += activeCounts[j]!;
    if (j < shared) inShared += activeCounts[j]!;
  }
  return inShared / total;
}

/**
 * The share of the first n ranked edges that are diagonal (upstream latent i → downstream latent
 * i). Flat edge index e = i · F_down + j, as `rankEdges` orders them. An order shorter than n (a
 * pair with fewer edges) counts over all of its edges.
 *
 * @param order Ranked flat edge indices, the edge kept first at position 0.
 * @param fDown Downstream latent count F_down.
 * @param n How many leading edges to look at.
 * @returns The share in [0, 1]; NaN for an empty order.
 * @throws {RangeError} If n or F_down is not a positive integer.
 *
 * @example 2 × 3 pair: edges (0,0), (1,2), (1,1) → 2 of 3 diagonal
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { diagonalShare } from "./diagnostics.ts";
 * equal(diagonalShare(new Int32Array([0, 5, 4, 1]), 3, 3), 2 / 3);
 * ```
 */
export function diagonalShare(order: ArrayLike<number>, fDown: number, n: number): number {
  if (!Number.isSafeInteger(n) || n <= 0 || !Number.isSafeInteger(fDown) || fDown <= 0) {
    throw new RangeError(
      `Cannot take the diagonal share of the top ${n} edges with ${fDown} downstream latents: ` +
        `need positive integers`,
    );
  }
  const m = Math.min(n, order.length);
  let diagonal = 0;
  for (let e = 0; e < m; e++) {
    const edge = order[e]!;
    if (edge % fDown === Math.floor(edge / fDown)) diagonal++;
  }
  return diagonal / m;
}

/**
 * Both diagnostics of one pair, named as they are stored: `shared_chunk_fraction` and
 * `diagonal_share_top{n}` for n in {@link DIAGONAL_TOP_N}.
 *
 * @param o The pair's ranked edges, its widths, and the downstream latents' active-token counts.
 * @returns Metric name → value, in the order of {@link DIAGNOSTIC_METRICS}.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { pairDiagnostics } from "./diagnostics.ts";
 * const d = pairDiagnostics({ order: [0, 3, 1, 2], fUp: 2, fDown: 2, activeCounts: [1, 1] });
 * equal(d.shared_chunk_fraction, 1);
 * equal(d.diagonal_share_top512, 0.5);
 * ```
 */
export function pairDiagnostics(o: {
  order: ArrayLike<number>;
  fUp: number;
  fDown: number;
  activeCounts: ArrayLike<number>;
}): Record<string, number> {
  const out: Record<string, number> = {
    shared_chunk_fraction: sharedChunkFraction(o.activeCounts, Math.min(o.fUp, o.fDown)),
  };
  for (const n of DIAGONAL_TOP_N) {
    out[`diagonal_share_top${n}`] = diagonalShare(o.order, o.fDown, n);
  }
  return out;
}

/**
 * Per latent of the SAE at `hook`, the number of evaluation tokens it is active on (feature > 0)
 * when it encodes the clean activations there: the first `sequences` non-overlapping windows of
 * n_ctx tokens of `tokens`, as the SAE metrics evaluate.
 *
 * @param o The model, SAEs, hook, tokens and batch size.
 * @returns `[F]` counts (float64).
 * @throws {RangeError} If the tokens hold fewer than sequences · n_ctx + 1, or a size is not a
 * positive integer.
 *
 * @example An untrained Staircase pair on a tiny model: at most k = 2 latents per token
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { GPT } from "../model/gpt.ts";
 * import { buildSaes } from "../sae/architectures.ts";
 * import { layoutPosition } from "../sae/positions.ts";
 * import { activeLatentCounts } from "./diagnostics.ts";
 *
 * const shape = { nLayer: 1, nHead: 1, dModel: 4, dMlp: 8, nCtx: 3, vocabSize: 5, lnEps: 1e-5 };
 * const model = GPT.init(shape, 0);
 * const layout = layoutPosition("mlp-block", 1);
 * const saes = buildSaes({ arch: "staircase", features: 4, k: 2, jsaeLambda: 0 }, layout, 4, 0);
 * const tokens = Int32Array.from({ length: 13 }, (_, i) => i % 5); // 4 windows of 3, + 1
 * const counts = await activeLatentCounts({
 *   model, saes, hook: layout.pairs[0]!.down, tokens, sequences: 4, batchSequences: 2,
 * });
 * ok(counts.length === 8 && counts.reduce((s, c) => s + c, 0) <= 4 * 3 * 2);
 * ```
 */
export async function activeLatentCounts(o: {
  model: GPT;
  saes: SaeSet;
  hook: string;
  tokens: Int32Array;
  sequences: number;
  batchSequences: number;
}): Promise<Float64Array> {
  const { model, saes, hook } = o;
  const T = model.config.nCtx;
  const counts = new Float64Array(saes.width(hook));
  const batches = evalBatches(o.tokens, {
    windows: o.sequences,
    seqLen: T,
    batchSize: o.batchSequences,
  });
  for (const batch of batches) {
    const active = tf.tidy(() => {
      const ids = tf.tensor2d(batch.inputs, [batch.shape[0], T], "int32");
      const x = model.run({ tokens: ids, stopAt: hook }).output;
      const f = encode(saes.weights(hook), x.reshape([-1, x.shape[2]!]) as tf.Tensor2D, saes.k);
      return f.greater(0).cast("float32").sum(0);
    });
    const data = await active.data();
    active.dispose();
    for (let j = 0; j < counts.length; j++) counts[j]! += data[j]!;
  }
  return counts;
}

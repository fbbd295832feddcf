/**
 * SCALAR step 1's second half and step 2's grid (SPEC §5; reference-details §5.2–5.3): the order in
 * which edges are kept, and the edge counts n at which the ablation curve is measured.
 *
 * An edge (i, j) joins upstream feature i to downstream feature j; it is addressed by its flat index
 * i · F_down + j in the row-major `[F_up, F_down]` score matrix.
 *
 * @module
 */
import { createRng } from "../util/rng.ts";

/**
 * The reference's 35 edge counts (≈ ⌊2^(m/2)⌋ rounded down in float, duplicates removed), used
 * verbatim. The list stops at 2^18 = 512 × 512 for every pair: Staircase pairs have more edges
 * (E_tot = 2^19 at `mlp-block`, 2^18·(l+1)(l+2) along the `block` chain), so their curves cover only a
 * prefix of their edges and never reach the full circuit.
 */
export const EDGE_COUNTS: readonly number[] = Object.freeze([
  1,
  2,
  4,
  5,
  7,
  11,
  16,
  22,
  32,
  45,
  63,
  90,
  127,
  181,
  256,
  362,
  512,
  724,
  1024,
  1448,
  2048,
  2896,
  4095,
  5792,
  8191,
  11585,
  16383,
  23170,
  32768,
  46340,
  65536,
  92681,
  131072,
  185363,
  262144,
]);

/**
 * The edge counts to measure for a pair with `eTot` edges: the counts of {@link EDGE_COUNTS} below
 * E_tot, then E_tot itself when it is within the list's range (≤ 2^18), so that a pair smaller than
 * the toy model's 512 × 512 still ends at its full circuit, as the 512 × 512 pairs do at 2^18. At
 * n = E_tot the curve uses the full-circuit features unchanged (reference-details §5.4). A pair with
 * E_tot > 2^18 (Staircase) gets the whole list and stops at 2^18, as the reference does, so its last
 * point is not the full circuit.
 *
 * @param eTot The pair's edge count F_up · F_down.
 * @returns Increasing edge counts, each ≤ eTot.
 * @throws {RangeError} If eTot is not a positive integer.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { edgeCounts } from "./ranking.ts";
 * deepEqual(edgeCounts(6 * 6), [1, 2, 4, 5, 7, 11, 16, 22, 32, 36]);
 * deepEqual(edgeCounts(512 * 1024).at(-1), 262144);
 * ```
 */
export function edgeCounts(eTot: number): number[] {
  if (!Number.isSafeInteger(eTot) || eTot <= 0) {
    throw new RangeError(`Cannot list edge counts for ${eTot} edges: need a positive integer`);
  }
  const counts = EDGE_COUNTS.filter((n) => n < eTot);
  if (eTot <= EDGE_COUNTS.at(-1)!) counts.push(eTot);
  return counts;
}

/**
 * Orders the edges of a pair by score, as the reference's `get_attribution_rankings` does: strictly
 * positive scores first, descending (equal scores: lower flat index first, so the order does not
 * depend on the sort's stability); then every edge whose score is exactly 0, in a random order drawn
 * from `seed` (Fisher–Yates with `createRng(seed)`; the reference shuffles with Python's
 * `random.seed(125)`, which we cannot reproduce bit for bit); then negative scores, descending (the
 * integrated-gradient scores are root-sum-squares, so there are none in practice).
 *
 * @param scores Edge scores, row-major `[fUp, fDown]`: `scores[i · fDown + j]` for edge (i, j).
 * @param fUp Upstream feature count.
 * @param fDown Downstream feature count.
 * @param seed Seed of the shuffle of the zero-score edges.
 * @returns Every flat edge index exactly once, the edge to keep first at position 0.
 * @throws {RangeError} If the matrix size does not match or a score is NaN.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { rankEdges } from "./ranking.ts";
 * // 1 × 3 pair: edge 1 (score 0.5) before edge 2 (0.2); edge 0 (score 0) last.
 * deepEqual([...rankEdges(new Float32Array([0, 0.5, 0.2]), 1, 3, 125)], [1, 2, 0]);
 * ```
 */
export function rankEdges(
  scores: Float32Array,
  fUp: number,
  fDown: number,
  seed: number,
): Int32Array {
  const eTot = fUp * fDown;
  if (!Number.isSafeInteger(eTot) || fUp <= 0 || fDown <= 0 || scores.length !== eTot) {
    throw new RangeError(
      `Cannot rank ${scores.length} edge scores as ${fUp} x ${fDown}: need ${eTot} scores`,
    );
  }
  if (eTot > 2 ** 31 - 1) {
    throw new RangeError(
      `Cannot rank ${eTot} edges (${fUp} x ${fDown}): more than an Int32Array indexes`,
    );
  }
  // One typed array in three segments (positive, zero, negative): GPT-2 pairs have ~10⁹ edges,
  // which JS arrays of numbers would hold at twice the memory and off the heap's limits.
  let nPositive = 0, nZero = 0;
  for (let e = 0; e < eTot; e++) {
    const s = scores[e]!;
    if (s > 0) nPositive++;
    else if (s === 0) nZero++; // -0 counts as zero too
    else if (!(s < 0)) throw new RangeError(`Cannot rank edge scores: score ${e} is NaN`);
  }
  const order = new Int32Array(eTot);
  let p = 0, z = nPositive, n = nPositive + nZero;
  for (let e = 0; e < eTot; e++) {
    const s = scores[e]!;
    if (s > 0) order[p++] = e;
    else if (s === 0) order[z++] = e;
    else order[n++] = e;
  }
  const byScore = (a: number, b: number) => scores[b]! - scores[a]! || a - b;
  order.subarray(0, nPositive).sort(byScore);
  order.subarray(nPositive + nZero).sort(byScore);
  const zero = order.subarray(nPositive, nPositive + nZero);
  const rng = createRng(seed);
  for (let i = zero.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = zero[i]!;
    zero[i] = zero[j]!;
    zero[j] = t;
  }
  return order;
}

import assert from "node:assert/strict";
import { EDGE_COUNTS, edgeCounts, rankEdges } from "./ranking.ts";

Deno.test("EDGE_COUNTS is the reference's list of 35 counts, ending at 2^18", () => {
  assert.equal(EDGE_COUNTS.length, 35);
  assert.equal(EDGE_COUNTS[0], 1);
  assert.equal(EDGE_COUNTS.at(-1), 2 ** 18);
  assert.ok(EDGE_COUNTS.every((n, i) => i === 0 || n > EDGE_COUNTS[i - 1]!));
  // Float round-down of 2^(m/2), as printed in the reference (4095, not 4096).
  assert.ok(EDGE_COUNTS.includes(4095) && EDGE_COUNTS.includes(185363));
});

Deno.test("edgeCounts() caps the list at E_tot and ends small pairs at E_tot", () => {
  assert.deepEqual(edgeCounts(512 * 512), [...EDGE_COUNTS]);
  // Staircase pairs: the reference stops at 2^18 although E_tot is larger.
  assert.deepEqual(edgeCounts(512 * 1024), [...EDGE_COUNTS]);
  assert.deepEqual(edgeCounts(9), [1, 2, 4, 5, 7, 9]);
  assert.deepEqual(edgeCounts(1), [1]);
  assert.throws(() => edgeCounts(0), /Cannot list edge counts/);
});

Deno.test("rankEdges() orders positives descending, ties by index, then zeros by seed", () => {
  // 3 x 4 pair; positive edges 1, 5, 6 (tie at 0.7: 5 before 6), 11; the rest are zero.
  const scores = new Float32Array(12);
  scores[1] = 0.2;
  scores[5] = 0.7;
  scores[6] = 0.7;
  scores[11] = 3;
  const a = rankEdges(scores, 3, 4, 125);
  assert.deepEqual([...a.subarray(0, 4)], [11, 5, 6, 1]);
  const zeros = [0, 2, 3, 4, 7, 8, 9, 10];
  assert.deepEqual([...a.subarray(4)].sort((x, y) => x - y), zeros);
  // The zero block is a seed-determined permutation.
  assert.deepEqual(rankEdges(scores, 3, 4, 125), a);
  const others = [1, 2, 3, 4, 5].map((s) => [...rankEdges(scores, 3, 4, s).subarray(4)].join());
  assert.ok(others.some((o) => o !== [...a.subarray(4)].join()), "seeds should reorder zeros");
  assert.ok(others.every((o) => o.split(",").sort().join() === zeros.map(String).sort().join()));
});

Deno.test("rankEdges() rejects a wrong size and NaN scores", () => {
  assert.throws(
    () => rankEdges(new Float32Array(5), 2, 3, 0),
    /Cannot rank 5 edge scores as 2 x 3/,
  );
  assert.throws(() => rankEdges(new Float32Array([0, NaN]), 1, 2, 0), /score 1 is NaN/);
});

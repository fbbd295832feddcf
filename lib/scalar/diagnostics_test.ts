import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { GPT } from "../model/gpt.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";
import { buildSaes } from "../sae/architectures.ts";
import { layoutPosition } from "../sae/positions.ts";
import { encode } from "../sae/sae.ts";
import { createRng } from "../util/rng.ts";
import {
  activeLatentCounts,
  DIAGNOSTIC_METRICS,
  diagonalShare,
  pairDiagnostics,
  sharedChunkFraction,
} from "./diagnostics.ts";

Deno.test("pairDiagnostics() of a hand-built 200 x 300 pair: shared fraction and top-n diagonal shares", () => {
  const fUp = 200, fDown = 300;
  // The 200 diagonal edges (i → i) ranked first, then every other edge in index order.
  const diagonal = Array.from({ length: fUp }, (_, i) => i * fDown + i);
  const isDiagonal = new Set(diagonal);
  const rest = Array.from({ length: fUp * fDown }, (_, e) => e).filter((e) => !isDiagonal.has(e));
  const order = Int32Array.from([...diagonal, ...rest]);
  // Latents 0–199 (the shared chunk) are active 2 times each, 200–299 once each: 400 of 500.
  const activeCounts = Array.from({ length: fDown }, (_, j) => (j < fUp ? 2 : 1));
  const d = pairDiagnostics({ order, fUp, fDown, activeCounts });
  assert.deepEqual(Object.keys(d), [...DIAGNOSTIC_METRICS]);
  assert.deepEqual(d, {
    shared_chunk_fraction: 400 / 500,
    diagonal_share_top512: 200 / 512,
    diagonal_share_top4096: 200 / 4096,
    diagonal_share_top32768: 200 / 32768,
  });
  // Diagonal edges further down the order count only once they are inside the top n.
  const late = Int32Array.from([...rest.slice(0, 600), ...diagonal, ...rest.slice(600)]);
  assert.equal(diagonalShare(late, fDown, 512), 0);
  assert.equal(diagonalShare(late, fDown, 4096), 200 / 4096);
  // An order shorter than n: the share over all of it.
  assert.equal(diagonalShare(Int32Array.from([0, 1, 301]), fDown, 512), 2 / 3);
});

Deno.test("sharedChunkFraction() and diagonalShare() name what is wrong with their inputs", () => {
  assert.throws(() => sharedChunkFraction([1, 2], 3), /shared chunk of 3 latents of 2/);
  assert.throws(() => diagonalShare([0], 0, 5), /with 0 downstream latents/);
  assert.ok(Number.isNaN(sharedChunkFraction([0, 0], 1)));
});

Deno.test("activeLatentCounts() counts each latent's active tokens as the SAE encodes the hook", async () => {
  const model = GPT.init(TINY, 2);
  const layout = layoutPosition("mlp-block", TINY.nLayer);
  const saes = buildSaes(
    { arch: "staircase", features: 6, k: 2, jsaeLambda: 0 },
    layout,
    TINY.dModel,
    4,
  );
  const rng = createRng(5);
  const tokens = Int32Array.from({ length: 5 * TINY.nCtx + 1 }, () => rng.int(TINY.vocabSize));
  const hook = layout.pairs[0]!.down;
  const counts = await activeLatentCounts({
    model,
    saes,
    hook,
    tokens,
    sequences: 5,
    batchSequences: 2,
  });
  const direct = tf.tidy(() => {
    const ids = tf.tensor2d(tokens.subarray(0, 5 * TINY.nCtx), [5, TINY.nCtx], "int32");
    const x = model.run({ tokens: ids, stopAt: hook }).output.reshape([-1, TINY.dModel]);
    return encode(saes.weights(hook), x as tf.Tensor2D, 2).greater(0).cast("float32").sum(0);
  });
  assert.equal(counts.length, 12);
  assert.deepEqual([...counts], [...(await direct.data())]);
  // Each of the 30 tokens keeps at most k = 2 latents.
  const total = counts.reduce((s, c) => s + c, 0);
  assert.ok(total > 0 && total <= 60, String(total));
  direct.dispose();
  saes.dispose();
  model.dispose();
});

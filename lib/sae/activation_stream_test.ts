import assert from "node:assert/strict";
import { GPT } from "../model/gpt.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";
import { createRng } from "../util/rng.ts";
import { ensureActivationCache } from "./activation_cache.ts";
import { streamActivations } from "./activation_stream.ts";

const SEQ = 5, WINDOWS = 7;
const TOKENS = (() => {
  const rng = createRng(9);
  return Int32Array.from({ length: WINDOWS * SEQ + 2 }, () => rng.int(TINY.vocabSize));
})();
const HOOKS = ["blocks.1.hook_resid_post", "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_post"];

Deno.test("streamActivations() gives the rows an activation cache of the same tokens holds", async () => {
  const model = GPT.init(TINY, 4);
  const root = await Deno.makeTempDir();
  try {
    const cache = await ensureActivationCache({
      model,
      tokens: TOKENS,
      seqLen: SEQ,
      hooks: HOOKS,
      root,
      key: { modelSha256: "a".repeat(64), corpusSha256: "b".repeat(64), split: "train" },
      log: () => {},
    });
    // Two windows per model call: a batch of 3 windows needs two calls, one of them partial.
    const stream = streamActivations({ model, tokens: TOKENS, seqLen: SEQ, batchSequences: 2 });
    assert.equal(stream.tokens, WINDOWS * SEQ);
    for (const [start, count] of [[0, 3 * SEQ], [4 * SEQ, 3 * SEQ], [SEQ, SEQ]]) {
      const got = await stream.batch(HOOKS, start!, count!);
      const want = await cache.batch(HOOKS, start!, count!);
      for (const h of HOOKS) {
        const [g, w] = [got.get(h)!, want.get(h)!];
        assert.equal(g.length, w.length, h);
        const err = g.reduce((m, v, i) => Math.max(m, Math.abs(v - w[i]!)), 0);
        // Batches of different size may sum in another order inside a matmul.
        assert.ok(err < 1e-5, `${h} rows [${start}, ${start! + count!}): max error ${err}`);
      }
    }
    await assert.rejects(stream.batch(HOOKS, 2, SEQ), /batches are whole windows of 5 tokens/);
    await assert.rejects(stream.batch(HOOKS, 6 * SEQ, 2 * SEQ), /within the 35 rows/);
  } finally {
    model.dispose();
    await Deno.remove(root, { recursive: true });
  }
});

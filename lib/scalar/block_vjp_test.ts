import assert from "node:assert/strict";
import { assertRelClose } from "./testdata/close.ts";
import * as tf from "@tensorflow/tfjs";
import { GPT, type GPTConfig } from "../model/gpt.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { BlockVjp, type SparseCotangents } from "./block_vjp.ts";
import { randomModel } from "./testdata/random_model.ts";

/** Random rows: row r has up to `most` entries at distinct positions below its own length. */
function randomRows(
  rows: number,
  T: number,
  D: number,
  most: number,
  seed: number,
): SparseCotangents {
  const rng = createRng(seed);
  const rowStart = [0], position: number[] = [];
  for (let r = 0; r < rows; r++) {
    // Row 1 stays empty; the others end at different positions.
    const count = r === 1 ? 0 : 1 + rng.int(most);
    const length = Math.max(count, 1 + rng.int(T));
    const picked = new Set<number>([length - 1]);
    while (picked.size < count) picked.add(rng.int(length));
    position.push(...[...picked].slice(0, count));
    rowStart.push(position.length);
  }
  const E = position.length;
  return {
    rowStart: Int32Array.from(rowStart),
    position: Int32Array.from(position),
    vector: Int32Array.from({ length: E }, (_, e) => e),
    vectors: normalArray(rng, E * D, 1),
  };
}

/** The block's VJP by tfjs autodiff: every row's dense cotangent through `model.run`. */
async function autodiff(
  model: GPT,
  layer: number,
  x: Float32Array,
  c: SparseCotangents,
): Promise<Float32Array> {
  const D = model.config.dModel, T = x.length / D, R = c.rowStart.length - 1;
  const dy = new Float32Array(R * T * D);
  for (let r = 0; r < R; r++) {
    for (let e = c.rowStart[r]!; e < c.rowStart[r + 1]!; e++) {
      const to = (r * T + c.position[e]!) * D, from = c.vector[e]! * D;
      for (let d = 0; d < D; d++) dy[to + d]! += c.vectors[from + d]!;
    }
  }
  const g = tf.tidy(() =>
    tf.grad((input: tf.Tensor) =>
      model.run({
        start: { hook: `blocks.${layer}.hook_resid_pre`, value: input },
        stopAt: `blocks.${layer}.hook_resid_post`,
      }).output
    )(tf.tensor3d(x, [1, T, D]).tile([R, 1, 1]), tf.tensor3d(dy, [R, T, D]))
  );
  const values = (await g.data()) as Float32Array;
  g.dispose();
  return values;
}

// Widths that are whole vectors of 16 floats: the native scatter's register-blocked paths (one
// vector at a time at d_model 32, four at 64, 64 + 16 at 80).
const WIDE = (dModel: number): GPTConfig => ({ ...TINY, nHead: 4, dModel, dMlp: 64, nCtx: 12 });

for (
  const [what, config] of [
    ["tiny", TINY],
    ["tiny, DynamicTanh", { ...TINY, mlpNorm: "dyt" }],
    ["d_model 32, 4 heads", WIDE(32)],
    ["d_model 80, 4 heads", WIDE(80)],
  ] as const
) {
  Deno.test(`BlockVjp equals tfjs autodiff of the block: ${what}`, async () => {
    const model = randomModel(config, 11);
    try {
      const D = config.dModel, T = config.nCtx, layer = 1;
      const x = normalArray(createRng(5), T * D, 1);
      // A budget of a few entries' scratch: the rows run in several groups.
      for (const memory of [64 * 1024 * 1024, 4 * 3 * (6 * D + config.dMlp + 4 * T)]) {
        const vjp = await BlockVjp.open(model, layer, memory);
        if ("error" in vjp) throw new Error(vjp.error);
        const f = vjp.forward(x);
        const y = tf.tidy(() =>
          model.run({
            start: { hook: `blocks.${layer}.hook_resid_pre`, value: tf.tensor3d(x, [1, T, D]) },
            stopAt: `blocks.${layer}.hook_resid_post`,
          }).output
        );
        assertRelClose(f.output, (await y.data()) as Float32Array, 1e-5, `${what}: forward`);
        y.dispose();
        // run(): several sequences at once (here three, the second this one), output only.
        const three = normalArray(createRng(6), 3 * T * D, 1);
        three.set(x, T * D);
        const many = vjp.run(three, 3);
        assertRelClose(many.subarray(T * D, 2 * T * D), f.output, 1e-5, `${what}: run`);
        assertRelClose(
          many.subarray(0, T * D),
          vjp.forward(three.subarray(0, T * D)).output,
          1e-5,
          `${what}: run, sequence 0`,
        );

        const R = 7, c = randomRows(R, T, D, 4, 3);
        const want = await autodiff(model, layer, x, c);
        // Rows go to out rows in another order, over a longer row stride, added to what is there.
        const outT = T + 2, outRow = Int32Array.from([4, 0, 6, 2, 1, 5, 3]);
        const before = normalArray(createRng(9), R * outT * D, 1), out = before.slice();
        vjp.accumulate(f, c, out, outRow.map((o) => o * outT * D));
        const got = new Float32Array(R * T * D);
        for (let r = 0; r < R; r++) {
          for (let t = 0; t < outT; t++) {
            for (let d = 0; d < D; d++) {
              const at = (outRow[r]! * outT + t) * D + d, delta = out[at]! - before[at]!;
              if (t < T) got[(r * T + t) * D + d] = delta;
              else assert.equal(delta, 0, `${what}: position ${t} past the sequence`);
            }
          }
        }
        assertRelClose(got, want, 1e-4, `${what}: gradient, ${memory} bytes`);
        // Row 1 has no entries: nothing is added there.
        assert.ok(got.subarray(T * D, 2 * T * D).every((v) => v === 0), `${what}: empty row`);
      }
    } finally {
      model.dispose();
    }
  });
}

Deno.test("BlockVjp refuses entries outside the sequence, the vectors or out", async () => {
  const model = GPT.init(TINY, 1);
  try {
    const vjp = await BlockVjp.open(model, 0);
    if ("error" in vjp) throw new Error(vjp.error);
    const D = TINY.dModel, f = vjp.forward(new Float32Array(3 * D).fill(1));
    const one = (position: number, vector: number): SparseCotangents => ({
      rowStart: Int32Array.of(0, 1),
      position: Int32Array.of(position),
      vector: Int32Array.of(vector),
      vectors: new Float32Array(D),
    });
    const out = new Float32Array(2 * D);
    assert.throws(
      () => vjp.accumulate(f, one(3, 0), out, Int32Array.of(0)),
      /Cannot run the block's backward: a position is outside \[0, 3\)/,
    );
    assert.throws(
      () => vjp.accumulate(f, one(0, 1), out, Int32Array.of(0)),
      /a vector is outside \[0, 1\)/,
    );
    // Position 1 of a row at offset D ends past the 2·D floats of out; at offset 0 it fits.
    assert.throws(
      () => vjp.accumulate(f, one(1, 0), out, Int32Array.of(D)),
      /a row does not fit in the 16 floats of out/,
    );
    vjp.accumulate(f, one(1, 0), out, Int32Array.of(0));
    await assert.rejects(BlockVjp.open(model, 2), /Cannot differentiate block 2: the model has 2/);
  } finally {
    model.dispose();
  }
});

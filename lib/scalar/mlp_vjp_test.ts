import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { GPT, type GPTConfig } from "../model/gpt.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { type CotangentEntries, mlpSegmentOfPair, MlpVjp } from "./mlp_vjp.ts";
import { assertRelClose } from "./testdata/close.ts";
import { randomModel } from "./testdata/random_model.ts";

/** The segment between two hooks of `model`, by `model.run`. */
function segment(model: GPT, up: string, down: string): (x: tf.Tensor) => tf.Tensor {
  return (x) => model.run({ start: { hook: up, value: x }, stopAt: down }).output;
}

/** Each entry's input gradient by tfjs autodiff of the segment at its own position, `[E][D]`. */
async function autodiff(
  f: (x: tf.Tensor) => tf.Tensor,
  x: Float32Array,
  c: CotangentEntries,
  D: number,
): Promise<Float32Array> {
  const E = c.position.length, xs = new Float32Array(E * D), dy = new Float32Array(E * D);
  for (let e = 0; e < E; e++) {
    xs.set(x.subarray(c.position[e]! * D, (c.position[e]! + 1) * D), e * D);
    dy.set(c.vectors.subarray(c.vector[e]! * D, (c.vector[e]! + 1) * D), e * D);
  }
  const g = tf.tidy(() => tf.grad(f)(tf.tensor3d(xs, [E, 1, D]), tf.tensor3d(dy, [E, 1, D])));
  const values = (await g.data()) as Float32Array;
  g.dispose();
  return values;
}

const PAIRS = [
  ["mlp-block", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"],
  ["mlp", "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"],
] as const;

const CONFIGS: [string, GPTConfig][] = [
  ["tiny", TINY],
  ["tiny, DynamicTanh", { ...TINY, mlpNorm: "dyt" }],
  ["d_model 80", { ...TINY, dModel: 80, nHead: 4, dMlp: 96 }],
];

for (const [config, c] of CONFIGS) {
  for (const [position, up, down] of PAIRS) {
    Deno.test(`MlpVjp equals tfjs autodiff of the segment: ${position}, ${config}`, async () => {
      const model = randomModel(c, 13);
      try {
        const D = c.dModel, T = 9, E = 14, rng = createRng(4);
        const x = normalArray(rng, T * D, 1);
        // Entries at repeated positions, sharing vectors; their outputs in shuffled slots over
        // values already there.
        const entries: CotangentEntries = {
          position: Int32Array.from({ length: E }, () => rng.int(T)),
          vector: Int32Array.from({ length: E }, () => rng.int(5)),
          vectors: normalArray(rng, 5 * D, 1),
        };
        const slot = Int32Array.from({ length: E }, (_, e) => (e * 5) % E);
        const want = await autodiff(segment(model, up, down), x, entries, D);
        const segmentOf = mlpSegmentOfPair({ up, down, layer: 1 })!;
        // A budget of three entries: the entries run in groups.
        for (const memory of [64 * 1024 * 1024, 3 * 4 * (2 * D + c.dMlp)]) {
          const vjp = await MlpVjp.open(model, segmentOf, memory);
          if ("error" in vjp) throw new Error(vjp.error);
          const f = vjp.forward(x);
          // Each position as a sequence of its own: T may exceed the context; the MLP is per token.
          const y = tf.tidy(() => segment(model, up, down)(tf.tensor3d(x, [T, 1, D])));
          assertRelClose(f.output, (await y.data()) as Float32Array, 1e-5, `${config}: forward`);
          y.dispose();
          // run(): the same output, its scratch reused across calls of other sizes. Fewer rows
          // may take another OpenBLAS kernel (it picks by shape and by CPU: bit-equal on one
          // host, not on a Zen 5), so only the same rows are held to the same bits.
          const head = f.output.subarray(0, 2 * D);
          assertRelClose(vjp.run(x.subarray(0, 2 * D)), head, 1e-6, `${config}: run, 2 rows`);
          assert.deepEqual(vjp.run(x), f.output);
          const before = normalArray(createRng(8), E * D, 1), out = before.slice();
          vjp.accumulate(f, entries, out, slot.map((s) => s * D));
          const got = new Float32Array(E * D);
          for (let e = 0; e < E; e++) {
            for (let d = 0; d < D; d++) {
              got[e * D + d] = out[slot[e]! * D + d]! - before[slot[e]! * D + d]!;
            }
          }
          assertRelClose(got, want, 1e-4, `${position}, ${config}: gradient, ${memory} bytes`);
        }
      } finally {
        model.dispose();
      }
    });
  }
}

Deno.test("MlpVjp's gradient matches finite differences of its own forward (mlp-block)", async () => {
  const model = randomModel(TINY, 21);
  try {
    const D = TINY.dModel, rng = createRng(2);
    const vjp = await MlpVjp.open(model, { layer: 0, norm: true, residual: true });
    if ("error" in vjp) throw new Error(vjp.error);
    const x = normalArray(rng, D, 1), v = normalArray(rng, D, 1);
    const out = new Float32Array(D);
    const one = { position: Int32Array.of(0), vector: Int32Array.of(0), vectors: v };
    vjp.accumulate(vjp.forward(x), one, out, Int32Array.of(0));
    // ⟨v, y(x + h·e_d)⟩ − ⟨v, y(x − h·e_d)⟩ over 2h, in float64 from float32 outputs.
    const h = 1e-2, dot = (y: Float32Array) => y.reduce((s, yi, i) => s + yi * v[i]!, 0);
    for (let d = 0; d < D; d++) {
      const plus = x.slice(), minus = x.slice();
      plus[d]! += h;
      minus[d]! -= h;
      const fd = (dot(vjp.forward(plus).output) - dot(vjp.forward(minus).output)) / (2 * h);
      assert.ok(Math.abs(fd - out[d]!) < 2e-3 * (1 + Math.abs(fd)), `d ${d}: ${out[d]} vs ${fd}`);
    }
  } finally {
    model.dispose();
  }
});

Deno.test("MlpVjp refuses entries outside the positions, the vectors or out", async () => {
  const model = GPT.init(TINY, 1);
  try {
    const segmentOf = { layer: 0, norm: true, residual: true };
    const vjp = await MlpVjp.open(model, segmentOf);
    if ("error" in vjp) throw new Error(vjp.error);
    const D = TINY.dModel, f = vjp.forward(new Float32Array(3 * D).fill(1));
    const one = (position: number, vector: number): CotangentEntries => ({
      position: Int32Array.of(position),
      vector: Int32Array.of(vector),
      vectors: new Float32Array(D),
    });
    const out = new Float32Array(2 * D);
    assert.throws(
      () => vjp.accumulate(f, one(3, 0), out, Int32Array.of(0)),
      /Cannot run the MLP's backward: a position is outside \[0, 3\)/,
    );
    assert.throws(() => vjp.accumulate(f, one(0, 1), out, Int32Array.of(0)), /vector is outside/);
    assert.throws(
      () => vjp.accumulate(f, one(0, 0), out, Int32Array.of(D + 1)),
      /an offset does not leave 8 floats in the 16 of out/,
    );
    assert.throws(() => vjp.accumulate(f, one(0, 0), out, Int32Array.of()), /offsets differ/);
    await assert.rejects(
      MlpVjp.open(model, { ...segmentOf, layer: 2 }),
      /Cannot differentiate block 2's MLP: the model has 2/,
    );
  } finally {
    model.dispose();
  }
});

Deno.test("mlpSegmentOfPair() knows the two per-token MLP segments and nothing else", () => {
  const pair = (up: string, down: string) => mlpSegmentOfPair({ up, down, layer: 0 });
  assert.deepEqual(pair("blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out"), {
    layer: 3,
    norm: false,
    residual: false,
  });
  assert.equal(pair("blocks.3.hook_mlp_in", "blocks.4.hook_mlp_out"), undefined);
  assert.equal(pair("blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"), undefined);
  assert.equal(pair("blocks.0.hook_resid_pre", "blocks.0.hook_resid_mid"), undefined);
});

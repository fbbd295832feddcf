import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { registerSplitKernel, splitRows } from "./split_kernel.ts";
import { createRng, normalArray } from "../util/rng.ts";

Deno.test("splitRows() cuts [outer, axis, inner] into pieces along the axis", () => {
  const x = Float32Array.from({ length: 12 }, (_, i) => i); // [2, 3, 2]
  const out = [new Float32Array(4), new Float32Array(8)];
  splitRows(x, out, 2, [1, 2], 2);
  assert.deepEqual([...out[0]!], [0, 1, 6, 7]);
  assert.deepEqual([...out[1]!], [2, 3, 4, 5, 8, 9, 10, 11]);
});

Deno.test("the SplitV kernel equals the stock one on cpu and wasm, values and gradients", async () => {
  const rng = createRng(5);
  const cases: [number[], number | number[], number][] = [
    [[6, 192], 3, 1],
    [[4, 5, 7], [2, -1, 1], 1],
    [[4, 3], [1, 3], 0],
    [[2, 3, 4], 2, -1],
    [[0, 6], 3, 1],
  ];
  for (const backend of ["cpu", "wasm"] as const) {
    await tf.setBackend(backend);
    for (const [shape, splits, axis] of cases) {
      const data = normalArray(rng, shape.reduce((a, b) => a * b, 1), 1);
      const weights = normalArray(rng, data.length, 1);
      const run = async () => {
        const x = tf.tensor(data, shape);
        const parts = tf.split(x, splits, axis);
        const grad = tf.grad((t: tf.Tensor) =>
          tf.addN(tf.split(t, splits, axis).map((p, i) => p.mul(i + 1).sum())).add(
            t.mul(tf.tensor(weights, shape)).sum(),
          )
        )(x);
        return [...(await Promise.all(parts.map((p) => p.data()))), await grad.data()];
      };
      const stock = await run();
      const restore = registerSplitKernel(backend);
      try {
        assert.deepEqual(await run(), stock, `${backend} ${shape} ${splits} ${axis}`);
      } finally {
        restore();
      }
    }
  }
  await tf.setBackend("cpu");
});

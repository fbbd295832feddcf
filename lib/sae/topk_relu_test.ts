import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { topkRelu, topkReluReference } from "./topk_relu.ts";
import { registerTopkReluKernel, topkReluRows } from "../backend/topk_relu_kernel.ts";
import { createRng, normalArray } from "../util/rng.ts";

const rows = (x: number[], cols: number, k: number) => {
  const out = new Float32Array(x.length);
  topkReluRows(Float32Array.from(x), out, x.length / cols, cols, k);
  return [...out];
};

Deno.test("topkReluRows() keeps the k largest after ReLU, lower index winning ties", () => {
  assert.deepEqual(rows([1, 4, -2, 3, 0.5], 5, 2), [0, 4, 0, 3, 0]);
  // All equal: exactly k kept, the first ones.
  assert.deepEqual(rows([2, 2, 2, 2, 2], 5, 3), [2, 2, 2, 0, 0]);
  // A tie at the k-th place: the earlier of the two 3s is kept.
  assert.deepEqual(rows([3, 9, 3, 1], 4, 2), [3, 9, 0, 0]);
  // Fewer positives than k: negatives become 0, not kept values.
  assert.deepEqual(rows([-1, 5, -3, -4], 4, 3), [0, 5, 0, 0]);
  // Rows are independent; k ≥ cols keeps everything; k = 0 keeps nothing.
  assert.deepEqual(rows([1, 2, 3, 6, 5, 4], 3, 1), [0, 0, 3, 6, 0, 0]);
  assert.deepEqual(rows([1, -2, 3], 3, 7), [1, 0, 3]);
  assert.deepEqual(rows([1, 2, 3], 3, 0), [0, 0, 0]);
});

Deno.test("topkReluRows() equals the stock-op reference and keeps exactly k on random rows", async () => {
  const rng = createRng(3);
  for (const [n, f, k] of [[7, 33, 5], [64, 512, 10], [3, 8, 8], [5, 1, 1]] as const) {
    const x = normalArray(rng, n * f, 1);
    const out = new Float32Array(n * f);
    topkReluRows(x, out, n, f, k);
    const ref = await topkReluReference(tf.tensor2d(x, [n, f]), k).data();
    assert.deepEqual(out, ref, `${n}x${f} k=${k}`);
    for (let r = 0; r < n; r++) {
      const kept = out.subarray(r * f, (r + 1) * f).filter((v) => v > 0).length;
      const positive = x.subarray(r * f, (r + 1) * f).filter((v) => v > 0).length;
      assert.equal(kept, Math.min(k, positive));
    }
  }
});

Deno.test("topkRelu() passes gradients only through kept positive entries", async () => {
  const x = tf.tensor2d([[1, 4, -2, 3], [-1, -2, 0.5, 2]]);
  const w = tf.tensor2d([[10, 20, 30, 40], [50, 60, 70, 80]]);
  const g = tf.grad((t: tf.Tensor) => topkRelu(t as tf.Tensor2D, 2).mul(w).sum())(x);
  assert.deepEqual([...(await g.data())], [0, 20, 0, 40, 0, 0, 70, 80]);
  assert.deepEqual([...(await topkRelu(x, 2).data())], [0, 4, 0, 3, 0, 0, 0.5, 2]);
});

Deno.test("topkRelu() through the registered kernel equals the reference on cpu and wasm", async () => {
  await import("@tensorflow/tfjs-backend-wasm");
  const rng = createRng(9);
  const x = normalArray(rng, 300 * 40, 1);
  const w = normalArray(rng, 300 * 40, 1);
  const results: Float32Array[] = [];
  for (const backend of ["cpu", "wasm"] as const) {
    await tf.setBackend(backend);
    registerTopkReluKernel(backend);
    const [xt, wt] = [tf.tensor2d(x, [300, 40]), tf.tensor2d(w, [300, 40])];
    const fast = await topkRelu(xt, 7).data() as Float32Array;
    assert.deepEqual(fast, await topkReluReference(xt, 7).data(), backend);
    const g = tf.grad((t: tf.Tensor) => topkRelu(t as tf.Tensor2D, 7).mul(wt).sum())(xt);
    const grad = await g.data();
    fast.forEach((v, i) => assert.equal(grad[i]! + 0, v > 0 ? w[i] : 0)); // + 0 folds -0 into 0
    results.push(fast);
  }
  assert.deepEqual(results[0], results[1]);
  await tf.setBackend("cpu");
});

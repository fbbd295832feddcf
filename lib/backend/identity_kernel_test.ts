import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { registerSharedIdentity } from "./identity_kernel.ts";

Deno.test("registerSharedIdentity() shares memory, frees it with the last reference, keeps gradients", async () => {
  await tf.setBackend("wasm");
  const f = (x: tf.Tensor) => x.mul(x).add(x.reshape([-1]).reshape(x.shape)).softmax().sum();
  const x = tf.tensor2d([[0.5, -1, 2], [3, 0.25, -2]]);
  const stock = await tf.grad(f)(x).data();
  const restore = registerSharedIdentity();
  try {
    const heap = tf.backend() as unknown as { dataIdMap: { has(id: unknown): boolean } };
    const a = tf.tensor1d([1, 2, 3]);
    const b = tf.clone(a);
    assert.equal(b.dataId, a.dataId, "a clone shares the buffer");
    a.dispose();
    assert.deepEqual([...(await b.data())], [1, 2, 3], "the clone outlives the original");
    assert.ok(heap.dataIdMap.has(b.dataId));
    b.dispose();
    assert.ok(!heap.dataIdMap.has(b.dataId), "the buffer is freed with the last reference");
    assert.deepEqual(await tf.grad(f)(x).data(), stock);
  } finally {
    restore();
    await tf.setBackend("cpu");
  }
});

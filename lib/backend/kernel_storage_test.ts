import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu".
import "@tensorflow/tfjs-backend-wasm";
import { type CpuKernelBackend, fillOutputs, kernelInput, STORAGE } from "./kernel_storage.ts";

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];

for (const name of BACKENDS) {
  Deno.test(`fillOutputs() on ${name}: every output written, all freed when the writer throws`, async () => {
    assert.ok(await tf.setBackend(name));
    try {
      const backend = tf.backend();
      const storage = STORAGE[name](backend);
      const x = tf.tensor1d([1, 2, 3]);
      const before = backend.numDataIds();
      const infos = fillOutputs(storage, [[3], [2, 2]], ([a, b], read) => {
        a!.set(read(x).map((v) => v * 10));
        b!.set([4, 5, 6, 7]);
      });
      const [a, b] = infos.map((info) => tf.engine().makeTensorFromTensorInfo(info));
      assert.deepEqual([...await a!.data()], [10, 20, 30]);
      assert.deepEqual(b!.shape, [2, 2]);
      assert.deepEqual([...await b!.data()], [4, 5, 6, 7]);
      tf.dispose([a!, b!]);
      assert.equal(backend.numDataIds(), before);
      assert.throws(
        () =>
          fillOutputs(storage, [[3], [4]], () => {
            throw new Error("writer failed");
          }),
        /writer failed/,
      );
      assert.equal(backend.numDataIds(), before, "outputs of a failed kernel leaked");
      x.dispose();
    } finally {
      await tf.setBackend("cpu");
    }
  });
}

Deno.test("kernelInput() names a missing input, a non-float32 one and a misshapen one", async () => {
  assert.ok(await tf.setBackend("cpu"));
  const storage = STORAGE.cpu(tf.backend());
  const x = tf.tensor2d([[1, 2]]), i = tf.tensor1d([1], "int32");
  assert.equal(kernelInput(storage, "K", { x }, "x", [1, 2]), x);
  assert.throws(() => kernelInput(storage, "K", { x }, "y"), /Cannot run K: input "y" is missing/);
  assert.throws(
    () => kernelInput(storage, "K", { i }, "i"),
    /Cannot run K: input "i" is int32\[1\], expected float32 in memory/,
  );
  assert.throws(
    () => kernelInput(storage, "K", { x }, "x", [2]),
    /Cannot run K: x is \[1,2\], expected \[2\]/,
  );
  tf.dispose([x, i]);
});

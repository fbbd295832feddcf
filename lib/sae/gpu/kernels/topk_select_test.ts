import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { topkReluReference } from "../../topk_relu.ts";
import { bindBuffers, dispatch, rowsUniform, storageBuffer, uniformBuffer } from "../device.ts";
import { gpuTest, randomRows, readF32, readU32, upload, values } from "../testdata/harness.ts";
import { topkSelectKernel } from "./topk_select.ts";

/** Runs the selection on `pre` [rows, width]; returns kept pairs and the mask. */
async function select(
  g: Parameters<Parameters<typeof gpuTest>[1]>[0],
  pre: Float32Array,
  rows: number,
  width: number,
  k: number,
) {
  const kernel = await topkSelectKernel(g.device, width, k);
  const idx = storageBuffer(g.device, "idx", rows * k * 4);
  const val = storageBuffer(g.device, "val", rows * k * 4);
  const words = Math.ceil(rows / 64) * width * 2;
  const mask = storageBuffer(g.device, "mask", words * 4);
  const uniform = uniformBuffer(g.device, "rows", rowsUniform(0, rows, 0));
  const encoder = g.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  dispatch(
    pass,
    kernel,
    bindBuffers(g.device, kernel, [upload(g, pre), idx, val, mask, uniform]),
    rows,
  );
  pass.end();
  g.device.queue.submit([encoder.finish()]);
  return {
    idx: await readU32(g, idx, rows * k),
    val: await readF32(g, val, rows * k),
    mask: await readU32(g, mask, words),
  };
}

const cases = [
  { name: "k = 1", rows: 5, width: 33, k: 1, ties: false },
  { name: "k = width", rows: 4, width: 12, k: 12, ties: false },
  { name: "rows not a multiple of 64", rows: 70, width: 64, k: 10, ties: false },
  // Values on a coarse grid: many equal values at the k-th place, and many zeros after ReLU.
  { name: "ties", rows: 67, width: 40, k: 9, ties: true },
  { name: "ties, fewer positives than k", rows: 6, width: 20, k: 15, ties: true },
  // Wide rows take the 256-thread variant.
  { name: "wide rows", rows: 3, width: 5000, k: 17, ties: true },
];

for (const c of cases) {
  gpuTest(`topk select kernel equals topkReluReference (${c.name})`, async (g) => {
    const { rows, width, k } = c;
    let pre = randomRows(rows, width, 7);
    if (c.ties) pre = pre.map((v) => Math.round(v * 2) / 2);
    // The kernel reads ReLU'd values (the encoder applies the ReLU).
    const relu = pre.map((v) => Math.max(v, 0));
    const got = await select(g, relu, rows, width, k);
    const dense = new Float32Array(rows * width);
    for (let r = 0; r < rows; r++) {
      for (let s = 0; s < k; s++) {
        const j = got.idx[r * k + s]!;
        if (s > 0) assert.ok(j > got.idx[r * k + s - 1]!, `row ${r}: indices ascending`);
        dense[r * width + j] = got.val[r * k + s]!;
        const word = (Math.floor(r / 64) * width + j) * 2 + Math.floor((r % 64) / 32);
        assert.ok(got.mask[word]! & (1 << (r % 32)), `row ${r} feature ${j} marked`);
      }
    }
    const marked = got.mask.reduce((n, w) => n + w.toString(2).replaceAll("0", "").length, 0);
    assert.equal(marked, rows * k, "one mark per kept pair");
    const want = await values(topkReluReference(tf.tensor2d(pre, [rows, width]), k));
    assert.deepEqual(dense, want);
    // The same index sets as tf.topk (zero-valued picks included), which JSAE's Jacobian uses.
    const ids = await tf.topk(tf.tensor2d(relu, [rows, width]), k).indices.data();
    for (let r = 0; r < rows; r++) {
      const mine = [...got.idx.subarray(r * k, (r + 1) * k)];
      const theirs = [...ids.subarray(r * k, (r + 1) * k)].sort((a, b) => a - b);
      assert.deepEqual(mine, theirs, `row ${r} index set`);
    }
  });
}

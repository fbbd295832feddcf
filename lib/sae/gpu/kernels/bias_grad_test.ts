import {
  assertClose,
  gpuTest,
  randomRows,
  readF32,
  referenceSae,
  runKernel,
  topkFixture,
  upload,
} from "../testdata/harness.ts";
import { biasGradKernel } from "./bias_grad.ts";

gpuTest("bias grad kernel equals the reference's b_dec gradient", async (g) => {
  const [rows, d, features, k, blocks] = [90, 70, 40, 5, 3];
  const { saes, view, flat, layout } = await topkFixture(d, features, k, 9);
  const ref = await referenceSae(saes, view.hook, randomRows(rows, d, 10), rows);
  // Column sums of ∂L/∂x̂ over blocks of rows (the decoder's partials), the last one unused.
  const cols = new Float32Array(blocks * d);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < d; i++) cols[Math.floor(r / 64) * d + i]! += ref.dxhat[r * d + i]!;
  }
  const start = new Float32Array(layout.length);
  start.set(ref.grads.get("b_enc")!, view.bEnc);
  const grads = upload(g, start);
  const kernel = await biasGradKernel(g.device, view, blocks);
  await runKernel(g, kernel, [upload(g, cols), upload(g, flat), grads], d);
  const got = await readF32(g, grads, layout.length);
  assertClose(got.subarray(view.bDec, view.bDec + d), ref.grads.get("b_dec")!, "∂b_dec");
  saes.dispose();
});

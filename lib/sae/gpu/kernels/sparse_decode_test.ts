import assert from "node:assert/strict";
import { rowsUniform, storageBuffer, uniformBuffer } from "../device.ts";
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
import { sparseDecodeKernel } from "./sparse_decode.ts";

gpuTest(
  "sparse decode kernel equals the reference's ∂L/∂x̂, loss, L0 and b_dec column sums",
  async (g) => {
    const [rows, offset, d] = [70, 3, 80];
    const { saes, view, flat } = await topkFixture(d, 50, 7, 1);
    const x = randomRows(offset + rows, d, 2);
    const ref = await referenceSae(saes, view.hook, x.subarray(offset * d), rows);
    // As the second micro-batch of a step, with this SAE's figure slots after 4 others.
    const [blocksPerMicro, base] = [2, 4];
    const kernel = await sparseDecodeKernel(g.device, view, {
      scale: 2 / rows,
      blocksPerMicro,
      figures: base,
    });
    const dxhat = storageBuffer(g.device, "dxhat", rows * d * 4);
    const figures = storageBuffer(g.device, "figures", (base + 2 * 2 * blocksPerMicro) * 4);
    const cols = storageBuffer(g.device, "cols", 2 * blocksPerMicro * d * 4);
    await runKernel(g, kernel, [
      upload(g, x),
      upload(g, flat),
      upload(g, ref.idx),
      upload(g, ref.val),
      dxhat,
      figures,
      cols,
      uniformBuffer(g.device, "rows", rowsUniform(offset, rows, 1)),
    ], rows);
    assertClose(await readF32(g, dxhat, rows * d), ref.dxhat, "∂L/∂x̂");
    const parts = await readF32(g, figures, base + 4 * blocksPerMicro);
    assert.deepEqual(
      [...parts.subarray(0, base + 2 * blocksPerMicro)],
      new Array(base + 4).fill(0),
    );
    const [loss, positives] = [
      parts[base + 4]! + parts[base + 6]!,
      parts[base + 5]! + parts[base + 7]!,
    ];
    assertClose([loss / rows, positives / rows], [ref.loss, ref.l0], "loss and L0");
    const colSums = await readF32(g, cols, 2 * blocksPerMicro * d);
    const want = new Float32Array(d);
    for (let r = 0; r < rows; r++) for (let i = 0; i < d; i++) want[i]! += ref.dxhat[r * d + i]!;
    const got = colSums.subarray(2 * d, 3 * d).map((v, i) => v + colSums[3 * d + i]!);
    assertClose(got, want, "column sums of ∂L/∂x̂");
    saes.dispose();
  },
);

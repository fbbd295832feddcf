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
import { sparseBackwardKernel } from "./sparse_backward.ts";

for (const [rows, d, features, k] of [[70, 24, 40, 5], [33, 8, 6, 6], [300, 16, 20, 1]]) {
  gpuTest(
    `sparse backward kernel equals the reference's ∂L/∂pre at kept pairs (${rows} rows, k ${k})`,
    async (g) => {
      const { saes, view, flat } = await topkFixture(d!, features!, k!, 3);
      const ref = await referenceSae(saes, view.hook, randomRows(rows!, d!, 4), rows!);
      const kernel = await sparseBackwardKernel(g.device, view);
      const dpre = storageBuffer(g.device, "dpre", rows! * k! * 4);
      await runKernel(g, kernel, [
        upload(g, flat),
        upload(g, ref.idx),
        upload(g, ref.val),
        upload(g, ref.dxhat),
        dpre,
        uniformBuffer(g.device, "rows", rowsUniform(0, rows!, 0)),
      ], rows! * k!);
      assertClose(await readF32(g, dpre, rows! * k!), ref.dpre, "∂L/∂pre");
      saes.dispose();
    },
  );
}

import assert from "node:assert/strict";
import { rowsUniform, uniformBuffer } from "../device.ts";
import {
  assertClose,
  featureLists,
  gpuTest,
  randomRows,
  readF32,
  referenceSae,
  runKernel,
  topkFixture,
  upload,
} from "../testdata/harness.ts";
import { featureGradsKernel } from "./feature_grads.ts";

for (const [rows, d, features, k, trainFrom] of [[150, 80, 40, 6, 0], [70, 16, 30, 3, 12]]) {
  gpuTest(
    `feature grads kernel equals the reference's W_enc, W_dec, b_enc gradients (D ${d}, trainFrom ${trainFrom})`,
    async (g) => {
      const { saes, view, flat, layout } = await topkFixture(d!, features!, k!, 7);
      const offset = 2;
      const x = randomRows(offset + rows!, d!, 8);
      const ref = await referenceSae(saes, view.hook, x.subarray(offset * d!), rows!);
      const { lists, starts } = featureLists(ref.idx, features!);
      const kernel = await featureGradsKernel(g.device, { ...view, trainFrom: trainFrom! });
      // Gradients are added to what the buffer holds: start from ones.
      const grads = upload(g, new Float32Array(layout.length).fill(1));
      await runKernel(g, kernel, [
        upload(g, lists),
        upload(g, starts),
        upload(g, ref.val),
        upload(g, ref.dpre),
        upload(g, ref.dxhat),
        upload(g, x),
        upload(g, flat),
        grads,
        uniformBuffer(g.device, "rows", rowsUniform(offset, rows!, 0)),
      ], features!);
      const got = await readF32(g, grads, layout.length);
      const part = (at: number, n: number) => got.subarray(at, at + n).map((v) => v - 1);
      const [wEnc, wDec] = [ref.grads.get("W_enc")!, ref.grads.get("W_dec")!];
      // Features below trainFrom keep their encoder columns and decoder rows untouched.
      for (let i = 0; i < d! * features!; i++) if (i % features! < trainFrom!) wEnc[i] = 0;
      wDec.fill(0, 0, trainFrom! * d!);
      assertClose(part(view.wEnc, d! * features!), wEnc, "∂W_enc");
      assertClose(part(view.wDec, d! * features!), wDec, "∂W_dec");
      assertClose(part(view.bEnc, features!), ref.grads.get("b_enc")!, "∂b_enc");
      assert.deepEqual([...part(view.bDec, d!)], new Array(d!).fill(0), "b_dec untouched");
      saes.dispose();
    },
  );
}

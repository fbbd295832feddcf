import * as tf from "@tensorflow/tfjs";
import { buildSaes, type SaeConfig } from "../../architectures.ts";
import { layoutPosition } from "../../positions.ts";
import { preActivations } from "../../sae.ts";
import { bindBuffers, dispatch, rowsUniform, storageBuffer, uniformBuffer } from "../device.ts";
import { layoutParams } from "../../param_layout.ts";
import {
  assertClose,
  flatParams,
  gpuTest,
  randomizeParams,
  randomRows,
  readF32,
  upload,
  values,
} from "../testdata/harness.ts";
import { encoderKernel } from "./encoder.ts";

const cases: { name: string; sae: SaeConfig; d: number }[] = [
  // Rows, D and width none a multiple of the 64 × 64 × 16 tiling.
  { name: "topk", sae: { arch: "topk", features: 70, k: 3, jsaeLambda: 0 }, d: 20 },
  // Staircase prefixes: W_enc rows are wider than the SAE (row stride 2F for the first).
  { name: "staircase", sae: { arch: "staircase", features: 40, k: 3, jsaeLambda: 0 }, d: 16 },
];

for (const c of cases) {
  gpuTest(`encoder kernel equals ReLU((x − b_dec)·W_enc + b_enc) (${c.name})`, async (g) => {
    const saes = buildSaes(c.sae, layoutPosition("mlp-block", 1), c.d, 1);
    randomizeParams(saes, 2);
    const layout = layoutParams(saes, c.sae);
    const [rows, offset] = [70, 5];
    const x = randomRows(offset + rows + 3, c.d, 3);
    const xBuf = upload(g, x), params = upload(g, await flatParams(saes, layout));
    const uniform = uniformBuffer(g.device, "rows", rowsUniform(offset, rows, 0));
    for (const sae of layout.saes) {
      const kernel = await encoderKernel(g.device, sae);
      const pre = storageBuffer(g.device, "pre", rows * sae.width * 4);
      const encoder = g.device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      dispatch(pass, kernel, bindBuffers(g.device, kernel, [xBuf, params, pre, uniform]), rows);
      pass.end();
      g.device.queue.submit([encoder.finish()]);
      const xs = tf.tensor2d(x.subarray(offset * c.d, (offset + rows) * c.d), [rows, c.d]);
      const want = await values(tf.relu(preActivations(saes.weights(sae.hook), xs)));
      assertClose(await readF32(g, pre, rows * sae.width), want, `${c.name} ${sae.hook} P`);
      pre.destroy();
    }
    saes.dispose();
  });
}

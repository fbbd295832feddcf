import * as tf from "@tensorflow/tfjs";
import { geluTanhDerivative, jacobianLoss, jacobians } from "../../jacobian.ts";
import { createRng, normalArray } from "../../../util/rng.ts";
import { rowsUniform, storageBuffer, uniformBuffer } from "../device.ts";
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
  values,
} from "../testdata/harness.ts";
import { JACOBIAN_PER_GROUP, jacobianKernels } from "./jacobian.ts";

gpuTest(
  "jacobian kernels equal the reference's GELU′, Jacobians, loss and weight gradients",
  async (g) => {
    const [rows, offset, d, m, features, k, lambda] = [70, 2, 16, 48, 40, 4, 0.05];
    const { saes, layout } = await topkFixture(d, features, k, 12);
    const [up, down] = layout.saes;
    const rng = createRng(13);
    const mlp = {
      wFc: tf.tensor2d(normalArray(rng, d * m, 0.3), [d, m]),
      bFc: tf.tensor1d(normalArray(rng, m, 0.3)),
      wProj: tf.tensor2d(normalArray(rng, m * d, 0.3), [m, d]),
    };
    const xIn = randomRows(offset + rows, d, 14), xOut = randomRows(rows, d, 15);
    const xs = tf.tensor2d(xIn.subarray(offset * d), [rows, d]);
    const [refIn, refOut] = [
      await referenceSae(saes, up!.hook, xIn.subarray(offset * d), rows),
      await referenceSae(saes, down!.hook, xOut, rows),
    ];
    const [wIn, wOut] = [saes.weights(up!.hook), saes.weights(down!.hook)];
    const [k1, k2] = [refIn.idx, refOut.idx].map((i) => tf.tensor2d(Int32Array.from(i), [rows, k]));
    const weights = new Float32Array(2 * d * m + m);
    weights.set(await mlp.wFc.data(), 0);
    weights.set(await mlp.bFc.data(), d * m);
    weights.set(await mlp.wProj.data(), d * m + m);
    const blocks = Math.ceil((rows * k * k) / JACOBIAN_PER_GROUP);
    const kernels = await jacobianKernels(g.device, {
      d,
      m,
      k,
      fIn: features,
      fOut: features,
      lambda,
      blocksPerMicro: blocks,
      figures: 3,
    });
    const uniform = uniformBuffer(g.device, "rows", rowsUniform(offset, rows, 0));

    const gBuf = storageBuffer(g.device, "g", rows * m * 4);
    await runKernel(g, kernels.gelu, [upload(g, xIn), upload(g, weights), gBuf, uniform], rows * m);
    const gRef = await values(geluTanhDerivative(tf.matMul(xs, mlp.wFc).add(mlp.bFc)));
    assertClose(await readF32(g, gBuf, rows * m), gRef, "GELU′");

    const a = await values(tf.matMul(wIn.wDec, mlp.wFc));
    const bt = await values(tf.matMul(wOut.wEnc, mlp.wProj, true, true));
    const [aBuf, btBuf, k1Buf, k2Buf] = [
      upload(g, a),
      upload(g, bt),
      upload(g, refIn.idx),
      upload(g, refOut.idx),
    ];
    const dj = storageBuffer(g.device, "dJ", rows * k * k * 4);
    const partials = storageBuffer(g.device, "partials", (3 + blocks) * 4);
    await runKernel(g, kernels.forward, [
      k1Buf,
      k2Buf,
      aBuf,
      btBuf,
      upload(g, gRef),
      dj,
      partials,
      uniform,
    ], rows * k * k);
    const j = await values(jacobians(wIn, wOut, mlp, xs, k1, k2, k));
    const sum = (await readF32(g, partials, 3 + blocks)).subarray(3).reduce((s, v) => s + v, 0);
    assertClose([sum * lambda / (k * k)], [
      j.reduce((s, v) => s + Math.abs(v), 0) * lambda / (k * k),
    ], "λ·L_J");
    const djRef = j.map((v) => Math.sign(v) * Math.fround(lambda) / (k * k));
    assertClose(await readF32(g, dj, rows * k * k), djRef, "dJ");

    const [inLists, outLists] = [
      featureLists(refIn.idx, features),
      featureLists(refOut.idx, features),
    ];
    const [da, dbt] = [0, 1].map(() => upload(g, new Float32Array(features * m)));
    const djBuf = upload(g, djRef), gRefBuf = upload(g, gRef);
    await runKernel(g, kernels.backIn, [
      upload(g, inLists.lists),
      upload(g, inLists.starts),
      djBuf,
      k2Buf,
      btBuf,
      gRefBuf,
      da!,
    ], features);
    await runKernel(g, kernels.backOut, [
      upload(g, outLists.lists),
      upload(g, outLists.starts),
      djBuf,
      k1Buf,
      aBuf,
      gRefBuf,
      dbt!,
    ], features);
    const [gradDec, gradEnc] = tf.grads((wDec: tf.Tensor, wEnc: tf.Tensor) =>
      jacobianLoss(
        { ...wIn, wDec: wDec as tf.Tensor2D },
        { ...wOut, wEnc: wEnc as tf.Tensor2D },
        mlp,
        xs,
        k1,
        k2,
        k,
      ).mul(lambda)
    )([wIn.wDec, wOut.wEnc]);
    const daT = tf.tensor2d(await readF32(g, da!, features * m), [features, m]);
    const dbtT = tf.tensor2d(await readF32(g, dbt!, features * m), [features, m]);
    assertClose(
      await values(tf.matMul(daT, mlp.wFc, false, true)),
      await values(gradDec!),
      "∂W_dec_in via ∂A",
    );
    assertClose(
      await values(tf.matMul(mlp.wProj, dbtT, true, true)),
      await values(gradEnc!),
      "∂W_enc_out via ∂Bᵀ",
    );
    tf.dispose([xs, k1, k2, daT, dbtT, ...Object.values(mlp)]);
    saes.dispose();
  },
);

/**
 * Runs a few CPU-engine steps (TopK in micro-batches over many row blocks, JSAE with two pairs)
 * and prints the sha256 of the final parameters and Adam moments: `cpu_engine_test.ts` runs it
 * with one thread and with two (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS) and expects the same bits.
 *
 * @module
 */
import { createHash } from "node:crypto";
import * as tf from "@tensorflow/tfjs";
import { createRng, normalArray } from "../../util/rng.ts";
import { buildSaes, type SaeConfig } from "../architectures.ts";
import { CpuSaeEngine } from "../cpu_engine.ts";
import { layoutPosition } from "../positions.ts";

await tf.setBackend("cpu");
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
const hash = createHash("sha256");
const d = 24;
for (
  const [arch, features, rows, micro] of [["topk", 96, 2100, 900], ["jsae", 48, 700, 300]] as const
) {
  const sae: SaeConfig = { arch, features, k: 6, jsaeLambda: 0.05 };
  const layout = layoutPosition("mlp", 2);
  const saes = buildSaes(sae, layout, d, 3);
  const rng = createRng(9);
  const mlp = {
    wFc: tf.tensor2d(normalArray(rng, d * 40, 0.3), [d, 40]),
    bFc: tf.tensor1d(normalArray(rng, 40, 0.3)),
    wProj: tf.tensor2d(normalArray(rng, 40 * d, 0.3), [40, d]),
  };
  const engine = await CpuSaeEngine.create({
    saes,
    sae,
    rows,
    microRows: micro,
    adam: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 },
    gradClip: 1,
    jacobian: arch === "jsae" ? { pairs: layout.pairs, mlp: () => mlp, lambda: 0.05 } : undefined,
  });
  for (let s = 0; s < 3; s++) {
    const batch = new Map(
      layout.hooks.map((h, i) => [h, normalArray(createRng(10 * s + i), rows * d, 1)]),
    );
    const figures = await engine.step(batch, 1e-2, true);
    hash.update(new Uint8Array(figures!.buffer));
  }
  for (const { data } of (await engine.params()).values()) hash.update(new Uint8Array(data.buffer));
  for (const { data } of (await engine.state()).tensors.values()) {
    hash.update(new Uint8Array(data.buffer));
  }
  engine.dispose();
  saes.dispose();
}
console.log(hash.digest("hex"));

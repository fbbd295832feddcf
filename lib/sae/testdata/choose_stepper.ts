/**
 * Chooses a stepper for a tiny TopK set under this process's environment (`CC`,
 * `SCALAR_SAE_STEPPER`) and prints `{"kind", "line"}` or `{"error"}` as one JSON line:
 * `steppers_test.ts` runs it with the variables it needs set, in a process of its own, because
 * `deno test --parallel` runs test modules as workers of one process that share its environment
 * (a `CC` set there once made a concurrent module's engine fail to compile).
 *
 * Argument: the stepper to force (`tfjs`, `cpu`, `webgpu`), or none for the backend's choice.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { buildSaes, type SaeConfig } from "../architectures.ts";
import { layoutPosition } from "../positions.ts";
import type { StepperKind } from "../stepper.ts";
import { chooseStepper } from "../steppers/choose.ts";

await tf.setBackend("cpu");
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
const sae: SaeConfig = { arch: "topk", features: 4, k: 1, jsaeLambda: 0 };
const saes = buildSaes(sae, layoutPosition("mlp", 1), 2, 0);
const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };
try {
  const stepper = Deno.args[0] as StepperKind | undefined;
  const chosen = await chooseStepper({ saes, sae, rows: 2, adam, gradClip: 1 }, { stepper });
  chosen.stepper.dispose();
  console.log(JSON.stringify({ kind: chosen.kind, line: chosen.line }));
} catch (e) {
  console.log(JSON.stringify({ error: (e as Error).message }));
} finally {
  saes.dispose();
}

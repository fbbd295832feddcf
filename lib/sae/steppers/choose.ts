/**
 * Which stepper trains SAEs (`../stepper.ts`): by default the fast engine of the tfjs backend in
 * use — the WebGPU engine on `webgpu`, the CPU engine on `cpu` and `wasm` — and the tfjs reference
 * on `tensorflow` (whose own kernels are the fast path there). `SCALAR_SAE_STEPPER=tfjs|cpu|webgpu`
 * (or the trainer's `stepper` option) forces one, for tests and comparisons. A default engine that
 * cannot start (no C compiler, no adapter) hands over to the reference with the reason; a forced
 * one fails instead.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamWState } from "../../optim/adamw.ts";
import { CpuSaeEngine } from "../cpu_engine.ts";
import { requestGpu } from "../gpu/device.ts";
import { SaeEngine } from "../gpu/sae_engine.ts";
import {
  type SaeStepper,
  STEPPER_KINDS,
  type StepperKind,
  type StepperOptions,
} from "../stepper.ts";
import { TfjsStepper } from "./tfjs.ts";

/** How each stepper is built, and what its progress line calls it; one line adds one. */
const STEPPERS: Record<
  StepperKind,
  (o: StepperOptions) => Promise<{ stepper: SaeStepper; name: string }>
> = {
  tfjs: (o) =>
    Promise.resolve({ stepper: new TfjsStepper(o), name: `tfjs ${tf.getBackend()} ops` }),
  cpu: async (o) => ({ stepper: await CpuSaeEngine.create(o), name: "the CPU engine" }),
  webgpu: async (o) => {
    const gpu = await requestGpu();
    if (typeof gpu === "string") throw new Error(`no WebGPU device: ${gpu}`);
    return { stepper: await SaeEngine.create(gpu, o), name: `the WebGPU engine on ${gpu.adapter}` };
  },
};

/** The default stepper of each tfjs backend (any other: the reference). */
const BY_BACKEND: Readonly<Record<string, StepperKind>> = {
  webgpu: "webgpu",
  cpu: "cpu",
  wasm: "cpu",
};

/**
 * The stepper a run asks for.
 *
 * @param backend The tfjs backend in use.
 * @param forced A stepper named by the caller or by `SCALAR_SAE_STEPPER`, if any.
 * @returns Its kind, and whether it was forced.
 * @throws {RangeError} For a forced name that is no stepper, listing those that are.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { stepperFor } from "./choose.ts";
 *
 * assert.deepEqual(stepperFor("wasm"), { kind: "cpu", forced: false });
 * assert.deepEqual(stepperFor("tensorflow"), { kind: "tfjs", forced: false });
 * assert.deepEqual(stepperFor("webgpu", "tfjs"), { kind: "tfjs", forced: true });
 * assert.throws(() => stepperFor("cpu", "gpu"), /SCALAR_SAE_STEPPER=gpu.*tfjs, cpu, webgpu/);
 * ```
 */
export function stepperFor(
  backend: string,
  forced?: string,
): { kind: StepperKind; forced: boolean } {
  if (forced === undefined || forced === "") {
    return { kind: BY_BACKEND[backend] ?? "tfjs", forced: false };
  }
  if (!(STEPPER_KINDS as readonly string[]).includes(forced)) {
    throw new RangeError(
      `Cannot train SAEs with SCALAR_SAE_STEPPER=${forced}: use one of ${STEPPER_KINDS.join(", ")}`,
    );
  }
  return { kind: forced as StepperKind, forced: true };
}

/**
 * Builds the stepper of a run, holding the SAEs' current parameters and, when resuming, the
 * saved optimizer state.
 *
 * @param o The SAEs and training settings.
 * @param choice `stepper`: one to force (else `SCALAR_SAE_STEPPER`, else the backend's default);
 *   `resume`: the optimizer state to continue from.
 * @returns The stepper, its kind, and a progress line saying which runs (and why, on a fallback).
 * @throws {RangeError} For an unknown forced stepper.
 * @throws {Error} When a forced stepper cannot start, with its reason.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSaes } from "../architectures.ts";
 * import { layoutPosition } from "../positions.ts";
 * import { chooseStepper } from "./choose.ts";
 *
 * const sae = { arch: "topk", features: 4, k: 1, jsaeLambda: 0 } as const;
 * const saes = buildSaes(sae, layoutPosition("mlp", 1), 2, 0);
 * const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };
 * const chosen = await chooseStepper({ saes, sae, rows: 4, adam, gradClip: 1 }, { stepper: "tfjs" });
 * assert.equal(chosen.kind, "tfjs");
 * assert.match(chosen.line, /^SAE steps: tfjs \w+ ops/);
 * chosen.stepper.dispose();
 * saes.dispose();
 * ```
 */
export async function chooseStepper(
  o: StepperOptions,
  choice: { stepper?: StepperKind; resume?: AdamWState } = {},
): Promise<{ stepper: SaeStepper; kind: StepperKind; line: string }> {
  const backend = tf.getBackend();
  const { kind, forced } = stepperFor(
    backend,
    choice.stepper ?? Deno.env.get("SCALAR_SAE_STEPPER"),
  );
  let built: { stepper: SaeStepper; name: string }, chosen = kind, why = "";
  try {
    built = await STEPPERS[kind](o);
  } catch (e) {
    if (forced || kind === "tfjs") throw e;
    // Same numbers either way; say why the run is slower than it could be.
    why = ` (${kind} engine unavailable: ${(e as Error).message})`;
    [built, chosen] = [await STEPPERS.tfjs(o), "tfjs"];
  }
  if (choice.resume !== undefined) await built.stepper.load(choice.resume);
  return { stepper: built.stepper, kind: chosen, line: `SAE steps: ${built.name}${why}` };
}

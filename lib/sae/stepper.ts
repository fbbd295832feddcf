/**
 * What trains SAEs, to the trainer (`train.ts`): a stepper takes one batch and a learning rate per
 * step and returns the logged figures; its optimizer state goes out to and comes back from
 * checkpoints. Three implementations sit side by side under `steppers/`: the tfjs reference
 * (`steppers/tfjs.ts`), the CPU engine and the WebGPU engine (`gpu/sae_engine.ts`), chosen by
 * `steppers/choose.ts`. They give the same numbers up to f32 rounding (`steppers_test.ts`), so the
 * choice changes speed, not results.
 *
 * @module
 */
import type { AdamWConfig, AdamWState } from "../optim/adamw.ts";
import type { SaeConfig, SaeSet } from "./architectures.ts";
import type { MlpWeights } from "./jacobian.ts";
import type { SaePair } from "./positions.ts";

/**
 * The steppers, by the name `SCALAR_SAE_STEPPER` and the runs table use.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { STEPPER_KINDS } from "./stepper.ts";
 *
 * assert.deepEqual(STEPPER_KINDS, ["tfjs", "cpu", "webgpu"]);
 * ```
 */
export const STEPPER_KINDS = ["tfjs", "cpu", "webgpu"] as const;

/** A stepper's name. */
export type StepperKind = typeof STEPPER_KINDS[number];

/** What every stepper is built from. */
export interface StepperOptions {
  /** The SAEs; their variables hold the starting (or restored) parameters. */
  saes: SaeSet;
  /** Their settings. */
  sae: SaeConfig;
  /** Tokens per step. */
  rows: number;
  /** Tokens per forward/backward pass (gradients accumulate over a step's passes). @default rows */
  microRows?: number;
  /** AdamW's settings, and which parameters decay (undefined: all). */
  adam: AdamWConfig;
  /** Global gradient-norm limit. */
  gradClip: number;
  /**
   * For an architecture with a pair loss (JSAE): the pairs, the frozen MLP between each, and the
   * loss's weight λ. Given exactly when the architecture has one.
   */
  jacobian?: { pairs: readonly SaePair[]; mlp: (pair: SaePair) => MlpWeights; lambda: number };
}

/** One way of taking SAE training steps. */
export interface SaeStepper {
  /**
   * One step: losses, backward, global-norm clipping and AdamW over every SAE.
   *
   * @param batch Per hook, the step's activations `[rows, D]` row-major.
   * @param lr The step's learning rate.
   * @param report Whether the figures are wanted (reading them may wait for the device).
   * @returns When reporting: each SAE's loss, each pair's λ-weighted loss, then each SAE's L0
   *   (mean positive features per token); else undefined.
   */
  step(
    batch: ReadonlyMap<string, Float32Array>,
    lr: number,
    report: boolean,
  ): Promise<Float32Array | undefined>;
  /** The optimizer state in `AdamW.state()`'s form (`m.<name>`, `v.<name>`), for checkpoints. */
  state(): Promise<AdamWState>;
  /**
   * Restores an optimizer state; the parameters come from the SAE set's variables, which must
   * already hold the checkpoint's.
   */
  load(state: AdamWState): Promise<void>;
  /** Copies the current parameters into the SAE set's variables (before saving or evaluating). */
  writeBack(): Promise<void>;
  /** Frees what the stepper holds (not the SAEs). */
  dispose(): void;
}

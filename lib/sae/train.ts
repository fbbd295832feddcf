/**
 * Trains all SAEs of a run together on cached clean activations of the frozen model (SPEC §4): one
 * batch of tokens per step, every SAE reconstructs its own hook, the losses (plus λ·L_J per JSAE
 * pair) are summed for one backward pass, then global-norm clipping and AdamW over all parameters.
 * Seeded, resumable, with progress and divergence detection. The steps themselves are a stepper's
 * (`stepper.ts`: the tfjs reference, the CPU engine or the WebGPU engine, the same numbers from
 * each); this module feeds it batches, schedules the learning rate and writes checkpoints.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CheckpointTensor, saveCheckpoint } from "../model/checkpoint.ts";
import { runState } from "../optim/resume.ts";
import { warmupCosine } from "../optim/schedule.ts";
import { type LoopResult, runTrainingLoop } from "../optim/training_loop.ts";
import { architecture, type SaeConfig, type SaeSet } from "./architectures.ts";
import type { MlpWeights } from "./jacobian.ts";
import type { SaePair } from "./positions.ts";
import { restoreParams } from "./sae_checkpoint.ts";
import type { SaeStepper, StepperKind, StepperOptions } from "./stepper.ts";
import { chooseStepper } from "./steppers/choose.ts";

/** SAE training settings; defaults are the paper's toy schedule. */
export interface SaeTrainConfig {
  /** Optimizer steps. @default 7500 */
  steps: number;
  /** Sequences per step (each nCtx tokens). @default 128 */
  batch: number;
  /** Peak learning rate. @default 1e-3 */
  lr: number;
  /** Final learning rate. @default 1e-4 */
  minLr: number;
  /** Linear warm-up steps. @default 750 */
  warmup: number;
  /** AdamW β₁. @default 0.9 */
  beta1: number;
  /** AdamW β₂. @default 0.95 */
  beta2: number;
  /** AdamW weight decay (the reference trains SAEs without). @default 0 */
  weightDecay: number;
  /** Global gradient-norm limit over all SAE parameters together. @default 1 */
  gradClip: number;
  /** Steps between progress lines. @default 25 */
  logEvery: number;
  /** Steps between checkpoints. @default 500 */
  checkpointEvery: number;
  /** Initialisation seed. @default 0 */
  seed: number;
  /**
   * Sequences per forward/backward pass; a step accumulates the gradients of batch / microBatch
   * passes, so memory follows this, not the batch (GPT-2's 24,576-feature SAEs need it).
   * Unset: the whole batch at once.
   */
  microBatch?: number;
}

/** The paper's toy SAE schedule (reference-details §4). */
export const SAE_TRAIN_DEFAULTS: Readonly<SaeTrainConfig> = Object.freeze({
  steps: 7500,
  batch: 128,
  lr: 1e-3,
  minLr: 1e-4,
  warmup: 750,
  beta1: 0.9,
  beta2: 0.95,
  weightDecay: 0,
  gradClip: 1,
  logEvery: 25,
  checkpointEvery: 500,
  seed: 0,
});

/** Where training batches come from: rows of cached activations, per hook. */
export interface ActivationSource {
  /** Rows (tokens) available. */
  readonly tokens: number;
  /** Rows [start, start + count) of each hook's activations, row-major `[count, width]`. */
  batch(hooks: readonly string[], start: number, count: number): Promise<Map<string, Float32Array>>;
}

/** Inputs of {@link trainSaes}. */
export interface TrainSaesOptions {
  /** The SAEs (freshly built; a resumed run overwrites their parameters). */
  saes: SaeSet;
  /** The SAEs' settings, stored with the checkpoint. */
  sae: SaeConfig;
  /** Training settings. */
  train: SaeTrainConfig;
  /** Tokens per sequence (the model's context). */
  seqLen: number;
  /** Width of each hook's activations. */
  d: number;
  /** Training activations. */
  data: ActivationSource;
  /**
   * The adjacent pairs and the frozen MLP between each: an architecture with a pair loss (JSAE's
   * Jacobian term) needs them, the others ignore them.
   */
  mlps?: { pairs: readonly SaePair[]; mlp: (pair: SaePair) => MlpWeights };
  /** The stepper to train with (else `SCALAR_SAE_STEPPER`, else the backend's default). */
  stepper?: StepperKind;
  /** Checkpoint folder. */
  outDir: string;
  /** Saved beside the SAEs (model checkpoint, position, cache key…). */
  provenance: Record<string, unknown>;
  /** When it fires, the run finishes its step, saves and returns. */
  signal?: AbortSignal;
  /** Where progress lines go. @default stderr */
  log?: (line: string) => void;
  /** Receives each SAE's loss and L0 at every progress line (for the training log). */
  onReport?: (step: number, entries: { sae: string; loss: number; l0: number }[]) => void;
}

/** What {@link trainSaes} returns. */
export interface SaeTrainResult extends LoopResult {
  /** Final training loss per SAE (hook → mean squared error summed over d), at the last report. */
  losses: Record<string, number>;
  /**
   * The stepper that took the steps (of the last invocation, for a resumed run; a run finished
   * before steppers were recorded: undefined).
   */
  stepper?: StepperKind;
}

/**
 * Trains the SAEs, resuming from `outDir` when it holds an unfinished checkpoint of the same run.
 *
 * @param o SAEs, data, settings and output folder.
 * @returns Steps done, final per-SAE losses and throughput.
 * @throws {DivergenceError} Naming the SAE and the step when a loss becomes NaN or infinite.
 * @throws {CheckpointError} If `outDir` holds a run with other settings.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSaes } from "./architectures.ts";
 * import { layoutPosition } from "./positions.ts";
 * import { SAE_TRAIN_DEFAULTS, trainSaes } from "./train.ts";
 *
 * const sae = { arch: "topk", features: 8, k: 2, jsaeLambda: 0 } as const;
 * const saes = buildSaes(sae, layoutPosition("mlp", 1), 4, 0);
 * const x = Float32Array.from({ length: 64 * 4 }, (_, i) => Math.sin(i));
 * const data = {
 *   tokens: 64,
 *   batch: (hooks: readonly string[], start: number, count: number) =>
 *     Promise.resolve(new Map(hooks.map((h) => [h, x.subarray(4 * start, 4 * (start + count))]))),
 * };
 * const outDir = await Deno.makeTempDir();
 * const result = await trainSaes({
 *   saes,
 *   sae,
 *   train: { ...SAE_TRAIN_DEFAULTS, steps: 3, batch: 8, warmup: 1 },
 *   seqLen: 4,
 *   d: 4,
 *   data,
 *   outDir,
 *   provenance: {},
 *   log: () => {},
 *   stepper: "tfjs",
 * });
 * assert.deepEqual([result.step, result.stepper], [3, "tfjs"]);
 * saes.dispose();
 * await Deno.remove(outDir, { recursive: true });
 * ```
 */
export async function trainSaes(o: TrainSaesOptions): Promise<SaeTrainResult> {
  const { saes, train: cfg, outDir } = o;
  const log = o.log ?? ((line: string) => console.error(line));
  const hooks = saes.hooks;
  const settings = { sae: o.sae, train: cfg };
  const run = await runState(outDir, "settings", settings);
  if (run.kind === "finished") return finishedRun(o, run.checkpoint, log);
  let start = 0, cursor = 0;
  if (run.kind === "resume") {
    restoreParams(saes.params, run.checkpoint.params, outDir);
    ({ step: start, cursor } = run.checkpoint.state.json as { step: number; cursor: number });
    log(`resuming "${outDir}" at step ${start}`);
  }
  const rows = cfg.batch * o.seqLen;
  if (o.data.tokens < rows) {
    throw new RangeError(`Cannot train SAEs on ${o.data.tokens} tokens: one batch needs ${rows}`);
  }
  const { stepper, kind, line } = await chooseStepper(stepperOptions(o), {
    stepper: o.stepper,
    resume: run.kind === "resume"
      ? {
        step: start,
        tensors: new Map(Object.entries(run.checkpoint.state.tensors)),
      }
      : undefined,
  });
  log(line);
  // Consecutive batches through the training tokens, back to the start when the next would
  // overrun (as the reference's loader does).
  const nextStart = (at: number) => (at + 2 * rows > o.data.tokens ? 0 : at + rows);
  let pending = o.data.batch(hooks, cursor, rows);
  const pairs = architecture(o.sae.arch).pairLoss === undefined ? [] : o.mlps!.pairs;
  const components = [...hooks, ...pairs.map((p) => `the Jacobian term of ${p.up} → ${p.down}`)];
  const losses: Record<string, number> = {};
  log(
    `training ${hooks.length} ${o.sae.arch} SAEs (${hooks.map((h) => saes.width(h)).join("/")} ` +
      `features, k ${o.sae.k}) for ${cfg.steps} steps × ${rows} tokens → ${outDir}`,
  );

  try {
    const result = await runTrainingLoop({
      schedule: {
        steps: cfg.steps,
        logEvery: cfg.logEvery,
        evalEvery: cfg.steps,
        checkpointEvery: cfg.checkpointEvery,
      },
      start,
      tokensPerStep: rows,
      components,
      async step(step, willReport) {
        const arrays = await pending;
        cursor = nextStart(cursor);
        // Read the next batch while this one trains.
        pending = o.data.batch(hooks, cursor, rows);
        const figures = await stepper.step(arrays, warmupCosine(cfg, step), willReport);
        return tf.tensor1d(figures ?? new Float32Array(0));
      },
      report: (step, values) => reportFigures(o, components.length, losses, step, values),
      save: (step, finished) =>
        saveSaes(o, stepper, { step, cursor, finished, losses, stepper: kind }),
      signal: o.signal,
      log,
    });
    await stepper.writeBack();
    return { ...result, losses, stepper: kind };
  } finally {
    stepper.dispose();
  }
}

// A run whose checkpoint is final: its SAEs restored, its recorded losses and stepper.
function finishedRun(
  o: TrainSaesOptions,
  checkpoint: { config: unknown; params: Record<string, CheckpointTensor> },
  log: (line: string) => void,
): SaeTrainResult {
  log(`"${o.outDir}" already holds the trained SAEs; nothing to do`);
  restoreParams(o.saes.params, checkpoint.params, o.outDir);
  const saved = checkpoint.config as { losses?: Record<string, number>; stepper?: StepperKind };
  const losses = saved.losses ?? {};
  const done = { step: o.train.steps, interrupted: false, seconds: 0, tokensPerSecond: NaN };
  return { ...done, losses, stepper: saved.stepper };
}

// Takes in a reporting step's figures (each SAE's loss, each pair term, each SAE's L0): keeps the
// losses, hands them to `onReport`, and returns the progress line's fields.
function reportFigures(
  o: TrainSaesOptions,
  terms: number,
  losses: Record<string, number>,
  step: number,
  values: Float32Array,
): string {
  const hooks = o.saes.hooks;
  hooks.forEach((h, i) => (losses[h] = values[i]!));
  o.onReport?.(step, hooks.map((h, i) => ({ sae: h, loss: values[i]!, l0: values[terms + i]! })));
  const l0 = Array.from(values.subarray(terms), (v) => v.toFixed(1)).join("/");
  const total = values.subarray(0, terms).reduce((a, b) => a + b, 0);
  return `loss ${total.toFixed(4)} (${hooks.map((h) => losses[h]!.toFixed(3)).join("/")}) | ` +
    `L0 ${l0} | lr ${warmupCosine(o.train, step - 1).toExponential(2)}`;
}

// Writes the SAEs' checkpoint: the parameters (copied back from the stepper), the settings and
// provenance, and unless finished the optimizer state and data cursor to resume from.
async function saveSaes(
  o: TrainSaesOptions,
  stepper: SaeStepper,
  at: {
    step: number;
    cursor: number;
    finished: boolean;
    losses: Record<string, number>;
    stepper: StepperKind;
  },
): Promise<void> {
  const { saes } = o;
  await stepper.writeBack();
  const params = Object.fromEntries(
    await Promise.all(
      [...saes.params].map(async (
        [n, v],
      ) => [n, { shape: v.shape, data: (await v.data()) as Float32Array }]),
    ),
  );
  const moments = await stepper.state();
  await saveCheckpoint(o.outDir, {
    config: {
      format: "scalar-lab/saes",
      settings: { sae: o.sae, train: o.train },
      hooks: saes.hooks,
      widths: Object.fromEntries(saes.hooks.map((h) => [h, saes.width(h)])),
      ...o.provenance,
      step: at.step,
      losses: at.losses,
      stepper: at.stepper,
    },
    params,
    state: at.finished ? undefined : {
      json: { step: at.step, cursor: at.cursor },
      tensors: Object.fromEntries(moments.tensors),
    },
  });
}

// What the stepper is built from: the batch sizes, AdamW and clipping settings, and the pair
// loss's pairs, MLPs and weight when the architecture has one.
function stepperOptions(o: TrainSaesOptions): StepperOptions {
  const { train, sae } = o;
  const pairLoss = architecture(sae.arch).pairLoss;
  if (pairLoss !== undefined && o.mlps === undefined) {
    throw new RangeError(
      `Cannot train "${sae.arch}" SAEs without the MLP between each pair: pass trainSaes's "mlps"`,
    );
  }
  const width = o.saes.params.get(`${o.saes.hooks[0]}/b_dec`)!.size;
  if (width !== o.d) {
    throw new RangeError(`Cannot train SAEs of width ${width} on activations of width ${o.d}`);
  }
  return {
    saes: o.saes,
    sae,
    rows: train.batch * o.seqLen,
    microRows: train.microBatch === undefined ? undefined : train.microBatch * o.seqLen,
    adam: { beta1: train.beta1, beta2: train.beta2, eps: 1e-8, weightDecay: train.weightDecay },
    gradClip: train.gradClip,
    jacobian: pairLoss && { ...o.mlps!, lambda: pairLoss.weight(sae) },
  };
}

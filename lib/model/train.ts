/**
 * Trains a GPT on a token stream: AdamW, warm-up + cosine decay, global-norm clipping, periodic
 * validation loss, checkpoints that resume exactly (parameters, optimizer moments, step and data
 * cursor), and a progress line.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { BatchLoader, evalBatches, type TokenBatch } from "../data/batches.ts";
import { AdamW } from "../optim/adamw.ts";
import { warmupCosine } from "../optim/schedule.ts";
import { saveCheckpoint } from "./checkpoint.ts";
import { runTrainingLoop } from "../optim/training_loop.ts";
import { runState } from "../optim/resume.ts";
import { crossEntropy, GPT, type GPTConfig, initParameters, parameterShapes } from "./gpt.ts";
import { type GptCheckpointConfig, gptTensors, readGptCheckpoint } from "./gpt_checkpoint.ts";

/** Settings of a language-model training run; the defaults are the paper's toy-model recipe. */
export interface LmTrainConfig {
  /** Optimizer steps. @default 10000 */
  steps: number;
  /** Sequences per step (each `nCtx` tokens long). @default 128 */
  batch: number;
  /** Peak learning rate. @default 1e-3 */
  lr: number;
  /** Learning rate at the last step. @default 1e-5 */
  minLr: number;
  /** Linear warm-up steps. @default 1000 */
  warmup: number;
  /** AdamW weight decay, applied to matrices and embeddings only. @default 0.1 */
  weightDecay: number;
  /** AdamW β₁. @default 0.9 */
  beta1: number;
  /** AdamW β₂ (0.95 as nanoGPT: steadier at this batch size). @default 0.95 */
  beta2: number;
  /** Global gradient-norm limit. @default 1.0 */
  gradClip: number;
  /**
   * Sequences per forward/backward pass; a step accumulates `batch / microBatch` of them. Only
   * memory depends on it (tfjs's wasm backend cannot hold a 128-sequence pass). @default 32
   */
  microBatch: number;
  /** Steps between validation-loss evaluations (and at the end). @default 250 */
  evalEvery: number;
  /** Validation sequences per evaluation; 0 means the whole validation split. @default 0 */
  evalSequences: number;
  /** Steps between checkpoints (and at the end). @default 500 */
  checkpointEvery: number;
  /** Steps between progress lines. @default 10 */
  logEvery: number;
  /** Initialisation seed. @default 0 */
  seed: number;
}

/** The paper's toy-model training recipe (SPEC §2). */
export const LM_TRAIN_DEFAULTS: Readonly<LmTrainConfig> = Object.freeze({
  steps: 10_000,
  batch: 128,
  lr: 1e-3,
  minLr: 1e-5,
  warmup: 1000,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  gradClip: 1.0,
  microBatch: 32,
  evalEvery: 250,
  evalSequences: 0,
  checkpointEvery: 500,
  logEvery: 10,
  seed: 0,
});

/** One validation-loss measurement. */
export interface EvalPoint {
  /** Steps completed when measured. */
  step: number;
  /** Mean training loss over the steps since the previous evaluation. */
  trainLoss: number;
  /** Mean validation cross-entropy (nats per token). */
  valLoss: number;
}

/** What a training run returns. */
export interface LmTrainResult {
  /** Steps completed (less than `steps` when interrupted). */
  step: number;
  /** Whether the run stopped early on request; its checkpoint resumes it. */
  interrupted: boolean;
  /** Every validation measurement, including those before a resume. */
  history: EvalPoint[];
  /** Training tokens per second over this invocation. */
  tokensPerSecond: number;
  /** Wall time of this invocation, in seconds. */
  seconds: number;
}

/** Inputs of {@link trainLm}. */
export interface TrainLmOptions {
  /** The model's shape. */
  model: GPTConfig;
  /** Training settings. */
  train: LmTrainConfig;
  /** Token ids of the training and validation splits. */
  tokens: { train: Int32Array; val: Int32Array };
  /** Checkpoint folder: resumed from when it holds a checkpoint of the same run. */
  outDir: string;
  /** Saved in `config.json` beside the model (corpus checksum, tokenizer, manifest name...). */
  provenance: Omit<GptCheckpointConfig, "format" | "model">;
  /**
   * A fine-tune: start from these values (see {@link finetuneValues}) instead of a fresh
   * initialisation, and train only the parameters `trainable` accepts. @default a fresh model,
   *   every parameter trained
   */
  start?: { values: ReadonlyMap<string, Float32Array>; trainable: (name: string) => boolean };
  /** When it fires, the run finishes its step, saves a checkpoint and returns. */
  signal?: AbortSignal;
  /** Where progress lines go. @default stderr */
  log?: (line: string) => void;
}

/**
 * The optimizer of language-model training: AdamW that decays matrices and embeddings but not
 * biases or LayerNorm gains (nanoGPT, the SCALAR reference).
 *
 * @param model The model to train.
 * @param cfg Training settings (betas, weight decay).
 * @returns The optimizer.
 */
export function createLmOptimizer(model: GPT, cfg: LmTrainConfig): AdamW {
  // Frozen parameters (a fine-tune's) get no moments and no decay.
  const trained = new Map([...model.params].filter(([, v]) => v.trainable));
  return new AdamW(trained, {
    beta1: cfg.beta1,
    beta2: cfg.beta2,
    weightDecay: cfg.weightDecay,
    decays: (_name, shape) => shape.length >= 2,
  });
}

/**
 * Mean cross-entropy of the model over validation windows.
 *
 * @param model The model.
 * @param val Validation token ids.
 * @param sequences Number of windows (0 = as many as fit).
 * @param batch Windows per forward pass.
 * @returns Mean loss over all predicted tokens.
 */
export async function evaluateLoss(
  model: GPT,
  val: Int32Array,
  sequences: number,
  batch: number,
): Promise<number> {
  const T = model.config.nCtx;
  const windows = sequences > 0 ? sequences : Math.floor((val.length - 1) / T);
  let total = 0;
  for (const b of evalBatches(val, { windows, seqLen: T, batchSize: batch })) {
    const loss = tf.tidy(() => {
      const x = tf.tensor2d(b.inputs, b.shape as [number, number], "int32");
      const y = tf.tensor2d(b.targets, b.shape as [number, number], "int32");
      return crossEntropy(model.forward(x), y).mul(b.shape[0]);
    });
    total += (await loss.data())[0]!;
    loss.dispose();
  }
  return total / windows;
}

/**
 * One optimizer step on one batch: forward and backward in micro-batches of at most `microBatch`
 * sequences (gradients accumulated, weighted by size, so the step equals one full-batch step up
 * to rounding while memory stays proportional to the micro-batch), then global-norm clipping and
 * AdamW.
 *
 * @param model The model; only its trainable parameters get gradients and updates.
 * @param optimizer Its optimizer.
 * @param batch Inputs and next-token targets.
 * @param lr This step's learning rate.
 * @param cfg The gradient-norm limit and micro-batch size.
 * @returns The batch's mean loss before the update (a scalar the caller disposes).
 */
export function lmStep(
  model: GPT,
  optimizer: AdamW,
  batch: TokenBatch,
  lr: number,
  cfg: Pick<LmTrainConfig, "gradClip" | "microBatch">,
): tf.Scalar {
  const [B, T] = batch.shape;
  const trained = [...model.params].filter(([, v]) => v.trainable);
  const vars = trained.map(([, v]) => v);
  const names = trained.map(([n]) => n);
  let loss: tf.Scalar = tf.scalar(0);
  let sums: tf.Tensor[] = [];
  for (let start = 0; start < B; start += cfg.microBatch) {
    const rows = Math.min(cfg.microBatch, B - start);
    const weight = rows / B;
    const part = tf.tidy(() => {
      const span = (a: Int32Array) => a.subarray(start * T, (start + rows) * T);
      const x = tf.tensor2d(span(batch.inputs), [rows, T], "int32");
      const y = tf.tensor2d(span(batch.targets), [rows, T], "int32");
      const { value, grads } = tf.variableGrads(() => crossEntropy(model.forward(x), y), vars);
      // One micro-batch (the usual case) is the whole batch: its gradients are the sums.
      if (rows === B) return [value, ...vars.map((v) => grads[v.name]!)];
      const scaled = vars.map((v, i) => grads[v.name]!.mul(weight).add(sums[i] ?? 0));
      return [value.mul(weight).add(loss), ...scaled];
    });
    tf.dispose([loss, ...sums]);
    [loss, ...sums] = part as [tf.Scalar, ...tf.Tensor[]];
  }
  optimizer.clipAndUpdate(new Map(names.map((n, i) => [n, sums[i]!])), lr, cfg.gradClip);
  tf.dispose(sums);
  return loss;
}

/** Which parameters a fine-tune trains (`finetune.trainable` of a model manifest). */
export const FINETUNE_TRAINABLE = {
  /** Every parameter. */
  all: (_name: string) => true,
  /**
   * Each block's ln_2 and MLP, the rest frozen: the SCALAR authors' DynamicTanh fine-tune, which
   * trains the parameters whose names hold "mlp", "alpha", "beta" or "gamma".
   */
  mlp: (name: string) => /^h\.\d+\.(ln_2|mlp)\./.test(name),
} as const;

/** The choices of {@link FINETUNE_TRAINABLE}. */
export type FinetuneTrainable = keyof typeof FINETUNE_TRAINABLE;

/**
 * The starting values of a fine-tune: every parameter of `target` that the base checkpoint has
 * under the same name and shape is copied; the others take their fresh initialisation
 * ({@link initParameters} with `seed`). From a LayerNorm model to a DynamicTanh one this keeps
 * everything but ln_2, which starts at α = 2, γ = 1, β = 0, as the authors' non-strict load does.
 *
 * @param base The base model's shape and values.
 * @param target The fine-tuned model's shape.
 * @param seed Seed of the fresh values.
 * @returns Parameter name → values for `target`.
 * @throws {RangeError} If the two shapes differ in anything but the MLP's normalisation.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { initParameters } from "./gpt.ts";
 * import { finetuneValues } from "./train.ts";
 * const shape = { nLayer: 1, nHead: 1, dModel: 2, dMlp: 4, nCtx: 2, vocabSize: 3, lnEps: 1e-5 };
 * const base = { config: shape, values: initParameters(shape, 7) };
 * const dyt = finetuneValues(base, { ...shape, mlpNorm: "dyt" }, 0);
 * deepEqual(dyt.get("h.0.mlp.c_fc.weight"), base.values.get("h.0.mlp.c_fc.weight"));
 * deepEqual([...dyt.get("h.0.ln_2.alpha")!], [2]);
 * ```
 */
export function finetuneValues(
  base: { config: GPTConfig; values: ReadonlyMap<string, Float32Array> },
  target: GPTConfig,
  seed: number,
): Map<string, Float32Array> {
  for (const field of ["nLayer", "nHead", "dModel", "dMlp", "nCtx", "vocabSize"] as const) {
    if (base.config[field] !== target[field]) {
      throw new RangeError(
        `Cannot fine-tune: the base model's ${field} is ${base.config[field]}, the manifest's ` +
          `${target[field]}; start from a checkpoint of the same shape`,
      );
    }
  }
  const values = initParameters(target, seed);
  const shapes = parameterShapes(base.config);
  for (const [name, shape] of parameterShapes(target)) {
    const from = base.values.get(name);
    if (from !== undefined && shapes.get(name)?.join() === shape.join()) values.set(name, from);
  }
  return values;
}

/**
 * The folder where {@link trainLm} keeps the weights of the best validation loss so far.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { bestModelDir } from "./train.ts";
 *
 * equal(bestModelDir("results/models/toy-model"), "results/models/toy-model-best");
 * ```
 */
export function bestModelDir(outDir: string): string {
  return `${outDir.replace(/\/+$/, "")}-best`;
}

/**
 * Trains a GPT, resuming from `outDir` when it holds an unfinished checkpoint of the same run.
 *
 * @param opts The model shape, settings, data and output folder.
 * @returns Steps done, the validation history and throughput.
 * @throws {DivergenceError} If the loss becomes NaN or infinite (naming the step).
 * @throws {CheckpointError} If `outDir` holds a checkpoint of a run with other settings.
 */
export async function trainLm(opts: TrainLmOptions): Promise<LmTrainResult> {
  const { train: cfg, tokens, outDir } = opts;
  const log = opts.log ?? ((line: string) => console.error(line));
  const T = opts.model.nCtx;
  const run = await runState(outDir, "train", cfg);
  if (run.kind === "finished") {
    log(`"${outDir}" already holds the finished model; nothing to do`);
    const history = (run.checkpoint.config as { history?: EvalPoint[] }).history ?? [];
    return { step: cfg.steps, interrupted: false, history, tokensPerSecond: NaN, seconds: 0 };
  }

  let model: GPT, start = 0, cursor = 0, history: EvalPoint[] = [];
  // The training loss averaged between evaluations; saved so that a resumed run reports the same.
  let lossSum = 0, lossCount = 0;
  if (run.kind === "resume") {
    const { values } = readGptCheckpoint(outDir, run.checkpoint);
    model = new GPT(opts.model, values, opts.start?.trainable ?? true);
    const state = run.checkpoint.state.json as {
      step: number;
      cursor: number;
      history: EvalPoint[];
      lossSum: number;
      lossCount: number;
    };
    ({ step: start, cursor, history, lossSum, lossCount } = state);
    log(`resuming "${outDir}" at step ${start}`);
  } else if (opts.start) {
    model = new GPT(opts.model, opts.start.values, opts.start.trainable);
  } else {
    model = GPT.init(opts.model, cfg.seed);
  }
  const optimizer = createLmOptimizer(model, cfg);
  if (run.kind === "resume") {
    optimizer.load({ step: start, tensors: new Map(Object.entries(run.checkpoint.state.tensors)) });
  }
  const loader = new BatchLoader(tokens.train, { batchSize: cfg.batch, seqLen: T, cursor });
  const tokensPerStep = cfg.batch * T;
  log(
    `training ${opts.model.nLayer}-layer GPT (d_model ${opts.model.dModel}) for ${cfg.steps} steps` +
      ` × ${tokensPerStep} tokens (${
        (cfg.steps * tokensPerStep / tokens.train.length).toFixed(1)
      } epochs of ${tokens.train.length} tokens) → ${outDir}`,
  );

  const result = await runTrainingLoop({
    schedule: cfg,
    start,
    tokensPerStep,
    components: ["the model"],
    step: (step) => lmStep(model, optimizer, loader.next(), warmupCosine(cfg, step), cfg),
    report(step, [loss]) {
      lossSum += loss!;
      lossCount++;
      return `loss ${loss!.toFixed(4)} | lr ${warmupCosine(cfg, step - 1).toExponential(2)}`;
    },
    async evaluate(step) {
      const valLoss = await evaluateLoss(model, tokens.val, cfg.evalSequences, cfg.microBatch);
      const best = Math.min(...history.map((p) => p.valLoss));
      history.push({ step, trainLoss: lossSum / lossCount, valLoss });
      lossSum = lossCount = 0;
      log(`step ${step}: val loss ${valLoss.toFixed(4)}${valLoss < best ? " (best)" : ""}`);
      // The reference keeps the best-validation weights. They go beside the run's folder, not
      // inside it, because every checkpoint replaces that folder whole.
      if (valLoss < best) await saveModel(bestModelDir(outDir), step);
    },
    async save(step, finished) {
      await saveModel(outDir, step, finished ? undefined : await optimizer.state());
    },
    signal: opts.signal,
    log,
  });
  optimizer.dispose();
  model.dispose();
  return { ...result, history };

  /** Saves the model, with the run's resume state when `moments` is given. */
  async function saveModel(
    dir: string,
    step: number,
    moments?: Awaited<ReturnType<AdamW["state"]>>,
  ) {
    const values = await model.parameterValues();
    await saveCheckpoint(dir, {
      config: {
        format: "scalar-lab/gpt",
        model: opts.model,
        ...opts.provenance,
        train: cfg,
        step,
        history,
      },
      params: gptTensors(opts.model, values),
      // A finished run keeps no optimizer state: it is a model, not a run to resume.
      state: moments && {
        json: { step, cursor: loader.cursor, history, lossSum, lossCount },
        tensors: Object.fromEntries(moments.tensors),
      },
    });
  }
}

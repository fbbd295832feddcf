/**
 * Trains all SAEs of a run together on cached clean activations of the frozen model (SPEC §4): one
 * batch of tokens per step, every SAE reconstructs its own hook, the losses (plus λ·L_J per JSAE
 * pair) are summed for one backward pass, then global-norm clipping and AdamW over all parameters.
 * Seeded, resumable, with progress and divergence detection. On the `webgpu` backend the step runs
 * in the GPU engine instead (`lib/sae/gpu/sae_engine.ts`: the same numbers from fused WGSL kernels).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { chooseSaeEngine } from "./gpu/sae_training.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { AdamW, clipGlobalNorm } from "../optim/adamw.ts";
import { runState } from "../optim/resume.ts";
import { warmupCosine } from "../optim/schedule.ts";
import { type LoopResult, runTrainingLoop } from "../optim/training_loop.ts";
import type { SaeConfig, SaeSet } from "./architectures.ts";
import type { MlpWeights } from "./jacobian.ts";
import type { SaePair } from "./positions.ts";
import { decode, encode, reconstructionLoss } from "./sae.ts";
import { restoreParams } from "./sae_checkpoint.ts";

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

/**
 * The extra loss of JSAE pairs (`jacobian.ts`), given every hook's input activations `x` and its
 * SAE's feature activations `f` for this batch.
 */
export type PairLoss = (
  pair: SaePair,
  x: ReadonlyMap<string, tf.Tensor2D>,
  f: ReadonlyMap<string, tf.Tensor2D>,
) => tf.Scalar;

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
   * JSAE: the pairs and their Jacobian loss (weighted by `sae.jsaeLambda` here), and the MLP
   * between each pair: with it the GPU engine computes the term itself on the `webgpu` backend;
   * without it JSAE steps run through tfjs there.
   */
  jacobian?: { pairs: readonly SaePair[]; loss: PairLoss; mlp?: (pair: SaePair) => MlpWeights };
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
}

/**
 * Trains the SAEs, resuming from `outDir` when it holds an unfinished checkpoint of the same run.
 *
 * @param o SAEs, data, settings and output folder.
 * @returns Steps done, final per-SAE losses and throughput.
 * @throws {DivergenceError} Naming the SAE and the step when a loss becomes NaN or infinite.
 * @throws {CheckpointError} If `outDir` holds a run with other settings.
 */
export async function trainSaes(o: TrainSaesOptions): Promise<SaeTrainResult> {
  const { saes, train: cfg, outDir } = o;
  const log = o.log ?? ((line: string) => console.error(line));
  const hooks = saes.hooks;
  const settings = { sae: o.sae, train: cfg };
  const run = await runState(outDir, "settings", settings);
  if (run.kind === "finished") {
    log(`"${outDir}" already holds the trained SAEs; nothing to do`);
    restoreParams(saes.params, run.checkpoint.params, outDir);
    const losses = (run.checkpoint.config as { losses?: Record<string, number> }).losses ?? {};
    return { step: cfg.steps, interrupted: false, seconds: 0, tokensPerSecond: NaN, losses };
  }
  const optimizer = new AdamW(saes.params, {
    beta1: cfg.beta1,
    beta2: cfg.beta2,
    weightDecay: cfg.weightDecay,
  });
  let start = 0, cursor = 0;
  if (run.kind === "resume") {
    restoreParams(saes.params, run.checkpoint.params, outDir);
    ({ step: start, cursor } = run.checkpoint.state.json as { step: number; cursor: number });
    optimizer.load({ step: start, tensors: new Map(Object.entries(run.checkpoint.state.tensors)) });
    log(`resuming "${outDir}" at step ${start}`);
  }
  const rows = cfg.batch * o.seqLen;
  if (o.data.tokens < rows) {
    throw new RangeError(`Cannot train SAEs on ${o.data.tokens} tokens: one batch needs ${rows}`);
  }
  // On the webgpu backend the engine runs the whole step in fused kernels (JSAE only when it
  // has the MLPs to compute the Jacobian term with).
  const mlp = o.jacobian?.mlp;
  const { engine, line } = o.jacobian === undefined || mlp !== undefined
    ? await chooseSaeEngine({
      saes,
      sae: o.sae,
      train: cfg,
      seqLen: o.seqLen,
      resume: run.kind === "resume" ? await optimizer.state() : undefined,
      jacobian: o.jacobian && { pairs: o.jacobian.pairs, mlp: mlp!, lambda: o.sae.jsaeLambda },
    })
    : {};
  if (line !== undefined) log(line);
  // Consecutive batches through the training tokens, back to the start when the next would
  // overrun (as the reference's loader does).
  const nextStart = (at: number) => (at + 2 * rows > o.data.tokens ? 0 : at + rows);
  let pending = o.data.batch(hooks, cursor, rows);
  const pairs = o.jacobian?.pairs ?? [];
  const components = [...hooks, ...pairs.map((p) => `the Jacobian term of ${p.up} → ${p.down}`)];
  const vars = [...saes.params.values()];
  const names = [...saes.params.keys()];
  const losses: Record<string, number> = {};
  log(
    `training ${hooks.length} ${o.sae.arch} SAEs (${hooks.map((h) => saes.width(h)).join("/")} ` +
      `features, k ${o.sae.k}) for ${cfg.steps} steps × ${rows} tokens → ${outDir}`,
  );

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
      if (engine !== undefined) {
        const figures = await engine.step(arrays, warmupCosine(cfg, step), willReport);
        return tf.tensor1d(figures ?? new Float32Array(0));
      }
      const micro = (cfg.microBatch ?? cfg.batch) * o.seqLen;
      let grads: tf.Tensor[] | undefined, figures: tf.Tensor | undefined;
      for (let first = 0; first < rows; first += micro) {
        const n = Math.min(micro, rows - first);
        // Reconstruction losses are means over tokens, so each pass weighs in by its share of
        // the batch; the Jacobian terms are sums over tokens and add up as they are.
        const share = n / rows;
        const pass = tf.tidy(() => {
          const x = new Map(
            hooks.map((
              h,
            ) => [
              h,
              tf.tensor2d(arrays.get(h)!.subarray(first * o.d, (first + n) * o.d), [n, o.d]),
            ]),
          );
          const kept: tf.Tensor[] = [];
          const { grads, value } = tf.variableGrads(() => {
            const l0s: tf.Tensor[] = [];
            const features = new Map<string, tf.Tensor2D>();
            const terms = hooks.map((h) => {
              const w = saes.weights(h);
              const f = encode(w, x.get(h)!, saes.k);
              features.set(h, f);
              if (willReport) l0s.push(f.greater(0).sum(1).mean().cast("float32").reshape([1]));
              const loss = reconstructionLoss(x.get(h)!, decode(w, f));
              return share === 1 ? loss : loss.mul(share);
            });
            for (const p of pairs) {
              terms.push(o.jacobian!.loss(p, x, features).mul(o.sae.jsaeLambda));
            }
            // The components (and L0s) leave the gradient scope kept; the objective is their sum.
            const stacked = tf.stack(terms);
            const l0 = l0s.length === 0
              ? []
              : [share === 1 ? tf.concat(l0s) : tf.concat(l0s).mul(share)];
            kept.push(tf.keep(tf.concat([stacked, ...l0])));
            return stacked.sum() as tf.Scalar;
          }, vars);
          value.dispose();
          return { grads: vars.map((v) => grads[v.name]!), figures: kept[0]! };
        });
        if (grads === undefined) [grads, figures] = [pass.grads, pass.figures];
        else {
          const sums = tf.tidy(() => grads!.map((g, i) => g.add(pass.grads[i]!)));
          const total = figures!.add(pass.figures);
          tf.dispose([...grads, ...pass.grads, figures!, pass.figures]);
          [grads, figures] = [sums, total];
        }
      }
      tf.tidy(() => {
        const named = new Map(names.map((n, i) => [n, grads![i]!]));
        optimizer.update(clipGlobalNorm(named, cfg.gradClip).grads, warmupCosine(cfg, step));
      });
      tf.dispose(grads!);
      return figures!;
    },
    report(step, values) {
      hooks.forEach((h, i) => (losses[h] = values[i]!));
      o.onReport?.(
        step,
        hooks.map((h, i) => ({ sae: h, loss: values[i]!, l0: values[components.length + i]! })),
      );
      const l0 = Array.from(values.subarray(components.length), (v) => v.toFixed(1)).join("/");
      const total = values.subarray(0, components.length).reduce((a, b) => a + b, 0);
      return `loss ${total.toFixed(4)} (${hooks.map((h) => losses[h]!.toFixed(3)).join("/")}) | ` +
        `L0 ${l0} | lr ${warmupCosine(cfg, step - 1).toExponential(2)}`;
    },
    async save(step, finished) {
      await engine?.writeBack();
      const params = Object.fromEntries(
        await Promise.all(
          [...saes.params].map(async (
            [n, v],
          ) => [n, { shape: v.shape, data: (await v.data()) as Float32Array }]),
        ),
      );
      const moments = await (engine ?? optimizer).state();
      await saveCheckpoint(outDir, {
        config: {
          format: "scalar-lab/saes",
          settings,
          hooks,
          widths: Object.fromEntries(hooks.map((h) => [h, saes.width(h)])),
          ...o.provenance,
          step,
          losses,
        },
        params,
        state: finished ? undefined : {
          json: { step, cursor },
          tensors: Object.fromEntries(moments.tensors),
        },
      });
    },
    signal: o.signal,
    log,
  });
  await engine?.writeBack();
  engine?.dispose();
  optimizer.dispose();
  return { ...result, losses };
}

/**
 * The benchmark's workloads, built from the project's own model and SAE code so that a speed-up
 * measured here is a speed-up of real training. Each case prepares its tensors once and returns a
 * step function; the PyTorch peer (`tests/bench/peer_torch.py`) runs the same shapes.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { Gpu } from "../sae/gpu/device.ts";
import { SaeEngine } from "../sae/gpu/sae_engine.ts";
import { GPT, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import { createLmOptimizer, LM_TRAIN_DEFAULTS, lmStep } from "../model/train.ts";
import { AdamW, clipGlobalNorm } from "../optim/adamw.ts";
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import { decode, encode, initSaeValues, reconstructionLoss } from "../sae/sae.ts";
import { createRng, normalArray } from "../util/rng.ts";

/** A prepared workload: one call is one training step; `dispose` frees its tensors. */
export interface BenchCase {
  /** Row name, shared with the peer's output. */
  name: string;
  /** What the step does, for the table. */
  detail: string;
  /** Runs one step and waits for its result. */
  step(): Promise<void>;
  /** Frees the case's tensors. */
  dispose(): void;
}

/** Shapes of the SAE case: the paper's toy TopK SAE on one 128 × 128-token batch. */
export const SAE_CASE = { tokens: 16_384, d: 64, features: 512, k: 10 } as const;

/** Shape of the GPT case: the toy model on batch × 128 tokens. */
export const GPT_CASE = { batch: 32 } as const;

/**
 * One TopK SAE training step: encode, decode, squared-error loss, backward, global-norm clipping
 * and AdamW, exactly as SAE training does.
 *
 * @param seed Seed of the data and initial weights.
 * @returns The prepared case.
 */
export function saeTopkStep(seed = 0): BenchCase {
  const { tokens, d, features, k } = SAE_CASE;
  const rng = createRng(seed);
  const v = initSaeValues(d, features, rng);
  const params = new Map<string, tf.Variable>([
    ["wEnc", tf.variable(tf.tensor2d(v.wEnc, [d, features]))],
    ["bEnc", tf.variable(tf.tensor1d(v.bEnc))],
    ["wDec", tf.variable(tf.tensor2d(v.wDec, [features, d]))],
    ["bDec", tf.variable(tf.tensor1d(v.bDec))],
  ]);
  const w = {
    wEnc: params.get("wEnc") as tf.Variable<tf.Rank.R2>,
    bEnc: params.get("bEnc") as tf.Variable<tf.Rank.R1>,
    wDec: params.get("wDec") as tf.Variable<tf.Rank.R2>,
    bDec: params.get("bDec") as tf.Variable<tf.Rank.R1>,
  };
  const x = tf.tensor2d(normalArray(rng, tokens * d, 1), [tokens, d]);
  const optimizer = new AdamW(params, { beta1: 0.9, beta2: 0.95 });
  const vars = [...params.values()];
  return {
    name: "sae_topk_step",
    detail: `x[${tokens},${d}] → ${features} features, TopK k=${k}, AdamW`,
    async step() {
      const loss = tf.tidy(() => {
        const { value, grads } = tf.variableGrads(
          () => reconstructionLoss(x, decode(w, encode(w, x, k))),
          vars,
        );
        const named = new Map([...params.keys()].map((n, i) => [n, grads[vars[i]!.name]!]));
        optimizer.update(clipGlobalNorm(named, 1).grads, 1e-3);
        return value;
      });
      await loss.data();
      loss.dispose();
    },
    dispose() {
      for (const t of [...vars, x]) t.dispose();
      optimizer.dispose();
    },
  };
}

/**
 * The same TopK SAE step through the WebGPU engine (`lib/sae/gpu/sae_engine.ts`): fused WGSL kernels,
 * the batch resident on the device after the first step (as the stock case's tensor is), and the
 * loss read back every step (as the stock case awaits its loss), so a step's time includes
 * waiting for the GPU.
 *
 * @param gpu The device.
 * @param seed Seed of the data and initial weights.
 * @param tokens Rows per step (fewer than the paper's only to check the path on a software adapter).
 * @returns The prepared case, which can also time one step kernel by kernel (`profile`) and
 *   steps submitted back to back, read once at the end (`backToBack`: ms per step).
 */
export async function saeEngineStep(
  gpu: Gpu,
  seed = 0,
  tokens: number = SAE_CASE.tokens,
): Promise<
  BenchCase & {
    profile(): Promise<{ kernel: string; ms: number }[] | undefined>;
    backToBack(steps: number): Promise<number>;
  }
> {
  const { d, features, k } = SAE_CASE;
  const sae: SaeConfig = { arch: "topk", features, k, jsaeLambda: 0 };
  const saes = buildSaes(
    sae,
    { position: "mlp", hooks: ["x"], pairs: [], chains: [["x"]] },
    d,
    seed,
  );
  const engine = await SaeEngine.create(gpu, {
    saes,
    sae,
    rows: tokens,
    adam: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 },
    gradClip: 1,
  });
  let batch: Map<string, Float32Array> | undefined = new Map([
    ["x", normalArray(createRng(seed + 1), tokens * d, 1)],
  ]);
  return {
    name: "sae_topk_step",
    detail: `x[${tokens},${d}] → ${features} features, TopK k=${k}, AdamW; WebGPU engine ` +
      `(${gpu.adapter})`,
    async step() {
      await engine.step(batch, 1e-3, true);
      batch = undefined;
    },
    profile: () => engine.profile(1e-3),
    async backToBack(steps) {
      const t0 = performance.now();
      for (let i = 1; i <= steps; i++) await engine.step(undefined, 1e-3, i === steps);
      return (performance.now() - t0) / steps;
    },
    dispose() {
      engine.dispose();
      saes.dispose();
    },
  };
}

/**
 * One toy-GPT training step (forward, backward, clipping, AdamW) on random tokens, through the same
 * `lmStep` that `train-model` runs.
 *
 * @param seed Seed of the tokens and initial weights.
 * @param batch Sequences of 128 tokens per step.
 * @returns The prepared case.
 */
export function gptTrainStep(seed = 0, batch: number = GPT_CASE.batch): BenchCase {
  const c = SHAKESPEARE_64X4;
  const model = GPT.init(c, seed);
  const optimizer = createLmOptimizer(model, LM_TRAIN_DEFAULTS);
  const rng = createRng(seed + 1);
  const ids = Int32Array.from({ length: batch * c.nCtx + 1 }, () => rng.int(c.vocabSize));
  const tokens = {
    inputs: ids.subarray(0, batch * c.nCtx),
    targets: ids.subarray(1),
    shape: [batch, c.nCtx] as const,
  };
  return {
    name: "gpt_train_step",
    detail: `toy GPT, batch ${batch} × ${c.nCtx} tokens, AdamW`,
    async step() {
      const loss = lmStep(model, optimizer, tokens, 1e-3, { gradClip: 1, microBatch: batch });
      await loss.data();
      loss.dispose();
    },
    dispose() {
      model.dispose();
      optimizer.dispose();
    },
  };
}

/**
 * Times a case: a few warm-up steps (kernel set-up, allocator growth), then the median of `reps`.
 *
 * @param c The case.
 * @param reps Timed steps.
 * @param warmup Untimed steps first.
 * @returns Median and fastest step time in milliseconds.
 */
export async function timeCase(
  c: BenchCase,
  reps: number,
  warmup = 2,
): Promise<{ medianMs: number; minMs: number }> {
  for (let i = 0; i < warmup; i++) await c.step();
  const times: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await c.step();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { medianMs: times[Math.floor(times.length / 2)]!, minMs: times[0]! };
}

/**
 * What a run will cost before it starts: its peak memory, its arithmetic, and from a throughput
 * measured on the chosen backend, its time. Rough by design (a factor of 2–3 either way): enough
 * to tell a 10-minute run from a 10-day one, and to refuse a run that cannot fit before it has
 * spent an hour filling a cache.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { loadDataset, TOKENIZERS } from "../data/dataset.ts";
import { type GPTConfig, parameterShapes } from "../model/gpt.ts";
import { gptConfigFromHf } from "../model/gpt2.ts";
import { formatDuration } from "../util/progress.ts";
import { DEFAULT_MEMORY_BUDGET_BYTES } from "../sae/activation_cache.ts";
import { buildSaes, saeShapes } from "../sae/architectures.ts";
import { layoutPosition } from "../sae/positions.ts";
import type { StepperKind } from "../sae/stepper.ts";
import { stepperFor } from "../sae/steppers/choose.ts";
import { CpuSaeEngine } from "../sae/cpu_engine.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { type SaeRunConfig, sequencesPerPass } from "./sae_run.ts";

/** One line of an estimate. */
export interface EstimatePart {
  /** What it is. */
  label: string;
  /** Its size: bytes for memory, floating-point operations for work. */
  amount: number;
}

/** One stage of a run's arithmetic, and which of the measured throughputs does it. */
export interface WorkPart extends EstimatePart {
  /** The SAE stepper's steps, or the model's own passes (evaluation, SCALAR). */
  on: keyof Throughput;
}

/**
 * Floating-point operations per second of the two engines a run's arithmetic goes through: on the
 * CPU the SAE steps run in the native engine (OpenBLAS + C kernels), several times the rate of
 * tfjs's matrix products that the model's passes use, so one figure would misjudge one of them.
 */
export interface Throughput {
  /** The SAE stepper's rate, in the operations that {@link stepFlops} counts. */
  saeSteps: number;
  /** tfjs's matrix-product rate on an SAE-encoder-like product. */
  model: number;
}

/** The cost of one run. */
export interface RunEstimate {
  /** Memory held at the run's peak, by part. */
  memory: EstimatePart[];
  /** Total of `memory`. */
  peakBytes: number;
  /** Arithmetic by stage. */
  work: WorkPart[];
  /** Total of `work`. */
  flops: number;
}

/** Bytes per SCALAR edge: float64 sums of squares, float32 score, its rank and sorting lists. */
const EDGE_BYTES = 32;

/**
 * The SAE widths of a run, per hook in forward order.
 *
 * @param config The run.
 * @param nLayer The model's layers.
 * @returns Hook → features.
 */
export function saeWidths(config: SaeRunConfig, nLayer: number): Map<string, number> {
  const layout = layoutPosition(config.position, nLayer, config.layers);
  // An SAE's width is its encoder bias's length, whatever the activation width (1 here).
  const shapes = saeShapes(config.sae, layout, 1);
  return new Map(layout.hooks.map((h) => [h, shapes.get(`${h}/b_enc`)![0]!]));
}

/**
 * Trainable SAE parameters: per SAE W_enc, b_enc, W_dec, b_dec; a Staircase chain shares one
 * W_enc/W_dec as wide as its last SAE.
 *
 * @param config The run.
 * @param d The activation width.
 * @param nLayer The model's layers.
 * @returns The count (the paper's 528,896 for TopK at the toy model's mlp-block).
 */
export function saeParameterCount(config: SaeRunConfig, d: number, nLayer: number): number {
  const shapes = saeShapes(config.sae, layoutPosition(config.position, nLayer, config.layers), d);
  return [...shapes.values()].reduce((n, shape) => n + shape.reduce((a, b) => a * b, 1), 0);
}

/** The corpus sizes an estimate needs. */
export interface CorpusSize {
  /** Training tokens (the activation cache's rows). */
  train: number;
  /** Validation tokens (evaluation reads all of them when `eval.sequences` is 0). */
  val: number;
}

/**
 * The arithmetic of one SAE training step on the stepper that takes it (`../sae/stepper.ts`).
 * The tfjs reference and the WebGPU engine are counted as dense: the encoder's forward product
 * and both of its backward products, 6·d FLOPs per token and feature. The CPU engine does the
 * dense encoder product (2·d per token and feature) and, per token, sparse work over the k kept
 * features only: decode and ∂L/∂pre (2·d each), ∂W_dec and ∂W_enc (2·d each); a JSAE pair adds
 * its Jacobian term: per token the MLP's first product for GELU′ (2·d·m), J over the k × k kept
 * pairs and both of its gathered gradients (2·m each per pair, 6·k²·m), and per step the
 * factors A = W_dec·W_fc, Bᵀ = W_encᵀ·W_projᵀ and their weight gradients (4·d·m per feature of
 * either SAE). Clipping and AdamW (a few FLOPs per parameter) are left out.
 *
 * @param config The run.
 * @param shape The model's shape.
 * @param stepper The stepper that trains the run's SAEs.
 * @returns FLOPs per optimizer step (without the model's forward of streamed activations).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { SHAKESPEARE_64X4 } from "../model/gpt.ts";
 * import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
 * import { stepFlops } from "./estimate.ts";
 * import { type SaeRunConfig, SCALAR_DEFAULTS } from "./sae_run.ts";
 *
 * const config: SaeRunConfig = {
 *   modelDir: "m",
 *   corpus: "tinyshakespeare",
 *   position: "mlp",
 *   layers: [0],
 *   sae: { arch: "topk", features: 512, k: 10, jsaeLambda: 0 },
 *   train: { ...SAE_TRAIN_DEFAULTS, batch: 1 },
 *   evalSequences: 0,
 *   scalar: SCALAR_DEFAULTS,
 * };
 * // Two SAEs of 512 features on 128 tokens of width 64.
 * assert.equal(stepFlops(config, SHAKESPEARE_64X4, "tfjs"), 128 * 2 * 6 * 64 * 512);
 * assert.equal(stepFlops(config, SHAKESPEARE_64X4, "cpu"), 128 * 2 * (2 * 64 * 512 + 8 * 64 * 10));
 * ```
 */
export function stepFlops(config: SaeRunConfig, shape: GPTConfig, stepper: StepperKind): number {
  const { dModel: d, dMlp: m, nCtx, nLayer } = shape;
  const width = saeWidths(config, nLayer);
  const tokens = config.train.batch * nCtx, k = config.sae.k;
  const featureSum = [...width.values()].reduce((a, b) => a + b, 0);
  if (stepper !== "cpu") return tokens * 6 * d * featureSum;
  const saes = tokens * engineTokenFlops(d, featureSum, width.size, k);
  if (config.sae.arch !== "jsae") return saes;
  const pairs = layoutPosition(config.position, nLayer, config.layers).pairs;
  return saes + pairs.reduce(
    (n, p) =>
      n + tokens * (2 * d * m + 6 * k * k * m) +
      4 * d * m * (width.get(p.up)! + width.get(p.down)!),
    0,
  );
}

// Per token, the CPU engine's work over SAEs of `featureSum` features in all: the dense encoder
// product, then decode, ∂L/∂pre, ∂W_dec and ∂W_enc over the k kept features only (2 · d each).
const engineTokenFlops = (d: number, featureSum: number, saes: number, k: number) =>
  2 * d * featureSum + saes * 8 * d * k;

/**
 * Estimates one run's peak memory and arithmetic.
 *
 * @param config The run.
 * @param shape The model's shape.
 * @param corpus The sizes of its token splits.
 * @param stepper The stepper that will train its SAEs (`stepperFor` of the backend in use).
 * @returns Memory and work, by part.
 */
export function estimateRun(
  config: SaeRunConfig,
  shape: GPTConfig,
  corpus: CorpusSize,
  stepper: StepperKind = "tfjs",
): RunEstimate {
  const { dModel: d, nCtx, vocabSize, nLayer } = shape;
  const widths = saeWidths(config, nLayer);
  const layout = layoutPosition(config.position, nLayer, config.layers);
  const modelParams = [...parameterShapes(shape).values()]
    .reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  // Per token, a block costs 2 FLOPs per weight plus attention's scores and mixing.
  const blockFlops = 2 * (4 * d * d + 2 * d * shape.dMlp) + 4 * nCtx * d;
  const headFlops = 2 * d * vocabSize;
  const featureSum = [...widths.values()].reduce((a, b) => a + b, 0);
  const t = config.train;
  const stepTokens = t.batch * nCtx;
  const passTokens = (t.microBatch ?? t.batch) * nCtx;
  const hookBytes = widths.size * d * 4;
  // The runner caches activations that fit the memory budget and streams the rest (sae_run.ts).
  const cacheBytes = Math.floor(corpus.train / nCtx) * nCtx * hookBytes;
  const cached = cacheBytes <= DEFAULT_MEMORY_BUDGET_BYTES;
  // A training pass holds about four dense [tokens, width] arrays per SAE (pre-activations,
  // kept features and their gradients) and three [tokens, d] ones (input, reconstruction, error).
  const passBytes = 4 * passTokens * (4 * featureSum + 3 * widths.size * d);
  const evalBytes = 3 * 4 * sequencesPerPass(shape) * nCtx * vocabSize;
  const edges = Math.max(...layout.pairs.map((p) => widths.get(p.up)! * widths.get(p.down)!));
  const scalarBytes = config.scalar.enabled ? EDGE_BYTES * edges : 0;
  const memory: EstimatePart[] = [
    { label: "model", amount: 4 * modelParams },
    {
      label: "SAE parameters, gradients and Adam moments",
      amount: 16 * saeParameterCount(config, d, nLayer),
    },
    cached
      ? { label: "activation cache (in memory)", amount: cacheBytes }
      // This batch and the next, prefetched while this one trains.
      : { label: "streamed activations of two batches", amount: 2 * stepTokens * hookBytes },
    {
      label: "the largest of a training pass, an evaluation pass and SCALAR's edge scores",
      amount: Math.max(passBytes, evalBytes, scalarBytes),
    },
  ];

  const lastLayer = Math.max(...layout.pairs.map((p) => p.layer)) + 1;
  const evalTokens = (config.evalSequences || Math.floor(corpus.val / nCtx) - 1) * nCtx;
  const forward = nLayer * blockFlops + headFlops;
  const work: WorkPart[] = [
    {
      // Streamed activations add the model's forward up to the last hook at every step.
      label: "training",
      on: "saeSteps",
      amount: t.steps *
        (stepFlops(config, shape, stepper) + (cached ? 0 : stepTokens * lastLayer * blockFlops)),
    },
    {
      // The clean model, each SAE spliced in alone, then all together.
      label: "evaluation",
      on: "model",
      amount: evalTokens * (layout.hooks.length + 2) * forward,
    },
    {
      label: "SCALAR",
      on: "model",
      amount: config.scalar.enabled
        ? layout.pairs.length * (
          // Attribution: a backward through the segment per kept downstream feature and step.
          config.scalar.igSequences * nCtx * config.scalar.igSteps * config.sae.k * 3 *
            blockFlops +
          // Ablation: 35 edge counts, each a forward of the prompts to the logits.
          35 * config.scalar.prompts * nCtx * forward
        )
        : 0,
    },
  ];
  const sum = (parts: EstimatePart[]) => parts.reduce((n, p) => n + p.amount, 0);
  return { memory, peakBytes: sum(memory), work, flops: sum(work) };
}

/**
 * Measures the throughputs a run will see: tfjs's matrix products for the model's passes, and the
 * SAE stepper's own steps — on the CPU engine, a few timed steps of a TopK SAE (512 features,
 * k 10, 8,192 tokens) at the model's width, rated in {@link stepFlops}'s operations, so that the
 * engine's selection, sparse backward and AdamW count as they do in a run.
 *
 * @param d The activation width.
 * @param stepper The stepper that will train the SAEs.
 * @returns Floating-point operations per second, by engine.
 */
export async function measureThroughput(d: number, stepper: StepperKind): Promise<Throughput> {
  const model = await measureMatMul(d);
  if (stepper !== "cpu") return { model, saeSteps: model };
  // An engine that cannot start (no C compiler) hands the run to the tfjs reference: rate that.
  return { model, saeSteps: await measureCpuEngine(d).catch(() => model) };
}

/** tfjs's rate on a [2,048, d] · [d, 2,048] product, after one warm-up product. */
async function measureMatMul(d: number): Promise<number> {
  const [m, n] = [2048, 2048];
  const a = tf.randomNormal([m, d]), b = tf.randomNormal([d, n]);
  try {
    const warm = tf.matMul(a, b); // kernels compile, buffers are made
    await warm.data();
    warm.dispose();
    const reps = 3, t0 = performance.now();
    for (let i = 0; i < reps; i++) {
      const c = tf.matMul(a, b);
      await c.data();
      c.dispose();
    }
    return (reps * 2 * m * n * d) / ((performance.now() - t0) / 1000);
  } finally {
    tf.dispose([a, b]);
  }
}

/** The CPU engine's rate on a TopK SAE's steps, after one warm-up step. */
async function measureCpuEngine(d: number): Promise<number> {
  const sae = { arch: "topk", features: 512, k: 10, jsaeLambda: 0 } as const;
  const rows = 8192;
  const saes = buildSaes(sae, layoutPosition("mlp", 1, [0]), d, 0);
  const engine = await CpuSaeEngine.create({
    saes,
    sae,
    rows,
    adam: { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0 },
    gradClip: 1,
  });
  try {
    const batch = new Map(saes.hooks.map((h) => [h, normalArray(createRng(0), rows * d, 1)]));
    await engine.step(batch, 1e-3, false);
    const reps = 4, t0 = performance.now();
    for (let i = 0; i < reps; i++) await engine.step(batch, 1e-3, i === reps - 1);
    const n = saes.hooks.length;
    const flops = reps * rows * engineTokenFlops(d, sae.features * n, n, sae.k);
    return flops / ((performance.now() - t0) / 1000);
  } finally {
    engine.dispose();
    saes.dispose();
  }
}

/** A model's shape and tokenizer from its folder, without reading the weights. */
async function modelShape(
  config: SaeRunConfig,
): Promise<{ shape: GPTConfig; tokenizer: "char" | "gpt2" }> {
  const json = JSON.parse(await Deno.readTextFile(`${config.modelDir}/config.json`));
  return config.modelKind === "gpt2"
    ? { shape: gptConfigFromHf(json), tokenizer: "gpt2" }
    : { shape: json.model as GPTConfig, tokenizer: json.tokenizer ?? "char" };
}

/**
 * Estimates every run of a grid, reading each model's shape and each corpus once (the corpus is
 * tokenized now if it never was: the run would do it first anyway), with the SAE stepper the
 * backend in use picks (`SCALAR_SAE_STEPPER` included; an engine that then fails to start
 * hands over to the slower reference, so the time is a lower bound in that case).
 *
 * @param configs The runs.
 * @param log Progress lines of a large corpus.
 * @returns Each run's estimate, the activation width of the first, and the stepper.
 */
export async function estimateRuns(
  configs: readonly SaeRunConfig[],
  log?: (line: string) => void,
): Promise<{ estimates: RunEstimate[]; d: number; stepper: StepperKind }> {
  const seen = new Map<string, Promise<{ shape: GPTConfig; corpus: CorpusSize }>>();
  const inputs = (c: SaeRunConfig) => {
    const key = JSON.stringify([c.modelKind, c.modelDir, c.corpus, c.dataPath, c.textField]);
    if (!seen.has(key)) {
      seen.set(
        key,
        (async () => {
          const { shape, tokenizer } = await modelShape(c);
          const data = await loadDataset(
            { corpus: c.corpus, path: c.dataPath, textField: c.textField },
            TOKENIZERS[tokenizer],
            log,
          );
          return { shape, corpus: { train: data.train.length, val: data.val.length } };
        })(),
      );
    }
    return seen.get(key)!;
  };
  const estimates: RunEstimate[] = [];
  const { kind } = stepperFor(tf.getBackend(), Deno.env.get("SCALAR_SAE_STEPPER"));
  let d = 0;
  for (const c of configs) {
    const { shape, corpus } = await inputs(c);
    d ||= shape.dModel;
    estimates.push(estimateRun(c, shape, corpus, kind));
  }
  return { estimates, d, stepper: kind };
}

const gigabytes = (bytes: number) => `${(bytes / 1e9).toFixed(bytes < 1e9 ? 2 : 1)} GB`;

/**
 * Says what a grid will cost, one line per figure.
 *
 * @param estimates Each pending run's estimate.
 * @param rates The measured throughputs.
 * @param availableBytes Memory free for the run, when the backend's memory can be known.
 * @returns The lines.
 */
export function formatEstimate(
  estimates: readonly RunEstimate[],
  rates: Throughput,
  availableBytes: number | undefined,
): string[] {
  const largest = estimates.reduce((a, b) => (b.peakBytes > a.peakBytes ? b : a));
  const partSeconds = (p: WorkPart) => p.amount / rates[p.on];
  const seconds = (e: RunEstimate) => e.work.reduce((n, p) => n + partSeconds(p), 0);
  const total = estimates.reduce((n, e) => n + seconds(e), 0);
  const slowest = estimates.reduce((a, b) => (seconds(b) > seconds(a) ? b : a));
  const gflops = (rate: number) => `${(rate / 1e9).toFixed(1)} GFLOP/s`;
  return [
    `estimate (rough, a factor of 2–3 either way; measured here: SAE steps ` +
    `${gflops(rates.saeSteps)}, the model's passes ${gflops(rates.model)}):`,
    `  memory at the peak of the largest run: ${gigabytes(largest.peakBytes)}` +
    (availableBytes === undefined
      ? " (this backend's free memory is unknown)"
      : ` of ${gigabytes(availableBytes)} available`) +
    ` — ${largest.memory.map((p) => `${p.label} ${gigabytes(p.amount)}`).join(", ")}`,
    `  time: ${formatDuration(total)} for ${estimates.length} run${
      estimates.length === 1 ? "" : "s"
    }; the longest ` +
    `${formatDuration(seconds(slowest))} (${
      slowest.work.map((p) => `${p.label} ${formatDuration(partSeconds(p))}`).join(", ")
    })`,
  ];
}

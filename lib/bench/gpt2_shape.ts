/**
 * GPT-2 Small's shape on whatever backend is active, where no weights can be fetched: random
 * weights written in the Hugging Face layout and read back as the runner reads them, the SAEs of
 * `experiments/gpt2-mlp.yaml` (TopK, its widths, layers, batch and micro-batches) trained for a
 * few hundred steps on activations streamed from the model, the time per step, and from it the
 * projected wall time of every run of `gpt2-mlp.yaml` and `gpt2-block.yaml`.
 *
 * The projection turns the measured step into a throughput through the run estimate's training
 * arithmetic (`estimateRun`), then divides each run's estimated arithmetic by it: a run's other
 * stages (evaluation, SCALAR) are assumed to go as fast per FLOP as training, which is rough.
 *
 * @module
 */
import { join } from "node:path";
import { parse, stringify } from "yaml";
import { estimateRun } from "../experiment/estimate.ts";
import { expandManifestText } from "../experiment/manifest.ts";
import type { SaeRunConfig } from "../experiment/sae_run.ts";
import { GPT, GPT2_SMALL, type GPTConfig } from "../model/gpt.ts";
import { saveGpt2 } from "../model/gpt2.ts";
import { loadModel } from "../model/load.ts";
import { streamActivations } from "../sae/activation_stream.ts";
import { buildSaes } from "../sae/architectures.ts";
import { layoutPosition } from "../sae/positions.ts";
import { type ActivationSource, trainSaes } from "../sae/train.ts";
import { createRng } from "../util/rng.ts";

/** GPT-2's layer count and vocabulary, otherwise as small as a software adapter wants. */
export const TINY_GPT2: Readonly<GPTConfig> = Object.freeze({
  ...GPT2_SMALL,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 16,
});

/** Corpus sizes the projection assumes: the paper's ~100M training tokens. */
const PAPER_CORPUS = { train: 1e8, val: 1e7 };

/** The manifests projected. */
export const GPT2_MANIFESTS = ["experiments/gpt2-mlp.yaml", "experiments/gpt2-block.yaml"];

/** One projected run. */
export interface Gpt2Projection {
  /** Manifest file. */
  manifest: string;
  /** The run's architecture. */
  arch: string;
  /** Its optimizer steps. */
  steps: number;
  /** Projected training seconds. */
  trainSeconds: number;
  /** Projected seconds of the whole run (training, evaluation, SCALAR). */
  totalSeconds: number;
}

/** What {@link gpt2Shape} measured. */
export interface Gpt2ShapeResult {
  /** Steps timed (after the first two, which compile kernels). */
  steps: number;
  /** Median milliseconds per step. */
  stepMs: number;
  /** Training FLOP/s the step time implies. */
  flopsPerSecond: number;
  /** What ran. */
  detail: string;
  /** Every run of the GPT-2 manifests at that speed. */
  projections: Gpt2Projection[];
}

/**
 * A GPT-2 manifest's runs with the model and data swapped for the ones at hand; `tiny` also
 * shrinks the SAEs and batch to a software adapter's size.
 */
async function manifestRuns(
  file: string,
  modelDir: string,
  change: (m: Record<string, Record<string, unknown>>) => void,
): Promise<SaeRunConfig[]> {
  const m = parse(await Deno.readTextFile(file));
  m.model.path = modelDir;
  m.data = { corpus: "tinyshakespeare" };
  change(m);
  return (await expandManifestText(file, stringify(m))).runs.map((r) => r.config);
}

/**
 * The wall time between step starts: a step starts with a batch request at a multiple of the
 * step's rows (micro-batched or prefetched requests in between are part of the step).
 */
function stepClock(source: ActivationSource, stepRows: number) {
  const starts: number[] = [];
  let rows = 0;
  const timed: ActivationSource = {
    tokens: source.tokens,
    batch(hooks, start, count) {
      if (rows % stepRows === 0) starts.push(performance.now());
      rows += count;
      return source.batch(hooks, start, count);
    },
  };
  return { timed, starts };
}

/** A signal that fires `seconds` after the first step began (polled, since that is not yet). */
function deadline(starts: readonly number[], seconds: number) {
  const abort = new AbortController();
  const poll = setInterval(() => {
    if (starts.length > 0 && performance.now() - starts[0]! > seconds * 1000) abort.abort();
  }, 100);
  return { signal: abort.signal, stop: () => clearInterval(poll) };
}

/** The median of the gaps between successive values. */
function medianGap(times: readonly number[]): number {
  const gaps = times.slice(1).map((t, i) => t - times[i]!).sort((a, b) => a - b);
  return gaps[Math.floor(gaps.length / 2)] ?? NaN;
}

/**
 * Trains `gpt2-mlp.yaml`'s TopK SAEs for `steps` steps on random GPT-2 weights and projects the
 * GPT-2 manifests' wall time.
 *
 * @param o Steps (≥ 4), `seconds` to stop sooner (after the step in progress; at least four steps
 *   must have run), and `tiny` for a software adapter's sizes.
 * @returns The step time and the projections.
 * @throws {RangeError} If fewer than four steps ran before `seconds` ran out.
 *
 * @example
 * ```ts
 * import { equal, ok } from "node:assert/strict";
 * import { gpt2Shape } from "./gpt2_shape.ts";
 * const r = await gpt2Shape({ steps: 4, tiny: true });
 * ok(r.stepMs > 0);
 * equal(r.projections.length, 4);
 * ```
 */
export async function gpt2Shape(
  o: { steps: number; seconds?: number; tiny?: boolean; log?: (line: string) => void },
): Promise<Gpt2ShapeResult> {
  if (!Number.isInteger(o.steps) || o.steps < 4) {
    throw new RangeError(`Cannot time ${o.steps} GPT-2 SAE steps: need an integer ≥ 4`);
  }
  const shape = o.tiny ? TINY_GPT2 : GPT2_SMALL;
  const shrink = (m: Record<string, Record<string, unknown>>) => {
    if (!o.tiny) return;
    m.sae = { ...m.sae, features: 16, k: 2 };
    m.train = { ...m.train, batch: 2 };
  };
  const dir = await Deno.makeTempDir({ prefix: "scalar-gpt2-shape-" });
  try {
    const random = GPT.init(shape, 0);
    await saveGpt2(join(dir, "gpt2"), shape, await random.parameterValues());
    random.dispose();
    const [mlp, block] = await Promise.all(
      GPT2_MANIFESTS.map((f) => manifestRuns(f, join(dir, "gpt2"), shrink)),
    );
    const config = mlp!.find((c) => c.sae.arch === "topk")!;
    const { model } = await loadModel("gpt2", join(dir, "gpt2"));
    const layout = layoutPosition(config.position, shape.nLayer, config.layers);
    const saes = buildSaes(config.sae, layout, shape.dModel, 0);
    const rng = createRng(3);
    const train = { ...config.train, steps: o.steps, checkpointEvery: o.steps, logEvery: o.steps };
    const tokens = Int32Array.from(
      { length: 2 * train.batch * shape.nCtx },
      () => rng.int(shape.vocabSize),
    );
    const stream = streamActivations({ model, tokens, seqLen: shape.nCtx, batchSequences: 1 });
    const { timed, starts } = stepClock(stream, train.batch * shape.nCtx);
    // The clock starts with the first step: weights, SAEs and kernels are made by then.
    const clock = o.seconds === undefined ? undefined : deadline(starts, o.seconds);
    try {
      await trainSaes({
        saes,
        sae: config.sae,
        train,
        seqLen: shape.nCtx,
        d: shape.dModel,
        data: timed,
        outDir: join(dir, "saes"),
        provenance: {},
        log: o.log ?? (() => {}),
        signal: clock?.signal,
      });
    } finally {
      clock?.stop();
      saes.dispose();
      model.dispose();
    }
    if (starts.length < 4) {
      throw new RangeError(
        `Cannot time GPT-2 SAE steps: ${starts.length} began within ${o.seconds} s; allow more`,
      );
    }
    const stepMs = medianGap(starts.slice(2));
    const perStep = (c: SaeRunConfig) =>
      estimateRun(c, shape, PAPER_CORPUS).work.find((w) => w.label === "training")!.amount /
      c.train.steps;
    const flopsPerSecond = perStep(config) / (stepMs / 1000);
    const projections = [...mlp!.map((c) => [GPT2_MANIFESTS[0]!, c] as const)]
      .concat(block!.map((c) => [GPT2_MANIFESTS[1]!, c] as const))
      .map(([manifest, c]) => {
        const e = estimateRun(c, shape, PAPER_CORPUS);
        return {
          manifest,
          arch: c.sae.arch,
          steps: c.train.steps,
          trainSeconds: perStep(c) * c.train.steps / flopsPerSecond,
          totalSeconds: e.flops / flopsPerSecond,
        };
      });
    return {
      steps: starts.length - 2,
      stepMs,
      flopsPerSecond,
      detail: `${layout.hooks.length} TopK SAEs × ${config.sae.features} features (k ` +
        `${config.sae.k}) at ${layout.hooks.join(", ")}; ${train.batch} × ${shape.nCtx} tokens ` +
        `per step, ${train.microBatch ?? train.batch} sequence(s) per pass, activations ` +
        `streamed from random ${o.tiny ? "tiny GPT-2-layout" : "GPT-2 Small"} weights`,
      projections,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

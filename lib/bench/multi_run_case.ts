/**
 * The GPU bench's case for several runs trained together (`lib/sae/gpu/multi_run.ts`): the toy
 * grid's `mlp-block` TopK runs (8 SAEs of 512 features each, k 10, 128 × 128 rows per step) on
 * one batch, N seeds stepped in one submission per step against one run stepped alone. At toy
 * shapes a GPU waits on launches and round trips, so the time per run and step should fall with N.
 *
 * @module
 */
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import type { Gpu } from "../sae/gpu/device.ts";
import { MultiRunEngine } from "../sae/gpu/multi_run.ts";
import type { SaeEngineOptions } from "../sae/gpu/sae_engine.ts";
import { layoutPosition } from "../sae/positions.ts";
import { createRng, normalArray } from "../util/rng.ts";

/** The runs' shape: the paper's toy SAEs at the feed-forward block of the 4-layer model. */
const SHAPE = { d: 64, features: 512, k: 10, layers: 4, rows: 128 * 128 } as const;

/** Steps between read-backs of the logged figures, as training reports. */
const REPORT_EVERY = 25;

/** What {@link runsTogether} measured. */
export interface RunsTogetherTiming {
  /** Milliseconds per step of one run stepped alone. */
  aloneMs: number;
  /** Milliseconds per step and run of `runs` runs stepped together. */
  togetherMs: number;
  /** What ran. */
  detail: string;
}

/** Milliseconds per step of `n` runs stepped together (after one warm-up step). */
async function timeRuns(gpu: Gpu, n: number, steps: number, rows: number): Promise<number> {
  const sae: SaeConfig = { arch: "topk", features: SHAPE.features, k: SHAPE.k, jsaeLambda: 0 };
  const layout = layoutPosition("mlp-block", SHAPE.layers);
  const runs: SaeEngineOptions[] = Array.from({ length: n }, (_, seed) => ({
    saes: buildSaes(sae, layout, SHAPE.d, seed),
    sae,
    rows,
    adam: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 },
    gradClip: 1,
  }));
  const rng = createRng(n);
  const batch = new Map(layout.hooks.map((h) => [h, normalArray(rng, rows * SHAPE.d, 1)]));
  const together = await MultiRunEngine.create(gpu, runs);
  try {
    const lrs = runs.map(() => 1e-3);
    await together.step(runs.map(() => batch), lrs, true);
    const t0 = performance.now();
    for (let s = 1; s <= steps; s++) {
      const report = s === steps || s % REPORT_EVERY === 0;
      await together.step(runs.map(() => undefined), lrs, report);
    }
    return (performance.now() - t0) / steps;
  } finally {
    together.dispose();
    for (const r of runs) r.saes.dispose();
  }
}

/**
 * Times `runs` toy runs stepped together and one alone, on a batch already on the device.
 *
 * @param gpu The device.
 * @param o Runs together (≥ 2), timed steps, rows per step (default the paper's 16,384).
 * @returns Per step: one run alone, and per run together.
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { requestGpu } from "../sae/gpu/device.ts";
 * import { runsTogether } from "./multi_run_case.ts";
 * const gpu = await requestGpu();
 * if (typeof gpu !== "string") {
 *   const t = await runsTogether(gpu, { runs: 2, steps: 1, rows: 16 });
 *   ok(t.aloneMs > 0 && t.togetherMs > 0);
 * }
 * ```
 */
export async function runsTogether(
  gpu: Gpu,
  o: { runs: number; steps: number; rows?: number },
): Promise<RunsTogetherTiming> {
  const rows = o.rows ?? SHAPE.rows;
  const aloneMs = await timeRuns(gpu, 1, o.steps, rows);
  const togetherMs = (await timeRuns(gpu, o.runs, o.steps, rows)) / o.runs;
  return {
    aloneMs,
    togetherMs,
    detail: `${o.runs} toy mlp-block TopK runs (8 SAEs × ${SHAPE.features} features, k ` +
      `${SHAPE.k}, ${rows} rows) stepped together, one submission per step: ` +
      `${togetherMs.toFixed(3)} ms per run and step against ${aloneMs.toFixed(3)} ms alone ` +
      `(${
        (aloneMs / togetherMs).toFixed(2)
      }×), over ${o.steps} steps; WebGPU engine (${gpu.adapter})`,
  };
}

/**
 * Fake run records and results with chosen values, for the store's tests.
 *
 * @module
 */
import type { SaeMetrics } from "../../sae/metrics.ts";
import type { CurvePoint, CurveScore } from "../../scalar/score.ts";
import type { RunRecord, RunResult } from "../write.ts";

/** A temporary folder and a database path inside it; `cleanup` removes both. */
export async function tempDb(): Promise<
  { path: string; dir: string; cleanup: () => Promise<void> }
> {
  const dir = await Deno.makeTempDir({ prefix: "scalar-store-" });
  return {
    dir,
    path: `${dir}/results/scalar.duckdb`,
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A run record; `overrides` replace fields. */
export function fakeRun(overrides: Partial<RunRecord> = {}): RunRecord {
  return {
    id: "run-1",
    experiment: "demo",
    manifestPath: "experiments/demo.yaml",
    config: { position: "mlp", sae: { arch: "topk", k: 10 } },
    varied: { "sae.arch": "topk" },
    seed: 0,
    backend: "cpu",
    versions: { deno: "2.9.6" },
    startedAt: new Date("2026-01-02T03:04:05.000Z"),
    wallSeconds: 12.5,
    finishedAt: new Date("2026-01-02T03:04:17.500Z"),
    ...overrides,
  };
}

/** SAE metrics with fixed plausible values; `values` replace fields. */
export function fakeSaeMetrics(values: Partial<SaeMetrics> = {}): SaeMetrics {
  return {
    mse: 1,
    fvu: 0.1,
    explained_variance: 0.9,
    l0: 10,
    dead_fraction: 0,
    l2_ratio: 1,
    tokens: 1000,
    ce_loss_without_sae: 2,
    ce_loss_with_sae: 2.1,
    ce_loss_increase: 0.1,
    ce_loss_with_ablation: 4,
    ce_loss_score: 0.95,
    kl_div_with_sae: 0.05,
    kl_div_with_ablation: 1,
    kl_div_score: 0.95,
    ...values,
  };
}

function score(absolute: number, relative: number): CurveScore {
  return {
    absolute,
    absoluteLow: absolute * 0.9,
    absoluteHigh: absolute * 1.1,
    absoluteError: absolute * 0.1,
    relative,
    relativeLow: relative * 0.9,
    relativeHigh: relative * 1.1,
    logAxis: 3,
    logAxisLow: 2.5,
    logAxisHigh: 3.5,
  };
}

/** Settings of {@link fakeResult}. */
export interface FakeResultOptions {
  /** Per layer: absolute and relative SCALAR (model curve). */
  layers?: { absolute: number; relative: number }[];
  /** Per-SAE metric overrides, by hook (the hooks are mlp_in/mlp_out of each layer). */
  saes?: Record<string, Partial<SaeMetrics>>;
  /** Curve points per pair. @default 3 */
  points?: number;
}

/** The hooks of layer l at the `mlp` position. */
export function mlpHooks(layer: number): [string, string] {
  return [`blocks.${layer}.hook_mlp_in`, `blocks.${layer}.hook_mlp_out`];
}

/** A run result at the `mlp` position with the given SCALAR values and metrics. */
export function fakeResult(o: FakeResultOptions = {}): RunResult {
  const layers = o.layers ?? [{ absolute: 100, relative: 10 }, { absolute: 200, relative: 20 }];
  const points = o.points ?? 3;
  const saes: Record<string, SaeMetrics> = {};
  for (let l = 0; l < layers.length; l++) {
    for (const hook of mlpHooks(l)) saes[hook] = fakeSaeMetrics(o.saes?.[hook]);
  }
  for (const [hook, values] of Object.entries(o.saes ?? {})) {
    saes[hook] ??= fakeSaeMetrics(values);
  }
  return {
    training: {
      steps: 100,
      seconds: 5,
      tokensPerSecond: 1e5,
      losses: Object.fromEntries(Object.keys(saes).map((h) => [h, 0.5])),
      stepper: "cpu",
    },
    metrics: {
      saes,
      run: {
        ce_loss_clean: 2,
        ce_loss_all_saes: 2.5,
        ce_loss_all_increase: 0.5,
        kl_div_all_saes: 0.4,
        sequences: 8,
        tokens: 1024,
      },
    },
    pairs: layers.map((s, layer) => {
      const [up, down] = mlpHooks(layer);
      const curve: CurvePoint[] = Array.from({ length: points }, (_, i) => ({
        n: 2 ** i,
        klModel: 1 / (i + 1),
        klModelLow: 0.9 / (i + 1),
        klModelHigh: 1.1 / (i + 1),
        klFull: 0.5 / (i + 1),
        klFullLow: 0.4 / (i + 1),
        klFullHigh: 0.6 / (i + 1),
      }));
      return {
        up,
        down,
        layer,
        eTot: 512 * 512,
        attribution: { tokens: 100, zeroFraction: 0.25, seconds: 1.5 },
        curve,
        scores: {
          model: score(s.absolute, s.relative),
          full: score(s.absolute / 2, s.relative / 2),
          eTot: 512 * 512,
          nRange: [1, 2 ** (points - 1)],
        },
      };
    }),
    trainLog: [
      { step: 50, sae: mlpHooks(0)[0], loss: 0.9, l0: 12 },
      { step: 100, sae: mlpHooks(0)[0], loss: 0.5, l0: 10 },
    ],
  };
}

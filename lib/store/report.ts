/**
 * The paper's tables from the results store: per position and architecture (and any other varied
 * parameter but the seed), SCALAR absolute and relative per layer and summed, side by side, the
 * improvement over TopK of both, the absolute ratio X / TopK paired by seed, the SAE metrics and
 * the pairs' Staircase diagnostics, each as mean ± sample std over the finished seeds, with the
 * seed count.
 *
 * Three layers, so that each can be tested alone: {@link loadReportData} reads plain rows with SQL;
 * {@link buildReport} groups and summarises them (pure); {@link formatReport} prints markdown,
 * CSV or JSON (pure). {@link report} does all three.
 *
 * @module
 */
import { LIST, listValue, VARCHAR } from "@duckdb/node-api";
import { ARCHITECTURES, isBaseline } from "../sae/architectures.ts";
import { POSITIONS } from "../sae/positions.ts";
import { DIAGNOSTIC_METRICS } from "../scalar/diagnostics.ts";
import { aggregates, improvement, PAPER_TABLE_UNITS } from "../scalar/score.ts";
import { type Store, StoreError } from "./db.ts";

/** The SAE metrics the report shows unless told otherwise. */
export const REPORT_METRICS: readonly string[] = Object.freeze([
  "mse",
  "fvu",
  "l0",
  "ce_loss_increase",
]);

/** The report's output formats. */
export type ReportFormat = "md" | "csv" | "json";

/** What a report cell is: one position, architecture and combination of other varied values. */
export interface CellKey {
  /** The SAE position (`mlp`, `mlp-block`, `block`). */
  position: string;
  /** The SAE architecture. */
  arch: string;
  /** The other varied parameters (not seed, position or architecture), path → value as text. */
  params: Readonly<Record<string, string>>;
}

/** Options of {@link report} and {@link buildReport}. */
export interface ReportOptions {
  /** The experiment (the manifest's `name`). */
  experiment: string;
  /**
   * Seeds each cell should have: a number for all cells, or a function of the cell (the runner
   * knows its grid, excludes included). A cell with fewer finished seeds is flagged. @default the
   * number of runs the database records for the cell, whatever their status (so failed and
   * interrupted runs flag it; runs never started are not known to the database)
   */
  expectedSeeds?: number | ((cell: CellKey) => number | undefined);
  /** Which ablation curve's SCALAR: against the `model` (the paper's) or the `full` circuit. @default "model" */
  curve?: "model" | "full";
  /** The SAE metrics to show. @default REPORT_METRICS */
  metrics?: readonly string[];
}

/** One run as the report sees it. */
export interface ReportRun {
  /** Run id. */
  id: string;
  /** Its seed. */
  seed: number;
  /** `done`, `failed` or `running`. */
  status: string;
  /** Its position (config `position`, else the varied `position`), or null if neither. */
  position: string | null;
  /** Its architecture (config `sae.arch`, else the varied `sae.arch`), or null. */
  arch: string | null;
  /** Its varied parameters, path → value as text. */
  params: Readonly<Record<string, string>>;
}

/** One pair's SCALAR of one run. */
export interface ReportScore {
  /** Run id. */
  runId: string;
  /** The pair's layer. */
  layer: number;
  /** Absolute SCALAR. */
  absolute: number;
  /** Relative SCALAR. */
  relative: number;
}

/** One metric value of one run. */
export interface ReportMetric {
  /** Run id. */
  runId: string;
  /** Hook, pair or `run`. */
  sae: string;
  /** Metric name. */
  metric: string;
  /** Its value. */
  value: number;
}

/** The rows a report is built from (scores and metrics of finished runs only). */
export interface ReportData {
  /** The experiment. */
  experiment: string;
  /** Every run of it, whatever its status. */
  runs: ReportRun[];
  /** SCALAR of the chosen curve, per finished run and pair. */
  scores: ReportScore[];
  /** Metric values of finished runs. */
  metrics: ReportMetric[];
}

/** Mean and sample standard deviation of n values. */
export interface Stat {
  /** The mean. */
  mean: number;
  /** The sample standard deviation (n − 1 in the denominator); null when n < 2. */
  std: number | null;
  /** How many values. */
  n: number;
}

/** SCALAR of a cell: per layer and summed over layers. */
export interface ScalarSummary {
  /** Per layer that has scores, in layer order. */
  perLayer: (Stat & { layer: number })[];
  /** Of the per-run sums over all the position's layers (runs lacking a layer are left out). */
  sum: Stat | null;
}

/** Improvement of a cell's SCALAR over its TopK baseline, in percent, from seed means. */
export interface Improvement {
  /** Per layer: 100 (mean S_TopK − mean S_X) / mean S_TopK; null where either mean is missing. */
  perLayer: { layer: number; percent: number | null }[];
  /** 100 (1 − Σₗ mean S_X,l / Σₗ mean S_TopK,l); null unless every layer has both means. */
  sum: number | null;
  /**
   * The paper's as-printed aggregate (per-layer units 1e4, 1e4, 1e5, 1e5: see `aggregates` in
   * `lib/scalar/score.ts`); only for 4 layers, else null.
   */
  paperUnits: number | null;
}

/**
 * The absolute SCALAR of X over TopK's, run by run: for each seed both cells finished, abs_X / abs_TopK
 * of the two runs with that seed, summarised over those seeds. Below 1, X's circuits need a smaller
 * absolute area. Relative SCALAR divides each by E_tot / 2^18, so the relative improvement is
 * 1 − ratio · E_TopK / E_X: a Staircase `mlp-block` pair (512 × 1,024 edges, twice TopK's) reads
 * +50 % at ratio 1.
 */
export interface PairedRatio {
  /** Seeds finished in both cells, ascending. */
  seeds: number[];
  /** Per layer with scores in both: mean ± sample std of abs_X,l / abs_TopK,l over the seeds. */
  perLayer: (Stat & { layer: number })[];
  /** Of Σₗ abs_X,l / Σₗ abs_TopK,l per seed (seeds lacking a layer are left out); null without layers. */
  sum: Stat | null;
}

/** One row of the report: a cell's seeds, SCALAR, improvement and metrics. */
export interface ReportCell extends CellKey {
  /** `params` as `path=value, …` (empty when none). */
  label: string;
  /** Finished seeds, ascending. */
  seeds: number[];
  /** Finished seeds: the n of the row. */
  n: number;
  /** Seeds expected. */
  expected: number;
  /** Runs of the cell recorded as failed. */
  failed: number;
  /** Runs of the cell recorded as running (or interrupted). */
  running: number;
  /** Whether n < expected. */
  incomplete: boolean;
  /** Absolute SCALAR. */
  absolute: ScalarSummary;
  /** Relative SCALAR. */
  relative: ScalarSummary;
  /** Whether this cell is a TopK baseline. */
  isBaseline: boolean;
  /**
   * Improvement over the TopK cell with the same position and other parameters (ignoring
   * architecture-specific ones such as `sae.jsae.lambda`); null for TopK cells and cells without
   * such a baseline.
   */
  improvement: {
    /** The baseline cell's label. */
    baseline: string;
    /** Of relative SCALAR (the paper's tables). */
    relative: Improvement;
    /** Of absolute SCALAR. */
    absolute: Improvement;
    /** Absolute SCALAR of X / TopK, paired by seed. */
    absoluteRatio: PairedRatio;
    /** Whether either cell has fewer finished seeds than expected. */
    incomplete: boolean;
  } | null;
  /** Per SAE (hook, or `run`), the requested metrics. */
  metrics: { sae: string; values: Record<string, Stat> }[];
  /** Per pair (`up→down`) that has them, its Staircase diagnostics (`lib/scalar/diagnostics.ts`). */
  diagnostics: { pair: string; values: Record<string, Stat> }[];
}

/** The report of one experiment. */
export interface Report {
  /** The experiment. */
  experiment: string;
  /** The ablation curve scored. */
  curve: "model" | "full";
  /** The metrics shown. */
  metricNames: string[];
  /** The Staircase diagnostics any cell has, in {@link DIAGNOSTIC_METRICS} order. */
  diagnosticNames: string[];
  /** Whether any cell has varied parameters besides position, architecture and seed. */
  hasParams: boolean;
  /** Per position, its layers and cells. */
  positions: { position: string; layers: number[]; cells: ReportCell[] }[];
}

/**
 * Mean and sample standard deviation (n − 1) of some values.
 *
 * @param values The values (NaN propagates).
 * @returns The statistics, or null for no values.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { summarize } from "./report.ts";
 * deepEqual(summarize([1, 2, 3]), { mean: 2, std: 1, n: 3 });
 * deepEqual(summarize([5]), { mean: 5, std: null, n: 1 });
 * ```
 */
export function summarize(values: readonly number[]): Stat | null {
  const n = values.length;
  if (n === 0) return null;
  const first = values.reduce((s, v) => s + v, 0) / n;
  // One correction pass (the corrected two-pass algorithm): equal values get exactly their value
  // as the mean and 0 as the std, instead of rounding noise such as 0.1 ± 1.7e-17.
  const mean = first + values.reduce((s, v) => s + (v - first), 0) / n;
  const std = n < 2 ? null : Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1));
  return { mean, std, n };
}

/**
 * A number in three significant digits: fixed between 0.001 and 10,000, else exponent form.
 *
 * @param x The number.
 * @returns Its text (`NaN`, `∞`, `-∞` for the non-finite).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { formatNumber } from "./report.ts";
 * equal(formatNumber(12), "12.0");
 * equal(formatNumber(0.012345), "0.0123");
 * equal(formatNumber(24000), "2.40e4");
 * ```
 */
export function formatNumber(x: number): string {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "∞" : "-∞";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e4 || a < 1e-3) return x.toExponential(2).replace("e+", "e");
  return x.toFixed(Math.max(0, 2 - Math.floor(Math.log10(a))));
}

/**
 * `mean ± std`, with `±—` when the std is undefined (one seed).
 *
 * @param s The statistics.
 * @returns The text.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { formatMeanStd } from "./report.ts";
 * equal(formatMeanStd({ mean: 12, std: 2, n: 3 }), "12.0 ± 2.00");
 * equal(formatMeanStd({ mean: 12, std: null, n: 1 }), "12.0 ±—");
 * equal(formatMeanStd({ mean: 12000, std: 2000, n: 3 }), "1.20e4 ± 2.00e3");
 * ```
 */
export function formatMeanStd(s: Stat): string {
  const mean = formatNumber(s.mean);
  if (s.std === null) return `${mean} ±—`;
  // A mean in exponent form gets its std in exponent form too, so the two compare at a glance.
  const std = mean.includes("e") && Number.isFinite(s.std) && s.std !== 0
    ? s.std.toExponential(2).replace("e+", "e")
    : formatNumber(s.std);
  return `${mean} ± ${std}`;
}

/**
 * The seed count of a cell: `n=3`, or `n=3/5 ⚠` when fewer than expected finished.
 *
 * @param n Finished seeds.
 * @param expected Seeds expected.
 * @returns The text.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { formatSeedCount } from "./report.ts";
 * equal(formatSeedCount(3, 5), "n=3/5 ⚠");
 * equal(formatSeedCount(5, 5), "n=5");
 * ```
 */
export function formatSeedCount(n: number, expected: number): string {
  return n < expected ? `n=${n}/${expected} ⚠` : `n=${n}`;
}

/**
 * An improvement in percent with two decimals (`58.33%`), `—` when undefined, ` ⚠` when
 * computed from incomplete cells.
 *
 * @param percent The improvement in percent, or null.
 * @param incomplete Whether a cell behind it has fewer seeds than expected.
 * @returns The text.
 */
export function formatPercent(percent: number | null, incomplete = false): string {
  if (percent === null) return "—";
  return `${Number.isFinite(percent) ? percent.toFixed(2) : formatNumber(percent)}%` +
    (incomplete ? " ⚠" : "");
}

const HOOK_ORDER = [
  "hook_resid_pre",
  "hook_attn_out",
  "hook_resid_mid",
  "hook_mlp_in",
  "mlp.hook_post",
  "hook_mlp_out",
  "hook_resid_post",
];

/** Varied paths that a cell's own columns show, or that vary within a cell. */
const NOT_CELL_PARAMS = new Set(["seed", "seeds", "position", "sae.arch"]);

/**
 * Architecture-specific settings (`sae.jsae.lambda`, `sae.staircase.…`): a TopK baseline has no
 * such setting of its own, so they are ignored when matching a cell to its baseline.
 */
const ARCH_SPECIFIC = /^sae\.[^.]+\./;

/** Orders hooks as the forward pass meets them, `run` last. */
function compareSae(a: string, b: string): number {
  const key = (h: string): [number, number, string] => {
    if (h === "run") return [Infinity, 0, h];
    const m = /^blocks\.(\d+)\.(.+?)(→.*)?$/.exec(h);
    if (m === null) return [-1, 0, h];
    const i = HOOK_ORDER.indexOf(m[2]!);
    return [Number(m[1]), i < 0 ? HOOK_ORDER.length : i, h];
  };
  const [x, y] = [key(a), key(b)];
  return x[0] - y[0] || x[1] - y[1] || (x[2] < y[2] ? -1 : x[2] > y[2] ? 1 : 0);
}

function rank(order: readonly string[], value: string): number {
  const i = order.indexOf(value);
  return i < 0 ? order.length : i;
}

function labelOf(params: Readonly<Record<string, string>>): string {
  return Object.entries(params).map(([k, v]) => `${k}=${v}`).join(", ");
}

/**
 * The report cell a run belongs to: its position, architecture, and the varied parameters other
 * than the seed (the plots group runs by the same rule).
 *
 * @param run A run as the report loads it.
 * @returns The cell's key.
 */
export function cellKeyOf(run: ReportRun): CellKey {
  const params: Record<string, string> = {};
  for (const path of Object.keys(run.params).sort()) {
    if (!NOT_CELL_PARAMS.has(path)) params[path] = run.params[path]!;
  }
  return {
    position: run.position ?? run.params["position"] ?? "?",
    arch: run.arch ?? run.params["sae.arch"] ?? "?",
    params,
  };
}

/** The key a cell and its TopK baseline share. */
function baselineKey(cell: CellKey): string {
  // A run restricted to some layers (`model.layers`) is compared layer by layer with the baseline
  // of every layer: its layers are not a setting the baseline needs to share.
  const shared = Object.entries(cell.params)
    .filter(([k]) => !ARCH_SPECIFIC.test(k) && k !== "model.layers");
  return JSON.stringify([cell.position, shared]);
}

function scalarSummary(
  runIds: readonly string[],
  layers: readonly number[],
  byRun: Map<string, Map<number, ReportScore>>,
  field: "absolute" | "relative",
): ScalarSummary {
  const perLayer: (Stat & { layer: number })[] = [];
  for (const layer of layers) {
    const values = runIds.flatMap((id) => {
      const s = byRun.get(id)?.get(layer);
      return s === undefined ? [] : [s[field]];
    });
    const stat = summarize(values);
    if (stat !== null) perLayer.push({ layer, ...stat });
  }
  const sums = runIds.flatMap((id) => {
    const scores = byRun.get(id);
    if (scores === undefined || layers.some((l) => !scores.has(l))) return [];
    return [layers.reduce((s, l) => s + scores.get(l)![field], 0)];
  });
  return { perLayer, sum: layers.length === 0 ? null : summarize(sums) };
}

function improvementOf(
  x: ScalarSummary,
  topk: ScalarSummary,
  layers: readonly number[],
): Improvement {
  const meanAt = (s: ScalarSummary, layer: number) => s.perLayer.find((p) => p.layer === layer);
  const both = layers.map((layer) => ({ layer, x: meanAt(x, layer), t: meanAt(topk, layer) }));
  const complete = both.length > 0 && both.every((b) => b.x !== undefined && b.t !== undefined);
  const perLayer = both.map(({ layer, x, t }) => ({
    layer,
    percent: x === undefined || t === undefined ? null : 100 * improvement(t.mean, x.mean),
  }));
  if (!complete) return { perLayer, sum: null, paperUnits: null };
  const scores = both.map((b) => ({ topk: b.t!.mean, x: b.x!.mean }));
  const paper = layers.length === PAPER_TABLE_UNITS.length ? aggregates(scores) : null;
  return {
    perLayer,
    sum: aggregates(scores, scores.map(() => 1)).consistentPercent,
    paperUnits: paper?.asPrintedPercent ?? null,
  };
}

/** X's absolute SCALAR over TopK's, run by run for each seed both cells finished. */
function pairedRatio(
  x: ReadonlyMap<number, string>,
  topk: ReadonlyMap<number, string>,
  layers: readonly number[],
  byRun: Map<string, Map<number, ReportScore>>,
): PairedRatio {
  const seeds = [...x.keys()].filter((s) => topk.has(s)).sort((a, b) => a - b);
  const abs = (id: string, layer: number) => byRun.get(id)?.get(layer)?.absolute;
  const perLayer = layers.flatMap((layer) => {
    const stat = summarize(seeds.flatMap((s) => {
      const a = abs(x.get(s)!, layer), b = abs(topk.get(s)!, layer);
      return a === undefined || b === undefined ? [] : [a / b];
    }));
    return stat === null ? [] : [{ layer, ...stat }];
  });
  const sums = seeds.flatMap((s) => {
    const a = layers.map((l) => abs(x.get(s)!, l)), b = layers.map((l) => abs(topk.get(s)!, l));
    if ([...a, ...b].some((v) => v === undefined)) return [];
    const total = (v: (number | undefined)[]) => v.reduce((t: number, y) => t + y!, 0);
    return [total(a) / total(b)];
  });
  return { seeds, perLayer, sum: layers.length === 0 ? null : summarize(sums) };
}

/**
 * Per SAE or pair (in forward order), mean ± std over the runs of each named metric it has; those
 * with none of the names are left out.
 */
function metricStats(
  ids: readonly string[],
  byRun: Map<string, ReportMetric[]>,
  names: readonly string[],
): { sae: string; values: Record<string, Stat> }[] {
  const saes = new Map<string, Map<string, number[]>>();
  for (const id of ids) {
    for (const m of byRun.get(id) ?? []) {
      const perMetric = saes.get(m.sae) ?? new Map<string, number[]>();
      perMetric.set(m.metric, [...(perMetric.get(m.metric) ?? []), m.value]);
      saes.set(m.sae, perMetric);
    }
  }
  return [...saes.entries()]
    .sort(([a], [b]) => compareSae(a, b))
    .flatMap(([sae, perMetric]) => {
      const values = Object.fromEntries(names.flatMap((name) => {
        const stat = summarize(perMetric.get(name) ?? []);
        return stat === null ? [] : [[name, stat]];
      }));
      return Object.keys(values).length === 0 ? [] : [{ sae, values }];
    });
}

/**
 * Groups an experiment's runs into cells and summarises each over its finished seeds. Pure: the
 * same rows give the same report.
 *
 * @param data The rows ({@link loadReportData}).
 * @param options Expected seeds, curve and metrics (the experiment is taken from `data`).
 * @returns The report.
 *
 * @example Two seeds of one cell
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { buildReport } from "./report.ts";
 * const run = (id: string, seed: number) =>
 *   ({ id, seed, status: "done", position: "mlp", arch: "topk", params: {} });
 * const r = buildReport({
 *   experiment: "demo",
 *   runs: [run("a", 0), run("b", 1)],
 *   scores: [{ runId: "a", layer: 0, absolute: 1, relative: 2 },
 *     { runId: "b", layer: 0, absolute: 3, relative: 4 }],
 *   metrics: [],
 * });
 * equal(r.positions[0]!.cells[0]!.relative.perLayer[0]!.mean, 3);
 * ```
 */
export function buildReport(
  data: ReportData,
  options: Omit<ReportOptions, "experiment"> = {},
): Report {
  const metricNames = [...(options.metrics ?? REPORT_METRICS)];
  const cells = new Map<string, { key: CellKey; runs: ReportRun[] }>();
  for (const run of data.runs) {
    const key = cellKeyOf(run);
    const id = JSON.stringify([key.position, key.arch, Object.entries(key.params)]);
    const cell = cells.get(id) ?? { key, runs: [] };
    cell.runs.push(run);
    cells.set(id, cell);
  }
  const scoresByRun = new Map<string, Map<number, ReportScore>>();
  for (const s of data.scores) {
    const m = scoresByRun.get(s.runId) ?? new Map<number, ReportScore>();
    m.set(s.layer, s);
    scoresByRun.set(s.runId, m);
  }
  const metricsByRun = new Map<string, ReportMetric[]>();
  for (const m of data.metrics) {
    const list = metricsByRun.get(m.runId) ?? [];
    list.push(m);
    metricsByRun.set(m.runId, list);
  }

  const expectedOf = (key: CellKey, recorded: number) => {
    const e = options.expectedSeeds;
    const given = typeof e === "function" ? e(key) : e;
    return given ?? recorded;
  };

  const byPosition = new Map<string, { key: CellKey; runs: ReportRun[] }[]>();
  for (const cell of cells.values()) {
    const list = byPosition.get(cell.key.position) ?? [];
    list.push(cell);
    byPosition.set(cell.key.position, list);
  }
  const positions = [...byPosition.entries()]
    .sort(([a], [b]) => rank(POSITIONS, a) - rank(POSITIONS, b) || (a < b ? -1 : a > b ? 1 : 0))
    .map(([position, group]) => {
      const done = (c: { runs: ReportRun[] }) => c.runs.filter((r) => r.status === "done");
      const layers = [
        ...new Set(
          group.flatMap((c) => done(c).flatMap((r) => [...(scoresByRun.get(r.id)?.keys() ?? [])])),
        ),
      ].sort((a, b) => a - b);
      const runsBySeed = new Map<ReportCell, Map<number, string>>();
      const built: ReportCell[] = group.map(({ key, runs }) => {
        const finished = done({ runs }).sort((a, b) => a.seed - b.seed);
        const ids = finished.map((r) => r.id);
        const expected = expectedOf(key, runs.length);
        const cell: ReportCell = {
          ...key,
          label: labelOf(key.params),
          seeds: finished.map((r) => r.seed),
          n: finished.length,
          expected,
          failed: runs.filter((r) => r.status === "failed").length,
          running: runs.filter((r) => r.status === "running").length,
          incomplete: finished.length < expected,
          absolute: scalarSummary(ids, layers, scoresByRun, "absolute"),
          relative: scalarSummary(ids, layers, scoresByRun, "relative"),
          isBaseline: isBaseline(key.arch),
          improvement: null,
          metrics: metricStats(ids, metricsByRun, metricNames),
          diagnostics: metricStats(ids, metricsByRun, DIAGNOSTIC_METRICS)
            .map(({ sae, values }) => ({ pair: sae, values })),
        };
        runsBySeed.set(cell, new Map(finished.map((r) => [r.seed, r.id])));
        return cell;
      });
      const baselines = new Map<string, ReportCell[]>();
      for (const c of built.filter((c) => c.isBaseline)) {
        const k = baselineKey(c);
        baselines.set(k, [...(baselines.get(k) ?? []), c]);
      }
      for (const c of built) {
        const candidates = baselines.get(baselineKey(c)) ?? [];
        // Two TopK cells that differ only in TopK-specific settings: no single baseline.
        if (c.isBaseline || candidates.length !== 1) continue;
        const t = candidates[0]!;
        c.improvement = {
          baseline: t.label === "" ? t.arch : `${t.arch} (${t.label})`,
          relative: improvementOf(c.relative, t.relative, layers),
          absolute: improvementOf(c.absolute, t.absolute, layers),
          absoluteRatio: pairedRatio(runsBySeed.get(c)!, runsBySeed.get(t)!, layers, scoresByRun),
          incomplete: c.incomplete || t.incomplete,
        };
      }
      built.sort((a, b) =>
        rank(ARCHITECTURES, a.arch) - rank(ARCHITECTURES, b.arch) ||
        (a.arch < b.arch ? -1 : a.arch > b.arch ? 1 : 0) ||
        (a.label < b.label ? -1 : a.label > b.label ? 1 : 0)
      );
      return { position, layers, cells: built };
    });
  return {
    experiment: data.experiment,
    curve: options.curve ?? "model",
    metricNames,
    diagnosticNames: DIAGNOSTIC_METRICS.filter((name) =>
      positions.some((p) => p.cells.some((c) => c.diagnostics.some((d) => name in d.values)))
    ),
    hasParams: positions.some((p) => p.cells.some((c) => c.label !== "")),
    positions,
  };
}

/** A value cell: mean ± std, with its own count when it differs from the row's. */
function statText(stat: Stat | null | undefined, cell: ReportCell): string {
  if (stat === null || stat === undefined) return "—";
  const own = stat.n === cell.n ? "" : ` (n=${stat.n}${stat.n < cell.expected ? " ⚠" : ""})`;
  return formatMeanStd(stat) + own;
}

function mdTable(header: string[], align: ("l" | "r")[], rows: string[][]): string {
  const esc = (s: string) => s.replaceAll("|", "\\|");
  return [
    `| ${header.map(esc).join(" | ")} |`,
    `| ${align.map((a) => (a === "r" ? "--:" : "---")).join(" | ")} |`,
    ...rows.map((r) => `| ${r.map(esc).join(" | ")} |`),
  ].join("\n");
}

/** How a position's markdown tables begin each row: the cell's architecture (and parameters). */
interface RowLead {
  header: string[];
  align: ("l" | "r")[];
  of: (c: ReportCell) => string[];
}

type PositionReport = Report["positions"][number];

/** SCALAR absolute and relative, one row each per cell, side by side. */
function scalarTable(p: PositionReport, lead: RowLead): string[] {
  const rows = p.cells.flatMap((c) =>
    (["absolute", "relative"] as const).map((field) => [
      ...lead.of(c),
      formatSeedCount(c.n, c.expected),
      field,
      ...p.layers.map((l) => statText(c[field].perLayer.find((s) => s.layer === l), c)),
      statText(c[field].sum, c),
    ])
  );
  return [
    "### SCALAR, absolute and relative",
    "",
    mdTable(
      [...lead.header, "seeds", "SCALAR", ...p.layers.map((l) => `layer ${l}`), "Σ layers"],
      [...lead.align, "l", "l", ...p.layers.map(() => "r" as const), "r"],
      rows,
    ),
    "",
    "absolute: area under the curve over the edge count (KL × edges); relative: absolute × 2^18 / " +
    "E_tot, E_tot = F_up · F_down the pair's edges.",
  ];
}

/** The improvement over TopK of both SCALARs, one row each per cell. */
function improvementTable(p: PositionReport, lead: RowLead): string[] {
  const paper = p.layers.length === PAPER_TABLE_UNITS.length;
  const width = p.layers.length + 1 + (paper ? 1 : 0);
  const rows = p.cells.flatMap((c) =>
    (c.isBaseline ? ["both"] as const : ["relative", "absolute"] as const).map((field) => {
      const i = c.improvement;
      const values = field === "both"
        ? new Array(width).fill("baseline")
        : i === null
        ? new Array(width).fill("—")
        : [
          ...i[field].perLayer.map((l) => formatPercent(l.percent, i.incomplete)),
          formatPercent(i[field].sum, i.incomplete),
          ...(paper ? [formatPercent(i[field].paperUnits, i.incomplete)] : []),
        ];
      return [...lead.of(c), formatSeedCount(c.n, c.expected), field, ...values];
    })
  );
  const header = [...p.layers.map((l) => `layer ${l}`), "Σ layers"];
  return [
    "### Improvement over TopK (% from seed means)",
    "",
    mdTable(
      [...lead.header, "seeds", "SCALAR", ...header, ...(paper ? ["Σ paper units"] : [])],
      [...lead.align, "l", "l", ...new Array<"r">(width).fill("r")],
      rows,
    ),
    ...(paper
      ? [
        "",
        "Σ paper units: the paper's aggregate, which sums the per-layer values in its tables' " +
        "units (1e4, 1e4, 1e5, 1e5).",
      ]
      : []),
  ];
}

/** The absolute SCALAR ratio X / TopK paired by seed, one row per compared cell. */
function ratioTable(p: PositionReport, lead: RowLead): string[] {
  const rows = p.cells.flatMap((c) => {
    const ratio = c.improvement?.absoluteRatio;
    if (ratio === undefined) return [];
    const text = (s: Stat | null | undefined) => s ? formatMeanStd(s) : "—";
    return [[
      ...lead.of(c),
      String(ratio.seeds.length),
      ...p.layers.map((l) => text(ratio.perLayer.find((s) => s.layer === l))),
      text(ratio.sum),
    ]];
  });
  if (rows.length === 0) return [];
  return [
    "### Absolute SCALAR ratio X / TopK (paired by seed)",
    "",
    mdTable(
      [...lead.header, "paired seeds", ...p.layers.map((l) => `layer ${l}`), "Σ layers"],
      [...lead.align, "r", ...p.layers.map(() => "r" as const), "r"],
      rows,
    ),
    "",
    "Per seed, abs_X / abs_TopK of the two runs with that seed; mean ± sample std over the seeds " +
    "both cells finished. Below 1, X needs less absolute area. Relative SCALAR divides by " +
    "E_tot / 2^18, so relative improvement = 1 − ratio · E_TopK / E_X: a Staircase `mlp-block` " +
    "pair (512 × 1,024 edges, twice TopK's) reads +50 % at ratio 1.",
  ];
}

/** Per-SAE metrics (`metrics`) or per-pair diagnostics, one row per cell and SAE or pair. */
function statsTable(
  p: PositionReport,
  lead: RowLead,
  column: string,
  names: readonly string[],
  of: (c: ReportCell) => { sae: string; values: Record<string, Stat> }[],
): string {
  const rows = p.cells.flatMap((c) => {
    const seeds = formatSeedCount(c.n, c.expected);
    const entries = of(c);
    if (entries.length === 0) return [[...lead.of(c), "—", seeds, ...names.map(() => "—")]];
    return entries.map((m) => [
      ...lead.of(c),
      m.sae,
      seeds,
      ...names.map((name) => statText(m.values[name], c)),
    ]);
  });
  return mdTable(
    [...lead.header, column, "seeds", ...names],
    [...lead.align, "l", "l", ...names.map(() => "r" as const)],
    rows,
  );
}

function formatMarkdown(r: Report): string {
  const out: string[] = [
    `# SCALAR report: ${r.experiment}`,
    "",
    "Each cell: mean ± sample std over the finished seeds (±— for one seed); `n` counts the " +
    "finished seeds, and `n=3/5 ⚠` marks a cell with fewer than expected (its mean is over " +
    `those alone). SCALAR is the area under the KL(${
      r.curve === "model" ? "model" : "full circuit"
    } ‖ ablated) curve: lower = sparser. Improvement over TopK = 100 (S_TopK − S_X) / S_TopK, ` +
    "computed from the seed means (no std), against the TopK cell of the same position and " +
    "other parameters.",
  ];
  const lead: RowLead = r.hasParams
    ? { header: ["arch", "params"], align: ["l", "l"], of: (c) => [c.arch, c.label || "—"] }
    : { header: ["arch"], align: ["l"], of: (c) => [c.arch] };
  for (const p of r.positions) {
    out.push("", `## Position \`${p.position}\``, "");
    if (p.layers.length > 0) {
      for (const table of [scalarTable, improvementTable, ratioTable]) {
        const lines = table(p, lead);
        if (lines.length > 0) out.push(...lines, "");
      }
    } else {
      out.push("No SCALAR scores stored for this position.", "");
    }
    out.push("### SAE metrics", "", statsTable(p, lead, "sae", r.metricNames, (c) => c.metrics));
    if (p.cells.some((c) => c.diagnostics.length > 0)) {
      out.push(
        "",
        "### Staircase diagnostics",
        "",
        statsTable(
          p,
          lead,
          "pair",
          r.diagnosticNames,
          (c) => c.diagnostics.map(({ pair, values }) => ({ sae: pair, values })),
        ),
        "",
        "shared_chunk_fraction: of the downstream SAE's active latents over the evaluation tokens, " +
          "the share with an index below the upstream SAE's width (the chunk a Staircase pair " +
          "shares; 1 for equal widths). diagonal_share_topN: the share of the N top-ranked edges " +
          "that connect latent i to latent i.",
      );
    }
  }
  return out.join("\n") + "\n";
}

/** A CSV field per RFC 4180: quoted when it holds a comma, quote or line break. */
function csvField(value: string | number | null): string {
  if (value === null) return "";
  const s = typeof value === "number" ? String(value) : value;
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * The CSV rows: one per value, in long form (`table` = seeds, scalar, improvement, ratio (the
 * absolute ratio X / TopK paired by seed), metrics or diagnostics), so that a spreadsheet or
 * `read_csv` can pivot them.
 */
function formatCsv(r: Report): string {
  const header = [
    "position",
    "arch",
    "params",
    "table",
    "sae",
    "layer",
    "measure",
    "mean",
    "std",
    "n",
    "expected",
    "flag",
  ];
  const lines = [header.join(",")];
  for (const p of r.positions) {
    for (const c of p.cells) {
      const row = (
        table: string,
        sae: string,
        layer: string | number,
        measure: string,
        mean: number | null,
        std: number | null,
        n: number,
        incomplete: boolean,
      ) =>
        lines.push(
          [
            c.position,
            c.arch,
            c.label,
            table,
            sae,
            layer,
            measure,
            mean,
            std,
            n,
            c.expected,
            incomplete ? "incomplete" : "",
          ].map(csvField).join(","),
        );
      row("seeds", "", "", "finished", c.n, null, c.n, c.incomplete);
      for (const field of ["absolute", "relative"] as const) {
        for (const s of c[field].perLayer) {
          row("scalar", "", s.layer, field, s.mean, s.std, s.n, s.n < c.expected);
        }
        const sum = c[field].sum;
        if (sum !== null) {
          row("scalar", "", "sum", field, sum.mean, sum.std, sum.n, sum.n < c.expected);
        }
      }
      const i = c.improvement;
      if (i !== null) {
        for (const field of ["relative", "absolute"] as const) {
          const measure = `${field}_percent`;
          for (const l of i[field].perLayer) {
            row("improvement", "", l.layer, measure, l.percent, null, c.n, i.incomplete);
          }
          row("improvement", "", "sum", measure, i[field].sum, null, c.n, i.incomplete);
          if (i[field].paperUnits !== null) {
            row(
              "improvement",
              "",
              "sum_paper_units",
              measure,
              i[field].paperUnits,
              null,
              c.n,
              i.incomplete,
            );
          }
        }
      }
      if (i !== null) {
        const { perLayer, sum } = i.absoluteRatio;
        for (
          const [layer, s] of [...perLayer.map((s) => [s.layer, s] as const), ["sum", sum] as const]
        ) {
          if (s !== null) {
            row("ratio", "", layer, "absolute_ratio", s.mean, s.std, s.n, i.incomplete);
          }
        }
      }
      const stats = [
        ...c.metrics.map((m) => ({
          table: "metrics",
          sae: m.sae,
          values: m.values,
          names: r.metricNames,
        })),
        ...c.diagnostics.map((d) => ({
          table: "diagnostics",
          sae: d.pair,
          values: d.values,
          names: r.diagnosticNames,
        })),
      ];
      for (const m of stats) {
        for (const name of m.names) {
          const s = m.values[name];
          if (s !== undefined) row(m.table, m.sae, "", name, s.mean, s.std, s.n, s.n < c.expected);
        }
      }
    }
  }
  return lines.join("\n") + "\n";
}

/**
 * Prints a report as markdown tables (`md`), long-form CSV (`csv`) or the report object as JSON
 * (`json`; NaN and ±Infinity as the strings "NaN", "Infinity", "-Infinity", null where undefined).
 *
 * @param report The report ({@link buildReport}).
 * @param format The output format.
 * @returns The text, ending in a newline.
 * @throws {StoreError} For an unknown format.
 */
export function formatReport(report: Report, format: ReportFormat): string {
  switch (format) {
    case "md":
      return formatMarkdown(report);
    case "csv":
      return formatCsv(report);
    case "json":
      return JSON.stringify(
        report,
        (_, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v),
        2,
      ) + "\n";
    default:
      throw new StoreError(
        `Cannot format the report as "${format}": the formats are md, csv and json`,
      );
  }
}

/**
 * Reads the rows of an experiment's report from the store.
 *
 * @param store An open store.
 * @param experiment The experiment's name.
 * @param curve Which curve's SCALAR. @default "model"
 * @param metrics The SAE metrics to read (the Staircase diagnostics are read too). @default
 *   REPORT_METRICS
 * @returns The runs (any status), and the scores and metrics of the finished ones.
 * @throws {StoreError} If the store holds no run of the experiment (naming the ones it holds).
 */
export async function loadReportData(
  store: Store,
  experiment: string,
  curve: "model" | "full" = "model",
  metrics: readonly string[] = REPORT_METRICS,
): Promise<ReportData> {
  const c = store.connection;
  const runRows = (await c.runAndReadAll(
    `select id, seed, status, json_extract_string(config, '$.position'),
      json_extract_string(config, '$.sae.arch')
     from runs where id in (select run_id from experiment_runs where experiment = $1) order by id`,
    [experiment],
    [VARCHAR],
  )).getRowsJS();
  if (runRows.length === 0) {
    const sql = "select distinct experiment from experiment_runs order by 1";
    const names = (await c.runAndReadAll(sql))
      .getRowsJS().map((r) => `"${r[0]}"`);
    throw new StoreError(
      `Cannot report experiment "${experiment}": the results database "${store.path}" holds no ` +
        `runs of it (${names.length === 0 ? "it holds no runs" : `it holds ${names.join(", ")}`})`,
    );
  }
  const params = new Map<string, Record<string, string>>();
  const paramRows = (await c.runAndReadAll(
    `select p.run_id, p.path, p.value from run_params p join runs r on r.id = p.run_id
     where r.id in (select run_id from experiment_runs where experiment = $1)`,
    [experiment],
    [VARCHAR],
  )).getRowsJS();
  for (const [runId, path, value] of paramRows) {
    const p = params.get(runId as string) ?? {};
    p[path as string] = (value ?? "null") as string;
    params.set(runId as string, p);
  }
  const runs: ReportRun[] = runRows.map(([id, seed, status, position, arch]) => ({
    id: id as string,
    seed: Number(seed),
    status: status as string,
    position: position as string | null,
    arch: arch as string | null,
    params: params.get(id as string) ?? {},
  }));
  const scores: ReportScore[] = (await c.runAndReadAll(
    `select s.run_id, s.layer, s.absolute, s.relative from scalar_scores s
     join runs r on r.id = s.run_id
     where r.id in (select run_id from experiment_runs where experiment = $1) and r.status = 'done' and s.curve = $2`,
    [experiment, curve],
    [VARCHAR, VARCHAR],
  )).getRowsJS().map(([runId, layer, absolute, relative]) => ({
    runId: runId as string,
    layer: Number(layer),
    absolute: absolute as number,
    relative: relative as number,
  }));
  const metricRows: ReportMetric[] = (await c.runAndReadAll(
    `select m.run_id, m.sae, m.metric, m.value from metrics m join runs r on r.id = m.run_id
     where r.id in (select run_id from experiment_runs where experiment = $1) and r.status = 'done' and list_contains($2, m.metric)`,
    [experiment, listValue([...metrics, ...DIAGNOSTIC_METRICS])],
    [VARCHAR, LIST(VARCHAR)],
  )).getRowsJS().map(([runId, sae, metric, value]) => ({
    runId: runId as string,
    sae: sae as string,
    metric: metric as string,
    value: value as number,
  }));
  return { experiment, runs, scores, metrics: metricRows };
}

/**
 * Reads and summarises an experiment's report (the structured form of {@link report}).
 *
 * @param store An open store.
 * @param options The experiment, expected seeds, curve and metrics.
 * @returns The report.
 * @throws {StoreError} If the store holds no run of the experiment.
 */
export async function loadReport(store: Store, options: ReportOptions): Promise<Report> {
  const data = await loadReportData(
    store,
    options.experiment,
    options.curve,
    options.metrics,
  );
  return buildReport(data, options);
}

/**
 * The paper's tables for one experiment, as text.
 *
 * @param store An open store (read-only is enough).
 * @param options The experiment, expected seeds, curve and metrics, and the format.
 * @returns Markdown, CSV or JSON.
 * @throws {StoreError} If the store holds no run of the experiment, or the format is unknown.
 */
export async function report(
  store: Store,
  options: ReportOptions & { format?: ReportFormat },
): Promise<string> {
  return formatReport(await loadReport(store, options), options.format ?? "md");
}

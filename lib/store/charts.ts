/**
 * Charts of an experiment's results as Vega-Lite specs, one source for both outputs: the HTML
 * report draws them interactively in the page, and `report --plot` renders the same specs to SVG
 * headlessly (and to PNG where a converter is at hand):
 *
 * - per position and layer, the ablation curves: KL over the number of kept edges on a log₂ axis,
 *   the mean over seeds as a line and the seeds' min–max as a band, one line per report cell;
 * - per position, SCALAR per layer (relative and absolute) as grouped bars with ± std whiskers;
 * - per position, the SAE metrics (fvu, L0, CE increase) per hook as grouped bars.
 *
 * {@link loadChartData} reads rows with SQL; {@link buildCharts} makes the specs (pure);
 * {@link writePlots} renders and writes the files.
 *
 * @module
 */
import { VARCHAR } from "@duckdb/node-api";
import * as vega from "vega";
import * as vl from "vega-lite";
import { type Store, StoreError } from "./db.ts";
import {
  buildReport,
  type CellKey,
  cellKeyOf,
  formatSeedCount,
  loadReportData,
  type Report,
  type ReportOptions,
  type ReportRun,
  summarize,
} from "./report.ts";

/** Where {@link writePlots} writes unless told otherwise. */
export const DEFAULT_PLOT_DIR = "results/plots";

/** One point of a stored ablation curve. */
export interface CurveRow {
  /** Run id. */
  runId: string;
  /** The pair's layer. */
  layer: number;
  /** The pair, `up→down`. */
  pair: string;
  /** Edges kept. */
  n: number;
  /** KL of the chosen curve; null where none was stored. */
  kl: number | null;
}

/** The rows the charts are drawn from. */
export interface ChartData {
  /** The report of the experiment (cells, seed counts, SCALAR, metrics). */
  report: Report;
  /** Every run of the experiment (to find each curve's cell). */
  runs: ReportRun[];
  /** The chosen curve's points of the finished runs. */
  curves: CurveRow[];
}

/** One chart: a file-safe name, its title and its Vega-Lite spec. */
export interface Chart {
  /** File name without extension, e.g. `toy-mlp-mlp-block-curves-layer0`. */
  name: string;
  /** What it shows, for headings. */
  title: string;
  /** The Vega-Lite spec, data inline. */
  spec: vl.TopLevelSpec;
}

/** A program that turns an SVG file into a PNG file. */
export interface PngConverter {
  /** Its name, for messages. */
  name: string;
  /** The executable's path. */
  command: string;
  /** Its arguments to convert `svg` into `png`. */
  args(svg: string, png: string): string[];
}

/** Options of {@link writePlots}. */
export interface PlotOptions extends Pick<ReportOptions, "experiment" | "curve" | "expectedSeeds"> {
  /** Where the files go. @default DEFAULT_PLOT_DIR */
  outDir?: string;
  /**
   * The PNG converter; null for SVG only (with a notice). @default the first of `rsvg-convert`,
   * ImageMagick's `magick` or `convert` found on PATH ({@link findPngConverter})
   */
  converter?: PngConverter | null;
  /** Where notices go. @default a line on stderr */
  log?: (line: string) => void;
}

/** The metrics charted per hook, with their axis titles. */
const METRIC_AXES: Record<string, string> = {
  fvu: "fraction of variance unexplained",
  l0: "L0 (active features per token)",
  ce_loss_increase: "CE loss increase when spliced (nats)",
};

/** A cell's legend label: the architecture and any other varied parameter. */
function seriesLabel(c: CellKey): string {
  const params = Object.entries(c.params).sort(([a], [b]) => (a < b ? -1 : 1));
  const last = (path: string) => path.slice(path.lastIndexOf(".") + 1).replace("lambda", "λ");
  return [c.arch, ...params.map(([k, v]) => `${last(k)}=${v}`)].join(" ");
}

/** A cell's identity as text (parameter order does not matter). */
function cellId(c: CellKey): string {
  return JSON.stringify([c.position, c.arch, Object.entries(c.params).sort()]);
}

function fileSafe(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, "_");
}

/** Colour per series: the same cell has the same colour in every chart (Tableau 10). */
function colorScale(labels: string[]) {
  return { domain: labels, scheme: "tableau10" as const };
}

/**
 * Makes every chart of an experiment. Pure: the same rows give the same specs.
 *
 * @param data The rows ({@link loadChartData}).
 * @returns Per position: the curves by layer, then SCALAR, then the SAE metrics.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { buildCharts } from "./charts.ts";
 *
 * const charts = buildCharts({
 *   report: {
 *     experiment: "x",
 *     curve: "model",
 *     metricNames: [],
 *     diagnosticNames: [],
 *     hasParams: false,
 *     positions: [],
 *   },
 *   runs: [],
 *   curves: [],
 * });
 * equal(charts.length, 0);
 * ```
 */
export function buildCharts(data: ChartData): Chart[] {
  const { report } = data;
  const klName = report.curve === "model" ? "model" : "full circuit";
  const cellOfRun = new Map(data.runs.map((r) => [r.id, cellId(cellKeyOf(r))]));
  const charts: Chart[] = [];
  for (const p of report.positions) {
    const prefix = `${fileSafe(report.experiment)}-${fileSafe(p.position)}`;
    const labels = p.cells.map(seriesLabel);
    const color = colorScale(labels);
    const cellIds = new Map(p.cells.map((c) => [cellId(c), c]));
    const byLayer = Map.groupBy(
      data.curves.filter((r) => cellIds.has(cellOfRun.get(r.runId) ?? "")),
      (r) => r.layer,
    );
    for (const layer of [...byLayer.keys()].sort((a, b) => a - b)) {
      const rows = byLayer.get(layer)!;
      const values = curveBands(rows, (r) => cellIds.get(cellOfRun.get(r.runId)!)!);
      if (values.length === 0) continue;
      const pairs = [...new Set(rows.map((r) => r.pair))].sort().join(", ");
      const title = `${p.position} · layer ${layer}: ablation curves`;
      charts.push({
        name: `${prefix}-curves-layer${layer}`,
        title,
        spec: curveSpec(
          title,
          `${pairs}; line: mean over seeds, band: min–max`,
          klName,
          values,
          color,
        ),
      });
    }
    const scalar = p.cells.flatMap((c) =>
      (["relative", "absolute"] as const).flatMap((measure) =>
        c[measure].perLayer.map((s) => ({
          series: seriesLabel(c),
          seeds: formatSeedCount(c.n, c.expected),
          measure: `${measure} SCALAR`,
          layer: s.layer,
          mean: s.mean,
          low: s.mean - (s.std ?? 0),
          high: s.mean + (s.std ?? 0),
        }))
      )
    );
    if (scalar.length > 0) {
      const title = `${p.position}: SCALAR per layer (lower = sparser)`;
      charts.push({
        name: `${prefix}-scalar`,
        title,
        // The identity behind the paper's relative improvements, where the chart shows both.
        spec: barSpec(title, scalar, "layer", "measure", color, [
          "absolute: KL × edges; relative = absolute × 2^18 / E_tot, so a pair with twice",
          "TopK's edges (Staircase at mlp-block) reads +50 % better at equal absolute area",
        ]),
      });
    }
    const metrics = p.cells.flatMap((c) =>
      c.metrics.filter((m) => m.sae !== "run").flatMap((m) =>
        Object.keys(METRIC_AXES).flatMap((name) => {
          const s = m.values[name];
          return s === undefined ? [] : [{
            series: seriesLabel(c),
            seeds: formatSeedCount(c.n, c.expected),
            measure: METRIC_AXES[name]!,
            hook: m.sae,
            mean: s.mean,
            low: s.mean - (s.std ?? 0),
            high: s.mean + (s.std ?? 0),
          }];
        })
      )
    );
    if (metrics.length > 0) {
      const title = `${p.position}: SAE metrics per hook`;
      charts.push({
        name: `${prefix}-sae-metrics`,
        title,
        spec: barSpec(title, metrics, "hook", "measure", color),
      });
    }
  }
  return charts;
}

/** Per cell and edge count: the mean KL over the cell's seeds and their min and max. */
function curveBands(
  rows: CurveRow[],
  cellOf: (r: CurveRow) => CellKey & { n: number; expected: number },
) {
  const groups = Map.groupBy(
    rows.filter((r) => r.kl !== null && Number.isFinite(r.kl)),
    (r) => `${seriesLabel(cellOf(r))}\u0000${r.n}`,
  );
  return [...groups.values()].map((g) => {
    const kls = g.map((r) => r.kl!);
    const cell = cellOf(g[0]!);
    return {
      series: seriesLabel(cell),
      seeds: formatSeedCount(cell.n, cell.expected),
      n: g[0]!.n,
      mean: summarize(kls)!.mean,
      low: Math.min(...kls),
      high: Math.max(...kls),
    };
  }).sort((a, b) => (a.series < b.series ? -1 : a.series > b.series ? 1 : a.n - b.n));
}

function curveSpec(
  title: string,
  subtitle: string,
  klName: string,
  values: Record<string, unknown>[],
  color: ReturnType<typeof colorScale>,
): vl.TopLevelSpec {
  const x = {
    field: "n",
    type: "quantitative",
    scale: { type: "log", base: 2 },
    axis: { title: "edges kept (log₂ axis)", format: ",d", labelOverlap: true },
  } as const;
  const c = { field: "series", type: "nominal", title: null, scale: color } as const;
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: title, subtitle, subtitleFontSize: 10 },
    width: 400,
    height: 220,
    data: { values },
    layer: [
      {
        mark: { type: "area", opacity: 0.2 },
        encoding: { x, y: { field: "low", type: "quantitative" }, y2: { field: "high" }, color: c },
      },
      {
        mark: { type: "line", point: { size: 16 } },
        encoding: {
          x,
          y: { field: "mean", type: "quantitative", title: `KL(${klName} ‖ ablated), nats` },
          color: c,
          tooltip: [
            { field: "series" },
            { field: "seeds" },
            { field: "n", title: "edges" },
            { field: "mean", format: ".4g", title: "mean KL" },
            { field: "low", format: ".4g" },
            { field: "high", format: ".4g" },
          ],
        },
      },
    ],
  };
}

/** Grouped bars (one group per `x`, one bar per series) with ± std whiskers, one panel per measure. */
function barSpec(
  title: string,
  values: Record<string, unknown>[],
  x: string,
  facet: string,
  color: ReturnType<typeof colorScale>,
  subtitle?: string[],
): vl.TopLevelSpec {
  const enc = {
    x: {
      field: x,
      type: "ordinal",
      title: x === "layer" ? "layer" : null,
      axis: { labelAngle: x === "layer" ? 0 : -35, labelLimit: 240 },
    },
    // Bars in the legend's order (the report's cell order), not alphabetically.
    xOffset: { field: "series", sort: color.domain },
  } as const;
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: subtitle ? { text: title, subtitle } : title,
    data: { values },
    facet: { row: { field: facet, type: "nominal", title: null } },
    resolve: { scale: { y: "independent" } },
    spec: {
      width: 400,
      height: 140,
      layer: [
        {
          mark: "bar",
          encoding: {
            ...enc,
            y: { field: "mean", type: "quantitative", title: null },
            color: { field: "series", type: "nominal", title: null, scale: color },
            tooltip: [
              { field: "series" },
              { field: "seeds" },
              { field: x },
              { field: "mean", format: ".4g" },
            ],
          },
        },
        {
          mark: { type: "rule", color: "black" },
          encoding: { ...enc, y: { field: "low", type: "quantitative" }, y2: { field: "high" } },
        },
      ],
    },
  };
}

/**
 * Compiles a Vega-Lite spec to the Vega spec the runtime draws. Vega-Lite's warnings (e.g. about
 * merging the bars' and whiskers' sort orders) are notes for spec authors, not for the reader of
 * a report, so only errors are logged.
 *
 * @param spec The Vega-Lite spec.
 * @returns The Vega spec.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { compileSpec } from "./charts.ts";
 *
 * equal(compileSpec({ data: { values: [] }, mark: "point" }).$schema, "https://vega.github.io/schema/vega/v6.json");
 * ```
 */
export function compileSpec(spec: vl.TopLevelSpec): vega.Spec {
  return vl.compile(spec, { logger: vega.logger(vega.Error) }).spec;
}

/**
 * Renders a Vega-Lite spec to SVG without a browser.
 *
 * @param spec The spec.
 * @returns The SVG text.
 *
 * @example
 * ```ts
 * import { match } from "node:assert/strict";
 * import { renderSvg } from "./charts.ts";
 *
 * const svg = await renderSvg({ data: { values: [{ a: 1 }] }, mark: "point", encoding: { x: { field: "a", type: "quantitative" } } });
 * match(svg, /^<svg[^>]*class="marks"/);
 * ```
 */
export async function renderSvg(spec: vl.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compileSpec(spec)), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/**
 * Reads what the charts need: the report's rows (all its metrics) and the chosen ablation curve of
 * every finished run of the experiment.
 *
 * @param store An open store (read-only is enough).
 * @param options The experiment, curve and expected seeds.
 * @returns The rows.
 * @throws {StoreError} If the store holds no run of the experiment.
 */
export async function loadChartData(
  store: Store,
  options: Pick<ReportOptions, "experiment" | "curve" | "expectedSeeds">,
): Promise<ChartData> {
  const curve = options.curve ?? "model";
  const metrics = Object.keys(METRIC_AXES);
  const data = await loadReportData(store, options.experiment, curve, metrics);
  const report = buildReport(data, { curve, expectedSeeds: options.expectedSeeds, metrics });
  // The column is one of two fixed names, never user text.
  const column = curve === "model" ? "kl_model" : "kl_full_circuit";
  const curves = (await store.connection.runAndReadAll(
    `select c.run_id, c.layer, c.pair, c.n_edges, c.${column} from scalar_curves c
     join runs r on r.id = c.run_id
     where r.id in (select run_id from experiment_runs where experiment = $1) and r.status = 'done'
     order by c.run_id, c.layer, c.pair, c.n_edges`,
    [options.experiment],
    [VARCHAR],
  )).getRowsJS().map(([runId, layer, pair, n, kl]) => ({
    runId: runId as string,
    layer: Number(layer),
    pair: pair as string,
    n: Number(n),
    kl: kl === null ? null : Number(kl),
  }));
  return { report, runs: data.runs, curves };
}

async function executable(path: string): Promise<boolean> {
  try {
    const info = await Deno.stat(path);
    return info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0;
  } catch {
    return false;
  }
}

async function onPath(name: string, pathEnv: string): Promise<string | null> {
  for (const dir of pathEnv.split(":")) {
    if (dir !== "" && await executable(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return null;
}

/**
 * The first SVG-to-PNG converter on PATH: `rsvg-convert` (Debian's `librsvg2-bin`), else
 * ImageMagick's `magick` or `convert` — each of those only if `-version` says ImageMagick, since
 * other programs are named `convert` too.
 *
 * @param pathEnv A PATH-style folder list. @default the PATH environment variable
 * @returns The converter, or null if none is found (or the process may not look).
 */
export async function findPngConverter(
  pathEnv: string = Deno.env.get("PATH") ?? "",
): Promise<PngConverter | null> {
  try {
    const rsvg = await onPath("rsvg-convert", pathEnv);
    if (rsvg !== null) {
      return {
        name: "rsvg-convert",
        command: rsvg,
        // Twice the SVG's size: sharp on high-density screens and in print.
        args: (svg, png) => ["--zoom", "2", "--format", "png", "--output", png, svg],
      };
    }
    for (const name of ["magick", "convert"]) {
      const command = await onPath(name, pathEnv);
      if (command === null) continue;
      const out = await new Deno.Command(command, {
        args: ["-version"],
        stdout: "piped",
        stderr: "null",
      }).output();
      if (!out.success || !new TextDecoder().decode(out.stdout).includes("ImageMagick")) continue;
      return {
        name,
        command,
        args: (svg, png) => ["-density", "192", "-background", "white", svg, png],
      };
    }
  } catch {
    // No permission to read PATH or to run a program: as if there were no converter.
  }
  return null;
}

async function toPng(converter: PngConverter, svg: string, png: string): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(converter.command, {
      args: converter.args(svg, png),
      stdout: "null",
      stderr: "piped",
    }).output();
  } catch (e) {
    throw new StoreError(
      `Cannot convert ${svg} to PNG: ${converter.name} did not start (${
        e instanceof Error ? e.message : e
      })`,
    );
  }
  if (!out.success) {
    const message = new TextDecoder().decode(out.stderr).trim().split("\n")[0] ?? "";
    throw new StoreError(
      `Cannot convert ${svg} to PNG: ${converter.name} exited with code ${out.code}` +
        (message ? ` (${message})` : ""),
    );
  }
}

/**
 * Renders an experiment's charts ({@link buildCharts}) and writes them as SVG, with a PNG beside
 * each when a converter is found. PNGs are optional: without a converter, or if one fails, one
 * notice goes to `log` and the rest is SVG only.
 *
 * @param store An open store (read-only is enough).
 * @param options The experiment, folder, curve, expected seeds, converter and log.
 * @returns The paths written (each SVG followed by its PNG), in {@link buildCharts}' order.
 * @throws {StoreError} If the store holds no run of the experiment, or a file cannot be written.
 *
 * @example
 * ```ts ignore
 * const store = await openStore("results/scalar.duckdb", { readOnly: true });
 * try {
 *   for (const f of await writePlots(store, { experiment: "toy-mlp" })) console.log(f);
 * } finally {
 *   store.close();
 * }
 * ```
 */
export async function writePlots(store: Store, options: PlotOptions): Promise<string[]> {
  const log = options.log ?? ((line: string) => console.error(line));
  const outDir = options.outDir ?? DEFAULT_PLOT_DIR;
  const charts = buildCharts(await loadChartData(store, options));
  if (charts.length === 0) {
    log(
      `No charts for experiment "${options.experiment}": it has no finished run with SCALAR ` +
        "results",
    );
    return [];
  }
  try {
    await Deno.mkdir(outDir, { recursive: true });
  } catch (e) {
    throw new StoreError(
      `Cannot create the chart folder "${outDir}": ${e instanceof Error ? e.message : e}`,
    );
  }
  let converter = options.converter === undefined ? await findPngConverter() : options.converter;
  if (converter === null) {
    log(
      "No SVG-to-PNG converter on PATH (rsvg-convert from librsvg2-bin, or ImageMagick): " +
        "writing SVG only",
    );
  }
  const written: string[] = [];
  for (const chart of charts) {
    const path = `${outDir}/${chart.name}.svg`;
    try {
      await Deno.writeTextFile(path, await renderSvg(chart.spec));
    } catch (e) {
      throw new StoreError(`Cannot write chart "${path}": ${e instanceof Error ? e.message : e}`);
    }
    written.push(path);
    if (converter === null) continue;
    const png = path.replace(/\.svg$/, ".png");
    try {
      await toPng(converter, path, png);
      written.push(png);
    } catch (e) {
      log(`${e instanceof Error ? e.message : e}; writing SVG only from here on`);
      converter = null;
    }
  }
  return written;
}

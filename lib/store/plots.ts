/**
 * Charts of an experiment's results, as self-contained SVG drawn by hand (no chart library, no
 * browser), with a PNG beside each when a converter is at hand:
 *
 * - per position and layer, the ablation curves: KL over the number of kept edges on a log₂ axis,
 *   the mean over seeds as a line and the seeds' min–max as a band, one line per report cell
 *   (architecture and any other varied parameter, e.g. the JSAE λ);
 * - per position, relative SCALAR per layer as grouped bars per cell, with ± std whiskers.
 *
 * Three layers, as in `report.ts`: {@link loadPlotData} reads rows with SQL; {@link buildPlots}
 * draws them (pure: the same rows give byte-identical SVG); {@link writePlots} does both and writes
 * the files.
 *
 * @module
 */
import { VARCHAR } from "@duckdb/node-api";
import { type Store, StoreError } from "./db.ts";
import {
  buildReport,
  type CellKey,
  cellKeyOf,
  formatSeedCount,
  loadReportData,
  type Report,
  type ReportCell,
  type ReportOptions,
  type ReportRun,
  summarize,
} from "./report.ts";

/** Where {@link writePlots} writes unless told otherwise. */
export const DEFAULT_PLOT_DIR = "results/plots";

/** The right end of the curves' x axis unless a curve goes further: the paper's 2^18 edges. */
export const CURVE_AXIS_EDGES = 2 ** 18;

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
export interface PlotData {
  /** The report of the experiment (cells, seed counts, relative SCALAR). */
  report: Report;
  /** Every run of the experiment (to find each curve's cell). */
  runs: ReportRun[];
  /** The chosen curve's points of the finished runs, ordered by run, layer and edge count. */
  curves: CurveRow[];
}

/** How one line, band or bar series looks, and what the legend says of it. */
export interface SeriesStyle {
  /** Legend text, e.g. `jsae λ=0.001`. */
  label: string;
  /** Text after the label in grey, e.g. `n=5` (empty for none). */
  note: string;
  /** Stroke and fill colour, `#rrggbb`. */
  color: string;
  /** `stroke-dasharray` of its line; empty for solid. */
  dash: string;
}

/** One edge count of a curve, over seeds. */
export interface CurvePointStat {
  /** Edges kept. */
  n: number;
  /** Mean KL over the seeds. */
  mean: number;
  /** Least KL of a seed (the band's lower edge). */
  low: number;
  /** Greatest KL of a seed (the band's upper edge). */
  high: number;
}

/** One line of a curve chart. */
export interface CurveLine {
  /** Its look and legend entry. */
  style: SeriesStyle;
  /** Its points, by ascending n. */
  points: CurvePointStat[];
}

/** A chart of ablation curves. */
export interface CurveChart {
  /** The title. */
  title: string;
  /** Text under the title; `\n` starts another line. */
  subtitle: string;
  /** The y axis label. */
  yLabel: string;
  /** The lines, drawn and listed in this order. */
  lines: CurveLine[];
}

/** One series of a bar chart: a bar per layer. */
export interface BarSeries {
  /** Its look and legend entry. */
  style: SeriesStyle;
  /** Per layer it has a value for: the mean and the whisker (null: no whisker). */
  values: { layer: number; mean: number; std: number | null }[];
}

/** A chart of grouped bars, one group per layer. */
export interface BarChart {
  /** The title. */
  title: string;
  /** Text under the title; `\n` starts another line. */
  subtitle: string;
  /** The y axis label. */
  yLabel: string;
  /** The layers, one group each, in this order. */
  layers: number[];
  /** The series, one bar per group each, in this order. */
  series: BarSeries[];
}

/** One chart: its file name (without folder) and its SVG text. */
export interface Plot {
  /** File name, e.g. `toy-mlp-mlp-curves-layer0.svg`. */
  name: string;
  /** The SVG document. */
  svg: string;
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
export interface PlotOptions {
  /** The experiment (the manifest's `name`). */
  experiment: string;
  /** The folder to write to (created if missing). @default DEFAULT_PLOT_DIR */
  outDir?: string;
  /** Which ablation curve: against the `model` (the paper's) or the `full` circuit. @default "model" */
  curve?: "model" | "full";
  /** Seeds each cell should have, as in {@link ReportOptions}; the legends flag cells with fewer. */
  expectedSeeds?: ReportOptions["expectedSeeds"];
  /**
   * The PNG converter; null for SVG only (with the notice). @default the first of
   * `rsvg-convert`, ImageMagick's `magick` or `convert` found on PATH ({@link findPngConverter})
   */
  converter?: PngConverter | null;
  /** Where notices go. @default console.error */
  log?: (line: string) => void;
}

// ---------------------------------------------------------------------------------------------
// Scales and ticks (pure)

/**
 * A log₂ scale: maps `domain[0]` to `range[0]` and `domain[1]` to `range[1]`, evenly per octave.
 *
 * @param domain The data interval, both ends > 0.
 * @param range The pixel interval.
 * @returns The mapping.
 * @throws {RangeError} If an end of the domain is not positive or the ends are equal.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { log2Scale } from "./plots.ts";
 * const x = log2Scale([1, 2 ** 18], [60, 600]);
 * equal(x(1), 60);
 * equal(x(2 ** 18), 600);
 * equal(x(2 ** 9), 330);
 * ```
 */
export function log2Scale(
  domain: readonly [number, number],
  range: readonly [number, number],
): (value: number) => number {
  const [d0, d1] = domain.map(Math.log2) as [number, number];
  if (!(domain[0] > 0 && domain[1] > 0) || d0 === d1) {
    throw new RangeError(
      `Cannot make a log scale over [${domain}]: both ends must be > 0 and differ`,
    );
  }
  const [r0, r1] = range;
  return (value) => r0 + (Math.log2(value) - d0) / (d1 - d0) * (r1 - r0);
}

/**
 * A linear scale: maps `domain[0]` to `range[0]` and `domain[1]` to `range[1]`.
 *
 * @param domain The data interval (ends differ).
 * @param range The pixel interval.
 * @returns The mapping.
 */
export function linearScale(
  domain: readonly [number, number],
  range: readonly [number, number],
): (value: number) => number {
  const [d0, d1] = domain;
  if (d0 === d1) throw new RangeError(`Cannot make a linear scale over [${domain}]: empty domain`);
  const [r0, r1] = range;
  return (value) => r0 + (value - d0) / (d1 - d0) * (r1 - r0);
}

/**
 * Round ticks from 0 up to at least `max`: steps of 1, 2 or 5 × 10^k, about `target` of them.
 *
 * @param max The greatest value to cover (≤ 0 or not finite: the ticks of 0..1).
 * @param target About how many steps.
 * @returns The ticks, ascending, the last ≥ max.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { niceTicks } from "./plots.ts";
 * deepEqual(niceTicks(4.3), [0, 1, 2, 3, 4, 5]);
 * deepEqual(niceTicks(0.07), [0, 0.02, 0.04, 0.06, 0.08]);
 * ```
 */
export function niceTicks(max: number, target = 5): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return niceTicks(1, target);
  const raw = max / target;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  const step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * magnitude;
  // The tolerance keeps max = 0.3 from needing a tick past 0.30000000000000004.
  const count = Math.ceil(max / step - 1e-9);
  // Each tick rounded to the step's precision: 3 × 0.02 is 0.06, not 0.060000000000000005.
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1);
  return Array.from({ length: count + 1 }, (_, i) => Number((i * step).toFixed(digits)));
}

const SUPERSCRIPT: Readonly<Record<string, string>> = Object.freeze({
  "0": "⁰",
  "1": "¹",
  "2": "²",
  "3": "³",
  "4": "⁴",
  "5": "⁵",
  "6": "⁶",
  "7": "⁷",
  "8": "⁸",
  "9": "⁹",
  "-": "⁻",
});

/** An integer in superscript digits (`18` → `¹⁸`), so labels need no `<tspan>` offsets. */
function superscript(k: number): string {
  return [...String(k)].map((c) => SUPERSCRIPT[c] ?? c).join("");
}

/**
 * Labels for linear ticks from {@link niceTicks}: large or tiny values get a common power of ten
 * (returned for the axis label) so that every label stays short.
 */
function tickLabels(ticks: readonly number[]): { labels: string[]; exponent: number } {
  const top = ticks.at(-1)!;
  const step = ticks.length > 1 ? ticks[1]! - ticks[0]! : top || 1;
  const exponent = top >= 1e4 || (top > 0 && top < 1e-2) ? Math.floor(Math.log10(top)) : 0;
  const scale = 10 ** exponent;
  const digits = Math.max(0, -Math.floor(Math.log10(step / scale) + 1e-9));
  return { labels: ticks.map((t) => (t / scale).toFixed(digits)), exponent };
}

// ---------------------------------------------------------------------------------------------
// SVG text (pure)

/** A coordinate with at most two decimals, never `-0`: short, and the same on every machine. */
function px(x: number): string {
  const r = Math.round(x * 100) / 100;
  return String(r === 0 ? 0 : r);
}

/** Escapes text for XML content and attribute values. */
function esc(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;").replaceAll("'", "&apos;");
}

/** Rough width of text in the charts' sans-serif, for layout (no font metrics without a browser). */
function textWidth(text: string, size: number): number {
  return [...text].length * size * 0.6;
}

const FONT = "DejaVu Sans, Helvetica, Arial, sans-serif";
const AXIS = "#333333";
const GRID = "#e5e5e5";
const NOTE = "#666666";

/** Layout shared by both charts. */
interface Frame {
  width: number;
  height: number;
  left: number;
  top: number;
  plotW: number;
  plotH: number;
  legendX: number;
}

const PLOT_W = 520;
const PLOT_H = 300;
const MARGIN = { left: 72, top: 58, bottom: 50, gap: 24, right: 16 };
const LEGEND_ROW = 17;

function frameFor(styles: readonly SeriesStyle[], subtitle: string, plotW = PLOT_W): Frame {
  const top = MARGIN.top + 16 * (subtitle.split("\n").length - 1);
  const legendW = Math.max(
    120,
    ...styles.map((s) => 38 + textWidth(s.label + s.note, 11)),
  );
  const legendH = styles.length * LEGEND_ROW + 8;
  const plotH = Math.max(PLOT_H, legendH);
  return {
    width: Math.ceil(MARGIN.left + plotW + MARGIN.gap + legendW + MARGIN.right),
    height: top + plotH + MARGIN.bottom,
    left: MARGIN.left,
    top,
    plotW,
    plotH,
    legendX: MARGIN.left + plotW + MARGIN.gap,
  };
}

function openSvg(f: Frame, title: string, subtitle: string): string[] {
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" ` +
    `viewBox="0 0 ${f.width} ${f.height}" font-family="${FONT}" font-size="11">`,
    `<title>${esc(title)}</title>`,
    `<rect width="${f.width}" height="${f.height}" fill="#ffffff"/>`,
    `<text x="${f.left}" y="22" font-size="14" font-weight="bold" fill="#000000">${
      esc(title)
    }</text>`,
    ...subtitle.split("\n").map((line, i) =>
      `<text x="${f.left}" y="${40 + 16 * i}" fill="${NOTE}">${esc(line)}</text>`
    ),
  ];
}

/** The y axis: grid lines, ticks, labels and the rotated axis title. */
function yAxis(f: Frame, ticks: number[], y: (v: number) => number, label: string): string[] {
  const { labels, exponent } = tickLabels(ticks);
  const out = ['<g class="y-axis">'];
  ticks.forEach((t, i) => {
    const ty = px(y(t));
    out.push(
      `<line x1="${f.left}" y1="${ty}" x2="${f.left + f.plotW}" y2="${ty}" stroke="${GRID}"/>`,
      `<line x1="${f.left - 4}" y1="${ty}" x2="${f.left}" y2="${ty}" stroke="${AXIS}"/>`,
      `<text x="${f.left - 7}" y="${px(y(t) + 4)}" text-anchor="end" fill="${AXIS}">${
        esc(labels[i]!)
      }</text>`,
    );
  });
  const title = exponent === 0 ? label : `${label} (×10${superscript(exponent)})`;
  const cy = px(f.top + f.plotH / 2);
  out.push(
    `<text x="18" y="${cy}" transform="rotate(-90 18 ${cy})" text-anchor="middle" fill="${AXIS}">${
      esc(title)
    }</text>`,
    "</g>",
  );
  return out;
}

/** The plot area's frame lines (left and bottom), drawn over the data. */
function axisLines(f: Frame): string[] {
  const bottom = f.top + f.plotH;
  return [
    `<line x1="${f.left}" y1="${f.top}" x2="${f.left}" y2="${bottom}" stroke="${AXIS}"/>`,
    `<line x1="${f.left}" y1="${bottom}" x2="${
      f.left + f.plotW
    }" y2="${bottom}" stroke="${AXIS}"/>`,
  ];
}

/** The legend: one entry per series, a line (curves) or a box (bars) as its swatch. */
function legend(f: Frame, styles: readonly SeriesStyle[], swatch: "line" | "box"): string[] {
  const out = ['<g class="legend">'];
  styles.forEach((s, i) => {
    const y = f.top + 8 + i * LEGEND_ROW;
    const x = f.legendX;
    out.push(
      swatch === "line"
        ? `<line x1="${x}" y1="${y}" x2="${x + 22}" y2="${y}" stroke="${s.color}" ` +
          `stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ""}/>`
        : `<rect x="${x + 4}" y="${y - 6}" width="14" height="12" fill="${s.color}"/>`,
      `<text class="legend-entry" x="${x + 30}" y="${y + 4}" fill="#000000">${esc(s.label)}${
        s.note ? `<tspan dx="8" fill="${NOTE}">${esc(s.note)}</tspan>` : ""
      }</text>`,
    );
  });
  out.push("</g>");
  return out;
}

/**
 * The SVG of a chart of ablation curves: KL over edges kept on a log₂ axis from 1 to 2^18 (further
 * if a curve goes further), a line per series at the seeds' mean and a band over their min–max.
 * Points with n < 1 have no place on a log axis and are left out.
 *
 * @param chart What to draw.
 * @returns The SVG document (deterministic: the same chart gives the same bytes).
 */
export function curveChartSvg(chart: CurveChart): string {
  const f = frameFor(chart.lines.map((l) => l.style), chart.subtitle);
  const lines = chart.lines.map((l) => ({
    ...l,
    points: l.points.filter((p) =>
      p.n >= 1 && Number.isFinite(p.n) && Number.isFinite(p.mean) &&
      Number.isFinite(p.low) && Number.isFinite(p.high)
    ),
  }));
  const maxN = Math.max(CURVE_AXIS_EDGES, ...lines.flatMap((l) => l.points.map((p) => p.n)));
  const octaves = Math.ceil(Math.log2(maxN));
  const x = log2Scale([1, 2 ** octaves], [f.left, f.left + f.plotW]);
  const yTicks = niceTicks(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p.high))));
  const y = linearScale([0, yTicks.at(-1)!], [f.top + f.plotH, f.top]);
  const bottom = f.top + f.plotH;

  const out = openSvg(f, chart.title, chart.subtitle);
  out.push(...yAxis(f, yTicks, y, chart.yLabel));
  // A tick per octave, a label every `every` octaves: 2⁰, 2², … 2¹⁸ on the default axis.
  const every = Math.max(1, Math.ceil(octaves / 9));
  out.push('<g class="x-axis">');
  for (let k = 0; k <= octaves; k++) {
    const tx = px(x(2 ** k));
    const labelled = k % every === 0;
    if (labelled) {
      out.push(
        `<line x1="${tx}" y1="${f.top}" x2="${tx}" y2="${bottom}" stroke="${GRID}"/>`,
        `<text x="${tx}" y="${bottom + 17}" text-anchor="middle" fill="${AXIS}">2${
          superscript(k)
        }</text>`,
      );
    }
    out.push(
      `<line x1="${tx}" y1="${bottom}" x2="${tx}" y2="${bottom + (labelled ? 5 : 3)}" ` +
        `stroke="${AXIS}"/>`,
    );
  }
  out.push(
    `<text x="${px(f.left + f.plotW / 2)}" y="${bottom + 38}" text-anchor="middle" ` +
      `fill="${AXIS}">edges kept, n (log₂ axis)</text>`,
    "</g>",
  );
  // Every band under every line, so that no band hides another series' line.
  out.push('<g class="bands">');
  for (const l of lines) {
    if (l.points.every((p) => p.low === p.high)) continue; // one seed: nothing to shade
    const upper = l.points.map((p) => `${px(x(p.n))},${px(y(p.high))}`);
    const lower = l.points.toReversed().map((p) => `${px(x(p.n))},${px(y(p.low))}`);
    out.push(
      `<polygon class="band" points="${[...upper, ...lower].join(" ")}" fill="${l.style.color}" ` +
        `fill-opacity="0.15" stroke="none"/>`,
    );
  }
  out.push("</g>", '<g class="lines">');
  for (const l of lines) {
    if (l.points.length === 0) continue;
    const d = l.points.map((p, i) => `${i === 0 ? "M" : "L"}${px(x(p.n))} ${px(y(p.mean))}`);
    out.push(
      `<path class="curve" d="${d.join(" ")}" fill="none" stroke="${l.style.color}" ` +
        `stroke-width="1.75" stroke-linejoin="round"${
          l.style.dash ? ` stroke-dasharray="${l.style.dash}"` : ""
        }><title>${esc(l.style.label)}</title></path>`,
    );
    // A one-point curve draws no line: mark the point.
    if (l.points.length === 1) {
      const p = l.points[0]!;
      out.push(
        `<circle cx="${px(x(p.n))}" cy="${px(y(p.mean))}" r="2.5" fill="${l.style.color}"/>`,
      );
    }
  }
  out.push("</g>", ...axisLines(f), ...legend(f, chart.lines.map((l) => l.style), "line"));
  out.push("</svg>", "");
  return out.join("\n");
}

/** Room left of each bar panel for its own tick labels. */
const PANEL_GAP = 50;

/**
 * The SVG of a grouped bar chart: a panel per layer, each on its own y scale from 0 (the paper's
 * layers differ tenfold, which one shared scale would flatten), a bar per series at its mean, and
 * a whisker of ± std where there is one.
 *
 * @param chart What to draw.
 * @returns The SVG document (deterministic: the same chart gives the same bytes).
 */
export function barChartSvg(chart: BarChart): string {
  const layers = chart.layers;
  const panels = Math.max(1, layers.length);
  const panelW = Math.max(
    110,
    chart.series.length * 10 + 24,
    (PLOT_W - (panels - 1) * PANEL_GAP) / panels,
  );
  const f = frameFor(
    chart.series.map((s) => s.style),
    chart.subtitle,
    panels * panelW + (panels - 1) * PANEL_GAP,
  );
  const bottom = f.top + f.plotH;
  // Bars no wider than 48 px: two series in a wide panel would otherwise look like blocks.
  const inner = Math.min(panelW * 0.86, chart.series.length * 48);
  const barW = inner / Math.max(1, chart.series.length);

  const out = openSvg(f, chart.title, chart.subtitle);
  const cy = px(f.top + f.plotH / 2);
  out.push(
    `<text x="18" y="${cy}" transform="rotate(-90 18 ${cy})" text-anchor="middle" fill="${AXIS}">${
      esc(chart.yLabel)
    }</text>`,
  );
  layers.forEach((layer, g) => {
    const left = f.left + g * (panelW + PANEL_GAP);
    const values = chart.series.map((s) => s.values.find((v) => v.layer === layer));
    const tops = values.flatMap((v) =>
      v === undefined || !Number.isFinite(v.mean)
        ? []
        : [v.mean + (v.std !== null && Number.isFinite(v.std) ? v.std : 0)]
    );
    const ticks = niceTicks(Math.max(0, ...tops));
    const top = ticks.at(-1)!;
    const y = linearScale([0, top], [bottom, f.top]);
    const clampY = (v: number) => y(Math.min(top, Math.max(0, v)));
    const { labels, exponent } = tickLabels(ticks);
    out.push(`<g class="panel">`);
    ticks.forEach((t, i) => {
      const ty = px(y(t));
      out.push(
        `<line x1="${left}" y1="${ty}" x2="${px(left + panelW)}" y2="${ty}" stroke="${GRID}"/>`,
        `<line x1="${left - 4}" y1="${ty}" x2="${left}" y2="${ty}" stroke="${AXIS}"/>`,
        `<text x="${left - 7}" y="${px(y(t) + 4)}" text-anchor="end" fill="${AXIS}">${
          esc(labels[i]!)
        }</text>`,
      );
    });
    if (exponent !== 0) {
      out.push(
        `<text x="${left}" y="${f.top - 6}" fill="${AXIS}">×10${superscript(exponent)}</text>`,
      );
    }
    out.push(
      `<text x="${px(left + panelW / 2)}" y="${bottom + 18}" text-anchor="middle" ` +
        `fill="${AXIS}">layer ${layer}</text>`,
    );
    values.forEach((v, i) => {
      if (v === undefined || !Number.isFinite(v.mean)) return;
      const s = chart.series[i]!;
      const x0 = left + (panelW - inner) / 2 + i * barW;
      const yMean = clampY(v.mean);
      out.push(
        `<rect class="bar" x="${px(x0 + barW * 0.06)}" y="${px(yMean)}" width="${
          px(barW * 0.88)
        }" height="${px(bottom - yMean)}" fill="${s.style.color}"><title>${
          esc(`${s.style.label}, layer ${layer}: ${v.mean}${v.std === null ? "" : ` ± ${v.std}`}`)
        }</title></rect>`,
      );
      if (v.std !== null && Number.isFinite(v.std) && v.std > 0) {
        const cx = x0 + barW / 2;
        const cap = Math.min(4, barW * 0.3);
        const [lo, hi] = [clampY(v.mean - v.std), clampY(v.mean + v.std)];
        out.push(
          `<path class="whisker" d="M${px(cx)} ${px(lo)} V${px(hi)} M${px(cx - cap)} ${px(hi)} ` +
            `H${px(cx + cap)} M${px(cx - cap)} ${px(lo)} H${px(cx + cap)}" stroke="#000000" ` +
            `stroke-width="1" fill="none"/>`,
        );
      }
    });
    out.push(
      `<line x1="${left}" y1="${f.top}" x2="${left}" y2="${bottom}" stroke="${AXIS}"/>`,
      `<line x1="${left}" y1="${bottom}" x2="${px(left + panelW)}" y2="${bottom}" ` +
        `stroke="${AXIS}"/>`,
      "</g>",
    );
  });
  out.push(...legend(f, chart.series.map((s) => s.style), "box"));
  out.push("</svg>", "");
  return out.join("\n");
}

// ---------------------------------------------------------------------------------------------
// From the report's rows to charts (pure)

/**
 * Okabe & Ito's colour-blind-safe palette, the weak yellow last. Used when there are at most 8
 * series.
 */
const OKABE_ITO = [
  "#0072B2",
  "#D55E00",
  "#009E73",
  "#CC79A7",
  "#E69F00",
  "#56B4E9",
  "#000000",
  "#F0E442",
];
/** Warm colours and black, apart from viridis, for the single series beside a sweep. */
const BESIDE_SWEEP = ["#000000", "#D55E00", "#CC79A7", "#E69F00"];
/** Viridis (colour-blind-safe, ordered), its pale yellow end left out for contrast on white. */
const VIRIDIS = [
  [0x44, 0x01, 0x54],
  [0x48, 0x28, 0x78],
  [0x3e, 0x4a, 0x89],
  [0x31, 0x68, 0x8e],
  [0x26, 0x82, 0x8e],
  [0x1f, 0x9e, 0x89],
  [0x35, 0xb7, 0x79],
  [0x6d, 0xcd, 0x59],
  [0xb4, 0xde, 0x2c],
] as const;
const DASHES = ["", "6 3", "2 2", "8 3 2 3", "4 2 1 2"];

function viridis(t: number): string {
  const at = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(at));
  const [a, b] = [VIRIDIS[i]!, VIRIDIS[i + 1]!];
  const rgb = a.map((c, j) => Math.round(c + (b[j]! - c) * (at - i)));
  return "#" + rgb.map((c) => c.toString(16).padStart(2, "0")).join("");
}

/** A cell's identity across positions: architecture and other parameters. */
function seriesKey(arch: string, params: Readonly<Record<string, string>>): string {
  return JSON.stringify([arch, Object.entries(params).sort(([a], [b]) => (a < b ? -1 : 1))]);
}

function cellId(c: CellKey): string {
  return JSON.stringify([c.position, seriesKey(c.arch, c.params)]);
}

/** The cell a run belongs to, found as `buildReport` groups runs. */
function runCellId(run: ReportRun): string {
  return cellId(cellKeyOf(run));
}

/** `jsae λ=0.001`: each parameter by its last path segment unless two share one. */
function seriesLabel(arch: string, params: Readonly<Record<string, string>>): string {
  const entries = Object.entries(params).sort(([a], [b]) => (a < b ? -1 : 1));
  const last = (path: string) => path.slice(path.lastIndexOf(".") + 1);
  const names = entries.map(([k]) => last(k));
  const parts = entries.map(([k, v], i) => {
    const name = names.indexOf(names[i]!) === names.lastIndexOf(names[i]!) ? names[i]! : k;
    return `${name === "lambda" ? "λ" : name}=${v}`;
  });
  return parts.length === 0 ? arch : `${arch} ${parts.join(", ")}`;
}

/** Compares parameter values as numbers when both are, else as text (so 0.01 sorts after 0.0068). */
function compareParams(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>) {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  for (const k of keys) {
    const [x, y] = [a[k] ?? "", b[k] ?? ""];
    const [nx, ny] = [Number(x), Number(y)];
    const c = x !== "" && y !== "" && Number.isFinite(nx) && Number.isFinite(ny)
      ? nx - ny
      : (x < y ? -1 : x > y ? 1 : 0);
    if (c !== 0) return c;
  }
  return 0;
}

/**
 * Every series of the experiment with its colour and dash, the same across positions and charts:
 * at most 8 series take Okabe–Ito colours; beyond that a parameter sweep (an architecture with
 * several cells) takes an ordered viridis ramp, and the architectures with one cell take black
 * and warm colours that the ramp lacks. Each architecture keeps one dash pattern.
 */
function seriesStyles(report: Report): Map<string, { label: string; color: string; dash: string }> {
  const archs: string[] = [];
  const byArch = new Map<string, Map<string, ReportCell>>();
  for (const p of report.positions) {
    for (const c of p.cells) {
      if (!byArch.has(c.arch)) {
        archs.push(c.arch);
        byArch.set(c.arch, new Map());
      }
      byArch.get(c.arch)!.set(seriesKey(c.arch, c.params), c);
    }
  }
  const ordered = archs.flatMap((arch) =>
    [...byArch.get(arch)!.values()].sort((a, b) => compareParams(a.params, b.params))
  );
  const styles = new Map<string, { label: string; color: string; dash: string }>();
  const sweep = ordered.filter((c) => byArch.get(c.arch)!.size > 1);
  let single = 0;
  let swept = 0;
  for (const c of ordered) {
    const dash = DASHES[archs.indexOf(c.arch) % DASHES.length]!;
    let color: string;
    if (ordered.length <= OKABE_ITO.length) {
      color = OKABE_ITO[styles.size]!;
    } else if (byArch.get(c.arch)!.size > 1) {
      color = viridis(sweep.length === 1 ? 0 : swept++ / (sweep.length - 1));
    } else {
      color = BESIDE_SWEEP[single++ % BESIDE_SWEEP.length]!;
    }
    styles.set(seriesKey(c.arch, c.params), { label: seriesLabel(c.arch, c.params), color, dash });
  }
  return styles;
}

/** A name safe in a file name on every system. */
function fileSafe(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]+/g, "_");
}

/**
 * Draws every chart of an experiment. Pure: the same data give the same files, byte for byte.
 *
 * Per position: `<experiment>-<position>-curves-layer<i>.svg` for each layer with stored curves,
 * and `<experiment>-<position>-relative-scalar.svg` if it has SCALAR scores.
 *
 * @param data The rows ({@link loadPlotData}).
 * @returns The charts, per position: the curves by layer, then the bars.
 */
export function buildPlots(data: PlotData): Plot[] {
  const { report } = data;
  const styles = seriesStyles(report);
  // Series in the styles' order (parameter sweeps by value) in every chart.
  const order = new Map([...styles.keys()].map((k, i) => [k, i]));
  const cellOfRun = new Map<string, string>();
  for (const run of data.runs) cellOfRun.set(run.id, runCellId(run));
  const klName = report.curve === "model" ? "model" : "full circuit";
  const plots: Plot[] = [];
  for (const p of report.positions) {
    const cells = p.cells.toSorted((a, b) =>
      order.get(seriesKey(a.arch, a.params))! - order.get(seriesKey(b.arch, b.params))!
    );
    const cellIds = new Set(cells.map(cellId));
    const prefix = `${fileSafe(report.experiment)}-${fileSafe(p.position)}`;
    const styleOf = (c: ReportCell, note: string): SeriesStyle => ({
      ...styles.get(seriesKey(c.arch, c.params))!,
      note,
    });

    // layer → cell → n → KL of each run; runs counted per layer and cell.
    const byLayer = new Map<
      number,
      { pairs: Set<string>; cells: Map<string, { runs: Set<string>; at: Map<number, number[]> }> }
    >();
    for (const row of data.curves) {
      const cell = cellOfRun.get(row.runId);
      if (cell === undefined || !cellIds.has(cell)) continue;
      const layer = byLayer.get(row.layer) ?? { pairs: new Set(), cells: new Map() };
      byLayer.set(row.layer, layer);
      layer.pairs.add(row.pair);
      const c = layer.cells.get(cell) ?? { runs: new Set(), at: new Map() };
      layer.cells.set(cell, c);
      c.runs.add(row.runId);
      if (row.kl === null || !Number.isFinite(row.kl)) continue;
      c.at.set(row.n, [...(c.at.get(row.n) ?? []), row.kl]);
    }
    for (const layer of [...byLayer.keys()].sort((a, b) => a - b)) {
      const { pairs, cells: perCell } = byLayer.get(layer)!;
      const lines: CurveLine[] = cells.flatMap((c) => {
        const entry = perCell.get(cellId(c));
        if (entry === undefined || entry.at.size === 0) return [];
        const points = [...entry.at.entries()].sort(([a], [b]) => a - b).map(([n, kls]) => ({
          n,
          mean: summarize(kls)!.mean,
          low: Math.min(...kls),
          high: Math.max(...kls),
        }));
        return [{ style: styleOf(c, formatSeedCount(entry.runs.size, c.expected)), points }];
      });
      if (lines.length === 0) continue;
      plots.push({
        name: `${prefix}-curves-layer${layer}.svg`,
        svg: curveChartSvg({
          title: `${report.experiment} · ${p.position} · layer ${layer}: ablation curves`,
          subtitle: `${[...pairs].sort().join(", ").replaceAll("→", " → ")}; ` +
            "line: mean over seeds, band: min–max over seeds",
          yLabel: `KL(${klName} ‖ ablated), nats`,
          lines,
        }),
      });
    }

    const series: BarSeries[] = cells.flatMap((c) =>
      c.relative.perLayer.length === 0 ? [] : [{
        style: styleOf(c, formatSeedCount(c.n, c.expected)),
        values: c.relative.perLayer.map((s) => ({ layer: s.layer, mean: s.mean, std: s.std })),
      }]
    );
    if (p.layers.length > 0 && series.length > 0) {
      plots.push({
        name: `${prefix}-relative-scalar.svg`,
        svg: barChartSvg({
          title: `${report.experiment} · ${p.position}: relative SCALAR per layer`,
          subtitle: `area under the KL(${klName} ‖ ablated) curve × 2¹⁸ / E_tot; lower = ` +
            "sparser\nbar: mean over seeds, whisker: ± sample std; each layer on its own scale",
          yLabel: "relative SCALAR",
          layers: p.layers,
          series,
        }),
      });
    }
  }
  return plots;
}

// ---------------------------------------------------------------------------------------------
// Database and files

/**
 * Reads what the charts need: the report's rows and the chosen ablation curve of every finished
 * run of the experiment.
 *
 * @param store An open store (read-only is enough).
 * @param options The experiment, curve and expected seeds.
 * @returns The rows.
 * @throws {StoreError} If the store holds no run of the experiment.
 */
export async function loadPlotData(
  store: Store,
  options: Pick<PlotOptions, "experiment" | "curve" | "expectedSeeds">,
): Promise<PlotData> {
  const curve = options.curve ?? "model";
  const data = await loadReportData(store, options.experiment, curve, []);
  const report = buildReport(data, { curve, expectedSeeds: options.expectedSeeds, metrics: [] });
  // The column is one of two fixed names, never user text.
  const column = curve === "model" ? "kl_model" : "kl_full_circuit";
  const curves = (await store.connection.runAndReadAll(
    `select c.run_id, c.layer, c.pair, c.n_edges, c.${column} from scalar_curves c
     join runs r on r.id = c.run_id
     where r.experiment = $1 and r.status = 'done'
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
 * Draws an experiment's charts and writes them as SVG (see {@link buildPlots} for which), with a
 * PNG beside each when a converter is found. PNGs are optional: without a converter, or if one
 * fails, one notice goes to `log` and the rest is SVG only.
 *
 * @param store An open store (read-only is enough).
 * @param options The experiment, folder, curve, expected seeds, converter and log.
 * @returns The paths written (each SVG followed by its PNG), in {@link buildPlots}' order.
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
  const plots = buildPlots(await loadPlotData(store, options));
  if (plots.length === 0) {
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
  for (const plot of plots) {
    const path = `${outDir}/${plot.name}`;
    try {
      await Deno.writeTextFile(path, plot.svg);
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

/**
 * The HTML report of an experiment: one self-contained file (no network needed to open it) with
 * the report's tables, its charts drawn by the Vega runtime inlined in the page (the same
 * Vega-Lite specs `report --plot` renders to SVG), and a feature browser: the top-activating
 * validation contexts of every feature of every SAE of one run per report cell, as
 * `deno task features` prints them.
 *
 * {@link buildHtml} assembles the page from its parts (pure); {@link writeHtmlReport} reads the
 * store and the run folders and writes the file.
 *
 * @module
 */
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { RunFeatures, type SaeFeatures } from "../experiment/inspect_features.ts";
import { buildCharts, type Chart, compileSpec, loadChartData } from "./charts.ts";
import { type Store, StoreError } from "./db.ts";
import { cellKeyOf, report, type ReportOptions } from "./report.ts";

/** The feature browser's data for one SAE of one run. */
export interface BrowsedSae extends SaeFeatures {
  /** The run. */
  runId: string;
  /** The run's report cell, e.g. `topk` or `jsae λ=0.001`, and seed. */
  label: string;
}

/** The parts of an HTML report. */
export interface HtmlParts {
  /** The experiment's name (the page title). */
  experiment: string;
  /** The report's tables as `formatReport(…, "md")` prints them. */
  markdown: string;
  /** The charts. */
  charts: Chart[];
  /** The feature browser's SAEs (empty: no browser). */
  saes: BrowsedSae[];
  /** The Vega runtime (`vega.min.js`), inlined so that the page needs no network. */
  vegaRuntime: string;
  /** A line under the title, e.g. when and from what the page was made. */
  subtitle: string;
}

/** Options of {@link writeHtmlReport}. */
export interface HtmlReportOptions
  extends Pick<ReportOptions, "experiment" | "curve" | "expectedSeeds"> {
  /** The file to write. */
  out: string;
  /** Where run folders live. @default "results/runs" */
  runsRoot?: string;
  /** Contexts per feature in the browser. @default 5 */
  top?: number;
  /** Validation sequences the browser reads per SAE. @default 64 */
  sequences?: number;
  /** Where notices go. @default a line on stderr */
  log?: (line: string) => void;
}

/**
 * Where an experiment's HTML report goes unless told otherwise.
 *
 * @param experiment The experiment's name.
 * @returns `results/reports/<name>.html`, the name made file-safe.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { htmlReportPath } from "./html.ts";
 *
 * equal(htmlReportPath("toy mlp/1"), "results/reports/toy_mlp_1.html");
 * ```
 */
export function htmlReportPath(experiment: string): string {
  return `results/reports/${experiment.replace(/[^A-Za-z0-9._-]+/g, "_")}.html`;
}

const escapeHtml = (s: string) =>
  s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll(
    '"',
    "&quot;",
  );

/** JSON that is safe inside a `<script>` element. */
const scriptJson = (value: unknown) => JSON.stringify(value).replaceAll("<", "\\u003c");

/**
 * The markdown `formatReport` prints (headings, pipe tables, paragraphs) as HTML.
 *
 * @param md The markdown.
 * @returns HTML elements.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { markdownToHtml } from "./html.ts";
 *
 * equal(
 *   markdownToHtml("### S\n\n| a | b |\n| --- | --: |\n| x | 1 |\n\nNote <1>."),
 *   '<h3>S</h3>\n<table><thead><tr><th>a</th><th class="num">b</th></tr></thead><tbody>' +
 *     '<tr><td>x</td><td class="num">1</td></tr></tbody></table>\n<p>Note &lt;1&gt;.</p>',
 * );
 * ```
 */
export function markdownToHtml(md: string): string {
  const out: string[] = [];
  const cells = (line: string) => line.replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
  for (const block of md.trim().split(/\n\s*\n/)) {
    const lines = block.split("\n");
    const heading = /^(#{1,6}) (.*)$/.exec(lines[0]!);
    if (heading && lines.length === 1) {
      const level = heading[1]!.length;
      out.push(`<h${level}>${escapeHtml(heading[2]!)}</h${level}>`);
    } else if (lines.length >= 2 && lines.every((l) => l.startsWith("|"))) {
      const right = cells(lines[1]!).map((c) => c.endsWith(":"));
      const row = (line: string, tag: string) =>
        "<tr>" + cells(line).map((c, i) =>
          `<${tag}${right[i] ? ' class="num"' : ""}>${escapeHtml(c)}</${tag}>`
        ).join("") + "</tr>";
      out.push(
        `<table><thead>${row(lines[0]!, "th")}</thead><tbody>` +
          lines.slice(2).map((l) => row(l, "td")).join("") + "</tbody></table>",
      );
    } else {
      out.push(`<p>${escapeHtml(lines.join(" "))}</p>`);
    }
  }
  return out.join("\n");
}

/**
 * Assembles the page. Pure: the same parts give the same bytes.
 *
 * @param parts Tables, charts, feature data and the Vega runtime.
 * @returns The HTML document.
 *
 * @example
 * ```ts
 * import { match, ok } from "node:assert/strict";
 * import { buildHtml } from "./html.ts";
 *
 * const html = buildHtml({
 *   experiment: "demo",
 *   subtitle: "made today",
 *   markdown: "## Position `mlp-block`",
 *   charts: [],
 *   saes: [],
 *   vegaRuntime: "var vega = {};",
 * });
 * match(html, /<title>demo · SCALAR report<\/title>/);
 * ok(!html.includes("http://") && !html.includes("https://"));
 * ```
 */
export function buildHtml(parts: HtmlParts): string {
  const charts = parts.charts.map((c, i) => ({ id: `chart-${i}`, spec: compileSpec(c.spec) }));
  const browser = parts.saes.length === 0 ? "" : `<h2 id="features">Feature browser</h2>
<p>Top-activating validation contexts per feature (as <code>deno task features RUN --sae HOOK</code>
prints them; ⟦ ⟧ marks the token the activation was read at), for one run per cell.</p>
<div class="controls"><label>SAE <select id="sae"></select></label>
<label>order <select id="order"><option value="index">feature index</option>
<option value="density">density</option></select></label>
<label>feature <input id="find" type="number" min="0" placeholder="index"></label>
<button id="prev">◀</button> <span id="page"></span> <button id="next">▶</button></div>
<div id="browser"></div>
<script type="application/json" id="sae-data">${scriptJson(parts.saes.map(compactSae))}</script>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(parts.experiment)} · SCALAR report</title>
<style>${PAGE_CSS}</style>
<script>${parts.vegaRuntime.replaceAll("</script", "<\\/script")}</script>
</head><body>
<h1>${escapeHtml(parts.experiment)}</h1>
<p class="sub">${escapeHtml(parts.subtitle)}</p>
<nav><a href="#charts">Charts</a> · <a href="#tables">Tables</a>${
    browser ? ' · <a href="#features">Feature browser</a>' : ""
  }</nav>
<h2 id="charts">Charts</h2>
<div class="charts">${
    parts.charts.map((c, i) =>
      `<figure><div class="chart" id="chart-${i}" aria-label="${
        escapeHtml(c.title)
      }"></div></figure>`
    ).join("\n")
  }</div>
<h2 id="tables">Tables</h2>
${markdownToHtml(parts.markdown)}
${browser}
<script type="application/json" id="chart-data">${scriptJson(charts)}</script>
<script>${PAGE_SCRIPT}</script>
</body></html>
`;
}

/** The browser's data in short form: [index, density, count, [[value, before, token, after]…]]. */
function compactSae(s: BrowsedSae) {
  return {
    label: s.label,
    runId: s.runId,
    hook: s.hook,
    arch: s.arch,
    width: s.width,
    k: s.k,
    tokens: s.tokens,
    features: s.features.map((f) => [
      f.feature,
      f.density,
      f.count,
      f.top.map((a) => [Number(a.value.toPrecision(4)), a.before, a.token, a.after]),
    ]),
  };
}

const PAGE_CSS = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1120px; color: #222; padding: 0 16px; }
h1 { margin-bottom: 0; } .sub { color: #666; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 3px 8px; } th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 24px; } figure { margin: 8px 0 16px; } .controls { margin: 8px 0; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.feature { border-top: 1px solid #eee; padding: 6px 0; } .feature b { font-weight: 600; }
.ctx { font: 12px/1.5 ui-monospace, monospace; white-space: pre; overflow-x: auto; }
.ctx mark { background: #ffd966; } .muted { color: #888; }`;

/** Draws the charts with the inlined Vega runtime, and runs the feature browser. */
const PAGE_SCRIPT = `
for (const c of JSON.parse(document.getElementById("chart-data").textContent)) {
  new vega.View(vega.parse(c.spec), { renderer: "svg", container: "#" + c.id, hover: true })
    .runAsync().catch((e) => console.error("chart " + c.id + ": " + e));
}
const dataEl = document.getElementById("sae-data");
if (dataEl) {
  const saes = JSON.parse(dataEl.textContent), per = 25;
  const sel = document.getElementById("sae"), order = document.getElementById("order");
  const find = document.getElementById("find"), out = document.getElementById("browser");
  let page = 0;
  saes.forEach((s, i) => sel.add(new Option(s.label + " · " + s.hook + " (" + s.width + " features)", i)));
  const esc = (t) => t.replace(/[&<>]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[ch]).replace(/\\n/g, "⏎");
  function draw() {
    const s = saes[sel.value];
    let fs = s.features.slice();
    if (order.value === "density") fs.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    if (find.value !== "") fs = fs.filter((f) => f[0] === Number(find.value));
    const pages = Math.max(1, Math.ceil(fs.length / per));
    page = Math.min(Math.max(0, page), pages - 1);
    document.getElementById("page").textContent = "page " + (page + 1) + " of " + pages;
    out.innerHTML = fs.slice(page * per, page * per + per).map((f) =>
      '<div class="feature"><b>feature ' + f[0] + "</b> · density " + (100 * f[1]).toPrecision(3) +
      "% (" + f[2] + " of " + s.tokens + " tokens)" +
      (f[3].length === 0 ? ' <span class="muted">never active</span>' : "") +
      f[3].map((a) => '<div class="ctx">' + a[0].toFixed(3).padStart(8) + "  " + esc(a[1]) +
        "<mark>" + esc(a[2]) + "</mark>" + esc(a[3]) + "</div>").join("") + "</div>").join("");
  }
  for (const el of [sel, order, find]) el.addEventListener("input", () => { page = 0; draw(); });
  document.getElementById("prev").onclick = () => { page--; draw(); };
  document.getElementById("next").onclick = () => { page++; draw(); };
  draw();
}`;

/** The Vega runtime's browser build, from the installed `vega` package. */
async function vegaRuntime(): Promise<string> {
  const dir = dirname(fileURLToPath(import.meta.resolve("vega")));
  return await Deno.readTextFile(`${dir}/vega.min.js`);
}

/**
 * The feature browser's SAEs: every SAE of the first finished run (lowest seed) of each cell.
 * A run whose folder is gone is skipped with a notice.
 */
async function browsedSaes(
  o: HtmlReportOptions,
  runs: { id: string; seed: number; status: string; label: string; cell: string }[],
): Promise<BrowsedSae[]> {
  const log = o.log ?? ((line: string) => console.error(line));
  const chosen = new Map<string, (typeof runs)[number]>();
  for (const r of runs.filter((r) => r.status === "done").sort((a, b) => a.seed - b.seed)) {
    if (!chosen.has(r.cell)) chosen.set(r.cell, r);
  }
  const out: BrowsedSae[] = [];
  for (const r of chosen.values()) {
    const dir = `${o.runsRoot ?? "results/runs"}/${r.id}/saes`;
    let run: RunFeatures;
    try {
      run = await RunFeatures.open(dir);
    } catch (e) {
      log(`feature browser: skipping run ${r.id} (${e instanceof Error ? e.message : e})`);
      continue;
    }
    try {
      const sequences = Math.min(o.sequences ?? 64, await run.availableSequences());
      for (const hook of run.saes.hooks) {
        const f = await run.inspect({ hook, top: o.top ?? 5, sequences });
        out.push({ ...f, runId: r.id, label: `${r.label} seed ${r.seed}` });
      }
    } finally {
      run.dispose();
    }
  }
  return out;
}

/**
 * Writes an experiment's HTML report.
 *
 * @param store An open store (read-only is enough).
 * @param o The experiment, curve, expected seeds, output file and feature-browser budget.
 * @returns The path written.
 * @throws {StoreError} If the store holds no run of the experiment or the file cannot be written.
 *
 * @example
 * ```ts ignore
 * const store = await openStore("results/scalar.duckdb", { readOnly: true });
 * try {
 *   console.log(await writeHtmlReport(store, { experiment: "quickstart", out: "results/quickstart.html" }));
 * } finally {
 *   store.close();
 * }
 * ```
 */
export async function writeHtmlReport(store: Store, o: HtmlReportOptions): Promise<string> {
  const markdown = await report(store, { ...o, format: "md" });
  const data = await loadChartData(store, o);
  const runs = data.runs.map((r) => {
    const cell = cellKeyOf(r);
    const params = Object.entries(cell.params).map(([k, v]) => `${k.split(".").at(-1)}=${v}`);
    return { ...r, label: [cell.arch, ...params].join(" "), cell: JSON.stringify(cell) };
  });
  const html = buildHtml({
    experiment: o.experiment,
    subtitle: `SCALAR report of experiment "${o.experiment}", ${data.runs.length} runs; ` +
      `made ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    markdown,
    charts: buildCharts(data),
    saes: await browsedSaes(o, runs),
    vegaRuntime: await vegaRuntime(),
  });
  try {
    await Deno.mkdir(dirname(o.out), { recursive: true });
    await Deno.writeTextFile(o.out, html);
  } catch (e) {
    throw new StoreError(
      `Cannot write the HTML report "${o.out}": ${e instanceof Error ? e.message : e}`,
    );
  }
  return o.out;
}

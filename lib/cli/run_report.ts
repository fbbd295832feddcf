/**
 * What `run` prints when a run and then the grid finish: one summary line per run, and at the end
 * the report's improvement tables (relative and absolute SCALAR over TopK) and the path of the
 * HTML report it writes, so that a job ends in its result without a second command.
 *
 * @module
 */
import type { ExperimentManifest } from "../experiment/manifest.ts";
import type { SaeRunResult } from "../experiment/sae_run.ts";
import { openStore } from "../store/db.ts";
import { htmlReportPath, writeHtmlReport } from "../store/html.ts";
import { report } from "../store/report.ts";
import { formatDuration } from "../util/progress.ts";

/**
 * What a finished run's summary line says of it: its time, reconstruction (fvu range over its
 * SAEs, the worst hook), CE loss increase, and relative SCALAR summed over pairs.
 *
 * @param seconds Its wall time.
 * @param result Its results.
 * @returns e.g. `1m05s, fvu 0.031–0.092 (worst blocks.3.hook_resid_mid), …`.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { describeResult } from "./run_report.ts";
 *
 * const result = {
 *   metrics: { saes: { a: { fvu: 0.05 }, b: { fvu: 0.12 } }, run: { ce_loss_all_increase: 0.25 } },
 *   pairs: [{ scores: { model: { relative: 1200 } } }, { scores: { model: { relative: 800 } } }],
 * } as never;
 * equal(
 *   describeResult(65, result),
 *   "1m05s, fvu 0.050–0.120 (worst b), CE +0.250 with all SAEs, " +
 *     "relative SCALAR Σ 2.00e+3",
 * );
 * ```
 */
export function describeResult(seconds: number, result: SaeRunResult): string {
  const fvus = Object.entries(result.metrics.saes).map(([hook, m]) => [hook, m.fvu] as const);
  const worst = fvus.reduce((a, b) => (b[1] > a[1] ? b : a));
  const low = Math.min(...fvus.map(([, v]) => v));
  const scalar = result.pairs.reduce((s, p) => s + p.scores.model.relative, 0);
  const ce = result.metrics.run.ce_loss_all_increase;
  return `${formatDuration(seconds)}, fvu ${low.toFixed(3)}–${worst[1].toFixed(3)} ` +
    `(worst ${worst[0]}), CE ${ce < 0 ? "" : "+"}${ce.toFixed(3)} with all ` +
    `SAEs` + (result.pairs.length > 0 ? `, relative SCALAR Σ ${scalar.toExponential(2)}` : "");
}

/**
 * The improvement sections of the report's markdown, each under its position's heading.
 *
 * @param md The report as `formatReport(…, "md")` prints it.
 * @returns The headings of positions and the improvement tables with their notes.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { improvementSections } from "./run_report.ts";
 *
 * const md = "## Position `mlp`\n\n### SCALAR\n\n| a |\n\n### Improvement over TopK\n\n| b |\n\n" +
 *   "### SAE metrics\n\n| c |\n";
 * equal(improvementSections(md), "## Position `mlp`\n\n### Improvement over TopK\n\n| b |");
 * ```
 */
export function improvementSections(md: string): string {
  const out: string[] = [];
  let keep = false;
  for (const block of md.trim().split(/\n\s*\n/)) {
    const heading = /^(#+) /.exec(block);
    if (heading) keep = heading[1] === "##" || /^#+ Improvement/i.test(block);
    if (keep) out.push(block);
  }
  // A position heading with no improvement under it says nothing.
  return out.filter((b, i) => !(b.startsWith("## ") && (out[i + 1] ?? "## ").startsWith("## ")))
    .join("\n\n");
}

/**
 * Prints the improvement tables of a finished grid and writes its HTML report.
 *
 * @param manifest The grid's manifest.
 * @param db The results database.
 */
export async function printJobReport(manifest: ExperimentManifest, db: string): Promise<void> {
  const store = await openStore(db, { readOnly: true });
  try {
    const md = await report(store, { experiment: manifest.name, format: "md" });
    console.log(`\n${improvementSections(md)}\n`);
    const out = await writeHtmlReport(store, {
      experiment: manifest.name,
      out: htmlReportPath(manifest.name),
      log: (line) => console.error(line),
    });
    console.error(
      `HTML report: ${out}\nall tables: deno task report ${manifest.file}`,
    );
  } finally {
    store.close();
  }
}

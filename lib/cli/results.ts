/**
 * `report` and `query`: the paper's tables and free SQL over the results database.
 *
 * @module
 */
import { backendChoiceFrom, selectBackend } from "../backend/select.ts";
import { expandManifest } from "../experiment/manifest.ts";
import { matrixValueText } from "../experiment/matrix.ts";
import { openStore } from "../store/db.ts";
import { query, QUERY_FORMATS, type QueryFormat } from "../store/query.ts";
import { writePlots } from "../store/charts.ts";
import { htmlReportPath, writeHtmlReport } from "../store/html.ts";
import { type CellKey, report, type ReportFormat } from "../store/report.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";
import { mergeBeforeReading } from "./merge.ts";
import { DEFAULT_DB } from "./run.ts";

const REPORT_FORMATS: readonly ReportFormat[] = ["md", "csv", "json"];

/** A report cell's identity as text (parameter order does not matter). */
function cellKey(c: CellKey): string {
  return JSON.stringify([c.position, c.arch, Object.entries(c.params).sort()]);
}

/** The `report` command. */
export const reportCommand: Command = {
  summary: "print the paper's tables (mean ± std over seeds) from stored results",
  help:
    `Usage: deno task report MANIFEST | --experiment NAME [--format md|csv|json] [--curve model|full]
                        [--plot [--plot-dir DIR]] [--html] [--db PATH]

Per position and architecture: SCALAR (absolute and relative, per layer), its improvement over
TopK, and mse, fvu, l0 and ce_loss_increase — each as mean ± std over seeds with the seed count.
A cell with fewer finished seeds than the manifest's grid asks for is flagged.

Options:
  --experiment NAME  report an experiment by name instead of a manifest
  --format FORMAT    md (default), csv or json
  --curve CURVE      SCALAR against the "model" (the paper's, default) or the "full" circuit
  --plot             also write SVG charts (and PNG where rsvg-convert or ImageMagick exists):
                     KL ablation curves per layer with seed bands, SCALAR per layer, SAE metrics
  --plot-dir DIR     where the charts go (default results/plots)
  --html             also write one self-contained HTML page (results/reports/NAME.html): the
                     tables, the same charts drawn interactively, and a feature browser (top
                     contexts of every feature of every SAE of one run per cell)
  --db PATH          results database (default ${DEFAULT_DB})
  -h, --help         show this help`,
  async run(args) {
    const { values, positionals } = parseCommandArgs(args, {
      experiment: { type: "string" },
      format: { type: "string" },
      curve: { type: "string" },
      db: { type: "string" },
      plot: { type: "boolean" },
      html: { type: "boolean" },
      "plot-dir": { type: "string" },
    });
    const format = (values.format ?? "md") as ReportFormat;
    if (!REPORT_FORMATS.includes(format)) {
      throw new UsageError(`--format must be one of ${REPORT_FORMATS.join(", ")}, got "${format}"`);
    }
    const curve = values.curve ?? "model";
    if (curve !== "model" && curve !== "full") {
      throw new UsageError(`--curve must be "model" or "full", got "${curve}"`);
    }
    let experiment = values.experiment;
    let expectedSeeds: ((cell: CellKey) => number | undefined) | undefined;
    if (positionals.length === 1) {
      const { manifest, runs } = await expandManifest(positionals[0]!);
      experiment = manifest.name;
      // The grid knows how many seeds each cell should have, excludes included.
      const counts = new Map<string, number>();
      for (const r of runs) {
        const params = Object.fromEntries(
          Object.entries(r.varied)
            .filter(([k]) => k !== "position" && k !== "sae.arch")
            .map(([k, v]) => [k, matrixValueText(v)]),
        );
        const key = cellKey({ position: r.config.position, arch: r.config.sae.arch, params });
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
      expectedSeeds = (cell) => counts.get(cellKey(cell));
    }
    if (experiment === undefined || positionals.length > 1) {
      throw new UsageError("expected one MANIFEST path or --experiment NAME");
    }
    const db = values.db ?? DEFAULT_DB;
    await mergeBeforeReading(db, experiment);
    // The report's SQL is the program's, but it gets no more than a user's query would.
    const store = await openStore(db, { readOnly: true, sandboxed: true });
    try {
      console.log(await report(store, { experiment, format, curve, expectedSeeds }));
      if (values.plot) {
        const files = await writePlots(store, {
          experiment,
          curve,
          expectedSeeds,
          outDir: values["plot-dir"],
        });
        for (const f of files) console.error(`wrote ${f}`);
      }
      if (values.html) {
        // The feature browser runs the model: on the fast CPU path, not tfjs's default.
        await selectBackend(backendChoiceFrom(undefined, "auto"));
        const out = htmlReportPath(experiment);
        console.error(
          `wrote ${await writeHtmlReport(store, { experiment, curve, expectedSeeds, out })}`,
        );
      }
    } finally {
      store.close();
    }
    return 0;
  },
};

/** The `query` command. */
export const queryCommand: Command = {
  summary: "run read-only SQL over the results database",
  help: `Usage: deno task query "SQL" [--format table|csv|json] [--db PATH]

Tables: runs, run_params, metrics, scalar_curves, scalar_scores, train_log (see the README).

Options:
  --format FORMAT  table (default), csv or json
  --db PATH        results database (default ${DEFAULT_DB})
  -h, --help       show this help`,
  async run(args) {
    const { values, positionals } = parseCommandArgs(args, {
      format: { type: "string" },
      db: { type: "string" },
    });
    if (positionals.length !== 1) throw new UsageError("expected one SQL statement in quotes");
    const format = (values.format ?? "table") as QueryFormat;
    if (!QUERY_FORMATS.includes(format)) {
      throw new UsageError(`--format must be one of ${QUERY_FORMATS.join(", ")}, got "${format}"`);
    }
    const db = values.db ?? DEFAULT_DB;
    await mergeBeforeReading(db);
    console.log(await query(db, positionals[0]!, format));
    return 0;
  },
};

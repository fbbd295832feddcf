/**
 * `run MANIFEST` and `plan MANIFEST`: expand an experiment manifest into its grid of runs, show
 * their status, and run the pending ones, each stored in the results database in one transaction.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { backendChoiceFrom, describeBackend, selectBackend } from "../backend/select.ts";
import {
  type ExpandedRun,
  expandManifest,
  type ExperimentManifest,
  type ManifestExpansion,
} from "../experiment/manifest.ts";
import { estimateRuns, formatEstimate, measureThroughput } from "../experiment/estimate.ts";
import { prepareRuns } from "../experiment/prepare.ts";
import { matrixValueText } from "../experiment/matrix.ts";
import { type SaeRunConfig } from "../experiment/sae_run.ts";
import { removeAbandonedFills } from "../sae/activation_cache.ts";
import { currentOwner, ownerAlive } from "../store/claims.ts";
import { type Store, StoreError, withStore as useStore } from "../store/db.ts";
import { linkGrid, type RunRecord, type RunStatus, runStatuses } from "../store/write.ts";
import denoConfig from "../../deno.json" with { type: "json" };
import { formatDuration, LiveLog } from "../util/progress.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";
import { mergeBeforeReading } from "./merge.ts";
import { describeResult, printJobReport } from "./run_report.ts";
import { RESULT_FILE, runClaimed, type RunOutcome, StoreAccess } from "./run_claimed.ts";
import {
  checkSlurmOptions,
  describeSlurmState,
  runsInSlurm,
  SLURM_RUN_HELP,
  SLURM_RUN_OPTIONS,
  submitGrid,
} from "./slurm.ts";

/** Where results go unless `--db` says otherwise. */
export const DEFAULT_DB = "results/scalar.duckdb";

/** Where the activation caches that runs share live. */
const CACHE_ROOT = "results/cache";

/** Where each run's folder lives. */
const RUNS_ROOT = "results/runs";

const COMMON_HELP = `  --db PATH        results database (default ${DEFAULT_DB})
  --only KEY=VALUE only runs whose varied parameter (or seed) has this value; repeatable
  -h, --help       show this help`;

/**
 * Opens the store for one short piece of work (DuckDB lets one writer hold the file at a time),
 * waiting, with a message, while another process (a reader) holds it.
 */
function withStore<T>(db: string, work: (store: Store) => Promise<T>): Promise<T> {
  const onWait = (line: string) => console.error(line);
  return useStore(db, { lockWaitMs: 10 * 60_000, onWait }, work);
}

/**
 * Interrupts the grid (as Ctrl-C does) when this process loses its parent: a `deno task` wrapper
 * killed with SIGKILL cannot pass a signal on, and its runner would otherwise go on unseen.
 *
 * @returns Stops watching.
 */
function watchParent(interrupt: () => void): () => void {
  const parent = Deno.ppid;
  const timer = setInterval(() => {
    if (Deno.ppid !== parent) {
      clearInterval(timer);
      interrupt();
    }
  }, 200);
  return () => clearInterval(timer);
}

/** A run's varied value at `path` as `run_params` spells it (`model.layers=[0,1]`), or "". */
function variedText(r: ExpandedRun, path: string): string {
  const value = r.varied[path];
  return value === undefined ? "" : matrixValueText(value);
}

/** Applies `--only key=value` filters to the grid (spaces in a list value are ignored). */
function filterRuns(runs: ExpandedRun[], only: string[]): ExpandedRun[] {
  const filters = only.map((f) => {
    const eq = f.indexOf("=");
    if (eq <= 0) throw new UsageError(`--only expects KEY=VALUE, got "${f}"`);
    return [f.slice(0, eq), f.slice(eq + 1)] as const;
  });
  return runs.filter((r) =>
    filters.every(([key, value]) =>
      (key === "seed" ? String(r.seed) : variedText(r, key)) ===
        (value.startsWith("[") ? value.replaceAll(" ", "") : value)
    )
  );
}

/** Keeps the runs `--run-id` names, in its order (a Slurm job's runs); ids must be in the grid. */
function selectRuns(runs: ExpandedRun[], ids: string[] | undefined, file: string): ExpandedRun[] {
  if (ids === undefined) return runs;
  const byId = new Map(runs.map((r) => [r.id, r]));
  const unknown = ids.filter((id) => !byId.has(id));
  if (unknown.length > 0) {
    throw new UsageError(`--run-id ${unknown.join(", ")}: no such run in the grid of ${file}`);
  }
  return ids.map((id) => byId.get(id)!);
}

function describeRun(r: ExpandedRun): string {
  const parts = Object.keys(r.varied).map((k) => `${k}=${variedText(r, k)}`);
  return [...parts, `seed=${r.seed}`].join(" ");
}

async function loadGrid(args: string[]) {
  const { values, positionals } = parseCommandArgs(args, {
    db: { type: "string" },
    only: { type: "string", multiple: true },
    backend: { type: "string" },
    force: { type: "boolean" },
    "fail-fast": { type: "boolean" },
    yes: { type: "boolean" },
    verbose: { type: "boolean" },
    "run-id": { type: "string", multiple: true },
    prepare: { type: "boolean" },
    ...SLURM_RUN_OPTIONS,
  });
  if (positionals.length !== 1) throw new UsageError("expected exactly one MANIFEST path");
  const expansion: ManifestExpansion = await expandManifest(positionals[0]!);
  const runs = selectRuns(
    filterRuns(expansion.runs, values.only ?? []),
    values["run-id"],
    positionals[0]!,
  );
  const db = values.db ?? DEFAULT_DB;
  // A Slurm grid's prepare job runs while array tasks write: it opens no database.
  const statuses = values.prepare ? new Map<string, RunStatus>() : await (async () => {
    await mergeBeforeReading(db, expansion.manifest.name);
    return await withStore(db, (s) => runStatuses(s, runs.map((r) => r.id)));
  })();
  return { values, expansion, runs, db, statuses };
}

/**
 * Prints what the pending runs will cost on this backend and refuses, with the figures, a grid
 * whose largest run cannot fit in the memory available, unless the user said `--yes`.
 */
async function checkCost(configs: SaeRunConfig[], backend: string, yes: boolean): Promise<void> {
  const { estimates, d, stepper } = await estimateRuns(configs, (line) => console.error(line));
  // WebGPU does not tell how much memory its device has; the CPU backends use the host's.
  const available = backend === "webgpu" ? undefined : Deno.systemMemoryInfo().available;
  for (const line of formatEstimate(estimates, await measureThroughput(d, stepper), available)) {
    console.error(line);
  }
  const peak = Math.max(...estimates.map((e) => e.peakBytes));
  if (available !== undefined && peak > available && !yes) {
    throw new UsageError(
      `the largest run needs about ${(peak / 1e9).toFixed(1)} GB at its peak, but only ` +
        `${(available / 1e9).toFixed(1)} GB are available; lower train.micro_batch or the SAE ` +
        `width, use a machine with more memory, or pass --yes to try anyway`,
    );
  }
}

/** The `plan` command. */
export const planCommand: Command = {
  summary: "list an experiment manifest's runs and their status (done/failed/pending)",
  help: `Usage: deno task plan MANIFEST [--only KEY=VALUE] [--db PATH]

Checks the manifest exactly as run does, expands its matrix and lists every run: its id, its
status in the results database (done, failed, or pending), for a run submitted with --slurm its
Slurm state (queued or running, with its array job and index), and the values it varies.
Finished Slurm tasks' shards are merged first.

Options:
${COMMON_HELP}`,
  async run(args) {
    const { expansion, runs, statuses, db } = await loadGrid(args);
    const slurm = await runsInSlurm(db, expansion.manifest.name);
    const slurmText = (r: ExpandedRun) => {
      const held = slurm.get(r.id);
      return held ? `${describeSlurmState(held)}  ` : "";
    };
    const slurmWidth = Math.max(0, ...runs.map((r) => slurmText(r).length));
    console.log(`${expansion.manifest.name}: ${runs.length} runs`);
    for (const r of runs) {
      const s = statuses.get(r.id);
      const busy = s?.owner && await ownerAlive(s.owner);
      const status = s?.status === "done" || s?.status === "failed"
        ? s.status
        : busy
        ? "running"
        : "pending";
      console.log(
        `${r.id}  ${status.padEnd(7)}  ${slurmText(r).padEnd(slurmWidth)}${describeRun(r)}` +
          `${s?.error ? `  (${s.error})` : ""}`,
      );
    }
    return 0;
  },
};

/** The `runs` row of a run about to start. */
function runRecord(r: ExpandedRun, manifest: ExperimentManifest, backend: string): RunRecord {
  return {
    id: r.id,
    experiment: manifest.name,
    manifestPath: manifest.file,
    config: r.config,
    varied: r.varied,
    seed: r.seed,
    backend,
    versions: { deno: Deno.version.deno, tfjs: tf.version_core, scalarLab: denoConfig.version },
    startedAt: new Date(),
    wallSeconds: 0,
  };
}

/** What {@link runPending} needs besides the runs. */
interface GridOptions {
  manifest: ExperimentManifest;
  db: string;
  /** The backend's description, as the `runs` rows record it. */
  backend: string;
  values: { force?: boolean; verbose?: boolean; "fail-fast"?: boolean };
}

/**
 * Runs the pending runs of a grid one after the other, each claimed first (see `run_claimed.ts`);
 * Ctrl-C, or this process losing its parent, stops at the current run's next safe point.
 *
 * @returns The exit code: 0, 1 when a run failed, 130 when interrupted.
 */
async function runPending(pending: ExpandedRun[], o: GridOptions): Promise<number> {
  const { manifest, values } = o;
  const abort = new AbortController();
  const onInterrupt = () => {
    if (abort.signal.aborted) Deno.exit(130);
    console.error(
      "\ninterrupt: stopping the current run at its next safe point, resumable (Ctrl-C again " +
        "to quit now)",
    );
    abort.abort();
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  const stopWatching = watchParent(onInterrupt);
  await removeAbandonedFills(CACHE_ROOT, (line) => console.error(line));
  const store = new StoreAccess(o.db, (line) => console.error(line));
  const owner = await currentOwner();
  const began = performance.now();
  const summary: string[] = [];
  const live = new LiveLog({ verbose: values.verbose });
  let failed = 0;
  try {
    for (const [i, r] of pending.entries()) {
      const done = performance.now() - began;
      const eta = i === 0 ? "?" : formatDuration((done / i) * (pending.length - i) / 1000);
      live.label = `[run ${i + 1}/${pending.length} ${r.config.sae.arch}]`;
      live.status(`${r.id}: ${describeRun(r)}; grid ETA ${eta}`);
      const record = runRecord(r, manifest, o.backend);
      const outcome = await runClaimed(r, record, {
        store,
        owner,
        force: values.force ?? false,
        runsRoot: RUNS_ROOT,
        cacheRoot: CACHE_ROOT,
        signal: abort.signal,
        log: (line) => live.status(line),
      }).catch((e) => {
        if (!(e instanceof StoreError)) throw e;
        live.clear();
        throw new StoreError(
          `${e.message}\nRun ${r.id} is not stored; what it finished is kept in ` +
            `${RUNS_ROOT}/${r.id}/ (${RESULT_FILE} once it finished), and running the grid ` +
            `again imports it`,
        );
      });
      live.clear();
      if (outcome.kind === "interrupted") {
        console.error("interrupted: run the same command again to resume");
        return 130;
      }
      const line = describeOutcome(r, record, outcome);
      if (line === undefined) continue;
      summary.push(line);
      live.result(line);
      if (outcome.kind === "failed") {
        failed++;
        if (values["fail-fast"]) break;
      }
      if (abort.signal.aborted) {
        console.error("interrupted: run the same command again to run the rest");
        return 130;
      }
    }
  } finally {
    stopWatching();
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
  console.error(`${summary.length - failed} done, ${failed} failed`);
  if (summary.length > failed) await printJobReport(manifest, o.db);
  return failed ? 1 : 0;
}

/**
 * Prints what became of a run where a line of its own says it (a skip, a failure), and returns
 * its summary line (none for a skipped run).
 */
function describeOutcome(
  r: ExpandedRun,
  record: RunRecord,
  outcome: Exclude<RunOutcome, { kind: "interrupted" }>,
): string | undefined {
  if (outcome.kind === "skipped") {
    console.error(`run ${r.id} skipped: ${outcome.why}`);
    return undefined;
  }
  if (outcome.kind === "done") {
    return `${r.id}  done    ${describeRun(r)}  ` +
      describeResult(record.wallSeconds, outcome.result);
  }
  console.error(
    `run ${r.id} failed: ${outcome.message}` +
      (outcome.kept ? "\n(its earlier results stay stored)" : ""),
  );
  return `${r.id}  failed  ${describeRun(r)}  ${outcome.message.split("\n")[0]}`;
}

/** The `run` command. */
export const runCommand: Command = {
  summary: "run an experiment manifest's pending runs and store every result",
  help:
    `Usage: deno task run MANIFEST [--backend NAME] [--force] [--fail-fast] [--yes] [--only KEY=VALUE] [--db PATH]
       deno task run MANIFEST --slurm [--partition P] [--time T] [--gpus-per-task N]
                     [--cpus-per-task N] [--mem M] [--max-parallel N] [--sbatch-arg ARG]...

Expands the manifest's matrix and runs every run that is not done yet: trains the SAEs (sharing
the model's activation cache between runs), evaluates them, measures SCALAR, and stores all of it
in the results database in one transaction per run. A run's id is a hash of its resolved config,
so running the manifest again skips finished runs; an interrupted run resumes from its
checkpoint. A failed run records its error and the grid goes on. Before it starts, it prints
the grid's estimated peak memory and time on the chosen backend, and refuses a grid whose memory
cannot fit. It ends with the report's improvement table and writes the HTML report.

Options:
  --backend NAME   auto | tensorflow | webgpu | wasm | cpu (default: $SCALAR_BACKEND, then the
                   manifest's backend)
  --force          run done runs again
  --fail-fast      stop at the first failed run
  --yes            run even when the estimated memory exceeds what is available
  --verbose        print every progress line (each ablation-curve point too) instead of one
                   status line redrawn in place (a line every 30 s when piped)
  --run-id ID      only this run (repeatable); what a Slurm array task runs
  --prepare        only the work the runs share (tokens, activation caches), no training and no
                   database: what a Slurm grid's first job does
${SLURM_RUN_HELP}
${COMMON_HELP}`,
  async run(args) {
    const { values, expansion, runs, db, statuses } = await loadGrid(args);
    const { manifest } = expansion;
    checkSlurmOptions(values);
    if (values.prepare) {
      const backend = await selectBackend(backendChoiceFrom(values.backend, manifest.backend));
      console.error(describeBackend(backend));
      const log = (line: string) => console.error(`  ${line}`);
      const n = await prepareRuns(runs.map((r) => r.config), { cacheRoot: CACHE_ROOT, log });
      console.error(`${manifest.name}: prepared what ${runs.length} runs share (${n} distinct)`);
      return 0;
    }
    // The experiment's grid is what the manifest says now: one run may serve several manifests.
    await withStore(db, (s) =>
      linkGrid(
        s,
        manifest.name,
        expansion.runs.map((r) => ({ id: r.id, manifestPath: manifest.file, varied: r.varied })),
      ));
    // A run Slurm holds is at work there, in the same run folder: leave it to Slurm.
    const held = values.slurm ? new Map() : await runsInSlurm(db, manifest.name);
    const pending = runs.filter((r) =>
      (values.force || statuses.get(r.id)?.status !== "done") && !held.has(r.id)
    );
    console.error(
      `${manifest.name}: ${runs.length} runs, ${pending.length} to run` +
        (held.size > 0
          ? ` (${runs.filter((r) => held.has(r.id)).length} queued or running in Slurm)`
          : ""),
    );
    if (pending.length === 0) return 0;
    if (values.slurm) {
      return await submitGrid({ values, manifest, runs: pending, db, backend: values.backend });
    }
    const backend = await selectBackend(backendChoiceFrom(values.backend, manifest.backend));
    console.error(describeBackend(backend));
    await checkCost(pending.map((r) => r.config), backend.name, values.yes ?? false);

    return await runPending(pending, { manifest, db, backend: backend.detail, values });
  },
};

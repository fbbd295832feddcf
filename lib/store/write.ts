/**
 * Writing runs into the results store. Every write of a run is one transaction that first deletes
 * whatever rows the run's id had, so a run is stored whole or not at all: a process killed
 * mid-write leaves the previous state of that run (or nothing), never a mixture.
 *
 * @module
 */
import {
  BIGINT,
  DOUBLE,
  type DuckDBType,
  type DuckDBValue,
  INTEGER,
  LIST,
  listValue,
  VARCHAR,
} from "@duckdb/node-api";
import { type MatrixValue, matrixValueText } from "../experiment/matrix.ts";
import type { SaeRunResult } from "../experiment/sae_run.ts";
import { inTransaction, snakeCaseKeys, type Store, StoreError } from "./db.ts";

/** The tables that hold a run's rows, in the order {@link storeRun} writes them. */
export const RUN_TABLES = [
  "runs",
  "run_params",
  "metrics",
  "scalar_curves",
  "scalar_scores",
  "train_log",
] as const;

/** One of {@link RUN_TABLES}. */
export type RunTable = typeof RUN_TABLES[number];

/** What identifies and describes a run (everything of the `runs` row except its outcome). */
export interface RunRecord {
  /** The run id: a hash of what the run computes (config, weights, data). */
  id: string;
  /** The manifest's `name`. */
  experiment: string;
  /** The manifest file, as given. */
  manifestPath: string;
  /** The fully resolved config (stored as JSON with snake_case keys). */
  config: unknown;
  /** The run's matrix parameters, by dotted path (stored as JSON and in `run_params`). */
  varied: Readonly<Record<string, MatrixValue>>;
  /** The run's seed. */
  seed: number;
  /** The backend that ran it. */
  backend: string;
  /** Software versions, by name. */
  versions: Readonly<Record<string, string>>;
  /** When the run started. */
  startedAt: Date;
  /** Wall-clock seconds the run took. */
  wallSeconds: number;
  /** When it ended. @default the time of the write */
  finishedAt?: Date;
}

/** A finished run's results. */
export type RunResult = SaeRunResult;

/** A failed run: its error message. */
export interface RunFailure {
  /** What went wrong (stored in `runs.error`). */
  error: string;
}

/** Options of {@link storeRun}. */
export interface StoreRunOptions {
  /**
   * Called inside the transaction after each table's rows are inserted (progress; tests use it to
   * fail or stop the write midway). A throw rolls the whole write back.
   */
  afterInsert?: (table: RunTable) => void | Promise<void>;
}

/** Rows written per table. */
export type RowCounts = Record<RunTable, number>;

/**
 * The name a pair goes by in `metrics.sae`, `scalar_curves.pair` and `scalar_scores.pair`.
 *
 * @param up The upstream hook.
 * @param down The downstream hook.
 * @returns `up→down`.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { pairName } from "./write.ts";
 * equal(pairName("blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"),
 *   "blocks.0.hook_mlp_in→blocks.0.hook_mlp_out");
 * ```
 */
export function pairName(up: string, down: string): string {
  return `${up}→${down}`;
}

/** Rows of a table, as parameter values in column order. */
interface Rows {
  table: RunTable;
  columns: readonly string[];
  types: readonly DuckDBType[];
  rows: DuckDBValue[][];
}

/** Parameters per multi-row insert: large enough to be fast, small enough to bind quickly. */
const MAX_PARAMS = 2000;

/**
 * Inserts rows with multi-row parameterised inserts (single-row inserts cost ~1 ms each). The
 * table and column names are this module's constants, never input.
 */
async function insertRows(store: Store, r: Rows): Promise<void> {
  const width = r.columns.length;
  const perStatement = Math.max(1, Math.floor(MAX_PARAMS / width));
  for (let at = 0; at < r.rows.length; at += perStatement) {
    const chunk = r.rows.slice(at, at + perStatement);
    const tuples = chunk.map((_, i) =>
      `(${r.columns.map((_, j) => `$${i * width + j + 1}`).join(", ")})`
    );
    await store.connection.run(
      `insert into ${r.table} (${r.columns.join(", ")}) values ${tuples.join(", ")}`,
      chunk.flat(),
      chunk.flatMap(() => [...r.types]),
    );
  }
}

/** The numeric fields of a record as (name, value) pairs. */
function numericEntries(record: object): [string, number][] {
  return Object.entries(record).filter((e): e is [string, number] => typeof e[1] === "number");
}

function metricRows(runId: string, result: SaeRunResult): DuckDBValue[][] {
  const rows: DuckDBValue[][] = [];
  const add = (sae: string, metric: string, value: number) =>
    rows.push([runId, sae, metric, value]);
  for (const [hook, m] of Object.entries(result.metrics.saes)) {
    for (const [k, v] of numericEntries(m)) add(hook, k, v);
  }
  for (const [hook, loss] of Object.entries(result.training.losses)) add(hook, "train_loss", loss);
  for (const [k, v] of numericEntries(result.metrics.run)) add("run", k, v);
  add("run", "train_steps", result.training.steps);
  add("run", "train_seconds", result.training.seconds);
  add("run", "train_tokens_per_second", result.training.tokensPerSecond);
  for (const p of result.pairs) {
    const pair = pairName(p.up, p.down);
    add(pair, "e_tot", p.eTot);
    add(pair, "attribution_tokens", p.attribution.tokens);
    add(pair, "attribution_zero_fraction", p.attribution.zeroFraction);
    add(pair, "attribution_seconds", p.attribution.seconds);
    for (const [k, v] of Object.entries(p.diagnostics ?? {})) add(pair, k, v);
  }
  return rows;
}

/** All rows of a run's results, table by table. */
function resultRows(runId: string, result: RunResult): Rows[] {
  const curves: DuckDBValue[][] = [], scores: DuckDBValue[][] = [];
  for (const p of result.pairs) {
    const pair = pairName(p.up, p.down);
    for (const c of p.curve) {
      curves.push([
        runId,
        pair,
        p.layer,
        c.n,
        c.klModel,
        c.klModelLow,
        c.klModelHigh,
        c.klFull,
        c.klFullLow,
        c.klFullHigh,
      ]);
    }
    for (const curve of ["model", "full"] as const) {
      const s = p.scores[curve];
      scores.push([
        runId,
        pair,
        p.layer,
        p.eTot,
        curve,
        s.absolute,
        s.absoluteLow,
        s.absoluteHigh,
        s.relative,
        s.relativeLow,
        s.relativeHigh,
        s.logAxis,
        s.logAxisLow,
        s.logAxisHigh,
        p.scores.nRange[0],
        p.scores.nRange[1],
      ]);
    }
  }
  const d = DOUBLE;
  return [
    {
      table: "metrics",
      columns: ["run_id", "sae", "metric", "value"],
      types: [VARCHAR, VARCHAR, VARCHAR, d],
      rows: metricRows(runId, result),
    },
    {
      table: "scalar_curves",
      columns: [
        "run_id",
        "pair",
        "layer",
        "n_edges",
        "kl_model",
        "kl_model_low",
        "kl_model_high",
        "kl_full_circuit",
        "kl_full_low",
        "kl_full_high",
      ],
      types: [VARCHAR, VARCHAR, INTEGER, BIGINT, d, d, d, d, d, d],
      rows: curves,
    },
    {
      table: "scalar_scores",
      columns: [
        "run_id",
        "pair",
        "layer",
        "e_tot",
        "curve",
        "absolute",
        "absolute_low",
        "absolute_high",
        "relative",
        "relative_low",
        "relative_high",
        "log_axis",
        "log_axis_low",
        "log_axis_high",
        "n_min",
        "n_max",
      ],
      types: [
        VARCHAR,
        VARCHAR,
        INTEGER,
        BIGINT,
        VARCHAR,
        d,
        d,
        d,
        d,
        d,
        d,
        d,
        d,
        d,
        BIGINT,
        BIGINT,
      ],
      rows: scores,
    },
    {
      table: "train_log",
      columns: ["run_id", "step", "sae", "loss", "l0"],
      types: [VARCHAR, INTEGER, VARCHAR, d, d],
      rows: (result.trainLog ?? []).map((e) => [runId, e.step, e.sae, e.loss, e.l0 ?? null]),
    },
  ];
}

function checkWritable(store: Store, run: RunRecord, action: string): void {
  if (store.readOnly) {
    throw new StoreError(
      `Cannot ${action} run "${run.id}": the results database "${store.path}" is open read-only`,
    );
  }
  if (typeof run.id !== "string" || run.id === "" || !Number.isInteger(run.seed)) {
    throw new StoreError(
      `Cannot ${action} run "${run.id}": need a non-empty id and an integer seed, got seed ` +
        `${run.seed}`,
    );
  }
}

/**
 * Deletes every row of a run, in every run table (its experiment links stay).
 *
 * @param store A store open for writing.
 * @param id The run.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { deleteRun, runStatuses, storeRun } from "./write.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 1,
 * };
 * await storeRun(store, run, { error: "diverged" });
 * await deleteRun(store, "r1");
 * equal((await runStatuses(store, ["r1"])).size, 0);
 * store.close();
 * ```
 */
export async function deleteRun(store: Store, id: string): Promise<void> {
  for (const table of RUN_TABLES) {
    await store.connection.run(
      `delete from ${table} where ${table === "runs" ? "id" : "run_id"} = $1`,
      [id],
      [VARCHAR],
    );
  }
}

/**
 * Records that a run belongs to an experiment's grid (`experiment_runs`), with the values its
 * matrix gave it there; one run can belong to several experiments.
 *
 * @param store A store open for writing.
 * @param run The run, with the experiment it is linked to.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { linkExperiment } from "./write.ts";
 * const store = await openStore(":memory:");
 * const run = { id: "r1", experiment: "a", manifestPath: "a.yaml", varied: {} };
 * await linkExperiment(store, run);
 * await linkExperiment(store, { ...run, experiment: "b" });
 * const sql = "select count(*) from experiment_runs";
 * equal(Number((await store.connection.runAndReadAll(sql)).getRowsJS()[0]![0]), 2);
 * store.close();
 * ```
 */
export async function linkExperiment(
  store: Store,
  run: Pick<RunRecord, "id" | "experiment" | "manifestPath" | "varied">,
): Promise<void> {
  await store.connection.run(
    `insert or replace into experiment_runs (experiment, run_id, manifest_path, varied)
     values ($1, $2, $3, $4)`,
    [run.experiment, run.id, run.manifestPath, JSON.stringify(run.varied)],
    [VARCHAR, VARCHAR, VARCHAR, VARCHAR],
  );
}

/**
 * Makes an experiment's links (`experiment_runs`) its grid as it is now: links every run of the
 * grid and unlinks runs it no longer has (weights replaced, a matrix changed), whose rows stay
 * in `runs` for SQL but leave the experiment's report. One transaction.
 *
 * @param store A store open for writing.
 * @param experiment The experiment.
 * @param runs Every run of its grid, with its manifest path and matrix values.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { linkGrid } from "./write.ts";
 * const store = await openStore(":memory:");
 * const run = (id: string) => ({ id, manifestPath: "a.yaml", varied: {} });
 * await linkGrid(store, "a", [run("r1"), run("r2")]);
 * await linkGrid(store, "a", [run("r2"), run("r3")]);
 * const sql = "select run_id from experiment_runs order by 1";
 * deepEqual((await store.connection.runAndReadAll(sql)).getRowsJS(), [["r2"], ["r3"]]);
 * store.close();
 * ```
 */
export async function linkGrid(
  store: Store,
  experiment: string,
  runs: readonly Pick<RunRecord, "id" | "manifestPath" | "varied">[],
): Promise<void> {
  await inTransaction(store.connection, async () => {
    await store.connection.run(
      "delete from experiment_runs where experiment = $1 and not list_contains($2, run_id)",
      [experiment, listValue(runs.map((r) => r.id))],
      [VARCHAR, LIST(VARCHAR)],
    );
    for (const run of runs) await linkExperiment(store, { ...run, experiment });
  });
}

/** The owner columns of a `runs` row: who works on the run now (all null: nobody). */
export interface OwnerColumns {
  host: string;
  pid: number;
  startedAt: Date;
}

/**
 * Inserts the `runs` row of a run (with its owner, if any), its `run_params` rows and its link to
 * its experiment; the caller has deleted any earlier rows of the id, in the same transaction.
 *
 * @param store A store open for writing.
 * @param run The run.
 * @param status Its status.
 * @param error A failed run's error.
 * @param finishedAt When it ended (null: it has not).
 * @param wallSeconds Its wall-clock seconds (null: not finished).
 * @param owner The process working on it now (null: none).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { insertRunRow, runStatuses } from "./write.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: { x: 1 }, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 0,
 * };
 * await insertRunRow(store, run, "running", null, null, null);
 * equal((await runStatuses(store, ["r1"])).get("r1")?.status, "running");
 * store.close();
 * ```
 */
export async function insertRunRow(
  store: Store,
  run: RunRecord,
  status: "done" | "failed" | "running",
  error: string | null,
  finishedAt: Date | null,
  wallSeconds: number | null,
  owner: OwnerColumns | null = null,
): Promise<void> {
  await store.connection.run(
    `insert into runs (id, experiment, manifest_path, config, varied, seed, status, error, backend,
      versions, started_at, finished_at, wall_seconds, owner_host, owner_pid, owner_started_at,
      heartbeat_at)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, cast($11 as timestamptz),
      cast($12 as timestamptz), $13, $14, $15, cast($16 as timestamptz),
      if($14 is null, null, current_timestamp))`,
    [
      run.id,
      run.experiment,
      run.manifestPath,
      JSON.stringify(snakeCaseKeys(run.config)),
      JSON.stringify(run.varied),
      run.seed,
      status,
      error,
      run.backend,
      JSON.stringify(run.versions),
      run.startedAt.toISOString(),
      finishedAt?.toISOString() ?? null,
      wallSeconds,
      owner?.host ?? null,
      owner?.pid ?? null,
      owner?.startedAt.toISOString() ?? null,
    ],
    [
      VARCHAR,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      INTEGER,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      VARCHAR,
      DOUBLE,
      VARCHAR,
      INTEGER,
      VARCHAR,
    ],
  );
  await insertRows(store, paramRows(run));
  await linkExperiment(store, run);
}

/** The `run_params` rows of a run. */
function paramRows(run: RunRecord): Rows {
  return {
    table: "run_params",
    columns: ["run_id", "path", "value"],
    types: [VARCHAR, VARCHAR, VARCHAR],
    rows: Object.entries(run.varied).map(([path, value]) => [run.id, path, matrixValueText(value)]),
  };
}

/**
 * Stores one run and its results (or its failure) in ONE transaction: deletes every earlier row of
 * the run's id, inserts the `runs` row, its `run_params`, and for a finished run its metrics,
 * SCALAR curves and scores and training log, then commits. If anything fails, or the process dies,
 * before the commit, the database keeps exactly what it held before. NaN and ±Infinity values are
 * stored as they are (DuckDB DOUBLE holds them).
 *
 * @param store A store open for writing.
 * @param run The run's identity and description.
 * @param outcome The run's results, or `{ error }` for a failed run (stored with status `failed`
 * and no result rows).
 * @param options A hook called after each table's insert.
 * @returns The number of rows written per table.
 * @throws {StoreError} If the store is read-only or the record lacks an id or integer seed.
 * @throws DuckDB's error if an insert fails (e.g. two curve points with the same edge count),
 * after rolling back.
 *
 * @example A failed run
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { storeRun } from "./write.ts";
 * const store = await openStore(":memory:");
 * try {
 *   const run = {
 *     id: "r1", experiment: "demo", manifestPath: "demo.yaml", config: {}, varied: {}, seed: 0,
 *     backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 1,
 *   };
 *   const counts = await storeRun(store, run, { error: "diverged at step 3" });
 *   equal(counts.runs, 1);
 * } finally {
 *   store.close();
 * }
 * ```
 */
export async function storeRun(
  store: Store,
  run: RunRecord,
  outcome: RunResult | RunFailure,
  options: StoreRunOptions = {},
): Promise<RowCounts> {
  checkWritable(store, run, "store");
  const failed = "error" in outcome;
  // Built before the transaction opens: malformed results fail here, with nothing begun.
  const results = failed ? [] : resultRows(run.id, outcome);
  const counts: RowCounts = {
    runs: 1,
    run_params: Object.keys(run.varied).length,
    metrics: 0,
    scalar_curves: 0,
    scalar_scores: 0,
    train_log: 0,
  };
  for (const r of results) counts[r.table] = r.rows.length;
  await inTransaction(store.connection, async () => {
    await deleteRun(store, run.id);
    await insertRunRow(
      store,
      run,
      failed ? "failed" : "done",
      failed ? outcome.error : null,
      run.finishedAt ?? new Date(),
      run.wallSeconds,
    );
    if (!failed) {
      await store.connection.run(
        "update runs set stepper = $2 where id = $1",
        [run.id, outcome.training.stepper ?? null],
        [VARCHAR, VARCHAR],
      );
    }
    await options.afterInsert?.("runs");
    await options.afterInsert?.("run_params");
    for (const r of results) {
      await insertRows(store, r);
      await options.afterInsert?.(r.table);
    }
  });
  return counts;
}

/** A run's recorded state, as {@link runStatuses} returns it. */
export interface RunStatus {
  /** `done`, `failed` or `running`. */
  status: "done" | "failed" | "running";
  /** The error of a failed run. */
  error: string | null;
  /** The process working on it now, if any (it may be gone: see `claims.ts`). */
  owner: (OwnerColumns & { heartbeatAt: Date }) | null;
}

/**
 * The recorded state of some runs, whichever experiment ran them (runs absent from the map are
 * pending).
 *
 * @param store An open store.
 * @param ids The runs.
 * @returns Run id → status, error and owner.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { runStatuses, storeRun } from "./write.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 1,
 * };
 * await storeRun(store, run, { error: "diverged" });
 * equal((await runStatuses(store, ["r1", "r2"])).get("r1")?.status, "failed");
 * store.close();
 * ```
 */
export async function runStatuses(
  store: Store,
  ids: readonly string[],
): Promise<Map<string, RunStatus>> {
  const reader = await store.connection.runAndReadAll(
    `select id, status, error, owner_host, owner_pid, owner_started_at, heartbeat_at from runs
     where list_contains($1, id) order by id`,
    [listValue([...ids])],
    [LIST(VARCHAR)],
  );
  return new Map(
    reader.getRowsJS().map(([id, status, error, host, pid, started, heartbeat]) => [
      id as string,
      {
        status: status as RunStatus["status"],
        error: error as string | null,
        owner: host === null ? null : {
          host: host as string,
          pid: Number(pid),
          startedAt: timestamp(started),
          heartbeatAt: timestamp(heartbeat),
        },
      },
    ]),
  );
}

/** A DuckDB timestamp value (a `DuckDBTimestampTZValue` in JS form) as a Date. */
function timestamp(value: unknown): Date {
  return value instanceof Date ? value : new Date(String(value));
}

/**
 * The results store: one DuckDB file (by default `results/scalar.duckdb`) holding every run of
 * every experiment, its metrics, SCALAR curves and scores, and training log, in long-form tables
 * that plain SQL can pivot. {@link openStore} creates the file and brings its schema up to date by
 * numbered migrations; {@link TABLE_DOCS} documents every column (and {@link schemaMarkdown} prints
 * that documentation for the README).
 *
 * DuckDB lets one process write a file and refuses every other process, readers included, while it
 * is open for writing; so writers should hold the store only as long as a write takes.
 *
 * @module
 */
import { dirname } from "node:path";
import { type DuckDBConnection, DuckDBInstance, VARCHAR } from "@duckdb/node-api";

/** Thrown for every store problem that a user can act on: the message is the whole story. */
export class StoreError extends Error {
  override name = "StoreError";
}

/** One step of a migration: a SQL statement, or work SQL cannot express (run in its transaction). */
export type MigrationStep = string | ((connection: DuckDBConnection) => Promise<void>);

/**
 * The spelling of config keys in the store: snake_case, as the manifest writes them, so that
 * `config->>'$.scalar.ig_steps'` finds what the manifest's `scalar.ig_steps` set.
 *
 * @param value A config as the program holds it (camelCase keys at any depth).
 * @returns The same data with every object key in snake_case.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { snakeCaseKeys } from "./db.ts";
 * deepEqual(snakeCaseKeys({ scalar: { igSteps: 5 }, layers: [1] }), {
 *   scalar: { ig_steps: 5 },
 *   layers: [1],
 * });
 * ```
 */
export function snakeCaseKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(snakeCaseKeys);
  if (value === null || typeof value !== "object") return value;
  return Object.fromEntries(
    Object.entries(value).map((
      [k, v],
    ) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), snakeCaseKeys(v)]),
  );
}

/** Rewrites every stored `runs.config` with snake_case keys (configs were camelCase up to v1). */
async function snakeCaseConfigs(connection: DuckDBConnection): Promise<void> {
  const rows = (await connection.runAndReadAll("select id, config from runs")).getRowsJS();
  for (const [id, config] of rows) {
    await connection.run(
      "update runs set config = $1 where id = $2",
      [JSON.stringify(snakeCaseKeys(JSON.parse(String(config)))), String(id)],
      [VARCHAR, VARCHAR],
    );
  }
}

/**
 * The schema, one entry per version: entry i holds the steps that take a database from version i
 * to version i + 1. Entries are frozen once released; a change appends an entry.
 */
export const MIGRATIONS: readonly (readonly MigrationStep[])[] = Object.freeze([
  [
    `create table runs (
      id varchar primary key,
      experiment varchar not null,
      manifest_path varchar,
      config json not null,
      varied json not null,
      seed integer not null,
      status varchar not null check (status in ('done', 'failed', 'running')),
      error varchar,
      backend varchar,
      versions json,
      started_at timestamptz,
      finished_at timestamptz,
      wall_seconds double
    )`,
    `create table run_params (
      run_id varchar not null,
      path varchar not null,
      value varchar,
      primary key (run_id, path)
    )`,
    `create table metrics (
      run_id varchar not null,
      sae varchar not null,
      metric varchar not null,
      value double,
      primary key (run_id, sae, metric)
    )`,
    `create table scalar_curves (
      run_id varchar not null,
      pair varchar not null,
      layer integer not null,
      n_edges bigint not null,
      kl_model double,
      kl_model_low double,
      kl_model_high double,
      kl_full_circuit double,
      kl_full_low double,
      kl_full_high double,
      primary key (run_id, pair, n_edges)
    )`,
    `create table scalar_scores (
      run_id varchar not null,
      pair varchar not null,
      layer integer not null,
      e_tot bigint not null,
      curve varchar not null check (curve in ('model', 'full')),
      absolute double,
      absolute_low double,
      absolute_high double,
      relative double,
      relative_low double,
      relative_high double,
      log_axis double,
      log_axis_low double,
      log_axis_high double,
      n_min bigint,
      n_max bigint,
      primary key (run_id, pair, curve)
    )`,
    `create table train_log (
      run_id varchar not null,
      step integer not null,
      sae varchar not null,
      loss double,
      l0 double,
      primary key (run_id, step, sae)
    )`,
  ],
  // v2: runs are claimed by one process, experiments refer to runs, configs are snake_case.
  [
    "alter table runs add column owner_host varchar",
    "alter table runs add column owner_pid integer",
    "alter table runs add column owner_started_at timestamptz",
    "alter table runs add column heartbeat_at timestamptz",
    `create table experiment_runs (
      experiment varchar not null,
      run_id varchar not null,
      manifest_path varchar,
      varied json,
      primary key (experiment, run_id)
    )`,
    `insert into experiment_runs select experiment, id, manifest_path, varied from runs`,
    snakeCaseConfigs,
  ],
  // v3: which SAE stepper trained a run (issue 14).
  ["alter table runs add column stepper varchar"],
]);

/** The schema version this program writes and reads: the number of {@link MIGRATIONS}. */
export const SCHEMA_VERSION: number = MIGRATIONS.length;

/** Documentation of one table: what a row is, and each column in schema order. */
export interface TableDoc {
  /** What one row holds. */
  doc: string;
  /** Column name → meaning, in the table's column order. */
  columns: Readonly<Record<string, string>>;
}

/**
 * Every table and column of the current schema, documented (a test keeps this in step with the
 * database). Every table but `runs` refers to a run by `run_id` = `runs.id`; there are no foreign
 * keys, because a run's rows are replaced as a whole inside one transaction.
 */
export const TABLE_DOCS: Readonly<Record<string, TableDoc>> = Object.freeze({
  runs: {
    doc: "One row per run of an experiment's grid (one configuration and seed).",
    columns: {
      id: "Hash of what the run computes: the resolved config, the sha256 of the model's " +
        "weights and of the data (no paths), so the same work always gets the same id.",
      experiment: "The `name` of the manifest that first ran it (`experiment_runs` lists every " +
        "experiment a run belongs to).",
      manifest_path: "The manifest file the run first came from, as given on the command line.",
      config: "The fully resolved run config (JSON, snake_case keys as in the manifest), e.g. " +
        "`config->>'$.sae.arch'`, `config->>'$.scalar.ig_steps'`.",
      varied: "The matrix parameters of this run as a JSON object {dotted path: value}; the same " +
        "values in long form are in `run_params`.",
      seed: "The run's seed (SAE initialisation and every random choice of the run).",
      status: "`done`, `failed` (see `error`), or `running` (started and not finished; with " +
        "no owner, or an owner that is gone, an interrupted run: pending again).",
      error: "The error message of a failed run, else NULL.",
      backend: "The TensorFlow.js backend that ran it (`tensorflow`, `webgpu`, `cpu`…).",
      versions: "Versions of the software that ran it (JSON {name: version}).",
      started_at: "When the run started.",
      finished_at: "When it finished or failed (NULL while running).",
      wall_seconds: "Wall-clock seconds the run took (all stages).",
      owner_host: "The host of the process working on the run now (NULL when none is).",
      owner_pid: "That process's PID.",
      owner_started_at: "When that process started (tells a live owner from a reused PID).",
      heartbeat_at: "When the owner last said it is alive (it does every minute).",
      stepper: "The SAE stepper that trained it: `tfjs` (the reference), `cpu` or `webgpu` (the " +
        "engines; same numbers to f32 rounding); NULL for failed runs and runs stored before.",
    },
  },
  experiment_runs: {
    doc: "Which runs make up each experiment's grid: one run can serve several manifests.",
    columns: {
      experiment: "The manifest's `name`.",
      run_id: "The run (`runs.id`).",
      manifest_path: "The manifest file, as given on the command line.",
      varied: "The matrix parameters of this run in this experiment (JSON {dotted path: value}).",
    },
  },
  run_params: {
    doc: "The varied parameters of each run, one row per parameter, for pivoting " +
      "(`pivot run_params on path using first(value)`).",
    columns: {
      run_id: "The run (`runs.id`).",
      path: "The parameter's dotted path in the manifest, e.g. `sae.arch`, `sae.jsae.lambda`.",
      value: "Its value as text: a string as is, anything else as JSON (`0.001`, `true`).",
    },
  },
  metrics: {
    doc: "Every scalar result of a run in long form: one row per (run, SAE or pair or `run`, " +
      "metric).",
    columns: {
      run_id: "The run (`runs.id`).",
      sae: "What the value describes: an SAE by its hook name (`blocks.0.hook_mlp_in`), a pair " +
        "as `up→down`, or `run` for the whole run.",
      metric: "Per SAE: `mse`, `fvu`, `explained_variance`, `l0`, `dead_fraction`, `l2_ratio`, " +
        "`tokens`, `ce_loss_*`, `kl_div_*` (defined in `lib/sae/metrics.ts`) and `train_loss` " +
        "(final training loss); per pair: `e_tot`, `attribution_tokens`, " +
        "`attribution_zero_fraction`, `attribution_seconds`; per run: `ce_loss_clean`, " +
        "`ce_loss_all_saes`, `ce_loss_all_increase`, `kl_div_all_saes`, `sequences`, `tokens`, " +
        "`train_steps`, `train_seconds`, `train_tokens_per_second`.",
      value: "The value; NaN and ±Infinity are stored as such (DuckDB DOUBLE holds them; " +
        "`isnan(value)`, `isinf(value)` find them).",
    },
  },
  scalar_curves: {
    doc: "The ablation curve of every SAE pair: one row per edge count.",
    columns: {
      run_id: "The run (`runs.id`).",
      pair: "The pair as `up→down` (hook names).",
      layer: "The layer the pair spans.",
      n_edges: "Edges kept, n.",
      kl_model: "Mean KL(p_model ‖ p_n) over the prompt tokens (nats).",
      kl_model_low: "Lower end of its 95% bootstrap CI.",
      kl_model_high: "Upper end of its 95% bootstrap CI.",
      kl_full_circuit: "Mean KL(p_full circuit ‖ p_n): against both SAEs spliced (paper App. H).",
      kl_full_low: "Lower end of its 95% bootstrap CI.",
      kl_full_high: "Upper end of its 95% bootstrap CI.",
    },
  },
  scalar_scores: {
    doc: "SCALAR of every pair, for each curve: the areas under it (lower = sparser).",
    columns: {
      run_id: "The run (`runs.id`).",
      pair: "The pair as `up→down`.",
      layer: "The layer the pair spans.",
      e_tot: "The pair's edge count F_up · F_down.",
      curve: "`model` (KL against the model: the paper's SCALAR) or `full` (against the full " +
        "circuit).",
      absolute: "Absolute SCALAR: trapezoid area of KL over n (linear axis), KL × edges.",
      absolute_low: "The same area of the CI's lower bounds.",
      absolute_high: "The same area of the CI's upper bounds.",
      relative: "Relative SCALAR: absolute × 2^18 / e_tot.",
      relative_low: "absolute_low × 2^18 / e_tot.",
      relative_high: "absolute_high × 2^18 / e_tot.",
      log_axis: "Not in the paper: the area of KL over log2 n (KL × octaves).",
      log_axis_low: "The log-axis area of the CI's lower bounds.",
      log_axis_high: "The log-axis area of the CI's upper bounds.",
      n_min: "The curve's first edge count.",
      n_max: "The curve's last edge count.",
    },
  },
  train_log: {
    doc: "SAE training progress at each report step, per SAE.",
    columns: {
      run_id: "The run (`runs.id`).",
      step: "The training step.",
      sae: "The SAE by its hook name.",
      loss: "Its training loss at that step.",
      l0: "Its mean number of active features per token at that step (NULL if not logged).",
    },
  },
});

/**
 * The schema documentation as markdown: a section per table with a column table.
 *
 * @returns Markdown text.
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { schemaMarkdown } from "./db.ts";
 * ok(schemaMarkdown().includes("| `wall_seconds` |"));
 * ```
 */
export function schemaMarkdown(): string {
  const parts: string[] = [];
  for (const [table, t] of Object.entries(TABLE_DOCS)) {
    parts.push(`### \`${table}\`\n\n${t.doc}\n\n| column | meaning |\n| --- | --- |`);
    for (const [column, doc] of Object.entries(t.columns)) {
      parts.push(`| \`${column}\` | ${doc.replaceAll("|", "\\|")} |`);
    }
    parts.push("");
  }
  return parts.join("\n");
}

/** An open results store. Close it with {@link Store.close} (in a `finally`). */
export interface Store {
  /** The database file (or `:memory:`). */
  readonly path: string;
  /** Whether it was opened read-only (no schema changes, no writes). */
  readonly readOnly: boolean;
  /** The connection every store function uses. */
  readonly connection: DuckDBConnection;
  /** Closes the connection and the database (idempotent). */
  close(): void;
}

/** Options of {@link openStore}. */
export interface OpenStoreOptions {
  /**
   * Open read-only: the file must exist, nothing is written, and other read-only processes may
   * read at the same time. @default false
   */
  readOnly?: boolean;
  /**
   * Sandbox the connection for SQL a user wrote: no file reads or writes but the database itself,
   * no ATTACH, INSTALL, LOAD or EXPORT, and the configuration locked so SQL cannot undo that.
   * @default false
   */
  sandboxed?: boolean;
  /**
   * How long to keep retrying while another process holds the file's lock, in milliseconds: a
   * reader waits for a writer's short write; a writer with a finished run's result waits long.
   * @default 5000
   */
  lockWaitMs?: number;
  /** Told once, when the file is held by another process and the wait begins. */
  onWait?: (message: string) => void;
}

/** The first and the longest pause between attempts to take a held file. */
const LOCK_RETRY_MS = [100, 5000] as const;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The process DuckDB names as holding a file's lock, as "PID n (its command line)". */
async function describeHolder(message: string): Promise<string> {
  const pid = /\(PID (\d+)\)/.exec(message)?.[1];
  if (pid === undefined) return "another process";
  const command = await Deno.readTextFile(`/proc/${pid}/cmdline`).then(
    // File names without their folders: short enough to read, still saying what runs.
    (text) => text.split("\0").filter(Boolean).map((a) => a.replace(/^.*\//, "")).join(" "),
    () => "",
  );
  const short = command.length > 100 ? `${command.slice(0, 97)}...` : command;
  return `process ${pid}${short ? ` (${short})` : ""}`;
}

/**
 * A DuckDB failure as a {@link StoreError} naming the file and what to do, for the failures a user
 * meets (a damaged file, a full disk); anything else is returned as it is.
 *
 * @param path The database file.
 * @param e What DuckDB threw.
 * @returns The error to throw.
 *
 * @example
 * ```ts
 * import { match } from "node:assert/strict";
 * import { storeFailure } from "./db.ts";
 * const e = storeFailure("r.duckdb", new Error('IO Error: Could not read enough bytes from file'));
 * match(e.message, /^Cannot read results database "r.duckdb": it is damaged/);
 * ```
 */
export function storeFailure(path: string, e: unknown): Error {
  if (e instanceof StoreError || !(e instanceof Error)) return e as Error;
  const first = e.message.split("\n")[0];
  if (DISK_FULL.test(e.message)) {
    return new StoreError(
      `Cannot write results database "${path}": the disk is full (${first}); nothing was ` +
        `changed in it. Free some space and run the same command again`,
    );
  }
  if (DAMAGED.test(e.message)) {
    return new StoreError(
      `Cannot read results database "${path}": it is damaged (${first}); ${REPAIR}`,
    );
  }
  return e;
}

/** DuckDB's words for a full disk. */
const DISK_FULL = /No space left on device|disk is full|Disk quota/i;

/** DuckDB's words for a file that is not (or no longer) a whole database. */
const DAMAGED = /^(IO|Serialization|Corrupt\w*|FATAL|INTERNAL) Error|not a valid DuckDB|checksum/i;

/** What to do about a damaged results database. */
const REPAIR = "move it aside (or restore a backup) and run the grid again: the runs' folders " +
  "in results/runs are imported again, nothing is recomputed";

/** Opens the DuckDB instance, retrying with backoff while another process holds the file's lock. */
async function openInstance(path: string, options: OpenStoreOptions): Promise<DuckDBInstance> {
  const config: Record<string, string> = options.readOnly ? { access_mode: "READ_ONLY" } : {};
  if (options.sandboxed) {
    Object.assign(config, {
      enable_external_access: "false",
      autoinstall_known_extensions: "false",
      autoload_known_extensions: "false",
      lock_configuration: "true",
    });
  }
  const lockWaitMs = options.lockWaitMs ?? 5000;
  const deadline = Date.now() + lockWaitMs;
  let pause: number = LOCK_RETRY_MS[0];
  let told = false;
  for (;;) {
    try {
      return await DuckDBInstance.create(path, config);
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (!message.includes("Could not set lock")) {
        const advice = DISK_FULL.test(message)
          ? "; free some space and try again"
          : DAMAGED.test(message)
          ? `; ${REPAIR}`
          : "";
        throw new StoreError(
          `Cannot open results database "${path}": ${message.split("\n")[0]}${advice}`,
        );
      }
      const holder = await describeHolder(message);
      if (Date.now() >= deadline) {
        throw new StoreError(
          `Cannot open results database "${path}": ${holder} has held it for more than ` +
            `${
              lockWaitMs < 10_000 ? (lockWaitMs / 1000).toFixed(1) : Math.round(lockWaitMs / 1000)
            } ` +
            `s; try again when it has finished (or end it)`,
        );
      }
      if (!told) {
        told = true;
        options.onWait?.(
          `results database "${path}" is held by ${holder}; waiting for it (up to ` +
            `${Math.round(lockWaitMs / 60_000)} min)`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(pause, deadline - Date.now())));
      pause = Math.min(pause * 2, LOCK_RETRY_MS[1]);
    }
  }
}

/**
 * Runs `body` inside one transaction on `connection`: commits if it returns, rolls back and
 * rethrows if it throws, so that its writes land all together or not at all.
 *
 * @param connection The connection.
 * @param body The work.
 * @returns What `body` returns.
 * @throws Whatever `body` throws (after the rollback).
 */
export async function inTransaction<T>(
  connection: DuckDBConnection,
  body: () => Promise<T>,
): Promise<T> {
  await connection.run("begin transaction");
  try {
    const value = await body();
    await connection.run("commit");
    return value;
  } catch (e) {
    // After a failed commit DuckDB may already have ended the transaction; the rollback then
    // fails too, and the error worth reporting is the first one.
    try {
      await connection.run("rollback");
    } catch { /* nothing left to roll back */ }
    throw e;
  }
}

/**
 * The database's schema version: the highest migration applied, 0 for an empty database.
 *
 * @param connection A connection to it.
 * @returns The version.
 */
export async function schemaVersion(connection: DuckDBConnection): Promise<number> {
  const tables = await connection.runAndReadAll(
    "select count(*) from duckdb_tables() where table_name = 'schema_version' and " +
      "schema_name = 'main' and database_name = current_database()",
  );
  if (Number(tables.getRowsJS()[0]![0]) === 0) return 0;
  const reader = await connection.runAndReadAll("select max(version) from schema_version");
  return Number(reader.getRowsJS()[0]![0] ?? 0);
}

/** Applies the migrations the database lacks, each in its own transaction. */
async function migrate(connection: DuckDBConnection, path: string): Promise<void> {
  await connection.run(
    "create table if not exists schema_version (version integer primary key, " +
      "applied_at timestamptz not null default current_timestamp)",
  );
  const version = await schemaVersion(connection);
  if (version > SCHEMA_VERSION) {
    throw new StoreError(
      `Cannot open results database "${path}": its schema is version ${version}, newer than ` +
        `this program's ${SCHEMA_VERSION}; update SCALAR lab`,
    );
  }
  for (let v = version; v < SCHEMA_VERSION; v++) {
    await inTransaction(connection, async () => {
      for (const step of MIGRATIONS[v]!) {
        if (typeof step === "string") await connection.run(step);
        else await step(connection);
      }
      await connection.run("insert into schema_version (version) values ($1)", [v + 1]);
    });
  }
}

/**
 * Opens the results store, creating the file (and its folder) and the schema when needed and
 * applying any migrations it lacks. Opening again is harmless: the schema is created once.
 *
 * @param path The database file, or `:memory:`.
 * @param options Read-only mode, lock wait.
 * @returns The open store; close it in a `finally`.
 * @throws {StoreError} If the file is missing (read-only), locked by another process, not a
 * DuckDB database, or has a newer schema than this program knows.
 *
 * @example An in-memory store
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore, SCHEMA_VERSION, schemaVersion } from "./db.ts";
 * const store = await openStore(":memory:");
 * try {
 *   equal(await schemaVersion(store.connection), SCHEMA_VERSION);
 * } finally {
 *   store.close();
 * }
 * ```
 */
export async function openStore(path: string, options: OpenStoreOptions = {}): Promise<Store> {
  const readOnly = options.readOnly ?? false;
  const memory = path === ":memory:";
  const existed = memory || await exists(path);
  if (!memory) {
    if (readOnly && !existed) {
      throw new StoreError(
        `Cannot open results database "${path}": it does not exist (run an experiment first, ` +
          `or name another file with --db)`,
      );
    }
    if (!readOnly) await Deno.mkdir(dirname(path), { recursive: true });
  }
  let instance: DuckDBInstance | undefined;
  let connection: DuckDBConnection | undefined;
  try {
    instance = await openInstance(path, options);
    connection = await instance.connect();
    if (readOnly) {
      const version = await schemaVersion(connection);
      if (version > SCHEMA_VERSION) {
        throw new StoreError(
          `Cannot read results database "${path}": its schema is version ${version}, newer ` +
            `than this program's ${SCHEMA_VERSION}; update SCALAR lab`,
        );
      }
    } else {
      await migrate(connection, path);
    }
  } catch (e) {
    connection?.closeSync();
    instance?.closeSync();
    // A database this call began to create and could not finish is removed: an empty or partial
    // file would only block the next command.
    if (!existed) {
      for (const file of [`${path}.wal`, path]) await Deno.remove(file).catch(() => {});
    }
    throw storeFailure(path, e);
  }
  const conn = connection;
  const inst = instance;
  let open = true;
  return {
    path,
    readOnly,
    connection: conn,
    close() {
      if (!open) return;
      open = false;
      conn.closeSync();
      inst.closeSync();
    },
  };
}

/**
 * Opens the store, does one piece of work and closes it, turning a damaged file or a full disk
 * into one {@link StoreError} that names the file (DuckDB lets one writer hold a file at a time,
 * so writers hold it only this long).
 *
 * @param path The database file.
 * @param options As {@link openStore} takes.
 * @param work What to do with the open store.
 * @returns What `work` returns.
 * @throws {StoreError} As {@link openStore} does, and for a damaged file or a full disk.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { schemaVersion, SCHEMA_VERSION, withStore } from "./db.ts";
 * equal(await withStore(":memory:", {}, (s) => schemaVersion(s.connection)), SCHEMA_VERSION);
 * ```
 */
export async function withStore<T>(
  path: string,
  options: OpenStoreOptions,
  work: (store: Store) => Promise<T>,
): Promise<T> {
  const store = await openStore(path, options);
  try {
    return await work(store);
  } catch (e) {
    throw storeFailure(path, e);
  } finally {
    store.close();
  }
}

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
import { type DuckDBConnection, DuckDBInstance } from "@duckdb/node-api";

/** Thrown for every store problem that a user can act on: the message is the whole story. */
export class StoreError extends Error {
  override name = "StoreError";
}

/**
 * The schema, one entry per version: entry i holds the statements that take a database from
 * version i to version i + 1. Entries are frozen once released; a change appends an entry.
 */
export const MIGRATIONS: readonly (readonly string[])[] = Object.freeze([
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
      id: "Hash of the fully resolved config: the same config always gets the same id.",
      experiment: "The manifest's `name`.",
      manifest_path: "The manifest file the run came from, as given on the command line.",
      config: "The fully resolved run config (JSON), e.g. `config->>'$.sae.arch'`.",
      varied: "The matrix parameters of this run as a JSON object {dotted path: value}; the same " +
        "values in long form are in `run_params`.",
      seed: "The run's seed (SAE initialisation and every random choice of the run).",
      status: "`done`, `failed` (see `error`), or `running` (started; a `running` row whose " +
        "process is gone is an interrupted run, pending again).",
      error: "The error message of a failed run, else NULL.",
      backend: "The TensorFlow.js backend that ran it (`tensorflow`, `webgpu`, `cpu`…).",
      versions: "Versions of the software that ran it (JSON {name: version}).",
      started_at: "When the run started.",
      finished_at: "When it finished or failed (NULL while running).",
      wall_seconds: "Wall-clock seconds the run took (all stages).",
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
   * How long to keep retrying while another process holds the file's lock (a writer finishing a
   * run's write), in milliseconds. @default 5000
   */
  lockWaitMs?: number;
}

const LOCK_RETRY_MS = 100;

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Opens the DuckDB instance, retrying while another process holds the file's lock. */
async function openInstance(
  path: string,
  readOnly: boolean,
  lockWaitMs: number,
): Promise<DuckDBInstance> {
  const deadline = Date.now() + lockWaitMs;
  for (;;) {
    try {
      return await DuckDBInstance.create(path, readOnly ? { access_mode: "READ_ONLY" } : {});
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      if (!message.includes("Could not set lock")) {
        throw new StoreError(`Cannot open results database "${path}": ${message}`);
      }
      if (Date.now() >= deadline) {
        const pid = /\(PID (\d+)\)/.exec(message)?.[1];
        throw new StoreError(
          `Cannot open results database "${path}": another process` +
            `${pid === undefined ? "" : ` (PID ${pid})`} has it open for writing ` +
            `(a running \`deno task run\`?); try again when it has finished`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS));
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
      for (const statement of MIGRATIONS[v]!) await connection.run(statement);
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
  if (!memory) {
    if (readOnly && !(await exists(path))) {
      throw new StoreError(
        `Cannot open results database "${path}": it does not exist (run an experiment first, ` +
          `or name another file with --db)`,
      );
    }
    if (!readOnly) await Deno.mkdir(dirname(path), { recursive: true });
  }
  const instance = await openInstance(path, readOnly, options.lockWaitMs ?? 5000);
  let connection: DuckDBConnection | undefined;
  try {
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
    instance.closeSync();
    throw e;
  }
  const conn = connection;
  let open = true;
  return {
    path,
    readOnly,
    connection: conn,
    close() {
      if (!open) return;
      open = false;
      conn.closeSync();
      instance.closeSync();
    },
  };
}

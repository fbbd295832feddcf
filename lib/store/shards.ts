/**
 * Shards: one results database per run, `<results>/shards/<run id>.duckdb`, written by the one
 * process that runs it (a Slurm array task), so that no two processes ever open the same DuckDB
 * file for writing; and their merge into the main results database.
 *
 * A shard is complete once its run committed: it holds exactly one `runs` row, of status `done` or
 * `failed`. One whose row still says `running` (its task was killed or cancelled, or is still at
 * work), or that has no row yet, is incomplete and left where it is; its run stays pending. Each
 * complete shard is imported in one transaction that first deletes every row of its run, so a shard
 * merged twice adds nothing, and the file is removed only after that transaction committed.
 *
 * @module
 */
import { basename, dirname, join } from "node:path";
import { inTransaction, SCHEMA_VERSION, type Store, StoreError } from "./db.ts";
import { RUN_TABLES } from "./write.ts";

/** The folder name of the shards, beside the main results database. */
export const SHARDS_FOLDER = "shards";

const SHARD_SUFFIX = ".duckdb";

/**
 * The folder that holds the shards of a results database.
 *
 * @param db The main results database file.
 * @returns `<its folder>/shards`.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { shardDir } from "./shards.ts";
 * equal(shardDir("results/scalar.duckdb"), "results/shards");
 * ```
 */
export function shardDir(db: string): string {
  return join(dirname(db), SHARDS_FOLDER);
}

/**
 * The shard one run writes its results to.
 *
 * @param db The main results database file.
 * @param runId The run.
 * @returns `<its folder>/shards/<run id>.duckdb`.
 */
export function shardPath(db: string, runId: string): string {
  return join(shardDir(db), `${runId}${SHARD_SUFFIX}`);
}

/**
 * The shard files in a folder, in name order (none when the folder does not exist).
 *
 * @param dir A shards folder.
 * @returns Their paths.
 */
export async function listShards(dir: string): Promise<string[]> {
  const files: string[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isFile && entry.name.endsWith(SHARD_SUFFIX)) files.push(join(dir, entry.name));
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return files.sort();
}

/** What became of one shard in {@link mergeShards}. */
export type ShardOutcome =
  | {
    /** Its rows are in the main database, and the file is gone. */
    kind: "merged";
    file: string;
    runId: string;
    /** The run's status, as the shard recorded it. */
    runStatus: "done" | "failed";
    /** Rows imported, over all tables. */
    rows: number;
  }
  | {
    /** Its run has not committed (or its task has it open): left alone, the run stays pending. */
    kind: "incomplete";
    file: string;
    /** Why, in words. */
    reason: string;
  }
  | {
    /** It cannot be merged: left alone, nothing of it imported. */
    kind: "error";
    file: string;
    /** The whole story, naming the file. */
    message: string;
  };

/** Options of {@link mergeShards}. */
export interface MergeShardsOptions {
  /**
   * The experiment being merged: a shard of another experiment is an error, not merged. Unset,
   * shards of every experiment are merged (the main database holds them all).
   */
  experiment?: string;
}

/** The alias a shard is attached under while it is read. */
const ALIAS = "shard";

/** A failure that makes a shard an `error` outcome. */
class ShardProblem extends Error {}

/** A single number from a query. */
async function scalar(store: Store, sql: string, values: string[] = []): Promise<unknown> {
  return (await store.connection.runAndReadAll(sql, values)).getRowsJS()[0]?.[0];
}

/** The `run_id` (or `id`) column of a run table. */
function idColumn(table: string): string {
  return table === "runs" ? "id" : "run_id";
}

/**
 * Checks the attached shard and says what its run is: undefined when it is incomplete (with the
 * reason), else its id and status.
 */
async function inspectShard(
  store: Store,
  file: string,
  options: MergeShardsOptions,
): Promise<{ runId: string; status: "done" | "failed" } | { incomplete: string }> {
  const tables = await store.connection.runAndReadAll(
    "select table_name from duckdb_tables() where database_name = $1",
    [ALIAS],
  );
  const present = new Set(tables.getRowsJS().map((r) => r[0] as string));
  if (!present.has("schema_version")) {
    throw new ShardProblem(
      "it is a DuckDB file but not a SCALAR lab results database (no schema_version table)",
    );
  }
  const version = Number(await scalar(store, `select max(version) from ${ALIAS}.schema_version`));
  if (version > SCHEMA_VERSION) {
    throw new ShardProblem(
      `its schema is version ${version}, newer than this program's ${SCHEMA_VERSION}; update ` +
        `SCALAR lab`,
    );
  }
  const missing = RUN_TABLES.filter((t) => !present.has(t));
  if (missing.length > 0) throw new ShardProblem(`it lacks the tables ${missing.join(", ")}`);
  const runs = (await store.connection.runAndReadAll(
    `select id, experiment, status from ${ALIAS}.runs order by id`,
  )).getRowsJS() as [string, string, string][];
  if (runs.length === 0) return { incomplete: "its run has not started writing" };
  if (runs.length > 1) {
    throw new ShardProblem(`it holds ${runs.length} runs; a shard holds the rows of one run`);
  }
  const [id, experiment, status] = runs[0]!;
  const expected = basename(file, SHARD_SUFFIX);
  if (id !== expected) {
    throw new ShardProblem(`it holds run "${id}", but its name says run "${expected}"`);
  }
  if (options.experiment !== undefined && experiment !== options.experiment) {
    throw new ShardProblem(
      `it holds run "${id}" of experiment "${experiment}", not of "${options.experiment}"; ` +
        `merge it with that experiment's manifest (or without one), or remove it`,
    );
  }
  for (const table of RUN_TABLES) {
    const others = Number(
      await scalar(
        store,
        `select count(*) from ${ALIAS}.${table} where ${idColumn(table)} <> $1`,
        [id],
      ),
    );
    if (others > 0) throw new ShardProblem(`its table ${table} holds rows of other runs`);
  }
  if (status === "running") {
    return { incomplete: "its run has not committed (its task is running, or was stopped)" };
  }
  return { runId: id, status: status as "done" | "failed" };
}

/** Replaces the run's rows in the main database by the attached shard's, in one transaction. */
async function importRun(store: Store, runId: string): Promise<number> {
  let rows = 0;
  await inTransaction(store.connection, async () => {
    for (const table of RUN_TABLES) {
      await store.connection.run(`delete from ${table} where ${idColumn(table)} = $1`, [runId]);
      // By name: a shard written by an older schema lacks only columns added since.
      const result = await store.connection.run(
        `insert into ${table} by name select * from ${ALIAS}.${table}`,
      );
      rows += Number(result.rowsChanged);
    }
  });
  return rows;
}

/** Removes a merged shard: its write-ahead log first, so no stale log outlives its file. */
async function removeShard(file: string): Promise<void> {
  for (const path of [`${file}.wal`, file]) {
    try {
      await Deno.remove(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
}

/** Merges one shard; every failure becomes an outcome. */
async function mergeShard(
  store: Store,
  file: string,
  options: MergeShardsOptions,
): Promise<ShardOutcome> {
  const fail = (why: string): ShardOutcome => ({
    kind: "error",
    file,
    message: `Cannot merge shard "${file}": ${why}; nothing of it was merged`,
  });
  try {
    await store.connection.run(`attach '${file.replaceAll("'", "''")}' as ${ALIAS} (read_only)`);
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    if (message.includes("Could not set lock")) {
      return { kind: "incomplete", file, reason: "its task has it open for writing" };
    }
    return fail(`it is not a readable DuckDB database (${message})`);
  }
  let outcome: ShardOutcome;
  try {
    const found = await inspectShard(store, file, options);
    outcome = "incomplete" in found ? { kind: "incomplete", file, reason: found.incomplete } : {
      kind: "merged",
      file,
      runId: found.runId,
      runStatus: found.status,
      rows: await importRun(store, found.runId),
    };
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    return fail(e instanceof ShardProblem ? message : `reading it failed (${message})`);
  } finally {
    await store.connection.run(`detach database if exists ${ALIAS}`);
  }
  if (outcome.kind !== "merged") return outcome;
  try {
    await removeShard(file);
  } catch (e) {
    return {
      kind: "error",
      file,
      message: `Merged shard "${file}", but cannot remove it (${
        e instanceof Error ? e.message : e
      }); merging it again changes nothing`,
    };
  }
  return outcome;
}

/**
 * Imports every complete shard of a folder into the main database, one transaction per shard, and
 * removes each shard once its transaction committed. Incomplete shards are left alone; a shard
 * that is not a results database, is corrupt, holds anything but one run named as the file is, or
 * (with `experiment`) belongs to another experiment is an `error` outcome naming the file, and
 * nothing of it is imported. Merging the same shard again replaces its run's rows by the same rows.
 *
 * @param store The main results database, open for writing.
 * @param dir The shards folder ({@link shardDir}).
 * @param options The experiment, if the merge is for one.
 * @returns One outcome per shard file, in name order.
 * @throws {StoreError} If the store is read-only.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { mergeShards } from "./shards.ts";
 * const store = await openStore(":memory:");
 * try {
 *   deepEqual(await mergeShards(store, "no/such/folder"), []);
 * } finally {
 *   store.close();
 * }
 * ```
 */
export async function mergeShards(
  store: Store,
  dir: string,
  options: MergeShardsOptions = {},
): Promise<ShardOutcome[]> {
  if (store.readOnly) {
    throw new StoreError(`Cannot merge shards into "${store.path}": it is open read-only`);
  }
  const outcomes: ShardOutcome[] = [];
  for (const file of await listShards(dir)) outcomes.push(await mergeShard(store, file, options));
  return outcomes;
}

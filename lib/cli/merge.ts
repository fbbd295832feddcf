/**
 * `merge`: imports the finished shards of Slurm array tasks into the results database. `plan`,
 * `report`, `query` and `run` merge first too, so their answers include every finished task.
 *
 * @module
 */
import { expandManifest } from "../experiment/manifest.ts";
import { openStore, StoreError } from "../store/db.ts";
import { listShards, mergeShards, shardDir, type ShardOutcome } from "../store/shards.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";
import { DEFAULT_DB } from "./run.ts";

/** What one merge did, as lines for the user. */
function describeOutcomes(db: string, outcomes: ShardOutcome[]): string[] {
  const lines = outcomes.flatMap((o) => o.kind === "error" ? [o.message] : []);
  const merged = outcomes.filter((o) => o.kind === "merged");
  const incomplete = outcomes.filter((o) => o.kind === "incomplete").length;
  if (merged.length > 0) {
    const failed = merged.filter((o) => o.runStatus === "failed").length;
    lines.push(
      `merged ${merged.length} shard${merged.length === 1 ? "" : "s"} into ${db}` +
        (failed > 0 ? ` (${failed} of them failed runs)` : ""),
    );
  }
  if (incomplete > 0) {
    lines.push(
      `${incomplete} shard${incomplete === 1 ? " is" : "s are"} incomplete (a task at work, ` +
        `killed or cancelled), left in ${shardDir(db)}: ${
          incomplete === 1 ? "its run stays" : "their runs stay"
        } pending`,
    );
  }
  return lines;
}

/**
 * Merges the shards beside a results database into it, if there are any (the database is not
 * opened otherwise), and prints what happened to stderr.
 *
 * @param db The results database.
 * @param experiment Merge only this experiment's shards: another experiment's is an error.
 * @returns The outcome of every shard.
 * @throws {StoreError} If the database cannot be opened for writing.
 */
export async function mergeShardsOf(db: string, experiment?: string): Promise<ShardOutcome[]> {
  if ((await listShards(shardDir(db))).length === 0) return [];
  const store = await openStore(db);
  let outcomes;
  try {
    outcomes = await mergeShards(store, shardDir(db), { experiment });
  } finally {
    store.close();
  }
  for (const line of describeOutcomes(db, outcomes)) console.error(line);
  return outcomes;
}

/**
 * The merge a reading command does first: like {@link mergeShardsOf}, but a database it cannot
 * open for writing (a local run holds it) only earns a line, and the command goes on.
 *
 * @param db The results database.
 * @param experiment The experiment the command is about, if any.
 */
export async function mergeBeforeReading(db: string, experiment?: string): Promise<void> {
  try {
    await mergeShardsOf(db, experiment);
  } catch (e) {
    if (!(e instanceof StoreError)) throw e;
    console.error(`shards not merged now: ${e.message}`);
  }
}

/** The `merge` command. */
export const mergeCommand: Command = {
  summary: "import the finished DuckDB shards of Slurm array tasks into the results database",
  // A getter: run.ts, where DEFAULT_DB is defined, imports this module in turn.
  get help() {
    return `Usage: deno task merge [MANIFEST | --experiment NAME] [--db PATH]

Each Slurm array task writes its run to its own shard, results/shards/<run id>.duckdb. This
imports every complete shard (its run committed: done or failed) into the results database, one
transaction per shard, then removes the shard. Merging is idempotent: a shard merged twice adds
nothing. Incomplete shards (a task still at work, killed or cancelled) are left alone and their
runs stay pending; run the grid again to finish them. A shard that is corrupt or not a results
database is named in an error and nothing of it is merged. plan, report, query and run merge
first on their own.

Options:
  MANIFEST           merge only this experiment's shards; a shard of another is an error
  --experiment NAME  the same, by the experiment's name
  --db PATH          results database (default ${DEFAULT_DB}); its shards are in
                     shards/ beside it
  -h, --help         show this help`;
  },
  async run(args) {
    const { values, positionals } = parseCommandArgs(args, {
      experiment: { type: "string" },
      db: { type: "string" },
    });
    if (positionals.length > 1 || (positionals.length === 1 && values.experiment)) {
      throw new UsageError("expected at most one MANIFEST path or --experiment NAME");
    }
    const experiment = positionals.length === 1
      ? (await expandManifest(positionals[0]!)).manifest.name
      : values.experiment;
    const db = values.db ?? DEFAULT_DB;
    const outcomes = await mergeShardsOf(db, experiment);
    if (outcomes.length === 0) console.error(`no shards in ${shardDir(db)}`);
    return outcomes.some((o) => o.kind === "error") ? 1 : 0;
  },
};

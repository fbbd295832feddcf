/**
 * One run of a grid, done by the one process that claimed it: claim it in the results database
 * (or learn that a live process has it, or that it is done), import the results its folder holds
 * already, else compute them, keep them in the folder as `result.json`, and store them — waiting
 * for readers as long as it takes, so a finished run's result is never dropped.
 *
 * @module
 */
import { type ExpandedRun } from "../experiment/manifest.ts";
import { runSaeExperiment, type SaeRunResult } from "../experiment/sae_run.ts";
import { type OpenStoreOptions, type Store, withStore } from "../store/db.ts";
import { claimRun, heartbeat, HEARTBEAT_MS, releaseRun, type RunOwner } from "../store/claims.ts";
import { type RunRecord, storeRun } from "../store/write.ts";

/** How long a finished run's write waits for readers that hold the database. */
export const RESULT_LOCK_WAIT_MS = 60 * 60_000;

/** How long a claim waits for readers (then the grid stops; nothing is lost). */
const CLAIM_LOCK_WAIT_MS = 10 * 60_000;

/** The file in a run's folder that holds its finished result until the database has it. */
export const RESULT_FILE = "result.json";

/**
 * The process's way into the results database: one access at a time (a heartbeat never opens
 * the file while the runner has it open), each as short as one piece of work.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { StoreAccess } from "./run_claimed.ts";
 * import { schemaVersion, SCHEMA_VERSION } from "../store/db.ts";
 * const dir = await Deno.makeTempDir();
 * const access = new StoreAccess(`${dir}/r.duckdb`, (line) => console.error(line));
 * const versions = await Promise.all([1, 2].map(() => access.use((s) => schemaVersion(s.connection), 1000)));
 * equal(versions.join(), `${SCHEMA_VERSION},${SCHEMA_VERSION}`);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class StoreAccess {
  #chain: Promise<unknown> = Promise.resolve();

  /**
   * @param db The database file.
   * @param onWait Told when another process holds the file and a wait begins.
   */
  constructor(readonly db: string, readonly onWait: (message: string) => void) {}

  /**
   * Opens the store, does `work`, closes it; after any access already under way.
   *
   * @param work What to do.
   * @param lockWaitMs How long to wait for another process's hold on the file.
   * @returns What `work` returns.
   */
  use<T>(work: (store: Store) => Promise<T>, lockWaitMs: number): Promise<T> {
    const options: OpenStoreOptions = { lockWaitMs, onWait: this.onWait };
    const next = this.#chain.then(() => withStore(this.db, options, work));
    this.#chain = next.catch(() => {});
    return next;
  }
}

/** What became of a run. */
export type RunOutcome =
  | { kind: "done"; result: SaeRunResult; imported: boolean }
  | { kind: "failed"; message: string; kept: boolean }
  | { kind: "skipped"; why: string }
  | { kind: "interrupted" };

/** What {@link runClaimed} needs besides the run. */
export interface RunContext {
  /** The results database. */
  store: StoreAccess;
  /** This process. */
  owner: RunOwner;
  /** Recompute a done run (its old rows stay until the new ones commit). */
  force: boolean;
  /** Where run folders live (`results/runs`). */
  runsRoot: string;
  /** Shared activation caches. */
  cacheRoot: string;
  /** Stops the run at its next safe point. */
  signal: AbortSignal;
  /** Progress lines. */
  log: (line: string) => void;
}

/** A finished result as kept in its run's folder, with what the `runs` row says about it. */
interface SavedResult {
  backend: string;
  versions: Record<string, string>;
  startedAt: string;
  finishedAt: string;
  wallSeconds: number;
  result: SaeRunResult;
}

/** Non-finite numbers (a metric can be NaN or infinite) as JSON can hold them, and back. */
const NON_FINITE = "$nonFinite";

async function readSaved(path: string): Promise<SavedResult | undefined> {
  try {
    return JSON.parse(
      await Deno.readTextFile(path),
      (
        _,
        v,
      ) => (v !== null && typeof v === "object" && NON_FINITE in v ? Number(v[NON_FINITE]) : v),
    ) as SavedResult;
  } catch {
    // Missing, or torn by a crash while it was written: the run computes its result again.
    return undefined;
  }
}

async function writeSaved(path: string, saved: SavedResult): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(
    tmp,
    JSON.stringify(
      saved,
      (_, v) => (typeof v === "number" && !Number.isFinite(v) ? { [NON_FINITE]: String(v) } : v),
    ),
  );
  await Deno.rename(tmp, path);
}

/** Describes who holds a run, for the line that says it is skipped. */
function describeOwner(o: RunOwner & { heartbeatAt: Date }): string {
  return `PID ${o.pid} on ${o.host} (started ${o.startedAt.toISOString()}, alive at ` +
    `${o.heartbeatAt.toISOString()})`;
}

/** Renews this process's heartbeat every minute while `work` runs; a busy database skips one. */
async function withHeartbeat<T>(ctx: RunContext, work: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => {
    ctx.store.use((s) => heartbeat(s, ctx.owner), 2000).catch(() => {});
  }, HEARTBEAT_MS);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}

/**
 * Does one run of a grid if this process can claim it: imports the result its folder holds (a
 * run whose write was lost), else computes it; then stores it. A run a live process holds, or
 * that another process finished meanwhile, is skipped; an interrupted one is released, pending
 * again, and resumes from its folder next time. With `force`, a done run is computed afresh and
 * its old rows stay until the new ones commit (or stay, if the new computation fails).
 *
 * @param run The run.
 * @param record Its `runs` row (its `wallSeconds` is set here).
 * @param ctx Database, owner, folders, interrupt and progress.
 * @returns What became of it.
 * @throws {StoreError} If the database cannot be written (held past the wait, damaged, or a full
 * disk); the result stays in the run's folder, and the next run of the grid imports it.
 *
 * @example A run another live process holds is skipped, its folder untouched
 * ```ts
 * import { equal, match } from "node:assert/strict";
 * import { runClaimed, StoreAccess } from "./run_claimed.ts";
 * import { claimRun, currentOwner } from "../store/claims.ts";
 * const dir = await Deno.makeTempDir();
 * const store = new StoreAccess(`${dir}/r.duckdb`, () => {});
 * const record = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 0,
 * };
 * const me = await currentOwner();
 * await store.use((s) => claimRun(s, record, me), 1000);
 * const other = { ...me, pid: me.pid + 1 };
 * const run = { id: "r1", seed: 0, varied: {}, backend: "auto", config: {} } as never;
 * const outcome = await runClaimed(run, record, {
 *   store, owner: other, force: false, runsRoot: `${dir}/runs`, cacheRoot: `${dir}/cache`,
 *   signal: new AbortController().signal, log: () => {},
 * });
 * equal(outcome.kind, "skipped");
 * match((outcome as { why: string }).why, new RegExp(`^being run by PID ${me.pid}`));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function runClaimed(
  run: ExpandedRun,
  record: RunRecord,
  ctx: RunContext,
): Promise<RunOutcome> {
  const claim = await ctx.store.use(
    (s) => claimRun(s, record, ctx.owner, { force: ctx.force }),
    CLAIM_LOCK_WAIT_MS,
  );
  if (claim.kind === "done") return { kind: "skipped", why: "done by another process meanwhile" };
  if (claim.kind === "owned") {
    return { kind: "skipped", why: `being run by ${describeOwner(claim.owner)}` };
  }
  const runDir = `${ctx.runsRoot}/${run.id}`;
  const savedPath = `${runDir}/${RESULT_FILE}`;
  // A forced run starts afresh; the folder is ours, and the database keeps the old results.
  if (ctx.force) await Deno.remove(runDir, { recursive: true }).catch(() => {});
  const saved = await readSaved(savedPath);
  if (saved) {
    ctx.log(`importing the finished result kept in ${savedPath}`);
    record.wallSeconds = saved.wallSeconds;
    await storeSaved(ctx, record, saved);
    return { kind: "done", result: saved.result, imported: true };
  }
  const t0 = performance.now();
  let result: SaeRunResult | undefined;
  try {
    result = await withHeartbeat(ctx, () =>
      runSaeExperiment(run.config, {
        runDir,
        cacheRoot: ctx.cacheRoot,
        seed: run.seed,
        signal: ctx.signal,
        log: ctx.log,
      }));
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    record.wallSeconds = (performance.now() - t0) / 1000;
    if (claim.previous === "done") {
      await ctx.store.use((s) => releaseRun(s, run.id, ctx.owner), CLAIM_LOCK_WAIT_MS);
      return { kind: "failed", message, kept: true };
    }
    await ctx.store.use((s) => storeRun(s, record, { error: message }), RESULT_LOCK_WAIT_MS);
    return { kind: "failed", message, kept: false };
  }
  if (result === undefined) {
    await ctx.store.use((s) => releaseRun(s, run.id, ctx.owner), CLAIM_LOCK_WAIT_MS);
    return { kind: "interrupted" };
  }
  record.wallSeconds = (performance.now() - t0) / 1000;
  const kept: SavedResult = {
    backend: record.backend,
    versions: { ...record.versions },
    startedAt: record.startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    wallSeconds: record.wallSeconds,
    result,
  };
  // Kept before the write: if the write cannot happen now, the next run of the grid imports it.
  await writeSaved(savedPath, kept);
  await storeSaved(ctx, record, kept);
  return { kind: "done", result, imported: false };
}

/** Stores a kept result under the run's record, waiting for readers as long as it takes. */
async function storeSaved(ctx: RunContext, record: RunRecord, saved: SavedResult): Promise<void> {
  const row: RunRecord = {
    ...record,
    backend: saved.backend,
    versions: saved.versions,
    startedAt: new Date(saved.startedAt),
    finishedAt: new Date(saved.finishedAt),
    wallSeconds: saved.wallSeconds,
  };
  await ctx.store.use((s) => storeRun(s, row, saved.result), RESULT_LOCK_WAIT_MS);
}

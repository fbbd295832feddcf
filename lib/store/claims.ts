/**
 * Runs claimed by one process at a time. Before a process works on a run it claims the run's row
 * in one transaction (DuckDB lets one process write the file at a time, so the check and the claim
 * cannot interleave with another process's): the row records its owner (host, PID, when that
 * process started) and a heartbeat the owner renews. A second process skips a run whose owner is
 * alive, takes over one whose owner is gone, and so never works in another live owner's run folder.
 *
 * An owner is alive when, on this host, its PID runs a process that started when the row says (a
 * PID reused by another process does not count); on another host, when its heartbeat is recent.
 *
 * @module
 */
import { VARCHAR } from "@duckdb/node-api";
import { inTransaction, type Store } from "./db.ts";
import {
  deleteRun,
  insertRunRow,
  linkExperiment,
  type OwnerColumns,
  type RunRecord,
  runStatuses,
} from "./write.ts";

/** How often an owner renews its heartbeat, in milliseconds. */
export const HEARTBEAT_MS = 60_000;

/** An owner on another host whose heartbeat is older than this is taken to be gone. */
export const STALE_HEARTBEAT_MS = 10 * HEARTBEAT_MS;

/** A process that works on runs: the owner of the runs it claimed. */
export type RunOwner = OwnerColumns;

/** When a process started, from `/proc` (Linux); undefined when it does not exist or is unknown. */
async function processStart(pid: number): Promise<Date | undefined> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    const ticks = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
    const boot = /^btime (\d+)$/m.exec(await Deno.readTextFile("/proc/stat"))?.[1];
    // Linux reports start times in clock ticks of 1/100 s (USER_HZ) since boot.
    return boot === undefined ? undefined : new Date(Number(boot) * 1000 + ticks * 10);
  } catch {
    return undefined;
  }
}

/**
 * This process as the owner of the runs it claims.
 *
 * @returns Host, PID and start time (now, where `/proc` does not tell).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { currentOwner } from "./claims.ts";
 * equal((await currentOwner()).pid, Deno.pid);
 * ```
 */
export async function currentOwner(): Promise<RunOwner> {
  return {
    host: Deno.hostname(),
    pid: Deno.pid,
    startedAt: (await processStart(Deno.pid)) ?? new Date(),
  };
}

/**
 * Whether the owner a row records is still at work.
 *
 * @param owner The row's owner and heartbeat.
 * @param now The time to judge the heartbeat by. @default now
 * @returns True for a live process on this host (same PID, same start time within 2 s), or a
 * heartbeat on another host younger than {@link STALE_HEARTBEAT_MS}.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { currentOwner, ownerAlive } from "./claims.ts";
 * const me = await currentOwner();
 * equal(await ownerAlive({ ...me, heartbeatAt: new Date() }), true);
 * const old = new Date(me.startedAt.getTime() - 60_000);
 * equal(await ownerAlive({ ...me, startedAt: old, heartbeatAt: new Date() }), false);
 * ```
 */
export async function ownerAlive(
  owner: RunOwner & { heartbeatAt: Date },
  now: Date = new Date(),
): Promise<boolean> {
  if (owner.host !== Deno.hostname()) {
    return now.getTime() - owner.heartbeatAt.getTime() < STALE_HEARTBEAT_MS;
  }
  const started = await processStart(owner.pid);
  if (started !== undefined) return Math.abs(started.getTime() - owner.startedAt.getTime()) < 2000;
  if (await Deno.stat("/proc/self").then(() => true, () => false)) return false; // no such PID
  // No /proc to ask (not Linux): trust the heartbeat, as for another host.
  return now.getTime() - owner.heartbeatAt.getTime() < STALE_HEARTBEAT_MS;
}

/** What {@link claimRun} found. */
export type Claim =
  /** The run is this process's now; `previous` is the status its row had (none: new). */
  | { kind: "claimed"; previous?: "done" | "failed" | "running" }
  /** Done already (and not forced): nothing to do. */
  | { kind: "done" }
  /** Another live process works on it. */
  | { kind: "owned"; owner: RunOwner & { heartbeatAt: Date } };

/**
 * Claims a run for this process, in one transaction. A run with no row gets a `running` row owned
 * by `owner`; a failed, interrupted or abandoned one (owner gone) is taken over; a done one is left
 * alone unless `force`, and then only its owner changes: its results stay until new ones commit.
 * The run is linked to the record's experiment whatever the outcome.
 *
 * @param store A store open for writing.
 * @param run The run.
 * @param owner This process.
 * @param options `force`: claim a done run too.
 * @returns Whether the run is ours now, and if not, why.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { claimRun, currentOwner } from "./claims.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 0,
 * };
 * const me = await currentOwner();
 * equal((await claimRun(store, run, me)).kind, "claimed");
 * equal((await claimRun(store, run, { ...me, pid: me.pid + 1 })).kind, "owned");
 * store.close();
 * ```
 */
export async function claimRun(
  store: Store,
  run: RunRecord,
  owner: RunOwner,
  options: { force?: boolean } = {},
): Promise<Claim> {
  return await inTransaction(store.connection, async () => {
    const found = (await runStatuses(store, [run.id])).get(run.id);
    await linkExperiment(store, run);
    if (found?.status === "done" && !options.force) return { kind: "done" };
    const mine = found?.owner && found.owner.host === owner.host && found.owner.pid === owner.pid;
    if (found?.owner && !mine && (await ownerAlive(found.owner))) {
      return { kind: "owned", owner: found.owner };
    }
    if (found?.status === "done") {
      await setOwner(store, run.id, owner);
    } else {
      await deleteRun(store, run.id);
      await insertRunRow(store, run, "running", null, null, null, owner);
    }
    return { kind: "claimed", previous: found?.status };
  });
}

/** Sets (or clears, with null) the owner of a run's row and renews its heartbeat. */
async function setOwner(store: Store, id: string, owner: RunOwner | null): Promise<void> {
  await store.connection.run(
    `update runs set owner_host = $1, owner_pid = $2::integer,
       owner_started_at = cast($3 as timestamptz),
       heartbeat_at = if($1 is null, null, current_timestamp)
     where id = $4`,
    [
      owner?.host ?? null,
      owner === null ? null : String(owner.pid),
      owner?.startedAt.toISOString() ?? null,
      id,
    ],
    [VARCHAR, VARCHAR, VARCHAR, VARCHAR],
  );
}

/**
 * Gives a claimed run up without a result (an interrupt, or a forced rerun that failed): its row
 * keeps its status (a `running` row with no owner is pending again) and loses its owner. Does
 * nothing when the run is not `owner`'s.
 *
 * @param store A store open for writing.
 * @param id The run.
 * @param owner This process.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { runStatuses } from "./write.ts";
 * import { claimRun, currentOwner, releaseRun } from "./claims.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 0,
 * };
 * const me = await currentOwner();
 * await claimRun(store, run, me);
 * await releaseRun(store, "r1", me);
 * equal((await runStatuses(store, ["r1"])).get("r1")?.owner, null);
 * store.close();
 * ```
 */
export async function releaseRun(store: Store, id: string, owner: RunOwner): Promise<void> {
  await inTransaction(store.connection, async () => {
    const found = (await runStatuses(store, [id])).get(id);
    if (found?.owner?.host === owner.host && found.owner.pid === owner.pid) {
      await setOwner(store, id, null);
    }
  });
}

/**
 * Renews the heartbeat of the runs `owner` holds, so processes on other hosts see it alive.
 *
 * @param store A store open for writing.
 * @param owner This process.
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { runStatuses } from "./write.ts";
 * import { claimRun, currentOwner, heartbeat } from "./claims.ts";
 * const store = await openStore(":memory:");
 * const run = {
 *   id: "r1", experiment: "a", manifestPath: "a.yaml", config: {}, varied: {}, seed: 0,
 *   backend: "cpu", versions: {}, startedAt: new Date(), wallSeconds: 0,
 * };
 * const me = await currentOwner();
 * await claimRun(store, run, me);
 * const before = Date.now();
 * await heartbeat(store, me);
 * const { owner } = (await runStatuses(store, ["r1"])).get("r1")!;
 * ok(owner!.heartbeatAt.getTime() >= before - 1000);
 * store.close();
 * ```
 */
export async function heartbeat(store: Store, owner: RunOwner): Promise<void> {
  await store.connection.run(
    "update runs set heartbeat_at = current_timestamp where owner_host = $1 and owner_pid = $2",
    [owner.host, String(owner.pid)],
    [VARCHAR, VARCHAR],
  );
}

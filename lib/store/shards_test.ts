import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { openStore, type Store, StoreError } from "./db.ts";
import { listShards, mergeShards, shardDir, type ShardOutcome, shardPath } from "./shards.ts";
import { RUN_TABLES, storeRun } from "./write.ts";
import { claimRun, currentOwner } from "./claims.ts";
import { fakeResult, fakeRun, tempDb } from "./testdata/fixtures.ts";

const HOLD = new URL("./testdata/hold_shard.ts", import.meta.url).pathname;

/** Every row of every run table, as text, in a fixed order. */
async function dump(store: Store): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const table of RUN_TABLES) {
    const reader = await store.connection.runAndReadAll(`select * from ${table} order by all`);
    out[table] = reader.getRowsJson().map((r) => JSON.stringify(r));
  }
  return out;
}

/** Writes a shard holding one stored run, as an array task leaves it. */
async function writeShard(db: string, id: string, experiment = "demo"): Promise<string> {
  const path = shardPath(db, id);
  const shard = await openStore(path);
  try {
    await storeRun(shard, fakeRun({ id, experiment }), fakeResult());
  } finally {
    shard.close();
  }
  return path;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Starts a child that writes a run into a shard and holds it open until killed. */
async function holdShard(path: string, id: string, state: "running" | "done") {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", HOLD, path, id, state],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  reader.releaseLock();
  equal(new TextDecoder().decode(value).trim(), "ready");
  return child;
}

function kinds(outcomes: ShardOutcome[]): string[] {
  return outcomes.map((o) => o.kind);
}

Deno.test("mergeShards() imports a complete shard exactly as storing the run directly would", async () => {
  const db = await tempDb();
  const direct = await openStore(":memory:");
  const store = await openStore(db.path);
  try {
    const file = await writeShard(db.path, "run-a");
    await storeRun(direct, fakeRun({ id: "run-a" }), fakeResult());
    const outcomes = await mergeShards(store, shardDir(db.path));
    equal(outcomes.length, 1);
    const [o] = outcomes;
    ok(o!.kind === "merged");
    equal(o.runId, "run-a");
    equal(o.runStatus, "done");
    const rows = await dump(store);
    deepEqual(rows, await dump(direct));
    equal(o.rows, Object.values(rows).reduce((n, r) => n + r.length, 0));
    equal(await exists(file), false);
    deepEqual(await listShards(shardDir(db.path)), []);
  } finally {
    store.close();
    direct.close();
    await db.cleanup();
  }
});

Deno.test("merging the same shards twice changes nothing", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    const files = [await writeShard(db.path, "run-a"), await writeShard(db.path, "run-b")];
    const copies = await Promise.all(files.map(async (f) => {
      const bytes = await Deno.readFile(f);
      return [f, bytes] as const;
    }));
    deepEqual(kinds(await mergeShards(store, shardDir(db.path))), ["merged", "merged"]);
    const once = await dump(store);
    equal(once.runs!.length, 2);
    for (const [f, bytes] of copies) await Deno.writeFile(f, bytes);
    deepEqual(kinds(await mergeShards(store, shardDir(db.path))), ["merged", "merged"]);
    deepEqual(await dump(store), once);
    deepEqual(await listShards(shardDir(db.path)), []);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("an incomplete shard is left alone and its run stays out of the database", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    // Started (marked running), or opened and nothing written yet.
    const running = shardPath(db.path, "run-r");
    const shard = await openStore(running);
    await claimRun(shard, fakeRun({ id: "run-r" }), await currentOwner());
    shard.close();
    const empty = shardPath(db.path, "run-e");
    (await openStore(empty)).close();
    const outcomes = await mergeShards(store, shardDir(db.path));
    deepEqual(kinds(outcomes), ["incomplete", "incomplete"]);
    match((outcomes[1] as { reason: string }).reason, /not committed/);
    ok(await exists(running) && await exists(empty));
    deepEqual((await dump(store)).runs, []);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("a shard whose task still has it open, or was killed in the middle, is not merged", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    const path = shardPath(db.path, "run-k");
    const child = await holdShard(path, "run-k", "running");
    try {
      const [busy] = await mergeShards(store, shardDir(db.path));
      ok(busy!.kind === "incomplete");
      match(busy.reason, /open for writing/);
    } finally {
      child.kill("SIGKILL");
      await child.status;
    }
    const [killed] = await mergeShards(store, shardDir(db.path));
    equal(killed!.kind, "incomplete");
    ok(await exists(path));
    deepEqual((await dump(store)).runs, []);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("a task killed after its commit but before closing leaves a complete shard (in its log)", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    const path = shardPath(db.path, "run-w");
    const child = await holdShard(path, "run-w", "done");
    child.kill("SIGKILL");
    await child.status;
    ok(await exists(`${path}.wal`), "the committed rows are in the write-ahead log");
    const [o] = await mergeShards(store, shardDir(db.path));
    ok(o!.kind === "merged");
    equal(o.runId, "run-w");
    equal(o.runStatus, "done");
    equal(await exists(path) || await exists(`${path}.wal`), false);
    equal((await dump(store)).scalar_curves!.length, 6);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("a corrupt shard is named in an error, merges nothing, and the others still merge", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    const good = await writeShard(db.path, "run-a");
    const real = await Deno.readFile(await writeShard(db.path, "run-t"));
    const truncated = shardPath(db.path, "run-t");
    await Deno.writeFile(truncated, real.slice(0, 8192));
    const garbage = shardPath(db.path, "run-g");
    await Deno.writeTextFile(garbage, "not a database\n".repeat(500));
    const outcomes = await mergeShards(store, shardDir(db.path));
    deepEqual(kinds(outcomes), ["merged", "error", "error"]);
    const [, g, t] = outcomes as { file: string; message: string }[];
    equal(g!.file, garbage);
    match(g!.message, /^Cannot merge shard ".*run-g\.duckdb": it is not a readable DuckDB/);
    match(g!.message, /nothing of it was merged$/);
    equal(t!.file, truncated);
    match(t!.message, /run-t\.duckdb/);
    deepEqual((await dump(store)).runs.map((r) => JSON.parse(r)[0]), ["run-a"]);
    ok(!(await exists(good)) && await exists(truncated) && await exists(garbage));
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("a shard of another experiment is an error when merging for one experiment", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    await writeShard(db.path, "run-a");
    const foreign = await writeShard(db.path, "run-x", "other");
    const outcomes = await mergeShards(store, shardDir(db.path), { experiment: "demo" });
    deepEqual(kinds(outcomes), ["merged", "error"]);
    match(
      (outcomes[1] as { message: string }).message,
      /run-x\.duckdb": it holds run "run-x" of experiment "other", not of "demo"/,
    );
    ok(await exists(foreign));
    deepEqual((await dump(store)).runs.map((r) => JSON.parse(r)[0]), ["run-a"]);
    // Merging without an experiment takes every experiment's shards.
    deepEqual(kinds(await mergeShards(store, shardDir(db.path))), ["merged"]);
    equal((await dump(store)).runs.length, 2);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("a shard that is not one run named as its file is refused whole", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    const two = shardPath(db.path, "run-2");
    const shard = await openStore(two);
    await storeRun(shard, fakeRun({ id: "run-2" }), fakeResult());
    await storeRun(shard, fakeRun({ id: "run-3" }), fakeResult());
    shard.close();
    await Deno.rename(await writeShard(db.path, "run-a"), shardPath(db.path, "run-z"));
    const [a, b] = await mergeShards(store, shardDir(db.path)) as {
      kind: string;
      message: string;
    }[];
    equal(a!.kind, "error");
    match(a!.message, /run-2\.duckdb": it holds 2 runs/);
    equal(b!.kind, "error");
    match(b!.message, /run-z\.duckdb": it holds run "run-a", but its name says run "run-z"/);
    deepEqual((await dump(store)).runs, []);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("mergeShards() refuses a read-only store", async () => {
  const db = await tempDb();
  try {
    (await openStore(db.path)).close();
    const store = await openStore(db.path, { readOnly: true });
    try {
      await rejects(mergeShards(store, shardDir(db.path)), StoreError);
    } finally {
      store.close();
    }
  } finally {
    await db.cleanup();
  }
});

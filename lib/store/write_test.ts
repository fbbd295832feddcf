import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { openStore, type Store, StoreError } from "./db.ts";
import { pairName, RUN_TABLES, runStatuses, storeRun } from "./write.ts";
import { claimRun, currentOwner } from "./claims.ts";
import { fakeResult, fakeRun, mlpHooks, tempDb } from "./testdata/fixtures.ts";

/** Rows of each run table that belong to `id`. */
async function rowCounts(store: Store, id: string): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const table of RUN_TABLES) {
    const reader = await store.connection.runAndReadAll(
      `select count(*) from ${table} where ${table === "runs" ? "id" : "run_id"} = $1`,
      [id],
    );
    counts[table] = Number(reader.getRowsJS()[0]![0]);
  }
  return counts;
}

async function rows(store: Store, sql: string, values: string[] = []) {
  return (await store.connection.runAndReadAll(sql, values)).getRowObjectsJS();
}

Deno.test("storeRun() round trip: every table holds what the result said", async () => {
  const store = await openStore(":memory:");
  try {
    const result = fakeResult({
      saes: { [mlpHooks(0)[0]]: { fvu: NaN, ce_loss_score: -Infinity, l0: Infinity } },
    });
    const run = fakeRun({ varied: { "sae.arch": "topk", "sae.k": 10, "sae.jsae.lambda": 0.001 } });
    const counts = await storeRun(store, run, result);
    deepEqual(await rowCounts(store, run.id), counts);
    equal(counts.scalar_curves, 6);
    equal(counts.scalar_scores, 4);
    equal(counts.train_log, 2);

    const [r] = await rows(
      store,
      `select experiment, manifest_path, config::varchar as config, varied::varchar as varied, seed,
        status, error, backend, versions::varchar as versions, started_at, finished_at,
        wall_seconds, stepper from runs`,
    );
    deepEqual(r, {
      experiment: "demo",
      manifest_path: "experiments/demo.yaml",
      config: JSON.stringify(run.config), // its keys are snake_case already
      varied: JSON.stringify(run.varied),
      seed: 0,
      status: "done",
      error: null,
      backend: "cpu",
      versions: '{"deno":"2.9.6"}',
      started_at: run.startedAt,
      finished_at: run.finishedAt,
      wall_seconds: 12.5,
      stepper: "cpu",
    });
    deepEqual(
      await rows(store, "select path, value from run_params order by path"),
      [
        { path: "sae.arch", value: "topk" },
        { path: "sae.jsae.lambda", value: "0.001" },
        { path: "sae.k", value: "10" },
      ],
    );

    // Non-finite values survive as they are.
    const m = await rows(
      store,
      "select metric, value from metrics where sae = $1 and metric in ('fvu', 'ce_loss_score', 'l0', 'mse') order by metric",
      [mlpHooks(0)[0]],
    );
    equal(m.length, 4);
    ok(Number.isNaN(m.find((x) => x.metric === "fvu")!.value));
    equal(m.find((x) => x.metric === "ce_loss_score")!.value, -Infinity);
    equal(m.find((x) => x.metric === "l0")!.value, Infinity);
    equal(m.find((x) => x.metric === "mse")!.value, 1);
    const pair = pairName(...mlpHooks(1));
    deepEqual(
      await rows(
        store,
        "select sae, metric, value from metrics where sae in ($1, 'run') and metric in ('e_tot', 'train_steps', 'ce_loss_all_increase') order by metric",
        [pair],
      ),
      [
        { sae: "run", metric: "ce_loss_all_increase", value: 0.5 },
        { sae: pair, metric: "e_tot", value: 262144 },
        { sae: "run", metric: "train_steps", value: 100 },
      ],
    );
    deepEqual(
      await rows(
        store,
        "select layer, n_edges, kl_model, kl_full_high from scalar_curves where pair = $1 order by n_edges",
        [pair],
      ),
      [
        { layer: 1, n_edges: 1n, kl_model: 1, kl_full_high: 0.6 },
        { layer: 1, n_edges: 2n, kl_model: 0.5, kl_full_high: 0.3 },
        { layer: 1, n_edges: 4n, kl_model: 1 / 3, kl_full_high: 0.6 / 3 },
      ],
    );
    deepEqual(
      await rows(
        store,
        "select curve, e_tot, absolute, relative, relative_low, log_axis, n_min, n_max from scalar_scores where pair = $1 order by curve",
        [pair],
      ),
      [
        {
          curve: "full",
          e_tot: 262144n,
          absolute: 100,
          relative: 10,
          relative_low: 9,
          log_axis: 3,
          n_min: 1n,
          n_max: 4n,
        },
        {
          curve: "model",
          e_tot: 262144n,
          absolute: 200,
          relative: 20,
          relative_low: 18,
          log_axis: 3,
          n_min: 1n,
          n_max: 4n,
        },
      ],
    );
    deepEqual(
      await rows(store, "select step, sae, loss, l0 from train_log order by step"),
      [
        { step: 50, sae: mlpHooks(0)[0], loss: 0.9, l0: 12 },
        { step: 100, sae: mlpHooks(0)[0], loss: 0.5, l0: 10 },
      ],
    );
  } finally {
    store.close();
  }
});

Deno.test("storeRun() of the same id replaces its rows; a failure keeps no results", async () => {
  const store = await openStore(":memory:");
  try {
    const run = fakeRun();
    await storeRun(store, run, fakeResult());
    const again = await storeRun(
      store,
      run,
      fakeResult({ layers: [{ absolute: 1, relative: 2 }] }),
    );
    deepEqual(await rowCounts(store, run.id), again);
    equal(again.scalar_scores, 2);

    await storeRun(store, run, { error: "Cannot train: loss diverged at step 3" });
    deepEqual(await rows(store, "select stepper from runs"), [{ stepper: null }]);
    deepEqual(await rowCounts(store, run.id), {
      runs: 1,
      run_params: 1,
      metrics: 0,
      scalar_curves: 0,
      scalar_scores: 0,
      train_log: 0,
    });
    deepEqual(
      await runStatuses(store, [run.id]),
      new Map([[run.id, {
        status: "failed",
        error: "Cannot train: loss diverged at step 3",
        owner: null,
      }]]),
    );
  } finally {
    store.close();
  }
});

Deno.test("storeRun() rolls back a failure injected mid-insert: no rows of a new id, the earlier store of an old one intact", async () => {
  const store = await openStore(":memory:");
  try {
    const old = fakeRun({ id: "old" });
    const before = await storeRun(store, old, fakeResult());
    const inject = {
      afterInsert: (table: string) => {
        if (table === "scalar_curves") throw new Error("injected");
      },
    };
    const tablesSeen: string[] = [];
    await rejects(
      storeRun(store, fakeRun({ id: "new" }), fakeResult(), {
        afterInsert: (t) => {
          tablesSeen.push(t);
          inject.afterInsert(t);
        },
      }),
      /injected/,
    );
    // The failure came after runs, params and metrics had been inserted.
    deepEqual(tablesSeen, ["runs", "run_params", "metrics", "scalar_curves"]);
    deepEqual(await rowCounts(store, "new"), Object.fromEntries(RUN_TABLES.map((t) => [t, 0])));

    // A replacement of "old" that fails keeps the earlier rows, values included.
    await rejects(
      storeRun(store, old, fakeResult({ layers: [{ absolute: 7, relative: 7 }] }), inject),
      /injected/,
    );
    deepEqual(await rowCounts(store, "old"), before);
    deepEqual(
      (await rows(store, "select relative from scalar_scores where curve = 'model' order by layer"))
        .map((r) => r.relative),
      [10, 20],
    );

    // A failure DuckDB itself raises midway (two curve points with the same edge count).
    const bad = fakeResult();
    bad.pairs[1]!.curve.push({ ...bad.pairs[1]!.curve[0]! });
    await rejects(storeRun(store, old, bad), /Duplicate key|PRIMARY KEY|constraint/i);
    deepEqual(await rowCounts(store, "old"), before);
    // The connection is usable after the rollback.
    await storeRun(store, fakeRun({ id: "after" }), fakeResult());
    equal((await rowCounts(store, "after")).runs, 1);
  } finally {
    store.close();
  }
});

Deno.test("storeRun() killed inside its transaction leaves nothing of that run; committed runs stay", async () => {
  const db = await tempDb();
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--quiet",
        "--allow-all",
        "--config",
        new URL("../../deno.json", import.meta.url).pathname,
        new URL("./testdata/kill_child.ts", import.meta.url).pathname,
        db.path,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    try {
      while (!out.includes("inside")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`the child exited before its transaction: ${out}`);
        out += value;
      }
      // While the child holds the file, other processes are told who holds it.
      await rejects(
        openStore(db.path, { lockWaitMs: 200 }),
        (e) =>
          e instanceof StoreError &&
          /: process \d+ \(deno run .* kill_child\.ts scalar\.duckdb\) has held it for more than 0\.2 s; try again/
            .test(e.message),
      );
    } finally {
      child.kill("SIGKILL");
      await child.status;
      await reader.cancel();
    }
    for (const readOnly of [true, false]) {
      const store = await openStore(db.path, { readOnly });
      try {
        deepEqual(
          await rowCounts(store, "killed"),
          Object.fromEntries(RUN_TABLES.map((t) => [t, 0])),
        );
        const committed = await rowCounts(store, "committed");
        equal(committed.runs, 1);
        equal(committed.scalar_curves, 6);
      } finally {
        store.close();
      }
    }
  } finally {
    await db.cleanup();
  }
});

Deno.test("a claimed run is running with its owner; runStatuses() finds runs of any experiment", async () => {
  const store = await openStore(":memory:");
  try {
    const me = await currentOwner();
    await storeRun(store, fakeRun({ id: "a" }), { error: "boom" });
    await claimRun(store, fakeRun({ id: "a" }), me);
    deepEqual(await rowCounts(store, "a"), {
      runs: 1,
      run_params: 1,
      metrics: 0,
      scalar_curves: 0,
      scalar_scores: 0,
      train_log: 0,
    });
    await storeRun(store, fakeRun({ id: "b", seed: 1 }), { error: "boom" });
    await storeRun(store, fakeRun({ id: "d", experiment: "other" }), fakeResult());
    const statuses = await runStatuses(store, ["a", "b", "d", "e"]);
    deepEqual([...statuses.keys()], ["a", "b", "d"]);
    deepEqual(statuses.get("b"), { status: "failed", error: "boom", owner: null });
    deepEqual(statuses.get("d"), { status: "done", error: null, owner: null });
    const a = statuses.get("a")!;
    equal(a.status, "running");
    deepEqual({ ...a.owner, heartbeatAt: undefined }, { ...me, heartbeatAt: undefined });
    const [r] = await rows(store, "select finished_at, wall_seconds from runs where id = 'a'");
    deepEqual(r, { finished_at: null, wall_seconds: null });
  } finally {
    store.close();
  }
});

Deno.test("storeRun() refuses a read-only store and a record without a seed", async () => {
  const db = await tempDb();
  try {
    (await openStore(db.path)).close();
    const store = await openStore(db.path, { readOnly: true });
    try {
      await rejects(
        storeRun(store, fakeRun(), fakeResult()),
        (e) =>
          e instanceof StoreError &&
          e.message ===
            `Cannot store run "run-1": the results database "${db.path}" is open read-only`,
      );
    } finally {
      store.close();
    }
    const rw = await openStore(db.path);
    try {
      await rejects(
        storeRun(rw, fakeRun({ seed: 0.5 }), fakeResult()),
        (e) =>
          e instanceof StoreError &&
          /need a non-empty id and an integer seed, got seed 0.5/.test(e.message),
      );
    } finally {
      rw.close();
    }
  } finally {
    await db.cleanup();
  }
});

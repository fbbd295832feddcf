import { deepEqual, equal, rejects, throws } from "node:assert/strict";
import { openStore, StoreError } from "./db.ts";
import { formatQueryResult, query, type QueryFormat, runQuery } from "./query.ts";
import { storeRun } from "./write.ts";
import { fakeResult, fakeRun, tempDb } from "./testdata/fixtures.ts";

/** A database with two runs: "a" (done, seed 0) and "b" (failed, seed 1). */
async function withDb(body: (path: string) => Promise<void>): Promise<void> {
  const db = await tempDb();
  try {
    const store = await openStore(db.path);
    try {
      await storeRun(store, fakeRun({ id: "a" }), fakeResult());
      await storeRun(store, fakeRun({ id: "b", seed: 1 }), { error: 'Cannot train: "x", y' });
    } finally {
      store.close();
    }
    await body(db.path);
  } finally {
    await db.cleanup();
  }
}

const SQL =
  "select id, seed, status, error, wall_seconds, 'NaN'::double as x from runs order by id";

Deno.test("query() prints an aligned table with a row count", async () => {
  await withDb(async (path) => {
    equal(
      await query(path, SQL),
      [
        "id | seed | status | error                | wall_seconds | x",
        "---+------+--------+----------------------+--------------+----",
        "a  |    0 | done   | NULL                 |         12.5 | NaN",
        'b  |    1 | failed | Cannot train: "x", y |         12.5 | NaN',
        "(2 rows)",
        "",
      ].join("\n"),
    );
    equal(await query(path, "select count(*) as n from runs"), "n\n-\n2\n(1 row)\n");
  });
});

Deno.test("query() prints CSV with quoting and empty NULLs", async () => {
  await withDb(async (path) => {
    equal(
      await query(path, SQL, "csv"),
      'id,seed,status,error,wall_seconds,x\na,0,done,,12.5,NaN\nb,1,failed,"Cannot train: ""x"", y",12.5,NaN\n',
    );
  });
});

Deno.test("query() prints JSON rows; count(*) is a number, NaN a string", async () => {
  await withDb(async (path) => {
    deepEqual(JSON.parse(await query(path, SQL, "json")), [
      { id: "a", seed: 0, status: "done", error: null, wall_seconds: 12.5, x: "NaN" },
      {
        id: "b",
        seed: 1,
        status: "failed",
        error: 'Cannot train: "x", y',
        wall_seconds: 12.5,
        x: "NaN",
      },
    ]);
    deepEqual(
      JSON.parse(
        await query(
          path,
          "select count(*) as n, 1.5::decimal(4, 2) as d, [1, 2] as l from runs",
          "json",
        ),
      ),
      [
        { n: 2, d: 1.5, l: [1, 2] },
      ],
    );
    // Metrics pivot from the long-form tables works as documented.
    const r = await runQuery(
      path,
      "select r.id, m.value from runs r join metrics m on m.run_id = r.id where m.sae = 'run' and m.metric = 'train_steps'",
    );
    deepEqual(r, { columns: ["id", "value"], rows: [["a", 100]] });
  });
});

Deno.test("query() turns DuckDB errors into one clear message, and refuses writes", async () => {
  await withDb(async (path) => {
    await rejects(
      query(path, "selec 1"),
      (e) =>
        e instanceof StoreError &&
        e.message.startsWith(
          'Cannot run query "selec 1": Parser Error: syntax error at or near "selec"',
        ),
    );
    await rejects(
      query(path, "select * from nope"),
      (e) =>
        e instanceof StoreError &&
        /^Cannot run query "select \* from nope": Catalog Error: Table with name nope does not exist/
          .test(e.message),
    );
    await rejects(
      query(path, "delete from runs"),
      (e) =>
        e instanceof StoreError &&
        /^Cannot run query "delete from runs": queries are read-only, and this one writes/.test(
          e.message,
        ),
    );
    equal(await query(path, "select count(*) as n from runs", "csv"), "n\n2\n");
    await rejects(
      query(path, "select 1", "xml" as QueryFormat),
      (e) =>
        e instanceof StoreError &&
        e.message === 'Cannot print the query result as "xml": the formats are table, csv, json',
    );
  });
  await rejects(
    query("/nonexistent/scalar.duckdb", "select 1"),
    (e) =>
      e instanceof StoreError &&
      /^Cannot open results database "\/nonexistent\/scalar.duckdb": it does not exist/.test(
        e.message,
      ),
  );
});

Deno.test("formatQueryResult() handles empty results and nested values", () => {
  equal(formatQueryResult({ columns: ["a"], rows: [] }, "table"), "a\n-\n(0 rows)\n");
  equal(
    formatQueryResult({ columns: ["s"], rows: [[{ k: [1, null] }]] }, "csv"),
    's\n"{""k"":[1,null]}"\n',
  );
  throws(() => formatQueryResult({ columns: [], rows: [] }, "yaml" as QueryFormat), StoreError);
});

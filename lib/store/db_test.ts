import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import {
  MIGRATIONS,
  openStore,
  SCHEMA_VERSION,
  schemaMarkdown,
  schemaVersion,
  StoreError,
  TABLE_DOCS,
} from "./db.ts";
import { storeRun } from "./write.ts";
import { fakeResult, fakeRun, tempDb } from "./testdata/fixtures.ts";

Deno.test("openStore() creates the folder and schema, and opening again changes nothing", async () => {
  const db = await tempDb();
  try {
    let store = await openStore(db.path);
    try {
      equal(await schemaVersion(store.connection), SCHEMA_VERSION);
      await storeRun(store, fakeRun(), fakeResult());
    } finally {
      store.close();
    }
    for (let i = 0; i < 2; i++) {
      store = await openStore(db.path);
      try {
        const versions = (await store.connection.runAndReadAll(
          "select version from schema_version order by version",
        )).getRowsJS().map((r) => r[0]);
        deepEqual(versions, MIGRATIONS.map((_, v) => v + 1));
        const runs = (await store.connection.runAndReadAll("select count(*) from runs"))
          .getRowsJS();
        equal(runs[0]![0], 1n);
      } finally {
        store.close();
      }
    }
  } finally {
    await db.cleanup();
  }
});

Deno.test("TABLE_DOCS documents exactly the database's tables and columns, in order", async () => {
  const store = await openStore(":memory:");
  try {
    const rows = (await store.connection.runAndReadAll(
      `select table_name, column_name from duckdb_columns()
       where not internal and database_name = current_database() and schema_name = 'main'
         and table_name <> 'schema_version'
       order by table_name, column_index`,
    )).getRowsJS() as string[][];
    const actual: Record<string, string[]> = {};
    for (const [table, column] of rows) (actual[table!] ??= []).push(column!);
    const documented = Object.fromEntries(
      Object.entries(TABLE_DOCS).map(([t, d]) => [t, Object.keys(d.columns)]),
    );
    deepEqual(actual, Object.fromEntries(Object.entries(documented).sort()));
    ok(schemaMarkdown().includes("### `scalar_scores`"));
  } finally {
    store.close();
  }
});

Deno.test("openStore() read-only refuses a missing file with a clear message", async () => {
  const db = await tempDb();
  try {
    await rejects(
      openStore(db.path, { readOnly: true }),
      (e) =>
        e instanceof StoreError &&
        e.message === `Cannot open results database "${db.path}": it does not exist (run an ` +
            "experiment first, or name another file with --db)",
    );
  } finally {
    await db.cleanup();
  }
});

Deno.test("openStore() brings a version-2 database to the current schema: runs gain a NULL stepper", async () => {
  const db = await tempDb();
  try {
    let store = await openStore(db.path);
    try {
      await storeRun(store, fakeRun(), fakeResult());
      // Back to what version 2 wrote: no stepper column, versions 1 and 2 applied.
      await store.connection.run("alter table runs drop column stepper");
      await store.connection.run("delete from schema_version where version > 2");
    } finally {
      store.close();
    }
    store = await openStore(db.path);
    try {
      equal(await schemaVersion(store.connection), SCHEMA_VERSION);
      const rows = (await store.connection.runAndReadAll("select id, stepper from runs"))
        .getRowsJS();
      deepEqual(rows, [[fakeRun().id, null]]);
    } finally {
      store.close();
    }
  } finally {
    await db.cleanup();
  }
});

Deno.test("openStore() refuses a database with a newer schema", async () => {
  const db = await tempDb();
  try {
    const store = await openStore(db.path);
    try {
      await store.connection.run("insert into schema_version (version) values ($1)", [
        SCHEMA_VERSION + 1,
      ]);
    } finally {
      store.close();
    }
    for (const readOnly of [false, true]) {
      await rejects(
        openStore(db.path, { readOnly }),
        (e) =>
          e instanceof StoreError &&
          e.message.includes(
            `schema is version ${SCHEMA_VERSION + 1}, newer than this program's ${SCHEMA_VERSION}`,
          ),
      );
    }
  } finally {
    await db.cleanup();
  }
});

Deno.test("openStore() names a file that is not a DuckDB database", async () => {
  const db = await tempDb();
  try {
    await Deno.mkdir(`${db.dir}/results`);
    await Deno.writeTextFile(db.path, "not a database");
    await rejects(
      openStore(db.path),
      (e) =>
        e instanceof StoreError &&
        e.message.startsWith(`Cannot open results database "${db.path}": `),
    );
  } finally {
    await db.cleanup();
  }
});

/**
 * Read-only SQL against the results store, printed as an aligned table, CSV or JSON.
 *
 * @module
 */
import { type DuckDBResultReader, DuckDBTypeId } from "@duckdb/node-api";
import { openStore, StoreError, storeFailure } from "./db.ts";

/** The output formats of {@link query}. */
export type QueryFormat = "table" | "csv" | "json";

/** The formats {@link query} knows. */
export const QUERY_FORMATS: readonly QueryFormat[] = Object.freeze(["table", "csv", "json"]);

/** A query's result: column names and rows of plain values. */
export interface QueryResult {
  /** Column names, in order. */
  columns: string[];
  /**
   * Rows of values: strings, numbers (NaN and ±Infinity included), booleans, null, or nested
   * arrays and objects of those. 64-bit integers come back as numbers when exactly representable,
   * else as their decimal text; timestamps and dates as DuckDB prints them.
   */
  rows: unknown[][];
}

const WIDE_INTEGERS = new Set<DuckDBTypeId>([
  DuckDBTypeId.BIGINT,
  DuckDBTypeId.UBIGINT,
  DuckDBTypeId.HUGEINT,
  DuckDBTypeId.UHUGEINT,
  DuckDBTypeId.BIGNUM,
]);

/** Plain values from a reader: DuckDB's JSON forms, with safe 64-bit integers as numbers. */
function plainRows(reader: DuckDBResultReader): QueryResult {
  const columns = reader.columnNames();
  const types = columns.map((_, i) => reader.columnTypeId(i));
  const rows = reader.getRowsJson().map((row) =>
    row.map((v, i) => {
      // `count(*)` is a BIGINT, which the JSON form gives as text.
      if (typeof v === "string" && WIDE_INTEGERS.has(types[i]!)) {
        const n = Number(v);
        return Number.isSafeInteger(n) ? n : v;
      }
      if (typeof v === "string" && types[i] === DuckDBTypeId.DECIMAL) return Number(v);
      if (
        (types[i] === DuckDBTypeId.DOUBLE || types[i] === DuckDBTypeId.FLOAT) &&
        typeof v === "string"
      ) {
        return Number(v); // "NaN", "Infinity", "-Infinity"
      }
      return v;
    })
  );
  return { columns, rows };
}

/** A value as table or CSV text. */
function text(value: unknown, nullText: string): string {
  if (value === null || value === undefined) return nullText;
  if (typeof value === "string") return value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return JSON.stringify(value);
}

function csvField(s: string): string {
  return /[",\r\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/**
 * Prints a query result: an aligned table (numbers right-aligned, NULL for null, a row count),
 * CSV (RFC 4180, empty for null) or JSON (an array of row objects; non-finite numbers as the
 * strings "NaN", "Infinity", "-Infinity").
 *
 * @param result Columns and rows.
 * @param format The output format.
 * @returns The text, ending in a newline.
 * @throws {StoreError} For an unknown format.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { formatQueryResult } from "./query.ts";
 * equal(formatQueryResult({ columns: ["n"], rows: [[3]] }, "csv"), "n\n3\n");
 * ```
 */
export function formatQueryResult(result: QueryResult, format: QueryFormat): string {
  const { columns, rows } = result;
  switch (format) {
    case "csv":
      return [columns, ...rows.map((r) => r.map((v) => text(v, "")))]
        .map((r) => r.map(csvField).join(","))
        .join("\n") + "\n";
    case "json": {
      const objects = rows.map((r) => Object.fromEntries(columns.map((c, i) => [c, r[i]])));
      return JSON.stringify(
        objects,
        (_, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v),
        2,
      ) + "\n";
    }
    case "table": {
      const cells = rows.map((r) => r.map((v) => text(v, "NULL")));
      const numeric = columns.map((_, i) =>
        rows.length > 0 && rows.every((r) => r[i] === null || typeof r[i] === "number")
      );
      const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
      const line = (r: string[], header: boolean) =>
        r.map((s, i) => numeric[i] && !header ? s.padStart(widths[i]!) : s.padEnd(widths[i]!)).join(
          " | ",
        ).trimEnd();
      const count = `(${rows.length} ${rows.length === 1 ? "row" : "rows"})`;
      if (columns.length === 0) return `${count}\n`;
      return [
        line(columns, true),
        widths.map((w) => "-".repeat(w)).join("-+-"),
        ...cells.map((r) => line(r, false)),
        count,
      ].join("\n") + "\n";
    }
    default:
      throw new StoreError(
        `Cannot print the query result as "${format}": the formats are ${QUERY_FORMATS.join(", ")}`,
      );
  }
}

/** The SQL as it appears in messages: one line, shortened. */
function shortSql(sql: string): string {
  const one = sql.replace(/\s+/g, " ").trim();
  return one.length > 60 ? `${one.slice(0, 57)}...` : one;
}

/**
 * Runs SQL against the results database opened read-only and sandboxed (no file access, ATTACH,
 * INSTALL, LOAD or EXPORT; settings locked), and returns its result.
 *
 * @param dbPath The database file.
 * @param sql One or more statements; the last one's result is returned.
 * @returns Columns and rows.
 * @throws {StoreError} If the file is missing or locked by a writer, or DuckDB rejects the SQL
 * (its message, without a stack: e.g. `Cannot run query "selec 1": Parser Error: …`).
 */
export async function runQuery(dbPath: string, sql: string): Promise<QueryResult> {
  const store = await openStore(dbPath, { readOnly: true, sandboxed: true });
  try {
    let reader: DuckDBResultReader;
    try {
      reader = await store.connection.runAndReadAll(sql);
    } catch (e) {
      // With file access off, an IO error can only be the database's own: a damaged file.
      const damaged = storeFailure(dbPath, e);
      if (damaged instanceof StoreError) throw damaged;
      const message = e instanceof Error ? e.message : String(e);
      const why = /read-only mode/.test(message)
        ? `queries are read-only, and this one writes (${message})`
        : /disabled by configuration|configuration has been locked|Permission Error/.test(message)
        ? "queries read the results database only: file reads and writes (COPY ... TO, " +
          "read_csv, read_text, glob...), ATTACH, INSTALL, LOAD, EXPORT and changing settings " +
          `are off (${message.split("\n")[0]})`
        : message;
      throw new StoreError(`Cannot run query "${shortSql(sql)}": ${why}`);
    }
    return plainRows(reader);
  } finally {
    store.close();
  }
}

/**
 * Runs read-only SQL against the results database and prints the result (what `deno task query`
 * shows).
 *
 * @param dbPath The database file.
 * @param sql The SQL.
 * @param format `table`, `csv` or `json`. @default "table"
 * @returns The printed result, ending in a newline.
 * @throws {StoreError} If the format is unknown, the file is missing or locked by a writer, or
 * DuckDB rejects the SQL.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openStore } from "./db.ts";
 * import { query } from "./query.ts";
 * const dir = await Deno.makeTempDir();
 * (await openStore(`${dir}/r.duckdb`)).close();
 * equal(await query(`${dir}/r.duckdb`, "select count(*) as n from runs", "csv"), "n\n0\n");
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function query(
  dbPath: string,
  sql: string,
  format: QueryFormat = "table",
): Promise<string> {
  if (!QUERY_FORMATS.includes(format)) {
    throw new StoreError(
      `Cannot print the query result as "${format}": the formats are ${QUERY_FORMATS.join(", ")}`,
    );
  }
  return formatQueryResult(await runQuery(dbPath, sql), format);
}

/**
 * Child process of the store tests: a reader that holds a results database, as a slow query or
 * any DuckDB client does. Opens it read-only, prints "holding", keeps it open for the given time,
 * then closes it and exits.
 *
 * Usage: deno run -A hold_db.ts DB_PATH MILLISECONDS
 *
 * @module
 */
import { openStore } from "../../lib/store/db.ts";

const [path, ms] = Deno.args;
const store = await openStore(path!, { readOnly: true, lockWaitMs: 60_000 });
console.log("holding");
await new Promise((resolve) => setTimeout(resolve, Number(ms)));
store.close();

/**
 * Child process of the shard tests: writes one run into a shard, keeps the shard open (printing
 * "ready") and waits to be killed, as an array task does while it works or when it is cancelled.
 *
 * Usage: deno run -A hold_shard.ts SHARD_PATH RUN_ID running|done
 *
 * @module
 */
import { openStore } from "../db.ts";
import { storeRun } from "../write.ts";
import { claimRun, currentOwner } from "../claims.ts";
import { fakeResult, fakeRun } from "./fixtures.ts";

const [path, id, state] = Deno.args;
const store = await openStore(path!);
const run = fakeRun({ id });
if (state === "done") await storeRun(store, run, fakeResult());
else await claimRun(store, run, await currentOwner());
console.log("ready");
// Kept alive by the interval until the parent kills the process.
setInterval(() => {}, 1000);

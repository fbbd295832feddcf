/**
 * Child process of the kill test: commits one run, then starts storing a second and stops inside
 * its transaction (after some of its tables), printing "inside" and waiting to be killed.
 *
 * Usage: deno run -A kill_child.ts DB_PATH
 *
 * @module
 */
import { openStore } from "../db.ts";
import { storeRun } from "../write.ts";
import { fakeResult, fakeRun } from "./fixtures.ts";

const store = await openStore(Deno.args[0]!);
await storeRun(store, fakeRun({ id: "committed" }), fakeResult());
await storeRun(store, fakeRun({ id: "killed" }), fakeResult(), {
  afterInsert: async (table) => {
    if (table !== "scalar_curves") return;
    console.log("inside");
    // Kept alive by the interval until the parent kills the process.
    await new Promise(() => setInterval(() => {}, 1000));
  },
});

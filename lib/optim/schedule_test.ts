import assert from "node:assert/strict";
import { warmupCosine } from "./schedule.ts";

Deno.test("warmupCosine() ramps linearly, peaks after warm-up, and ends at minLr", () => {
  const s = { lr: 1e-3, minLr: 1e-5, warmup: 4, steps: 10 };
  assert.deepEqual([0, 1, 2, 3].map((i) => warmupCosine(s, i)), [2.5e-4, 5e-4, 7.5e-4, 1e-3]);
  // Half-way through the decay (step 6 of 3..9) the cosine is at its midpoint.
  assert.ok(Math.abs(warmupCosine(s, 6) - (1e-5 + 0.5 * (1e-3 - 1e-5))) < 1e-12);
  assert.equal(warmupCosine(s, 9), 1e-5);
  assert.equal(warmupCosine(s, 50), 1e-5);
  for (let i = 4; i < 10; i++) assert.ok(warmupCosine(s, i) < warmupCosine(s, i - 1));
});

import assert from "node:assert/strict";
import { benchRow, formatRows } from "./rows.ts";

Deno.test("benchRow() rounds times and gives the peer's time over ours", () => {
  assert.deepEqual(benchRow("a", 100.04, 208.26, "cpu"), {
    name: "a",
    ours_ms: 100,
    peer_ms: 208.3,
    ratio: 2.082,
    backend: "cpu",
  });
  assert.deepEqual(benchRow("gpu", 0.31234, 1.65, "webgpu").ours_ms, 0.312);
  assert.equal(benchRow("b", 5, null, "cpu").ratio, null);
});

Deno.test("formatRows() aligns the columns and marks missing peers", () => {
  const lines = formatRows([benchRow("sae_topk_step", 0.5, 1.65, ""), benchRow("x", 12, null, "")]);
  assert.deepEqual(lines, [
    "case             ours ms    peer ms  ratio",
    "sae_topk_step      0.500      1.650  3.30",
    "x                   12.0          –  –",
  ]);
});

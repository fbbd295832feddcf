import assert from "node:assert/strict";
import { formatCount, formatDuration, LiveLog, Progress } from "./progress.ts";

Deno.test("formatDuration() picks seconds, minutes or hours", () => {
  assert.deepEqual([5, 125, 3725, -1, NaN].map(formatDuration), ["5s", "2m05s", "1h02m", "?", "?"]);
});

Deno.test("formatCount() abbreviates thousands and millions", () => {
  assert.deepEqual([950, 48_300, 2_500_000].map(formatCount), ["950", "48.3k", "2.50M"]);
});

Deno.test("Progress.report() prints the step, fields, rate and ETA", async () => {
  const lines: string[] = [];
  const p = new Progress(100, 0, 1000, "tok", (l) => lines.push(l));
  await new Promise((r) => setTimeout(r, 50));
  p.report(10, "loss 2.000");
  assert.match(lines[0]!, /^step {2}10\/100 \| loss 2\.000 \| [\d.]+k tok\/s \| ETA \d+s$/);
  // 10 steps of 1000 tokens in ≥ 50 ms: at most 200k tok/s, so 90 steps left take ≥ 0.45 s.
  assert.ok(p.rate <= 200_000 && p.rate > 0);
});

Deno.test("LiveLog on a terminal redraws one status line, cut to the width, under permanent lines", () => {
  let out = "";
  const live = new LiveLog({ tty: true, columns: 40, write: (s) => out += s });
  live.label = "[run 1/2]";
  live.status("evaluating 8 SAEs on 64 sequences (8192 tokens)");
  live.status("step 3/8 | 4.1k tok/s | ETA 2s");
  live.print("run 1/2 done");
  live.clear();
  assert.deepEqual(out.split("\r\x1b[2K"), [
    "",
    "[run 1/2] evaluating 8 SAEs on 64 sequ…",
    "[run 1/2] evaluating 8 SAEs on 64 sequ…",
    "run 1/2 done\n[run 1/2] evaluating 8 SAEs on 64 sequ…",
    "",
  ]);
});

Deno.test("LiveLog with verbose prints every line, details included", () => {
  let out = "";
  const live = new LiveLog({ tty: false, verbose: true, write: (s) => out += s });
  live.status("ablation curve a → b: 512 x 512 edges");
  live.status("  n=1: KL 0.5");
  live.status("  n=2: KL 0.4");
  assert.equal(out, "ablation curve a → b: 512 x 512 edges\n  n=1: KL 0.5\n  n=2: KL 0.4\n");
});

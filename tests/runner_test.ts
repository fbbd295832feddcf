/**
 * The runner end to end on a tiny model: a 2-run grid runs, lands in the database, is skipped
 * when run again, and reports; a killed grid resumes to the same rows.
 */
import assert from "node:assert/strict";
import { CHILD_ENV, cli, dataDir, MAIN, setUpTinyGrid as setUp } from "./testdata/tiny_grid.ts";

Deno.test({
  name: "run → plan → report → query on a tiny model, and a second run skips finished runs",
  ignore: dataDir === undefined,
  async fn() {
    const dir = await setUp();
    const first = await cli(dir, "run", "grid.yaml");
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /done\s+sae\.arch=topk seed=0/);
    assert.match(first.stdout, /done\s+sae\.arch=staircase seed=0/);
    const again = await cli(dir, "run", "grid.yaml");
    assert.match(again.stderr, /tiny-grid: 2 runs, 0 to run/);
    const plan = await cli(dir, "plan", "grid.yaml");
    assert.equal(plan.stdout.match(/ done /g)?.length, 2);
    const report = await cli(dir, "report", "grid.yaml");
    assert.match(report.stdout, /\| staircase \| n=1 \|/);
    const counts = await cli(
      dir,
      "query",
      "select (select count(*) from runs) as runs, (select count(*) from scalar_curves) > 0 as curves, " +
        "(select count(distinct sae) from train_log) as saes",
      "--format",
      "csv",
    );
    assert.equal(counts.stdout.trim(), "runs,curves,saes\n2,true,2");
    // Each run records its SAE stepper: the CPU engine on wasm (the tfjs reference where it cannot
    // start, e.g. without a C compiler).
    const steppers = await cli(
      dir,
      "query",
      "select distinct stepper from runs",
      "--format",
      "csv",
    );
    assert.match(steppers.stdout.trim(), /^stepper\n(cpu|tfjs)$/, steppers.stdout);
    // The Staircase diagnostics land with the pair metrics: for TopK's equal widths every active
    // downstream latent is in the "shared" chunk.
    const diagnostics = await cli(
      dir,
      "query",
      "select r.config->>'$.sae.arch' as arch, m.value from metrics m join runs r on r.id = m.run_id " +
        "where m.metric = 'shared_chunk_fraction' order by all",
      "--format",
      "csv",
    );
    const rows = diagnostics.stdout.trim().split("\n").slice(1).map((l) => l.split(","));
    assert.deepEqual(rows.map((r) => r[0]), ["staircase", "topk"], diagnostics.stdout);
    assert.ok(Number(rows[0]![1]) >= 0 && Number(rows[0]![1]) <= 1, diagnostics.stdout);
    assert.equal(rows[1]![1], "1");
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "a grid killed mid-run resumes to the same rows as an uninterrupted one",
  ignore: dataDir === undefined,
  async fn() {
    const dir = await setUp();
    // Kill the first attempt as soon as its first run is marked running (--verbose: piped output
    // shows training steps only then).
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "run", "grid.yaml", "--verbose"],
      cwd: dir,
      env: CHILD_ENV,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const reader = child.stderr.getReader();
    let seen = "";
    while (!/step\s+3\/6/.test(seen)) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    const resumed = await cli(dir, "run", "grid.yaml");
    assert.equal(resumed.code, 0, resumed.stderr);
    const rows = await cli(
      dir,
      "query",
      "select status, count(*) as n from runs group by status order by status",
      "--format",
      "csv",
    );
    assert.equal(rows.stdout.trim(), "status,n\ndone,2");
    const dupes = await cli(
      dir,
      "query",
      "select count(*) as n from (select run_id, sae, metric, count(*) c from metrics group by all having c > 1)",
      "--format",
      "csv",
    );
    assert.equal(dupes.stdout.trim(), "n\n0");
    // The same numbers as a grid that was never interrupted (timings aside).
    const straight = await setUp();
    assert.equal((await cli(straight, "run", "grid.yaml")).code, 0);
    const sql =
      "select run_id, sae, metric, value from metrics where metric not like 'train_%' and metric not like '%seconds' " +
      "union all select run_id, pair, 'kl', kl_model from scalar_curves order by all";
    const [a, b] = await Promise.all(
      [dir, straight].map((d) => cli(d, "query", sql, "--format", "csv")),
    );
    assert.ok(a!.stdout.split("\n").length > 50);
    assert.equal(a!.stdout, b!.stdout);
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(straight, { recursive: true });
  },
});

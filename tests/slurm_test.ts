/**
 * A grid through a real Slurm cluster that the test starts in a temporary folder: the smoke
 * grid's shape (TopK vs Staircase at the feed-forward block) on the tiny model, submitted with
 * `--slurm`, gives the same tables as a local run; a task cancelled mid-run leaves its run
 * pending and a second `--slurm` finishes the grid without duplicates; shards merged twice
 * change nothing; foreign and corrupt shards are refused by name.
 */
import assert from "node:assert/strict";
import { openStore } from "../lib/store/db.ts";
import { listShards, shardDir } from "../lib/store/shards.ts";
import { readSubmissions, type Submission } from "../lib/slurm/submission.ts";
import { RUN_TABLES } from "../lib/store/write.ts";
import {
  type SlurmCluster,
  slurmUnavailable,
  startSlurmCluster,
} from "./testdata/slurm_cluster.ts";
import { cli, dataDir, setUpTinyGrid } from "./testdata/tiny_grid.ts";

const DB = "results/scalar.duckdb";
const unavailable = dataDir === undefined
  ? "SCALAR_DATA_DIR is not set (the runs read tinyshakespeare)"
  : await slurmUnavailable();
if (unavailable) console.error(`tests/slurm_test.ts: skipping the Slurm tests: ${unavailable}`);

/** Timing metrics differ from run to run; everything else must not. */
const TIMINGS = ["train_seconds", "train_tokens_per_second", "attribution_seconds"];

/** Every result row of a database, by table, in a fixed order (timings and times left out). */
async function tables(dir: string): Promise<Record<string, unknown[][]>> {
  const store = await openStore(`${dir}/${DB}`, { readOnly: true });
  try {
    const out: Record<string, unknown[][]> = {};
    for (const table of RUN_TABLES) {
      const sql = table === "runs"
        ? "select id, experiment, manifest_path, config::varchar, varied::varchar, seed, status, " +
          "error, backend from runs order by id"
        : table === "metrics"
        ? `select * from metrics where metric not in (${
          TIMINGS.map((m) => `'${m}'`).join(", ")
        }) order by all`
        : `select * from ${table} order by all`;
      out[table] = (await store.connection.runAndReadAll(sql)).getRowsJS();
    }
    return out;
  } finally {
    store.close();
  }
}

/** Asserts two databases' tables are equal, numbers within 1e-6 (relative beyond 1). */
function assertSameTables(a: Record<string, unknown[][]>, b: Record<string, unknown[][]>) {
  for (const table of RUN_TABLES) {
    const [ra, rb] = [a[table]!, b[table]!];
    assert.equal(ra.length, rb.length, `${table}: row counts`);
    ra.forEach((row, i) =>
      row.forEach((x, j) => {
        const y = rb[i]![j];
        if (typeof x === "number" && typeof y === "number") {
          const ok = x === y || (Number.isNaN(x) && Number.isNaN(y)) ||
            Math.abs(x - y) <= 1e-6 * Math.max(1, Math.abs(x), Math.abs(y));
          assert.ok(ok, `${table} row ${i} column ${j}: ${x} vs ${y}`);
        } else assert.deepEqual(x, y, `${table} row ${i} column ${j}`);
      })
    );
  }
}

/** The latest submission of the tiny grid in a folder. */
async function latestSubmission(dir: string): Promise<Submission> {
  const all = await readSubmissions(`${dir}/${DB}`, "tiny-grid");
  assert.ok(all.length > 0, "a submission was recorded");
  return all.at(-1)!;
}

/** Waits until Slurm holds none of a submission's jobs. */
async function waitForJobs(cluster: SlurmCluster, s: Submission, timeoutMs = 300_000) {
  const deadline = Date.now() + timeoutMs;
  while ((await cluster.command("squeue", "-h", "-j", `${s.prepareJob},${s.arrayJob}`)).trim()) {
    if (Date.now() > deadline) throw new Error(`jobs ${s.prepareJob}, ${s.arrayJob} still queued`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Run ids and statuses in a folder's database, from `query` (which merges shards first). */
async function statuses(dir: string): Promise<string> {
  const out = await cli(dir, "query", "select id, status from runs order by id", "--format", "csv");
  assert.equal(out.code, 0, out.stderr);
  return out.stdout.trim();
}

Deno.test({
  name: "a grid on a real Slurm cluster: same tables as a local run, cancel and resubmit, merges",
  ignore: unavailable !== undefined,
  async fn(t) {
    const cluster = await startSlurmCluster();
    const dirs: string[] = [];
    // Every Slurm command of the children (and of the jobs, which inherit it) finds this cluster.
    Deno.env.set("SLURM_CONF", cluster.env.SLURM_CONF!);
    try {
      await t.step("the smoke grid's shape through --slurm equals a local run", async () => {
        const [local, slurm] = [await setUpTinyGrid(), await setUpTinyGrid()];
        dirs.push(local, slurm);
        let t0 = performance.now();
        const run = await cli(local, "run", "grid.yaml");
        assert.equal(run.code, 0, run.stderr);
        const localSeconds = (performance.now() - t0) / 1000;

        t0 = performance.now();
        const submitted = await cli(slurm, "run", "grid.yaml", "--slurm", "--max-parallel", "2");
        assert.equal(submitted.code, 0, submitted.stderr);
        const s = await latestSubmission(slurm);
        assert.match(
          submitted.stdout,
          new RegExp(`job ${s.prepareJob} prepares .* job array ${s.arrayJob} runs 2 runs`),
        );
        assert.match(submitted.stdout, new RegExp(`squeue -j ${s.prepareJob},${s.arrayJob}`));
        // The scripts stay beside the results, readable.
        const script = await Deno.readTextFile(`${s.folder}/array.sbatch`);
        assert.match(script, /^#SBATCH --array=0-1%2$/m);
        assert.equal(await Deno.readTextFile(`${s.folder}/runs.txt`), s.runs.join("\n") + "\n");

        // Before the prepare job has finished, both runs wait in the queue for it.
        const plan = await cli(slurm, "plan", "grid.yaml");
        assert.equal(plan.code, 0, plan.stderr);
        for (const [i, id] of s.runs.entries()) {
          assert.match(
            plan.stdout,
            new RegExp(`${id}  pending  (queued|running) ${s.arrayJob}_${i}`),
            plan.stdout,
          );
        }

        await waitForJobs(cluster, s);
        const slurmSeconds = (performance.now() - t0) / 1000;
        const shards = await listShards(shardDir(`${slurm}/${DB}`));
        assert.equal(shards.length, 2, "one shard per array task");
        const copies = await Promise.all(shards.map((f) => Deno.readFile(f)));
        const log = await Deno.readTextFile(`${s.folder}/logs/${s.arrayJob}_0.out`);
        assert.match(log, /activation cache: reusing/, "the prepare job filled the cache");

        const report = await cli(slurm, "report", "grid.yaml");
        assert.equal(report.code, 0, report.stderr);
        assert.match(report.stderr, /merged 2 shards/);
        assert.match(report.stdout, /\| staircase \| n=1 \|/);
        assert.deepEqual(await listShards(shardDir(`${slurm}/${DB}`)), []);
        const merged = await tables(slurm);
        assertSameTables(merged, await tables(local));
        assert.ok(merged.scalar_curves!.length > 20);
        console.log(
          `tiny smoke-shaped grid (2 runs): local ${localSeconds.toFixed(1)} s, through Slurm ` +
            `${slurmSeconds.toFixed(1)} s (submit to last task done)`,
        );

        // The same shards merged again change nothing.
        await Promise.all(shards.map((f, i) => Deno.writeFile(f, copies[i]!)));
        const again = await cli(slurm, "merge");
        assert.equal(again.code, 0, again.stderr);
        assert.match(again.stderr, /merged 2 shards/);
        assert.deepEqual(await tables(slurm), merged);

        // A shard of another experiment, and a corrupt one: named, nothing of them merged.
        const [foreignId, corruptId] = ["f00000000000", "c00000000000"];
        const foreign = await openStore(`${slurm}/results/shards/${foreignId}.duckdb`);
        await foreign.connection.run(
          `insert into runs (id, experiment, config, varied, seed, status)
           values ('${foreignId}', 'another-grid', '{}', '{}', 0, 'done')`,
        );
        foreign.close();
        await Deno.writeFile(
          `${slurm}/results/shards/${corruptId}.duckdb`,
          copies[0]!.slice(0, 8192),
        );
        const refused = await cli(slurm, "merge", "grid.yaml");
        assert.equal(refused.code, 1);
        assert.match(
          refused.stderr,
          new RegExp(
            `shards/${foreignId}\\.duckdb": it holds run "${foreignId}" of experiment ` +
              `"another-grid", not of "tiny-grid"`,
          ),
        );
        assert.match(
          refused.stderr,
          new RegExp(`shards/${corruptId}\\.duckdb": it is not a readable`),
        );
        assert.deepEqual(await tables(slurm), merged);
        assert.equal((await listShards(shardDir(`${slurm}/${DB}`))).length, 2);
      });

      await t.step(
        "a task cancelled mid-run leaves its run pending; --slurm again completes it",
        async () => {
          // Long enough training that the cancel lands inside it.
          const dir = await setUpTinyGrid({ steps: 600 });
          dirs.push(dir);
          const submitted = await cli(dir, "run", "grid.yaml", "--slurm");
          assert.equal(submitted.code, 0, submitted.stderr);
          const s = await latestSubmission(dir);
          const log = `${s.folder}/logs/${s.arrayJob}_1.out`;
          const deadline = Date.now() + 120_000;
          while (!/step\s+\d+\/600/.test(await Deno.readTextFile(log).catch(() => ""))) {
            assert.ok(Date.now() < deadline, "task 1 started training");
            await new Promise((r) => setTimeout(r, 100));
          }
          await cluster.command("scancel", `${s.arrayJob}_1`);
          await waitForJobs(cluster, s);
          assert.doesNotMatch(await Deno.readTextFile(log), /done\s+sae\.arch/);
          const [done, cancelled] = s.runs;

          // The cancelled run has no rows; its shard stays (incomplete); it is pending again.
          assert.equal(await statuses(dir), `id,status\n${done},done`);
          const left = await listShards(shardDir(`${dir}/${DB}`));
          assert.deepEqual(left.map((f) => f.split("/").at(-1)), [`${cancelled}.duckdb`]);
          const plan = await cli(dir, "plan", "grid.yaml");
          assert.match(plan.stdout, new RegExp(`${cancelled}  pending  sae\\.arch=staircase`));
          assert.match(plan.stdout, new RegExp(`${done}  done     sae\\.arch=topk`));

          const resubmitted = await cli(dir, "run", "grid.yaml", "--slurm");
          assert.equal(resubmitted.code, 0, resubmitted.stderr);
          assert.match(resubmitted.stderr, /tiny-grid: 2 runs, 1 to run/);
          const second = await latestSubmission(dir);
          assert.deepEqual(second.runs, [cancelled]);
          await waitForJobs(cluster, second);
          assert.equal(
            await statuses(dir),
            `id,status\n${[done, cancelled].sort().map((id) => `${id},done`).join("\n")}`,
          );
          const dupes = await cli(
            dir,
            "query",
            "select (select count(*) from runs) as runs, (select count(*) from (select run_id, sae, " +
              "metric from metrics group by all having count(*) > 1)) as dupes",
            "--format",
            "csv",
          );
          assert.equal(dupes.stdout.trim(), "runs,dupes\n2,0");
        },
      );
    } finally {
      Deno.env.delete("SLURM_CONF");
      await cluster.stop();
      for (const d of dirs) await Deno.remove(d, { recursive: true });
    }
  },
});

Deno.test("run's Slurm and run-id options are checked before anything starts", async () => {
  const dir = await setUpTinyGrid();
  try {
    const cases: [string[], RegExp][] = [
      [["--partition", "gpu"], /run: --partition only applies with --slurm/],
      [["--slurm", "--max-parallel", "0"], /--max-parallel must be a positive integer, got "0"/],
      [
        ["--run-id", "000000000000"],
        /--run-id 000000000000: no such run in the grid of grid\.yaml/,
      ],
    ];
    for (const [args, message] of cases) {
      const out = await cli(dir, "run", "grid.yaml", ...args);
      assert.equal(out.code, 2, out.stderr);
      assert.match(out.stderr, message);
    }
    assert.deepEqual(await readSubmissions(`${dir}/${DB}`, "tiny-grid"), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The GPU call of issue 15 end to end on this machine's WebGPU adapter (Mesa's llvmpipe here), so
 * that it cannot fail on a typo when a GPU is lent: `gpu/prepare.sh --skip-download` bundles the
 * programs into a temporary folder (the apt download, the Deno binary and the DuckDB cache are
 * left out: they were checked by hand, see the README's GPU section), then its `run.sh` runs all
 * five steps with tiny sizes, and what lands in `$OUT` is checked: the summary, the log, the
 * bench rows, the SCALAR pair timings, the shards (merged here into a fresh database), the GPT-2
 * projection. A second call checks that a step that fails or runs out of time is recorded and
 * the call goes on.
 *
 * Skipped, saying why, when there is no WebGPU adapter at all.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { requestGpu } from "../lib/sae/gpu/device.ts";
import { CHAR_TINY, saveRandomToyModel } from "../lib/model/testdata/tiny_gpt.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const gpu = await requestGpu();
const skip = typeof gpu === "string" ? `GPU call test skipped: ${gpu}` : undefined;
if (skip) console.log(skip);

/** Runs a command in the checkout's root; its output goes to the test's log on failure. */
async function sh(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(args[0]!, {
    args: args.slice(1),
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

const jsonLines = async (file: string) =>
  (await Deno.readTextFile(file)).trim().split("\n").map((l) => JSON.parse(l));

interface StepOutcome {
  step: string;
  status: string;
  exit: number;
  seconds: number;
}

async function tinyGrid(dir: string): Promise<string> {
  await saveRandomToyModel(join(dir, "model"), CHAR_TINY, 3);
  // A corpus of 40,000 characters: the activation cache of the whole of Tiny Shakespeare takes
  // minutes through tfjs webgpu on llvmpipe.
  const text = await Deno.readTextFile(join(ROOT, "data/tinyshakespeare.txt"));
  await Deno.writeTextFile(join(dir, "text.txt"), text.slice(0, 40_000));
  const manifest = join(dir, "grid.yaml");
  await Deno.writeTextFile(
    manifest,
    `name: gpu-call-tiny
model: { kind: toy, checkpoint: ${join(dir, "model")} }
data: { path: ${join(dir, "text.txt")} }
position: mlp-block
sae: { arch: topk, features: 16, k: 2 }
train: { steps: 4, batch: 4, warmup: 1, log_every: 2, checkpoint_every: 4 }
eval: { sequences: 4 }
scalar: { ig_steps: 2, ig_batches: 1, ig_batch_size: 2, prompts: 2, bootstrap: 20 }
seeds: [0]
matrix:
  sae.arch: [topk, staircase]
`,
  );
  return manifest;
}

Deno.test({
  name: "the GPU call prepares, runs its five steps with tiny sizes and leaves what merge imports",
  ignore: skip !== undefined,
  sanitizeResources: false,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "scalar-gpu-call-" });
    try {
      const prepared = await sh([
        "bash",
        "gpu/prepare.sh",
        "--skip-download",
        "--out",
        `${tmp}/gpu`,
      ]);
      assert.equal(prepared.code, 0, prepared.stderr);
      for (const f of ["tests.js.xz", "gpu.js.xz", "main.js.xz", "deno.json", "run.sh"]) {
        assert.ok((await Deno.stat(`${tmp}/gpu/${f}`)).size > 0, f);
      }
      await Deno.mkdir(`${tmp}/work`);
      const out = `${tmp}/out`;
      const call = await sh(["bash", `${tmp}/gpu/run.sh`], {
        OUT: out,
        GPU_CALL_TINY: "1",
        GPU_CALL_CAPS: "300 300 300 600 300",
        GPU_CALL_MANIFEST: await tinyGrid(`${tmp}/work`),
        GPU_CALL_WORKDIR: `${tmp}/work`,
        GPU_CALL_TEST_FILTER: "two grid dimensions",
        GPU_CALL_GPT2_STEPS: "4",
      });
      assert.equal(call.code, 0, call.stderr);
      const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
      const steps = summary.steps as StepOutcome[];
      assert.deepEqual(
        steps.map((s) => [s.step.replace(/[0-9a-f]{12}$/, "ID"), s.status]),
        [
          ["tests", "ok"],
          ["bench", "ok"],
          ["scalar", "ok"],
          ["grid-prepare", "ok"],
          ["grid-run-ID", "ok"],
          ["grid-run-ID", "ok"],
          ["gpt2", "ok"],
        ],
        await Deno.readTextFile(`${out}/call.log`),
      );
      assert.equal(summary.tiny, true);
      const log = await Deno.readTextFile(`${out}/call.log`);
      assert.match(log, /1 passed/); // the filtered GPU test ran on the adapter
      // bench: the engine's step, timed in two rounds (no CUDA peer here: no ratio)
      const [bench] = await jsonLines(`${out}/bench.jsonl`);
      assert.equal(bench.name, "sae_topk_step");
      assert.ok(bench.ours_ms > 0);
      assert.match(bench.backend, /median of 2 rounds interleaved with the peer/);
      const scalar = await jsonLines(`${out}/scalar.jsonl`);
      assert.deepEqual(scalar.map((r) => r.name), ["scalar_pair mlp-block", "scalar_pair block"]);
      assert.ok(scalar.every((r) => r.attributionMs > 0 && r.ablationMs > 0));
      // The shards merge into a fresh database here, as `deno task merge` does after the call.
      await Deno.mkdir(`${tmp}/merge`);
      const untar = await sh(["tar", "-xf", `${out}/shards.tar.gz`, "-C", `${tmp}/merge`]);
      assert.equal(untar.code, 0, untar.stderr);
      const db = `${tmp}/merge/scalar.duckdb`;
      const merged = await sh(["deno", "run", "-A", "main.ts", "merge", "--db", db]);
      assert.equal(merged.code, 0, merged.stderr);
      assert.match(merged.stderr, /merged 2 shards/);
      const query = await sh([
        "deno",
        "run",
        "-A",
        "main.ts",
        "query",
        "select experiment, status, count(*) as n from runs group by all",
        "--db",
        db,
        "--format",
        "json",
      ]);
      assert.equal(query.code, 0, query.stderr);
      assert.deepEqual(JSON.parse(query.stdout), [
        { experiment: "gpu-call-tiny", status: "done", n: 2 },
      ]);
      const gpt2 = await jsonLines(`${out}/gpt2.jsonl`);
      assert.equal(gpt2[0].name, "gpt2_sae_step");
      assert.ok(gpt2[0].stepMs > 0);
      assert.deepEqual(
        gpt2.slice(1).map((p) => `${p.manifest} ${p.arch}`),
        [
          "experiments/gpt2-mlp.yaml topk",
          "experiments/gpt2-mlp.yaml staircase",
          "experiments/gpt2-block.yaml topk",
          "experiments/gpt2-block.yaml staircase",
        ],
      );
      assert.ok(gpt2.slice(1).every((p) => p.totalSeconds > p.trainSeconds && p.trainSeconds > 0));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "a GPU call step that fails or outruns its cap is recorded, and the call goes on",
  ignore: skip !== undefined,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "scalar-gpu-call-" });
    try {
      // run.sh and stand-ins for the bundles: one that outlives its cap, one that fails.
      await Deno.mkdir(`${tmp}/gpu`);
      await Deno.copyFile(join(ROOT, "gpu/run.sh"), `${tmp}/gpu/run.sh`);
      await Deno.writeTextFile(`${tmp}/gpu/deno.json`, "{}");
      await Deno.writeTextFile(
        `${tmp}/gpu/gpu.js`,
        "await new Promise((r) => setTimeout(r, 60_000));",
      );
      await Deno.writeTextFile(`${tmp}/gpu/main.js`, 'throw new Error("no such manifest");');
      await Deno.mkdir(`${tmp}/gpu/vega`);
      const xz = await sh(["xz", "-f", `${tmp}/gpu/gpu.js`, `${tmp}/gpu/main.js`]);
      assert.equal(xz.code, 0, xz.stderr);
      const call = await sh(["bash", `${tmp}/gpu/run.sh`], {
        OUT: `${tmp}/out`,
        GPU_CALL_TINY: "1",
        GPU_CALL_CAPS: "1 1 1 30 1",
        GPU_CALL_STEPS: "3 4",
        GPU_CALL_MANIFEST: join(ROOT, "experiments/smoke.yaml"),
        GPU_CALL_WORKDIR: tmp,
      });
      assert.equal(call.code, 0, call.stderr);
      const { steps } = JSON.parse(await Deno.readTextFile(`${tmp}/out/summary.json`));
      assert.deepEqual(
        (steps as StepOutcome[]).map((s) => [s.step, s.status, s.exit]),
        [["scalar", "timeout", 124], ["grid-prepare", "failed", 1]],
      );
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

/**
 * `bench`: times the project's training steps against a PyTorch peer and against stock tfjs, all
 * in one run on the same machine, and prints ratios (never absolute targets: machines differ).
 *
 * Each configuration runs in its own child process, because tfjs kernels are process-global and a
 * configuration's memory should not linger into the next. `--gpu` runs the GPU bench instead
 * (`lib/bench/gpu_bench.ts`).
 *
 * @module
 */
import { describeBackend, selectBackend, useStockBackend } from "../backend/select.ts";
import { attributionBatched, attributionReference } from "../bench/attribution_case.ts";
import { type BenchCase, gptTrainStep, saeTopkStep, timeCase } from "../bench/cases.ts";
import { GPU_CONFIGS, gpuBench, type GpuConfig, runGpuConfig } from "../bench/gpu_bench.ts";
import { torchPeer } from "../bench/peer.ts";
import { benchRow, formatRows } from "../bench/rows.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";

/** One timed row. */
interface Timing {
  name: string;
  config: string;
  ms: number;
  detail: string;
  /** A baseline timed in the same process instead of the PyTorch peer (e.g. a slow reference). */
  baselineMs?: number;
}

const CONFIGS = {
  ours: { cases: [saeTopkStep, gptTrainStep], label: "" },
  attribution: { cases: [], label: " (vs per-target loop)" },
  "stock-cpu": { cases: [saeTopkStep], label: " (stock tfjs cpu)" },
  "stock-wasm": { cases: [saeTopkStep], label: " (stock tfjs wasm)" },
} as const;
type Config = keyof typeof CONFIGS;

/** Runs one configuration in this process and prints its timings as JSON lines. */
async function runConfig(config: Config, reps: number): Promise<void> {
  let backend: string;
  if (config === "ours" || config === "attribution") {
    const selected = await selectBackend("auto");
    console.error(describeBackend(selected));
    backend = selected.detail;
  } else {
    // Stock tfjs: the backend as tfjs ships it, none of the project's kernels registered.
    const name = config === "stock-cpu" ? "cpu" : "wasm";
    await useStockBackend(name);
    backend = `${name} (stock tfjs)`;
  }
  if (config === "attribution") {
    // Both sides are ours: the batched attribution against the reference's per-target loop, each
    // timed on a sample and scaled to the whole pair.
    const [fast, slow] = [attributionBatched(0), attributionReference(0)];
    const [f, s] = [await timeCase(fast, 1, 1), await timeCase(slow, 1, 1)];
    const row: Timing = {
      name: fast.name,
      config,
      ms: f.medianMs * fast.timeScale,
      baselineMs: s.medianMs * slow.timeScale,
      detail: `${fast.detail}; reference: ${slow.detail}; ${backend}`,
    };
    console.log(JSON.stringify(row));
    fast.dispose();
    slow.dispose();
    return;
  }
  for (const make of CONFIGS[config].cases) {
    const c: BenchCase = make(0);
    const { medianMs } = await timeCase(c, reps);
    c.dispose();
    const row: Timing = { name: c.name, config, ms: medianMs, detail: `${c.detail}; ${backend}` };
    console.log(JSON.stringify(row));
  }
}

async function childTimings(config: Config, reps: number): Promise<Timing[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../../main.ts", import.meta.url).pathname,
      "bench",
      "--only",
      config,
      "--reps",
      String(reps),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`Cannot time configuration "${config}": its process failed`);
  return new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
}

const PEER_SCRIPT = new URL("../../tests/bench/peer_torch.py", import.meta.url).pathname;

async function peerTimings(reps: number): Promise<Map<string, number>> {
  const peer = await torchPeer(PEER_SCRIPT, ["--reps", String(reps)]);
  if (typeof peer !== "string") return peer;
  console.error(`peer skipped: ${peer}`);
  return new Map();
}

/** The `bench` command. */
export const benchCommand: Command = {
  summary: "time SAE and GPT training steps against PyTorch and stock tfjs (ratios)",
  help: `Usage: deno task bench [--json] [--reps N] [--gpu [--run-steps N]]

Times, in one run on this machine: (a) a TopK SAE training step (16,384 tokens × d 64 → 512
features, k 10, AdamW), (b) a toy-GPT training step (32 × 128 tokens), (c) stock tfjs cpu and
wasm on (a), the PyTorch peer (tests/bench/peer_torch.py, when python3 has torch) on (a) and
(b), and (d) SCALAR edge attribution of one toy mlp-block pair (512 × 512, 24 × 24 sequences,
4 steps) batched against the reference's per-target loop (both sampled and scaled to the whole
pair). Prints median step times and ratio = baseline_ms / ours_ms (above 1: we are faster).

With --gpu, on the WebGPU adapter instead: (a) through the GPU engine (lib/sae/gpu/) and through
stock tfjs webgpu, (b) on stock tfjs webgpu, both against PyTorch CUDA (peer_torch.py --device
cuda, when python3 has CUDA torch), (d) batched on stock tfjs webgpu (GPUs only), and the wall
time of a toy SAE training run (7,500 steps of 128 × 128 tokens) at each position through the
engine. A software adapter (llvmpipe) runs it for correctness and says so.

Options:
  --json          one JSON object per row: name, ours_ms, peer_ms, ratio, backend
  --reps N        timed steps per case after warm-up (default 5)
  --gpu           the GPU bench
  --run-steps N   (--gpu) steps per training run, scaled to 7,500 (default 7,500; 1 on a
                  software adapter)
  -h, --help      show this help`,
  async run(args) {
    const { values } = parseCommandArgs(args, {
      json: { type: "boolean" },
      reps: { type: "string" },
      only: { type: "string" },
      gpu: { type: "boolean" },
      "run-steps": { type: "string" },
    });
    const reps = Number(values.reps ?? 5);
    if (!Number.isInteger(reps) || reps < 1) {
      throw new UsageError(`--reps must be ≥ 1, got "${values.reps}"`);
    }
    const runSteps = values["run-steps"] === undefined ? undefined : Number(values["run-steps"]);
    if (runSteps !== undefined && !(Number.isInteger(runSteps) && runSteps >= 1)) {
      throw new UsageError(`--run-steps must be ≥ 1, got "${values["run-steps"]}"`);
    }
    if (values.gpu) {
      if (values.only === undefined) {
        return await gpuBench({
          reps,
          runSteps,
          json: values.json === true,
          childArgs: [
            "run",
            "-A",
            new URL("../../main.ts", import.meta.url).pathname,
            "bench",
            "--gpu",
          ],
          peerScript: PEER_SCRIPT,
        });
      }
      if (!(GPU_CONFIGS as readonly string[]).includes(values.only)) {
        throw new UsageError(`unknown GPU configuration "${values.only}"`);
      }
      await runGpuConfig(values.only as GpuConfig, reps, runSteps ?? 1);
      return 0;
    }
    if (values.only !== undefined) {
      if (!(values.only in CONFIGS)) throw new UsageError(`unknown configuration "${values.only}"`);
      await runConfig(values.only as Config, reps);
      return 0;
    }
    const timings: Timing[] = [];
    for (const config of Object.keys(CONFIGS) as Config[]) {
      console.error(`timing ${config}…`);
      timings.push(...await childTimings(config, reps));
    }
    console.error("timing the PyTorch peer…");
    const peer = await peerTimings(reps);
    const rows = timings.map((t) =>
      benchRow(
        t.name + CONFIGS[t.config as Config].label,
        t.ms,
        t.baselineMs ?? peer.get(t.name),
        t.detail,
      )
    );
    if (values.json) {
      for (const r of rows) console.log(JSON.stringify(r));
      return 0;
    }
    for (const line of formatRows(rows)) console.log(line);
    const ours = timings.find((t) => t.config === "ours" && t.name === "sae_topk_step")!;
    const stock = timings.filter((t) => t.config.startsWith("stock-"));
    console.log(
      `speed-up of ours over stock tfjs on sae_topk_step: ` +
        stock.map((t) => `${t.config.replace("stock-", "")} ${(t.ms / ours.ms).toFixed(1)}×`).join(
          ", ",
        ),
    );
    console.log(`ours: ${ours.detail}`);
    return 0;
  },
};

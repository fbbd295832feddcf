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
import {
  attributionBatched,
  attributionPaper,
  attributionReference,
} from "../bench/attribution_case.ts";
import { type BenchCase, gptTrainStep, SAE_CASE, saeTopkStep, timeCase } from "../bench/cases.ts";
import {
  cpuEngineStep,
  ENGINE_CASES,
  engineEncoderProduct,
  sgemmCeiling,
} from "../bench/engine_cases.ts";
import { timeInterleaved } from "../bench/interleave.ts";
import { GPU_CONFIGS, gpuBench, type GpuConfig, runGpuConfig } from "../bench/gpu_bench.ts";
import { servePeer } from "../bench/peer.ts";
import { benchRow, formatRows } from "../bench/rows.ts";
import { scalarStages } from "../bench/scalar_stages.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";

/** One timed row. */
interface Timing {
  name: string;
  config: string;
  ms: number;
  detail: string;
  /** A baseline timed in the same process instead of the PyTorch peer (e.g. a slow reference). */
  baselineMs?: number;
  /** The peer timed interleaved with ours (null: the peer has no such case or did not run). */
  peerMs?: number | null;
  /** The median of the interleaved repetitions' peer / ours ratios. */
  ratio?: number | null;
}

const CONFIGS = {
  engine: { cases: [], label: "" },
  "engine-1thread": { cases: [], label: " (1 thread)" },
  model: { cases: [], label: "" },
  attribution: { cases: [], label: " (vs per-target loop)" },
  scalar: { cases: [], label: " (vs its floor)" },
  "stock-cpu": { cases: [saeTopkStep], label: " (stock tfjs cpu)" },
  "stock-wasm": { cases: [saeTopkStep], label: " (stock tfjs wasm)" },
} as const;
type Config = keyof typeof CONFIGS;

// The child environment of a configuration: one thread for OpenMP and OpenBLAS in engine-1thread.
const ONE_THREAD = { OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1" };

/**
 * The CPU SAE engine's steps interleaved with the PyTorch peer's (A B A B), and the sgemm
 * ceiling and the engine's encoder product in the same rounds; prints JSON lines.
 */
async function runEngineConfig(config: Config, reps: number): Promise<void> {
  // The peer gets as many threads as we use: torch's default here is 1 on 2 cores.
  const threads = config === "engine-1thread" ? "1" : String(navigator.hardwareConcurrency);
  const peer = await servePeer(PEER_SCRIPT, ["--threads", threads]);
  if (typeof peer === "string") console.error(`peer skipped: ${peer}`);
  const cases = [
    sgemmCeiling(),
    await engineEncoderProduct(),
    ...await Promise.all(ENGINE_CASES.map((name) => cpuEngineStep(name))),
  ];
  const rows = await timeInterleaved(
    cases,
    typeof peer === "string" ? undefined : peer,
    [...ENGINE_CASES, "sgemm_ceiling"],
    reps,
  );
  if (typeof peer !== "string") await peer.close();
  for (const c of cases) c.dispose();
  for (const r of rows) {
    const row: Timing = {
      name: r.name,
      config,
      ms: r.oursMs,
      peerMs: r.peerMs,
      ratio: r.ratio,
      detail: r.detail,
    };
    console.log(JSON.stringify(row));
  }
}

/** The model-side cases the peer serves too, in `model`'s rows. */
const MODEL_CASES = ["gpt_train_step", "attribution_mlp_block", "attribution_block"];

/**
 * The toy-GPT training step and one mlp-block and one block pair's attribution at the paper's
 * settings, interleaved with the PyTorch peer (its threads = this machine's cores, as ours use);
 * attribution rows are scaled to the whole pair. Prints JSON lines.
 */
async function runModelConfig(reps: number): Promise<void> {
  const selected = await selectBackend("auto");
  console.error(describeBackend(selected));
  const threads = String(navigator.hardwareConcurrency);
  const peer = await servePeer(PEER_SCRIPT, ["--threads", threads]);
  if (typeof peer === "string") console.error(`peer skipped: ${peer}`);
  const gpt = gptTrainStep(0);
  const attribution = [attributionPaper("mlp-block"), attributionPaper("block")];
  const server = typeof peer === "string" ? undefined : peer;
  // Attribution steps take tens of seconds: a third of the repetitions (at least 2), 1 warm-up.
  const rows = [
    ...await timeInterleaved([gpt], server, MODEL_CASES, reps),
    ...await timeInterleaved(attribution, server, MODEL_CASES, Math.max(2, Math.ceil(reps / 3)), 1),
  ];
  if (server !== undefined) await server.close();
  for (const c of [gpt, ...attribution]) c.dispose();
  for (const r of rows) {
    const scale = attribution.find((c) => c.name === r.name)?.timeScale ?? 1;
    const row: Timing = {
      name: r.name,
      config: "model",
      ms: r.oursMs * scale,
      peerMs: r.peerMs === null ? null : r.peerMs * scale,
      ratio: r.ratio,
      detail: `${r.detail}; ${selected.detail}; peer ${threads} threads`,
    };
    console.log(JSON.stringify(row));
  }
}

/**
 * SCALAR's stages on one toy mlp-block and one block pair at the paper's settings, each against
 * its floor: FLOPs at the sgemm ceiling measured in the same process (ranking: a native sort).
 * Prints JSON lines.
 */
async function runScalarConfig(reps: number): Promise<void> {
  const selected = await selectBackend("auto");
  console.error(describeBackend(selected));
  const ceiling = sgemmCeiling();
  const { medianMs } = await timeCase(ceiling, reps);
  ceiling.dispose();
  const { tokens, d, features } = SAE_CASE;
  const flopsPerMs = (2 * tokens * d * features) / medianMs;
  for (const position of ["mlp-block", "block"] as const) {
    for (const stage of await scalarStages(position)) {
      const row: Timing = {
        name: stage.name,
        config: "scalar",
        ms: stage.ms,
        baselineMs: stage.floorMs ?? stage.flops / flopsPerMs,
        detail: `${stage.detail}; floor ${(stage.flops / 1e9).toFixed(1)} GFLOP at the sgemm ` +
          `ceiling ${(flopsPerMs / 1e6).toFixed(0)} GFLOP/s; ${selected.detail}`,
      };
      console.log(JSON.stringify(row));
    }
  }
}

/** Runs one configuration in this process and prints its timings as JSON lines. */
async function runConfig(config: Config, reps: number): Promise<void> {
  if (config === "engine" || config === "engine-1thread") {
    return await runEngineConfig(config, reps);
  }
  if (config === "model") return await runModelConfig(reps);
  if (config === "scalar") return await runScalarConfig(reps);
  let backend: string;
  if (config === "attribution") {
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
    env: config === "engine-1thread" ? ONE_THREAD : {},
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`Cannot time configuration "${config}": its process failed`);
  return new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
}

const PEER_SCRIPT = new URL("../../tests/bench/peer_torch.py", import.meta.url).pathname;

// Each engine configuration's sgemm ceiling, its encoder product's share of it, and each step's
// time in units of the ceiling.
function ceilingLines(timings: readonly Timing[]): string[] {
  const { tokens, d, features } = SAE_CASE;
  const gflop = (2 * tokens * d * features) / 1e9;
  return (["engine", "engine-1thread"] as const).flatMap((config) => {
    const row = (name: string) => timings.find((t) => t.config === config && t.name === name);
    const of = (name: string) => row(name)?.ms;
    const [ceiling, product] = [of("sgemm_ceiling"), of("sae_encoder_product")];
    if (ceiling === undefined || product === undefined) return [];
    const steps = ENGINE_CASES.map((n) => `${n} ${(of(n)! / ceiling).toFixed(1)}×`).join(", ");
    const peerMs = row("sgemm_ceiling")?.peerMs;
    const peer = peerMs ? ` (the peer's torch.mm ${(gflop / peerMs * 1e3).toFixed(0)})` : "";
    return [
      `${config}: sgemm ceiling ${(gflop / ceiling * 1e3).toFixed(0)} GFLOP/s${peer}; the ` +
      `engine's encoder product ${(gflop / product * 1e3).toFixed(0)} GFLOP/s = ` +
      `${(100 * ceiling / product).toFixed(0)}% of it; steps in ceiling units: ${steps}`,
    ];
  });
}

/** The `bench` command. */
export const benchCommand: Command = {
  summary: "time SAE and GPT training steps against PyTorch and stock tfjs (ratios)",
  help: `Usage: deno task bench [--json] [--reps N] [--gpu [--run-steps N]]

Times, in one run on this machine: (a) SAE training steps through the CPU engine
(lib/sae/cpu_engine.ts) on the paper's toy shapes (16,384 tokens × d 64, k 10, AdamW): a TopK SAE
of 512 features, a Staircase chain of two sharing 1,024 features, a JSAE pair across an MLP —
each interleaved with the PyTorch peer (tests/bench/peer_torch.py --serve, when python3 has
torch) step by step (A B A B), ratio = the median of the per-step ratios; with all threads and
with one (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1, peer --threads 1); beside them OpenBLAS's
sgemm on the encoder's shape (the ceiling; the peer's torch.mm of it beside, so that a peer slow
at its products, or at everything else, shows) and the engine's encoder product, and each step in
units of that ceiling; (b) a toy-GPT training step (32 × 128 tokens) and SCALAR attribution of
one toy mlp-block and one block pair at the paper's settings (512 × 512, 576 sequences, 5 IG
steps; timed on 6 sequences, scaled to the pair), each interleaved with the peer on as many
threads as this machine has cores (for attribution the peer runs the authors' per-target loop,
on a sample of targets); (c) stock tfjs cpu and wasm on the TopK step; and (d) SCALAR edge
attribution of one toy mlp-block pair (24 × 24 sequences, 5 steps) batched against our own
per-target loop (both sampled and scaled to the whole pair); (e) SCALAR's three stages —
attribution, ranking, ablation curve (50 prompts, 35 edge counts) — on one toy mlp-block and one
block pair at the paper's settings, each against its floor (lib/bench/scalar_stages.ts: the
FLOPs it cannot avoid at the sgemm ceiling of the same run; ranking: a native sort), in the peer
column, so that ratio ≥ 0.33 is within 3× of it. Prints median step times and ratio = baseline_ms /
ours_ms (above 1: we are faster).

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
    const rows = timings.map((t) =>
      benchRow(
        t.name + CONFIGS[t.config as Config].label,
        t.ms,
        t.peerMs !== undefined ? t.peerMs : t.baselineMs,
        t.detail,
        t.ratio ?? undefined,
      )
    );
    if (values.json) {
      for (const r of rows) console.log(JSON.stringify(r));
      return 0;
    }
    for (const line of formatRows(rows)) console.log(line);
    for (const line of ceilingLines(timings)) console.log(line);
    const ours = timings.find((t) => t.config === "engine" && t.name === "sae_topk_step")!;
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

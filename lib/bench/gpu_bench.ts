/**
 * The GPU benchmark (`deno task bench --gpu`, and `bench/gpu.ts` for hosts without Deno's cache):
 * the paper-shape TopK SAE step through the WebGPU engine against PyTorch CUDA
 * (`tests/bench/peer_torch.py --device cuda`) and against stock tfjs `webgpu`, the toy-GPT step on
 * stock tfjs `webgpu` against PyTorch CUDA, SCALAR attribution of one toy pair on stock tfjs
 * `webgpu` (hardware adapters only), and the wall time of a toy SAE training run (7,500 steps of
 * 128 × 128 tokens) at each position through the engine, alone and as one of 10 runs stepped
 * together (`multi_run_case.ts`). Same rows as the CPU bench.
 *
 * Each configuration runs in a child process (the caller says how to start one), so tfjs's
 * global backend and each configuration's GPU memory do not carry over. On a software adapter
 * (llvmpipe) everything runs, slowly, and the output says the figures are not GPU figures.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { requestGpu } from "../sae/gpu/device.ts";
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import { layoutPosition, type Position } from "../sae/positions.ts";
import { SAE_TRAIN_DEFAULTS, trainSaes } from "../sae/train.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { attributionBatched } from "./attribution_case.ts";
import { runsTogether } from "./multi_run_case.ts";
import { gptTrainStep, SAE_CASE, saeEngineStep, saeTopkStep, timeCase } from "./cases.ts";
import { type BenchRow, benchRow, formatRows } from "./rows.ts";
import { torchPeer } from "./peer.ts";

/** The configurations, each timed in its own process. */
export const GPU_CONFIGS = ["engine", "stock-webgpu", "runs"] as const;

/** A configuration of the GPU bench. */
export type GpuConfig = typeof GPU_CONFIGS[number];

/** One timing a configuration prints (a JSON line). */
export interface GpuTiming {
  /** Case name, shared with the peer's. */
  name: string;
  /** The configuration that timed it. */
  config: GpuConfig;
  /** Median milliseconds (a whole run's, for training runs). */
  ms: number;
  /** What ran. */
  detail: string;
  /** Per-kernel GPU milliseconds of one engine step, where the device can time passes. */
  kernels?: { kernel: string; ms: number }[];
}

/** The toy positions and the architecture each trains in the paper's tables. */
const RUNS: { position: Position; arch: SaeConfig["arch"] }[] = [
  { position: "mlp", arch: "topk" },
  { position: "mlp-block", arch: "staircase" },
  { position: "block", arch: "staircase" },
];

/** Steps of the paper's toy SAE training run. */
const RUN_STEPS = SAE_TRAIN_DEFAULTS.steps;

/**
 * Times one configuration in this process and prints its timings as JSON lines.
 *
 * @param config Which.
 * @param reps Timed steps per case after warm-up.
 * @param runSteps Steps each training run takes (its time is scaled to 7,500 steps).
 * @param engineTokens Rows of the engine's step (default the paper's 16,384).
 */
export async function runGpuConfig(
  config: GpuConfig,
  reps: number,
  runSteps: number,
  engineTokens?: number,
): Promise<void> {
  const gpu = await requestGpu();
  if (typeof gpu === "string") throw new Error(`Cannot run the GPU bench: ${gpu}`);
  const print = (t: GpuTiming) => console.log(JSON.stringify(t));
  // tfjs cpu holds the SAEs' variables here; its first-use banner would only advertise tfjs-node.
  (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
  if (config === "engine") {
    const c = await saeEngineStep(gpu, 0, engineTokens);
    const { medianMs } = await timeCase(c, reps);
    // Each timed step waits for its loss, as PyTorch's synchronised step does; back to back
    // shows what the GPU sustains when only periodic losses are read, as in training.
    const sustained = await c.backToBack(4 * reps);
    print({
      name: c.name,
      config,
      ms: medianMs,
      detail: `${c.detail}; ${sustained.toFixed(3)} ms per step back to back`,
      kernels: await c.profile(),
    });
    c.dispose();
    return;
  }
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) throw new Error("Cannot start tfjs webgpu");
  if (config === "stock-webgpu") {
    for (const make of [saeTopkStep, gptTrainStep]) {
      const c = make(0);
      const { medianMs } = await timeCase(c, reps);
      print({
        name: c.name,
        config,
        ms: medianMs,
        detail: `${c.detail}; tfjs webgpu (${gpu.adapter})`,
      });
      c.dispose();
    }
    // Whether tfjs's own WebGPU kernels suffice for SCALAR attribution: one sampled batch, scaled
    // to the pair (about half an hour on llvmpipe, so only on a GPU).
    if (gpu.software) {
      console.error("attribution skipped: a software adapter takes about half an hour for it");
      return;
    }
    const a = attributionBatched(0);
    const { medianMs } = await timeCase(a, 1, 1);
    print({
      name: a.name,
      config,
      ms: medianMs * a.timeScale,
      detail: `${a.detail}; tfjs webgpu (${gpu.adapter})`,
    });
    a.dispose();
    return;
  }
  for (const { position, arch } of RUNS) {
    print(await trainingRun(position, arch, runSteps));
  }
  // The grid's 10 mlp-block runs (TopK and Staircase × 5 seeds) stepped together: one run's share
  // of the wall time, scaled to 7,500 steps.
  const together = await runsTogether(gpu, { runs: 10, steps: runSteps });
  print({
    name: "sae_train_runs_together mlp-block x10",
    config,
    ms: together.togetherMs * RUN_STEPS,
    detail: together.detail,
  });
}

// A toy SAE training run through `trainSaes` on synthetic activations (two batches' worth per
// hook, cycled), timed from the first step to the saved result and scaled to 7,500 steps.
async function trainingRun(
  position: Position,
  arch: SaeConfig["arch"],
  steps: number,
): Promise<GpuTiming> {
  const { d, features, k } = SAE_CASE;
  const sae: SaeConfig = { arch, features, k, jsaeLambda: 0 };
  const layout = layoutPosition(position, 4);
  const saes = buildSaes(sae, layout, d, 0);
  const seqLen = 128, rows = SAE_TRAIN_DEFAULTS.batch * seqLen;
  const rng = createRng(1);
  const data = new Map(layout.hooks.map((h) => [h, normalArray(rng, 2 * rows * d, 1)]));
  const dir = await Deno.makeTempDir({ prefix: "scalar-gpu-bench-" });
  const lines: string[] = [];
  const started = performance.now();
  const result = await trainSaes({
    saes,
    sae,
    train: { ...SAE_TRAIN_DEFAULTS, steps, checkpointEvery: steps },
    seqLen,
    d,
    data: {
      tokens: 2 * rows,
      batch: (hooks, start, count) =>
        Promise.resolve(
          new Map(hooks.map((h) => [h, data.get(h)!.subarray(start * d, (start + count) * d)])),
        ),
    },
    outDir: `${dir}/saes`,
    provenance: {},
    log: (l) => lines.push(l),
  });
  const ms = performance.now() - started;
  saes.dispose();
  await Deno.remove(dir, { recursive: true });
  const path = lines.find((l) => l.startsWith("SAE steps: ")) ?? "SAE steps: tfjs webgpu ops";
  const widths = layout.hooks.map((h) => saes.width(h)).join("/");
  return {
    name: `sae_train_run ${position}`,
    config: "runs",
    ms: ms * RUN_STEPS / result.step,
    detail:
      `${layout.hooks.length} ${arch} SAEs (${widths} features), ${RUN_STEPS} steps × ${rows} ` +
      `tokens` + (steps === RUN_STEPS ? "" : `, scaled from ${steps} steps`) +
      `; ${path.replace("SAE steps: ", "")}`,
  };
}

/** How {@link gpuBench} starts its children and finds the peer. */
export interface GpuBenchOptions {
  /** Timed steps per case. */
  reps: number;
  /** Steps per training run; undefined: 7,500 on a GPU, 1 on a software adapter. */
  runSteps?: number;
  /** One JSON object per row instead of the table. */
  json: boolean;
  /** Arguments to `deno` that start this bench again (the child adds `--only CONFIG …`). */
  childArgs: string[];
  /** Path of `tests/bench/peer_torch.py`. */
  peerScript: string;
  /**
   * Rounds of the engine's step and the PyTorch CUDA peer's, one after the other, so that a
   * clock change or a neighbour's load hits both alike; each figure is its median over the
   * rounds. The other configurations run once. @default 1
   */
  rounds?: number;
  /** The configurations to time. @default GPU_CONFIGS */
  configs?: readonly GpuConfig[];
  /** Rows of the engine's step, fewer than the paper's only to test the path on llvmpipe. */
  engineTokens?: number;
}

/**
 * The median of each case's values over rounds.
 *
 * @param values Case key → one value per round.
 * @returns Case key → the median (the upper one of an even count).
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { medians } from "./gpu_bench.ts";
 * deepEqual(medians(new Map([["a", [3, 1, 2]], ["b", [4, 8]]])), new Map([["a", 2], ["b", 8]]));
 * ```
 */
export function medians(values: ReadonlyMap<string, readonly number[]>): Map<string, number> {
  return new Map(
    [...values].map(([key, v]) => [key, [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!]),
  );
}

/** Times one configuration in a child process. */
async function timeConfig(
  o: GpuBenchOptions,
  config: GpuConfig,
  runSteps: number,
): Promise<GpuTiming[]> {
  console.error(`timing ${config}…`);
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      ...o.childArgs,
      "--only",
      config,
      "--reps",
      String(o.reps),
      "--run-steps",
      String(runSteps),
      ...(o.engineTokens === undefined ? [] : ["--engine-tokens", String(o.engineTokens)]),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`Cannot time configuration "${config}": its process failed`);
  return new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
}

/**
 * Runs the configurations in child processes and the PyTorch CUDA peer, the engine and the peer
 * interleaved over `rounds`, and prints the rows (medians over the rounds).
 *
 * @param o Options.
 * @returns The exit code.
 */
export async function gpuBench(o: GpuBenchOptions): Promise<number> {
  const gpu = await requestGpu();
  if (typeof gpu === "string") {
    console.error(`Cannot run the GPU bench: ${gpu}`);
    return 1;
  }
  const runSteps = o.runSteps ?? (gpu.software ? 1 : RUN_STEPS);
  const note = gpu.software
    ? `adapter: ${gpu.adapter} — a SOFTWARE adapter (the CPU through Mesa's Vulkan): these figures ` +
      `check that the GPU path runs, they say nothing about GPU speed`
    : `adapter: ${gpu.adapter}`;
  console.error(note);
  const configs = o.configs ?? GPU_CONFIGS;
  const rounds = o.rounds ?? 1;
  const ours = new Map<string, number[]>(), peers = new Map<string, number[]>();
  const first = new Map<string, GpuTiming>();
  const add = (m: Map<string, number[]>, key: string, ms: number) =>
    m.set(key, [...(m.get(key) ?? []), ms]);
  for (let round = 0; round < rounds; round++) {
    for (const config of configs.filter((c) => round === 0 || c === "engine")) {
      for (const t of await timeConfig(o, config, runSteps)) {
        const key = `${t.config} ${t.name}`;
        if (!first.has(key)) first.set(key, t);
        add(ours, key, t.ms);
      }
    }
    // Training runs have no peer row.
    if (configs.every((c) => c === "runs")) continue;
    console.error(`timing the PyTorch CUDA peer (round ${round + 1} of ${rounds})…`);
    const peer = await torchPeer(o.peerScript, ["--device", "cuda", "--reps", String(o.reps)]);
    if (typeof peer === "string") {
      console.error(`peer skipped: ${peer}`);
      continue;
    }
    for (const [name, ms] of peer) add(peers, name, ms);
  }
  const oursMs = medians(ours);
  const timings = [...first].map(([key, t]) => ({
    ...t,
    ms: oursMs.get(key)!,
    detail: ours.get(key)!.length > 1
      ? `${t.detail}; median of ${ours.get(key)!.length} rounds interleaved with the peer`
      : t.detail,
  }));
  const rows = gpuRows(timings, medians(peers));
  if (o.json) {
    for (const r of rows) console.log(JSON.stringify(r));
    return 0;
  }
  console.log(note);
  for (const line of formatRows(rows)) console.log(line);
  const engine = timings.find((t) => t.config === "engine");
  const stock = timings.find((t) => t.config === "stock-webgpu" && t.name === engine?.name);
  if (engine && stock) {
    console.log(
      `speed-up of the engine over stock tfjs webgpu on ${engine.name}: ${
        (stock.ms / engine.ms).toFixed(1)
      }×`,
    );
  }
  if (!engine) return 0;
  console.log(`ours: ${engine.detail}`);
  if (engine.kernels) {
    console.log(
      `one engine step by kernel (GPU timestamps): ` +
        engine.kernels.map((k) => `${k.kernel} ${k.ms.toFixed(3)} ms`).join(", "),
    );
  }
  return 0;
}

/**
 * The rows from the configurations' timings: each against the PyTorch CUDA peer's time for the
 * same case (none for training runs); stock baselines say so in their names.
 *
 * @param timings What the configurations printed.
 * @param peer Case name → the peer's median milliseconds.
 * @returns The rows, in timing order.
 */
export function gpuRows(
  timings: readonly GpuTiming[],
  peer: ReadonlyMap<string, number>,
): BenchRow[] {
  return timings.map((t) =>
    benchRow(
      t.config === "stock-webgpu" ? `${t.name} (stock tfjs webgpu)` : t.name,
      t.ms,
      t.config === "runs" ? null : peer.get(t.name),
      t.detail,
    )
  );
}

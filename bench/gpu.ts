/**
 * The GPU programs of the GPU call (`gpu/run.sh`, issue 15) as one program of their own, so that
 * `deno bundle` can turn them into one file for GPU hosts that have neither Deno's cache nor
 * network access (`gpu/prepare.sh`, `../shared/reference/gpu-baseline.md`):
 *
 * ```sh
 * deno bundle --platform=deno bench/gpu.ts -o .gpu/gpu.js
 * deno run -A .gpu/gpu.js [bench] [--json] [--reps N] [--rounds N] [--configs LIST] [--run-steps N] [--peer PATH]
 * deno run -A .gpu/gpu.js scalar [--json] [--model DIR] [--tiny]
 * deno run -A .gpu/gpu.js gpt2 [--json] [--steps N] [--seconds S] [--tiny]
 * ```
 *
 * `bench` is `deno task bench --gpu` (`lib/bench/gpu_bench.ts`); its PyTorch CUDA peer is
 * `tests/bench/peer_torch.py`, found beside this file's folder (so `.gpu/gpu.js` inside a checkout
 * finds it) unless `--peer` names it. `scalar` times SCALAR's attribution and ablation of one
 * `mlp-block` and one `block` pair on tfjs `webgpu` (`lib/bench/gpu_scalar.ts`); `gpt2` trains
 * GPT-2 Small's SAEs on random weights and projects the GPT-2 manifests (`lib/bench/gpt2_shape.ts`).
 * Both print JSON lines with `--json`, else a line per figure.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { selectBackend } from "../lib/backend/select.ts";
import { gpt2Shape } from "../lib/bench/gpt2_shape.ts";
import { GPU_CONFIGS, gpuBench, type GpuConfig, runGpuConfig } from "../lib/bench/gpu_bench.ts";
import {
  PAPER_SCALAR_SIZES,
  scalarPairTimings,
  TINY_GPT,
  TINY_SCALAR_SIZES,
} from "../lib/bench/gpu_scalar.ts";

const USAGE =
  `usage: gpu.js [bench] [--json] [--reps N] [--rounds N] [--configs engine,stock-webgpu,runs]
                      [--run-steps N] [--peer PATH]
       gpu.js scalar [--json] [--model DIR] [--tiny]
       gpu.js gpt2 [--json] [--steps N] [--seconds S] [--tiny]`;

const fail = (why: string): never => {
  console.error(`${why}\n${USAGE}`);
  Deno.exit(2);
};

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    json: { type: "boolean" },
    reps: { type: "string" },
    rounds: { type: "string" },
    configs: { type: "string" },
    "run-steps": { type: "string" },
    peer: { type: "string" },
    only: { type: "string" },
    model: { type: "string" },
    tiny: { type: "boolean" },
    steps: { type: "string" },
    "engine-tokens": { type: "string" },
    seconds: { type: "string" },
  },
});
const count = (value: string | undefined, name: string) => {
  const n = Number(value);
  if (value === undefined || (Number.isInteger(n) && n >= 1)) {
    return value === undefined ? undefined : n;
  }
  return fail(`--${name} must be an integer ≥ 1, got "${value}"`);
};
const command = positionals[0] ?? "bench";
const print = (line: Record<string, unknown>, text: string) =>
  console.log(values.json ? JSON.stringify(line) : text);

if (command === "scalar" || command === "gpt2") {
  // Stock tfjs webgpu by name: a software adapter is taken too (the call's test runs on one).
  const backend = await selectBackend("webgpu");
  console.error(`backend: ${backend.detail}`);
  if (command === "scalar") {
    await scalarPairTimings({
      model: values.model,
      shape: values.tiny ? TINY_GPT : undefined,
      sizes: values.tiny ? TINY_SCALAR_SIZES : PAPER_SCALAR_SIZES,
      log: (line) => console.error(line),
      onTiming: (r) =>
        print(
          { ...r, backend: backend.detail },
          `${r.name} ${r.pair}: attribution ${r.attributionMs.toFixed(0)} ms, ablation ` +
            `${r.ablationMs.toFixed(0)} ms (${r.detail})`,
        ),
    });
  } else {
    const r = await gpt2Shape({
      steps: count(values.steps, "steps") ?? 200,
      seconds: count(values.seconds, "seconds"),
      tiny: values.tiny,
      log: (line) => console.error(line),
    });
    print(
      {
        name: "gpt2_sae_step",
        stepMs: r.stepMs,
        steps: r.steps,
        flopsPerSecond: r.flopsPerSecond,
        detail: r.detail,
        backend: backend.detail,
      },
      `GPT-2 SAE step: ${r.stepMs.toFixed(1)} ms (median of ${r.steps}; ${r.detail})`,
    );
    for (const p of r.projections) {
      print(
        { name: "gpt2_projection", ...p },
        `${p.manifest} ${p.arch}: ${(p.trainSeconds / 3600).toFixed(2)} h training, ` +
          `${(p.totalSeconds / 3600).toFixed(2)} h in all`,
      );
    }
  }
  Deno.exit(0);
}
if (command !== "bench") fail(`unknown command "${command}"`);
const reps = count(values.reps, "reps") ?? 5;
const runSteps = count(values["run-steps"], "run-steps");
const engineTokens = count(values["engine-tokens"], "engine-tokens");
const configs = values.configs?.split(",").map((c) =>
  (GPU_CONFIGS as readonly string[]).includes(c)
    ? c as GpuConfig
    : fail(`unknown configuration "${c}"`)
);
if (values.only !== undefined) {
  if (!(GPU_CONFIGS as readonly string[]).includes(values.only)) {
    fail(`unknown configuration "${values.only}"`);
  }
  await runGpuConfig(values.only as GpuConfig, reps, runSteps ?? 1, engineTokens);
} else {
  // This file is the program whether run as bench/gpu.ts or bundled: children start it again.
  const self = new URL(Deno.mainModule).pathname;
  // A bundle imports nothing by name: the checkout's config (import map, node_modules) stays out.
  const config = self.endsWith(".js") ? ["--no-config", "--cached-only"] : [];
  Deno.exit(
    await gpuBench({
      reps,
      runSteps,
      rounds: count(values.rounds, "rounds"),
      engineTokens,
      configs,
      json: values.json === true,
      childArgs: ["run", "-A", ...config, self],
      peerScript: values.peer ??
        new URL("../tests/bench/peer_torch.py", import.meta.url).pathname,
    }),
  );
}

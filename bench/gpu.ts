/**
 * The GPU bench (`deno task bench --gpu`) as a program of its own, so that `deno bundle` can turn
 * it into one file for GPU hosts that have neither Deno's cache nor network access
 * (`../shared/reference/gpu-baseline.md`):
 *
 * ```sh
 * deno bundle --platform=deno bench/gpu.ts -o .gpu/gpu.js
 * deno run -A .gpu/gpu.js [--json] [--reps N] [--run-steps N] [--peer PATH]
 * ```
 *
 * The PyTorch CUDA peer is `tests/bench/peer_torch.py`, found beside this file's folder (so
 * `.gpu/gpu.js` inside a checkout finds it) unless `--peer` names it.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { GPU_CONFIGS, gpuBench, type GpuConfig, runGpuConfig } from "../lib/bench/gpu_bench.ts";

const USAGE = "usage: gpu.js [--json] [--reps N] [--run-steps N] [--peer PATH]";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean" },
    reps: { type: "string" },
    "run-steps": { type: "string" },
    peer: { type: "string" },
    only: { type: "string" },
  },
});
const count = (value: string | undefined, name: string) => {
  const n = Number(value);
  if (value === undefined || (Number.isInteger(n) && n >= 1)) {
    return value === undefined ? undefined : n;
  }
  console.error(`--${name} must be ≥ 1, got "${value}"\n${USAGE}`);
  Deno.exit(2);
};
const reps = count(values.reps, "reps") ?? 5;
const runSteps = count(values["run-steps"], "run-steps");
if (values.only !== undefined) {
  if (!(GPU_CONFIGS as readonly string[]).includes(values.only)) {
    console.error(`unknown configuration "${values.only}"\n${USAGE}`);
    Deno.exit(2);
  }
  await runGpuConfig(values.only as GpuConfig, reps, runSteps ?? 1);
} else {
  // This file is the program whether run as bench/gpu.ts or bundled: children start it again.
  const self = new URL(Deno.mainModule).pathname;
  Deno.exit(
    await gpuBench({
      reps,
      runSteps,
      json: values.json === true,
      childArgs: ["run", "-A", self],
      peerScript: values.peer ??
        new URL("../tests/bench/peer_torch.py", import.meta.url).pathname,
    }),
  );
}

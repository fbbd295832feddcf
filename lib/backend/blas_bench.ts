/**
 * Prints GFLOP/s of raw `cblas_sgemm` and of tfjs `matMul` / `fused.matMul` on the stock `cpu`
 * kernels versus the BLAS ones, for every transpose combination.
 *
 * Usage: `deno run --allow-all lib/backend/blas_bench.ts [--size 1024] [--reps 5]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as tf from "@tensorflow/tfjs";
import { openBlas } from "./blas.ts";
import { registerBlasKernels } from "./blas_kernels.ts";

const { values } = parseArgs({
  options: { size: { type: "string", default: "1024" }, reps: { type: "string", default: "5" } },
});
const size = Number(values.size);
const reps = Number(values.reps);
for (const [name, v] of [["--size", size], ["--reps", reps]] as const) {
  if (!Number.isInteger(v) || v < 1) {
    throw new Error(`Cannot benchmark with ${name} "${v}": not a positive integer`);
  }
}

const blas = openBlas();
if ("error" in blas) {
  console.error(blas.error);
  Deno.exit(1);
}
await tf.setBackend("cpu");
const flop = 2 * size ** 3;

// Best of `n` runs: the least disturbed by other processes on a shared machine.
function bestMs(n: number, f: () => void): number {
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    f();
    best = Math.min(best, performance.now() - start);
  }
  return best;
}

function report(label: string, ms: number): void {
  const gflops = flop / (ms * 1e6);
  console.log(
    `${label.padEnd(44)} ${ms.toFixed(1).padStart(9)} ms ${gflops.toFixed(1).padStart(7)} GFLOP/s`,
  );
}

console.log(`BLAS: ${blas.path}`);
console.log(`      ${blas.config ?? "(not OpenBLAS)"}, ${blas.threads ?? "?"} threads`);
console.log(`OPENBLAS_CORETYPE=${Deno.env.get("OPENBLAS_CORETYPE") ?? "(unset)"}, size ${size}³`);

const a = new Float32Array(size * size).map((_, i) => Math.sin(i));
const b = new Float32Array(size * size).map((_, i) => Math.cos(i));
const c = new Float32Array(size * size);
const sgemm = () =>
  blas.sgemm({ transA: false, transB: false, m: size, n: size, k: size, a, b, c });
sgemm();
report("cblas_sgemm", bestMs(reps, sgemm));

const x = tf.tensor2d(a, [size, size]);
const y = tf.tensor2d(b, [size, size]);
const bias = tf.tensor1d(b.subarray(0, size));
const variants = [[false, false], [false, true], [true, false], [true, true]] as const;

function timeTf(n: number, f: () => tf.Tensor): number {
  return bestMs(n, () => {
    const out = f();
    out.dataSync();
    out.dispose();
  });
}

const runs = variants.map(([transposeA, transposeB]) => ({
  label: `matMul transposeA ${transposeA} transposeB ${transposeB}`,
  f: () => tf.matMul(x, y, transposeA, transposeB),
}));
runs.push({
  label: "fused.matMul + bias + relu",
  f: () => tf.fused.matMul({ a: x, b: y, bias, activation: "relu" }),
});

// The stock kernels take seconds at this size, so one run each.
const stockMs = runs.map(({ f }) => timeTf(1, f));
const restore = registerBlasKernels(blas);
const blasMs = runs.map(({ f }) => timeTf(reps, f));
restore();
runs.forEach(({ label }, i) => {
  report(`${label}, stock`, stockMs[i]);
  report(`${label}, BLAS`, blasMs[i]);
  console.log(`${"".padEnd(44)} speedup ${(stockMs[i] / blasMs[i]).toFixed(0)}×`);
});

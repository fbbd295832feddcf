import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { type BlasLibrary, openBlas, type SgemmParams } from "./blas.ts";
import { registerBlasKernels } from "./blas_kernels.ts";

await tf.setBackend("cpu");
// OpenBLAS is a declared dependency that CI installs, so its absence fails the file, not skips it.
const opened = openBlas();
if ("error" in opened) throw new Error(opened.error);
const blas: BlasLibrary = opened;

// Counts native calls so a test can tell BLAS ran rather than a stock kernel.
let sgemmCalls = 0;
const countingBlas: BlasLibrary = {
  ...blas,
  sgemm(p: SgemmParams): void {
    sgemmCalls++;
    blas.sgemm(p);
  },
};

// mulberry32: seeded so every run checks the same numbers.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomTensor(shape: number[], next: () => number): tf.Tensor {
  const size = shape.reduce((acc, d) => acc * d, 1);
  return tf.tensor(Float32Array.from({ length: size }, () => 2 * next() - 1), shape);
}

// Normwise, because an element that cancels to near 0 has no meaningful relative error.
function assertClose(actual: tf.Tensor, expected: tf.Tensor, rtol: number, label: string): void {
  assert.deepEqual(actual.shape, expected.shape, `${label}: shape`);
  const a = actual.dataSync();
  const e = expected.dataSync();
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < e.length; i++) {
    diff = Math.max(diff, Math.abs(a[i] - e[i]));
    scale = Math.max(scale, Math.abs(e[i]));
  }
  assert.ok(diff <= rtol * scale, `${label}: max |diff| ${diff} exceeds ${rtol} × ${scale}`);
}

// Runs `f` with the BLAS kernels registered, restoring the stock ones even when it throws.
function withBlas<T>(f: () => T): { result: T; calls: number } {
  const restore = registerBlasKernels(countingBlas);
  const before = sgemmCalls;
  try {
    return { result: f(), calls: sgemmCalls - before };
  } finally {
    restore();
  }
}

interface Case {
  batchA: number[];
  batchB: number[];
  m: number;
  n: number;
  k: number;
}

function operands(c: Case, transposeA: boolean, transposeB: boolean, seed: number): tf.Tensor[] {
  const next = rng(seed);
  const a = randomTensor([...c.batchA, ...(transposeA ? [c.k, c.m] : [c.m, c.k])], next);
  const b = randomTensor([...c.batchB, ...(transposeB ? [c.n, c.k] : [c.k, c.n])], next);
  return [a, b];
}

const TRANSPOSES = [[false, false], [false, true], [true, false], [true, true]] as const;

const STOCK_CASES: Case[] = [
  { batchA: [], batchB: [], m: 13, n: 17, k: 29 },
  { batchA: [], batchB: [], m: 64, n: 48, k: 80 },
  { batchA: [3], batchB: [3], m: 5, n: 6, k: 7 },
  { batchA: [2, 3], batchB: [2, 3], m: 4, n: 5, k: 6 },
  { batchA: [4], batchB: [], m: 5, n: 6, k: 7 },
  { batchA: [4], batchB: [1], m: 5, n: 6, k: 7 },
  { batchA: [], batchB: [2, 3], m: 5, n: 6, k: 7 },
  { batchA: [1], batchB: [4], m: 5, n: 6, k: 7 },
  { batchA: [2, 3], batchB: [3], m: 4, n: 5, k: 6 },
  { batchA: [1, 1], batchB: [1, 1], m: 1, n: 1, k: 1 },
  { batchA: [], batchB: [], m: 1, n: 9, k: 5 },
  { batchA: [], batchB: [], m: 8, n: 1, k: 5 },
  { batchA: [], batchB: [], m: 8, n: 9, k: 1 },
  { batchA: [3], batchB: [3], m: 1, n: 1, k: 11 },
  { batchA: [], batchB: [], m: 0, n: 4, k: 3 },
  { batchA: [], batchB: [], m: 4, n: 0, k: 3 },
  { batchA: [], batchB: [], m: 4, n: 5, k: 0 },
  { batchA: [0], batchB: [0], m: 2, n: 3, k: 4 },
];

Deno.test("BatchMatMul: BLAS equals the stock kernel on every shape and transpose", () => {
  let seed = 1;
  for (const c of STOCK_CASES) {
    for (const [transposeA, transposeB] of TRANSPOSES) {
      const label = `${JSON.stringify(c)} transposeA ${transposeA} transposeB ${transposeB}`;
      tf.tidy(() => {
        const [a, b] = operands(c, transposeA, transposeB, seed++);
        const stock = tf.matMul(a, b, transposeA, transposeB);
        const { result, calls } = withBlas(() => tf.matMul(a, b, transposeA, transposeB));
        assertClose(result, stock, 1e-5, label);
        assert.equal(calls > 0, result.size > 0 && c.k > 0, `${label}: BLAS calls ${calls}`);
      });
    }
  }
});

Deno.test("BatchMatMul: batch dims that both broadcast match a materialised broadcast", () => {
  // The stock kernel returns too few values here, so the reference multiplies copies that
  // broadcastTo has already expanded to the full batch shape.
  const c: Case = { batchA: [2, 1], batchB: [1, 3], m: 4, n: 5, k: 6 };
  let seed = 100;
  for (const [transposeA, transposeB] of TRANSPOSES) {
    tf.tidy(() => {
      const [a, b] = operands(c, transposeA, transposeB, seed++);
      const expected = tf.matMul(
        tf.broadcastTo(a, [2, 3, ...a.shape.slice(-2)]),
        tf.broadcastTo(b, [2, 3, ...b.shape.slice(-2)]),
        transposeA,
        transposeB,
      );
      const { result } = withBlas(() => tf.matMul(a, b, transposeA, transposeB));
      assertClose(result, expected, 1e-5, `transposeA ${transposeA} transposeB ${transposeB}`);
    });
  }
});

Deno.test("BatchMatMul: an empty broadcast batch gives an empty result", () => {
  // The stock kernel returns 4 values for this 0-element shape; the right answer is none.
  const { result, calls } = withBlas(() => tf.matMul(tf.ones([0, 2, 3]), tf.ones([1, 3, 2])));
  assert.deepEqual(result.shape, [0, 2, 2]);
  assert.equal(result.dataSync().length, 0);
  assert.equal(calls, 0);
});

Deno.test("BatchMatMul: int32 inputs still go to the stock kernel", () => {
  const a = tf.tensor2d([[1, 2], [3, 4]], [2, 2], "int32");
  const b = tf.tensor2d([[5, 6], [7, 8]], [2, 2], "int32");
  const { result, calls } = withBlas(() => tf.matMul(a, b));
  assert.equal(result.dtype, "int32");
  assert.deepEqual(result.arraySync(), [[19, 22], [43, 50]]);
  assert.equal(calls, 0);
});

interface FusedCase {
  batchA: number[];
  batchB: number[];
  bias?: number[];
  activation: tf.fused.Activation;
  alpha?: number[];
}

const M = 6;
const N = 7;
const K = 9;

const FUSED_CASES: FusedCase[] = [
  { batchA: [], batchB: [], activation: "linear" },
  { batchA: [], batchB: [], bias: [N], activation: "linear" },
  { batchA: [], batchB: [], bias: [N], activation: "relu" },
  { batchA: [], batchB: [], bias: [1, N], activation: "relu6" },
  { batchA: [], batchB: [], bias: [M, N], activation: "elu" },
  { batchA: [], batchB: [], bias: [M, 1], activation: "sigmoid" },
  { batchA: [], batchB: [], bias: [], activation: "leakyrelu" },
  { batchA: [], batchB: [], bias: [N], activation: "prelu", alpha: [N] },
  { batchA: [], batchB: [], activation: "prelu", alpha: [M, N] },
  { batchA: [], batchB: [], bias: [N], activation: "prelu", alpha: [] },
  { batchA: [3], batchB: [], bias: [N], activation: "relu" },
  { batchA: [3], batchB: [3], bias: [3, M, N], activation: "sigmoid" },
  { batchA: [1], batchB: [4], bias: [1, 1, N], activation: "prelu", alpha: [4, 1, N] },
];

Deno.test("_FusedMatMul: BLAS equals the stock kernel with bias and every activation", () => {
  let seed = 200;
  for (const c of FUSED_CASES) {
    for (const [transposeA, transposeB] of TRANSPOSES) {
      const label = `${JSON.stringify(c)} transposeA ${transposeA} transposeB ${transposeB}`;
      tf.tidy(() => {
        const next = rng(seed++);
        const [a, b] = operands({ ...c, m: M, n: N, k: K }, transposeA, transposeB, seed++);
        const config = {
          a,
          b,
          transposeA,
          transposeB,
          activation: c.activation,
          leakyreluAlpha: 0.3,
          bias: c.bias === undefined ? undefined : randomTensor(c.bias, next),
          preluActivationWeights: c.alpha === undefined ? undefined : randomTensor(c.alpha, next),
        };
        const stock = tf.fused.matMul(config);
        const { result, calls } = withBlas(() => tf.fused.matMul(config));
        assertClose(result, stock, 1e-5, label);
        assert.ok(calls > 0, `${label}: no BLAS call`);
      });
    }
  }
});

Deno.test("_FusedMatMul: empty and size-1 dimensions", () => {
  const cases = [[0, 4, 3], [4, 0, 3], [4, 5, 0], [1, 1, 1], [1, 5, 3], [4, 1, 3]];
  for (const [m, n, k] of cases) {
    tf.tidy(() => {
      const next = rng(300 + m * 100 + n * 10 + k);
      const a = randomTensor([m, k], next);
      const b = randomTensor([k, n], next);
      const config = { a, b, bias: randomTensor([n], next), activation: "elu" as const };
      const stock = tf.fused.matMul(config);
      const { result } = withBlas(() => tf.fused.matMul(config));
      assertClose(result, stock, 1e-5, `m ${m} n ${n} k ${k}`);
    });
  }
});

// Loss with curvature, so a wrong gradient cannot hide behind linearity.
type Loss = (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) => tf.Tensor;

function lossCases(): { label: string; loss: Loss; shapes: number[][] }[] {
  const next = rng(400);
  const weights = randomTensor([3, 5, 4], next);
  const cases = TRANSPOSES.map(([transposeA, transposeB]) => ({
    label: `matMul transposeA ${transposeA} transposeB ${transposeB}`,
    loss: (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) =>
      tf.sum(tf.mul(weights, tf.sigmoid(tf.add(tf.matMul(a, b, transposeA, transposeB), bias)))),
    shapes: [transposeA ? [3, 6, 5] : [3, 5, 6], transposeB ? [3, 4, 6] : [3, 6, 4], [4]],
  }));
  const fused = (activation: tf.fused.Activation, transposeB: boolean) => ({
    label: `fused.matMul ${activation} transposeB ${transposeB}`,
    loss: (a: tf.Tensor, b: tf.Tensor, bias: tf.Tensor) =>
      tf.sum(tf.mul(weights, tf.tanh(tf.fused.matMul({ a, b, bias, activation, transposeB })))),
    // Rank 2 only: tfjs's own _FusedMatMul gradient does not sum over a broadcast batch.
    shapes: [[5, 6], transposeB ? [4, 6] : [6, 4], [4]],
  });
  return [...cases, fused("linear", false), fused("linear", true), fused("elu", true)];
}

Deno.test("gradients through the BLAS kernels match stock and central differences", () => {
  let seed = 500;
  for (const { label, loss, shapes } of lossCases()) {
    tf.tidy(() => {
      const next = rng(seed++);
      const inputs = shapes.map((shape) => randomTensor(shape, next));
      const [a, b, bias] = inputs;
      const grads = tf.grads(loss);
      const stock = grads(inputs);
      const forward = withBlas(() => loss(a, b, bias)).calls;
      const { result, calls } = withBlas(() => grads(inputs));
      assert.ok(calls > forward, `${label}: backward made no BLAS call (${calls} calls)`);
      result.forEach((g, i) => assertClose(g, stock[i], 1e-5, `${label}: input ${i}`));

      // d/dt loss(x + t·v) at t = 0, against the gradient's projection on v.
      const direction = shapes.map((shape) => randomTensor(shape, next));
      const eps = 1e-2;
      const shifted = (sign: number) =>
        withBlas(() => {
          const [sa, sb, sbias] = inputs.map((x, i) => tf.add(x, tf.mul(sign * eps, direction[i])));
          return loss(sa, sb, sbias).dataSync()[0];
        }).result;
      const numeric = (shifted(1) - shifted(-1)) / (2 * eps);
      const analytic = result.reduce(
        (acc, g, i) => acc + tf.sum(tf.mul(g, direction[i])).dataSync()[0],
        0,
      );
      assert.ok(
        Math.abs(numeric - analytic) <= 2e-3 * Math.max(1, Math.abs(analytic)),
        `${label}: directional derivative ${analytic}, central difference ${numeric}`,
      );
    });
  }
});

Deno.test("registerBlasKernels refuses a second registration and restores the stock kernels", () => {
  const names = [tf.BatchMatMul, tf._FusedMatMul];
  const stock = names.map((name) => tf.getKernel(name, "cpu").kernelFunc);
  const restore = registerBlasKernels(blas);
  try {
    names.forEach((name, i) => assert.notEqual(tf.getKernel(name, "cpu").kernelFunc, stock[i]));
    assert.throws(() => registerBlasKernels(blas), /already registered/);
  } finally {
    restore();
  }
  restore();
  names.forEach((name, i) => assert.equal(tf.getKernel(name, "cpu").kernelFunc, stock[i]));
});

Deno.test("sgemm honours offsets and leading dimensions and checks bounds", () => {
  // C[1..2, 1..3] of a 3×4 buffer = A · Bᵀ with A at offset 2 (lda 3) and B at offset 1 (ldb 2).
  const a = Float32Array.from([9, 9, 1, 2, 9, 3, 4]);
  const b = Float32Array.from([9, 1, 0, 0, 1, 1, 1]);
  const c = new Float32Array(12).fill(-1);
  blas.sgemm({
    transA: false,
    transB: true,
    m: 2,
    n: 3,
    k: 2,
    a,
    aOffset: 2,
    lda: 3,
    b,
    bOffset: 1,
    ldb: 2,
    c,
    cOffset: 5,
    ldc: 4,
  });
  assert.deepEqual(
    Array.from(c),
    [-1, -1, -1, -1, -1, 1, 2, 3, -1, 3, 4, 7],
  );
  assert.throws(
    () =>
      blas.sgemm({ transA: false, transB: false, m: 2, n: 2, k: 2, a, b, c: new Float32Array(3) }),
    /Cannot run sgemm on C at offset 0: 2×2 \(ld 2\) needs 4 elements, the array has 3/,
  );
});

Deno.test("openBlas returns a reason instead of throwing for a missing library", () => {
  const result = openBlas("/nonexistent.so");
  assert.ok("error" in result);
  assert.match(result.error, /^Cannot open BLAS library "\/nonexistent\.so": .*nonexistent\.so/);
});

async function openBlasInChild(args: string[], env: Record<string, string>): Promise<string> {
  const url = new URL("./blas.ts", import.meta.url).href;
  const script = `import { openBlas } from "${url}"; console.log(JSON.stringify(openBlas()));`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--no-config", ...args, "-"],
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  assert.equal(code, 0, decoder.decode(stderr));
  return JSON.parse(decoder.decode(stdout)).error;
}

Deno.test("SCALAR_BLAS_LIB=/nonexistent.so gives the reason, not an exception", async () => {
  const error = await openBlasInChild(["--allow-env", "--allow-ffi"], {
    SCALAR_BLAS_LIB: "/nonexistent.so",
  });
  assert.match(
    error,
    /^Cannot open BLAS library "\/nonexistent\.so" named by SCALAR_BLAS_LIB: .*; fix or unset/,
  );
});

Deno.test("openBlas without FFI permission says so instead of throwing", async () => {
  const error = await openBlasInChild([], {});
  assert.equal(error, "Cannot open OpenBLAS: no FFI permission (run with --allow-ffi)");
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; each kernel test runs on both.
import "@tensorflow/tfjs-backend-wasm";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import { reduceLayout, registerReduceKernels } from "./reduce_kernels.ts";
import { withFastKernels } from "./testdata/fast_kernels.ts";
import { createRng } from "../util/rng.ts";

const fastKernels = <T>(backend: CpuKernelBackend, f: () => T) =>
  withFastKernels(backend, [tf.Sum, tf.Mean], registerReduceKernels, f);

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];

// Tests switch backends inside this one process. tfjs would silently move a tensor made on one
// backend to another when an op uses it there, so every test makes its tensors after switching
// and checks where its results live.
async function use(name: CpuKernelBackend): Promise<void> {
  if (!(await tf.setBackend(name))) {
    throw new Error(`Cannot start backend "${name}": setBackend failed`);
  }
}

function assertOn(t: tf.Tensor, name: CpuKernelBackend, label: string): void {
  const backend = tf.engine().state.tensorInfo.get(t.dataId)?.backend;
  assert.ok(backend === tf.findBackend(name), `${label}: result is not on "${name}"`);
}

// Seeded so every run checks the same numbers.
const rng = (seed: number): () => number => createRng(seed).uniform;

function randomValues(shape: number[], next: () => number): Float32Array {
  const size = shape.reduce((acc, d) => acc * d, 1);
  return Float32Array.from({ length: size }, () => 2 * next() - 1);
}

/** One reduction: `op(x, axis, keepDims)` on values that every backend gets identically. */
interface Case {
  op: "sum" | "mean";
  shape: number[];
  axis: number | number[] | null;
  keepDims: boolean;
  values: Float32Array;
}

/** A result read back to plain memory, comparable across backends. */
interface Values {
  shape: number[];
  values: Float32Array;
}

function run(c: Case, x: tf.Tensor): tf.Tensor {
  const axis = c.axis ?? undefined;
  return c.op === "sum" ? tf.sum(x, axis, c.keepDims) : tf.mean(x, axis, c.keepDims);
}

function label(c: Case): string {
  return `${c.op}([${c.shape}], ${JSON.stringify(c.axis)}, keepDims ${c.keepDims})`;
}

function valuesOf(t: tf.Tensor): Values {
  return { shape: t.shape, values: t.dataSync() as Float32Array };
}

// Whether the fast path should take `c`: float32, and the reduced axes one block or the input
// empty. The rest must reach the stock kernel.
function isFast(c: Case): boolean {
  const axes = c.axis === null ? c.shape.map((_, d) => d) : [c.axis].flat();
  return reduceLayout(c.shape, axes) !== null || c.values.length === 0;
}

// Elementwise, against the scale summation error is measured on: the same reduction of |x|. A sum
// that cancels to near 0 has no meaningful relative error of its own, and the stock wasm kernels
// sum in float32, whose error grows with that scale, not with the result.
function assertClose(actual: Values, expected: Values, scale: Values, label: string): void {
  assert.deepEqual(actual.shape, expected.shape, `${label}: shape`);
  assert.equal(actual.values.length, expected.values.length, `${label}: length`);
  for (let i = 0; i < expected.values.length; i++) {
    const diff = Math.abs(actual.values[i] - expected.values[i]);
    const tol = 1e-5 * scale.values[i];
    assert.ok(
      diff <= tol,
      `${label}: element ${i} is ${actual.values[i]}, expected ${expected.values[i]} (±${tol})`,
    );
  }
}

function references(backend: CpuKernelBackend): string {
  return backend === "cpu" ? "stock cpu" : `stock ${backend} and stock cpu`;
}

// Reads the tensor `f` returns and frees everything it made.
function read(f: () => tf.Tensor): Values {
  const t = tf.tidy(f);
  const values = valuesOf(t);
  t.dispose();
  return values;
}

// Stock results of every case on `backend`, on tensors made there.
async function stockResults(backend: CpuKernelBackend, cases: Case[]): Promise<Values[]> {
  await use(backend);
  return cases.map((c) => read(() => run(c, tf.tensor(c.values, c.shape))));
}

// The same reductions of |x| on stock cpu: the scale each result's error is measured against.
async function scales(cases: Case[]): Promise<Values[]> {
  await use("cpu");
  return cases.map((c) => read(() => run(c, tf.abs(tf.tensor(c.values, c.shape)))));
}

// Registers a test that may switch backends, and switches back to cpu however it ends, so later
// tests (and other files' assumptions) start on cpu.
function backendTest(name: string, fn: () => void | Promise<void>): void {
  Deno.test(name, async () => {
    try {
      await fn();
    } finally {
      await use("cpu");
    }
  });
}

// Random shapes of rank 0 to 4 with dimensions of 1 to 6, random axes (some negative, some
// repeated orders), both ops and both keepDims: leading, trailing, middle and split blocks.
function randomCases(count: number, seed: number): Case[] {
  const next = rng(seed);
  const pick = (n: number) => Math.floor(next() * n);
  return Array.from({ length: count }, () => {
    const rank = pick(5);
    const shape = Array.from({ length: rank }, () => (next() < 0.2 ? 1 : 1 + pick(6)));
    const axes = shape.map((_, d) => d).filter(() => next() < 0.5);
    // Unsorted and negative axes must be normalised like tfjs does.
    const axis = axes.map((a) => (next() < 0.3 ? a - rank : a)).sort(() => next() - 0.5);
    return {
      op: next() < 0.7 ? "sum" : "mean",
      shape,
      axis: axis.length === 1 && next() < 0.5 ? axis[0] : axis,
      keepDims: next() < 0.5,
      values: randomValues(shape, next),
    };
  });
}

function fixedCases(seed: number): Case[] {
  const next = rng(seed);
  const specs: [Case["op"], number[], Case["axis"]][] = [
    // Bias gradients: the reason these kernels exist.
    ["sum", [512, 64], 0],
    ["sum", [8, 16, 32], [0, 1]],
    ["sum", [8, 16, 32], [1, 0]],
    ["sum", [8, 16, 32], [-3, -2]],
    ["mean", [512, 64], 0],
    ["mean", [8, 16, 32], [0, 1]],
    // Rows wider than one block of accumulators.
    ["sum", [3, 5000], 0],
    // Trailing, middle, all, none.
    ["sum", [64, 48], 1],
    ["sum", [64, 48], -1],
    ["mean", [6, 7, 8], [1, 2]],
    ["sum", [6, 7, 8], 1],
    ["mean", [4, 5, 6, 7], [1, 2]],
    ["sum", [6, 7, 8], null],
    ["mean", [6, 7, 8], [0, 1, 2]],
    ["sum", [6, 7], []],
    ["sum", [], null],
    // Size-1 dimensions that make split axes one block, and ones that are reduced themselves.
    ["sum", [5, 1, 7], [0, 2]],
    ["sum", [1, 9, 1], [0]],
    ["mean", [1, 1], null],
    ["sum", [4, 1], 1],
    // Split blocks: the stock kernel's job.
    ["sum", [3, 4, 5], [0, 2]],
    ["mean", [2, 3, 4, 5], [0, 2]],
    // Empty inputs: an empty output, or zeros from an empty block.
    ["sum", [0, 5], 0],
    ["sum", [0, 5], 1],
    ["sum", [5, 0], 0],
    ["sum", [3, 0, 4], [1]],
    ["sum", [0, 3, 4], [0, 2]],
    ["mean", [0, 5], 1],
    ["sum", [0], null],
  ];
  return specs.flatMap(([op, shape, axis]) =>
    [false, true].map((keepDims) => ({
      op,
      shape,
      axis,
      keepDims,
      values: randomValues(shape, next),
    }))
  );
}

// The mean over an empty block is 0/0: NaN here as in TensorFlow, where the stock cpu kernel
// returns 0; it gets its own test below.
function meanOfNothing(c: Case): boolean {
  const axes = c.axis === null ? c.shape.map((_, d) => d) : [c.axis].flat();
  const reduced = new Set(axes.map((a) => (a < 0 ? a + c.shape.length : a)));
  const outSize = c.shape.reduce((acc, d, i) => (reduced.has(i) ? acc : acc * d), 1);
  return c.op === "mean" && c.values.length === 0 && outSize > 0;
}

const CASES = [...fixedCases(1), ...randomCases(300, 2)];

for (const backend of BACKENDS) {
  backendTest(
    `Sum and Mean on ${backend}: fast kernels equal ${references(backend)}`,
    async () => {
      const cases = CASES.filter((c) => !meanOfNothing(c));
      const scale = await scales(cases);
      const cpu = await stockResults("cpu", cases);
      const stock = await stockResults(backend, cases);
      await use(backend);
      let fast = 0;
      for (const [i, c] of cases.entries()) {
        tf.tidy(() => {
          const x = tf.tensor(c.values, c.shape);
          const { result, stock: stockCalls } = fastKernels(backend, () => run(c, x));
          assertOn(result, backend, label(c));
          const actual = valuesOf(result);
          assertClose(actual, cpu[i], scale[i], `${label(c)} vs stock cpu`);
          // Stock wasm leaves the output of an empty input uninitialised.
          if (backend === "cpu" || c.values.length > 0) {
            assertClose(actual, stock[i], scale[i], `${label(c)} vs stock ${backend}`);
          }
          assert.equal(stockCalls, isFast(c) ? 0 : 1, `${label(c)}: stock calls`);
          if (isFast(c)) fast++;
        });
      }
      // The random shapes must exercise both paths, or this test checks less than it claims.
      assert.ok(fast > cases.length / 2 && fast < cases.length, `${fast} of ${cases.length} fast`);
    },
  );

  backendTest(
    `Sum and Mean on ${backend}: a tall column sum is within one float32 rounding of stock cpu`,
    async () => {
      // Stock cpu adds the rows in order in float64 and rounds once; the fast kernels also sum in
      // float64, in groups of four rows, so they may differ from it only where the two float64
      // sums straddle a float32 rounding boundary.
      const c: Case = {
        op: "sum",
        shape: [4099, 37],
        axis: 0,
        keepDims: false,
        values: randomValues([4099, 37], rng(3)),
      };
      const [cpu] = await stockResults("cpu", [c]);
      await use(backend);
      tf.tidy(() => {
        const x = tf.tensor(c.values, c.shape);
        const { result } = fastKernels(backend, () => run(c, x));
        const actual = result.dataSync();
        cpu.values.forEach((want, i) => {
          const ulp = 2 ** (Math.floor(Math.log2(Math.abs(want))) - 23);
          assert.ok(Math.abs(actual[i] - want) <= ulp, `column ${i}: ${actual[i]} vs ${want}`);
        });
      });
    },
  );

  backendTest(`Sum and Mean on ${backend}: accumulate in float64`, async () => {
    await use(backend);
    tf.tidy(() => {
      // 2^24 + 1 is not a float32: a float32 accumulator loses both ones.
      const big = 2 ** 24;
      const columns = tf.tensor2d([[big, 1], [1, 1], [1, 1], [-big, 1]]);
      const rows = tf.transpose(columns);
      const { result } = fastKernels(backend, () => [
        tf.sum(columns, 0),
        tf.sum(rows, 1),
        tf.mean(columns, 0),
      ]);
      assert.deepEqual(result.map((t) => Array.from(t.dataSync())), [[2, 4], [2, 4], [0.5, 1]]);
    });
  });

  backendTest(`Sum and Mean on ${backend}: the mean over an empty block is NaN`, async () => {
    await use(backend);
    tf.tidy(() => {
      const x = tf.zeros([0, 3]);
      const { result, stock } = fastKernels(backend, () => [tf.mean(x, 0), tf.sum(x, 0)]);
      assert.deepEqual(result.map((t) => t.shape), [[3], [3]]);
      assert.deepEqual(result.map((t) => Array.from(t.dataSync())), [[NaN, NaN, NaN], [0, 0, 0]]);
      assert.equal(stock, 0);
    });
  });

  backendTest(
    `Sum and Mean on ${backend}: int32 and bool inputs still go to the stock kernel`,
    async () => {
      await use(backend);
      tf.tidy(() => {
        const ints = tf.tensor2d([[1, 2, 3], [4, 5, 6]], [2, 3], "int32");
        const bools = tf.tensor2d([[true, false, true], [true, true, false]], [2, 3], "bool");
        const reduce =
          () => [tf.sum(ints, 0), tf.sum(ints, 1, true), tf.sum(bools, 0), tf.mean(ints)];
        const stock = reduce().map((t) => ({ dtype: t.dtype, values: t.arraySync() }));
        const { result, stock: calls } = fastKernels(backend, reduce);
        assert.deepEqual(result.map((t) => ({ dtype: t.dtype, values: t.arraySync() })), stock);
        assert.deepEqual(stock.map((s) => s.values), [[5, 7, 9], [[6], [15]], [2, 1, 1], 3.5]);
        assert.equal(calls, 4);
      });
    },
  );

  backendTest(
    `Sum and Mean on ${backend}: gradients through reductions match the stock ones`,
    async () => {
      await use(backend);
      const next = rng(4);
      const x = tf.tensor(randomValues([6, 5, 8], next), [6, 5, 8]);
      const b = tf.tensor(randomValues([8], next), [8]);
      const w = tf.tensor(randomValues([5, 8], next), [5, 8]);
      // Broadcast adds make tfjs sum their gradients over the leading axes: the fast kernels run
      // in the backward pass too. The squares keep a wrong gradient from hiding behind linearity.
      const loss = (x: tf.Tensor, b: tf.Tensor, w: tf.Tensor) =>
        tf.add(
          tf.sum(tf.square(tf.add(tf.add(x, b), w)), [0, 1]).sum(),
          tf.mean(tf.square(tf.sum(tf.mul(x, w), 0, true))),
        );
      const grads = () => tf.grads(loss)([x, b, w]);
      const stock = grads().map(valuesOf);
      const before = tf.memory().numTensors;
      const { result } = fastKernels(backend, grads);
      result.forEach((g, i) => {
        assertOn(g, backend, `gradient ${i}`);
        const scale = { shape: g.shape, values: new Float32Array(g.size).fill(1) };
        assertClose(valuesOf(g), stock[i], scale, `gradient ${i}`);
      });
      tf.dispose(result);
      assert.equal(tf.memory().numTensors, before, "tensors leaked");
      tf.dispose([x, b, w]);
    },
  );

  backendTest(`Sum and Mean on ${backend}: no backend memory leaks`, async () => {
    await use(backend);
    const x = tf.ones([16, 8]);
    const backendOf = tf.backend() as unknown as { numDataIds(): number };
    const before = backendOf.numDataIds();
    fastKernels(backend, () => {
      for (const axis of [0, 1, [0, 1]]) {
        tf.dispose([tf.sum(x, axis), tf.mean(x, axis, true)]);
      }
      tf.tidy(() => void tf.sum(tf.zeros([0, 4]), 0));
    });
    assert.equal(backendOf.numDataIds(), before);
    x.dispose();
  });
}

backendTest(
  "registerReduceKernels: registering twice throws, restoring allows it again",
  async () => {
    await use("cpu");
    const stockSum = tf.getKernel(tf.Sum, "cpu");
    const restore = registerReduceKernels("cpu");
    try {
      assert.notEqual(tf.getKernel(tf.Sum, "cpu"), stockSum);
      assert.throws(
        () => registerReduceKernels("cpu"),
        /^Error: Cannot register reduce kernels for "cpu": already registered/,
      );
      // The other backend is independent.
      registerReduceKernels("wasm")();
    } finally {
      restore();
    }
    restore();
    assert.equal(tf.getKernel(tf.Sum, "cpu"), stockSum);
    registerReduceKernels("cpu")();
    assert.throws(
      () => registerReduceKernels("webgl" as CpuKernelBackend),
      /Cannot register reduce kernels for "webgl": not a supported backend/,
    );
  },
);

Deno.test("reduceLayout: blocks ignore size-1 dimensions; split, repeated and bad axes are null", () => {
  assert.deepEqual(reduceLayout([16384, 512], [0]), { outer: 1, reduce: 16384, inner: 512 });
  assert.deepEqual(reduceLayout([16384, 512], [-1]), { outer: 16384, reduce: 512, inner: 1 });
  assert.deepEqual(reduceLayout([2, 3, 4, 5], [2, 1]), { outer: 2, reduce: 12, inner: 5 });
  assert.deepEqual(reduceLayout([2, 1, 4], [0, 2]), { outer: 1, reduce: 8, inner: 1 });
  assert.deepEqual(reduceLayout([2, 3], []), { outer: 6, reduce: 1, inner: 1 });
  assert.deepEqual(reduceLayout([], []), { outer: 1, reduce: 1, inner: 1 });
  assert.equal(reduceLayout([2, 3, 4], [0, 2]), null);
  assert.equal(reduceLayout([2, 3], [0, -2]), null);
  assert.equal(reduceLayout([2, 3], [2]), null);
  assert.equal(reduceLayout([2, 3], [0.5]), null);
});

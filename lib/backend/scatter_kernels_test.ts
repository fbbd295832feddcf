import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; each kernel test runs on both.
import "@tensorflow/tfjs-backend-wasm";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import { registerScatterKernels } from "./scatter_kernels.ts";
import { withFastKernels } from "./testdata/fast_kernels.ts";
import { createRng } from "../util/rng.ts";

const fastKernels = <T>(backend: CpuKernelBackend, f: () => T) =>
  withFastKernels(backend, [tf.GatherV2, tf.UnsortedSegmentSum], registerScatterKernels, f);

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];

// Tests switch backends inside this one process. tfjs would silently move a tensor made on one
// backend to another when an op uses it there, so every test makes its tensors after switching
// and checks where its results live.
async function use(name: CpuKernelBackend): Promise<void> {
  if (!(await tf.setBackend(name))) {
    throw new Error(`Cannot start backend "${name}": setBackend failed`);
  }
  // tfjs's first-use banner would only advertise tfjs-node.
  if (name === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
}

function assertOn(t: tf.Tensor, name: CpuKernelBackend, label: string): void {
  const backend = tf.engine().state.tensorInfo.get(t.dataId)?.backend;
  assert.ok(backend === tf.findBackend(name), `${label}: result is not on "${name}"`);
}

// Registers a test that may switch backends, and switches back to cpu however it ends.
function backendTest(name: string, fn: () => void | Promise<void>): void {
  Deno.test(name, async () => {
    try {
      await fn();
    } finally {
      await use("cpu");
    }
  });
}

// Seeded so every run checks the same numbers.
const rng = (seed: number): () => number => createRng(seed).uniform;

const size = (shape: number[]) => shape.reduce((a, d) => a * d, 1);
const randomValues = (shape: number[], next: () => number) =>
  Float32Array.from({ length: size(shape) }, () => 2 * next() - 1);
const randomIds = (count: number, below: number, next: () => number) =>
  Int32Array.from({ length: count }, () => Math.floor(next() * below));

/** One gather: `tf.gather(x, indices, axis, batchDims)`. */
interface GatherCase {
  shape: number[];
  values: Float32Array;
  indexShape: number[];
  indices: Int32Array;
  axis: number;
  batchDims: number;
}

function gatherLabel(c: GatherCase): string {
  return `gather([${c.shape}], indices [${c.indexShape}], axis ${c.axis}, batchDims ${c.batchDims})`;
}

// Random shapes of rank 1 to 4 (dimensions 0 to 5), any axis (some negative), indices of rank 0
// to 2, and batchDims 1 where the shapes allow it.
function gatherCases(count: number, seed: number): GatherCase[] {
  const next = rng(seed);
  const pick = (n: number) => Math.floor(next() * n);
  const cases: GatherCase[] = [];
  while (cases.length < count) {
    const rank = 1 + pick(4);
    const shape = Array.from({ length: rank }, () => (next() < 0.05 ? 0 : 1 + pick(5)));
    // The stock cpu kernel cannot gather with an empty batch dimension.
    const batchDims = rank >= 2 && shape[0] !== 0 && next() < 0.3 ? 1 : 0;
    const axis = batchDims + pick(rank - batchDims);
    if (shape[axis] === 0) continue;
    const indexShape = batchDims ? [shape[0]!, 1 + pick(4)] : Array.from(
      { length: pick(3) },
      () => pick(5),
    );
    cases.push({
      shape,
      values: randomValues(shape, next),
      indexShape,
      indices: randomIds(size(indexShape), shape[axis]!, next),
      axis: next() < 0.3 ? axis - rank : axis,
      batchDims,
    });
  }
  // The JSAE shape, scaled down: rows of a feature matrix per token and feature.
  cases.push({
    shape: [512, 40],
    values: randomValues([512, 40], next),
    indexShape: [300],
    indices: randomIds(300, 512, next),
    axis: 0,
    batchDims: 0,
  });
  return cases;
}

function runGather(c: GatherCase): tf.Tensor {
  const x = tf.tensor(c.values, c.shape);
  const ids = tf.tensor(c.indices, c.indexShape, "int32");
  return tf.gather(x, ids, c.axis, c.batchDims);
}

async function stockGathers(cases: GatherCase[]): Promise<{ shape: number[]; values: number[] }[]> {
  await use("cpu");
  return cases.map((c) =>
    tf.tidy(() => {
      const t = runGather(c);
      return { shape: t.shape, values: Array.from(t.dataSync()) };
    })
  );
}

for (const backend of BACKENDS) {
  backendTest(
    `GatherV2 on ${backend}: the fast kernel copies exactly what stock cpu does`,
    async () => {
      const cases = gatherCases(300, 1);
      const stock = await stockGathers(cases);
      await use(backend);
      for (const [i, c] of cases.entries()) {
        tf.tidy(() => {
          const { result, stock: calls } = fastKernels(backend, () => runGather(c));
          assertOn(result, backend, gatherLabel(c));
          assert.deepEqual(result.shape, stock[i]!.shape, `${gatherLabel(c)}: shape`);
          assert.deepEqual(Array.from(result.dataSync()), stock[i]!.values, gatherLabel(c));
          assert.equal(calls, 0, `${gatherLabel(c)}: stock calls`);
        });
      }
    },
  );

  backendTest(`GatherV2 on ${backend}: out-of-range indices are rejected`, async () => {
    await use(backend);
    tf.tidy(() => {
      const x = tf.tensor2d([[1, 2], [3, 4]]);
      for (const bad of [2, -1]) {
        const ids = tf.tensor1d([0, bad], "int32");
        assert.throws(
          () => fastKernels(backend, () => tf.gather(x, ids)),
          new RegExp(`index value ${bad} is not in \\[0, 1\\]`),
        );
      }
    });
  });

  backendTest(`GatherV2 on ${backend}: int32 data still goes to the stock kernel`, async () => {
    await use(backend);
    tf.tidy(() => {
      const x = tf.tensor2d([[1, 2], [3, 4]], [2, 2], "int32");
      const ids = tf.tensor1d([1, 1, 0], "int32");
      const { result, stock } = fastKernels(backend, () => tf.gather(x, ids));
      assert.equal(result.dtype, "int32");
      assert.deepEqual(result.arraySync(), [[3, 4], [3, 4], [1, 2]]);
      assert.equal(stock, 1);
    });
  });
}

/** One segment sum: `tf.unsortedSegmentSum(x, ids, numSegments)` with rank-1 ids. */
interface SegmentCase {
  shape: number[];
  values: Float32Array;
  ids: Int32Array;
  numSegments: number;
}

function segmentLabel(c: SegmentCase): string {
  return `unsortedSegmentSum([${c.shape}], ${c.numSegments} segments)`;
}

// Rows 0 to 40 of inner shapes of rank 0 to 2, 1 to 9 segments, and a few ids out of range
// (negative or ≥ numSegments: dropped).
function segmentCases(count: number, seed: number): SegmentCase[] {
  const next = rng(seed);
  const pick = (n: number) => Math.floor(next() * n);
  const cases = Array.from({ length: count }, () => {
    const rows = pick(41);
    const shape = [rows, ...Array.from({ length: pick(3) }, () => 1 + pick(6))];
    // The stock cpu kernel cannot make 0 segments (tested separately below).
    const numSegments = 1 + pick(9);
    const ids = Int32Array.from(
      { length: rows },
      () => (next() < 0.1 ? pick(5) - 5 + (next() < 0.5 ? 0 : numSegments + 5) : pick(numSegments)),
    );
    return { shape, values: randomValues(shape, next), ids, numSegments };
  });
  // The JSAE gradient's shape, scaled down: many rows into few segments.
  cases.push({
    shape: [5000, 24],
    values: randomValues([5000, 24], next),
    ids: randomIds(5000, 64, next),
    numSegments: 64,
  });
  return cases;
}

function runSegments(c: SegmentCase): tf.Tensor {
  const x = tf.tensor(c.values, c.shape);
  return tf.unsortedSegmentSum(x, tf.tensor1d(c.ids, "int32"), c.numSegments);
}

for (const backend of BACKENDS) {
  backendTest(
    `UnsortedSegmentSum on ${backend}: the fast kernel equals stock cpu within 1e-6`,
    async () => {
      const cases = segmentCases(200, 2);
      await use("cpu");
      const stock = cases.map((c) =>
        tf.tidy(() => {
          const t = runSegments(c);
          return { shape: t.shape, values: t.dataSync().slice() };
        })
      );
      await use(backend);
      for (const [i, c] of cases.entries()) {
        tf.tidy(() => {
          const { result, stock: calls } = fastKernels(backend, () => runSegments(c));
          assertOn(result, backend, segmentLabel(c));
          assert.deepEqual(result.shape, stock[i]!.shape, `${segmentLabel(c)}: shape`);
          const got = result.dataSync();
          stock[i]!.values.forEach((want, e) =>
            assert.ok(
              Math.abs(got[e]! - want) <= 1e-6 * Math.max(1, Math.abs(want)),
              `${segmentLabel(c)}: element ${e} is ${got[e]}, expected ${want}`,
            )
          );
          assert.equal(calls, 0, `${segmentLabel(c)}: stock calls`);
        });
      }
    },
  );

  backendTest(`UnsortedSegmentSum on ${backend}: ids of rank 2 follow TensorFlow`, async () => {
    await use(backend);
    tf.tidy(() => {
      const next = rng(3);
      const x = tf.tensor(randomValues([3, 4, 5], next), [3, 4, 5]);
      const ids = tf.tensor(randomIds(12, 6, next), [3, 4], "int32");
      const { result } = fastKernels(backend, () => [
        // tfjs types the ids as rank 1; the kernel takes any prefix of x's shape.
        tf.unsortedSegmentSum(x, ids as tf.Tensor1D, 6),
        // TensorFlow: the same as flattening the id dimensions.
        tf.unsortedSegmentSum(x.reshape([12, 5]), ids.reshape([12]), 6),
      ]);
      assert.deepEqual(result[0]!.shape, [6, 5]);
      assert.deepEqual(result[0]!.arraySync(), result[1]!.arraySync());
    });
  });

  backendTest(`UnsortedSegmentSum on ${backend}: accumulates in float64`, async () => {
    await use(backend);
    tf.tidy(() => {
      // 2^24 + 1 is not a float32: a float32 accumulator loses both ones.
      const big = 2 ** 24;
      const x = tf.tensor2d([[big, 1], [1, 1], [1, 1], [-big, 1]]);
      const ids = tf.tensor1d([0, 0, 0, 0], "int32");
      const { result } = fastKernels(backend, () => tf.unsortedSegmentSum(x, ids, 1));
      assert.deepEqual(result.arraySync(), [[2, 4]]);
    });
  });

  backendTest(`UnsortedSegmentSum on ${backend}: empty inputs give zeros`, async () => {
    await use(backend);
    tf.tidy(() => {
      const { result } = fastKernels(backend, () => [
        tf.unsortedSegmentSum(tf.zeros([0, 3]), tf.zeros([0], "int32"), 2),
        tf.unsortedSegmentSum(tf.zeros([4, 0]), tf.tensor1d([0, 1, 0, 1], "int32"), 3),
        tf.unsortedSegmentSum(tf.ones([2, 3]), tf.tensor1d([0, 1], "int32"), 0),
      ]);
      assert.deepEqual(result.map((t) => t.shape), [[2, 3], [3, 0], [0, 3]]);
      assert.deepEqual(result[0]!.arraySync(), [[0, 0, 0], [0, 0, 0]]);
    });
  });

  backendTest(
    `UnsortedSegmentSum on ${backend}: gradients of tf.gather equal stock cpu's`,
    async () => {
      const next = rng(4);
      const shape = [7, 6, 5];
      const values = randomValues(shape, next);
      const weights = randomValues([20, 6, 5], next);
      const cases = [
        { axis: 0, ids: randomIds(20, 7, next), wShape: [20, 6, 5] },
        { axis: 1, ids: randomIds(9, 6, next), wShape: [7, 9, 5] },
        { axis: 2, ids: randomIds(3, 5, next), wShape: [7, 6, 3] },
      ];
      const grads = () =>
        cases.map((c) => {
          const x = tf.tensor(values, shape);
          const w = tf.tensor(weights.subarray(0, size(c.wShape)), c.wShape);
          const ids = tf.tensor1d(c.ids, "int32");
          // Weighted so that each gathered element's gradient differs.
          return tf.grad((x: tf.Tensor) => tf.gather(x, ids, c.axis).mul(w).sum())(x);
        });
      await use("cpu");
      const stock = tf.tidy(() => grads().map((g) => g.dataSync().slice()));
      await use(backend);
      tf.tidy(() => {
        const { result, stock: calls } = fastKernels(backend, grads);
        result.forEach((g, i) => {
          assertOn(g, backend, `axis ${cases[i]!.axis}`);
          assert.deepEqual(g.shape, shape);
          const got = g.dataSync();
          stock[i]!.forEach((want, e) =>
            assert.ok(Math.abs(got[e]! - want) <= 1e-6, `axis ${cases[i]!.axis}, element ${e}`)
          );
        });
        // Gathers along axes 1 and 2 transpose first; the scatter itself never falls back.
        assert.equal(calls, 0);
      });
    },
  );

  backendTest(`scatter kernels on ${backend}: no backend memory leaks`, async () => {
    await use(backend);
    const x = tf.ones([16, 8]);
    const ids = tf.tensor1d([0, 3, 3, 1, 2, 0, 1, 1, 0, 2, 3, 3, 1, 0, 2, 2], "int32");
    const backendOf = tf.backend() as unknown as { numDataIds(): number };
    const before = backendOf.numDataIds();
    fastKernels(backend, () => {
      tf.dispose([tf.gather(x, ids), tf.unsortedSegmentSum(x, ids, 4)]);
      // A kernel that throws after allocating must free its output.
      assert.throws(() => tf.gather(x, tf.tensor1d([99], "int32")));
    });
    assert.equal(backendOf.numDataIds(), before + 1, "only the bad index tensor is left");
    tf.dispose([x, ids]);
  });

  backendTest(`registerScatterKernels on ${backend}: restores what was there`, async () => {
    await use(backend);
    const before = [tf.GatherV2, tf.UnsortedSegmentSum].map((n) => tf.getKernel(n, backend));
    const restore = registerScatterKernels(backend);
    try {
      assert.throws(() => registerScatterKernels(backend), /already registered/);
      for (const name of [tf.GatherV2, tf.UnsortedSegmentSum]) {
        assert.ok(tf.getKernel(name, backend), `${name} registered`);
      }
    } finally {
      restore();
    }
    restore();
    const after = [tf.GatherV2, tf.UnsortedSegmentSum].map((n) => tf.getKernel(n, backend));
    assert.deepEqual(after, before);
    // wasm has no stock UnsortedSegmentSum: the restore removes ours again.
    assert.equal(after[1] === undefined, backend === "wasm");
    // And it can be registered again.
    registerScatterKernels(backend)();
  });
}

Deno.test("registerScatterKernels refuses other backends", () => {
  assert.throws(
    () => registerScatterKernels("webgl" as CpuKernelBackend),
    /not a supported backend/,
  );
});

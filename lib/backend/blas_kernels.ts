/**
 * TensorFlow.js `cpu` kernels for `BatchMatMul` and `_FusedMatMul` that run the product in BLAS.
 *
 * The stock kernels multiply in a JavaScript triple loop (~1 GFLOP/s); OpenBLAS is two orders of
 * magnitude faster. tfjs defines both gradients with `matMul` ops, so backward passes use these
 * kernels too.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { BlasLibrary } from "./blas.ts";

// The parts of tfjs-backend-cpu's MathBackendCPU these kernels use; that package is not imported
// directly, only through the umbrella package, which does not export its types.
interface CpuBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } | undefined };
  makeTensorInfo(shape: number[], dtype: "float32", values: Float32Array): tf.TensorInfo;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** The shapes of one (batched) product `op(A) · op(B)`. */
interface Product {
  batchShape: number[];
  m: number;
  n: number;
  k: number;
}

const FUSED_ACTIVATIONS = new Set([
  "linear",
  "relu",
  "relu6",
  "elu",
  "prelu",
  "leakyrelu",
  "sigmoid",
]);

let registered = false;

/**
 * Replaces the tfjs `cpu` kernels `BatchMatMul` and `_FusedMatMul` with BLAS-backed ones.
 *
 * Inputs that are not float32 (int32, complex64) still go to the stock kernels, and so does a
 * `_FusedMatMul` whose bias or PReLU weights would broadcast the output to a larger shape.
 * Batch dimensions broadcast per numpy rules, also where the stock kernel gets them wrong
 * (e.g. `[2,1,m,k] · [1,3,k,n]`).
 *
 * @param blas the library from `openBlas()`; it must stay open while the kernels are registered
 * @returns a function that re-registers the stock kernels; calling it again does nothing
 */
export function registerBlasKernels(blas: BlasLibrary): () => void {
  if (registered) {
    throw new Error(
      'Cannot register BLAS kernels for "cpu": already registered; call the restore function first',
    );
  }
  const stock = [tf.BatchMatMul, tf._FusedMatMul].map((name) => {
    const config = tf.getKernel(name, "cpu");
    if (config === undefined) {
      throw new Error(
        `Cannot register BLAS kernel "${name}" for "cpu": no stock kernel to replace ` +
          "(is @tensorflow/tfjs imported?)",
      );
    }
    return config;
  });
  const [stockBatchMatMul, stockFused] = stock.map((config) => config.kernelFunc);
  replaceKernel(tf.BatchMatMul, (args) => batchMatMul(blas, args, stockBatchMatMul));
  replaceKernel(tf._FusedMatMul, (args) => fusedMatMul(blas, args, stockFused));
  registered = true;
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    for (const config of stock) {
      tf.unregisterKernel(config.kernelName, "cpu");
      tf.registerKernel(config);
    }
    registered = false;
  };
}

function replaceKernel(kernelName: string, kernelFunc: tf.KernelFunc): void {
  // registerKernel would overwrite too, but warns on the console about the duplicate.
  tf.unregisterKernel(kernelName, "cpu");
  tf.registerKernel({ kernelName, backendName: "cpu", kernelFunc });
}

function batchMatMul(
  blas: BlasLibrary,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const backend = args.backend as CpuBackend;
  const { a, b } = args.inputs;
  const aValues = float32Values(backend, a);
  const bValues = float32Values(backend, b);
  if (a === undefined || b === undefined || aValues === null || bValues === null) {
    return stock(args);
  }
  const transposeA = args.attrs?.transposeA === true;
  const transposeB = args.attrs?.transposeB === true;
  const product = productOf(a.shape, b.shape, transposeA, transposeB);
  const out = multiply(blas, product, a.shape, aValues, transposeA, b.shape, bValues, transposeB);
  return backend.makeTensorInfo(outShape(product), "float32", out);
}

function fusedMatMul(
  blas: BlasLibrary,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const backend = args.backend as CpuBackend;
  const { a, b, bias, preluActivationWeights: alpha } = args.inputs;
  const activation = String(args.attrs?.activation ?? "linear");
  const aValues = float32Values(backend, a);
  const bValues = float32Values(backend, b);
  const biasValues = float32Values(backend, bias);
  const alphaValues = float32Values(backend, alpha);
  if (
    a === undefined || b === undefined || aValues === null || bValues === null ||
    !FUSED_ACTIVATIONS.has(activation) ||
    (bias !== undefined && biasValues === null) ||
    (activation === "prelu" && (alpha === undefined || alphaValues === null))
  ) {
    return stock(args);
  }
  const transposeA = args.attrs?.transposeA === true;
  const transposeB = args.attrs?.transposeB === true;
  const product = productOf(a.shape, b.shape, transposeA, transposeB);
  const shape = outShape(product);
  if (
    (bias !== undefined && !broadcastsInto(bias.shape, shape)) ||
    (activation === "prelu" && alpha !== undefined && !broadcastsInto(alpha.shape, shape))
  ) {
    return stock(args);
  }
  const out = multiply(blas, product, a.shape, aValues, transposeA, b.shape, bValues, transposeB);
  if (bias !== undefined && biasValues !== null) {
    forEachRow(shape, bias.shape, (start, from, step, cols) => {
      for (let j = 0; j < cols; j++) out[start + j] += biasValues[from + j * step];
    });
  }
  if (activation === "prelu" && alpha !== undefined && alphaValues !== null) {
    forEachRow(shape, alpha.shape, (start, from, step, cols) => {
      for (let j = 0; j < cols; j++) {
        const v = out[start + j];
        if (v < 0) out[start + j] = alphaValues[from + j * step] * v;
      }
    });
  } else {
    const leakyAlpha = Number(args.attrs?.leakyreluAlpha ?? 0.2);
    activateInPlace(out, activation, leakyAlpha);
  }
  return backend.makeTensorInfo(shape, "float32", out);
}

// The formulas are the stock cpu kernels' own, so results agree bit for bit after the matmul.
function activateInPlace(out: Float32Array, activation: string, leakyAlpha: number): void {
  switch (activation) {
    case "relu":
      for (let i = 0; i < out.length; i++) out[i] = Math.max(0, out[i]);
      break;
    case "relu6":
      for (let i = 0; i < out.length; i++) out[i] = Math.min(Math.max(0, out[i]), 6);
      break;
    case "elu":
      for (let i = 0; i < out.length; i++) {
        const v = out[i];
        out[i] = v >= 0 ? v : Math.exp(v) - 1;
      }
      break;
    case "leakyrelu":
      for (let i = 0; i < out.length; i++) {
        const v = out[i];
        out[i] = v < 0 ? leakyAlpha * v : v;
      }
      break;
    case "sigmoid":
      for (let i = 0; i < out.length; i++) out[i] = 1 / (1 + Math.exp(-out[i]));
      break;
  }
}

// null where the tensor is absent or its data is not float32 in a Float32Array; those cases go to
// the stock kernel, which knows every dtype.
function float32Values(
  backend: CpuBackend,
  t: tf.TensorInfo | undefined,
): Float32Array | null {
  if (t === undefined || t.dtype !== "float32") return null;
  const values = backend.data.get(t.dataId)?.values;
  return values instanceof Float32Array ? values : null;
}

function productOf(
  aShape: number[],
  bShape: number[],
  transposeA: boolean,
  transposeB: boolean,
): Product {
  if (aShape.length < 2 || bShape.length < 2) {
    throw new Error(
      `Cannot multiply shapes "[${aShape}]" and "[${bShape}]": both need rank 2 or more`,
    );
  }
  const [aRows, aCols] = aShape.slice(-2);
  const [bRows, bCols] = bShape.slice(-2);
  const k = transposeA ? aRows : aCols;
  const kB = transposeB ? bCols : bRows;
  if (k !== kB) {
    throw new Error(
      `Cannot multiply shapes "[${aShape}]" and "[${bShape}]" with transposeA ${transposeA}, ` +
        `transposeB ${transposeB}: inner sizes ${k} and ${kB} differ`,
    );
  }
  return {
    batchShape: tf.broadcast_util.assertAndGetBroadcastShape(
      aShape.slice(0, -2),
      bShape.slice(0, -2),
    ),
    m: transposeA ? aCols : aRows,
    n: transposeB ? bRows : bCols,
    k,
  };
}

function outShape(p: Product): number[] {
  return [...p.batchShape, p.m, p.n];
}

function multiply(
  blas: BlasLibrary,
  p: Product,
  aShape: number[],
  a: Float32Array,
  transposeA: boolean,
  bShape: number[],
  b: Float32Array,
  transposeB: boolean,
): Float32Array {
  const { m, n, k } = p;
  const batch = sizeOf(p.batchShape);
  const out = new Float32Array(batch * m * n);
  // An empty sum is 0, which the fresh array already holds.
  if (out.length === 0 || k === 0) return out;
  const aBatchShape = aShape.slice(0, -2);
  const bBatchShape = bShape.slice(0, -2);
  if (!transposeA && sizeOf(bBatchShape) === 1 && sizeOf(aBatchShape) === batch) {
    // A's batches are contiguous rows sharing one B: a single tall product beats `batch` calls.
    blas.sgemm({ transA: false, transB: transposeB, m: batch * m, n, k, a, b, c: out });
    return out;
  }
  const aIndex = batchIndex(p.batchShape, aBatchShape);
  const bIndex = batchIndex(p.batchShape, bBatchShape);
  for (let i = 0; i < batch; i++) {
    blas.sgemm({
      transA: transposeA,
      transB: transposeB,
      m,
      n,
      k,
      a,
      aOffset: aIndex[i] * m * k,
      b,
      bOffset: bIndex[i] * k * n,
      c: out,
      cOffset: i * m * n,
    });
  }
  return out;
}

// For each batch of the broadcast output, the index of the operand's batch that feeds it.
function batchIndex(outBatchShape: number[], batchShape: number[]): Int32Array {
  const total = sizeOf(outBatchShape);
  const index = new Int32Array(total);
  if (sizeOf(batchShape) === 1) return index;
  const strides = broadcastStrides(batchShape, outBatchShape.length);
  for (let i = 0; i < total; i++) {
    let rest = i;
    let at = 0;
    for (let d = outBatchShape.length - 1; d >= 0; d--) {
      const coord = rest % outBatchShape[d];
      rest = (rest - coord) / outBatchShape[d];
      at += coord * strides[d];
    }
    index[i] = at;
  }
  return index;
}

// Row-major strides of `shape` left-padded to `rank`, 0 along the dimensions it broadcasts over.
function broadcastStrides(shape: number[], rank: number): number[] {
  const strides = new Array<number>(rank).fill(0);
  let stride = 1;
  for (let d = 1; d <= shape.length; d++) {
    const size = shape[shape.length - d];
    strides[rank - d] = size === 1 ? 0 : stride;
    stride *= size;
  }
  return strides;
}

function broadcastsInto(shape: number[], target: number[]): boolean {
  if (shape.length > target.length) return false;
  for (let d = 1; d <= shape.length; d++) {
    const size = shape[shape.length - d];
    if (size !== 1 && size !== target[target.length - d]) return false;
  }
  return true;
}

// Walks the innermost rows of `outShape` with the matching row of an operand of `shape` that
// broadcasts into it: `visit(rowStart, operandRowStart, operandColumnStep, columns)`.
function forEachRow(
  outShape: number[],
  shape: number[],
  visit: (start: number, from: number, step: number, cols: number) => void,
): void {
  const rank = outShape.length;
  const cols = outShape[rank - 1];
  const size = sizeOf(outShape);
  if (size === 0) return;
  const strides = broadcastStrides(shape, rank);
  const coord = new Array<number>(rank - 1).fill(0);
  let from = 0;
  for (let start = 0; start < size; start += cols) {
    visit(start, from, strides[rank - 1], cols);
    for (let d = rank - 2; d >= 0; d--) {
      coord[d]++;
      from += strides[d];
      if (coord[d] < outShape[d]) break;
      from -= strides[d] * coord[d];
      coord[d] = 0;
    }
  }
}

function sizeOf(shape: number[]): number {
  return shape.reduce((acc, d) => acc * d, 1);
}

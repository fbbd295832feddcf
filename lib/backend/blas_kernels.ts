/**
 * TensorFlow.js `cpu` and `wasm` kernels for `BatchMatMul` and `_FusedMatMul` that run the product
 * in BLAS.
 *
 * The stock `cpu` kernels multiply in a JavaScript triple loop (~1 GFLOP/s); the stock `wasm` ones
 * are single-threaded and nearly as slow on transposed operands, which every backward pass has.
 * OpenBLAS is one to two orders of magnitude faster. tfjs defines both gradients with `matMul` ops, so backward passes
 * use these kernels too. One code path serves both backends: a small {@link KernelStorage} adapter gives
 * the kernels each tensor's float32 values in place (a plain array on `cpu`, a view of the wasm
 * heap on `wasm`), so operands are never copied.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import type { BlasLibrary } from "./blas.ts";
import { type KernelArgs, overrideKernels } from "./kernel_override.ts";
import {
  type Allocation,
  type CpuKernelBackend,
  fill,
  type KernelStorage,
  sizeOf,
} from "./kernel_storage.ts";

/** The tfjs backends whose matrix-product kernels {@link registerBlasKernels} can replace. */
export type BlasBackendName = CpuKernelBackend;

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

/**
 * Replaces one backend's tfjs kernels `BatchMatMul` and `_FusedMatMul` with BLAS-backed ones.
 * Registrations for `cpu` and `wasm` may coexist; each has its own restore function.
 *
 * Inputs that are not float32 (int32, complex64) still go to that backend's stock kernels, and so
 * does a `_FusedMatMul` whose bias or PReLU weights would broadcast the output to a larger shape.
 * Batch dimensions broadcast per numpy rules, also where the stock `cpu` kernel gets them wrong
 * (e.g. `[2,1,m,k] · [1,3,k,n]`), and `_FusedMatMul` takes any bias that broadcasts into the output,
 * where the stock `wasm` kernel accepts rank 1 only. On `wasm`, operands are read from and the
 * result written to the wasm heap in place.
 *
 * @param blas the library from `openBlas()`; it must stay open while the kernels are registered
 * @param backendName the backend whose kernels to replace; for `wasm`,
 *   `@tensorflow/tfjs-backend-wasm` must be imported first (its backend need not be active yet)
 * @returns a function that re-registers that backend's stock kernels; calling it again does nothing
 */
export function registerBlasKernels(
  blas: BlasLibrary,
  backendName: BlasBackendName = "cpu",
): () => void {
  return overrideKernels("BLAS", backendName, {
    [tf.BatchMatMul]: (storage, args, stock) => batchMatMul(blas, storage, args, stock),
    [tf._FusedMatMul]: (storage, args, stock) => fusedMatMul(blas, storage, args, stock),
  });
}

function batchMatMul(
  blas: BlasLibrary,
  storage: KernelStorage,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const { a, b } = args.inputs;
  if (!storage.isFloat32(a) || !storage.isFloat32(b)) return stock(args);
  const transposeA = args.attrs?.transposeA === true;
  const transposeB = args.attrs?.transposeB === true;
  const product = productOf(a.shape, b.shape, transposeA, transposeB);
  return fill(
    storage.allocate(outShape(product)),
    (out) => multiply(blas, product, a, transposeA, b, transposeB, out),
  );
}

function fusedMatMul(
  blas: BlasLibrary,
  storage: KernelStorage,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const { a, b, bias, preluActivationWeights: alpha } = args.inputs;
  const activation = String(args.attrs?.activation ?? "linear");
  const prelu = activation === "prelu";
  if (
    !storage.isFloat32(a) || !storage.isFloat32(b) || !FUSED_ACTIVATIONS.has(activation) ||
    (bias !== undefined && !storage.isFloat32(bias)) || (prelu && !storage.isFloat32(alpha))
  ) {
    return stock(args);
  }
  const transposeA = args.attrs?.transposeA === true;
  const transposeB = args.attrs?.transposeB === true;
  const product = productOf(a.shape, b.shape, transposeA, transposeB);
  const shape = outShape(product);
  if (
    (bias !== undefined && !broadcastsInto(bias.shape, shape)) ||
    (prelu && alpha !== undefined && !broadcastsInto(alpha.shape, shape))
  ) {
    return stock(args);
  }
  const leakyAlpha = Number(args.attrs?.leakyreluAlpha ?? 0.2);
  return fill(storage.allocate(shape), (out) => {
    multiply(blas, product, a, transposeA, b, transposeB, out);
    const values = out.values;
    if (bias !== undefined) {
      const biasValues = out.read(bias);
      forEachRow(shape, bias.shape, (start, from, step, cols) => {
        for (let j = 0; j < cols; j++) values[start + j] += biasValues[from + j * step];
      });
    }
    if (prelu && alpha !== undefined) {
      const alphaValues = out.read(alpha);
      forEachRow(shape, alpha.shape, (start, from, step, cols) => {
        for (let j = 0; j < cols; j++) {
          const v = values[start + j];
          if (v < 0) values[start + j] = alphaValues[from + j * step] * v;
        }
      });
    } else {
      activateInPlace(values, activation, leakyAlpha);
    }
  });
}

// The formulas are the stock cpu kernels' own, so cpu results agree bit for bit after the matmul;
// on wasm they run in JS on the heap view, which allocates nothing that could detach it.
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

// Writes `op(A) · op(B)` into `out.values`, which holds `batch · m · n` elements.
function multiply(
  blas: BlasLibrary,
  p: Product,
  aInfo: tf.TensorInfo,
  transposeA: boolean,
  bInfo: tf.TensorInfo,
  transposeB: boolean,
  out: Allocation,
): void {
  const { m, n, k } = p;
  const batch = sizeOf(p.batchShape);
  const c = out.values;
  if (c.length === 0) return;
  if (k === 0) {
    // An empty sum is 0; a wasm output is fresh malloc'd memory, not zeroed.
    c.fill(0);
    return;
  }
  const a = out.read(aInfo);
  const b = out.read(bInfo);
  const aBatchShape = aInfo.shape.slice(0, -2);
  const bBatchShape = bInfo.shape.slice(0, -2);
  if (!transposeA && sizeOf(bBatchShape) === 1 && sizeOf(aBatchShape) === batch) {
    // A's batches are contiguous rows sharing one B: a single tall product beats `batch` calls.
    blas.sgemm({ transA: false, transB: transposeB, m: batch * m, n, k, a, b, c });
    return;
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
      c,
      cOffset: i * m * n,
    });
  }
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

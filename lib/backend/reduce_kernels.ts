/**
 * TensorFlow.js `cpu` and `wasm` kernels for `Sum` and `Mean` that reduce float32 tensors in place.
 *
 * The stock kernels of both backends only reduce innermost axes, so any other reduction first
 * transposes the whole input into a fresh tensor; the stock `cpu` `Mean` also divides a full copy
 * by the count before summing. Bias gradients (a `[N, D]` gradient summed over rows, a `[B, T, D]`
 * one over `[0, 1]`) hit exactly that case in every training step. These kernels view the input as
 * `[outer, reduce, inner]` and add whole rows of `inner` values into `inner` accumulators, which
 * reads memory in order and needs no transpose. One code path serves both backends through the
 * {@link KernelStorage} adapter.
 *
 * Accumulation is in float64 (JavaScript numbers and a `Float64Array`), rounded to float32 once at
 * the end: as accurate as the stock `cpu` kernels (which also sum in float64) and more accurate
 * than the stock `wasm` ones (which sum in float32).
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { type KernelArgs, overrideKernels } from "./kernel_override.ts";
import { type CpuKernelBackend, fill, type KernelStorage, sizeOf } from "./kernel_storage.ts";

/** A reduction seen as `[outer, reduce, inner]`: the reduced axes are one block in memory. */
export interface ReduceLayout {
  /** Product of the kept dimensions before the reduced block. */
  outer: number;
  /** Product of the reduced dimensions. */
  reduce: number;
  /** Product of the kept dimensions after the reduced block. */
  inner: number;
}

// Columns summed per pass: 2048 float64 accumulators are 16 KiB, which stay in L1 while every row
// of the block streams past them, however wide the rows are.
const COLUMN_BLOCK = 2048;

/**
 * Replaces one backend's tfjs kernels `Sum` and `Mean` with ones that reduce float32 tensors
 * without transposing them. Registrations for `cpu` and `wasm` may coexist; each has its own
 * restore function.
 *
 * Handled in place: float32 inputs whose reduced axes, once size-1 dimensions are ignored, form
 * one contiguous block (leading, trailing, or in the middle), and every empty float32 input. An
 * empty block sums to 0 and averages to NaN, as in TensorFlow (stock cpu gives 0 for the mean,
 * stock wasm leaves such outputs uninitialised). Everything else (int32 and bool inputs, reduced
 * axes split by a kept one, repeated axes) goes to that backend's stock kernel.
 *
 * @param backendName the backend whose kernels to replace; for `wasm`,
 *   `@tensorflow/tfjs-backend-wasm` must be imported first (its backend need not be active yet)
 * @returns a function that re-registers that backend's stock kernels; calling it again does nothing
 * @throws if `backendName` is not `cpu` or `wasm`, or its kernels are already replaced
 */
export function registerReduceKernels(backendName: CpuKernelBackend): () => void {
  return overrideKernels("reduce", backendName, {
    [tf.Sum]: (storage, args, stock) => reduce(storage, args, stock, false),
    [tf.Mean]: (storage, args, stock) => reduce(storage, args, stock, true),
  });
}

/**
 * How a reduction over `axes` of a row-major tensor of `shape` reads memory, if the reduced axes
 * form one contiguous block. Size-1 dimensions do not affect the layout and are ignored, so e.g.
 * axes `[0, 2]` of `[B, 1, D]` count as one block.
 *
 * @param shape Dimensions of the input.
 * @param axes Reduced axes, each in `[-rank, rank)`; negative ones count from the end.
 * @returns The block, or `null` if the reduced axes are split by a kept one, repeat, or are out of
 *   range.
 *
 * @example
 * ```ts
 * import { reduceLayout } from "./reduce_kernels.ts";
 * const layout = reduceLayout([32, 128, 256], [0, 1]);
 * if (JSON.stringify(layout) !== '{"outer":1,"reduce":4096,"inner":256}') throw new Error();
 * if (reduceLayout([2, 3, 4], [0, 2]) !== null) throw new Error();
 * ```
 */
export function reduceLayout(
  shape: readonly number[],
  axes: readonly number[],
): ReduceLayout | null {
  const reduced = reducedDims(shape.length, axes);
  if (reduced === null) return null;
  // Phases: kept dimensions before the block, the block, kept dimensions after it.
  let phase = 0;
  const layout: ReduceLayout = { outer: 1, reduce: 1, inner: 1 };
  for (let d = 0; d < shape.length; d++) {
    const size = shape[d];
    if (size === 1) continue;
    if (reduced[d]) {
      if (phase === 2) return null;
      phase = 1;
      layout.reduce *= size;
    } else if (phase === 0) {
      layout.outer *= size;
    } else {
      phase = 2;
      layout.inner *= size;
    }
  }
  return layout;
}

// Which dimensions `axes` reduce, or null if one is out of range, not an integer, or repeated.
function reducedDims(rank: number, axes: readonly number[]): boolean[] | null {
  const reduced = new Array<boolean>(rank).fill(false);
  for (const axis of axes) {
    if (!Number.isInteger(axis) || axis < -rank || axis >= rank) return null;
    const d = axis < 0 ? axis + rank : axis;
    if (reduced[d]) return null;
    reduced[d] = true;
  }
  return reduced;
}

function reduce(
  storage: KernelStorage,
  args: KernelArgs,
  stock: tf.KernelFunc,
  mean: boolean,
): tf.TensorInfo | tf.TensorInfo[] {
  const x = args.inputs.x;
  if (!storage.isFloat32(x)) return stock(args);
  const shape = x.shape;
  const axisAttr = args.attrs?.axis as number | number[] | null | undefined;
  // A missing axis means all of them, as in tf.sum.
  const axes = axisAttr == null ? shape.map((_, d) => d) : [axisAttr].flat();
  // Invalid axes go to the stock kernel, which reports them in tfjs's words.
  const reduced = reducedDims(shape.length, axes);
  if (reduced === null) return stock(args);
  const empty = sizeOf(shape) === 0;
  let layout = reduceLayout(shape, axes);
  if (layout === null) {
    // An empty input has nothing to read, so its layout does not matter; the stock wasm kernels
    // would leave such an output uninitialised.
    if (!empty) return stock(args);
    const kept = sizeOf(shape.filter((_, d) => !reduced[d]));
    layout = { outer: kept, reduce: sizeOf(shape.filter((_, d) => reduced[d])), inner: 1 };
  }
  const outShape = args.attrs?.keepDims === true
    ? shape.map((size, d) => (reduced[d] ? 1 : size))
    : shape.filter((_, d) => !reduced[d]);
  // An empty input is never read: a zero-size wasm tensor need not have a usable offset.
  return fill(
    storage.allocate(outShape),
    (out) => reduceBlock(empty ? new Float32Array(0) : out.read(x), out.values, layout, mean),
  );
}

// Writes the sums (or means) over the middle dimension of `x` seen as `[outer, reduce, inner]`
// into `out`, `[outer, inner]`. Every element of `out` is written: wasm outputs are not zeroed.
function reduceBlock(
  x: Float32Array,
  out: Float32Array,
  { outer, reduce, inner }: ReduceLayout,
  mean: boolean,
): void {
  // Dividing the float64 sum once rounds once, where the stock cpu Mean rounds every x / n.
  const divisor = mean ? reduce : 1;
  if (reduce === 0) {
    out.fill(mean ? NaN : 0);
    return;
  }
  if (inner === 1) {
    sumRows(x, out, outer, reduce, divisor);
    return;
  }
  const acc = new Float64Array(Math.min(inner, COLUMN_BLOCK));
  for (let o = 0; o < outer; o++) {
    const block = o * reduce * inner;
    for (let c0 = 0; c0 < inner; c0 += COLUMN_BLOCK) {
      const width = Math.min(COLUMN_BLOCK, inner - c0);
      sumColumns(x, block + c0, inner, reduce, width, acc);
      const at = o * inner + c0;
      for (let j = 0; j < width; j++) out[at + j] = acc[j] / divisor;
    }
  }
}

// Row sums: `out[o] = Σ_r x[o·reduce + r] / divisor`.
function sumRows(
  x: Float32Array,
  out: Float32Array,
  outer: number,
  reduce: number,
  divisor: number,
): void {
  for (let o = 0; o < outer; o++) {
    const start = o * reduce, end = start + reduce;
    // Four independent chains: one float64 add waits for the previous only every fourth element.
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let i = start;
    for (; i + 3 < end; i += 4) {
      s0 += x[i];
      s1 += x[i + 1];
      s2 += x[i + 2];
      s3 += x[i + 3];
    }
    for (; i < end; i++) s0 += x[i];
    out[o] = (s0 + s1 + (s2 + s3)) / divisor;
  }
}

// Column sums of `rows` rows of `width` values, `stride` apart from `start`, into `acc[0..width)`.
function sumColumns(
  x: Float32Array,
  start: number,
  stride: number,
  rows: number,
  width: number,
  acc: Float64Array,
): void {
  acc.fill(0, 0, width);
  // Four rows per pass over the accumulators: a quarter of the float64 loads and stores, which
  // measured 1.7× faster on [16384, 512]. Float32 values add exactly in float64 unless their
  // magnitudes differ by 2^29 or more, so the grouping changes the sum far below float32 precision.
  let r = 0;
  let at = start;
  for (; r + 3 < rows; r += 4, at += 4 * stride) {
    const a = at, b = at + stride, c = at + 2 * stride, d = at + 3 * stride;
    for (let j = 0; j < width; j++) acc[j] += (x[a + j] + x[b + j]) + (x[c + j] + x[d + j]);
  }
  for (; r < rows; r++, at += stride) {
    for (let j = 0; j < width; j++) acc[j] += x[at + j];
  }
}

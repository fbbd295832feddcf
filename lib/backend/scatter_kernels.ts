/**
 * TensorFlow.js `cpu` and `wasm` kernels for `GatherV2` and `UnsortedSegmentSum`: row gathers and
 * their gradient, the scatter-add. The JSAE Jacobian loss (`lib/sae/jacobian.ts`) gathers, per
 * token, k rows of two feature matrices — 163,840 rows of 256 values per toy batch — and
 * scatters the gradients back.
 *
 * - `GatherV2`: the stock `wasm` kernel computes every output element's source address from
 *   strides (~1 s for that gather on two cores); the stock `cpu` one goes through TensorBuffer
 *   `get`/`set` per element. This kernel copies whole contiguous slices (~0.08 s).
 * - `UnsortedSegmentSum` (the gradient of `tf.gather`): the `wasm` backend has no such kernel at
 *   all, and the stock `cpu` one loops over the segments, building a mask, a product and a sum of
 *   the whole input for each: O(segments × input size), 92 s for a sixteenth of that gradient.
 *   This kernel adds each input row into its segment's row once: O(input size), ~0.04 s for all
 *   of it.
 *
 * One code path serves both backends through the {@link KernelStorage} adapter. Segment sums
 * accumulate in float64, rounded to float32 once at the end, as the stock `cpu` kernel's sums do.
 *
 * @module
 */

import * as tf from "@tensorflow/tfjs";
import { type KernelArgs, overrideKernels } from "./kernel_override.ts";
import { type CpuKernelBackend, fill, type KernelStorage, sizeOf } from "./kernel_storage.ts";

// Float64 accumulators per pass, at most: 4 Mi values are 32 MiB. A wider output is summed in
// column blocks, each a full pass over the segment ids, so memory stays bounded whatever its size.
const MAX_ACCUMULATORS = 4 * 1024 * 1024;

// Below this many values per slice a plain loop beats `TypedArray.set` with its subarray views.
const MIN_SET_SLICE = 32;

/**
 * Registers fast `GatherV2` and `UnsortedSegmentSum` kernels for one backend. A stock kernel is
 * replaced and kept as the fallback for inputs the fast one does not take (data that is not
 * float32, ids that are not int32); where the backend has none (`UnsortedSegmentSum` on `wasm`)
 * the kernel is added. Registrations for `cpu` and `wasm` may coexist; each has its own restore
 * function.
 *
 * `GatherV2` is tfjs's (any axis, any `batchDims`, indices out of range rejected with the stock
 * message). `UnsortedSegmentSum` follows TensorFlow: inputs `x` (float32) and `segmentIds`
 * (int32) whose shape is a prefix of `x`'s, attribute `numSegments`; the output
 * `[numSegments, ...x.shape[ids.rank:]]` holds in row s the sum of the `x` rows whose id is s
 * (zeros where none is). Ids outside `[0, numSegments)` are dropped, as the stock `cpu` kernel
 * drops them. For rank-1 ids (the only kind `tf.gather`'s gradient makes) that is exactly the
 * stock `cpu` kernel's result.
 *
 * @param backendName the backend to serve; for `wasm`, `@tensorflow/tfjs-backend-wasm` must be
 *   imported first (its backend need not be active yet)
 * @returns a function that restores the backend's previous kernels (and removes the ones it
 *   lacked); calling it again does nothing
 * @throws if `backendName` is not `cpu` or `wasm`, or the kernels are already registered by this
 *   module for it
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { registerScatterKernels } from "./scatter_kernels.ts";
 * await tf.setBackend("cpu");
 * const restore = registerScatterKernels("cpu");
 * const x = tf.tensor1d([1, 2, 3, 4]);
 * const sums = tf.unsortedSegmentSum(x, tf.tensor1d([1, 2, 0, 1], "int32"), 3);
 * if (sums.dataSync().join() !== "3,5,2") throw new Error(sums.dataSync().join());
 * restore();
 * ```
 */
export function registerScatterKernels(backendName: CpuKernelBackend): () => void {
  return overrideKernels(
    "scatter",
    backendName,
    {
      [tf.GatherV2]: (storage, args, stock) => gather(storage, backendName, args, stock),
      [tf.UnsortedSegmentSum]: (storage, args, stock) =>
        segmentSum(storage, backendName, args, stock),
    },
    missing,
  );
}

// The fallback where a backend has no stock kernel: says what the fast one cannot take.
function missing(name: string): tf.KernelFunc {
  return ({ inputs }) => {
    const dtypes = Object.entries(inputs).map(([k, t]) => `${k} ${t?.dtype}`).join(", ");
    throw new Error(
      `Cannot run ${name} for ${dtypes}: only float32 data with int32 indices is supported here`,
    );
  };
}

function gather(
  storage: KernelStorage,
  backendName: CpuKernelBackend,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const { x, indices } = args.inputs;
  if (!storage.isFloat32(x) || indices?.dtype !== "int32") return stock(args);
  const axis = tf.util.parseAxisParam(args.attrs?.axis as number, x.shape)[0];
  const batchDims = (args.attrs?.batchDims as number | undefined) ?? 0;
  // Validates batchDims against the shapes in tfjs's own words.
  const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(
    x as tf.Tensor,
    indices as tf.Tensor,
    axis,
    batchDims,
  );
  const count = sizeOf(indices.shape);
  return fill(storage.allocate(info.outputShape), (out) => {
    // Nothing is read from an empty tensor: a zero-size wasm tensor need not have a usable offset.
    if (count === 0) return;
    const ids = int32View(out.read(indices), backendName);
    const dim = info.dimSize;
    // Checked even when the output is empty, as the stock kernels do.
    for (let i = 0; i < count; i++) {
      const id = ids[i];
      if (!(id >= 0 && id < dim)) {
        throw new Error(`GatherV2: the index value ${id} is not in [0, ${dim - 1}]`);
      }
    }
    if (out.values.length === 0) return;
    gatherSlices(out.read(x), ids, out.values, info.batchSize, info.outerSize, dim, info.sliceSize);
  });
}

/**
 * Copies slices of `x`, seen as `[batch, outer, dim, slice]`, into `out`, seen as
 * `[batch, outer, count, slice]` with count = `ids.length / batch`: output slice (b, o, i) is
 * input slice (b, o, ids[b · count + i]). Ids must be in `[0, dim)`.
 *
 * @param x Input values.
 * @param ids Indices along `dim`, `[batch, count]`.
 * @param out Output values, fully overwritten.
 * @param batch Leading dimensions that `x` and `ids` share.
 * @param outer Dimensions of `x` between the batch and the gathered axis.
 * @param dim Size of the gathered axis.
 * @param slice Values per index (the dimensions after the gathered axis).
 *
 * @example
 * ```ts
 * import { gatherSlices } from "./scatter_kernels.ts";
 * const out = new Float32Array(6);
 * gatherSlices(Float32Array.of(1, 2, 3, 4), Int32Array.of(1, 1, 0), out, 1, 1, 2, 2);
 * if (out.join() !== "3,4,3,4,1,2") throw new Error(out.join());
 * ```
 */
export function gatherSlices(
  x: Float32Array,
  ids: Int32Array,
  out: Float32Array,
  batch: number,
  outer: number,
  dim: number,
  slice: number,
): void {
  const count = ids.length / batch;
  let to = 0;
  for (let b = 0; b < batch; b++) {
    for (let o = 0; o < outer; o++) {
      const base = (b * outer + o) * dim * slice;
      for (let i = 0; i < count; i++, to += slice) {
        const from = base + ids[b * count + i] * slice;
        if (slice >= MIN_SET_SLICE) {
          out.set(x.subarray(from, from + slice), to);
        } else {
          for (let j = 0; j < slice; j++) out[to + j] = x[from + j];
        }
      }
    }
  }
}

function segmentSum(
  storage: KernelStorage,
  backendName: CpuKernelBackend,
  args: KernelArgs,
  stock: tf.KernelFunc,
): tf.TensorInfo | tf.TensorInfo[] {
  const { x, segmentIds: ids } = args.inputs;
  if (!storage.isFloat32(x) || ids?.dtype !== "int32") return stock(args);
  const numSegments = args.attrs?.numSegments as number;
  const idShape = ids.shape;
  if (
    idShape.length > x.shape.length || idShape.some((size, d) => size !== x.shape[d]) ||
    !Number.isInteger(numSegments) || numSegments < 0
  ) {
    throw new Error(
      `Cannot run UnsortedSegmentSum of x [${x.shape}] with segmentIds [${idShape}] into ` +
        `${numSegments} segments: the ids' shape must be a prefix of x's and the count an ` +
        "integer ≥ 0",
    );
  }
  const rows = sizeOf(idShape);
  const innerShape = x.shape.slice(idShape.length);
  const inner = sizeOf(innerShape);
  return fill(storage.allocate([numSegments, ...innerShape]), (out) => {
    // An empty input is never read: a zero-size wasm tensor need not have a usable offset.
    if (rows === 0 || inner === 0) {
      out.values.fill(0);
      return;
    }
    const segmentIds = int32View(out.read(ids), backendName);
    scatterAdd(out.read(x), segmentIds, out.values, rows, inner);
  });
}

// Int32 values in place. `read` types every view as float32: on wasm it is the tensor's heap
// bytes, to be reinterpreted; on cpu it is the backend's own array, an Int32Array for int32.
function int32View(raw: Float32Array, backendName: CpuKernelBackend): Int32Array {
  const values: unknown = raw;
  if (values instanceof Int32Array) return values;
  if (backendName === "wasm") return new Int32Array(raw.buffer, raw.byteOffset, raw.length);
  return Int32Array.from(values as ArrayLike<number>);
}

/**
 * Adds row r of `x` (`rows × inner`, row-major) into row `ids[r]` of `out` (`segments × inner`,
 * with segments = `out.length / inner`), dropping rows whose id is out of range. Every element of
 * `out` is written (wasm outputs are not zeroed).
 *
 * @param x Input rows.
 * @param ids One segment id per row.
 * @param out Output, fully overwritten.
 * @param rows Number of rows of `x`.
 * @param inner Values per row.
 *
 * @example
 * ```ts
 * import { scatterAdd } from "./scatter_kernels.ts";
 * const out = new Float32Array(4);
 * scatterAdd(Float32Array.of(1, 2, 3, 4, 5, 6), Int32Array.of(1, 0, 1), out, 3, 2);
 * if (out.join() !== "3,4,6,8") throw new Error(out.join());
 * ```
 */
export function scatterAdd(
  x: Float32Array,
  ids: Int32Array,
  out: Float32Array,
  rows: number,
  inner: number,
): void {
  if (inner === 0) return;
  const segments = out.length / inner;
  const width = Math.max(1, Math.min(inner, Math.floor(MAX_ACCUMULATORS / Math.max(1, segments))));
  const acc = new Float64Array(segments * width);
  for (let c0 = 0; c0 < inner; c0 += width) {
    const w = Math.min(width, inner - c0);
    acc.fill(0);
    for (let r = 0; r < rows; r++) {
      const s = ids[r];
      // Rows with negative or too-large ids are dropped, as the stock cpu kernel drops them.
      if (!(s >= 0 && s < segments)) continue;
      const from = r * inner + c0, to = s * w;
      for (let j = 0; j < w; j++) acc[to + j] += x[from + j];
    }
    for (let s = 0; s < segments; s++) {
      const from = s * w, to = s * inner + c0;
      for (let j = 0; j < w; j++) out[to + j] = acc[from + j];
    }
  }
}

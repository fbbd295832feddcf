/**
 * A `SplitV` kernel for the CPU backends that copies contiguous runs with `TypedArray.set`:
 * the stock kernels slice element by element (and the wasm one copies the whole input out of the
 * heap first), which made the attention's q/k/v split a visible cost of a GPT step.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type FastKernel, overrideKernels } from "./kernel_override.ts";
import { type CpuKernelBackend, sizeOf } from "./kernel_storage.ts";

/**
 * Copies the pieces of a split of `x` (`[outer, axisLength, inner]` row-major) into `outputs`.
 *
 * @param x The input values.
 * @param outputs One array per piece, `[outer, sizes[p], inner]`.
 * @param outer Product of the dimensions before the axis.
 * @param sizes Piece lengths along the axis (summing to its length).
 * @param inner Product of the dimensions after the axis.
 */
export function splitRows(
  x: Float32Array,
  outputs: readonly Float32Array[],
  outer: number,
  sizes: readonly number[],
  inner: number,
): void {
  const axisLength = sizes.reduce((a, b) => a + b, 0);
  let start = 0;
  sizes.forEach((size, p) => {
    const run = size * inner, out = outputs[p]!;
    for (let o = 0; o < outer; o++) {
      const from = (o * axisLength + start) * inner;
      out.set(x.subarray(from, from + run), o * run);
    }
    start += size;
  });
}

const splitV: FastKernel = (storage, args, stock) => {
  const x = args.inputs.x!;
  if (!storage.isFloat32(x)) return stock(args);
  const axis = tf.util.parseAxisParam(args.attrs!.axis as number, x.shape)[0]!;
  const sizes = tf.backend_util.prepareSplitSize(
    x as unknown as tf.Tensor,
    args.attrs!.numOrSizeSplits as number | number[],
    axis,
  );
  const outer = sizeOf(x.shape.slice(0, axis)), inner = sizeOf(x.shape.slice(axis + 1));
  const allocations = sizes.map((s) => {
    const shape = x.shape.slice();
    shape[axis] = s;
    return storage.allocate(shape);
  });
  // Views come from the last allocation: on wasm, each allocation may move the heap.
  const last = allocations.at(-1)!;
  splitRows(last.read(x), allocations.map((a) => last.read(a.info)), outer, sizes, inner);
  return allocations.map((a) => a.info);
};

/**
 * Replaces a CPU backend's stock `SplitV`.
 *
 * @param backendName `cpu` or `wasm`.
 * @returns A function that restores the stock kernel.
 */
export function registerSplitKernel(backendName: CpuKernelBackend): () => void {
  return overrideKernels("split", backendName, { [tf.SplitV]: splitV });
}

/**
 * The fast path of the SAE TopK activation (`lib/sae/topk_relu.ts`) as a tfjs kernel for the CPU
 * backends: a per-row partial selection in place of tfjs's full sort, reading and writing the
 * backend's memory directly.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CpuKernelBackend, STORAGE } from "./kernel_storage.ts";

/** The tfjs kernel name of the fast path. */
export const TOPK_RELU_KERNEL = "ScalarTopKRelu";

/**
 * Keeps the k largest of `max(0, x)` in each row of a row-major matrix, in place of a new array.
 * A min-heap of the k best so far makes this O(F log k) per row instead of a sort's O(F log F).
 *
 * @param x Input, `rows × cols` row-major.
 * @param out Output of the same size; fully overwritten.
 * @param rows Number of rows.
 * @param cols Number of columns (features).
 * @param k How many to keep per row (clamped to `cols`).
 *
 * @example
 * ```ts
 * import { topkReluRows } from "./topk_relu_kernel.ts";
 * const out = new Float32Array(4);
 * topkReluRows(Float32Array.of(3, -1, 5, 3), out, 1, 4, 2);
 * if (out.join() !== "3,0,5,0") throw new Error(out.join());
 * ```
 */
export function topkReluRows(
  x: Float32Array,
  out: Float32Array,
  rows: number,
  cols: number,
  k: number,
): void {
  k = Math.min(k, cols);
  out.fill(0);
  if (k === 0) return;
  // Heap of (value, index), ordered so that the root is the entry to evict first: the smallest
  // value, and among equal values the largest index (lower indices win ties).
  const hv = new Float32Array(k), hi = new Int32Array(k);
  const worse = (a: number, b: number) => hv[a]! < hv[b]! || (hv[a] === hv[b] && hi[a]! > hi[b]!);
  const siftDown = (start: number, size: number) => {
    let i = start;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let m = i;
      if (l < size && worse(l, m)) m = l;
      if (r < size && worse(r, m)) m = r;
      if (m === i) return;
      [hv[i], hv[m]] = [hv[m]!, hv[i]!];
      [hi[i], hi[m]] = [hi[m]!, hi[i]!];
      i = m;
    }
  };
  for (let row = 0; row < rows; row++) {
    const base = row * cols;
    for (let j = 0; j < k; j++) {
      hv[j] = Math.max(0, x[base + j]!);
      hi[j] = j;
    }
    for (let j = (k >> 1) - 1; j >= 0; j--) siftDown(j, k);
    // The root is ≥ 0 (values enter as max(0, x)), so beating it implies being positive: the hot
    // loop needs one comparison per entry and no ReLU.
    let least = hv[0]!;
    for (let j = k; j < cols; j++) {
      const v = x[base + j]!;
      // Strictly greater: an equal value at a higher index loses the tie.
      if (v > least) {
        hv[0] = v;
        hi[0] = j;
        siftDown(0, k);
        least = hv[0]!;
      }
    }
    for (let j = 0; j < k; j++) out[base + hi[j]!] = hv[j]!;
  }
}

/**
 * Registers the {@link TOPK_RELU_KERNEL} kernel (inputs `{x}` float32 `[N, F]`, attribute `k`) for a
 * CPU backend. Registering again is harmless.
 *
 * @param backendName The backend to serve.
 */
export function registerTopkReluKernel(backendName: CpuKernelBackend): void {
  if (tf.getKernel(TOPK_RELU_KERNEL, backendName)) return;
  tf.registerKernel({
    kernelName: TOPK_RELU_KERNEL,
    backendName,
    kernelFunc: ({ inputs, attrs, backend }) => {
      const x = inputs.x!;
      const [rows, cols] = x.shape as [number, number];
      const out = STORAGE[backendName](backend).allocate([rows, cols]);
      topkReluRows(out.read(x), out.values, rows, cols, attrs!.k as number);
      return out.info;
    },
  });
}

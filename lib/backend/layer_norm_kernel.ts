/**
 * LayerNorm as one tfjs kernel each way on the CPU backends, running the native loops of
 * `layer_norm_kernel.c` on the backend's memory in place.
 *
 * The stock-op LayerNorm (`layerNorm`'s reference in `lib/model/gpt.ts`) runs about nine
 * elementwise and reduction kernels forward and a dozen backward, each a full pass over the
 * activations with its own output tensor; the toy GPT's nine LayerNorms cost ~20 ms of its
 * ~160 ms training step that way. The fused kernels make one pass each way, keep each row's mean
 * and 1/σ (`[rows]` each, as PyTorch does) instead of x̂, and run rows in parallel (OpenMP).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CpuKernelBackend, fillOutputs, kernelInput, STORAGE } from "./kernel_storage.ts";
import { loadNative, type NativeOptions } from "./native.ts";

/**
 * The tfjs kernel name of the fused forward: inputs `{x [..., D], weight [D], bias [D]}`, float32;
 * attribute `{eps}`; outputs `[y (x's shape), mean [rows], rstd [rows]]`, rows = x.size / D.
 */
export const LAYER_NORM_KERNEL = "ScalarLayerNorm";

/**
 * The tfjs kernel name of its gradient: inputs `{dy, x, weight, mean, rstd}`; outputs
 * `[dx (x's shape), dweight [D], dbias [D]]`.
 */
export const LAYER_NORM_GRAD_KERNEL = "ScalarLayerNormGrad";

/** The native loops (`layer_norm_kernel.c`), as `Deno.dlopen` symbols. */
export const LAYER_NORM_SYMBOLS = {
  scalar_layer_norm_forward: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "i64", "i32", "f32"],
    result: "void",
  },
  scalar_layer_norm_backward: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i64",
      "i32",
    ],
    result: "void",
  },
} as const;

/** The opened native library of {@link LAYER_NORM_SYMBOLS}. */
export type LayerNormLibrary = Deno.DynamicLibrary<typeof LAYER_NORM_SYMBOLS>["symbols"];

/**
 * Compiles (once, into the cache) and opens the native loops of `layer_norm_kernel.c`.
 *
 * @param options Compiler and cache directory (`lib/backend/native.ts`).
 * @returns The loops; they stay open for the process.
 * @throws {NativeError} If there is no C compiler or the build fails.
 *
 * @example One row of two: normalised to ∓1, then scaled and shifted
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { loadLayerNormLibrary } from "./layer_norm_kernel.ts";
 * const lib = await loadLayerNormLibrary();
 * const y = new Float32Array(2), mean = new Float32Array(1), rstd = new Float32Array(1);
 * lib.scalar_layer_norm_forward(
 *   Float32Array.of(1, 3), Float32Array.of(2, 2), Float32Array.of(0, 1), y, mean, rstd, 1n, 2, 0,
 * );
 * equal(y.join(), "-2,3");
 * equal(mean[0], 2);
 * ```
 */
export async function loadLayerNormLibrary(options: NativeOptions = {}): Promise<LayerNormLibrary> {
  const source = new URL("./layer_norm_kernel.c", import.meta.url);
  return (await loadNative(source, LAYER_NORM_SYMBOLS, options)).symbols;
}

/**
 * {@link loadLayerNormLibrary}, then {@link registerLayerNormKernels}. Never throws for a missing
 * or failing compiler: the model then runs LayerNorm in stock ops, and the reason comes back.
 *
 * @param backendName `cpu` or `wasm`.
 * @param options Compiler and cache directory.
 * @returns The restore function, or why the loops could not be built (`{error}`).
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { LAYER_NORM_KERNEL, openLayerNormKernels } from "./layer_norm_kernel.ts";
 * const restore = await openLayerNormKernels("cpu");
 * if ("error" in restore) throw new Error(restore.error);
 * ok(tf.getKernel(LAYER_NORM_KERNEL, "cpu"));
 * restore();
 * ```
 */
export async function openLayerNormKernels(
  backendName: CpuKernelBackend,
  options: NativeOptions = {},
): Promise<(() => void) | { error: string }> {
  let lib: LayerNormLibrary;
  try {
    lib = await loadLayerNormLibrary(options);
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
  return registerLayerNormKernels(backendName, lib);
}

/** Rows and width of a call's x, checked against the gain. */
function dimsOf(kernel: string, x: tf.TensorInfo, weight: tf.TensorInfo) {
  const D = x.shape[x.shape.length - 1];
  if (D === undefined || weight.shape.length !== 1 || weight.shape[0] !== D) {
    throw new RangeError(
      `Cannot run ${kernel} on x [${x.shape}] with weight [${weight.shape}]: need x [..., D] and ` +
        "weight [D]",
    );
  }
  return { rows: tf.util.sizeFromShape(x.shape) / D, D };
}

/**
 * Registers {@link LAYER_NORM_KERNEL} and {@link LAYER_NORM_GRAD_KERNEL} for a CPU backend,
 * running `lib`'s loops. The op that uses them is `layerNorm` in `lib/model/gpt.ts`, which falls
 * back to stock ops on backends without them.
 *
 * @param backendName `cpu` or `wasm` (for `wasm`, `@tensorflow/tfjs-backend-wasm` imported first).
 * @param lib The opened native loops.
 * @returns A function that unregisters both kernels; calling it again does nothing.
 * @throws {Error} If `backendName` is not `cpu` or `wasm`, or the kernels are registered there.
 */
export function registerLayerNormKernels(
  backendName: CpuKernelBackend,
  lib: LayerNormLibrary,
): () => void {
  if (!Object.hasOwn(STORAGE, backendName) || tf.getKernel(LAYER_NORM_KERNEL, backendName)) {
    throw new Error(
      `Cannot register LayerNorm kernels for "${backendName}": not a supported backend, or ` +
        "registered already (call the restore function first)",
    );
  }
  const storageOf = STORAGE[backendName];
  tf.registerKernel({
    kernelName: LAYER_NORM_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const storage = storageOf(backend);
      const named = (n: string, shape?: number[]) =>
        kernelInput(storage, LAYER_NORM_KERNEL, inputs, n, shape);
      const [x, weight] = [named("x"), named("weight")];
      const { rows, D } = dimsOf(LAYER_NORM_KERNEL, x, weight);
      const bias = named("bias", [D]);
      const eps = (attrs as { eps: number }).eps;
      return fillOutputs(storage, [x.shape, [rows], [rows]], ([y, mean, rstd], read) => {
        const [xv, w, b] = [x, weight, bias].map(read);
        lib.scalar_layer_norm_forward(xv!, w!, b!, y!, mean!, rstd!, BigInt(rows), D, eps);
      });
    },
  });
  tf.registerKernel({
    kernelName: LAYER_NORM_GRAD_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend }) => {
      const storage = storageOf(backend);
      const named = (n: string, shape?: number[]) =>
        kernelInput(storage, LAYER_NORM_GRAD_KERNEL, inputs, n, shape);
      const [x, weight] = [named("x"), named("weight")];
      const { rows, D } = dimsOf(LAYER_NORM_GRAD_KERNEL, x, weight);
      const ins = [named("dy", x.shape), x, weight, named("mean", [rows]), named("rstd", [rows])];
      return fillOutputs(storage, [x.shape, [D], [D]], ([dx, dw, db], read) => {
        const [dy, xv, w, mean, rstd] = ins.map(read);
        lib.scalar_layer_norm_backward(
          dy!,
          xv!,
          w!,
          mean!,
          rstd!,
          dx!,
          dw!,
          db!,
          BigInt(rows),
          D,
        );
      });
    },
  });
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    tf.unregisterKernel(LAYER_NORM_KERNEL, backendName);
    tf.unregisterKernel(LAYER_NORM_GRAD_KERNEL, backendName);
  };
}

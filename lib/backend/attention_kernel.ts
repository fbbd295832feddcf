/**
 * Causal multi-head self-attention as one tfjs kernel each way on the CPU backends, running the
 * native loops of `attention_kernel.c` on the backend's memory in place.
 *
 * The stock-op attention (`causalAttention`'s reference in `lib/model/gpt.ts`) splits q, k and v
 * out of the c_attn output, transposes each to heads, multiplies per (sequence, head) in BLAS
 * (B·H small products, ~128 × 128 × 16 in the toy model), adds the mask, runs softmax, multiplies
 * again and transposes back; its backward doubles all of that and keeps the B·H·T·T
 * probabilities for the tape. The fused kernels read q, k and v straight from the c_attn output
 * `[B·T, 3·D]`, write the merged heads `[B·T, D]`, keep only each query's log-sum-exp `[B, H, T]`
 * for the backward (which recomputes the probabilities), and run heads in parallel (OpenMP).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import {
  type CpuKernelBackend,
  fill,
  fillOutputs,
  kernelInput,
  STORAGE,
} from "./kernel_storage.ts";
import { EXP_VEC_SOURCE, loadNative, type NativeOptions } from "./native.ts";

/**
 * The tfjs kernel name of the fused forward: input `{qkv}` float32 `[B·T, 3·D]`, attributes
 * `{heads: H, positions: T}`; outputs `[y [B·T, D], lse [B, H, T]]`.
 */
export const ATTENTION_KERNEL = "ScalarCausalAttention";

/**
 * The tfjs kernel name of its gradient: inputs `{qkv, y, lse, dy}` (dy `[B·T, D]`), the same
 * attributes; output dL/dqkv `[B·T, 3·D]`.
 */
export const ATTENTION_GRAD_KERNEL = "ScalarCausalAttentionGrad";

/** The attributes of both kernels. */
export interface AttentionAttrs {
  /** Heads H. */
  heads: number;
  /** Positions per sequence T. */
  positions: number;
}

/** The native loops (`attention_kernel.c`), as `Deno.dlopen` symbols. */
export const ATTENTION_SYMBOLS = {
  scalar_attention_forward: {
    parameters: ["buffer", "buffer", "buffer", "i32", "i32", "i32", "i32", "f32"],
    result: "void",
  },
  scalar_attention_backward: {
    parameters: [
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
    ],
    result: "void",
  },
} as const;

/** The opened native library of {@link ATTENTION_SYMBOLS}. */
export type AttentionLibrary = Deno.DynamicLibrary<typeof ATTENTION_SYMBOLS>["symbols"];

/** The C source of the loops, next to this module. */
const ATTENTION_SOURCE = new URL("./attention_kernel.c", import.meta.url);

/**
 * Compiles (once, into the cache) and opens the native loops of `attention_kernel.c`.
 *
 * @param options Compiler and cache directory (`lib/backend/native.ts`).
 * @returns The loops; they stay open for the process.
 * @throws {NativeError} If there is no C compiler or the build fails.
 *
 * @example One head of one position: the output is that position's value
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { loadAttentionLibrary } from "./attention_kernel.ts";
 * const lib = await loadAttentionLibrary();
 * const y = new Float32Array(1), lse = new Float32Array(1);
 * lib.scalar_attention_forward(Float32Array.of(1, 2, 3), y, lse, 1, 1, 1, 1, 1);
 * equal(y[0], 3);
 * equal(lse[0], 2); // the one score, q·k = 2
 * ```
 */
export async function loadAttentionLibrary(options: NativeOptions = {}): Promise<AttentionLibrary> {
  const prelude = [EXP_VEC_SOURCE, ...options.prelude ?? []];
  return (await loadNative(ATTENTION_SOURCE, ATTENTION_SYMBOLS, { ...options, prelude })).symbols;
}

/**
 * {@link loadAttentionLibrary}, then {@link registerAttentionKernels}. Never throws for a missing
 * or failing compiler: the model then runs attention in stock ops, and the reason comes back to
 * be shown.
 *
 * @param backendName `cpu` or `wasm`.
 * @param options Compiler and cache directory.
 * @returns The restore function, or why the loops could not be built (`{error}`).
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { ATTENTION_KERNEL, openAttentionKernels } from "./attention_kernel.ts";
 * const restore = await openAttentionKernels("cpu");
 * if ("error" in restore) throw new Error(restore.error);
 * ok(tf.getKernel(ATTENTION_KERNEL, "cpu"));
 * restore();
 * ok(!tf.getKernel(ATTENTION_KERNEL, "cpu"));
 * ```
 */
export async function openAttentionKernels(
  backendName: CpuKernelBackend,
  options: NativeOptions = {},
): Promise<(() => void) | { error: string }> {
  let lib: AttentionLibrary;
  try {
    lib = await loadAttentionLibrary(options);
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
  return registerAttentionKernels(backendName, lib);
}

/** B, T, H, S of a call, checked against the qkv shape. */
function dimsOf(kernel: string, qkv: tf.TensorInfo, attrs: AttentionAttrs) {
  const { heads: H, positions: T } = attrs;
  const [rows, width] = qkv.shape;
  const ok = qkv.shape.length === 2 && Number.isInteger(H) && H > 0 && Number.isInteger(T) &&
    T > 0 && width! % (3 * H) === 0 && rows! % T === 0;
  if (!ok) {
    throw new RangeError(
      `Cannot run ${kernel} on qkv [${qkv.shape}] with ${H} heads of ${T} positions: need ` +
        `[B·T, 3·H·S]`,
    );
  }
  return { B: rows! / T, T, H, S: width! / (3 * H), D: width! / 3 };
}

/**
 * Registers {@link ATTENTION_KERNEL} and {@link ATTENTION_GRAD_KERNEL} for a CPU backend, running
 * `lib`'s loops. The op that uses them is `causalAttention` in `lib/model/gpt.ts`, which falls back
 * to stock ops on backends without them.
 *
 * @param backendName `cpu` or `wasm` (for `wasm`, `@tensorflow/tfjs-backend-wasm` imported first).
 * @param lib The opened native loops; they must stay open while the kernels are registered.
 * @returns A function that unregisters both kernels; calling it again does nothing.
 * @throws {Error} If `backendName` is not `cpu` or `wasm`, or the kernels are registered there.
 *
 * @example Two positions, one head of size 1: position 0 sees only itself
 * ```ts
 * import { equal } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { loadAttentionLibrary, registerAttentionKernels } from "./attention_kernel.ts";
 * import { causalAttention } from "../model/gpt.ts";
 * const restore = registerAttentionKernels("cpu", await loadAttentionLibrary());
 * const y = await causalAttention(tf.tensor2d([[1, 2, 3], [4, 5, 6]]), 2, 1).data();
 * restore();
 * equal(y[0], 3);
 * ```
 */
export function registerAttentionKernels(
  backendName: CpuKernelBackend,
  lib: AttentionLibrary,
): () => void {
  if (!Object.hasOwn(STORAGE, backendName)) {
    throw new Error(
      `Cannot register attention kernels for "${backendName}": not a supported backend ` +
        `(${Object.keys(STORAGE).join(", ")})`,
    );
  }
  if (tf.getKernel(ATTENTION_KERNEL, backendName)) {
    throw new Error(
      `Cannot register attention kernels for "${backendName}": already registered; ` +
        "call the restore function first",
    );
  }
  const storageOf = STORAGE[backendName];
  tf.registerKernel({
    kernelName: ATTENTION_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const storage = storageOf(backend);
      const qkv = kernelInput(storage, ATTENTION_KERNEL, inputs, "qkv");
      const { B, T, H, S, D } = dimsOf(ATTENTION_KERNEL, qkv, attrs as unknown as AttentionAttrs);
      return fillOutputs(storage, [[B * T, D], [B, H, T]], ([y, lse], read) => {
        lib.scalar_attention_forward(read(qkv), y!, lse!, B, T, H, S, 1 / Math.sqrt(S));
      });
    },
  });
  tf.registerKernel({
    kernelName: ATTENTION_GRAD_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const storage = storageOf(backend);
      const qkv = kernelInput(storage, ATTENTION_GRAD_KERNEL, inputs, "qkv");
      const dims = dimsOf(ATTENTION_GRAD_KERNEL, qkv, attrs as unknown as AttentionAttrs);
      const { B, T, H, S, D } = dims;
      const y = kernelInput(storage, ATTENTION_GRAD_KERNEL, inputs, "y", [B * T, D]);
      const lse = kernelInput(storage, ATTENTION_GRAD_KERNEL, inputs, "lse", [B, H, T]);
      const dy = kernelInput(storage, ATTENTION_GRAD_KERNEL, inputs, "dy", [B * T, D]);
      return fill(storage.allocate(qkv.shape), (out) => {
        const [q, yv, l, g] = [out.read(qkv), out.read(y), out.read(lse), out.read(dy)];
        lib.scalar_attention_backward(q, yv, l, g, out.values, B, T, H, S, 1 / Math.sqrt(S));
      });
    },
  });
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    tf.unregisterKernel(ATTENTION_KERNEL, backendName);
    tf.unregisterKernel(ATTENTION_GRAD_KERNEL, backendName);
  };
}

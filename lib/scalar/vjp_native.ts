/**
 * What the batched VJPs of `block_vjp.ts` (a whole block) and `mlp_vjp.ts` (a block's MLP half)
 * run on: the native loops of `block_vjp.c` (norms, softmax, GELU, gathers and the per-entry
 * backward pieces), the model's fused attention kernel (for forwards without a backward) and
 * OpenBLAS products on row-major views into host arrays.
 *
 * @module
 */
import { type AttentionLibrary, loadAttentionLibrary } from "../backend/attention_kernel.ts";
import { type BlasLibrary, openBlas } from "../backend/blas.ts";
import {
  EXP_VEC_SOURCE,
  GELU_TANH_SOURCE,
  loadNative,
  type NativeLibrary,
} from "../backend/native.ts";

/** The loops of `block_vjp.c`, as `Deno.dlopen` symbols. */
const SYMBOLS = {
  bv_fill_rows: { parameters: ["buffer", "buffer", "buffer", "i32", "i32"], result: "void" },
  bv_layernorm: {
    parameters: ["buffer", "buffer", "buffer", "f32", "i32", "i32", "buffer", "buffer", "buffer"],
    result: "void",
  },
  bv_dyt: {
    parameters: ["buffer", "f32", "buffer", "buffer", "i32", "i32", "buffer", "buffer"],
    result: "void",
  },
  bv_causal_softmax: { parameters: ["buffer", "i32", "i32"], result: "void" },
  bv_gelu: { parameters: ["buffer", "i32", "buffer", "buffer"], result: "void" },
  bv_gather: { parameters: ["buffer", "buffer", "i32", "i32", "buffer"], result: "void" },
  bv_scale_rows: { parameters: ["buffer", "buffer", "buffer", "i32", "i32"], result: "void" },
  bv_layernorm_backward: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i32", "i32", "buffer", "buffer"],
    ],
    result: "void",
  },
  bv_dyt_backward: {
    parameters: [
      ...["buffer", "buffer", "f32", "buffer", "buffer"],
      ...["i32", "i32", "buffer", "buffer"],
    ],
    result: "void",
  },
  bv_softmax_backward: {
    parameters: ["buffer", "buffer", "buffer", "i32", "i32", "i32"],
    result: "void",
  },
  bv_rows: {
    parameters: [
      ...["i32", "buffer", "buffer", "buffer", "i32", "i32", "i32"],
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["buffer", "buffer"],
    ],
    result: "void",
  },
} as const;

/** The opened loops of `block_vjp.c`. */
export type VjpLoops = NativeLibrary<typeof SYMBOLS>["symbols"];

const SOURCE = new URL("./block_vjp.c", import.meta.url);

/** The native loops, the fused attention kernel and OpenBLAS, opened. */
export interface VjpNative {
  lib: VjpLoops;
  blas: BlasLibrary;
  /** The model's fused causal attention (`lib/backend/attention_kernel.c`), for forwards only. */
  attention: AttentionLibrary;
}

/**
 * Opens OpenBLAS and compiles (once per source and machine) and opens `block_vjp.c` and the
 * attention kernel. Never throws
 * for a missing compiler or BLAS: the reason comes back instead, for a caller that falls back to
 * autodiff.
 *
 * @returns The loops and the BLAS, or why they cannot run here (`{error}`).
 *
 * @example
 * ```ts
 * import { openVjpNative } from "./vjp_native.ts";
 * const native = await openVjpNative();
 * if ("error" in native) console.log(`autodiff instead: ${native.error}`);
 * ```
 */
export async function openVjpNative(): Promise<VjpNative | { error: string }> {
  const blas = openBlas();
  if ("error" in blas) return { error: blas.error };
  try {
    const lib =
      (await loadNative(SOURCE, SYMBOLS, { prelude: [EXP_VEC_SOURCE, GELU_TANH_SOURCE] })).symbols;
    return { lib, blas, attention: await loadAttentionLibrary() };
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
  }
}

/** A row-major matrix inside an array: the array, its first element, its row stride. */
export type View = readonly [Float32Array, number, number];

/** Options of a product: op(B) = Bᵀ, and the scales of A·op(B) and of C's old value. */
export interface Scales {
  transB?: boolean;
  alpha?: number;
  beta?: number;
}

/**
 * C = alpha·A·op(B) + beta·C (m × n, inner size k) in OpenBLAS, each matrix a {@link View}.
 *
 * @param blas The opened BLAS.
 * @param m Rows of A and C.
 * @param n Columns of op(B) and C.
 * @param k Columns of A, rows of op(B).
 * @param a A.
 * @param b B (stored n × k when `transB`).
 * @param c C, written in place.
 * @param o Transpose and scales (default: B as stored, alpha 1, beta 0).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { openBlas } from "../backend/blas.ts";
 * import { product } from "./vjp_native.ts";
 * const blas = openBlas();
 * if (!("error" in blas)) {
 *   const c = new Float32Array(1);
 *   product(blas, 1, 1, 2, [Float32Array.of(1, 2), 0, 2], [Float32Array.of(3, 4), 0, 1], [c, 0, 1]);
 *   equal(c[0], 11);
 * }
 * ```
 */
export function product(
  blas: BlasLibrary,
  m: number,
  n: number,
  k: number,
  a: View,
  b: View,
  c: View,
  o: Scales = {},
): void {
  blas.sgemm({
    ...{ transA: false, transB: o.transB ?? false, m, n, k, alpha: o.alpha, beta: o.beta },
    ...{ a: a[0], aOffset: a[1], lda: a[2], b: b[0], bOffset: b[1], ldb: b[2] },
    ...{ c: c[0], cOffset: c[1], ldc: c[2] },
  });
}

/**
 * A small general matrix product over strided views of flat buffers, for the JSAE Jacobian's
 * factors and their gradients (A = W_dec_in·W_fc, Bᵀ = W_enc_outᵀ·W_projᵀ, and back):
 *
 *   C[i, j] (+)= Σ_p A[i, p] · B[p, j],  X[i, j] at offset + i·rowStride + j·colStride,
 *
 * summed over p in ascending order. One thread per output; the sizes it serves (toy SAEs × the
 * MLP width, a few million multiply-adds) are far from the step's cost.
 *
 * Bindings: 0 A (read), 1 B (read), 2 C. Work unit: outputs (rows · cols of C).
 *
 * @module
 */
import { compileKernel, type Kernel } from "../device.ts";

/** A strided matrix view into a flat buffer (f32 offsets). */
export interface MatrixView {
  /** Offset of element [0, 0]. */
  offset: number;
  /** Distance between rows. */
  rowStride: number;
  /** Distance between columns. */
  colStride: number;
}

/** The product's sizes and views. */
export interface MatmulShape {
  /** Rows of C. */
  rows: number;
  /** Columns of C. */
  cols: number;
  /** The summed dimension. */
  inner: number;
  /** A `[rows, inner]`. */
  a: MatrixView;
  /** B `[inner, cols]`. */
  b: MatrixView;
  /** C `[rows, cols]`. */
  c: MatrixView;
  /** Add to C instead of overwriting it. */
  accumulate: boolean;
}

/**
 * Compiles one product.
 *
 * @param device The device.
 * @param label Name shown in errors.
 * @param s Sizes and views.
 * @returns The kernel (work unit: outputs).
 */
export function stridedMatmulKernel(
  device: GPUDevice,
  label: string,
  s: MatmulShape,
): Promise<Kernel> {
  const code = /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let o = (wg.y * nwg.x + wg.x) * 256u + lid.x;
  if (o >= ${s.rows * s.cols}u) { return; }
  let i = o / ${s.cols}u;
  let j = o % ${s.cols}u;
  var acc = 0.0;
  for (var p = 0u; p < ${s.inner}u; p++) {
    acc += a[${s.a.offset}u + i * ${s.a.rowStride}u + p * ${s.a.colStride}u] *
      b[${s.b.offset}u + p * ${s.b.rowStride}u + j * ${s.b.colStride}u];
  }
  let at = ${s.c.offset}u + i * ${s.c.rowStride}u + j * ${s.c.colStride}u;
  c[at] = ${s.accumulate ? "c[at] + acc" : "acc"};
}`;
  return compileKernel(device, label, code, (n) => Math.ceil(n / 256));
}

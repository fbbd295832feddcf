/**
 * The SAE decoder from the k kept (index, value) pairs per row, fused with the start of the
 * backward pass: x̂ = Σ_s v_s·W_dec[i_s] + b_dec, the loss gradient ∂L/∂x̂ = scale·(x̂ − x) with
 * scale = 2 / (tokens in the step) (the loss is Σ_d (x̂ − x)², averaged over the step's tokens),
 * and per-workgroup partial sums: Σ (x̂ − x)², the count of positive kept values (for L0), and the
 * column sums of ∂L/∂x̂ (b_dec's gradient from the decoder). Pairs are added in ascending feature
 * order, as the reference's dense `f·W_dec` adds its non-zero terms.
 *
 * One workgroup of 64 threads per 64 rows; a thread owns the dimensions d ≡ thread (mod 64).
 * Partial sums are written per block (never accumulated with atomics), so results are the same
 * on every run; block b of micro-batch m writes slot m · blocksPerMicro + b.
 *
 * Bindings: 0 x `[batch rows, D]`, 1 flat parameters, 2 indices `[rows, k]`, 3 values `[rows, k]`
 * (all read), 4 ∂L/∂x̂ `[rows, D]`, 5 figure partials (this SAE's slots at `figures`: (Σ e², kept
 * positives) per block), 6 column partials `[blocks, D]`, 7 {@link ROWS_STRUCT} uniform.
 * Work unit: rows.
 *
 * @module
 */
import { compileKernel, f32Literal, type Kernel, ROWS_STRUCT } from "../device.ts";
import type { SaeView } from "../../param_layout.ts";

/** Rows per workgroup of the decoder; partial sums come one per block of this many rows. */
export const DECODE_ROWS = 64;

/** Where the decoder writes its partial sums, and how it scales the gradient. */
export interface DecodeTargets {
  /** 2 / tokens per step (the loss's gradient with respect to x̂, per unit of x̂ − x). */
  scale: number;
  /** Blocks of {@link DECODE_ROWS} rows in the largest micro-batch. */
  blocksPerMicro: number;
  /** f32 offset of this SAE's (Σ e², positives) pairs in the figure partials. */
  figures: number;
}

/**
 * Compiles the decoder of one SAE.
 *
 * @param device The device.
 * @param sae The SAE's sizes and parameter offsets.
 * @param targets Gradient scale and partial-sum slots.
 * @returns The kernel (work unit: rows).
 */
export function sparseDecodeKernel(
  device: GPUDevice,
  sae: SaeView,
  targets: DecodeTargets,
): Promise<Kernel> {
  const code = /* wgsl */ `
const D = ${sae.d}u;
const K = ${sae.k}u;
const WDEC = ${sae.wDec}u;
const BDEC = ${sae.bDec}u;
const SCALE = ${f32Literal(targets.scale)};
const BLOCKS = ${targets.blocksPerMicro}u;
const FIGURES = ${targets.figures}u;
const DPT = ${Math.ceil(sae.d / 64)}u;
${ROWS_STRUCT}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read> val: array<f32>;
@group(0) @binding(4) var<storage, read_write> dxhat: array<f32>;
@group(0) @binding(5) var<storage, read_write> figures: array<f32>;
@group(0) @binding(6) var<storage, read_write> cols: array<f32>;
@group(0) @binding(7) var<uniform> rows: Rows;
var<workgroup> red: array<vec2f, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) lid: vec3u) {
  let t = lid.x;
  let r0 = wg.x * 64u;
  let r1 = min(r0 + 64u, rows.count);
  var col: array<f32, DPT>;
  var sq = 0.0;
  var positives = 0.0;
  for (var r = r0; r < r1; r++) {
    for (var q = 0u; q < DPT; q++) {
      let d = t + 64u * q;
      if (d < D) {
        var acc = 0.0;
        for (var s = 0u; s < K; s++) {
          acc += val[r * K + s] * params[WDEC + idx[r * K + s] * D + d];
        }
        let e = (acc + params[BDEC + d]) - x[(rows.offset + r) * D + d];
        let g = e * SCALE;
        dxhat[r * D + d] = g;
        col[q] += g;
        sq += e * e;
      }
    }
    for (var s = t; s < K; s += 64u) {
      if (val[r * K + s] > 0.0) { positives += 1.0; }
    }
  }
  let block = rows.index * BLOCKS + wg.x;
  for (var q = 0u; q < DPT; q++) {
    let d = t + 64u * q;
    if (d < D) { cols[block * D + d] = col[q]; }
  }
  red[t] = vec2f(sq, positives);
  workgroupBarrier();
  for (var half = 32u; half > 0u; half >>= 1u) {
    if (t < half) { red[t] += red[t + half]; }
    workgroupBarrier();
  }
  if (t == 0u) {
    figures[FIGURES + 2u * block] = red[0].x;
    figures[FIGURES + 2u * block + 1u] = red[0].y;
  }
}`;
  return compileKernel(
    device,
    `sparse decode ${sae.hook}`,
    code,
    (rows) => Math.ceil(rows / DECODE_ROWS),
  );
}

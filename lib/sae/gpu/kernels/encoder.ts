/**
 * The SAE encoder as one tiled matrix product: P = ReLU((x − b_dec)·W_enc + b_enc) for a
 * micro-batch of rows, every feature of the SAE. The TopK selection (`topk_select.ts`) reads P.
 *
 * Each workgroup (16 × 16 threads) computes a 64-row × 64-feature tile, 4 × 4 outputs per thread,
 * stepping through D in slices of 16 staged in workgroup memory; inputs outside the tile's bounds
 * load as zero, so any row count, D and width work. Sums run over D in ascending order, like the
 * reference's `matMul`, then add the bias.
 *
 * Bindings: 0 x `[batch rows, D]` (read), 1 flat parameters (read), 2 P `[rows, width]` (write),
 * 3 {@link ROWS_STRUCT} uniform. Work unit: rows.
 *
 * @module
 */
import { compileKernel, type Kernel, ROWS_STRUCT } from "../device.ts";
import type { SaeView } from "../../param_layout.ts";

const TILE = 64;

/**
 * Compiles the encoder of one SAE.
 *
 * @param device The device.
 * @param sae The SAE's sizes and parameter offsets.
 * @returns The kernel (work unit: rows).
 */
export function encoderKernel(device: GPUDevice, sae: SaeView): Promise<Kernel> {
  const code = /* wgsl */ `
const D = ${sae.d}u;
const W = ${sae.width}u;
const LD = ${sae.ld}u;
const WENC = ${sae.wEnc}u;
const BENC = ${sae.bEnc}u;
const BDEC = ${sae.bDec}u;
const COL_TILES = ${Math.ceil(sae.width / TILE)}u;
${ROWS_STRUCT}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> pre: array<f32>;
@group(0) @binding(3) var<uniform> rows: Rows;
var<workgroup> xs: array<f32, 1024>; // 64 rows × 16 of D
var<workgroup> ws: array<f32, 1024>; // 16 of D × 64 features

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let tile = wg.y * nwg.x + wg.x;
  let row0 = (tile / COL_TILES) * 64u;
  let col0 = (tile % COL_TILES) * 64u;
  if (row0 >= rows.count) { return; }
  let t = lid.y * 16u + lid.x;
  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < D; k0 += 16u) {
    for (var i = 0u; i < 4u; i++) {
      let e = t + i * 256u;
      let r = row0 + e / 16u;
      let kx = k0 + e % 16u;
      var xv = 0.0;
      if (r < rows.count && kx < D) { xv = x[(rows.offset + r) * D + kx] - params[BDEC + kx]; }
      xs[e] = xv;
      let kw = k0 + e / 64u;
      let c = col0 + e % 64u;
      var wv = 0.0;
      if (kw < D && c < W) { wv = params[WENC + kw * LD + c]; }
      ws[e] = wv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        a[i] = xs[(lid.y + 16u * i) * 16u + kk];
        b[i] = ws[kk * 64u + lid.x + 16u * i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] += a[i] * b[j]; }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let r = row0 + lid.y + 16u * i;
    for (var j = 0u; j < 4u; j++) {
      let c = col0 + lid.x + 16u * j;
      if (r < rows.count && c < W) { pre[r * W + c] = max(acc[i * 4u + j] + params[BENC + c], 0.0); }
    }
  }
}`;
  const colTiles = Math.ceil(sae.width / TILE);
  return compileKernel(
    device,
    `encoder ${sae.hook}`,
    code,
    (rows) => Math.ceil(rows / TILE) * colTiles,
  );
}

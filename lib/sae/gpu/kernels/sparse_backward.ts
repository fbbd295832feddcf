/**
 * The gradient of the loss with respect to each kept pre-activation:
 * ∂L/∂pre[n, i_s] = (∂L/∂x̂[n] · W_dec[i_s]) when the kept value is positive, else 0 (the TopK
 * ReLU passes gradient only through kept positive entries, as `topkRelu`'s gradient does). The
 * dense `[rows, width]` gradient of the reference is zero everywhere else, so it is never formed.
 *
 * One thread per kept pair. Bindings: 0 flat parameters, 1 indices `[rows, k]`, 2 values, 3 ∂L/∂x̂
 * `[rows, D]` (all read), 4 ∂L/∂pre of the pairs `[rows, k]` (write), 5 {@link ROWS_STRUCT}
 * uniform. Work unit: pairs (rows · k).
 *
 * @module
 */
import { compileKernel, type Kernel, ROWS_STRUCT } from "../device.ts";
import type { SaeView } from "../../param_layout.ts";

/**
 * Compiles the kept-pair gradient of one SAE.
 *
 * @param device The device.
 * @param sae The SAE's sizes and parameter offsets.
 * @returns The kernel (work unit: kept pairs).
 */
export function sparseBackwardKernel(device: GPUDevice, sae: SaeView): Promise<Kernel> {
  const code = /* wgsl */ `
const D = ${sae.d}u;
const K = ${sae.k}u;
const WDEC = ${sae.wDec}u;
${ROWS_STRUCT}
@group(0) @binding(0) var<storage, read> params: array<f32>;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> val: array<f32>;
@group(0) @binding(3) var<storage, read> dxhat: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpre: array<f32>;
@group(0) @binding(5) var<uniform> rows: Rows;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let e = (wg.y * nwg.x + wg.x) * 256u + lid.x;
  if (e >= rows.count * K) { return; }
  var acc = 0.0;
  if (val[e] > 0.0) {
    let r = e / K;
    let w = WDEC + idx[e] * D;
    for (var d = 0u; d < D; d++) { acc += dxhat[r * D + d] * params[w + d]; }
  }
  dpre[e] = acc;
}`;
  return compileKernel(
    device,
    `sparse backward ${sae.hook}`,
    code,
    (pairs) => Math.ceil(pairs / 256),
  );
}

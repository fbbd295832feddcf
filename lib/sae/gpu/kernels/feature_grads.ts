/**
 * The weight gradients of one SAE, gathered feature by feature over the feature lists
 * (`feature_lists.ts`): for feature j with kept pairs e = (n, s) of value v_e and pre-activation
 * gradient g_e,
 *
 *   ∂W_dec[j, :] += Σ_e v_e · ∂L/∂x̂[n, :]
 *   ∂W_enc[:, j] += Σ_e g_e · (x[n, :] − b_dec)
 *   ∂b_enc[j]    += Σ_e g_e
 *
 * so only the kept decoder rows and encoder columns are touched, and every sum has one owner (no
 * atomics; the same result on every run). Gradients are added to the flat gradient buffer, which
 * is zeroed once per step: micro-batches and Staircase SAEs sharing one dictionary accumulate.
 * Features below `trainFrom` (earlier chunks of a detached Staircase SAE) get their b_enc gradient
 * only.
 *
 * One workgroup of 256 threads per feature: four groups of 64 lanes take every fourth pair of the
 * list (so a feature that fires on many tokens is not one thread's long loop), lanes own the
 * dimensions d ≡ lane (mod 64), and the four partial sums are added in a fixed order.
 *
 * Bindings: 0 lists, 1 starts, 2 values `[rows, k]`, 3 ∂L/∂pre of the pairs, 4 ∂L/∂x̂ `[rows, D]`,
 * 5 x `[batch rows, D]`, 6 flat parameters (all read), 7 flat gradients, 8 {@link ROWS_STRUCT}
 * uniform. Work unit: features.
 *
 * @module
 */
import { compileKernel, type Kernel, ROWS_STRUCT } from "../device.ts";
import type { SaeView } from "../../param_layout.ts";

/**
 * Compiles the gradient gather of one SAE.
 *
 * @param device The device.
 * @param sae The SAE's sizes, parameter offsets (the same in the gradient buffer) and
 *   `trainFrom`.
 * @returns The kernel (work unit: features).
 * @throws {RangeError} If D is too wide for the workgroup memory (4 KiB per 128 dimensions).
 */
export function featureGradsKernel(device: GPUDevice, sae: SaeView): Promise<Kernel> {
  const shared = 2 * 4 * sae.d * 4 + 16;
  if (shared > device.limits.maxComputeWorkgroupStorageSize) {
    throw new RangeError(
      `Cannot gather gradients for D = ${sae.d}: needs ${shared} bytes of workgroup memory, ` +
        `the device has ${device.limits.maxComputeWorkgroupStorageSize}`,
    );
  }
  const code = /* wgsl */ `
const D = ${sae.d}u;
const K = ${sae.k}u;
const W = ${sae.width}u;
const LD = ${sae.ld}u;
const WENC = ${sae.wEnc}u;
const WDEC = ${sae.wDec}u;
const BENC = ${sae.bEnc}u;
const BDEC = ${sae.bDec}u;
const TRAIN_FROM = ${sae.trainFrom}u;
const DPT = ${Math.ceil(sae.d / 64)}u;
${ROWS_STRUCT}
@group(0) @binding(0) var<storage, read> lists: array<u32>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read> val: array<f32>;
@group(0) @binding(3) var<storage, read> dpre: array<f32>;
@group(0) @binding(4) var<storage, read> dxhat: array<f32>;
@group(0) @binding(5) var<storage, read> x: array<f32>;
@group(0) @binding(6) var<storage, read> params: array<f32>;
@group(0) @binding(7) var<storage, read_write> grads: array<f32>;
@group(0) @binding(8) var<uniform> rows: Rows;
var<workgroup> decSums: array<f32, ${4 * sae.d}>;
var<workgroup> encSums: array<f32, ${4 * sae.d}>;
var<workgroup> biasSums: array<f32, 4>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let j = wg.y * nwg.x + wg.x;
  if (j >= W) { return; }
  let group = lid.x / 64u;
  let lane = lid.x % 64u;
  var dec: array<f32, DPT>;
  var enc: array<f32, DPT>;
  var bias = 0.0;
  for (var p = starts[j] + group; p < starts[j + 1u]; p += 4u) {
    let e = lists[p];
    let r = e / K;
    let v = val[e];
    let g = dpre[e];
    bias += g;
    for (var q = 0u; q < DPT; q++) {
      let d = lane + 64u * q;
      if (d < D) {
        dec[q] += v * dxhat[r * D + d];
        enc[q] += g * (x[(rows.offset + r) * D + d] - params[BDEC + d]);
      }
    }
  }
  for (var q = 0u; q < DPT; q++) {
    let d = lane + 64u * q;
    if (d < D) {
      decSums[group * D + d] = dec[q];
      encSums[group * D + d] = enc[q];
    }
  }
  if (lane == 0u) { biasSums[group] = bias; }
  workgroupBarrier();
  if (group != 0u) { return; }
  if (j >= TRAIN_FROM) {
    for (var q = 0u; q < DPT; q++) {
      let d = lane + 64u * q;
      if (d < D) {
        grads[WDEC + j * D + d] += ((decSums[d] + decSums[D + d]) + decSums[2u * D + d]) +
          decSums[3u * D + d];
        grads[WENC + d * LD + j] += ((encSums[d] + encSums[D + d]) + encSums[2u * D + d]) +
          encSums[3u * D + d];
      }
    }
  }
  if (lane == 0u) {
    grads[BENC + j] += ((biasSums[0] + biasSums[1]) + biasSums[2]) + biasSums[3];
  }
}`;
  return compileKernel(device, `feature grads ${sae.hook}`, code);
}

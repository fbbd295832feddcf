/**
 * The gradient of b_dec, once per step after every micro-batch: b_dec enters twice, added by the
 * decoder and subtracted before the encoder, so
 *
 *   ∂b_dec = Σ_n ∂L/∂x̂[n] − W_enc · ∂b_enc
 *
 * (the encoder's input gradient summed over tokens is W_enc times the summed pre-activation
 * gradient, which is b_enc's gradient). The first term comes from the decoder's per-block column
 * sums, added in block order; ∂b_enc is read from the gradient buffer, complete by then.
 *
 * One thread per dimension. Bindings: 0 column partials `[blocks, D]`, 1 flat parameters (both
 * read), 2 flat gradients. Work unit: dimensions.
 *
 * @module
 */
import { compileKernel, type Kernel } from "../device.ts";
import type { SaeView } from "../../param_layout.ts";

/**
 * Compiles the b_dec gradient of one SAE.
 *
 * @param device The device.
 * @param sae The SAE's sizes and parameter offsets.
 * @param blocks Column partials written per step (all micro-batches).
 * @returns The kernel (work unit: dimensions).
 */
export function biasGradKernel(device: GPUDevice, sae: SaeView, blocks: number): Promise<Kernel> {
  const code = /* wgsl */ `
const D = ${sae.d}u;
const W = ${sae.width}u;
const LD = ${sae.ld}u;
const WENC = ${sae.wEnc}u;
const BENC = ${sae.bEnc}u;
const BDEC = ${sae.bDec}u;
const BLOCKS = ${blocks}u;
@group(0) @binding(0) var<storage, read> cols: array<f32>;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> grads: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let d = id.x;
  if (d >= D) { return; }
  var decoded = 0.0;
  for (var b = 0u; b < BLOCKS; b++) { decoded += cols[b * D + d]; }
  var encoded = 0.0;
  for (var j = 0u; j < W; j++) { encoded += params[WENC + d * LD + j] * grads[BENC + j]; }
  grads[BDEC + d] += decoded - encoded;
}`;
  return compileKernel(device, `bias grad ${sae.hook}`, code, (d) => Math.ceil(d / 64));
}

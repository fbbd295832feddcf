/**
 * The optimizer's end of a step, over the flat gradient buffer of all SAEs at once, matching
 * `lib/optim/adamw.ts` (AdamW, PyTorch's definition) and its `clipGlobalNorm`:
 *
 * 1. `sumSquares`: per-workgroup partial sums of g² (2,048 gradients each);
 * 2. `figures`, one workgroup: the global norm ‖g‖ from the partials (in a fixed order), the clip
 *    factor min(1, maxNorm / (‖g‖ + 1e-6)), and the step's logged figures (per-SAE loss and L0,
 *    JSAE terms), each a scaled sum of the blocks' partials; stored as
 *    [factor, ‖g‖, figure 0, figure 1, …];
 * 3. `update`, one thread per parameter: g ← factor·g; m ← β₁m + (1 − β₁)g;
 *    v ← β₂v + (1 − β₂)g²; p ← p·(1 − lr·wd) − lr·(m/c₁)/(√(v/c₂) + ε), with c = 1 − βᵗ, in the
 *    reference's order of operations. Weight decay applies below `decayEnd` (`lib/sae/param_layout.ts` puts
 *    decaying parameters first); the per-step values come in a uniform ({@link adamUniform}).
 *
 * Bindings — sumSquares: 0 gradients (read), 1 norm partials (work unit: gradients); figures:
 * 0 norm partials, 1 figure partials (both read), 2 figures (one workgroup); update: 0 parameters,
 * 1 gradients (read), 2 m, 3 v, 4 figures (read), 5 uniform (work unit: parameters).
 *
 * @module
 */
import { compileKernel, f32Literal, type Kernel } from "../device.ts";

/** Gradients per `sumSquares` workgroup. */
export const SQUARES_PER_GROUP = 2048;

/** One logged figure: a scaled sum of strided partials. */
export interface FigureSum {
  /** First partial (f32 offset in the figure partials). */
  offset: number;
  /** Partials summed. */
  count: number;
  /** Distance between them. */
  stride: number;
  /** Factor applied to the sum. */
  scale: number;
}

/** The optimizer's three passes. */
export interface AdamKernels {
  /** Partial sums of squared gradients. */
  sumSquares: Kernel;
  /** Norm, clip factor and figures (dispatch one unit). */
  figures: Kernel;
  /** The AdamW update. */
  update: Kernel;
}

/** Settings baked into the kernels. */
export interface AdamShape {
  /** Flat parameter count (padding included). */
  length: number;
  /** Parameters below this offset get weight decay. */
  decayEnd: number;
  /** Global gradient-norm limit. */
  maxNorm: number;
  /** The logged figures. */
  figures: readonly FigureSum[];
}

/**
 * Compiles the optimizer passes.
 *
 * @param device The device.
 * @param shape Sizes, clipping and figures.
 * @returns The kernels.
 */
export async function adamKernels(device: GPUDevice, shape: AdamShape): Promise<AdamKernels> {
  const flat = "let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;";
  const args = `@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u`;
  const squares = /* wgsl */ `
const L = ${shape.length}u;
@group(0) @binding(0) var<storage, read> grads: array<f32>;
@group(0) @binding(1) var<storage, read_write> partials: array<f32>;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(${args}) {
  let group = wg.y * nwg.x + wg.x;
  var s = 0.0;
  for (var q = 0u; q < ${SQUARES_PER_GROUP / 256}u; q++) {
    let i = group * ${SQUARES_PER_GROUP}u + q * 256u + lid.x;
    if (i < L) { s += grads[i] * grads[i]; }
  }
  red[lid.x] = s;
  workgroupBarrier();
  for (var half = 128u; half > 0u; half >>= 1u) {
    if (lid.x < half) { red[lid.x] += red[lid.x + half]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { partials[group] = red[0]; }
}`;
  const parts = Math.ceil(shape.length / SQUARES_PER_GROUP);
  const sums = shape.figures.map((f, n) => `
    case ${n}u: {
      for (var i = 0u; i < ${f.count}u; i++) { sum += figurePartials[${f.offset}u + i * ${f.stride}u]; }
      sum *= ${f32Literal(f.scale)};
    }`).join("");
  const figures = /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read> figurePartials: array<f32>;
@group(0) @binding(2) var<storage, read_write> figures: array<f32>;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3u) {
  let t = lid.x;
  var s = 0.0;
  for (var p = t; p < ${parts}u; p += 256u) { s += partials[p]; }
  red[t] = s;
  workgroupBarrier();
  for (var half = 128u; half > 0u; half >>= 1u) {
    if (t < half) { red[t] += red[t + half]; }
    workgroupBarrier();
  }
  if (t == 0u) {
    let norm = sqrt(red[0]);
    figures[0] = min(1.0, ${f32Literal(shape.maxNorm)} / (norm + 1e-6f));
    figures[1] = norm;
  }
  for (var f = t; f < ${shape.figures.length}u; f += 256u) {
    var sum = 0.0;
    switch f {${sums}
      default: {}
    }
    figures[2u + f] = sum;
  }
}`;
  const update = /* wgsl */ `
const L = ${shape.length}u;
const DECAY_END = ${shape.decayEnd}u;
struct Step { lr: f32, decay: f32, c1: f32, c2: f32, beta1: f32, beta2: f32, rest1: f32, rest2: f32, eps: f32 }
@group(0) @binding(0) var<storage, read_write> params: array<f32>;
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> figures: array<f32>;
@group(0) @binding(5) var<uniform> step: Step;

@compute @workgroup_size(256)
fn main(${args}) {
  ${flat}
  if (i >= L) { return; }
  let g = grads[i] * figures[0];
  let m1 = m[i] * step.beta1 + g * step.rest1;
  let v1 = v[i] * step.beta2 + (g * g) * step.rest2;
  m[i] = m1;
  v[i] = v1;
  let dir = (m1 / step.c1) / (sqrt(v1 / step.c2) + step.eps);
  var p = params[i];
  if (i < DECAY_END) { p = p * step.decay; }
  params[i] = p - dir * step.lr;
}`;
  return {
    sumSquares: await compileKernel(
      device,
      "adam sum of squares",
      squares,
      (n) => Math.ceil(n / SQUARES_PER_GROUP),
    ),
    figures: await compileKernel(device, "adam figures", figures, () => 1),
    update: await compileKernel(device, "adam update", update, (n) => Math.ceil(n / 256)),
  };
}

/** AdamW's settings, as `lib/optim/adamw.ts` takes them. */
export interface AdamSettings {
  /** β₁. */
  beta1: number;
  /** β₂. */
  beta2: number;
  /** ε. */
  eps: number;
  /** Decoupled weight decay per unit learning rate. */
  weightDecay: number;
}

/**
 * The update's per-step uniform: the learning rate, the decay factor 1 − lr·wd, the bias
 * corrections c = 1 − βᵗ for step t (1-based) and the constants, each computed in double precision
 * as the reference computes them before tfjs rounds them to f32.
 *
 * @param s AdamW's settings.
 * @param t The step being taken, 1-based.
 * @param lr Its learning rate.
 * @returns The uniform's values.
 */
export function adamUniform(s: AdamSettings, t: number, lr: number): Float32Array {
  return Float32Array.of(
    lr,
    1 - lr * s.weightDecay,
    1 - s.beta1 ** t,
    1 - s.beta2 ** t,
    s.beta1,
    s.beta2,
    1 - s.beta1,
    1 - s.beta2,
    s.eps,
    0,
    0,
    0,
  );
}

/**
 * The JSAE Jacobian term (`lib/sae/jacobian.ts`) for one SAE pair across an MLP, in four passes
 * per micro-batch. With K1 / K2 the pairs the input / output SAE keep per token (the selection's
 * index sets: exactly k each, zero-valued ones included, as the reference takes them),
 * A = W_dec_in·W_fc `[F_in, M]`, Bᵀ = W_enc_outᵀ·W_projᵀ `[F_out, M]` (formed once per step by
 * `strided_matmul.ts`) and g_t = GELU′(x_t·W_fc + b_fc):
 *
 * 1. `gelu`: g `[rows, M]`, one thread per entry, in `geluTanhDerivative`'s sigmoid form;
 * 2. `forward`: J[t][j, i] = Σ_m Bᵀ[K2_tj, m] · (A[K1_ti, m] · g_t[m]), one thread per entry;
 *    stores dJ = sign(J) · λ/k² and per-workgroup partial sums of |J| (the logged term is
 *    λ · Σ|J| / k², a sum over tokens as in the reference);
 * 3. `backIn`, one workgroup per input feature f, gathering over its list of kept pairs (t, i):
 *    ∂A[f] += Σ (Σ_j dJ[t][j, i] · Bᵀ[K2_tj]) ⊙ g_t;
 * 4. `backOut`, one workgroup per output feature f, over its pairs (t, j):
 *    ∂Bᵀ[f] += Σ Σ_i dJ[t][j, i] · (A[K1_ti] ⊙ g_t).
 *
 * After the step's micro-batches, ∂W_dec_in += ∂A·W_fcᵀ and ∂W_enc_out += W_projᵀ·∂Bᵀᵀ (again
 * `strided_matmul.ts`). Only W_dec_in and W_enc_out get gradients, as in the reference.
 *
 * Bindings — gelu: 0 x `[batch rows, D]`, 1 MLP weights (W_fc `[D, M]`, b_fc `[M]`, both read),
 * 2 g, 3 rows uniform (work unit: rows · M); forward: 0 K1, 1 K2 (`[rows, k]`), 2 A, 3 Bᵀ, 4 g
 * (all read), 5 dJ `[rows, k, k]`, 6 figure partials, 7 rows uniform (work unit: rows · k²);
 * backIn: 0 input lists, 1 input starts, 2 dJ, 3 K2, 4 Bᵀ, 5 g (all read), 6 ∂A (work unit:
 * F_in); backOut: 0 output lists, 1 output starts, 2 dJ, 3 K1, 4 A, 5 g (all read), 6 ∂Bᵀ (work
 * unit: F_out).
 *
 * @module
 */
import { compileKernel, f32Literal, type Kernel, ROWS_STRUCT } from "../device.ts";

/** Sizes of one JSAE pair. */
export interface JacobianShape {
  /** Activation width D. */
  d: number;
  /** MLP width M. */
  m: number;
  /** Features kept per token. */
  k: number;
  /** Input SAE features. */
  fIn: number;
  /** Output SAE features. */
  fOut: number;
  /** The loss weight λ. */
  lambda: number;
  /** Workgroups of `forward` in the largest micro-batch (its partial sums per micro-batch). */
  blocksPerMicro: number;
  /** f32 offset of this pair's partial sums in the figure partials. */
  figures: number;
}

/** Entries of `forward` per workgroup. */
export const JACOBIAN_PER_GROUP = 256;

/** The four passes. */
export interface JacobianKernels {
  /** GELU′ of the MLP pre-activation. */
  gelu: Kernel;
  /** J, dJ and |J| partial sums. */
  forward: Kernel;
  /** ∂A, gathered per input feature. */
  backIn: Kernel;
  /** ∂Bᵀ, gathered per output feature. */
  backOut: Kernel;
}

/**
 * Compiles the Jacobian passes of one pair.
 *
 * @param device The device.
 * @param s Sizes, λ and partial-sum slots.
 * @returns The kernels.
 */
export async function jacobianKernels(
  device: GPUDevice,
  s: JacobianShape,
): Promise<JacobianKernels> {
  const { d, m, k } = s;
  const c = Math.sqrt(2 / Math.PI), a = 0.044715;
  const flat = "let e = (wg.y * nwg.x + wg.x) * 256u + lid.x;";
  const args = `@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u`;
  const head = `const D = ${d}u;\nconst M = ${m}u;\nconst K = ${k}u;\n${ROWS_STRUCT}\n`;
  const gelu = /* wgsl */ `${head}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> mlp: array<f32>;
@group(0) @binding(2) var<storage, read_write> g: array<f32>;
@group(0) @binding(3) var<uniform> rows: Rows;

@compute @workgroup_size(256)
fn main(${args}) {
  ${flat}
  if (e >= rows.count * M) { return; }
  let r = e / M;
  let j = e % M;
  var z = 0.0;
  for (var i = 0u; i < D; i++) { z += x[(rows.offset + r) * D + i] * mlp[i * M + j]; }
  z += mlp[D * M + j];
  // GELU′ as geluTanhDerivative computes it: s·(1 + 2c·z·(1 − s)(1 + 3a·z²)), s = σ(2u).
  let z2 = z * z;
  let s = 1.0 / (1.0 + exp(-(z * (z2 * ${f32Literal(2 * c * a)} + ${f32Literal(2 * c)}))));
  let w = (z * (1.0 - s)) * (z2 * ${f32Literal(3 * a * 2 * c)} + ${f32Literal(2 * c)});
  g[e] = s * (w + 1.0);
}`;
  const forward = /* wgsl */ `${head}
const SCALE = ${f32Literal(Math.fround(s.lambda) / (k * k))};
@group(0) @binding(0) var<storage, read> k1: array<u32>;
@group(0) @binding(1) var<storage, read> k2: array<u32>;
@group(0) @binding(2) var<storage, read> fa: array<f32>;
@group(0) @binding(3) var<storage, read> fbt: array<f32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> dj: array<f32>;
@group(0) @binding(6) var<storage, read_write> figures: array<f32>;
@group(0) @binding(7) var<uniform> rows: Rows;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(${args}) {
  ${flat}
  var size = 0.0;
  if (e < rows.count * K * K) {
    let t = e / (K * K);
    let jj = (e / K) % K;
    let ii = e % K;
    let arow = k1[t * K + ii] * M;
    let brow = k2[t * K + jj] * M;
    var acc = 0.0;
    for (var q = 0u; q < M; q++) { acc += fbt[brow + q] * (fa[arow + q] * g[t * M + q]); }
    dj[e] = sign(acc) * SCALE;
    size = abs(acc);
  }
  red[lid.x] = size;
  workgroupBarrier();
  for (var half = 128u; half > 0u; half >>= 1u) {
    if (lid.x < half) { red[lid.x] += red[lid.x + half]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    figures[${s.figures}u + rows.index * ${s.blocksPerMicro}u + wg.y * nwg.x + wg.x] = red[0];
  }
}`;
  // backIn and backOut differ in which side is gathered over: backIn's entry (t, i) sums dJ over
  // rows j against Bᵀ, then scales by g; backOut's (t, j) sums over columns i against A ⊙ g.
  const back = (width: number, into: string) =>
    /* wgsl */ `${head}
const W = ${width}u;
@group(0) @binding(0) var<storage, read> lists: array<u32>;
@group(0) @binding(1) var<storage, read> starts: array<u32>;
@group(0) @binding(2) var<storage, read> dj: array<f32>;
@group(0) @binding(3) var<storage, read> other: array<u32>;
@group(0) @binding(4) var<storage, read> factor: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read_write> grad: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let f = wg.y * nwg.x + wg.x;
  if (f >= W) { return; }
  for (var q = lid.x; q < M; q += 64u) {
    var acc = 0.0;
    for (var p = starts[f]; p < starts[f + 1u]; p++) {
      let e = lists[p];
      let t = e / K;
      let mine = e % K;
      let gq = g[t * M + q];
      var inner = 0.0;
      for (var o = 0u; o < K; o++) {
        ${into}
      }
      acc += ${into.includes("gq") ? "inner" : "inner * gq"};
    }
    grad[f * M + q] += acc;
  }
}`;
  const intoA = "inner += dj[(t * K + o) * K + mine] * factor[other[t * K + o] * M + q];";
  const intoB = "inner += dj[(t * K + mine) * K + o] * (factor[other[t * K + o] * M + q] * gq);";
  return {
    gelu: await compileKernel(device, "jacobian gelu", gelu, (n) => Math.ceil(n / 256)),
    forward: await compileKernel(device, "jacobian forward", forward, (n) => Math.ceil(n / 256)),
    backIn: await compileKernel(device, "jacobian back (input)", back(s.fIn, intoA)),
    backOut: await compileKernel(device, "jacobian back (output)", back(s.fOut, intoB)),
  };
}

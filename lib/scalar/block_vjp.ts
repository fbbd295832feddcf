/**
 * The input gradient of one GPT block (resid_pre → resid_post) for many cotangent rows of one
 * sequence at once, each row nonzero at only a few positions: what SCALAR's `block` attribution
 * (`attribution.ts`) asks for, where a row is a (sequence, target) pair and its cotangent is the
 * target's encoder column W_enc_down[:, j] at the few tokens where j is kept.
 *
 * Once the forward pass of the sequence is fixed, the block's backward is linear in the cotangent,
 * so every row shares one forward ({@link BlockVjp.forward}: ln_1 statistics, q/k/v, the softmax
 * probabilities P per head, ln_2's statistics or DynamicTanh's tanh, GELU′) and the rows' backward
 * runs as products against the shared weights and activations ({@link BlockVjp.accumulate}).
 * An entry e is one cotangent vector g_e at position i_e of row r_e. Because the MLP, ln_2,
 * c_proj and the residual act on each position alone, and attention's output at i depends only
 * on its query i, everything up to the attention scores runs per entry, as single products over
 * all E entries of a sequence:
 *
 *   dmid_e = g_e + norm₂ᵀ(((g_e·W_projᵀ) ∘ GELU′[i_e])·W_fcᵀ)   (E × D·M twice)
 *   dO_e = dmid_e·W_oᵀ;  per head  dP_e = dO_e,h·V_hᵀ,  dS_e = P[i_e] ∘ (dP_e − ⟨dP_e, P[i_e]⟩),
 *   dq_e = dS_e·K_h / √S,  dAq_e = dq_e·W_qᵀ,  Bv_e,h = dO_e,h·W_v,hᵀ
 *
 * Only the keys' and values' gradients spread over the row's earlier positions j ≤ i_e:
 * dK_h[j]·W_k,hᵀ = Σ_e dS_e,h[j] · A_h[i_e] with A_h = Q_h·W_k,hᵀ/√S computed once per sequence,
 * and dV_h[j]·W_v,hᵀ = Σ_e P_h[i_e, j] · Bv_e,h. So each row's gradient at ln_1's output is a
 * small product [L, 2·H·n_r] × [2·H·n_r, D] (n_r its entries, L its length), finished by ln_1's
 * backward and the residual in the same pass (`bv_rows` in `block_vjp.c`). Causality is exact:
 * a row's positions after its last entry get nothing and cost nothing.
 *
 * FLOPs (a multiply-add counts 2), per sequence: the forward, 2·T·D·(4·D + 2·M) + 4·T²·D (with
 * A_h: + 2·T·D²); per entry, 4·D·M + 6·D² + 4·D·T (the products above: MLP, c_proj, W_q, the
 * Bv; dP and dq over all T keys); per entry and key position j ≤ i_e, 4·H·D (the rows' scatter);
 * per row position ~8·D (ln_1's backward). The dense formulation, every row pushed through the
 * whole block's VJP up to its length (what autodiff does), costs per row position t
 * 4·D·M + 8·D² + 8·D·(t + 1) (MLP; W_o and W_qkv; dP, dq, dK and dV over t + 1 keys): 98,304 +
 * 512·(t + 1) at the toy widths (D 64, M 256, T 128), ~124k on average over the toy pair's rows.
 * A row here pays instead 4·H·D = 1,024 per entry and key position plus ~512 per position, and
 * each entry ~123k once — on the toy pair 16× fewer FLOPs (figures in `attribution.ts`).
 *
 * Numbers are float32 throughout, as the model's; products run in OpenBLAS (called from here),
 * the other loops in C with OpenMP.
 *
 * Dimensions: T positions, D d_model, H heads, S = D / H head size, M MLP width, E entries,
 * R rows.
 *
 * @module
 */
import type { GPT } from "../model/gpt.ts";
import type { SaePair } from "../sae/positions.ts";
import { type CotangentEntries, type MlpForward, MlpVjp } from "./mlp_vjp.ts";
import { openVjpNative, product, type Scales, type View, type VjpNative } from "./vjp_native.ts";

/**
 * The block a pair spans when its segment is one whole block (the `block` position:
 * `blocks.i.hook_resid_pre` → `blocks.(i+1).hook_resid_pre`, or `blocks.i.hook_resid_post` for the
 * last), else undefined.
 *
 * @param pair The SAE pair.
 * @returns The block index i, or undefined.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { blockOfPair } from "./block_vjp.ts";
 * const up = "blocks.1.hook_resid_pre";
 * equal(blockOfPair({ up, down: "blocks.2.hook_resid_pre", layer: 1 }), 1);
 * equal(blockOfPair({ up, down: "blocks.1.hook_resid_post", layer: 1 }), 1);
 * const mlpBlock = { up: "blocks.1.hook_resid_mid", down: "blocks.1.hook_resid_post", layer: 1 };
 * equal(blockOfPair(mlpBlock), undefined);
 * ```
 */
export function blockOfPair(pair: SaePair): number | undefined {
  const up = /^blocks\.(\d+)\.hook_resid_pre$/.exec(pair.up);
  if (up === null) return undefined;
  const i = Number(up[1]);
  return pair.down === `blocks.${i + 1}.hook_resid_pre` ||
      pair.down === `blocks.${i}.hook_resid_post`
    ? i
    : undefined;
}

/**
 * Cotangent rows, nonzero at a few positions each, as entries grouped by row: row r's entries are
 * `rowStart[r]` … `rowStart[r + 1] − 1`, entry e puts `vectors` row `vector[e]` at position
 * `position[e]` (entries of one row at one position add up).
 */
export interface SparseCotangents extends CotangentEntries {
  /** R + 1 ascending entry offsets, from 0. */
  rowStart: Int32Array;
}

/** The block's widths: d_model, heads, head size; LayerNorm epsilon. */
interface Dims {
  D: number;
  H: number;
  S: number;
  eps: number;
}

/** The block's attention half as host arrays (Hugging Face layout: linear weights `[in][out]`). */
interface AttentionWeights {
  ln1: { gamma: Float32Array; beta: Float32Array };
  attn: Float32Array; // [D][3D]
  attnBias: Float32Array;
  proj: Float32Array; // attention's c_proj, [D][D]
  projBias: Float32Array;
}

/** What {@link BlockVjp.forward} keeps of one sequence for the backward. */
export interface BlockForward {
  /** Positions T of the sequence. */
  readonly positions: number;
  /** The block's output (resid_post) `[T][D]`, as the model computes it. */
  readonly output: Float32Array;
  /** ln_1: normalised input `[T][D]` and 1/σ per position. */
  readonly xh1: Float32Array;
  readonly rs1: Float32Array;
  /** c_attn's output `[T][3D]`. */
  readonly qkv: Float32Array;
  /** Softmax probabilities `[H][T][T]`, 0 above the diagonal. */
  readonly p: Float32Array;
  /** A_h = Q_h·W_k,hᵀ/√S `[H][T][D]`: a key's gradient, per unit of dS, at ln_1's output. */
  readonly a: Float32Array;
  /** The MLP half's (ln_2 or DynamicTanh, GELU′). */
  readonly mlp: MlpForward;
}

/**
 * Floats of scratch per entry: g, dmid, dO, dq, dAq `[D]` each, dS `[H][T]`, Bv `[H][D]` (the
 * MLP half keeps its own).
 */
function entryFloats(D: number, H: number, T: number): number {
  return 5 * D + H * T + H * D;
}

/**
 * The batched backward of one block of a frozen GPT (see the module documentation), on the host:
 * products in OpenBLAS, the rest in native loops.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { GPT } from "../model/gpt.ts";
 * import { TINY } from "../model/testdata/tiny_gpt.ts";
 * import { BlockVjp } from "./block_vjp.ts";
 * const model = GPT.init(TINY, 1);
 * const vjp = await BlockVjp.open(model, 0);
 * if ("error" in vjp) throw new Error(vjp.error);
 * const x = new Float32Array(3 * TINY.dModel).fill(0.5);
 * const f = vjp.forward(x);
 * // Row 0 gets the cotangent e_0 at position 1: positions 0 and 1 get a gradient, 2 nothing.
 * const out = new Float32Array(3 * TINY.dModel);
 * const vectors = new Float32Array(TINY.dModel);
 * vectors[0] = 1;
 * vjp.accumulate(f, {
 *   rowStart: Int32Array.of(0, 1), position: Int32Array.of(1), vector: Int32Array.of(0), vectors,
 * }, out, Int32Array.of(0));
 * equal(out.subarray(2 * TINY.dModel).every((v) => v === 0), true);
 * model.dispose();
 * ```
 */
export class BlockVjp {
  readonly #w: AttentionWeights;
  readonly #mlp: MlpVjp;
  readonly #native: VjpNative;
  readonly #dims: Dims;
  readonly #maxEntryFloats: number;
  #scratch = new Float32Array(0);
  #runScratch = new Float32Array(0);

  private constructor(
    w: AttentionWeights,
    mlp: MlpVjp,
    native: VjpNative,
    dims: Dims,
    memoryBytes: number,
  ) {
    this.#w = w;
    this.#mlp = mlp;
    this.#native = native;
    this.#dims = dims;
    this.#maxEntryFloats = Math.max(1, Math.floor(memoryBytes / 4));
  }

  /**
   * Reads block `layer`'s weights and opens the native loops and OpenBLAS. Never throws for a
   * missing compiler or BLAS: the reason comes back instead, for a caller that falls back to
   * autodiff.
   *
   * @param model The frozen model (its current weights are copied).
   * @param layer The block.
   * @param memoryBytes Budget for one backward's per-entry scratch. @default 64 MiB
   * @returns The VJP, or why it cannot run here (`{error}`).
   * @throws {RangeError} If the model has no block `layer`.
   */
  static async open(
    model: GPT,
    layer: number,
    memoryBytes = 64 * 1024 * 1024,
  ): Promise<BlockVjp | { error: string }> {
    const c = model.config;
    if (!Number.isInteger(layer) || layer < 0 || layer >= c.nLayer) {
      throw new RangeError(`Cannot differentiate block ${layer}: the model has ${c.nLayer}`);
    }
    const native = await openVjpNative();
    if ("error" in native) return native;
    const read = async (name: string) =>
      (await model.params.get(`h.${layer}.${name}`)!.data()) as Float32Array;
    const w: AttentionWeights = {
      ln1: { gamma: await read("ln_1.weight"), beta: await read("ln_1.bias") },
      attn: await read("attn.c_attn.weight"),
      attnBias: await read("attn.c_attn.bias"),
      proj: await read("attn.c_proj.weight"),
      projBias: await read("attn.c_proj.bias"),
    };
    const segment = { layer, norm: true, residual: true };
    const mlp = await MlpVjp.withNative(model, segment, native, memoryBytes);
    const dims = { D: c.dModel, H: c.nHead, S: c.dModel / c.nHead, eps: c.lnEps };
    return new BlockVjp(w, mlp, native, dims, memoryBytes);
  }

  /** C = alpha·A·op(B) + beta·C in OpenBLAS ({@link product}). */
  #mm(m: number, n: number, k: number, a: View, b: View, c: View, o: Scales = {}): void {
    product(this.#native.blas, m, n, k, a, b, c, o);
  }

  /**
   * Runs the block on one sequence and keeps what the backward needs.
   *
   * @param x The block's input (resid_pre) `[T][D]`, T ≥ 1.
   * @returns The saved activations and the output.
   * @throws {RangeError} If `x` is not a whole number of positions.
   */
  forward(x: Float32Array): BlockForward {
    const { D, eps } = this.#dims, w = this.#w, lib = this.#native.lib;
    const T = x.length / D, W = 3 * D;
    if (!Number.isInteger(T) || T < 1) {
      throw new RangeError(`Cannot run a block on ${x.length} values: not a multiple of ${D}`);
    }
    const xh1 = new Float32Array(T * D), rs1 = new Float32Array(T), ln1 = new Float32Array(T * D);
    lib.bv_layernorm(x, w.ln1.gamma, w.ln1.beta, eps, T, D, xh1, rs1, ln1);
    const qkv = new Float32Array(T * W);
    lib.bv_fill_rows(qkv, w.attnBias, null, T, W);
    this.#mm(T, W, D, [ln1, 0, D], [w.attn, 0, W], [qkv, 0, W], { beta: 1 });
    const { p, o, a } = this.#attention(qkv, T);
    const mid = new Float32Array(T * D);
    lib.bv_fill_rows(mid, w.projBias, x, T, D);
    this.#mm(T, D, D, [o, 0, D], [w.proj, 0, D], [mid, 0, D], { beta: 1 });
    const mlp = this.#mlp.forward(mid);
    return { positions: T, output: mlp.output, xh1, rs1, qkv, p, a, mlp };
  }

  /**
   * Only the block's output for several sequences at once, nothing kept for a backward: LayerNorm,
   * the products and the MLP over all their positions, attention by the model's fused kernel per
   * (sequence, head), intermediates in scratch reused from call to call. For many forward passes
   * (the ablation curve's).
   *
   * @param x The block's input (resid_pre) `[sequences · T][D]`.
   * @param sequences How many sequences `x` holds (T = its positions / sequences).
   * @returns The output (resid_post) `[sequences · T][D]` (a new array).
   * @throws {RangeError} If `x` is not a whole number of sequences of whole positions.
   */
  run(x: Float32Array, sequences: number): Float32Array {
    const { D, H, S, eps } = this.#dims, w = this.#w, { lib, attention } = this.#native;
    const N = x.length / D, T = N / sequences, W = 3 * D;
    if (!Number.isInteger(N) || !Number.isInteger(T) || T < 1) {
      throw new RangeError(
        `Cannot run a block on ${x.length} values as ${sequences} sequences of width ${D}`,
      );
    }
    const need = N * (4 * D + W + 1) + sequences * H * T;
    if (this.#runScratch.length < need) this.#runScratch = new Float32Array(need);
    let at = 0;
    const take = (n: number) => this.#runScratch.subarray(at, at += n);
    const xh = take(N * D), rs = take(N), ln1 = take(N * D), qkv = take(N * W), o = take(N * D);
    const mid = take(N * D), lse = take(sequences * H * T);
    lib.bv_layernorm(x, w.ln1.gamma, w.ln1.beta, eps, N, D, xh, rs, ln1);
    lib.bv_fill_rows(qkv, w.attnBias, null, N, W);
    this.#mm(N, W, D, [ln1, 0, D], [w.attn, 0, W], [qkv, 0, W], { beta: 1 });
    attention.scalar_attention_forward(qkv, o, lse, sequences, T, H, S, 1 / Math.sqrt(S));
    lib.bv_fill_rows(mid, w.projBias, x, N, D);
    this.#mm(N, D, D, [o, 0, D], [w.proj, 0, D], [mid, 0, D], { beta: 1 });
    return this.#mlp.run(mid);
  }

  /**
   * Causal attention of one sequence from its c_attn output: probabilities P, merged heads O, and
   * A_h = Q_h·W_k,hᵀ/√S (W_k,h: columns D + h·S … of c_attn's weight).
   */
  #attention(qkv: Float32Array, T: number): { p: Float32Array; o: Float32Array; a: Float32Array } {
    const { D, H, S } = this.#dims, W = 3 * D, scale = 1 / Math.sqrt(S), attn = this.#w.attn;
    const p = new Float32Array(H * T * T), o = new Float32Array(T * D);
    const a = new Float32Array(H * T * D);
    const scaled = { transB: true, alpha: scale };
    for (let h = 0; h < H; h++) {
      const q: View = [qkv, h * S, W];
      this.#mm(T, T, S, q, [qkv, D + h * S, W], [p, h * T * T, T], scaled);
      this.#mm(T, D, S, q, [attn, D + h * S, W], [a, h * T * D, D], scaled);
    }
    this.#native.lib.bv_causal_softmax(p, H, T);
    for (let h = 0; h < H; h++) {
      this.#mm(T, S, T, [p, h * T * T, T], [qkv, 2 * D + h * S, W], [o, h * S, D]);
    }
    return { p, o, a };
  }

  /**
   * Adds the block's input gradient for each cotangent row to `out`: row r's positions 0 … its
   * last entry's at `out[outOffset[r] + t·D + d]` (later positions get nothing: their gradient is 0
   * by causality, so a row's storage need only be that long).
   *
   * @param f The sequence's forward ({@link BlockVjp.forward}).
   * @param c The rows' cotangents.
   * @param out Where the gradients are added.
   * @param outOffset Where each row's position 0 is in `out`; rows must not overlap.
   * @throws {RangeError} If an entry, vector or row is out of range, or `rowStart` is not
   * ascending from 0.
   */
  accumulate(f: BlockForward, c: SparseCotangents, out: Float32Array, outOffset: Int32Array): void {
    const { D, H } = this.#dims, T = f.positions, R = outOffset.length;
    checkCotangents(c, R, T, D, out.length, outOffset);
    // Rows in groups whose entries' scratch fits the budget (a single row may exceed it).
    const perEntry = entryFloats(D, H, T);
    const most = Math.max(1, Math.floor(this.#maxEntryFloats / perEntry));
    for (let r0 = 0; r0 < R;) {
      let r1 = r0 + 1;
      while (r1 < R && c.rowStart[r1 + 1]! - c.rowStart[r0]! <= most) r1++;
      const e0 = c.rowStart[r0]!, e1 = c.rowStart[r1]!;
      if (e1 > e0) {
        const group = {
          rowStart: c.rowStart.slice(r0, r1 + 1).map((v) => v - e0),
          position: c.position.subarray(e0, e1),
          vector: c.vector.subarray(e0, e1),
          vectors: c.vectors,
        };
        this.#backward(f, group, out, outOffset.subarray(r0, r1));
      }
      r0 = r1;
    }
  }

  /** {@link accumulate} for one group of rows with entries, rowStart from 0. */
  #backward(f: BlockForward, c: SparseCotangents, out: Float32Array, outOffset: Int32Array): void {
    const { D, H } = this.#dims, T = f.positions, w = this.#w, lib = this.#native.lib;
    const pos = c.position, E = pos.length;
    if (this.#scratch.length < E * entryFloats(D, H, T)) {
      this.#scratch = new Float32Array(E * entryFloats(D, H, T));
    }
    let at = 0;
    const take = (n: number) => this.#scratch.subarray(at, at += E * n);
    const g = take(D), dmid = take(D), dO = take(D), ds = take(H * T);
    const dq = take(D), dAq = take(D), bv = take(H * D);
    lib.bv_gather(c.vectors, c.vector, E, D, g);
    // MLP and ln_2 (or DynamicTanh) per entry, plus the residual: dmid = g + norm₂ᵀ(MLPᵀ(g)).
    this.#mlp.backward(f.mlp, g, pos, dmid);
    this.#mm(E, D, D, [dmid, 0, D], [w.proj, 0, D], [dO, 0, D], { transB: true });
    this.#attentionBackward(f, pos, dO, ds, dq, dAq, bv);
    lib.bv_rows(
      ...[outOffset.length, c.rowStart, outOffset, pos, T, D, H] as const,
      ...[f.p, ds, f.a, bv, dAq, dmid, f.xh1, f.rs1, w.ln1.gamma, out] as const,
    );
  }

  /**
   * Attention's backward per entry, from dO `[E][D]`: dS (dP, then the softmax backward, in place
   * in `ds` `[E][H][T]`), the queries' gradient at ln_1's output dAq = (dS·K/√S)·W_qᵀ `[E][D]`
   * (through `dq`), and Bv = dO_h·W_v,hᵀ `[E][H][D]`.
   */
  #attentionBackward(
    f: BlockForward,
    pos: Int32Array,
    dO: Float32Array,
    ds: Float32Array,
    dq: Float32Array,
    dAq: Float32Array,
    bv: Float32Array,
  ): void {
    const { D, H, S } = this.#dims, T = f.positions, W = 3 * D, E = pos.length;
    const attn = this.#w.attn, scale = 1 / Math.sqrt(S), t = { transB: true };
    for (let h = 0; h < H; h++) {
      const dOh: View = [dO, h * S, D];
      this.#mm(E, T, S, dOh, [f.qkv, 2 * D + h * S, W], [ds, h * T, H * T], t);
      this.#mm(E, D, S, dOh, [attn, 2 * D + h * S, W], [bv, h * D, H * D], t);
    }
    this.#native.lib.bv_softmax_backward(ds, f.p, pos, E, H, T);
    for (let h = 0; h < H; h++) {
      const k: View = [f.qkv, D + h * S, W];
      this.#mm(E, S, T, [ds, h * T, H * T], k, [dq, h * S, D], { alpha: scale });
    }
    this.#mm(E, D, D, [dq, 0, D], [attn, 0, W], [dAq, 0, D], t);
  }
}

/** Bounds of a call of {@link BlockVjp.accumulate}: the native loops trust every index. */
function checkCotangents(
  c: SparseCotangents,
  R: number,
  T: number,
  D: number,
  outLength: number,
  outOffset: Int32Array,
): void {
  const { rowStart, position, vector, vectors } = c, E = position.length, V = vectors.length / D;
  const problem = rowStart.length !== R + 1 || rowStart[0] !== 0 || rowStart[R] !== E ||
      vector.length !== E
    ? `rowStart must run from 0 to the ${E} entries over ${R} rows (one per out offset)`
    : !Number.isInteger(V)
    ? `the vectors are not a whole number of rows of width ${D}`
    : rowStart.some((v, r) => r > 0 && v < rowStart[r - 1]!)
    ? "rowStart is not ascending"
    : position.some((t) => t < 0 || t >= T)
    ? `a position is outside [0, ${T})`
    : vector.some((v) => v < 0 || v >= V)
    ? `a vector is outside [0, ${V})`
    : outOffset.some((o, r) => o < 0 || o + rowEnd(c, r) * D > outLength)
    ? `a row does not fit in the ${outLength} floats of out`
    : undefined;
  if (problem !== undefined) throw new RangeError(`Cannot run the block's backward: ${problem}`);
}

/** Row r's last entry position + 1 (0 without entries). */
function rowEnd(c: SparseCotangents, r: number): number {
  let end = 0;
  for (let e = c.rowStart[r]!; e < c.rowStart[r + 1]!; e++) end = Math.max(end, c.position[e]! + 1);
  return end;
}

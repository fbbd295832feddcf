/**
 * The input gradient of a block's MLP half for many cotangent entries at once, each one vector at
 * one position: what SCALAR's attribution of a per-token pair asks for (`attribution.ts`, token
 * rows), where an entry is a (token, target) pair and its vector the target's encoder column
 * W_enc_down[:, j]. Two segments: `mlp-block` (resid_mid → resid_post = x + MLP(ln_2(x)), the
 * norm and the residual) and `mlp` (hook_mlp_in → hook_mlp_out, the MLP alone; this project's
 * hook_mlp_in is after ln_2). `block_vjp.ts` runs its MLP half through the same class.
 *
 * The segment acts on each position alone, so one forward over all positions of a batch
 * ({@link MlpVjp.forward}: the norm's saved statistics or DynamicTanh's tanh, GELU′) serves every
 * entry, and the backward is two products over all E entries:
 *
 *   dx_e = [g_e] + normᵀ(((g_e·W_projᵀ) ∘ GELU′[i_e])·W_fcᵀ)      (E × D·M, twice)
 *
 * 4·D·M FLOPs per entry (65.5k at the toy widths, D 64, M 256), where autodiff of the segment
 * pays that plus its per-op dispatch and intermediates on every row.
 *
 * Dimensions: T positions, D d_model, M MLP width, E entries.
 *
 * @module
 */
import type { GPT } from "../model/gpt.ts";
import type { SaePair } from "../sae/positions.ts";
import { openVjpNative, product, type VjpNative } from "./vjp_native.ts";

/** Which MLP segment: its block, and whether ln_2 and the residual around the MLP are in it. */
export interface MlpSegment {
  layer: number;
  /** ln_2 (LayerNorm or DynamicTanh) before the MLP (`mlp-block`). */
  norm: boolean;
  /** The residual around the MLP: output = x + MLP(…) (`mlp-block`). */
  residual: boolean;
}

/**
 * The MLP segment a pair spans: `blocks.i.hook_resid_mid` → `blocks.i.hook_resid_post` (norm and
 * residual) or `blocks.i.hook_mlp_in` → `blocks.i.hook_mlp_out` (neither); else undefined.
 *
 * @param pair The SAE pair.
 * @returns The segment, or undefined.
 *
 * @example
 * ```ts
 * import { deepEqual, equal } from "node:assert/strict";
 * import { mlpSegmentOfPair } from "./mlp_vjp.ts";
 * const up = "blocks.2.hook_resid_mid", down = "blocks.2.hook_resid_post";
 * deepEqual(mlpSegmentOfPair({ up, down, layer: 2 }), { layer: 2, norm: true, residual: true });
 * const block = { up: "blocks.0.hook_resid_pre", down: "blocks.1.hook_resid_pre", layer: 0 };
 * equal(mlpSegmentOfPair(block), undefined);
 * ```
 */
export function mlpSegmentOfPair(pair: SaePair): MlpSegment | undefined {
  const m = /^blocks\.(\d+)\.(hook_resid_mid|hook_mlp_in)$/.exec(pair.up);
  if (m === null) return undefined;
  const layer = Number(m[1]), whole = m[2] === "hook_resid_mid";
  const down = `blocks.${layer}.${whole ? "hook_resid_post" : "hook_mlp_out"}`;
  return pair.down === down ? { layer, norm: whole, residual: whole } : undefined;
}

/**
 * Cotangent entries: entry e puts `vectors` row `vector[e]` at position `position[e]`.
 */
export interface CotangentEntries {
  /** Each entry's position, in [0, T). */
  position: Int32Array;
  /** Each entry's vector: a row of `vectors`. */
  vector: Int32Array;
  /** The cotangent vectors, `[V][D]`. */
  vectors: Float32Array;
}

/** What {@link MlpVjp.forward} keeps of T positions for the backward. */
export interface MlpForward {
  /** Positions T. */
  readonly positions: number;
  /** The segment's output `[T][D]`, as the model computes it. */
  readonly output: Float32Array;
  /** ln_2: normalised input `[T][D]` and 1/σ per position; DynamicTanh: tanh(α·x), `rs` empty. */
  readonly xh: Float32Array;
  readonly rs: Float32Array;
  /** GELU′ at the MLP's pre-activation `[T][M]`. */
  readonly geluGrad: Float32Array;
}

/** ln_2's weights, or none. */
type Norm =
  | { kind: "layernorm"; gamma: Float32Array; beta: Float32Array; eps: number }
  | { kind: "dyt"; alpha: number; gamma: Float32Array; beta: Float32Array }
  | undefined;

/** The MLP's weights as host arrays (Hugging Face layout: `[in][out]`). */
interface MlpWeights {
  norm: Norm;
  fc: Float32Array; // [D][M]
  fcBias: Float32Array;
  proj: Float32Array; // [M][D]
  projBias: Float32Array;
}

/** Reads block `layer`'s ln_2 (when `norm`) and MLP weights from the model. */
async function readWeights(model: GPT, layer: number, norm: boolean): Promise<MlpWeights> {
  const read = async (name: string) =>
    (await model.params.get(`h.${layer}.${name}`)!.data()) as Float32Array;
  const c = model.config;
  const n: Norm = !norm ? undefined : c.mlpNorm === "dyt"
    ? {
      kind: "dyt",
      alpha: (await read("ln_2.alpha"))[0]!,
      gamma: await read("ln_2.gamma"),
      beta: await read("ln_2.beta"),
    }
    : {
      kind: "layernorm",
      gamma: await read("ln_2.weight"),
      beta: await read("ln_2.bias"),
      eps: c.lnEps,
    };
  return {
    norm: n,
    fc: await read("mlp.c_fc.weight"),
    fcBias: await read("mlp.c_fc.bias"),
    proj: await read("mlp.c_proj.weight"),
    projBias: await read("mlp.c_proj.bias"),
  };
}

/**
 * The batched backward of one MLP segment of a frozen GPT (see the module documentation), on the
 * host: products in OpenBLAS, the rest in the native loops of `block_vjp.c`.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { GPT } from "../model/gpt.ts";
 * import { TINY } from "../model/testdata/tiny_gpt.ts";
 * import { MlpVjp } from "./mlp_vjp.ts";
 * const model = GPT.init(TINY, 1);
 * const vjp = await MlpVjp.open(model, { layer: 0, norm: true, residual: true });
 * if ("error" in vjp) throw new Error(vjp.error);
 * const f = vjp.forward(new Float32Array(2 * TINY.dModel).fill(0.5));
 * // One entry, e_0 at position 1; its gradient goes to out[0 … D).
 * const out = new Float32Array(TINY.dModel), vectors = new Float32Array(TINY.dModel);
 * vectors[0] = 1;
 * vjp.accumulate(f, { position: Int32Array.of(1), vector: Int32Array.of(0), vectors }, out,
 *   Int32Array.of(0));
 * equal(out.some((v) => v !== 0), true);
 * model.dispose();
 * ```
 */
export class MlpVjp {
  readonly #w: MlpWeights;
  readonly #native: VjpNative;
  readonly #residual: boolean;
  readonly #D: number;
  readonly #M: number;
  readonly #maxEntries: number;
  #scratch = new Float32Array(0);
  #runScratch = new Float32Array(0);

  private constructor(
    w: MlpWeights,
    native: VjpNative,
    residual: boolean,
    D: number,
    M: number,
    memoryBytes: number,
  ) {
    this.#w = w;
    this.#native = native;
    this.#residual = residual;
    this.#D = D;
    this.#M = M;
    // Per entry: its gathered vector and gradient [D] each, and dpost [M].
    this.#maxEntries = Math.max(1, Math.floor(memoryBytes / (4 * (2 * D + M))));
  }

  /**
   * Reads the segment's weights and opens the native loops and OpenBLAS. Never throws for a
   * missing compiler or BLAS: the reason comes back instead, for a caller that falls back to
   * autodiff.
   *
   * @param model The frozen model (its current weights are copied).
   * @param segment The block and what of it the segment holds.
   * @param memoryBytes Budget for one backward's per-entry scratch. @default 64 MiB
   * @returns The VJP, or why it cannot run here (`{error}`).
   * @throws {RangeError} If the model has no block `segment.layer`.
   */
  static async open(
    model: GPT,
    segment: MlpSegment,
    memoryBytes = 64 * 1024 * 1024,
  ): Promise<MlpVjp | { error: string }> {
    const native = await openVjpNative();
    if ("error" in native) return native;
    return await MlpVjp.withNative(model, segment, native, memoryBytes);
  }

  /**
   * {@link open} on loops already opened (a block's VJP holds one for its MLP half).
   *
   * @param model The frozen model.
   * @param segment The block and what of it the segment holds.
   * @param native The opened loops and BLAS.
   * @param memoryBytes Budget for one backward's per-entry scratch.
   * @returns The VJP.
   * @throws {RangeError} If the model has no block `segment.layer`.
   */
  static async withNative(
    model: GPT,
    segment: MlpSegment,
    native: VjpNative,
    memoryBytes = 64 * 1024 * 1024,
  ): Promise<MlpVjp> {
    const c = model.config, { layer } = segment;
    if (!Number.isInteger(layer) || layer < 0 || layer >= c.nLayer) {
      throw new RangeError(`Cannot differentiate block ${layer}'s MLP: the model has ${c.nLayer}`);
    }
    const w = await readWeights(model, layer, segment.norm);
    return new MlpVjp(w, native, segment.residual, c.dModel, c.dMlp, memoryBytes);
  }

  /**
   * Runs the segment on T positions and keeps what the backward needs.
   *
   * @param x The segment's input `[T][D]`, T ≥ 1.
   * @returns The saved activations and the output.
   * @throws {RangeError} If `x` is not a whole number of positions.
   */
  forward(x: Float32Array): MlpForward {
    return this.#forward(x, (n) => new Float32Array(n));
  }

  /**
   * Only the segment's output on T positions, its intermediates in scratch reused from call to
   * call: for many passes whose backward is never taken (the ablation curve's).
   *
   * @param x The segment's input `[T][D]`, T ≥ 1.
   * @returns The output `[T][D]` (a new array).
   * @throws {RangeError} If `x` is not a whole number of positions.
   */
  run(x: Float32Array): Float32Array {
    let at = 0;
    const need = 2 * x.length + x.length / this.#D + 2 * (x.length / this.#D) * this.#M;
    if (this.#runScratch.length < need) this.#runScratch = new Float32Array(need);
    const scratch = (n: number) => this.#runScratch.subarray(at, at += n);
    return this.#forward(x, scratch, new Float32Array(x.length)).output;
  }

  /** {@link forward} with its arrays from `take`, the output in `output` when given. */
  #forward(x: Float32Array, take: (n: number) => Float32Array, output?: Float32Array): MlpForward {
    const D = this.#D, M = this.#M, w = this.#w, { lib, blas } = this.#native;
    const T = x.length / D;
    if (!Number.isInteger(T) || T < 1) {
      throw new RangeError(`Cannot run an MLP on ${x.length} values: not a multiple of ${D}`);
    }
    const n = w.norm;
    let normed = x, xh: Float32Array = new Float32Array(0), rs: Float32Array = new Float32Array(0);
    if (n !== undefined) {
      normed = take(T * D);
      xh = take(T * D);
      if (n.kind === "layernorm") {
        rs = take(T);
        lib.bv_layernorm(x, n.gamma, n.beta, n.eps, T, D, xh, rs, normed);
      } else lib.bv_dyt(x, n.alpha, n.gamma, n.beta, T * D, D, xh, normed);
    }
    const pre = take(T * M), geluGrad = take(T * M), out = output ?? take(T * D);
    lib.bv_fill_rows(pre, w.fcBias, null, T, M);
    product(blas, T, M, D, [normed, 0, D], [w.fc, 0, M], [pre, 0, M], { beta: 1 });
    lib.bv_gelu(pre, T * M, pre, geluGrad); // in place: each value is read before it is written
    lib.bv_fill_rows(out, w.projBias, this.#residual ? x : null, T, D);
    product(blas, T, D, M, [pre, 0, M], [w.proj, 0, D], [out, 0, D], { beta: 1 });
    return { positions: T, output: out, xh, rs, geluGrad };
  }

  /**
   * The input gradients of E entries whose vectors are gathered: dx[e] = [g[e]] + normᵀ(MLPᵀ(g[e]))
   * at position pos[e] (the bracket: with the residual).
   *
   * @param f The positions' forward.
   * @param g The entries' cotangents `[E][D]`.
   * @param pos Each entry's position in `f`; trusted (callers check).
   * @param dx Where the gradients go `[E][D]` (overwritten; not `g`).
   */
  backward(f: MlpForward, g: Float32Array, pos: Int32Array, dx: Float32Array): void {
    const D = this.#D, M = this.#M, E = pos.length, w = this.#w, { lib, blas } = this.#native;
    if (this.#scratch.length < E * M) this.#scratch = new Float32Array(E * M);
    const dpost = this.#scratch.subarray(0, E * M), n = w.norm;
    product(blas, E, M, D, [g, 0, D], [w.proj, 0, D], [dpost, 0, M], { transB: true });
    lib.bv_scale_rows(dpost, f.geluGrad, pos, E, M);
    if (n === undefined && this.#residual) dx.set(g.subarray(0, E * D));
    const beta = n === undefined && this.#residual ? 1 : 0;
    product(blas, E, D, M, [dpost, 0, M], [w.fc, 0, M], [dx, 0, D], { transB: true, beta });
    const residual = this.#residual ? g : null;
    if (n?.kind === "layernorm") {
      lib.bv_layernorm_backward(dx, f.xh, f.rs, n.gamma, pos, E, D, residual, dx);
    } else if (n?.kind === "dyt") {
      lib.bv_dyt_backward(dx, f.xh, n.alpha, n.gamma, pos, E, D, residual, dx);
    }
  }

  /**
   * Adds each entry's input gradient (D floats) to `out` at `outOffset[e]`.
   *
   * @param f The positions' forward ({@link forward}).
   * @param c The entries.
   * @param out Where the gradients are added.
   * @param outOffset Where each entry's gradient goes in `out`.
   * @throws {RangeError} If an entry's position, vector or offset is out of range.
   */
  accumulate(f: MlpForward, c: CotangentEntries, out: Float32Array, outOffset: Int32Array): void {
    const D = this.#D, E = c.position.length, V = c.vectors.length / D;
    const problem = c.vector.length !== E || outOffset.length !== E
      ? `${E} positions, ${c.vector.length} vectors and ${outOffset.length} offsets differ`
      : c.position.some((t) => t < 0 || t >= f.positions)
      ? `a position is outside [0, ${f.positions})`
      : c.vector.some((v) => v < 0 || v >= V)
      ? `a vector is outside [0, ${V})`
      : outOffset.some((o) => o < 0 || o + D > out.length)
      ? `an offset does not leave ${D} floats in the ${out.length} of out`
      : undefined;
    if (problem !== undefined) throw new RangeError(`Cannot run the MLP's backward: ${problem}`);
    const most = this.#maxEntries;
    const g = new Float32Array(Math.min(E, most) * D), dx = new Float32Array(g.length);
    for (let e0 = 0; e0 < E; e0 += most) {
      const e1 = Math.min(E, e0 + most), n = e1 - e0;
      this.#native.lib.bv_gather(c.vectors, c.vector.subarray(e0, e1), n, D, g);
      this.backward(f, g, c.position.subarray(e0, e1), dx);
      for (let e = 0; e < n; e++) {
        const to = outOffset[e0 + e]!;
        for (let d = 0; d < D; d++) out[to + d]! += dx[e * D + d]!;
      }
    }
  }
}

/**
 * The CPU engine for SAE training: the step `lib/sae/train.ts` computes through tfjs (TopK encode,
 * decode, squared-error loss, backward, global-norm clipping, AdamW) with the work it needs and
 * no more — the same structure as the WebGPU engine (`gpu/sae_engine.ts`):
 *
 * per micro-batch and SAE: centre x, encoder product and per-row TopK selection (per block of
 * rows, the product in OpenBLAS, so the pre-activations stay in cache) → sparse decode over the
 * k kept pairs (+ ∂L/∂x̂, ∂L/∂pre of the kept pairs, loss partials) → per-feature lists →
 * gradients gathered feature by feature; JSAE pairs add their Jacobian term; then per SAE the
 * b_dec gradient, and for all SAEs at once the gradient norm, clipping and AdamW in one pass.
 *
 * The loops are C (`cpu_engine.c`, compiled at first use by `lib/backend/native.ts`), split over
 * OpenMP threads in fixed blocks; every product is a fixed block of rows in one single-threaded
 * OpenBLAS call. So every thread count gives the same bits.
 * Parameters, gradients and both moments are one flat array each (`param_layout.ts`), every
 * buffer is allocated once, and no tfjs tensor is touched inside a step.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { openBlas } from "../backend/blas.ts";
import {
  EXP_VEC_SOURCE,
  GELU_TANH_SOURCE,
  loadNative,
  type NativeLibrary,
} from "../backend/native.ts";
import type { AdamWState } from "../optim/adamw.ts";
import type { SaeConfig, SaeSet } from "./architectures.ts";
import type { MlpWeights } from "./jacobian.ts";
import { layoutParams, type ParamLayout, type SaeView } from "./param_layout.ts";
import type { SaePair } from "./positions.ts";

/** What the engine trains, and how (`SaeEngine.create`'s options, without the GPU). */
export interface CpuSaeEngineOptions {
  /** The SAEs; their variables hold the starting parameters. */
  saes: SaeSet;
  /** Their settings. */
  sae: SaeConfig;
  /** Tokens per step. */
  rows: number;
  /** Tokens per forward/backward pass (gradients accumulate over a step's passes). @default rows */
  microRows?: number;
  /** AdamW's settings, and which parameters decay (undefined: all, as `AdamW` has it). */
  adam: {
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
    decays?: (name: string, shape: readonly number[]) => boolean;
  };
  /** Global gradient-norm limit. */
  gradClip: number;
  /** JSAE: the pairs, the MLP between each, and the weight λ of the Jacobian loss. */
  jacobian?: { pairs: readonly SaePair[]; mlp: (pair: SaePair) => MlpWeights; lambda: number };
}

/** The C kernels of `cpu_engine.c`, as `Deno.dlopen` symbols. */
export const CPU_ENGINE_SYMBOLS = {
  sae_use_blas: { parameters: ["buffer"], result: "i32" },
  sae_max_threads: { parameters: [], result: "i32" },
  sae_gemm: {
    parameters: [
      ...["i32", "i32", "i32", "i32", "i32", "f32"],
      ...["buffer", "i32", "buffer", "i32", "f32", "buffer", "i32", "i32"],
    ],
    result: "void",
  },
  sae_center: { parameters: ["buffer", "buffer", "i32", "i32", "buffer"], result: "void" },
  sae_encode: {
    parameters: [
      ...["buffer", "i32", "i32", "buffer", "i32", "i32", "buffer", "i32", "i32", "i32"],
      ...["buffer", "buffer", "buffer"],
    ],
    result: "void",
  },
  sae_decode: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i32", "i32", "i32", "f32", "i32"],
      ...["buffer", "buffer", "buffer", "buffer"],
    ],
    result: "void",
  },
  sae_lists: { parameters: ["buffer", "i32", "i32", "buffer", "buffer"], result: "void" },
  sae_feature_grads: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i32", "i32", "i32", "i32", "buffer", "buffer", "buffer"],
    ],
    result: "void",
  },
  sae_add_transposed: {
    parameters: ["buffer", "i32", "i32", "i32", "i32", "buffer"],
    result: "void",
  },
  sae_bdec_grad: {
    parameters: ["buffer", "i32", "i32", "buffer", "i32", "i32", "buffer", "buffer"],
    result: "void",
  },
  sae_sum_squares: { parameters: ["buffer", "i64"], result: "f64" },
  sae_adamw: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "buffer"],
    result: "void",
  },
  jsae_gelu: {
    parameters: ["buffer", "i32", "i32", "buffer", "buffer", "i32", "buffer"],
    result: "void",
  },
  jsae_forward: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i32", "i32", "i32", "f32", "i32", "buffer", "buffer"],
    ],
    result: "void",
  },
  jsae_backward: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i32", "i32", "i32", "i32", "buffer"],
    ],
    result: "void",
  },
} as const;

/** The engine's C kernels, as `Deno.dlopen` gives them (see {@link cpuEngineKernels}). */
export type CpuEngineKernels = NativeLibrary<typeof CPU_ENGINE_SYMBOLS>["symbols"];

/** Rows per partial-sum block (losses, L0, b_dec's column sums, |J|): fixed, for determinism. */
export const BLOCK_ROWS = 256;
// Rows per block of the other products (each block one single-threaded BLAS call).
const GEMM_ROWS = 64;
// Tokens per chunk of the Jacobian term: GELU′ (1 MiB at the toy's MLP width of 256) and dJ stay
// in cache while the gathers read them; a multiple of BLOCK_ROWS, so |J|'s partial sums keep
// their blocks.
const JACOBIAN_ROWS = 4 * BLOCK_ROWS;
// Rows per chunk of the gathered weight gradients: their ∂L/∂x̂ and centred inputs (512 KiB at
// the toy's width of 64) stay in cache while each feature's pairs read them.
const GATHER_ROWS = 1024;
// Pre-activations per encoder block (512 KiB): a block stays in its core's cache from the product
// to the selection.
const ENCODER_FLOATS = 131_072;

/**
 * Rows per encoder block for an SAE of `width` features: a multiple of 16 from 16 to 256 whose
 * pre-activations fit 512 KiB (256 rows at the toy's 512 features).
 *
 * @param width Features.
 * @returns Rows per block.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { encoderRows } from "./cpu_engine.ts";
 * equal(encoderRows(512), 256);
 * equal(encoderRows(1024), 128);
 * equal(encoderRows(24_576), 16);
 * ```
 */
export function encoderRows(width: number): number {
  return Math.min(256, Math.max(16, Math.floor(ENCODER_FLOATS / width / 16) * 16));
}

/** The architectures the engine trains (`jsae` given its MLPs). */
export const CPU_ENGINE_ARCHITECTURES: readonly string[] = [
  "topk",
  "staircase",
  "staircase-detached",
  "jsae",
];

/** One SAE: its view of the flat arrays and its own scratch. */
interface HookState {
  view: SaeView;
  /** Kept pairs `[micro, k]`. */
  idx: Int32Array;
  val: Float32Array;
  /** Per-feature lists of the kept pairs of one chunk of rows (rebuilt per chunk). */
  starts: Int32Array;
  list: Int32Array;
  /** ∂W_enc, transposed `[width, D]`, summed over the step's micro-batches. */
  encT: Float32Array;
  /** Per block of rows over the whole step: (Σ e², positives) pairs and ∂L/∂x̂ column sums. */
  sums: Float32Array;
  cols: Float32Array;
}

/** One JSAE pair: the frozen MLP, the factors and their gradients, per-pass scratch. */
interface PairState {
  up: HookState;
  down: HookState;
  m: number;
  wFc: Float32Array;
  bFc: Float32Array;
  wProj: Float32Array;
  /** A `[F_in, M]`, Bᵀ `[F_out, M]` and their gradients. */
  a: Float32Array;
  bt: Float32Array;
  da: Float32Array;
  dbt: Float32Array;
  /** GELU′ `[chunk, M]`, dJ `[chunk, k, k]` (JACOBIAN_ROWS), Σ|J| per block over the step. */
  g: Float32Array;
  dj: Float32Array;
  sums: Float32Array;
}

/** The flat arrays: parameters, gradients, both moments. */
interface Flat {
  params: Float32Array;
  grads: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

/** Scratch shared by the SAEs (each uses it within its own pass). */
interface Shared {
  xc: Float32Array;
  pre: Float32Array;
  dxhat: Float32Array;
  dpre: Float32Array;
}

/**
 * The engine; create with {@link CpuSaeEngine.create}.
 *
 * @example One step of a small TopK SAE pair
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { buildSaes, type SaeConfig } from "./architectures.ts";
 * import { CpuSaeEngine } from "./cpu_engine.ts";
 * import { layoutPosition } from "./positions.ts";
 * const sae: SaeConfig = { arch: "topk", features: 32, k: 4, jsaeLambda: 0 };
 * const saes = buildSaes(sae, layoutPosition("mlp", 1), 8, 0);
 * const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };
 * const engine = await CpuSaeEngine.create({ saes, sae, rows: 64, adam, gradClip: 1 });
 * const x = Float32Array.from({ length: 64 * 8 }, (_, i) => Math.sin(i));
 * const figures = await engine.step(new Map(saes.hooks.map((h) => [h, x])), 1e-3, true);
 * // Two losses, then two L0s of at most k.
 * ok(figures!.length === 4 && figures![0]! > 0 && figures![2]! <= 4);
 * ```
 */
export class CpuSaeEngine {
  readonly #o: CpuSaeEngineOptions;
  readonly #k: CpuEngineKernels;
  readonly #layout: ParamLayout;
  readonly #flat: Flat;
  readonly #shared: Shared;
  readonly #micros: { offset: number; count: number; block: number }[];
  readonly #blocks: number;
  readonly #hooks: HookState[];
  readonly #pairs: PairState[];
  readonly #adamConstants = new Float32Array(10);
  // Per-thread encoder scratch blocks in the shared pre-activation buffer.
  readonly #slots: number;
  #batch: ReadonlyMap<string, Float32Array> | undefined;
  #step = 0;

  private constructor(
    o: CpuSaeEngineOptions,
    kernels: CpuEngineKernels,
    parts: {
      layout: ParamLayout;
      flat: Flat;
      shared: Shared;
      micros: { offset: number; count: number; block: number }[];
      blocks: number;
      hooks: HookState[];
      pairs: PairState[];
    },
  ) {
    this.#o = o;
    this.#k = kernels;
    this.#slots = kernels.sae_max_threads();
    ({
      layout: this.#layout,
      flat: this.#flat,
      shared: this.#shared,
      micros: this.#micros,
      blocks: this.#blocks,
      hooks: this.#hooks,
      pairs: this.#pairs,
    } = parts);
  }

  /**
   * Builds the engine: compiles (first use) and opens the kernels, opens OpenBLAS, lays out and
   * copies the SAEs' parameters (from their variables), zeroes the moments and allocates every
   * buffer.
   *
   * @param o SAEs, batch sizes and optimizer settings.
   * @returns The engine, at step 0 (see {@link CpuSaeEngine.load} to resume).
   * @throws {RangeError} For an architecture the engine does not train, or impossible sizes.
   * @throws {NativeError} If the kernels cannot be compiled (no C compiler: `apt-get install gcc`).
   * @throws {Error} If no BLAS library opens.
   */
  static async create(o: CpuSaeEngineOptions): Promise<CpuSaeEngine> {
    if (
      !CPU_ENGINE_ARCHITECTURES.includes(o.sae.arch) || (o.sae.arch === "jsae") !== !!o.jacobian
    ) {
      throw new RangeError(
        `Cannot train "${o.sae.arch}" SAEs on the CPU engine ` +
          (o.jacobian ? "with a Jacobian term" : "without the MLPs of the Jacobian term"),
      );
    }
    const micro = o.microRows ?? o.rows;
    if (!(Number.isInteger(o.rows) && o.rows > 0 && Number.isInteger(micro) && micro > 0)) {
      throw new RangeError(`Cannot train on ${o.rows} rows per step in passes of ${micro}`);
    }
    const { k } = o.sae;
    if (!(Number.isInteger(k) && k >= 1 && o.saes.hooks.every((h) => k <= o.saes.width(h)))) {
      throw new RangeError(`Cannot keep k = ${k} features: need 1 ≤ k ≤ every SAE's width`);
    }
    const kernels = await cpuEngineKernels();
    const layout = layoutParams(o.saes, o.sae, o.adam.decays);
    const flat = {
      params: new Float32Array(layout.length),
      grads: new Float32Array(layout.length),
      m: new Float32Array(layout.length),
      v: new Float32Array(layout.length),
    };
    await copyParams(o.saes, layout, flat.params);
    const micros = [];
    let blocks = 0;
    for (let offset = 0; offset < o.rows; offset += micro) {
      const count = Math.min(micro, o.rows - offset);
      micros.push({ offset, count, block: blocks });
      blocks += Math.ceil(count / BLOCK_ROWS);
    }
    const rows = Math.min(micro, o.rows);
    const d = layout.saes[0]!.d;
    const shared = {
      xc: new Float32Array(rows * d),
      pre: new Float32Array(
        kernels.sae_max_threads() *
          Math.max(...layout.saes.map((s) => encoderRows(s.width) * s.width)),
      ),
      dxhat: new Float32Array(rows * d),
      dpre: new Float32Array(rows * k),
    };
    const hooks = layout.saes.map((view) => ({
      view,
      idx: new Int32Array(rows * k),
      val: new Float32Array(rows * k),
      starts: new Int32Array(view.width + 1),
      list: new Int32Array(rows * k),
      encT: new Float32Array(view.width * d),
      sums: new Float32Array(blocks * 2),
      cols: new Float32Array(blocks * d),
    }));
    const pairs = await Promise.all(
      (o.jacobian?.pairs ?? []).map((p) => pairState(p, o.jacobian!.mlp(p), hooks, rows, blocks)),
    );
    const engine = new CpuSaeEngine(o, kernels, {
      layout,
      flat,
      shared,
      micros,
      blocks,
      hooks,
      pairs,
    });
    return engine;
  }

  /** Optimizer steps taken. */
  get stepsDone(): number {
    return this.#step;
  }

  /**
   * One training step.
   *
   * @param batch Per hook, the step's activations `[rows, D]` row-major; undefined keeps the last.
   * @param lr The step's learning rate.
   * @param report Whether to return the figures.
   * @returns On a reporting step: each SAE's loss, each JSAE pair's λ-weighted Jacobian term, then
   *   each SAE's L0 (mean positive features per token); else undefined.
   * @throws {RangeError} If a hook's batch is missing or has another size, or no batch was given
   *   yet.
   */
  // deno-lint-ignore require-await -- async so that a bad batch rejects, as the GPU engine's does
  async step(
    batch: ReadonlyMap<string, Float32Array> | undefined,
    lr: number,
    report: boolean,
  ): Promise<Float32Array | undefined> {
    const x = this.#inputs(batch);
    this.#step++;
    this.#flat.grads.fill(0);
    for (const h of this.#hooks) h.encT.fill(0);
    for (const p of this.#pairs) this.#factors(p);
    for (const micro of this.#micros) {
      for (const [i, h] of this.#hooks.entries()) this.#pass(h, x[i]!, micro);
      for (const p of this.#pairs) this.#jacobianPass(p, x[this.#hooks.indexOf(p.up)]!, micro);
    }
    for (const p of this.#pairs) this.#jacobianGrads(p);
    for (const h of this.#hooks) this.#biasGrad(h);
    this.#optimize(lr);
    return report ? this.#figures() : undefined;
  }

  // The step's activations per hook, in hook order, checked.
  #inputs(batch: ReadonlyMap<string, Float32Array> | undefined): Float32Array[] {
    if (batch !== undefined) this.#batch = batch;
    const rows = this.#o.rows;
    return this.#hooks.map(({ view: { hook, d } }) => {
      const data = this.#batch?.get(hook);
      if (data === undefined || data.length !== rows * d) {
        throw new RangeError(
          `Cannot train "${hook}": its batch has ${
            data?.length ?? "no"
          } values, not ${rows} × ${d}`,
        );
      }
      return data;
    });
  }

  // One SAE's forward and backward pass over one micro-batch; gradients add into the flat array.
  #pass(
    h: HookState,
    batch: Float32Array,
    micro: { offset: number; count: number; block: number },
  ) {
    const { params, grads } = this.#flat;
    const { xc, pre, dxhat, dpre } = this.#shared;
    const { d, k, width, ld, wEnc, bEnc, wDec, bDec, trainFrom } = h.view;
    const n = micro.count;
    const x = batch.subarray(micro.offset * d, (micro.offset + n) * d);
    this.#k.sae_center(x, params.subarray(bDec), n, d, xc);
    this.#k.sae_encode(
      ...[xc, n, d, params.subarray(wEnc), ld, width, params.subarray(bEnc), k] as const,
      ...[encoderRows(width), this.#slots, pre, h.idx, h.val] as const,
    );
    this.#k.sae_decode(
      x,
      params.subarray(wDec),
      params.subarray(bDec),
      h.idx,
      h.val,
      n,
      d,
      k,
      2 / this.#o.rows,
      BLOCK_ROWS,
      dxhat,
      dpre,
      h.sums.subarray(2 * micro.block),
      h.cols.subarray(micro.block * d),
    );
    // Gathered by chunks of rows, so the rows a feature's pairs read stay in cache.
    for (let first = 0; first < n; first += GATHER_ROWS) {
      const rows = Math.min(GATHER_ROWS, n - first);
      const [pairs, dims] = [first * k, first * d];
      this.#k.sae_lists(h.idx.subarray(pairs), rows * k, width, h.starts, h.list);
      this.#k.sae_feature_grads(
        ...[h.starts, h.list, h.val.subarray(pairs), dpre.subarray(pairs)] as const,
        ...[dxhat.subarray(dims), xc.subarray(dims), d, k, width, trainFrom] as const,
        ...[grads.subarray(wDec), h.encT, grads.subarray(bEnc)] as const,
      );
    }
  }

  // After the micro-batches: W_enc's gathered gradient into place, then b_dec's gradient.
  #biasGrad(h: HookState): void {
    const { params, grads } = this.#flat;
    const { d, width, ld, wEnc, bEnc, bDec, trainFrom } = h.view;
    this.#k.sae_add_transposed(h.encT, d, trainFrom, width, ld, grads.subarray(wEnc));
    this.#k.sae_bdec_grad(
      ...[h.cols, this.#blocks, d, params.subarray(wEnc), ld, width] as const,
      ...[grads.subarray(bEnc), grads.subarray(bDec)] as const,
    );
  }

  // Global-norm clipping and AdamW over the flat arrays, with the per-step constants rounded to
  // f32 as the reference's scalars are.
  #optimize(lr: number): void {
    const { params, grads, m, v } = this.#flat;
    const { beta1, beta2, eps, weightDecay } = this.#o.adam;
    const f = Math.fround;
    const norm = f(Math.sqrt(this.#k.sae_sum_squares(grads, BigInt(grads.length))));
    const factor = Math.min(1, f(f(this.#o.gradClip) / f(norm + f(1e-6))));
    const t = this.#step;
    this.#adamConstants.set([
      factor,
      lr,
      1 - lr * weightDecay,
      1 - beta1 ** t,
      1 - beta2 ** t,
      beta1,
      beta2,
      1 - beta1,
      1 - beta2,
      eps,
    ]);
    this.#k.sae_adamw(
      params,
      grads,
      m,
      v,
      BigInt(params.length),
      BigInt(this.#layout.decayEnd),
      this.#adamConstants,
    );
  }

  // Each SAE's loss, each pair's λ-weighted Jacobian term, each SAE's L0, from the block partials.
  #figures(): Float32Array {
    const rows = this.#o.rows;
    const sum = (a: Float32Array, from: number, stride: number) => {
      let s = 0;
      for (let i = from; i < a.length; i += stride) s += a[i]!;
      return s;
    };
    const k = this.#o.sae.k, lambda = this.#o.jacobian?.lambda ?? 0;
    return Float32Array.from([
      ...this.#hooks.map((h) => sum(h.sums, 0, 2) / rows),
      ...this.#pairs.map((p) => (sum(p.sums, 0, 1) / (k * k)) * lambda),
      ...this.#hooks.map((h) => sum(h.sums, 1, 2) / rows),
    ]);
  }

  // A = W_dec_in · W_fc and Bᵀ = W_enc_outᵀ · W_projᵀ from this step's weights; zeroes ∂A, ∂Bᵀ.
  #factors(p: PairState): void {
    const { params } = this.#flat;
    const { up, down, m } = p;
    const d = up.view.d;
    const { wDec } = up.view, { wEnc, ld } = down.view;
    this.#gemm(0, 0, up.view.width, m, d, params.subarray(wDec), d, p.wFc, m, 0, p.a, m);
    this.#gemm(1, 1, down.view.width, m, d, params.subarray(wEnc), ld, p.wProj, d, 0, p.bt, m);
    p.da.fill(0);
    p.dbt.fill(0);
  }

  // One micro-batch of a pair's Jacobian term, in chunks of JACOBIAN_ROWS tokens (so GELU′ and dJ
  // stay in cache for the gathers): GELU′, J (and dJ, Σ|J|), then ∂A and ∂Bᵀ gathered over the
  // chunk's per-feature lists of the input and output SAEs' kept pairs (the SAEs' own passes are
  // done with their lists, which are rebuilt here per chunk).
  #jacobianPass(
    p: PairState,
    x: Float32Array,
    micro: { offset: number; count: number; block: number },
  ) {
    const { up, down, m } = p;
    const { d, k } = up.view;
    const scale = Math.fround(this.#o.jacobian!.lambda) / (k * k);
    for (let first = 0; first < micro.count; first += JACOBIAN_ROWS) {
      const n = Math.min(JACOBIAN_ROWS, micro.count - first);
      const [k1, k2] = [up.idx.subarray(first * k), down.idx.subarray(first * k)];
      const x0 = (micro.offset + first) * d;
      this.#k.jsae_gelu(x.subarray(x0), n, d, p.wFc, p.bFc, m, p.g);
      this.#k.jsae_forward(
        ...[k1, k2, p.a, p.bt, p.g, n, k, m, scale, BLOCK_ROWS] as const,
        ...[p.dj, p.sums.subarray(micro.block + first / BLOCK_ROWS)] as const,
      );
      for (
        const [h, other, factor, side, grad] of [[up, k2, p.bt, 0, p.da], [
          down,
          k1,
          p.a,
          1,
          p.dbt,
        ]] as const
      ) {
        this.#k.sae_lists(h === up ? k1 : k2, n * k, h.view.width, h.starts, h.list);
        this.#k.jsae_backward(
          ...[h.starts, h.list, p.dj, other, factor, p.g] as const,
          ...[k, m, h.view.width, side, grad] as const,
        );
      }
    }
  }

  // After the micro-batches: ∂W_dec_in += ∂A · W_fcᵀ, ∂W_enc_out += W_projᵀ · ∂Bᵀᵀ.
  #jacobianGrads(p: PairState): void {
    const { grads } = this.#flat;
    const { up, down, m } = p;
    const d = up.view.d;
    const { wDec } = up.view, { wEnc, ld } = down.view;
    this.#gemm(0, 1, up.view.width, d, m, p.da, m, p.wFc, m, 1, grads.subarray(wDec), d);
    this.#gemm(1, 1, d, down.view.width, m, p.wProj, d, p.dbt, m, 1, grads.subarray(wEnc), ld);
  }

  // C = op(A)·op(B) + beta·C, cblas_sgemm's row-major arguments, in blocks of GEMM_ROWS rows.
  #gemm(
    transA: number,
    transB: number,
    m: number,
    n: number,
    k: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void {
    this.#k.sae_gemm(transA, transB, m, n, k, 1, a, lda, b, ldb, beta, c, ldc, GEMM_ROWS);
  }

  /**
   * The current parameters, by name.
   *
   * @returns Name → shape and values (copies).
   */
  params(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    return Promise.resolve(this.#unflatten(this.#flat.params, ""));
  }

  /**
   * Copies the current parameters into the SAE set's variables (for evaluation and checkpoints
   * written by the reference code).
   */
  async writeBack(): Promise<void> {
    for (const [name, p] of await this.params()) {
      const v = this.#o.saes.params.get(name)!;
      tf.tidy(() => v.assign(tf.tensor(p.data, p.shape)));
    }
  }

  /**
   * The optimizer state in `AdamW.state()`'s form (`m.<name>`, `v.<name>`), for checkpoints.
   *
   * @returns Step count and moments (copies).
   */
  state(): Promise<AdamWState> {
    const tensors = new Map([
      ...this.#unflatten(this.#flat.m, "m."),
      ...this.#unflatten(this.#flat.v, "v."),
    ]);
    return Promise.resolve({ step: this.#step, tensors });
  }

  /**
   * Restores an optimizer state saved by {@link CpuSaeEngine.state} or `AdamW.state()`; the
   * parameters come from the SAE set's variables, which must already hold the checkpoint's.
   *
   * @param state The saved state.
   * @throws {RangeError} If a moment is missing or has another size.
   */
  async load(state: AdamWState): Promise<void> {
    for (const [prefix, flat] of [["m.", this.#flat.m], ["v.", this.#flat.v]] as const) {
      for (const s of this.#layout.slots) {
        const saved = state.tensors.get(prefix + s.name);
        if (saved === undefined || saved.data.length !== s.size) {
          throw new RangeError(`Cannot restore optimizer: moment "${prefix}${s.name}" is missing`);
        }
        flat.set(saved.data, s.offset);
      }
    }
    await copyParams(this.#o.saes, this.#layout, this.#flat.params);
    this.#step = state.step;
  }

  /**
   * Drops the step's last batch. The kernels and OpenBLAS stay loaded for the process
   * (`lib/backend/native.ts` says why); the buffers go with the engine.
   */
  dispose(): void {
    this.#batch = undefined;
  }

  #unflatten(
    flat: Float32Array,
    prefix: string,
  ): Map<string, { shape: number[]; data: Float32Array }> {
    return new Map(
      this.#layout.slots.map((s) => [
        prefix + s.name,
        { shape: s.shape, data: flat.slice(s.offset, s.offset + s.size) },
      ]),
    );
  }
}

/**
 * The engine's C kernels (`cpu_engine.c`), given the BLAS library `blas.ts` finds (they call it
 * per block); for the engine, and for benchmarks that time one kernel.
 *
 * @returns The kernels.
 * @throws {NativeError} If they cannot be compiled.
 * @throws {Error} If no BLAS library with `cblas_sgemm` opens.
 *
 * @example The engine's blocked product equals a plain one
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { cpuEngineKernels } from "./cpu_engine.ts";
 * const k = await cpuEngineKernels();
 * const a = Float32Array.of(1, 2, 3, 4), b = Float32Array.of(5, 6, 7, 8), c = new Float32Array(4);
 * k.sae_gemm(0, 0, 2, 2, 2, 1, a, 2, b, 2, 0, c, 2, 1);
 * deepEqual([...c], [19, 22, 43, 50]);
 * ```
 */
export async function cpuEngineKernels(): Promise<CpuEngineKernels> {
  const blas = openBlas();
  if ("error" in blas) throw new Error(`Cannot start the CPU SAE engine: ${blas.error}`);
  const source = new URL("./cpu_engine.c", import.meta.url);
  const prelude = [EXP_VEC_SOURCE, GELU_TANH_SOURCE];
  const kernels = (await loadNative(source, CPU_ENGINE_SYMBOLS, { prelude })).symbols;
  // The kernels open the library themselves (and keep it) before this handle is released.
  const found = kernels.sae_use_blas(new TextEncoder().encode(`${blas.path}\0`));
  blas.close();
  if (found === 0) {
    throw new Error(`Cannot start the CPU SAE engine: no cblas_sgemm in "${blas.path}"`);
  }
  return kernels;
}

/** An SAE's encoder side as host arrays: `wEnc` `[D][F]`, `bEnc` `[F]`, `bDec` `[D]`. */
export interface HostEncoder {
  wEnc: Float32Array;
  bEnc: Float32Array;
  bDec: Float32Array;
}

/**
 * TopK(ReLU((x − b_dec)·W_enc + b_enc)) of n rows by the engine's kernels (the training step's own
 * encoder and selection): per row its k (feature, value) pairs in ascending feature order, ties to
 * the lower feature, zero values included where fewer than k are positive.
 *
 * @param kernels The engine's kernels ({@link cpuEngineKernels}).
 * @param x Rows `[n][D]`.
 * @param w The SAE's encoder side.
 * @param k Features kept per row (at most F).
 * @returns `idx` and `val`, `[n][k]` each.
 * @throws {RangeError} If the shapes disagree or k is outside [1, F].
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { cpuEngineKernels, encodeTopK } from "./cpu_engine.ts";
 * const kernels = await cpuEngineKernels();
 * // D 1, F 3: pre = x·(1, −1, 2) + 0; the row x = 1 keeps features 0 and 2.
 * const w = { wEnc: Float32Array.of(1, -1, 2), bEnc: new Float32Array(3), bDec: new Float32Array(1) };
 * const { idx, val } = encodeTopK(kernels, Float32Array.of(1), w, 2);
 * deepEqual([...idx, ...val], [0, 2, 1, 2]);
 * ```
 */
export function encodeTopK(
  kernels: CpuEngineKernels,
  x: Float32Array,
  w: HostEncoder,
  k: number,
): { idx: Int32Array; val: Float32Array } {
  const d = w.bDec.length, width = w.bEnc.length, n = x.length / d;
  if (!Number.isInteger(n) || w.wEnc.length !== d * width || !(k >= 1 && k <= width)) {
    throw new RangeError(
      `Cannot encode ${x.length} values with a ${d} × ${width} encoder keeping ${k}: shapes ` +
        `disagree or k is outside [1, ${width}]`,
    );
  }
  const xc = new Float32Array(n * d), chunk = encoderRows(width);
  const slots = kernels.sae_max_threads(), pre = new Float32Array(slots * chunk * width);
  const idx = new Int32Array(n * k), val = new Float32Array(n * k);
  kernels.sae_center(x, w.bDec, n, d, xc);
  kernels.sae_encode(xc, n, d, w.wEnc, width, width, w.bEnc, k, chunk, slots, pre, idx, val);
  return { idx, val };
}

// Copies the SAE set's variables into the flat parameter array.
async function copyParams(saes: SaeSet, layout: ParamLayout, flat: Float32Array): Promise<void> {
  for (const s of layout.slots) {
    flat.set((await saes.params.get(s.name)!.data()) as Float32Array, s.offset);
  }
}

// A JSAE pair's state: the MLP's weights copied once (the model is frozen), factor buffers.
async function pairState(
  pair: SaePair,
  mlp: MlpWeights,
  hooks: HookState[],
  rows: number,
  blocks: number,
): Promise<PairState> {
  const [up, down] = [pair.up, pair.down].map((hook) => {
    const h = hooks.find((s) => s.view.hook === hook);
    if (h === undefined) throw new RangeError(`Cannot train pair ${hook}: no SAE there`);
    return h;
  });
  const m = mlp.wFc.shape[1];
  const k = up!.view.k;
  return {
    up: up!,
    down: down!,
    m,
    wFc: Float32Array.from(await mlp.wFc.data()),
    bFc: Float32Array.from(await mlp.bFc.data()),
    wProj: Float32Array.from(await mlp.wProj.data()),
    a: new Float32Array(up!.view.width * m),
    bt: new Float32Array(down!.view.width * m),
    da: new Float32Array(up!.view.width * m),
    dbt: new Float32Array(down!.view.width * m),
    g: new Float32Array(Math.min(rows, JACOBIAN_ROWS) * m),
    dj: new Float32Array(Math.min(rows, JACOBIAN_ROWS) * k * k),
    sums: new Float32Array(blocks),
  };
}

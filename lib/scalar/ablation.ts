/**
 * SCALAR steps 2–3 (SPEC §5; reference-details §5.4–5.6): the subcircuit of the top-n edges of one
 * SAE pair, and the ablation curve y(n) = mean KL between the model's next-token distribution and
 * the subcircuit's, with a seeded bootstrap CI per point.
 *
 * The subcircuit (zero ablation, per downstream feature): for every downstream feature j with at
 * least one kept edge, U_j = its kept upstream features; z_U = the clean upstream features z0 with
 * every feature outside U_j zeroed at all positions; x̂ = up.decode(z_U); y = segment(x̂); j's value
 * is its encoder PRE-activation (y − b_dec)·W_enc[:, j] + b_enc[j], without ReLU. Features without a
 * kept edge are 0 (not their bias-only value). Then the downstream SAE's TopK on the assembled
 * vector, still without ReLU (exactly k kept per token, ties to the lower index; a negative value
 * survives when fewer than k are ≥ 0), the downstream decoder, and the rest of the model.
 *
 * Work sharing ({@link Subcircuit}): features whose U_j agree on the upstream features that are ever
 * active in z0 (on the evaluated prompts) get identical z_U, so they share one segment pass, and
 * distinct groups are stacked along the batch dimension, `batchSequences` sequences per pass; where
 * the segment has no attention (`mlp`, `mlp-block`) sharing goes down to single tokens, since there
 * only U_j ∩ (features active at that token) matters. Counts are processed in increasing order and
 * only what changed since the previous count is recomputed. The passes' rows are decoded in C
 * (`subcircuit.c`) and, for MLP and block pairs, run through the segment on the host
 * (`MlpVjp.run`, `BlockVjp.run`: OpenBLAS, native loops, the fused attention kernel) where those
 * build; tfjs otherwise (`native: false` asks for it). None of this changes a value beyond float
 * rounding of differently shaped matrix products.
 *
 * Dimensions: P prompts, T positions (n_ctx), N = P·T tokens, D activation width, F_up / F_down
 * features, V vocabulary.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { loadNative, type NativeLibrary } from "../backend/native.ts";
import { type GPT, LOGITS, skipInputs } from "../model/gpt.ts";
import type { SaeSet } from "../sae/architectures.ts";
import { isTokenwisePair, type SaePair } from "../sae/positions.ts";
import { decode, encode, preActivations, type SaeWeights } from "../sae/sae.ts";
import { createRng } from "../util/rng.ts";
import { blockOfPair, BlockVjp } from "./block_vjp.ts";
import { mlpSegmentOfPair, MlpVjp } from "./mlp_vjp.ts";
import type { CurvePoint } from "./score.ts";

/** The part of the model between a pair's hooks: `[B, T, D_up]` → `[B, T, D_down]`. */
export type Segment = (x: tf.Tensor3D) => tf.Tensor3D;

/** Added to the probabilities inside the KL's logarithms, as the reference does. */
export const KL_EPS = 1e-8;

/**
 * The segment of a model between a pair's hooks: `model.run` from the upstream hook (given x̂) to
 * the downstream hook. At `mlp-block` x̂ feeds both ln_2 and the skip connection (as in the
 * reference's subcircuit); at `block` the whole block runs over the sequence.
 *
 * @param model The frozen model.
 * @param pair The SAE pair.
 * @returns The segment function (creates tensors; call it inside `tf.tidy`).
 */
export function modelSegment(model: GPT, pair: SaePair): Segment {
  return (x) =>
    model.run({ start: { hook: pair.up, value: x }, stopAt: pair.down }).output as tf.Tensor3D;
}

/** An `mlp-block` pair's upstream hook; the downstream one is the same block's `hook_resid_post`. */
const MLP_BLOCK_UP = /^blocks\.(\d+)\.hook_resid_mid$/;

/**
 * The segment of the full circuit (both SAEs spliced), as the reference builds it. At `mlp-block`
 * the reference's splice replaces only ln_2's input, so the skip connection keeps the clean
 * activation: y = x + MLP(ln_2(x̂)) (reference-details §5.5; its subcircuit, {@link modelSegment},
 * feeds x̂ to both). Elsewhere it is {@link modelSegment}. It matters beyond the full-circuit curve:
 * where the last edge count is E_tot (TopK pairs: 2^18 = 512 · 512), the model curve's last point is
 * the full circuit's.
 *
 * @param model The frozen model.
 * @param pair The SAE pair.
 * @param clean The clean activation at the pair's upstream hook, shaped as the x̂ the segment gets.
 * @returns The segment function (creates tensors; call it inside `tf.tidy`).
 *
 * @example At `mlp-block` the skip carries the clean activation
 * ```ts
 * import { ok } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { GPT } from "../model/gpt.ts";
 * import { fullCircuitSegment, modelSegment } from "./ablation.ts";
 * const shape = { nLayer: 1, nHead: 1, dModel: 4, dMlp: 8, nCtx: 2, vocabSize: 5, lnEps: 1e-5 };
 * const model = GPT.init(shape, 0);
 * const pair = { up: "blocks.0.hook_resid_mid", down: "blocks.0.hook_resid_post", layer: 0 };
 * const x = tf.ones([1, 2, 4]) as tf.Tensor3D, xHat = tf.zeros([1, 2, 4]) as tf.Tensor3D;
 * // y − x̂ + x: the spliced segment's output with the skip moved from x̂ to x.
 * const diff = tf.tidy(() =>
 *   fullCircuitSegment(model, pair, x)(xHat).sub(modelSegment(model, pair)(xHat).add(x)).abs().max()
 * );
 * ok((await diff.data())[0]! < 1e-6);
 * ```
 */
export function fullCircuitSegment(model: GPT, pair: SaePair, clean: tf.Tensor3D): Segment {
  const block = MLP_BLOCK_UP.exec(pair.up)?.[1];
  if (block === undefined || pair.down !== `blocks.${block}.hook_resid_post`) {
    return modelSegment(model, pair);
  }
  const mlpOut = `blocks.${block}.hook_mlp_out`;
  return (xHat) =>
    model.run({ start: { hook: pair.up, value: xHat }, stopAt: mlpOut }).output.add(
      clean,
    ) as tf.Tensor3D;
}

/**
 * The downstream SAE's TopK as the subcircuit applies it: per row, keep the k largest values
 * WITHOUT ReLU (negative values can be kept), exactly k per row, equal values resolved towards the
 * lower column; zero the rest. (The project's `topkRelu` applies ReLU first, so it is not used here.)
 *
 * @param values Row-major `[rows, cols]`.
 * @param rows Row count.
 * @param cols Column count.
 * @param k Values kept per row (all when k ≥ cols).
 * @returns A new `[rows, cols]` array.
 * @throws {RangeError} If the sizes do not match or k is not a non-negative integer.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { topkNoRelu } from "./ablation.ts";
 * deepEqual([...topkNoRelu(new Float32Array([-1, 0, -3, 0]), 1, 4, 2)], [0, 0, 0, 0]);
 * deepEqual([...topkNoRelu(new Float32Array([-1, -2, -3]), 1, 3, 2)], [-1, -2, 0]);
 * ```
 */
export function topkNoRelu(
  values: Float32Array,
  rows: number,
  cols: number,
  k: number,
): Float32Array {
  if (values.length !== rows * cols || !Number.isInteger(k) || k < 0) {
    throw new RangeError(
      `Cannot select the top ${k} of ${values.length} values as [${rows}, ${cols}]: sizes differ`,
    );
  }
  if (k >= cols) return values.slice();
  const out = new Float32Array(rows * cols);
  const bestVal = new Float64Array(k), bestIdx = new Int32Array(k);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let count = 0;
    for (let c = 0; c < cols; c++) {
      const v = values[base + c]!;
      // Strictly greater: an equal value later in the row never displaces an earlier one.
      if (count === k && !(v > bestVal[k - 1]!)) continue;
      let p = count < k ? count++ : k - 1;
      while (p > 0 && v > bestVal[p - 1]!) {
        bestVal[p] = bestVal[p - 1]!;
        bestIdx[p] = bestIdx[p - 1]!;
        p--;
      }
      bestVal[p] = v;
      bestIdx[p] = c;
    }
    for (let i = 0; i < k; i++) out[base + bestIdx[i]!] = bestVal[i]!;
  }
  return out;
}

/**
 * Per-position KL(p ‖ q) = Σᵥ pᵥ (ln(pᵥ + 1e-8) − ln(qᵥ + 1e-8)) from log-softmax outputs, in
 * float64 (the reference's formula, ε included). Values below 0 are set to 0: they come from float
 * rounding and, at the 1e-8 scale, from the ε itself, never from a real divergence.
 *
 * @param logP Log-probabilities of the reference distribution, row-major `[N, V]`.
 * @param logQ Log-probabilities of the compared distribution, `[N, V]`.
 * @param vocab V.
 * @returns `[N]` KLs, each ≥ 0; exactly 0 where the rows are equal.
 * @throws {RangeError} If the sizes do not match.
 */
export function klPerToken(logP: Float32Array, logQ: Float32Array, vocab: number): Float64Array {
  const n = logP.length / vocab;
  if (!Number.isInteger(n) || logQ.length !== logP.length) {
    throw new RangeError(
      `Cannot compute KL of ${logP.length} and ${logQ.length} log-probabilities with vocabulary ` +
        `${vocab}: need two [N, ${vocab}] arrays`,
    );
  }
  const out = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    let s = 0;
    for (let v = t * vocab; v < (t + 1) * vocab; v++) {
      const p = Math.exp(logP[v]!);
      s += p * (Math.log(p + KL_EPS) - Math.log(Math.exp(logQ[v]!) + KL_EPS));
    }
    out[t] = s > 0 ? s : 0;
  }
  return out;
}

/** A mean with its bootstrap confidence interval. */
export interface MeanCi {
  /** The plain mean of the values. */
  mean: number;
  /** Lower end: resample mean number ⌊0.025 · R⌋ in ascending order. */
  low: number;
  /** Upper end: resample mean number ⌊0.975 · R⌋. */
  high: number;
}

/**
 * The 95% bootstrap CI of a mean, as the reference computes it (R resamples of all N values with
 * replacement, resample means sorted, elements ⌊0.025R⌋ and ⌊0.975R⌋), but seeded: the draws come
 * from `createRng(seed)` alone, so the same values and seed give the same interval, and two series
 * bootstrapped with one seed share their resamples. The resamples' indices are drawn once, so that
 * an ablation curve's 70 intervals (35 points × 2 curves) each cost a gather, not R · N draws.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { Bootstrap } from "./ablation.ts";
 * const boot = new Bootstrap(4, 1000, 7);
 * const ci = boot.meanCi([1, 2, 3, 4]);
 * equal(ci.mean, 2.5);
 * equal(ci.low <= 2.5 && 2.5 <= ci.high, true);
 * ```
 */
export class Bootstrap {
  readonly #n: number;
  readonly #resamples: number;
  readonly #indices: Uint16Array | Int32Array;

  /**
   * Draws the resamples.
   *
   * @param n N, the values per series.
   * @param resamples R.
   * @param seed Seed of the resampling.
   * @throws {RangeError} If N or R is not a positive integer.
   */
  constructor(n: number, resamples: number, seed: number) {
    if (!(Number.isSafeInteger(n) && n > 0 && Number.isSafeInteger(resamples) && resamples > 0)) {
      throw new RangeError(
        `Cannot bootstrap ${n} values with ${resamples} resamples: need values and a positive count`,
      );
    }
    this.#n = n;
    this.#resamples = resamples;
    this.#indices = n <= 65_536 ? new Uint16Array(resamples * n) : new Int32Array(resamples * n);
    const rng = createRng(seed);
    for (let i = 0; i < resamples * n; i++) this.#indices[i] = rng.int(n);
  }

  /**
   * The mean of N values with its interval.
   *
   * @param values The per-token values, N of them.
   * @returns Mean, low and high.
   * @throws {RangeError} If there are not N values.
   */
  meanCi(values: ArrayLike<number>): MeanCi {
    const n = this.#n, R = this.#resamples, at = this.#indices;
    if (values.length !== n) {
      throw new RangeError(
        `Cannot bootstrap ${values.length} values: the resamples draw from ${n}`,
      );
    }
    let total = 0;
    for (let i = 0; i < n; i++) total += values[i]!;
    const means = new Float64Array(R);
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let i = r * n; i < (r + 1) * n; i++) s += values[at[i]!]!;
      means[r] = s / n;
    }
    means.sort();
    return {
      mean: total / n,
      low: means[Math.floor(0.025 * R)]!,
      high: means[Math.floor(0.975 * R)]!,
    };
  }
}

/**
 * The mean of some values with a 95% bootstrap CI ({@link Bootstrap}, for one series).
 *
 * @param values The per-token values.
 * @param resamples R.
 * @param seed Seed of the resampling.
 * @returns Mean, low and high.
 * @throws {RangeError} If there are no values or R is not a positive integer.
 *
 * @example
 * ```ts
 * import { bootstrapMeanCi } from "./ablation.ts";
 * const ci = bootstrapMeanCi([1, 2, 3, 4], 1000, 7);
 * if (!(ci.low <= ci.mean && ci.mean <= ci.high) || ci.mean !== 2.5) throw new Error();
 * ```
 */
export function bootstrapMeanCi(
  values: ArrayLike<number>,
  resamples: number,
  seed: number,
): MeanCi {
  return new Bootstrap(values.length, resamples, seed).meanCi(values);
}

/** What a subcircuit is built from. */
export interface SubcircuitOptions {
  /** The upstream SAE's weights; called inside `tf.tidy`, so it may return fresh slices. */
  up: () => SaeWeights;
  /** The downstream SAE's weights; called inside `tf.tidy`. */
  down: () => SaeWeights;
  /** Features the downstream SAE keeps per token. */
  k: number;
  /** The model part between the pair's hooks. */
  segment: Segment;
  /**
   * The same segment on the host: x̂ of `sequences` sequences `[sequences · T][D_up]` →
   * `[sequences · T][D_down]` (a tokenwise pass: T = 1). `ablationCurve` gives an MLP pair's
   * (`mlp_vjp.ts`) and a block pair's (`block_vjp.ts`). @default `segment`, in tfjs
   */
  hostSegment?: (xHat: Float32Array, sequences: number) => Float32Array;
  /**
   * Decode the tokenwise passes' rows in the native loop (`subcircuit.c`) where it builds; false
   * keeps the TypeScript loop it is tested against. @default true
   */
  nativeDecode?: boolean;
  /** Clean upstream features `[P, T, F_up]` (read once; the caller keeps and disposes it). */
  z0: tf.Tensor3D;
  /**
   * Sequences per segment pass, i.e. batchSequences · T positions (memory vs speed; values do not
   * depend on it beyond rounding).
   */
  batchSequences: number;
  /**
   * Whether the segment maps each position on its own (no attention: `mlp`, `mlp-block`), which
   * allows sharing per token (see {@link Subcircuit}). Never set it for a segment that mixes
   * positions. @default false
   */
  tokenwise?: boolean;
}

/** A group of downstream features whose kept upstream sets agree on the active features. */
interface Group {
  /** The upstream features the group keeps (those ever active in z0). */
  upstream: number[];
  /** The downstream features that share it. */
  features: number[];
}

/**
 * One segment pass: positions to run (`xHat`, the masked upstream features decoded on the host,
 * `[R, D_up]`, shaped for the segment as `shape`), and where each needed pre-activation goes:
 * `gather[e]` is a flat index into the pass's `[R, F_down]` pre-activations, `target[e]` one into
 * the assembled matrix. Rows hold few nonzero features (≤ k for TopK), so decoding them on the host
 * costs a few multiply-adds per dimension where a dense `[R, F_up]` product would cost F_up.
 */
interface Pass {
  xHat: Float32Array;
  shape: [number, number];
  gather: number[];
  target: number[];
}

/** The downstream SAE's encoder on the host (see `Subcircuit.#downEncoder`). */
interface Encoder {
  wT: Float32Array;
  bEnc: Float32Array;
  bDec: Float32Array;
}

/** Most nonzero upstream features per token for per-token sharing (one bit each in a Uint32). */
const MAX_TOKENWISE_ACTIVE = 32;

/**
 * A pass's rows as lists of the z0 nonzeros each keeps (indices into the row-compressed z0): keep
 * them in order, then close the row with `next`.
 */
class KeptRows {
  /** Rows closed so far. */
  count = 0;
  /** Row r's nonzeros are kept[start[r]] … kept[start[r + 1] − 1]. */
  readonly start: Int32Array;
  kept: Int32Array;
  #size = 0;

  /** Room for `rows` rows and, to begin with, `nonzeros` kept nonzeros in all. */
  constructor(rows: number, nonzeros: number) {
    this.start = new Int32Array(rows + 1);
    this.kept = new Int32Array(Math.max(16, nonzeros));
  }

  /** Keeps nonzero q in the current row. */
  keep(q: number): void {
    if (this.#size === this.kept.length) {
      const grown = new Int32Array(2 * this.kept.length);
      grown.set(this.kept);
      this.kept = grown;
    }
    this.kept[this.#size++] = q;
  }

  /** Closes the current row. */
  next(): void {
    this.start[++this.count] = this.#size;
  }
}

/** The loop of `subcircuit.c`, as `Deno.dlopen` symbols. */
const DECODE_SYMBOLS = {
  sc_decode_rows: {
    parameters: [
      ...["buffer", "i32", "i32", "buffer", "buffer", "buffer", "buffer", "i32", "buffer"],
    ],
    result: "void",
  },
} as const;

type DecodeKernel = NativeLibrary<typeof DECODE_SYMBOLS>["symbols"]["sc_decode_rows"];

/** The native decode where it builds (a compiler is present), else undefined. */
async function decodeKernel(): Promise<DecodeKernel | undefined> {
  try {
    const source = new URL("./subcircuit.c", import.meta.url);
    return (await loadNative(source, DECODE_SYMBOLS)).symbols.sc_decode_rows;
  } catch {
    return undefined; // the TypeScript loop decodes instead, with the same values
  }
}

/**
 * The subcircuit of a growing set of kept edges, assembled incrementally: add edges with
 * {@link Subcircuit.addEdges}, read the downstream features with {@link Subcircuit.features}. It
 * holds no tensors between calls. Two ways of sharing work, with the same values:
 *
 * - `grouped` (any segment): downstream features whose kept sets U_j agree on the upstream features
 *   active anywhere in z0 share one segment pass over all prompts; a feature whose key did not change
 *   since the last call keeps its values.
 * - `tokenwise` (segments without attention): at token t only the active features A_t of z0 matter,
 *   so j's value there depends on U_j ∩ A_t alone. Each distinct (t, U_j ∩ A_t) runs once, only where
 *   the intersection changed since the last call; an empty intersection gives the same value at every
 *   token (the segment of up's b_dec), computed once. Needs ≤ 32 active features per token (TopK
 *   SAEs have ≤ k); otherwise `grouped` is used.
 */
export class Subcircuit {
  /** Upstream feature count. */
  readonly fUp: number;
  /** Downstream feature count. */
  readonly fDown: number;
  /** Prompts P. */
  readonly prompts: number;
  /** Positions per prompt T. */
  readonly positions: number;
  /** How work is shared (see the class comment). */
  readonly mode: "grouped" | "tokenwise";
  /** Positions the last {@link Subcircuit.features} call ran through the segment. */
  lastPositions = 0;
  /** Distinct kept sets the last call ran (`grouped` mode; 0 in `tokenwise` mode). */
  lastGroups = 0;
  /** Downstream features with a kept edge at the last call. */
  lastConnected = 0;
  readonly #o: SubcircuitOptions;
  readonly #dims: { dUp: number; dDown: number };
  /** z0 on the host, compressed by rows (one row per token): row t's nonzeros are cols/vals[rowPtr[t] ..]. */
  readonly #rowPtr: Int32Array;
  readonly #cols: Int32Array;
  readonly #vals: Float32Array;
  readonly #active: Uint8Array;
  /** Assembled pre-activations `[N, F_down]`; 0 for features without a kept edge. */
  readonly #pre: Float32Array;
  readonly #connected: Uint8Array;
  // grouped mode
  readonly #upstreamOf: number[][] = [];
  readonly #keyOf: (string | undefined)[] = [];
  readonly #dirty = new Set<number>();
  // tokenwise mode: per (t, j) the bits of A_t kept for j; per upstream feature its (token, bit)s.
  #bits = new Uint32Array(0);
  /** Marks (t, j) entries already listed in #changed during the current epoch (1..255, then reset). */
  #stamp = new Uint8Array(0);
  #epoch = 1;
  #changed: number[] = [];
  #newlyConnected: number[] = [];
  #featPtr = new Int32Array(0);
  #featTok = new Int32Array(0);
  #featBit = new Uint32Array(0);
  #emptyPre: Float32Array | undefined;
  #decoder: Float32Array | undefined;
  #encoder: Encoder | undefined;
  readonly #decodeKernel: DecodeKernel | undefined;

  private constructor(
    o: SubcircuitOptions,
    dense: Float32Array,
    kernel: DecodeKernel | undefined,
  ) {
    this.#decodeKernel = kernel;
    const [P, T, fUp] = o.z0.shape;
    const dims = tf.tidy(() => {
      const up = o.up(), down = o.down();
      return {
        fUp: up.wDec.shape[0],
        dUp: up.wDec.shape[1],
        dDown: down.wEnc.shape[0],
        fDown: down.wEnc.shape[1],
      };
    });
    if (dims.fUp !== fUp) {
      throw new RangeError(
        `Cannot build a subcircuit from z0 [${o.z0.shape}]: the upstream SAE has ${dims.fUp} features`,
      );
    }
    if (!Number.isSafeInteger(o.batchSequences) || o.batchSequences <= 0) {
      throw new RangeError(`Cannot use batch size "${o.batchSequences}": not a positive integer`);
    }
    this.#o = o;
    this.fUp = fUp;
    this.fDown = dims.fDown;
    this.prompts = P;
    this.positions = T;
    this.#dims = dims;
    const N = P * T;
    this.#pre = new Float32Array(N * dims.fDown);
    this.#connected = new Uint8Array(dims.fDown);

    this.#rowPtr = new Int32Array(N + 1);
    this.#active = new Uint8Array(fUp);
    let nnz = 0, widest = 0;
    for (let t = 0; t < N; t++) {
      let row = 0;
      for (let i = t * fUp; i < (t + 1) * fUp; i++) if (dense[i] !== 0) row++;
      nnz += row;
      widest = Math.max(widest, row);
      this.#rowPtr[t + 1] = nnz;
    }
    this.#cols = new Int32Array(nnz);
    this.#vals = new Float32Array(nnz);
    for (let t = 0, q = 0; t < N; t++) {
      for (let i = 0; i < fUp; i++) {
        const v = dense[t * fUp + i]!;
        if (v === 0) continue;
        this.#cols[q] = i;
        this.#vals[q++] = v;
        this.#active[i] = 1;
      }
    }

    this.mode = o.tokenwise && widest <= MAX_TOKENWISE_ACTIVE ? "tokenwise" : "grouped";
    if (this.mode === "grouped") {
      this.#upstreamOf = Array.from({ length: dims.fDown }, () => []);
      this.#keyOf = new Array(dims.fDown).fill(undefined);
      return;
    }
    this.#bits = new Uint32Array(N * dims.fDown);
    this.#stamp = new Uint8Array(N * dims.fDown);
    // Invert the rows: for each upstream feature, the tokens where it is active and its bit there.
    const perFeature = new Int32Array(fUp + 1);
    for (let q = 0; q < nnz; q++) perFeature[this.#cols[q]! + 1]!++;
    for (let i = 0; i < fUp; i++) perFeature[i + 1]! += perFeature[i]!;
    this.#featPtr = perFeature.slice();
    this.#featTok = new Int32Array(nnz);
    this.#featBit = new Uint32Array(nnz);
    const fill = perFeature.slice();
    for (let t = 0; t < N; t++) {
      for (let q = this.#rowPtr[t]!; q < this.#rowPtr[t + 1]!; q++) {
        const at = fill[this.#cols[q]!]!++;
        this.#featTok[at] = t;
        this.#featBit[at] = 2 ** (q - this.#rowPtr[t]!);
      }
    }
  }

  /**
   * Creates an empty subcircuit (no edges kept).
   *
   * @param o The pair's SAEs, segment and clean upstream features.
   * @returns The subcircuit.
   * @throws {RangeError} If z0 does not fit the upstream SAE or the batch size is not positive.
   */
  static async create(o: SubcircuitOptions): Promise<Subcircuit> {
    const kernel = o.nativeDecode !== false ? await decodeKernel() : undefined;
    return new Subcircuit(o, (await o.z0.data()) as Float32Array, kernel);
  }

  /**
   * Keeps more edges.
   *
   * @param edges Flat edge indices i · F_down + j (an edge kept twice changes nothing).
   * @throws {RangeError} For an index outside [0, F_up · F_down).
   */
  addEdges(edges: ArrayLike<number>): void {
    const eTot = this.fUp * this.fDown, fDown = this.fDown;
    for (let e = 0; e < edges.length; e++) {
      const edge = edges[e]!;
      if (!Number.isInteger(edge) || edge < 0 || edge >= eTot) {
        throw new RangeError(`Cannot keep edge ${edge}: the pair has ${eTot} edges`);
      }
      const j = edge % fDown, i = (edge - j) / fDown;
      if (this.mode === "grouped") {
        this.#upstreamOf[j]!.push(i);
        this.#dirty.add(j);
        continue;
      }
      if (!this.#connected[j]) {
        this.#connected[j] = 1;
        this.#newlyConnected.push(j);
      }
      for (let q = this.#featPtr[i]!; q < this.#featPtr[i + 1]!; q++) {
        const at = this.#featTok[q]! * fDown + j;
        this.#bits[at]! |= this.#featBit[q]!;
        if (this.#stamp[at] !== this.#epoch) {
          this.#stamp[at] = this.#epoch;
          this.#changed.push(at);
        }
      }
    }
  }

  /**
   * The subcircuit's downstream features for the edges kept so far: assembled pre-activations, then
   * TopK without ReLU.
   *
   * @returns Row-major `[P · T, F_down]` (prompt-major, then position).
   */
  async features(): Promise<Float32Array> {
    const decoder = await this.#upDecoder();
    const encoder = await this.#downEncoder();
    if (this.mode === "tokenwise") await this.#connectNew();
    const passes = this.mode === "grouped"
      ? this.#groupedPasses(decoder)
      : this.#tokenwisePasses(decoder);
    this.lastPositions = 0;
    // Keep one pass in flight while the previous one is read (overlaps device and host work).
    let pending: { pass: Pass; values: tf.Tensor | Float32Array } | undefined;
    for (const pass of passes) {
      this.lastPositions += pass.shape[0] * pass.shape[1];
      const next = { pass, values: this.#run(pass) };
      if (pending) await this.#store(pending.pass, pending.values, encoder);
      pending = next;
    }
    if (pending) await this.#store(pending.pass, pending.values, encoder);
    this.lastConnected = this.#connected.reduce((s, c) => s + c, 0);
    return topkNoRelu(this.#pre, this.prompts * this.positions, this.fDown, this.#o.k);
  }

  /** Grouped mode: the passes for the features whose active kept set changed. */
  *#groupedPasses(decoder: Float32Array): Generator<Pass> {
    const groups = new Map<string, Group>();
    for (const j of this.#dirty) {
      const upstream = [...new Set(this.#upstreamOf[j]!.filter((i) => this.#active[i]))]
        .sort((a, b) => a - b);
      const key = upstream.join(",");
      this.#connected[j] = 1;
      if (key === this.#keyOf[j]) continue;
      let group = groups.get(key);
      if (group === undefined) groups.set(key, group = { upstream, features: [] });
      group.features.push(j);
      this.#keyOf[j] = key;
    }
    this.#dirty.clear();
    this.lastGroups = groups.size;

    const { fUp, fDown, positions: T, prompts: P } = this;
    const per = this.#o.batchSequences;
    const items = [...groups.values()].flatMap((g) =>
      Array.from({ length: P }, (_, p) => ({ g, p }))
    );
    const dUp = this.#dims.dUp;
    for (let first = 0; first < items.length; first += per) {
      const chunk = items.slice(first, first + per);
      const xHat = new Float32Array(chunk.length * T * dUp);
      const gather: number[] = [], target: number[] = [];
      let mask = new Uint8Array(0), maskOf: Group | undefined;
      // Each row: a token of z0 with the nonzeros its group keeps.
      const rows = new KeptRows(chunk.length * T, chunk.length * T * 4);
      chunk.forEach(({ g, p }, c) => {
        if (maskOf !== g) {
          mask = new Uint8Array(fUp);
          for (const i of g.upstream) mask[i] = 1;
          maskOf = g;
        }
        for (let t = 0; t < T; t++) {
          const row = p * T + t;
          for (let q = this.#rowPtr[row]!; q < this.#rowPtr[row + 1]!; q++) {
            if (mask[this.#cols[q]!] === 1) rows.keep(q);
          }
          rows.next();
          for (const j of g.features) {
            gather.push((c * T + t) * fDown + j);
            target.push(row * fDown + j);
          }
        }
      });
      this.#decodeRows(decoder, rows, xHat);
      yield { xHat, shape: [chunk.length, T], gather, target };
    }
  }

  /**
   * x̂ of pass rows into `into` (`[rows][D_up]`): up's b_dec plus value · W_dec row for each
   * nonzero of z0 the row keeps, in the order kept. In `subcircuit.c` where it built, else here.
   */
  #decodeRows(decoder: Float32Array, rows: KeptRows, into: Float32Array): void {
    const dUp = this.#dims.dUp, { start, kept, count } = rows;
    if (this.#decodeKernel) {
      const lists = [this.#cols, this.#vals, start, kept] as const;
      this.#decodeKernel(decoder, this.fUp, dUp, ...lists, count, into);
      return;
    }
    for (let r = 0; r < count; r++) {
      const out = r * dUp;
      into.set(decoder.subarray(this.fUp * dUp), out);
      for (let e = start[r]!; e < start[r + 1]!; e++) {
        const q = kept[e]!, v = this.#vals[q]!, w = this.#cols[q]! * dUp;
        for (let d = 0; d < dUp; d++) into[out + d]! += v * decoder[w + d]!;
      }
    }
  }

  /** Tokenwise mode: features connected since the last call start at the empty intersection. */
  async #connectNew(): Promise<void> {
    const N = this.prompts * this.positions, fDown = this.fDown;
    if (this.#newlyConnected.length === 0) return;
    // A feature's first edge: every token starts at the empty intersection, the same value everywhere.
    const empty = this.#emptyPre ??= await this.#emptyPreActivations();
    for (const j of this.#newlyConnected) {
      for (let t = 0; t < N; t++) this.#pre[t * fDown + j] = empty[j]!;
    }
    this.#newlyConnected = [];
  }

  /**
   * Down's encoder on the host, read once: W_encᵀ `[F_down, D_down]` (one row per feature), b_enc
   * and b_dec. A pass needs only a few pre-activations per position (its rows' changed features),
   * so they are dot products here rather than a dense `[R, D] × [D, F_down]` product on the device,
   * which cost as much as the segment itself.
   */
  async #downEncoder(): Promise<Encoder> {
    if (this.#encoder === undefined) {
      const parts = tf.tidy(() => {
        const down = this.#o.down();
        return [down.wEnc.transpose(), down.bEnc.clone(), down.bDec.clone()];
      });
      const [wT, bEnc, bDec] = await Promise.all(parts.map((t) => t.data())) as Float32Array[];
      tf.dispose(parts);
      this.#encoder = { wT: wT!, bEnc: bEnc!, bDec: bDec! };
    }
    return this.#encoder;
  }

  /** Up's decoder on the host, `[F_up + 1, D_up]` with b_dec last; read once. */
  async #upDecoder(): Promise<Float32Array> {
    if (this.#decoder === undefined) {
      const w = tf.tidy(() => {
        const up = this.#o.up();
        return tf.concat([up.wDec, up.bDec.reshape([1, -1])], 0);
      });
      this.#decoder = (await w.data()) as Float32Array;
      w.dispose();
    }
    return this.#decoder;
  }

  /**
   * Tokenwise mode: the passes for the (token, active kept set) pairs that changed, each decoded on
   * the host when it is reached (x̂ = b_dec + the row's kept terms, in the CSR order of z0).
   */
  *#tokenwisePasses(decoder: Float32Array): Generator<Pass> {
    const fDown = this.fDown;
    const dUp = this.#dims.dUp;
    this.lastGroups = 0;
    const rowsPerPass = this.#o.batchSequences * this.positions;
    const rowTok: number[] = [], rowBits: number[] = [];
    const passes: Pick<Pass, "gather" | "target">[] = [];
    // One row per distinct (t, bits): the changed entries bucketed by token (counting sort), then
    // deduplicated per token by their bits (small integers, a fast Map key).
    const changed = this.#changed, N = this.prompts * this.positions;
    const start = new Int32Array(N + 1);
    for (const at of changed) start[Math.floor(at / fDown) + 1]!++;
    for (let t = 0; t < N; t++) start[t + 1]! += start[t]!;
    const byToken = new Int32Array(changed.length), fill = start.slice(0, N);
    for (const at of changed) byToken[fill[Math.floor(at / fDown)]!++] = at;
    const rowOf = new Map<number, number>();
    for (let t = 0; t < N; t++) {
      rowOf.clear();
      for (let e = start[t]!; e < start[t + 1]!; e++) {
        const at = byToken[e]!, bits = this.#bits[at]!;
        let r = rowOf.get(bits);
        if (r === undefined) {
          rowOf.set(bits, r = rowTok.length);
          rowTok.push(t);
          rowBits.push(bits);
          if (r % rowsPerPass === 0) passes.push({ gather: [], target: [] });
        }
        const pass = passes[Math.floor(r / rowsPerPass)]!;
        pass.gather.push((r % rowsPerPass) * fDown + (at - t * fDown));
        pass.target.push(at);
      }
    }
    this.#changed = [];
    if (++this.#epoch === 256) {
      this.#stamp.fill(0);
      this.#epoch = 1;
    }
    for (const [c, pass] of passes.entries()) {
      const first = c * rowsPerPass, rows = Math.min(rowsPerPass, rowTok.length - first);
      const kept = new KeptRows(rows, rows * MAX_TOKENWISE_ACTIVE);
      for (let r = first; r < first + rows; r++) {
        const from = this.#rowPtr[rowTok[r]!]!, to = this.#rowPtr[rowTok[r]! + 1]!;
        for (let q = from; q < to; q++) if (((rowBits[r]! >>> (q - from)) & 1) === 1) kept.keep(q);
        kept.next();
      }
      const xHat = new Float32Array(rows * dUp);
      this.#decodeRows(decoder, kept, xHat);
      yield { ...pass, xHat, shape: [rows, 1] };
    }
  }

  /** The pre-activations of segment(up's b_dec) at one position: `[F_down]`. */
  async #emptyPreActivations(): Promise<Float32Array> {
    const pre = tf.tidy(() => {
      const up = this.#o.up(), down = this.#o.down();
      const xHat = decode(up, tf.zeros([1, this.fUp])).reshape([1, 1, this.#dims.dUp]);
      const y = this.#o.segment(xHat as tf.Tensor3D).reshape([1, this.#dims.dDown]);
      return preActivations(down, y as tf.Tensor2D);
    });
    const data = (await pre.data()) as Float32Array;
    pre.dispose();
    return data;
  }

  /** Starts one pass: the segment's output, `[R, D_down]` (on the host where it runs there). */
  #run(pass: Pass): tf.Tensor | Float32Array {
    const [B, T] = pass.shape;
    if (this.#o.hostSegment) return this.#o.hostSegment(pass.xHat, B);
    return tf.tidy(() => {
      const xHat = tf.tensor3d(pass.xHat, [B, T, this.#dims.dUp]);
      return this.#o.segment(xHat).reshape([B * T, this.#dims.dDown]);
    });
  }

  /** Reads one pass's output and puts its needed pre-activations, (y − b_dec)·W_enc[:, j] + b_enc[j]. */
  async #store(pass: Pass, values: tf.Tensor | Float32Array, encoder: Encoder): Promise<void> {
    let y: Float32Array;
    if (values instanceof Float32Array) y = values;
    else {
      y = (await values.data()) as Float32Array;
      values.dispose();
    }
    const { dDown: D } = this.#dims, fDown = this.fDown, { wT, bEnc, bDec } = encoder;
    for (let r = 0; r < y.length / D; r++) {
      for (let d = 0; d < D; d++) y[r * D + d]! -= bDec[d]!;
    }
    for (let e = 0; e < pass.target.length; e++) {
      const g = pass.gather[e]!, j = g % fDown, row = (g - j) / fDown * D, w = j * D;
      let acc = 0;
      for (let d = 0; d < D; d++) acc += y[row + d]! * wT[w + d]!;
      this.#pre[pass.target[e]!] = acc + bEnc[j]!;
    }
  }
}

/** v.encode(segment(u.decode(z0))): the full circuit's downstream features, as a tensor. */
function fullCircuitTensor(
  o: SubcircuitOptions,
  z0: tf.Tensor3D,
  segment: Segment = o.segment,
): tf.Tensor2D {
  return tf.tidy(() => {
    const up = o.up(), down = o.down();
    const [B, T, fUp] = z0.shape;
    const xHat = decode(up, z0.reshape([B * T, fUp])).reshape([B, T, up.wDec.shape[1]]);
    const y = segment(xHat as tf.Tensor3D);
    return encode(down, y.reshape([B * T, y.shape[2]]), o.k);
  });
}

/**
 * The subcircuit's downstream features for one kept edge set (see the module comment). When every
 * one of the F_up · F_down edges is kept, the full circuit's features v.encode(segment(u.decode(z0)))
 * are returned unchanged (ReLU included), as the reference does at n = E_tot (`ablationCurve`
 * uses {@link fullCircuitSegment} there instead, which needs the clean activations).
 *
 * @param o The pair's SAEs, segment, clean upstream features and the kept edges (flat indices).
 * @returns Row-major `[P · T, F_down]`.
 * @throws {RangeError} For an edge index out of range or sizes that do not fit.
 *
 * @example Nothing kept: every downstream feature is 0
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { subcircuitFeatures } from "./ablation.ts";
 * const w = {
 *   wEnc: tf.eye(2) as tf.Tensor2D, bEnc: tf.ones([2]) as tf.Tensor1D,
 *   wDec: tf.eye(2) as tf.Tensor2D, bDec: tf.zeros([2]) as tf.Tensor1D,
 * };
 * const z0 = tf.ones([1, 3, 2]) as tf.Tensor3D;
 * const f = await subcircuitFeatures({
 *   up: () => w, down: () => w, k: 1, segment: (x) => x, z0, batchSequences: 1,
 *   kept: new Int32Array(0),
 * });
 * if (f.some((v) => v !== 0)) throw new Error();
 * tf.dispose([z0, ...Object.values(w)]);
 * ```
 */
export async function subcircuitFeatures(
  o: SubcircuitOptions & { kept: ArrayLike<number> },
): Promise<Float32Array> {
  const sub = await Subcircuit.create(o);
  const eTot = sub.fUp * sub.fDown;
  sub.addEdges(o.kept);
  if (new Set(Array.from(o.kept)).size === eTot) {
    const z1 = fullCircuitTensor(o, o.z0);
    const data = (await z1.data()) as Float32Array;
    z1.dispose();
    return data;
  }
  return await sub.features();
}

/**
 * A pair's segment on the host, OpenBLAS and native loops: an MLP pair's (`mlp_vjp.ts`) or a
 * block pair's (`block_vjp.ts`, the fused attention kernel per sequence); undefined for other
 * pairs or where the loops do not open (tfjs runs the passes).
 */
async function hostSegment(
  model: GPT,
  pair: SaePair,
): Promise<((xHat: Float32Array, sequences: number) => Float32Array) | undefined> {
  const mlp = mlpSegmentOfPair(pair), block = blockOfPair(pair);
  if (mlp !== undefined) {
    const vjp = await MlpVjp.open(model, mlp);
    if (!("error" in vjp)) return (xHat) => vjp.run(xHat);
  } else if (block !== undefined) {
    const vjp = await BlockVjp.open(model, block);
    if (!("error" in vjp)) return (xHat, sequences) => vjp.run(xHat, sequences);
  }
  return undefined;
}

/** Inputs of {@link ablationCurve}. */
export interface AblationCurveOptions {
  /** The frozen model. */
  model: GPT;
  /** The run's SAEs (the pair's two must be among them). */
  saes: SaeSet;
  /** The pair to measure. */
  pair: SaePair;
  /** Edge order (`rankEdges`): flat indices, the edge kept first at position 0. */
  order: Int32Array;
  /** Edge counts n, increasing, each ≤ E_tot (`edgeCounts`). */
  counts: readonly number[];
  /** The validation split. */
  tokens: Int32Array;
  /** Prompts: the first this many non-overlapping n_ctx-token windows of `tokens`. @default 50 */
  prompts?: number;
  /** Sequences per forward pass (memory vs speed; values do not depend on it beyond rounding). */
  batchSequences: number;
  /** The bootstrap of each point's CI: R resamples (default 1,000), drawn from the seed. */
  bootstrap: { resamples?: number; seed: number };
  /**
   * Share work per token ({@link Subcircuit}); only for segments without attention.
   * @default isTokenwisePair(pair)
   */
  tokenwise?: boolean;
  /**
   * Run the segment passes and the rows' decoding on the host where the native loops build (MLP
   * and block pairs); false keeps them in tfjs and TypeScript, the reference the tests hold the
   * native path to. @default true
   */
  native?: boolean;
  /** Where progress lines go. @default a line on stderr */
  log?: (line: string) => void;
}

/**
 * Measures one pair's ablation curve: for each edge count n, the mean over all prompt tokens of
 * KL(p_model ‖ p_n) and KL(p_fullcircuit ‖ p_n), each with a 95% bootstrap CI of the mean over the
 * per-token KLs (both from the same resamples). p_model is the unmodified model; the full circuit
 * splices both SAEs as the reference does: up's reconstruction of the clean activation →
 * {@link fullCircuitSegment} (at `mlp-block` the skip connection keeps the clean activation) →
 * v.encode → v.decode → the rest of the model. p_n is the subcircuit of the first n edges of
 * `order`; at n = E_tot the full-circuit features are used unchanged, so KL(full ‖ p_n) = 0 there
 * and KL(model ‖ p_n) is the full circuit's (for TopK pairs the last count 2^18 is E_tot).
 *
 * Counts are processed in increasing order; each adds its new edges to the previous subcircuit and
 * recomputes only the downstream features whose kept set changed.
 *
 * @param o The model, SAEs, pair, edge order, counts, tokens and sizes.
 * @returns One point per count, in increasing n.
 * @throws {RangeError} If the pair's hooks have no SAEs, the counts are not increasing positive
 * integers ≤ E_tot, the order is too short, or the tokens hold fewer than prompts · n_ctx.
 */
export async function ablationCurve(o: AblationCurveOptions): Promise<CurvePoint[]> {
  const { model, saes, pair, order, tokens, batchSequences } = o;
  const prompts = o.prompts ?? 50;
  const resamples = o.bootstrap.resamples ?? 1000;
  const log = o.log ?? ((line: string) => console.error(line));
  const { nCtx: T, vocabSize: V } = model.config;
  for (const hook of [pair.up, pair.down]) {
    if (!saes.hooks.includes(hook)) {
      throw new RangeError(`Cannot measure pair ${pair.up} → ${pair.down}: no SAE at "${hook}"`);
    }
  }
  const fUp = saes.width(pair.up), fDown = saes.width(pair.down), eTot = fUp * fDown;
  const counts = [...o.counts];
  counts.forEach((n, i) => {
    if (!Number.isSafeInteger(n) || n <= 0 || n > eTot || (i > 0 && n <= counts[i - 1]!)) {
      throw new RangeError(
        `Cannot measure edge counts [${counts}]: need increasing integers in [1, ${eTot}] ` +
          `(edgeCounts(${eTot}) gives the reference's list capped at E_tot)`,
      );
    }
  });
  const needed = Math.max(0, ...counts.filter((n) => n < eTot));
  if (order.length < needed) {
    throw new RangeError(`Cannot keep ${needed} edges: the edge order holds ${order.length}`);
  }
  if (!Number.isSafeInteger(prompts) || prompts <= 0 || tokens.length < prompts * T) {
    throw new RangeError(
      `Cannot read ${prompts} prompts of ${T} tokens from ${tokens.length} tokens: they need ` +
        `${prompts * T}`,
    );
  }
  if (!Number.isSafeInteger(batchSequences) || batchSequences <= 0) {
    throw new RangeError(`Cannot use batch size "${batchSequences}": not a positive integer`);
  }
  const tokenwise = o.tokenwise ?? isTokenwisePair(pair);
  if (tokenwise && !isTokenwisePair(pair)) {
    throw new RangeError(
      `Cannot share work per token for pair ${pair.up} → ${pair.down}: its segment mixes positions`,
    );
  }

  const N = prompts * T;
  const k = saes.k;
  const segment = modelSegment(model, pair);
  const parts: SubcircuitOptions = {
    up: () => saes.weights(pair.up),
    down: () => saes.weights(pair.down),
    k,
    segment,
    hostSegment: o.native === false ? undefined : await hostSegment(model, pair),
    nativeDecode: o.native !== false,
    z0: undefined as unknown as tf.Tensor3D, // set below
    batchSequences,
    tokenwise,
  };
  const ctxHooks = skipInputs(pair.down);
  const batches: { first: number; rows: number; context: Map<string, tf.Tensor> }[] = [];
  const z0Parts: tf.Tensor[] = [];
  let z0: tf.Tensor3D | undefined;
  try {
    // Clean pass per batch: z0, the clean skip activations for the rest of the model, and the
    // model's and the full circuit's log-probabilities (kept on the host for the float64 KL).
    const modelLogP = new Float32Array(N * V), fullLogP = new Float32Array(N * V);
    for (let first = 0; first < prompts; first += batchSequences) {
      const rows = Math.min(batchSequences, prompts - first);
      const out = tf.tidy(() => {
        const ids = tf.tensor2d(tokens.subarray(first * T, (first + rows) * T), [rows, T], "int32");
        const run = model.run({ tokens: ids, cache: [pair.up, ...ctxHooks] });
        const x = run.cache.get(pair.up)!;
        const z = encode(saes.weights(pair.up), x.reshape([rows * T, x.shape[2]!]), k)
          .reshape([rows, T, fUp]) as tf.Tensor3D;
        const context = ctxHooks.map((h) => run.cache.get(h)!);
        const z1 = fullCircuitTensor(parts, z, fullCircuitSegment(model, pair, x as tf.Tensor3D));
        const xHat = decode(saes.weights(pair.down), z1);
        const full = model.run({
          start: {
            hook: pair.down,
            value: xHat.reshape([rows, T, -1]),
            context: new Map(ctxHooks.map((h, i) => [h, context[i]!])),
          },
          stopAt: LOGITS,
        }).output;
        return {
          z,
          context,
          model: tf.logSoftmax(run.output.reshape([rows * T, V])),
          full: tf.logSoftmax(full.reshape([rows * T, V])),
        };
      });
      z0Parts.push(out.z);
      // (tf.tidy keeps tensors returned in arrays and objects, not in Maps: build the Map here.)
      batches.push({ first, rows, context: new Map(ctxHooks.map((h, i) => [h, out.context[i]!])) });
      modelLogP.set((await out.model.data()) as Float32Array, first * T * V);
      fullLogP.set((await out.full.data()) as Float32Array, first * T * V);
      tf.dispose([out.model, out.full]);
    }
    z0 = tf.concat(z0Parts, 0) as tf.Tensor3D;
    tf.dispose(z0Parts);
    z0Parts.length = 0;
    parts.z0 = z0;
    const sub = await Subcircuit.create(parts);
    log(
      `ablation curve ${pair.up} → ${pair.down}: ${fUp} x ${fDown} = ${eTot} edges, ` +
        `${counts.length} counts up to ${counts.at(-1)}, ${prompts} prompts x ${T} tokens, ` +
        `${sub.mode} sharing`,
    );

    /** The rest of the model from the downstream hook, for assembled downstream features. */
    const restLogP = async (features: Float32Array): Promise<Float32Array> => {
      const logP = new Float32Array(N * V);
      for (const b of batches) {
        const lp = tf.tidy(() => {
          const f = tf.tensor2d(
            features.subarray(b.first * T * fDown, (b.first + b.rows) * T * fDown),
            [b.rows * T, fDown],
          );
          const xHat = decode(saes.weights(pair.down), f).reshape([b.rows, T, -1]);
          const out = model.run({
            start: { hook: pair.down, value: xHat, context: b.context },
            stopAt: LOGITS,
          }).output;
          return tf.logSoftmax(out.reshape([b.rows * T, V]));
        });
        logP.set((await lp.data()) as Float32Array, b.first * T * V);
        lp.dispose();
      }
      return logP;
    };

    const curve: CurvePoint[] = [];
    const boot = new Bootstrap(N, resamples, o.bootstrap.seed);
    let kept = 0;
    for (const n of counts) {
      const started = performance.now();
      let logQ: Float32Array;
      let note: string;
      if (n >= eTot) {
        logQ = fullLogP;
        note = "full circuit";
      } else {
        sub.addEdges(order.subarray(kept, n));
        kept = n;
        logQ = await restLogP(await sub.features());
        note = `${sub.lastConnected} features connected, ${sub.lastPositions} positions through ` +
          `the segment (${sub.mode}${sub.mode === "grouped" ? `, ${sub.lastGroups} groups` : ""})`;
      }
      const m = boot.meanCi(klPerToken(modelLogP, logQ, V));
      const f = boot.meanCi(klPerToken(fullLogP, logQ, V));
      curve.push({
        n,
        klModel: m.mean,
        klModelLow: m.low,
        klModelHigh: m.high,
        klFull: f.mean,
        klFullLow: f.low,
        klFullHigh: f.high,
      });
      log(
        `  n=${n}: KL(model) ${m.mean.toPrecision(4)} [${m.low.toPrecision(4)}, ` +
          `${m.high.toPrecision(4)}], KL(full) ${f.mean.toPrecision(4)}; ${note}; ` +
          `${((performance.now() - started) / 1000).toFixed(1)}s`,
      );
    }
    return curve;
  } finally {
    tf.dispose(z0Parts);
    z0?.dispose();
    for (const b of batches) tf.dispose([...b.context.values()]);
  }
}

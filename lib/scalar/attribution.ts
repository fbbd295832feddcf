/**
 * SCALAR step 1 (SPEC §5; reference-details §5.2): edge scores of one adjacent SAE pair by
 * integrated gradients, exactly as the reference computes them, including its quirks.
 *
 * f(z) = down.encode(segment(up.decode(z))) per token, where encode = TopK(ReLU(pre-activation))
 * and the gradient flows only through the kept (positive) features. z0 = up.encode(clean
 * activation at `pair.up`). For α in linspace(0, 1, S) (both ends; S = 1 gives α = 0 only):
 *
 *   g_α[b,t',i] = ∂/∂z[b,t',i] of Σ_{b,t} f_j(z)[b,t], at z = α·z0 (not ∂/∂z0: no factor α)
 *   IG_j[b,t',i] = Σ_α g_α[b,t',i] · ‖z0[b,t',:]‖₂ / S
 *   score[i, j] = sqrt(Σ_{b,t'} IG_j[b,t',i]²)
 *
 * The step length ‖z0‖₂ / S is the reference's quirk: the L2 norm of the WHOLE upstream latent
 * vector at that token, the same for every i, instead of textbook IG's (z0_i − 0); latents that are
 * zero in z0 still receive attribution.
 *
 * The reference runs one backward pass per target feature j (F_down × S passes per batch);
 * {@link attributePairReference} does the same and is the oracle. {@link attributePair} gets the
 * same matrix from far fewer rows of work, using two facts:
 *
 * - Linearity: the cotangent at the segment's output for target j is mask_α[t,j] · W_enc_down[:,j]
 *   (the encoder is affine, TopK passes the gradient of kept features unchanged), and the gradient
 *   with respect to z is the gradient with respect to x̂ = up.decode(z) times W_dec_upᵀ. So the
 *   decode, the encoder and TopK run once per α (to find the masks), and only the segment is
 *   differentiated per target, with that cotangent, summed over α in x̂-space before the
 *   (linear) map to upstream features.
 * - Sparsity: the cotangent of target j vanishes where j is not kept. The work is therefore put in
 *   rows of (unit, target) pairs with a nonzero cotangent, stacked in the batch dimension of one
 *   backward pass: in `sequence` mode a unit is a whole sequence (any segment, needed for `block`,
 *   where attention carries t' to every later t), in `token` mode a single token (only for the
 *   per-token segments of `mlp` and `mlp-block`, run with T = 1): then there are at most k rows
 *   per token and α instead of F_down.
 * - Causality (`sequence` mode): a row's positions after its last nonzero cotangent neither get a
 *   gradient nor reach earlier positions, so the row runs only that far (in length buckets), and
 *   its gradient sums are stored only that far (rows of one target side by side).
 * - One forward per sequence (`block` pairs): every row of a sequence shares x̂_α, hence all the
 *   block's activations, and the block's backward is linear in the cotangent; so the block runs
 *   once per (sequence, α) and the rows' input gradients come from one batched backward
 *   (`block_vjp.ts`, OpenBLAS and native loops), where each row's cotangent, nonzero at a few
 *   positions, costs per entry rather than per position for everything but the keys' and
 *   values' spread.
 * - One forward per batch (`mlp` and `mlp-block` pairs in `token` mode): the segment acts on each
 *   token alone, so its forward over the batch's tokens at x̂_α serves every row, and the rows'
 *   input gradients are two products over all of them (`mlp_vjp.ts`); the clean pass runs on the
 *   host too (`mlp_clean_pass.ts`: the engine's encoders, one decode for every α).
 *   Autodiff of the segment (above) remains for the other pairs and layouts, and where the native
 *   loops cannot be built.
 * - Gram matrices: score[i, j]² = Σ_t (s_t · gx_j[t] · w_i)² = w_iᵀ C_j w_i with C_j = Σ_t s_t² ·
 *   gx_j[t] gx_j[t]ᵀ (D × D) and w_i row i of W_dec_up, so each row position costs 2·D² flops
 *   (one product per target) instead of the direct map to all F_up upstream features (2·D·F_up,
 *   then squares): 8× fewer at the toy widths. The direct map remains where F_down Gram
 *   matrices would not fit in `memoryBytes` (GPT-2 widths).
 *
 * On the toy `mlp-block` pair (512 × 512, k 10, 24 sequences per batch; wasm + OpenBLAS, 2 cores)
 * a batch takes ~0.25 s in `token` mode on the native path (5 steps; the whole pair, 576 sequences,
 * 6.0 s), ~1–1.5 s by autodiff in `token` mode, ~28 s in `sequence` mode and ~80 s in the
 * per-target loop (4 steps).
 *
 * The toy `block` pair (same SAEs, 5 steps, 576 sequences) has 1,003,320 rows over 89.1 M row
 * positions (`gradientTokens`). Autodiff of the segment re-ran the block's forward per row and
 * its backward at every row position: its floor, ~124k FLOPs per row position (`block_vjp.ts`),
 * is 11.1 TFLOP for the pair, and it took 18.4 min on a quiet machine. The batched block backward
 * does 0.68 TFLOP instead (0.36 in per-entry products, 0.24 in the rows' scatter and ln_1, 0.08
 * in 4,608 forwards, one per sequence, α and target chunk), the Gram matrices 0.21 TFLOP (25.3 M
 * stored positions). The whole pair took 36–96 s, the block backward 24–60 s of it (11–28
 * GFLOP/s), on the same 2 cores while a training run held them (nice 19 against −10); the bench
 * case `attribution_block` ran 13.6× faster than autodiff's, interleaved (medians of 7).
 *
 * Dimensions: B sequences per batch, T positions (n_ctx), N = B·T tokens, D activation width,
 * F_up / F_down features, S steps, k features kept per token.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { GPT } from "../model/gpt.ts";
import type { SaeSet } from "../sae/architectures.ts";
import { isTokenwisePair, type SaePair } from "../sae/positions.ts";
import { decode, encode } from "../sae/sae.ts";
import { blockOfPair, BlockVjp, type SparseCotangents } from "./block_vjp.ts";
import { type CleanPass, MlpCleanPass } from "./mlp_clean_pass.ts";
import { type MlpForward, mlpSegmentOfPair, MlpVjp } from "./mlp_vjp.ts";

/** How {@link attributePair} lays out its backward rows. */
export type AttributionMode = "token" | "sequence";

/** Inputs of {@link attributePair} and {@link attributePairReference}. */
export interface AttributionOptions {
  /** The frozen model. */
  model: GPT;
  /** The run's SAEs (the pair's two must be among them). */
  saes: SaeSet;
  /** The pair to score. */
  pair: SaePair;
  /** The validation split. */
  tokens: Int32Array;
  /**
   * Sequences: the first this many non-overlapping n_ctx-token windows of `tokens` (the
   * reference's 24 batches × 24 from the start of the validation split). @default 576
   */
  sequences?: number;
  /**
   * Sequences per batch (memory vs speed; values do not depend on it beyond rounding).
   * @default 24
   */
  batchSequences?: number;
  /** IG steps S: α = linspace(0, 1, S) (the paper 5, the neurips scripts 4). @default 5 */
  steps?: number;
  /**
   * Target features per chunk: rows of one chunk are accumulated over α on the host before they
   * are squared. @default all F_down in `token` mode; in `sequence` mode as many as keep the
   * chunk's accumulator (B · chunk · T · D floats) within `memoryBytes`
   */
  targetChunk?: number;
  /**
   * Rough budget for the tensors of one backward pass and for the chunk accumulator.
   * @default 256 MiB
   */
  memoryBytes?: number;
  /**
   * `token` (rows = (token, target); only for `mlp` and `mlp-block` pairs) or `sequence` (rows =
   * (sequence, target); any pair). @default "token" where the segment is per token, else "sequence"
   */
  mode?: AttributionMode;
  /** Where progress lines go. @default a line on stderr per batch */
  log?: (line: string) => void;
}

/** Edge scores of one pair. */
export interface Attribution {
  /** score[i, j] = sqrt(Σ IG_j[token, i]²), row-major `[F_up][F_down]`, all ≥ 0. */
  scores: Float32Array;
  /** F_up: rows of `scores`. */
  up: number;
  /** F_down: columns of `scores`. */
  down: number;
  /** Tokens the scores sum over (sequences · n_ctx). */
  tokens: number;
  /** Fraction of the F_up · F_down scores that are exactly 0 (they rank last, in seeded order). */
  zeroFraction: number;
  /** Downstream features whose column is all zero (never kept on these tokens at any α). */
  zeroColumns: number;
  /**
   * Backward work: the (unit, target) rows with a nonzero cotangent, summed over steps and batches
   * (the reference: its backward passes, batches × targets × steps).
   */
  gradientRows: number;
  /**
   * Token positions pushed through backward passes in total: rows × their lengths (under autodiff
   * rounded up to length buckets, in the block backward exact).
   */
  gradientTokens: number;
  /** Row layout used (`reference` for the per-target oracle). */
  mode: AttributionMode | "reference";
  /** Wall-clock seconds. */
  seconds: number;
}

/** Options of {@link attributePairReference}: {@link attributePair}'s plus a target subset. */
export interface ReferenceAttributionOptions
  extends Omit<AttributionOptions, "targetChunk" | "memoryBytes" | "mode"> {
  /**
   * Compute only these target columns (the others stay 0), e.g. to time the slow per-target loop
   * on a sample. @default every downstream feature
   */
  targets?: readonly number[];
}

const DEFAULT_MEMORY = 256 * 1024 * 1024;

/** α = linspace(0, 1, S) as torch computes it: [0] for S = 1, both ends otherwise. */
function alphas(steps: number): number[] {
  return Array.from({ length: steps }, (_, s) => steps === 1 ? 0 : s / (steps - 1));
}

/** Checks the shared options and resolves their defaults. */
function resolve(o: ReferenceAttributionOptions): {
  sequences: number;
  batchSequences: number;
  steps: number;
  fUp: number;
  fDown: number;
  log: (line: string) => void;
} {
  const { model, saes, pair, tokens } = o;
  const sequences = o.sequences ?? 576;
  const batchSequences = o.batchSequences ?? 24;
  const steps = o.steps ?? 5;
  const T = model.config.nCtx;
  for (const hook of [pair.up, pair.down]) {
    if (!saes.hooks.includes(hook)) {
      throw new RangeError(`Cannot attribute pair ${pair.up} → ${pair.down}: no SAE at "${hook}"`);
    }
  }
  for (
    const [name, v] of [["sequences", sequences], ["batchSequences", batchSequences], [
      "steps",
      steps,
    ]] as const
  ) {
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new RangeError(`Cannot attribute with ${name} = ${v}: not a positive integer`);
    }
  }
  if (tokens.length < sequences * T) {
    throw new RangeError(
      `Cannot read ${sequences} sequences of ${T} tokens from ${tokens.length} tokens: they need ` +
        `${sequences * T}`,
    );
  }
  return {
    sequences,
    batchSequences,
    steps,
    fUp: saes.width(pair.up),
    fDown: saes.width(pair.down),
    log: o.log ?? ((line: string) => console.error(line)),
  };
}

/** The model between a pair's hooks (no context needed for the three positions). */
function segmentOf(model: GPT, pair: SaePair): (x: tf.Tensor) => tf.Tensor {
  return (x) => model.run({ start: { hook: pair.up, value: x }, stopAt: pair.down }).output;
}

/** Square roots of the transposed accumulator, plus the zero statistics. */
function finish(
  sumSq: Float64Array,
  fUp: number,
  fDown: number,
): { scores: Float32Array; zeroFraction: number; zeroColumns: number } {
  const scores = new Float32Array(fUp * fDown);
  let zeros = 0, zeroColumns = 0;
  for (let j = 0; j < fDown; j++) {
    let columnZero = true;
    for (let i = 0; i < fUp; i++) {
      const s = Math.sqrt(sumSq[j * fUp + i]!);
      scores[i * fDown + j] = s;
      if (s === 0) zeros++;
      else columnZero = false;
    }
    if (columnZero) zeroColumns++;
  }
  return { scores, zeroFraction: zeros / (fUp * fDown), zeroColumns };
}

/**
 * The per-target oracle, exactly as the reference loops: for every batch, every target feature j
 * and every α, one forward pass of z ↦ down.encode(segment(up.decode(z))) at z = α·z0 and one
 * backward pass seeded with e_j at every (sequence, position) (the reference's
 * `y.backward(gradient=direction)`); the gradients times ‖z0‖₂/S are summed over α, squared and
 * summed over tokens. F_down × S backward passes per batch: slow, for tests and timing only.
 *
 * @param o Model, SAEs, pair, tokens and sizes; `targets` limits the columns computed.
 * @returns The scores (columns outside `targets` are 0).
 * @throws {RangeError} If the pair's hooks have no SAEs, a size is not a positive integer, the
 * tokens hold fewer than sequences · n_ctx, or a target is not a downstream feature.
 */
export async function attributePairReference(
  o: ReferenceAttributionOptions,
): Promise<Attribution> {
  const started = performance.now();
  const { model, saes, pair, tokens } = o;
  const { sequences, batchSequences, steps, fUp, fDown, log } = resolve(o);
  const targets = [...(o.targets ?? Array.from({ length: fDown }, (_, j) => j))];
  for (const j of targets) {
    if (!Number.isSafeInteger(j) || j < 0 || j >= fDown) {
      throw new RangeError(
        `Cannot attribute target ${j}: the downstream SAE has ${fDown} features`,
      );
    }
  }
  const T = model.config.nCtx, k = saes.k;
  const segment = segmentOf(model, pair);
  const sumSq = new Float64Array(fDown * fUp);
  for (let first = 0; first < sequences; first += batchSequences) {
    const B = Math.min(batchSequences, sequences - first), N = B * T;
    const { z0, stepLength } = tf.tidy(() => {
      const ids = tf.tensor2d(tokens.subarray(first * T, (first + B) * T), [B, T], "int32");
      const x = model.run({ tokens: ids, stopAt: pair.up }).output;
      const z0 = encode(saes.weights(pair.up), x.reshape([N, x.shape[2]!]), k);
      // The reference's step length: ‖z0 − base‖₂ over the WHOLE latent vector, / steps.
      return { z0, stepLength: z0.square().sum(1, true).sqrt().div(steps) };
    });
    const f = (z: tf.Tensor): tf.Tensor => {
      const xHat = decode(saes.weights(pair.up), z as tf.Tensor2D).reshape([B, T, -1]);
      const y = segment(xHat);
      return encode(saes.weights(pair.down), y.reshape([N, y.shape[2]!]) as tf.Tensor2D, k);
    };
    try {
      for (const j of targets) {
        const column = tf.tidy(() => {
          const direction = tf.oneHot(tf.fill([N], j, "int32"), fDown).toFloat();
          let integral: tf.Tensor = tf.zeros([N, fUp]);
          for (const alpha of alphas(steps)) {
            const g = tf.grad(f)(z0.mul(alpha), direction);
            integral = integral.add(g.mul(stepLength));
          }
          return integral.square().sum(0);
        });
        const values = (await column.data()) as Float32Array;
        column.dispose();
        for (let i = 0; i < fUp; i++) sumSq[j * fUp + i]! += values[i]!;
      }
    } finally {
      tf.dispose([z0, stepLength]);
    }
    log(`attribution (per-target reference) ${pair.up} → ${pair.down}: ${first + B}/${sequences}`);
  }
  const gradientRows = Math.ceil(sequences / batchSequences) * targets.length * steps;
  return {
    ...finish(sumSq, fUp, fDown),
    up: fUp,
    down: fDown,
    tokens: sequences * T,
    gradientRows,
    gradientTokens: sequences * T * targets.length * steps,
    mode: "reference",
    seconds: (performance.now() - started) / 1000,
  };
}

/**
 * One target chunk's gradients, grouped by target: target `targets[q]` owns positions
 * `start[q]` … `start[q + 1] − 1` of `gx` (`[positions][D]`), each Σ_α ∂/∂x̂ at one token of one
 * of its rows, to be multiplied by that token's step length ‖z0‖₂ / S. Only the positions that
 * got a gradient are stored ({@link compactRows}).
 */
interface TargetBlocks {
  /** The gradient sums, `[positions][D]`. */
  gx: Float32Array;
  /** Each position's step length ‖z0‖₂ / S. */
  scale: Float32Array;
  /** The chunk's targets (downstream features) that have rows. */
  targets: Int32Array;
  /** Position ranges per target, Q + 1 ascending values from 0. */
  start: Int32Array;
  /** Activation width. */
  D: number;
}

/**
 * Adds the scores' squares the direct way: IG = s · gx · W_dec_upᵀ per position, squared and
 * summed over each target's positions (`unsortedSegmentSum`), then added per target on the host
 * (float64). 2·D·F_up flops per position; used where the Gram matrices of
 * {@link accumulateGram} would not fit in memory (GPT-2 widths). At most `positionsPerSquare`
 * positions per pass; a target's positions may span passes.
 */
async function accumulateProjected(
  o: TargetBlocks,
  wDecUp: tf.Tensor,
  sumSq: Float64Array,
  positionsPerSquare: number,
): Promise<void> {
  const { gx, scale, targets, start, D } = o;
  const fUp = wDecUp.shape[0]!, Q = targets.length, P = start[Q]!;
  for (let p0 = 0, q0 = 0; p0 < P;) {
    const p1 = Math.min(P, p0 + positionsPerSquare);
    while (start[q0 + 1]! <= p0) q0++;
    // Each position's target, counted from q0.
    const segment = new Int32Array(p1 - p0);
    let q1 = q0;
    for (let p = p0; p < p1; p++) {
      while (start[q1 + 1]! <= p) q1++;
      segment[p - p0] = q1 - q0;
    }
    const sq = tf.tidy(() => {
      const g = tf.tensor2d(gx.subarray(p0 * D, p1 * D), [p1 - p0, D])
        .mul(tf.tensor2d(scale.subarray(p0, p1), [p1 - p0, 1]));
      const ig = tf.matMul(g, wDecUp, false, true);
      return tf.unsortedSegmentSum(ig.square(), tf.tensor1d(segment, "int32"), q1 - q0 + 1);
    });
    const values = (await sq.data()) as Float32Array;
    sq.dispose();
    for (let q = q0; q <= q1; q++) {
      const to = targets[q]! * fUp, from = (q - q0) * fUp;
      for (let i = 0; i < fUp; i++) sumSq[to + i]! += values[from + i]!;
    }
    p0 = p1;
  }
}

/**
 * Adds each target's Gram matrix C_j += Σ_positions s_p² · gx[p] gx[p]ᵀ (D × D, float64 on the
 * host; the products in float32). Since score[i, j]² = Σ_p (s_p · gx[p] · w_i)² = w_iᵀ C_j w_i
 * with w_i row i of W_dec_up, the scores follow from C at the end ({@link gramScores}): 2·D² flops
 * per position instead of the direct map's 2·D·F_up (8× fewer on the toy pairs) and no
 * [positions, F_up] intermediate. Targets go `memory` bytes of positions at a time, each read
 * where it lies.
 */
async function accumulateGram(o: TargetBlocks, gram: Float64Array, memory: number): Promise<void> {
  const { gx, scale, targets, start, D } = o;
  const budget = Math.max(1, Math.floor(memory / (8 * D)));
  for (let q0 = 0; q0 < targets.length;) {
    let q1 = q0 + 1;
    while (q1 < targets.length && start[q1 + 1]! - start[q0]! <= budget) q1++;
    const products = tf.tidy(() =>
      tf.stack(
        Array.from({ length: q1 - q0 }, (_, i) => {
          const p0 = start[q0 + i]!, p1 = start[q0 + i + 1]!;
          const m = tf.tensor2d(gx.subarray(p0 * D, p1 * D), [p1 - p0, D])
            .mul(tf.tensor2d(scale.subarray(p0, p1), [p1 - p0, 1]));
          return tf.matMul(m, m, true, false);
        }),
      )
    );
    const values = (await products.data()) as Float32Array;
    products.dispose();
    for (let q = q0; q < q1; q++) {
      const to = targets[q]! * D * D, from = (q - q0) * D * D;
      for (let e = 0; e < D * D; e++) gram[to + e]! += values[from + e]!;
    }
    q0 = q1;
  }
}

/**
 * score[i, j]² = w_iᵀ C_j w_i from the Gram matrices, into `sumSq` `[F_down][F_up]`: as
 * rowsum((W_dec_up · C_j) ∘ W_dec_up) in float32 products, a block of targets at a time (within
 * `memory` bytes). Rounding below 0 is clamped, and an all-zero C_j (a target never kept) gives
 * exact zeros.
 */
async function gramScores(
  gram: Float64Array,
  wDecUp: tf.Tensor2D,
  sumSq: Float64Array,
  memory: number,
): Promise<void> {
  const [fUp, D] = wDecUp.shape;
  const fDown = gram.length / (D * D);
  const block = Math.max(1, Math.floor(memory / (4 * 2 * fUp * D)));
  for (let j0 = 0; j0 < fDown; j0 += block) {
    const j1 = Math.min(fDown, j0 + block);
    const sq = tf.tidy(() => {
      const c = tf.tensor3d(Float32Array.from(gram.subarray(j0 * D * D, j1 * D * D)), [
        j1 - j0,
        D,
        D,
      ]);
      const wc = tf.matMul(wDecUp.expandDims(0), c); // [j, F_up, D], W broadcast
      return wc.mul(wDecUp).sum(2).relu();
    });
    sumSq.set((await sq.data()) as Float32Array, j0 * fUp);
    sq.dispose();
  }
}

/**
 * One target chunk's rows: every (unit, target in [j0, j1)) pair kept at some token of the unit at
 * some α.
 */
interface ChunkRows {
  /** Each row's unit (sequence or token). */
  rowUnit: number[];
  /** Each row's downstream target feature. */
  rowTarget: number[];
  /** Rows of unit u are unitStart[u] … unitStart[u + 1] − 1. */
  unitStart: Int32Array;
  /** Tokens per unit. */
  Tu: number;
  /** The chunk's targets, j0 … j1 − 1. */
  j0: number;
  j1: number;
}

/** The rows of targets j0 … j1 − 1 over `kept` (per α: [N][k] kept ids, −1 padded), by unit. */
function chunkRows(
  kept: readonly Int32Array[],
  U: number,
  Tu: number,
  k: number,
  fDown: number,
  j0: number,
  j1: number,
): ChunkRows {
  const rowUnit: number[] = [], rowTarget: number[] = [];
  const unitStart = new Int32Array(U + 1);
  const stamp = new Int32Array(fDown).fill(-1);
  for (let u = 0; u < U; u++) {
    unitStart[u] = rowUnit.length;
    for (const ids of kept) {
      for (let n = u * Tu; n < (u + 1) * Tu; n++) {
        for (let c = 0; c < k; c++) {
          const j = ids[n * k + c]!;
          if (j < 0) break;
          if (j < j0 || j >= j1 || stamp[j] === u) continue;
          stamp[j] = u;
          rowUnit.push(u);
          rowTarget.push(j);
        }
      }
    }
  }
  unitStart[U] = rowUnit.length;
  return { rowUnit, rowTarget, unitStart, Tu, j0, j1 };
}

/**
 * Calls `visit(r, t, j)` for every token where a chunk row's target is kept at one α (`kept`:
 * [N][k] ids, −1 padded): row r, position t in its unit. Kept and positive is exactly where
 * topkRelu passes the gradient on, and there the row's cotangent is W_enc_down[:, j].
 */
function forEachHot(
  kept: Int32Array,
  k: number,
  rows: ChunkRows,
  visit: (r: number, t: number, j: number) => void,
): void {
  const { rowTarget, unitStart, Tu, j0, j1 } = rows;
  const rowOf = new Int32Array(j1 - j0);
  for (let u = 0; u + 1 < unitStart.length; u++) {
    for (let r = unitStart[u]!; r < unitStart[u + 1]!; r++) rowOf[rowTarget[r]! - j0] = r;
    for (let n = u * Tu; n < (u + 1) * Tu; n++) {
      for (let c = 0; c < k; c++) {
        const j = kept[n * k + c]!;
        if (j < 0) break;
        if (j >= j0 && j < j1) visit(rowOf[j - j0]!, n - u * Tu, j);
      }
    }
  }
}

/**
 * A chunk's cotangent entries at one α, grouped by row: {@link SparseCotangents} without the
 * vectors, since an entry's vector is its target's row of W_enc_downᵀ.
 */
type Hot = Omit<SparseCotangents, "vectors">;

/** {@link forEachHot}'s entries, grouped by row. */
function entriesAt(kept: Int32Array, k: number, rows: ChunkRows): Hot {
  const R = rows.rowTarget.length, rowStart = new Int32Array(R + 1);
  forEachHot(kept, k, rows, (r) => rowStart[r + 1]!++);
  for (let r = 0; r < R; r++) rowStart[r + 1]! += rowStart[r]!;
  const E = rowStart[R]!, position = new Int32Array(E), vector = new Int32Array(E);
  const next = rowStart.slice(0, R);
  forEachHot(kept, k, rows, (r, t, j) => {
    position[next[r]!] = t;
    vector[next[r]!++] = j;
  });
  return { rowStart, position, vector };
}

/** Per row, its last entry's position + 1 (0 for a row without entries). */
function hotLengths(hot: Hot): Int32Array {
  const R = hot.rowStart.length - 1, length = new Int32Array(R);
  for (let r = 0; r < R; r++) {
    for (let e = hot.rowStart[r]!; e < hot.rowStart[r + 1]!; e++) {
      length[r] = Math.max(length[r]!, hot.position[e]! + 1);
    }
  }
  return length;
}

/**
 * Where a chunk's rows sit in its gradient buffer: grouped by target (rows of one target side by
 * side, in unit order), each row only as long as its longest α's (its last nonzero cotangent + 1:
 * by causality no later position gets a gradient).
 *
 * @param rows The chunk's rows.
 * @param lengths Per α, each row's length ({@link hotLengths}).
 * @param stepLength ‖z0‖₂ / S per token of the batch.
 * @param D Activation width.
 * @param store A previous chunk's buffer: `gx` is a zeroed view of it when it is large enough.
 */
function compactRows(
  rows: ChunkRows,
  lengths: readonly Int32Array[],
  stepLength: Float32Array,
  D: number,
  store: Float32Array,
): { rowLength: Int32Array; rowOffset: Int32Array; blocks: TargetBlocks } {
  const { rowUnit, rowTarget, Tu } = rows;
  const R = rowTarget.length, rowLength = new Int32Array(R), rowOffset = new Int32Array(R);
  for (const length of lengths) length.forEach((n, r) => rowLength[r] = Math.max(rowLength[r]!, n));
  const order = Array.from({ length: R }, (_, r) => r).sort((a, b) =>
    rowTarget[a]! - rowTarget[b]!
  );
  const targets: number[] = [], start: number[] = [];
  let positions = 0;
  for (const r of order) {
    if (targets.at(-1) !== rowTarget[r]) {
      targets.push(rowTarget[r]!);
      start.push(positions);
    }
    rowOffset[r] = positions * D;
    positions += rowLength[r]!;
  }
  start.push(positions);
  if (positions * D >= 2 ** 31) {
    throw new RangeError(`Cannot hold ${positions} gradient positions of ${D} in one chunk`);
  }
  const scale = new Float32Array(positions);
  rowOffset.forEach((offset, r) => {
    const from = rowUnit[r]! * Tu;
    scale.set(stepLength.subarray(from, from + rowLength[r]!), offset / D);
  });
  const n = positions * D;
  const blocks = {
    gx: n <= store.length ? store.subarray(0, n).fill(0) : new Float32Array(n),
    scale,
    targets: Int32Array.from(targets),
    start: Int32Array.from(start),
    D,
  };
  return { rowLength, rowOffset, blocks };
}

/** What one α's backward passes read and where they add: see {@link segmentPasses}. */
interface PassInputs {
  /** The chunk's entries at this α. */
  hot: Hot;
  /** Each row's last entry position + 1 at this α ({@link hotLengths}). */
  length: Int32Array;
  /** x̂_α of the batch, `[N][D]`. */
  xHat: Float32Array;
  /** The chunk's gradient sums, added to: row r's position t at rowOffset[r] + t·D. */
  gx: Float32Array;
  rowOffset: Int32Array;
  /** Each row's stored positions (its longest α's length). */
  rowLength: Int32Array;
  /** Each row's unit. */
  rowUnit: readonly number[];
  /** Tokens per unit. */
  Tu: number;
  /** Activation width. */
  D: number;
}

/**
 * One α's rows by tfjs autodiff of the segment: each row on its own copy of its unit's first L
 * positions of x̂_α (causal attention: positions after a row's last nonzero cotangent neither get
 * a gradient nor reach earlier ones), rows of one rounded length stacked in the batch dimension,
 * as many per pass as `memory` allows. The cotangent at an entry is W_enc_down[:, j], a row of
 * `wEncDownT`.
 *
 * @returns The positions pushed through (rows × their rounded lengths).
 */
async function segmentPasses(
  segment: (x: tf.Tensor) => tf.Tensor,
  memory: number,
  floatsPerToken: (L: number) => number,
  wEncDownT: Float32Array,
  at: PassInputs,
): Promise<number> {
  const { hot, length, xHat, gx, rowOffset, rowLength, rowUnit, Tu, D } = at;
  // Row lengths are rounded up to multiples of this (sequence mode), n_ctx / 8 at most.
  const lengthBucket = Math.max(1, Math.ceil(Tu / 8));
  const byLength = new Map<number, number[]>();
  length.forEach((n, r) => {
    if (n === 0) return;
    const L = Math.min(Tu, Math.ceil(n / lengthBucket) * lengthBucket);
    (byLength.get(L) ?? byLength.set(L, []).get(L)!).push(r);
  });
  let tokens = 0;
  for (const [L, members] of byLength) {
    tokens += members.length * L;
    const perPass = Math.max(1, Math.floor(memory / (4 * floatsPerToken(L) * L)));
    for (let m0 = 0; m0 < members.length; m0 += perPass) {
      const part = members.slice(m0, m0 + perPass), rows = part.length;
      // Gathered on the host: each row's first L positions of x̂_α and its cotangent.
      const xRows = new Float32Array(rows * L * D), dyRows = new Float32Array(rows * L * D);
      part.forEach((r, p) => {
        const u = rowUnit[r]!;
        xRows.set(xHat.subarray(u * Tu * D, (u * Tu + L) * D), p * L * D);
        for (let e = hot.rowStart[r]!; e < hot.rowStart[r + 1]!; e++) {
          const j = hot.vector[e]!;
          dyRows.set(wEncDownT.subarray(j * D, (j + 1) * D), (p * L + hot.position[e]!) * D);
        }
      });
      const g = tf.tidy(() =>
        tf.grad(segment)(tf.tensor3d(xRows, [rows, L, D]), tf.tensor3d(dyRows, [rows, L, D]))
      );
      const values = (await g.data()) as Float32Array;
      g.dispose();
      // Positions past the row's stored length got no gradient (causality).
      part.forEach((r, p) => {
        const to = rowOffset[r]!, from = p * L * D, n = Math.min(L, rowLength[r]!) * D;
        for (let e = 0; e < n; e++) gx[to + e]! += values[from + e]!;
      });
    }
  }
  return tokens;
}

/**
 * One α's rows of a `block` pair by the batched block backward: per unit (sequence) one forward
 * of the block on x̂_α, then all its rows' input gradients at once, added into `gx` (see
 * `block_vjp.ts`); the cotangent vectors are the rows of `wEncDownT`.
 *
 * @returns The positions the rows' gradients cover (rows × their exact lengths).
 */
function blockPasses(
  vjp: BlockVjp,
  unitStart: Int32Array,
  wEncDownT: Float32Array,
  at: PassInputs,
): number {
  const { hot, length, xHat, gx, rowOffset, Tu, D } = at;
  let tokens = 0;
  for (let u = 0; u + 1 < unitStart.length; u++) {
    const r0 = unitStart[u]!, r1 = unitStart[u + 1]!;
    const e0 = hot.rowStart[r0]!, e1 = hot.rowStart[r1]!;
    if (e1 === e0) continue;
    const f = vjp.forward(xHat.subarray(u * Tu * D, (u + 1) * Tu * D));
    const c = {
      rowStart: hot.rowStart.slice(r0, r1 + 1).map((e) => e - e0),
      position: hot.position.subarray(e0, e1),
      vector: hot.vector.subarray(e0, e1),
      vectors: wEncDownT,
    };
    vjp.accumulate(f, c, gx, rowOffset.subarray(r0, r1));
    for (let r = r0; r < r1; r++) tokens += length[r]!;
  }
  return tokens;
}

/**
 * One α's rows of a per-token pair by the MLP's batched backward (`mlp_vjp.ts`): every entry of
 * every row at once against `f`, the segment's forward over the batch's N tokens at x̂_α; the
 * cotangent vectors are the rows of `wEncDownT`.
 *
 * @returns The positions the rows' gradients cover (rows × their exact lengths).
 */
function mlpPasses(vjp: MlpVjp, f: MlpForward, wEncDownT: Float32Array, at: PassInputs): number {
  const { hot, length, gx, rowOffset, rowUnit, Tu, D } = at;
  const R = length.length, E = hot.rowStart[R]!;
  const position = new Int32Array(E), outOffset = new Int32Array(E);
  let tokens = 0;
  for (let r = 0; r < R; r++) {
    tokens += length[r]!;
    for (let e = hot.rowStart[r]!; e < hot.rowStart[r + 1]!; e++) {
      position[e] = rowUnit[r]! * Tu + hot.position[e]!;
      outOffset[e] = rowOffset[r]! + hot.position[e]! * D;
    }
  }
  vjp.accumulate(f, { position, vector: hot.vector, vectors: wEncDownT }, gx, outOffset);
  return tokens;
}

/** A pair's native segment work: the block backward, or the MLP's clean pass and backward. */
type Native =
  | { kind: "block"; vjp: BlockVjp }
  | { kind: "mlp"; vjp: MlpVjp; clean: MlpCleanPass };

/**
 * The native work of a pair's segment where one applies and its loops and OpenBLAS open: the
 * batched block backward for a `block` pair in `sequence` mode; the host clean pass and the MLP's
 * backward for an `mlp` or `mlp-block` pair in `token` mode. Undefined otherwise: tfjs (autodiff)
 * then runs, and `log` says why where native loops would not open. A per-token pair in `sequence`
 * mode stays on autodiff: the layout the tests hold the native path to.
 */
async function nativeSegment(
  o: AttributionOptions,
  mode: AttributionMode,
  memory: number,
  log: (line: string) => void,
): Promise<Native | undefined> {
  const block = mode === "sequence" ? blockOfPair(o.pair) : undefined;
  const mlp = mode === "token" ? mlpSegmentOfPair(o.pair) : undefined;
  let why: string;
  if (block !== undefined) {
    const vjp = await BlockVjp.open(o.model, block, memory);
    if (!("error" in vjp)) return { kind: "block", vjp };
    why = vjp.error;
  } else if (mlp !== undefined) {
    const vjp = await MlpVjp.open(o.model, mlp, memory);
    try {
      if ("error" in vjp) throw new Error(vjp.error);
      return { kind: "mlp", vjp, clean: await MlpCleanPass.open(o.saes, o.pair, vjp) };
    } catch (e) {
      why = (e as Error).message;
    }
  } else return undefined;
  log(`attribution ${o.pair.up} → ${o.pair.down}: segment by tfjs autodiff (${why})`);
  return undefined;
}

/** The clean activations at the pair's upstream hook of sequences first … first + B − 1, `[N][D]`. */
function upstreamTensor(o: AttributionOptions, first: number, B: number): tf.Tensor2D {
  const T = o.model.config.nCtx, D = o.model.config.dModel;
  const ids = tf.tensor2d(o.tokens.subarray(first * T, (first + B) * T), [B, T], "int32");
  return o.model.run({ tokens: ids, stopAt: o.pair.up }).output.reshape([B * T, D]);
}

/** {@link upstreamTensor}'s values on the host. */
async function upstreamActivations(
  o: AttributionOptions,
  first: number,
  B: number,
): Promise<Float32Array> {
  const x = tf.tidy(() => upstreamTensor(o, first, B));
  const values = (await x.data()) as Float32Array;
  x.dispose();
  return values;
}

/**
 * One batch's clean pass: per token the reference's IG step length ‖z0‖₂ / S, and per α the decoded
 * point x̂_α = (α·z0)·W_dec + b_dec and the downstream SAE's kept and positive features (the masks
 * through which topkRelu passes the gradient on), as `[N][k]` ids padded with −1.
 */
async function cleanPass(
  o: AttributionOptions,
  segment: (x: tf.Tensor) => tf.Tensor,
  as: number[],
  first: number,
  B: number,
  fDown: number,
): Promise<CleanPass> {
  const { model, saes, pair } = o;
  const { nCtx: T, dModel: D } = model.config;
  const k = saes.k, N = B * T;
  const clean = tf.tidy(() => {
    const z0 = encode(saes.weights(pair.up), upstreamTensor(o, first, B), k);
    const xHats = as.map((a) => decode(saes.weights(pair.up), z0.mul(a)));
    const features = xHats.map((xHat) => {
      const y = segment(xHat.reshape([B, T, D]));
      return encode(saes.weights(pair.down), y.reshape([N, D]), k);
    });
    // The reference's step length ‖z0‖₂ / S per token (see the module documentation).
    return { stepLength: z0.square().sum(1).sqrt().div(as.length), xHats, features };
  });
  try {
    const stepLength = (await clean.stepLength.data()) as Float32Array;
    const xHats: Float32Array[] = [];
    for (const t of clean.xHats) xHats.push((await t.data()) as Float32Array);
    const kept: Int32Array[] = [];
    for (const t of clean.features) {
      const f = (await t.data()) as Float32Array;
      const ids = new Int32Array(N * k).fill(-1);
      for (let n = 0; n < N; n++) {
        let c = 0;
        for (let j = 0; j < fDown && c < k; j++) if (f[n * fDown + j]! > 0) ids[n * k + c++] = j;
      }
      kept.push(ids);
    }
    return { stepLength, xHats, kept };
  } finally {
    tf.dispose([clean.stepLength, ...clean.xHats, ...clean.features]);
  }
}

/**
 * Scores every edge of one SAE pair by the reference's integrated gradients (see the module
 * documentation), batched: per batch and α one forward pass finds the kept downstream features,
 * then the segment is differentiated once for all (unit, target) rows with a nonzero cotangent,
 * stacked in the batch dimension (a `block` pair's by the batched block backward). Equal to
 * {@link attributePairReference} up to float rounding.
 *
 * @param o Model, SAEs, pair, validation tokens and sizes.
 * @returns The scores and statistics.
 * @throws {RangeError} If the pair's hooks have no SAEs, a size is not a positive integer, the
 * tokens hold fewer than sequences · n_ctx, or `token` mode is asked for a pair whose segment
 * mixes positions.
 */
export async function attributePair(o: AttributionOptions): Promise<Attribution> {
  const started = performance.now();
  const { model, saes, pair } = o;
  const { sequences, batchSequences, steps, fUp, fDown, log } = resolve(o);
  const tokenwise = isTokenwisePair(pair);
  const mode = o.mode ?? (tokenwise ? "token" : "sequence");
  if (mode === "token" && !tokenwise) {
    throw new RangeError(
      `Cannot attribute pair ${pair.up} → ${pair.down} in "token" mode: its segment mixes ` +
        `positions (attention); use "sequence"`,
    );
  }
  const memory = o.memoryBytes ?? DEFAULT_MEMORY;
  if (!(memory > 0)) throw new RangeError(`Cannot attribute within ${memory} bytes: not positive`);
  const { nCtx: T, dModel: D, dMlp, nHead } = model.config;
  const k = saes.k;
  const Tu = mode === "token" ? 1 : T; // tokens per unit
  const chunk = o.targetChunk ??
    (mode === "token"
      ? fDown
      : Math.max(1, Math.min(fDown, Math.floor(memory / (4 * batchSequences * T * D)))));
  if (!Number.isSafeInteger(chunk) || chunk <= 0) {
    throw new RangeError(`Cannot attribute with targetChunk = ${chunk}: not a positive integer`);
  }
  // Peak floats per token of one backward pass through a segment on rows of length L, measured
  // with tf.profile on the toy model (wasm, unfused GELU: ~10.9k floats per token at mlp-block,
  // ~18.7k in a whole block at L = 128) and rounded up: the kept activations, their gradients
  // and attention's L scores per head.
  const floatsPerToken = (L: number) => 32 * D + 40 * dMlp + (tokenwise ? 0 : 16 * nHead * L);
  const positionsPerSquare = Math.max(1, Math.floor(memory / (4 * 3 * fUp)));
  // Per target, the Gram matrix of its scaled gradients (see accumulateGram), when they fit.
  const gram = 8 * fDown * D * D <= memory ? new Float64Array(fDown * D * D) : undefined;
  const segment = segmentOf(model, pair);
  const native = await nativeSegment(o, mode, memory, log);
  const as = alphas(steps);
  const sumSq = new Float64Array(fDown * fUp); // transposed: [j][i]
  let gradientRows = 0, gradientTokens = 0;
  // The chunks' gradient buffer, reused: zeroing warm memory is cheaper than faulting in fresh.
  let gxStore: Float32Array = new Float32Array(0);

  // Weights reused by every pass: clones (or new tensors), never the SAEs' own variables.
  const fixed = tf.tidy(() => ({
    wDecUp: tf.clone(saes.weights(pair.up).wDec), // [F_up, D]
    wEncDownT: saes.weights(pair.down).wEnc.transpose(), // [F_down, D]
  }));
  try {
    const wEncDownT = (await fixed.wEncDownT.data()) as Float32Array;
    for (let first = 0; first < sequences; first += batchSequences) {
      const B = Math.min(batchSequences, sequences - first), N = B * T, U = N / Tu;
      const batchStarted = performance.now();
      const clean: CleanPass & { forwards?: MlpForward[] } = native?.kind === "mlp"
        ? native.clean.run(await upstreamActivations(o, first, B), as)
        : await cleanPass(o, segment, as, first, B, fDown);
      const { stepLength, xHats, kept } = clean;

      for (let j0 = 0; j0 < fDown; j0 += chunk) {
        const layout = chunkRows(kept, U, Tu, k, fDown, j0, Math.min(fDown, j0 + chunk));
        const { rowUnit, unitStart } = layout;
        const hots = kept.map((ids) => entriesAt(ids, k, layout));
        const lengths = hots.map(hotLengths);
        const { rowLength, rowOffset, blocks } = compactRows(
          layout,
          lengths,
          stepLength,
          D,
          gxStore,
        );
        gxStore = blocks.gx.length > gxStore.length ? blocks.gx : gxStore;
        for (let s = 0; s < steps; s++) {
          gradientRows += lengths[s]!.filter((n) => n > 0).length;
          const hot = hots[s]!, length = lengths[s]!, gx = blocks.gx;
          const at = { hot, length, xHat: xHats[s]!, gx, rowOffset, rowLength, rowUnit, Tu, D };
          if (native?.kind === "block") {
            gradientTokens += blockPasses(native.vjp, unitStart, wEncDownT, at);
          } else if (native?.kind === "mlp") {
            gradientTokens += mlpPasses(native.vjp, clean.forwards![s]!, wEncDownT, at);
          } else {
            gradientTokens += await segmentPasses(segment, memory, floatsPerToken, wEncDownT, at);
          }
        }
        if (gram) await accumulateGram(blocks, gram, memory);
        else await accumulateProjected(blocks, fixed.wDecUp, sumSq, positionsPerSquare);
      }
      log(
        `attribution ${pair.up} → ${pair.down} (${mode} rows): ${first + B}/${sequences} ` +
          `sequences, ${((performance.now() - batchStarted) / 1000).toFixed(1)}s`,
      );
    }
    if (gram) await gramScores(gram, fixed.wDecUp, sumSq, memory);
  } finally {
    tf.dispose([fixed.wDecUp, fixed.wEncDownT]);
  }
  return {
    ...finish(sumSq, fUp, fDown),
    up: fUp,
    down: fDown,
    tokens: sequences * T,
    gradientRows,
    gradientTokens,
    mode,
    seconds: (performance.now() - started) / 1000,
  };
}

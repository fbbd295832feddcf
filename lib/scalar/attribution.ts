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
 *   gradient nor reach earlier positions, so the row runs only that far (in length buckets).
 * - Gram matrices: score[i, j]² = Σ_t (s_t · gx_j[t] · w_i)² = w_iᵀ C_j w_i with C_j = Σ_t s_t² ·
 *   gx_j[t] gx_j[t]ᵀ (D × D) and w_i row i of W_dec_up, so each row position costs 2·D² flops
 *   (one product per target) instead of the direct map to all F_up upstream features (2·D·F_up,
 *   then squares): 8× fewer at the toy widths. The direct map remains where F_down Gram
 *   matrices would not fit in `memoryBytes` (GPT-2 widths).
 *
 * On the toy `mlp-block` pair (512 × 512, k 10, 4 steps, 24 sequences per batch; wasm + OpenBLAS,
 * 2 cores) a batch takes ~1–1.5 s in `token` mode, ~28 s in `sequence` mode and ~80 s in the
 * per-target loop; at `block`, where only `sequence` mode applies, the saving is ~3×.
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
  /** Token positions pushed through backward passes in total (rows × their lengths). */
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

/** One target chunk's summed gradients: row r's are gx[r][t][:] for t < rowLength[r]. */
interface GradientRows {
  /** Σ_α ∂/∂x̂ per row, `[R][Tu][D]`. */
  gx: Float32Array;
  /** Each row's unit (sequence or token). */
  rowUnit: readonly number[];
  /** Each row's downstream target feature. */
  rowTarget: readonly number[];
  /** Positions of each row that got a gradient at some α (the rest of its Tu are zero). */
  rowLength: Int32Array;
  /** ‖z0‖₂ / S per token. */
  stepLength: Float32Array;
  /** Tokens per unit. */
  Tu: number;
  /** Activation width. */
  D: number;
}

/**
 * Adds the scores' squares the direct way: IG = gx · W_dec_upᵀ · ‖z0‖/S per row and position,
 * squared, summed over the row's positions, then over rows per target on the host (float64).
 * 2·D·F_up flops per row position; used where the Gram matrices of {@link accumulateGram} would
 * not fit in memory (GPT-2 widths).
 */
async function accumulateProjected(
  o: GradientRows,
  wDecUp: tf.Tensor,
  sumSq: Float64Array,
  rowsPerSquare: number,
): Promise<void> {
  const { gx, rowUnit, rowTarget, stepLength, Tu, D } = o;
  const fUp = wDecUp.shape[0]!, R = rowTarget.length;
  for (let r0 = 0; r0 < R; r0 += rowsPerSquare) {
    const r1 = Math.min(R, r0 + rowsPerSquare), rows = r1 - r0;
    const scale = new Float32Array(rows * Tu);
    for (let r = r0; r < r1; r++) {
      scale.set(stepLength.subarray(rowUnit[r]! * Tu, (rowUnit[r]! + 1) * Tu), (r - r0) * Tu);
    }
    const sq = tf.tidy(() => {
      const g = tf.tensor2d(gx.subarray(r0 * Tu * D, r1 * Tu * D), [rows * Tu, D]);
      const ig = tf.matMul(g, wDecUp, false, true).mul(tf.tensor2d(scale, [rows * Tu, 1]));
      return ig.square().reshape([rows, Tu, fUp]).sum(1);
    });
    const values = (await sq.data()) as Float32Array;
    sq.dispose();
    for (let r = r0; r < r1; r++) {
      const to = rowTarget[r]! * fUp, from = (r - r0) * fUp;
      for (let i = 0; i < fUp; i++) sumSq[to + i]! += values[from + i]!;
    }
  }
}

/**
 * Adds each target's Gram matrix C_j += Σ_rows Σ_t s_t² · gx[t] gx[t]ᵀ (D × D, float64 on the
 * host; the products in float32). Since score[i, j]² = Σ_t (s_t · gx[t] · w_i)² = w_iᵀ C_j w_i
 * with w_i row i of W_dec_up, the scores follow from C at the end ({@link gramScores}): 2·D² flops
 * per row position instead of the direct map's 2·D·F_up (8× fewer on the toy pairs) and no
 * [positions, F_up] intermediate. Rows are copied per target into one matrix, `memory` bytes at
 * a time, and only over the positions that got a gradient.
 */
async function accumulateGram(o: GradientRows, gram: Float64Array, memory: number): Promise<void> {
  const { gx, rowUnit, rowTarget, rowLength, stepLength, Tu, D } = o;
  const rowsOf = new Map<number, number[]>();
  rowTarget.forEach((j, r) => (rowsOf.get(j) ?? rowsOf.set(j, []).get(j)!).push(r));
  const targets = [...rowsOf.keys()];
  const positions = targets.map((j) => rowsOf.get(j)!.reduce((n, r) => n + rowLength[r]!, 0));
  const budget = Math.max(1, Math.floor(memory / (8 * D)));
  for (let q0 = 0; q0 < targets.length;) {
    let q1 = q0, total = 0;
    while (q1 < targets.length && (q1 === q0 || total + positions[q1]! <= budget)) {
      total += positions[q1++]!;
    }
    const g = new Float32Array(total * D);
    let at = 0;
    for (let q = q0; q < q1; q++) {
      for (const r of rowsOf.get(targets[q]!)!) {
        for (let t = 0; t < rowLength[r]!; t++, at += D) {
          const s = stepLength[rowUnit[r]! * Tu + t]!, from = (r * Tu + t) * D;
          for (let d = 0; d < D; d++) g[at + d] = gx[from + d]! * s;
        }
      }
    }
    const products = tf.tidy(() => {
      let start = 0;
      return tf.stack(
        positions.slice(q0, q1).map((n) => {
          const m = tf.tensor2d(g.subarray(start * D, (start += n) * D), [n, D]);
          return tf.matMul(m, m, true, false);
        }),
      );
    });
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
 * Scores every edge of one SAE pair by the reference's integrated gradients (see the module
 * documentation), batched: per batch and α one forward pass finds the kept downstream features,
 * then the segment is differentiated once for all (unit, target) rows with a nonzero cotangent,
 * stacked in the batch dimension. Equal to {@link attributePairReference} up to float rounding.
 *
 * @param o Model, SAEs, pair, validation tokens and sizes.
 * @returns The scores and statistics.
 * @throws {RangeError} If the pair's hooks have no SAEs, a size is not a positive integer, the
 * tokens hold fewer than sequences · n_ctx, or `token` mode is asked for a pair whose segment
 * mixes positions.
 */
export async function attributePair(o: AttributionOptions): Promise<Attribution> {
  const started = performance.now();
  const { model, saes, pair, tokens } = o;
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
  // Row lengths are rounded up to multiples of this (sequence mode), n_ctx / 8 at most.
  const lengthBucket = Math.max(1, Math.ceil(Tu / 8));
  const rowsPerSquare = Math.max(1, Math.floor(memory / (4 * 3 * Tu * fUp)));
  // Per target, the Gram matrix of its scaled gradients (see accumulateGram), when they fit.
  const gram = 8 * fDown * D * D <= memory ? new Float64Array(fDown * D * D) : undefined;
  const segment = segmentOf(model, pair);
  const as = alphas(steps);
  const sumSq = new Float64Array(fDown * fUp); // transposed: [j][i]
  let gradientRows = 0, gradientTokens = 0;

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
      // Clean pass, then per α the decoded point x̂_α and the downstream features (for the masks).
      const clean = tf.tidy(() => {
        const ids = tf.tensor2d(tokens.subarray(first * T, (first + B) * T), [B, T], "int32");
        const x = model.run({ tokens: ids, stopAt: pair.up }).output;
        const z0 = encode(saes.weights(pair.up), x.reshape([N, D]), k);
        const xHats = as.map((a) => decode(saes.weights(pair.up), z0.mul(a)));
        const features = xHats.map((xHat) => {
          const y = segment(xHat.reshape([B, T, D]));
          return encode(saes.weights(pair.down), y.reshape([N, D]), k);
        });
        // The reference's step length ‖z0‖₂ / S per token (see the module documentation).
        return { stepLength: z0.square().sum(1).sqrt().div(steps), xHats, features };
      });
      let stepLength: Float32Array, xHats: Float32Array[];
      const kept: Int32Array[] = []; // per α: [N][k] kept feature ids, −1 padded
      try {
        stepLength = (await clean.stepLength.data()) as Float32Array;
        xHats = [];
        for (const t of clean.xHats) xHats.push((await t.data()) as Float32Array);
        for (const t of clean.features) {
          const f = (await t.data()) as Float32Array;
          const ids = new Int32Array(N * k).fill(-1);
          for (let n = 0; n < N; n++) {
            let c = 0;
            // Kept and positive: exactly where topkRelu passes the gradient on.
            for (let j = 0; j < fDown && c < k; j++) {
              if (f[n * fDown + j]! > 0) ids[n * k + c++] = j;
            }
          }
          kept.push(ids);
        }
      } finally {
        tf.dispose([clean.stepLength, ...clean.xHats, ...clean.features]);
      }

      for (let j0 = 0; j0 < fDown; j0 += chunk) {
        const j1 = Math.min(fDown, j0 + chunk);
        // Rows: every (unit, target in the chunk) pair kept at some token of the unit at some α.
        const rowUnit: number[] = [], rowTarget: number[] = [];
        const unitStart = new Int32Array(U + 1);
        const stamp = new Int32Array(fDown).fill(-1), rowOf = new Int32Array(fDown);
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
        const R = rowUnit.length;
        unitStart[U] = R;
        // Σ_α ∂/∂x̂ per row, [R][Tu][D]: the map to upstream features is linear, so it is applied
        // once after the sum (float32, like the reference's running integral).
        const gx = new Float32Array(R * Tu * D);
        const rowLength = new Int32Array(R); // positions with a gradient, at any α

        for (let s = 0; s < steps; s++) {
          // The rows with a nonzero cotangent at this α, and (sequence mode) where it is nonzero.
          const active: number[] = [];
          const activeAt = new Int32Array(R).fill(-1);
          const hot: number[] = []; // active index · Tu + position
          for (let u = 0; u < U; u++) {
            for (let r = unitStart[u]!; r < unitStart[u + 1]!; r++) rowOf[rowTarget[r]!] = r;
            for (let n = u * Tu; n < (u + 1) * Tu; n++) {
              for (let c = 0; c < k; c++) {
                const j = kept[s]![n * k + c]!;
                if (j < 0) break;
                if (j < j0 || j >= j1) continue;
                const r = rowOf[j]!;
                if (activeAt[r]! < 0) {
                  activeAt[r] = active.length;
                  active.push(r);
                }
                hot.push(activeAt[r]! * Tu + (n - u * Tu));
              }
            }
          }
          const mask = new Float32Array(active.length * Tu);
          // Causal attention: positions after a row's last nonzero cotangent neither receive
          // gradient nor influence earlier positions, so each row runs only up to its last hot
          // position (rounded up to a length bucket, rows of one length share a pass).
          const length = new Int32Array(active.length);
          for (const h of hot) {
            mask[h] = 1;
            const a = Math.floor(h / Tu);
            length[a] = Math.max(length[a]!, h - a * Tu + 1);
          }
          const byLength = new Map<number, number[]>();
          for (let a = 0; a < active.length; a++) {
            const L = Math.min(Tu, Math.ceil(length[a]! / lengthBucket) * lengthBucket);
            (byLength.get(L) ?? byLength.set(L, []).get(L)!).push(a);
            rowLength[active[a]!] = Math.max(rowLength[active[a]!]!, L);
          }
          gradientRows += active.length;
          for (const [L, members] of byLength) {
            gradientTokens += members.length * L;
            const perPass = Math.max(1, Math.floor(memory / (4 * floatsPerToken(L) * L)));
            for (let m0 = 0; m0 < members.length; m0 += perPass) {
              const part = members.slice(m0, m0 + perPass), rows = part.length;
              // Gathered on the host: each row's first L positions of x̂_α and the cotangent
              // mask_α[t, j] · W_enc_down[:, j] at each of them.
              const xRows = new Float32Array(rows * L * D), dyRows = new Float32Array(rows * L * D);
              part.forEach((a, p) => {
                const u = rowUnit[active[a]!]!, j = rowTarget[active[a]!]!;
                xRows.set(xHats[s]!.subarray(u * Tu * D, (u * Tu + L) * D), p * L * D);
                const w = wEncDownT.subarray(j * D, (j + 1) * D);
                for (let t = 0; t < L; t++) {
                  if (mask[a * Tu + t] === 1) dyRows.set(w, (p * L + t) * D);
                }
              });
              const g = tf.tidy(() =>
                tf.grad(segment)(
                  tf.tensor3d(xRows, [rows, L, D]),
                  tf.tensor3d(dyRows, [rows, L, D]),
                )
              );
              const values = (await g.data()) as Float32Array;
              g.dispose();
              part.forEach((a, p) => {
                const to = active[a]! * Tu * D, from = p * L * D;
                for (let e = 0; e < L * D; e++) gx[to + e]! += values[from + e]!;
              });
            }
          }
        }
        const rows = { gx, rowUnit, rowTarget, rowLength, stepLength, Tu, D };
        if (gram) await accumulateGram(rows, gram, memory);
        else await accumulateProjected(rows, fixed.wDecUp, sumSq, rowsPerSquare);
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

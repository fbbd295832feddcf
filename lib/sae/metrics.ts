/**
 * Evaluation of a run's SAEs on validation data (SPEC §7): how well each SAE reconstructs its hook
 * (mse, fvu, l0, dead features, norm ratio) and what splicing it into the model costs in
 * next-token cross-entropy and KL divergence, alone and with every SAE of the run spliced at once.
 * Metric names follow the project and, where SAELens has one for the same quantity, SAELens, so
 * that numbers compare with published SAEs.
 *
 * Each batch costs one clean forward pass (which records every SAE hook and the clean logits), two
 * partial passes per SAE that start at its hook (reconstruction spliced in; activation zeroed), and
 * one pass with all SAEs spliced. Per-token values come back to the host and are summed in float64,
 * so the results do not depend on the batch size.
 *
 * Dimensions: B sequences, T positions (n_ctx), N = B·T tokens, D activation width, F features,
 * V vocabulary.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { evalBatches } from "../data/batches.ts";
import { type GPT, hookNames, skipInputs } from "../model/gpt.ts";
import { Progress } from "../util/progress.ts";
import type { SaeSet } from "./architectures.ts";
import { decode, encode } from "./sae.ts";

/**
 * How well one SAE reconstructs its activations x (features f, reconstruction x̂) over N tokens.
 * The fields are the definitions; the other records refer to them.
 */
export interface ReconstructionMetrics {
  /** mse = (1/N) Σₜ ‖xₜ − x̂ₜ‖²: squared error summed over D, mean over tokens (training loss). */
  mse: number;
  /**
   * Fraction of variance unexplained: fvu = Σₜ ‖xₜ − x̂ₜ‖² / Σₜ ‖xₜ − μ‖², where μ = (1/N) Σₜ xₜ is
   * the per-dimension mean over all N evaluated tokens. Both sums run over every token before the
   * one division, as SAELens's `explained_variance` now does: a mean of per-batch (or per-token)
   * ratios would weight low-variance batches up and change with the batch size. 0 is a perfect
   * reconstruction, 1 no better than predicting μ; Infinity (or NaN) when x does not vary.
   */
  fvu: number;
  /** SAELens's name for 1 − fvu. */
  explained_variance: number;
  /** l0 = (1/N) Σₜ #{i : fₜᵢ > 0}: mean number of active features per token (≤ k). */
  l0: number;
  /** dead_fraction = #{i : fₜᵢ = 0 for every t} / F: features never active on these tokens. */
  dead_fraction: number;
  /**
   * l2_ratio = (1/N) Σₜ ‖x̂ₜ‖ / ‖xₜ‖, with ‖xₜ‖ < 1e-4 replaced by 1 (as SAELens does, so that a
   * zero activation does not divide by zero). Below 1 means the SAE shrinks its inputs.
   */
  l2_ratio: number;
  /** N: tokens evaluated. */
  tokens: number;
}

/** Everything measured for one SAE: reconstruction and the cost of splicing it into the model. */
export interface SaeMetrics extends ReconstructionMetrics {
  /**
   * Clean cross-entropy: CE = (1/N) Σₜ −ln softmax(logitsₜ)[targetₜ], the mean next-token loss
   * in nats of the unmodified model (the same for every SAE of a run).
   */
  ce_loss_without_sae: number;
  /**
   * CE with this SAE alone spliced in: its hook's activation is replaced by the reconstruction x̂
   * and the model runs on from there to the logits. At `mlp`, replacing `hook_mlp_out` makes
   * `hook_resid_post` = `hook_resid_mid` + x̂; at `mlp-block`, x̂ replaces `hook_resid_mid` both
   * as ln_2's input and on the skip connection, as SAELens splices and as the reference's own
   * per-SAE CE increase does. (The reference's SCALAR full circuit and compound CE splice only
   * ln_2's input and keep the clean skip; SCALAR follows that, see `fullCircuitSegment` in
   * `lib/scalar/ablation.ts`.)
   */
  ce_loss_with_sae: number;
  /** ce_loss_increase = ce_loss_with_sae − ce_loss_without_sae. */
  ce_loss_increase: number;
  /** CE with the hook's activation replaced by zeros (zero ablation). */
  ce_loss_with_ablation: number;
  /**
   * SAELens's fraction of loss recovered: ce_loss_score = (ce_loss_with_ablation −
   * ce_loss_with_sae) / (ce_loss_with_ablation − ce_loss_without_sae). 1 for a perfect splice, 0
   * for one as bad as zeroing the hook; NaN when zeroing the hook costs nothing.
   */
  ce_loss_score: number;
  /**
   * kl_div_with_sae = (1/N) Σₜ KL(pₜ ‖ qₜ) = (1/N) Σₜ Σᵥ pₜᵥ (ln pₜᵥ − ln qₜᵥ), where p is the
   * clean model's next-token distribution and q the one with this SAE spliced in (nats).
   */
  kl_div_with_sae: number;
  /** The same mean KL from the clean distribution, with q from the zero-ablated model. */
  kl_div_with_ablation: number;
  /** SAELens's kl_div_score = (kl_div_with_ablation − kl_div_with_sae) / kl_div_with_ablation. */
  kl_div_score: number;
}

/** Measurements of the whole SAE set. */
export interface RunMetrics {
  /** The clean CE (the definition is {@link SaeMetrics.ce_loss_without_sae}). */
  ce_loss_clean: number;
  /**
   * CE with every SAE of the set spliced at once, each reconstructing the activation that reaches
   * its hook (so later SAEs see the errors of earlier ones), as {@link SaeMetrics.ce_loss_with_sae}
   * splices each: the reference's compound CE, except that at `mlp-block` the reference replaces
   * only ln_2's input with the `hook_resid_mid` reconstruction and keeps the skip unspliced.
   */
  ce_loss_all_saes: number;
  /** ce_loss_all_increase = ce_loss_all_saes − ce_loss_clean. */
  ce_loss_all_increase: number;
  /** {@link SaeMetrics.kl_div_with_sae} with all SAEs spliced at once: mean KL(p_clean ‖ p_all). */
  kl_div_all_saes: number;
  /** Sequences (windows of n_ctx tokens) evaluated. */
  sequences: number;
  /** N: tokens evaluated (sequences · n_ctx). */
  tokens: number;
}

/** The result of {@link evaluateSaes}: plain records, ready to store. */
export interface SaeEvaluation {
  /** Per SAE, keyed by its hook name, in forward order. */
  saes: Record<string, SaeMetrics>;
  /** The whole set. */
  run: RunMetrics;
}

/** Inputs of {@link evaluateSaes}. */
export interface EvaluateSaesOptions {
  /** The frozen model the SAEs were trained on. */
  model: GPT;
  /** The SAEs, keyed by hook. */
  saes: SaeSet;
  /** The validation split. */
  tokens: Int32Array;
  /** How many leading non-overlapping windows of n_ctx tokens (+1 for the targets) to evaluate. */
  sequences: number;
  /** Windows per forward pass (memory vs speed; the results do not depend on it). */
  batchSequences: number;
  /** Where progress lines go. @default a line on stderr */
  log?: (line: string) => void;
}

/**
 * Running sums of the reconstruction metrics, in float64. The variance around the mean of all
 * tokens (not a mean of per-batch variances: see {@link ReconstructionMetrics.fvu}) is pooled
 * across batches with Chan et al.'s update (each batch's sum of squares around its own mean,
 * corrected by its mean's distance from the running mean): exact in exact arithmetic, and free of
 * the cancellation Σx² − N·μ² suffers when |μ| is large next to the spread.
 */
class ReconstructionTally {
  #n = 0;
  #sse = 0;
  #l2 = 0;
  readonly #mean: Float64Array;
  readonly #m2: Float64Array;
  readonly #active: Float64Array;

  constructor(d: number, features: number) {
    this.#mean = new Float64Array(d);
    this.#m2 = new Float64Array(d);
    this.#active = new Float64Array(features);
  }

  /**
   * Adds one batch of n tokens: per-token squared errors and norm ratios, per-dimension sums and
   * sums of squares around the batch mean, per-feature counts of active tokens.
   */
  add(
    n: number,
    sse: ArrayLike<number>,
    l2: ArrayLike<number>,
    dimSum: ArrayLike<number>,
    dimM2: ArrayLike<number>,
    counts: ArrayLike<number>,
  ): void {
    for (let t = 0; t < n; t++) {
      this.#sse += sse[t]!;
      this.#l2 += l2[t]!;
    }
    const before = this.#n, total = before + n;
    for (let i = 0; i < this.#mean.length; i++) {
      const delta = dimSum[i]! / n - this.#mean[i]!;
      this.#mean[i]! += (delta * n) / total;
      this.#m2[i]! += dimM2[i]! + (delta * delta * before * n) / total;
    }
    for (let i = 0; i < this.#active.length; i++) this.#active[i]! += counts[i]!;
    this.#n = total;
  }

  finish(): ReconstructionMetrics {
    const n = this.#n;
    const variance = this.#m2.reduce((s, v) => s + v, 0);
    const fvu = this.#sse / variance;
    const active = this.#active.reduce((s, v) => s + v, 0);
    const dead = this.#active.reduce((s, v) => s + (v === 0 ? 1 : 0), 0);
    return {
      mse: this.#sse / n,
      fvu,
      explained_variance: 1 - fvu,
      l0: active / n,
      dead_fraction: dead / this.#active.length,
      l2_ratio: this.#l2 / n,
      tokens: n,
    };
  }
}

/** Norms below this count as 1 in the l2 ratio (SAELens's guard against dividing by zero). */
const TINY_NORM = 1e-4;

/**
 * Computes the reconstruction metrics of one SAE from plain arrays, in float64: the definition
 * that {@link evaluateSaes} computes batch by batch.
 *
 * @param x Activations `[N, D]`, row-major.
 * @param xHat Reconstructions `[N, D]`.
 * @param features Feature activations `[N, F]`.
 * @param d Activation width D.
 * @returns mse, fvu, explained_variance, l0, dead_fraction, l2_ratio and N.
 * @throws {RangeError} If the array lengths do not fit `[N, D]`, `[N, D]` and `[N, F]` with N > 0.
 *
 * @example Two tokens, one dead feature
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { reconstructionMetrics } from "./metrics.ts";
 *
 * // x = [[1, 0], [3, 4]], x̂ = [[1, 0], [3, 3]]: errors 0 and 1; μ = [2, 2], Σ‖x − μ‖² = 10.
 * const m = reconstructionMetrics([1, 0, 3, 4], [1, 0, 3, 3], [2, 0, 0, 1, 0, 3], 2);
 * equal(m.mse, 0.5);
 * equal(m.fvu, 0.1);
 * equal(m.l0, 1.5);
 * equal(m.dead_fraction, 1 / 3);
 * ```
 */
export function reconstructionMetrics(
  x: ArrayLike<number>,
  xHat: ArrayLike<number>,
  features: ArrayLike<number>,
  d: number,
): ReconstructionMetrics {
  const n = x.length / d;
  const f = features.length / n;
  if (!Number.isInteger(n) || n <= 0 || xHat.length !== x.length || !Number.isInteger(f)) {
    throw new RangeError(
      `Cannot compute reconstruction metrics of ${x.length} activations, ${xHat.length} ` +
        `reconstructions and ${features.length} feature values at width ${d}: need [N, ${d}], ` +
        `[N, ${d}] and [N, F] with N > 0`,
    );
  }
  const sse = new Float64Array(n), l2 = new Float64Array(n);
  const dimSum = new Float64Array(d), dimM2 = new Float64Array(d);
  for (let t = 0; t < n; t++) {
    let xx = 0, hh = 0;
    for (let i = 0; i < d; i++) {
      const a = x[t * d + i]!, b = xHat[t * d + i]!;
      sse[t]! += (a - b) ** 2;
      xx += a * a;
      hh += b * b;
      dimSum[i]! += a;
    }
    const norm = Math.sqrt(xx);
    l2[t] = Math.sqrt(hh) / (norm < TINY_NORM ? 1 : norm);
  }
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < d; i++) dimM2[i]! += (x[t * d + i]! - dimSum[i]! / n) ** 2;
  }
  const counts = new Float64Array(f);
  for (let t = 0; t < n; t++) {
    for (let j = 0; j < f; j++) if (features[t * f + j]! > 0) counts[j]!++;
  }
  const tally = new ReconstructionTally(d, f);
  tally.add(n, sse, l2, dimSum, dimM2, counts);
  return tally.finish();
}

/** Running float64 sums of per-token CE and KL. */
interface SpliceTally {
  ce: number;
  kl: number;
}

/** Adds `n` per-token values starting at `at` of `values`. */
function sumRange(values: Float32Array, at: number, n: number): number {
  let s = 0;
  for (let t = at; t < at + n; t++) s += values[t]!;
  return s;
}

/**
 * Evaluates every SAE of a set on the first `sequences` windows of the validation tokens: the
 * reconstruction metrics of each SAE at its hook, the CE and KL cost of splicing each one alone,
 * zero ablation of each hook for reference, and the CE with all SAEs spliced at once. Every formula
 * is defined in the doc comments of {@link ReconstructionMetrics}, {@link SaeMetrics} and
 * {@link RunMetrics}.
 *
 * @param o The model, SAEs, tokens and batch sizes.
 * @returns Per-SAE and per-run metrics as plain numbers.
 * @throws {RangeError} If the set has no SAEs, an SAE's hook is not a hook of the model, a size is
 * not a positive integer, or the tokens hold fewer than sequences · n_ctx + 1.
 *
 * @example Untrained SAEs on a tiny model
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { GPT } from "../model/gpt.ts";
 * import { buildSaes } from "./architectures.ts";
 * import { evaluateSaes } from "./metrics.ts";
 * import { layoutPosition } from "./positions.ts";
 *
 * const shape = { nLayer: 1, nHead: 1, dModel: 4, dMlp: 8, nCtx: 3, vocabSize: 5, lnEps: 1e-5 };
 * const model = GPT.init(shape, 0);
 * const sae = { arch: "topk", features: 8, k: 2, jsaeLambda: 0 } as const;
 * const saes = buildSaes(sae, layoutPosition("mlp", 1), 4, 0);
 * const tokens = Int32Array.from({ length: 13 }, (_, i) => i % 5); // 4 windows of 3, + 1
 * const r = await evaluateSaes({ model, saes, tokens, sequences: 4, batchSequences: 2 });
 * ok(r.run.tokens === 12 && r.saes["blocks.0.hook_mlp_in"]!.l0 <= 2);
 * ```
 */
export async function evaluateSaes(o: EvaluateSaesOptions): Promise<SaeEvaluation> {
  const { model, saes, tokens, sequences, batchSequences } = o;
  const log = o.log ?? ((line: string) => console.error(line));
  const { nCtx: T, vocabSize: V } = model.config;
  const order = hookNames(model.config);
  for (const hook of saes.hooks) {
    if (!order.includes(hook)) {
      throw new RangeError(`Cannot evaluate the SAE at "${hook}": the model has no such hook`);
    }
  }
  if (saes.hooks.length === 0) throw new RangeError("Cannot evaluate SAEs: the set is empty");
  // Checks sizes and token count before any work.
  const batches = evalBatches(tokens, { windows: sequences, seqLen: T, batchSize: batchSequences });
  const hooks = [...saes.hooks].sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const cached = [...new Set([...hooks, ...hooks.flatMap(skipInputs)])];
  // Staircase weights are fresh slices: read the shapes inside a tidy so that none leak.
  const dims = new Map(hooks.map((h) => [h, tf.tidy(() => saes.weights(h).wDec.shape[1])]));
  const recon = new Map(
    hooks.map((h) => [h, new ReconstructionTally(dims.get(h)!, saes.width(h))]),
  );
  const spliced = new Map(hooks.map((h) => [h, { ce: 0, kl: 0 }]));
  const ablated = new Map(hooks.map((h) => [h, { ce: 0, kl: 0 }]));
  const clean = { ce: 0 }, all: SpliceTally = { ce: 0, kl: 0 };
  let seen = 0;

  const batchCount = Math.ceil(sequences / batchSequences);
  const reportEvery = Math.max(1, Math.ceil(batchCount / 10));
  log(
    `evaluating ${hooks.length} SAEs on ${sequences} sequences x ${T} tokens ` +
      `(${sequences * T} tokens) in ${batchCount} batches of ${batchSequences}`,
  );
  const progress = new Progress(batchCount, 0, batchSequences * T, "tok", log);

  let index = 0;
  for (const batch of batches) {
    const [B] = batch.shape;
    const N = B * T;
    // Everything a batch measures, as one flat vector in a fixed order, so that the host reads
    // once per batch: clean NLL [N]; per hook: sse [N], l2 ratio [N], spliced NLL [N] and KL [N],
    // ablated NLL [N] and KL [N], Σₜ x [D], Σₜ (x − batch mean)² [D], active counts [F]; then the
    // all-SAE NLL [N] and KL [N].
    const packed = tf.tidy(() => {
      // The clean pass in its own scope, so that only its log-probabilities and the recorded
      // hooks outlive it.
      const [cleanLogP, ...recorded] = tf.tidy(() => {
        const ids = tf.tensor2d(batch.inputs, [B, T], "int32");
        const run = model.run({ tokens: ids, cache: cached });
        return [
          tf.logSoftmax(run.output.reshape([N, V])),
          ...cached.map((h) => run.cache.get(h)!),
        ];
      });
      const acts = new Map(cached.map((h, i) => [h, recorded[i]!]));
      const cleanP = tf.exp(cleanLogP!);
      // Each token's target as an index into the flattened (N·V) log-probabilities: a plain
      // gather, where a one-hot mask would hold another N × V tensor.
      const picked = tf.tensor1d(batch.targets.map((id, t) => t * V + id), "int32");
      const nll = (logP: tf.Tensor) => tf.gather(logP.reshape([N * V]), picked).neg();
      const kl = (logQ: tf.Tensor) => cleanP.mul(cleanLogP!.sub(logQ)).sum(1);
      const context = (hook: string) => new Map(skipInputs(hook).map((s) => [s, acts.get(s)!]));
      // Runs from `hook` (given its value) to the logits; returns per-token NLL and KL, freeing the
      // pass's own activations at once (one pass of logits at a time is held).
      const from = (
        hook: string,
        value: tf.Tensor,
        patches?: ReadonlyMap<string, (v: tf.Tensor) => tf.Tensor>,
      ) =>
        tf.tidy(() => {
          const out = model.run({ start: { hook, value, context: context(hook) }, patches });
          const logQ = tf.logSoftmax(out.output.reshape([N, V]));
          return [nll(logQ), kl(logQ)];
        });
      const reconstruct = (hook: string, x: tf.Tensor) => {
        const w = saes.weights(hook);
        const f = encode(w, x.reshape([N, dims.get(hook)!]), saes.k);
        return { f, xHat: decode(w, f) };
      };

      const parts: tf.Tensor[] = [nll(cleanLogP!)];
      for (const hook of hooks) {
        const x = acts.get(hook)!; // (B, T, D)
        const flat = x.reshape([N, dims.get(hook)!]);
        const { f, xHat } = reconstruct(hook, x);
        const norm = tf.norm(flat, "euclidean", 1);
        const safe = tf.where(norm.less(TINY_NORM), tf.onesLike(norm), norm);
        parts.push(
          tf.squaredDifference(flat, xHat).sum(1),
          tf.norm(xHat, "euclidean", 1).div(safe),
          ...from(hook, xHat.reshape(x.shape)),
          ...from(hook, tf.zerosLike(x)),
          flat.sum(0),
          tf.squaredDifference(flat, flat.mean(0)).sum(0),
          f.greater(0).cast("float32").sum(0),
        );
      }
      const patches = new Map(
        hooks.map((h) => [h, (v: tf.Tensor) => reconstruct(h, v).xHat.reshape(v.shape)]),
      );
      parts.push(...from(hooks[0]!, acts.get(hooks[0]!)!, patches));
      return tf.concat(parts.map((p) => p.cast("float32")));
    });
    const values = (await packed.data()) as Float32Array;
    packed.dispose();

    let at = 0;
    const take = (n: number) => {
      const view = values.subarray(at, at + n);
      at += n;
      return view;
    };
    const addSplice = (tally: SpliceTally) => {
      tally.ce += sumRange(values, at, N);
      tally.kl += sumRange(values, at + N, N);
      at += 2 * N;
    };
    clean.ce += sumRange(take(N), 0, N);
    for (const hook of hooks) {
      const d = dims.get(hook)!;
      const sse = take(N), l2 = take(N);
      addSplice(spliced.get(hook)!);
      addSplice(ablated.get(hook)!);
      const dimSum = take(d), dimM2 = take(d), counts = take(saes.width(hook));
      recon.get(hook)!.add(N, sse, l2, dimSum, dimM2, counts);
    }
    addSplice(all);
    seen += N;

    index++;
    if (index % reportEvery === 0 || index === batchCount) {
      progress.report(
        index,
        `CE clean ${(clean.ce / seen).toFixed(4)}, all SAEs ${(all.ce / seen).toFixed(4)}`,
      );
    }
  }

  const ceClean = clean.ce / seen;
  const result: SaeEvaluation = {
    saes: {},
    run: {
      ce_loss_clean: ceClean,
      ce_loss_all_saes: all.ce / seen,
      ce_loss_all_increase: all.ce / seen - ceClean,
      kl_div_all_saes: all.kl / seen,
      sequences,
      tokens: seen,
    },
  };
  for (const hook of hooks) {
    const s = spliced.get(hook)!, a = ablated.get(hook)!;
    const ceWith = s.ce / seen, ceAbl = a.ce / seen;
    const klWith = s.kl / seen, klAbl = a.kl / seen;
    result.saes[hook] = {
      ...recon.get(hook)!.finish(),
      ce_loss_without_sae: ceClean,
      ce_loss_with_sae: ceWith,
      ce_loss_increase: ceWith - ceClean,
      ce_loss_with_ablation: ceAbl,
      ce_loss_score: (ceAbl - ceWith) / (ceAbl - ceClean),
      kl_div_with_sae: klWith,
      kl_div_with_ablation: klAbl,
      kl_div_score: (klAbl - klWith) / klAbl,
    };
  }
  return result;
}

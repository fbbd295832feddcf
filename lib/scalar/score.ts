/**
 * SCALAR step 4 (SPEC §5; reference-details §5.7–5.8): the area under an ablation curve, absolute
 * and relative, the improvement of one architecture over TopK, and the per-position aggregates —
 * both the paper's as-printed one and a unit-consistent one.
 *
 * @module
 */

/** One point of an ablation curve, as `ablationCurve` returns it. */
export interface CurvePoint {
  /** Edges kept. */
  n: number;
  /** Mean KL(p_model ‖ p_n) over the prompt tokens (nats). */
  klModel: number;
  /** Lower end of its 95% bootstrap CI. */
  klModelLow: number;
  /** Upper end of its 95% bootstrap CI. */
  klModelHigh: number;
  /** Mean KL(p_fullcircuit ‖ p_n) over the prompt tokens (the paper's App. H variant). */
  klFull: number;
  /** Lower end of its 95% bootstrap CI. */
  klFullLow: number;
  /** Upper end of its 95% bootstrap CI. */
  klFullHigh: number;
}

/** The scores of one curve (KL against the model, or against the full circuit). */
export interface CurveScore {
  /**
   * Absolute SCALAR: trapezoid area of y(n) over the raw edge counts n (a linear axis, although
   * the counts are log-spaced, so the widest intervals dominate). Units: KL × edges.
   */
  absolute: number;
  /** The same area of the CI's lower bounds (the reference's trapz(y − err_low)). */
  absoluteLow: number;
  /** The same area of the CI's upper bounds. */
  absoluteHigh: number;
  /** (absoluteHigh − absoluteLow) / 2: the reference's "±". */
  absoluteError: number;
  /** Relative SCALAR: absolute × 2^18 / E_tot (1 × for a 512 × 512 pair). */
  relative: number;
  /** absoluteLow × 2^18 / E_tot. */
  relativeLow: number;
  /** absoluteHigh × 2^18 / E_tot. */
  relativeHigh: number;
  /**
   * Not in the paper: the area of y over log2 n (KL × octaves), which weighs every doubling of n
   * alike. Stored beside the paper's linear-axis score, never instead of it.
   */
  logAxis: number;
  /** The log-axis area of the CI's lower bounds. */
  logAxisLow: number;
  /** The log-axis area of the CI's upper bounds. */
  logAxisHigh: number;
}

/** Scores of one pair's ablation curve. */
export interface ScalarScores {
  /** Against the unmodified model: the paper's SCALAR. */
  model: CurveScore;
  /** Against the full circuit (both SAEs spliced): the paper's App. H variant. */
  full: CurveScore;
  /** The pair's edge count F_up · F_down. */
  eTot: number;
  /** The first and last edge counts of the curve (the range both areas cover). */
  nRange: [number, number];
}

/** 2^18 = 512 × 512: the edge count relative SCALAR is normalised to. */
export const RELATIVE_EDGES = 2 ** 18;

/**
 * The trapezoid rule: Σᵢ (xᵢ₊₁ − xᵢ)(yᵢ + yᵢ₊₁)/2 (numpy's `trapz`). One point has area 0.
 *
 * @param xs Abscissae, non-decreasing.
 * @param ys Ordinates, as many as xs.
 * @returns The area.
 * @throws {RangeError} If the lengths differ, there are no points, or xs decreases somewhere.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { trapezoid } from "./score.ts";
 * equal(trapezoid([1, 2, 4], [3, 2, 0]), 4.5);
 * ```
 */
export function trapezoid(xs: ArrayLike<number>, ys: ArrayLike<number>): number {
  if (xs.length !== ys.length || xs.length === 0) {
    throw new RangeError(
      `Cannot integrate ${ys.length} values over ${xs.length} abscissae: need equal, nonzero counts`,
    );
  }
  let area = 0;
  for (let i = 0; i + 1 < xs.length; i++) {
    const dx = xs[i + 1]! - xs[i]!;
    if (!(dx >= 0)) {
      throw new RangeError(`Cannot integrate over abscissae: x[${i + 1}] < x[${i}]`);
    }
    area += (dx * (ys[i]! + ys[i + 1]!)) / 2;
  }
  return area;
}

/** The scores of one curve given its values and CI bounds. */
function curveScore(
  ns: number[],
  y: number[],
  low: number[],
  high: number[],
  eTot: number,
): CurveScore {
  const absolute = trapezoid(ns, y), absoluteLow = trapezoid(ns, low);
  const absoluteHigh = trapezoid(ns, high);
  const scale = RELATIVE_EDGES / eTot;
  const logNs = ns.map(Math.log2);
  return {
    absolute,
    absoluteLow,
    absoluteHigh,
    absoluteError: (absoluteHigh - absoluteLow) / 2,
    relative: absolute * scale,
    relativeLow: absoluteLow * scale,
    relativeHigh: absoluteHigh * scale,
    logAxis: trapezoid(logNs, y),
    logAxisLow: trapezoid(logNs, low),
    logAxisHigh: trapezoid(logNs, high),
  };
}

/**
 * Absolute and relative SCALAR (and the log-axis variant) of one pair's ablation curve, against the
 * model and against the full circuit. Lower = sparser.
 *
 * @param curve The curve's points, in increasing n.
 * @param eTot The pair's edge count F_up · F_down (for the relative score).
 * @returns The scores.
 * @throws {RangeError} If the curve is empty, n is not increasing or positive, or eTot ≤ 0.
 *
 * @example A three-point curve
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { scalarScores } from "./score.ts";
 * const p = (n: number, y: number) => ({
 *   n, klModel: y, klModelLow: y, klModelHigh: y, klFull: y, klFullLow: y, klFullHigh: y,
 * });
 * const s = scalarScores([p(1, 3), p(2, 2), p(4, 0)], 2 ** 17);
 * equal(s.model.absolute, 4.5);
 * equal(s.model.relative, 9);
 * equal(s.model.logAxis, 3.5);
 * ```
 */
export function scalarScores(curve: readonly CurvePoint[], eTot: number): ScalarScores {
  if (curve.length === 0) throw new RangeError("Cannot score an ablation curve: it has no points");
  if (!(eTot > 0)) throw new RangeError(`Cannot score an ablation curve for ${eTot} edges`);
  const ns = curve.map((p) => p.n);
  ns.forEach((n, i) => {
    if (!(n > 0) || (i > 0 && !(n > ns[i - 1]!))) {
      throw new RangeError(
        `Cannot score an ablation curve: edge counts must be positive and increasing, got ${ns}`,
      );
    }
  });
  const pick = (key: keyof CurvePoint) => curve.map((p) => p[key]);
  return {
    model: curveScore(ns, pick("klModel"), pick("klModelLow"), pick("klModelHigh"), eTot),
    full: curveScore(ns, pick("klFull"), pick("klFullLow"), pick("klFullHigh"), eTot),
    eTot,
    nRange: [ns[0]!, ns.at(-1)!],
  };
}

/**
 * Improvement of an architecture X over TopK on one pair: (S_TopK − S_X) / S_TopK, as a fraction
 * (positive = X sparser; the paper prints it × 100 as "reduction %").
 *
 * @param sTopk The TopK SAEs' score (absolute or relative).
 * @param sX The other architecture's score of the same kind.
 * @returns The fraction.
 *
 * @example FF block, layer 0, relative (Tables 7/8 → Table 2's 77.78 %)
 * ```ts
 * import { improvement } from "./score.ts";
 * if ((100 * improvement(10.8, 2.40)).toFixed(2) !== "77.78") throw new Error();
 * ```
 */
export function improvement(sTopk: number, sX: number): number {
  return (sTopk - sX) / sTopk;
}

/**
 * The units the paper's Tables 7/8 print the toy model's layers in: layers 0–1 in 1e4, layers 2–3
 * in 1e5. Its aggregates add these printed mantissas, so layers 0–1 weigh ten times less than
 * layers 2–3's real size would (or, equally, ten times more than consistent units give them).
 */
export const PAPER_TABLE_UNITS: readonly number[] = Object.freeze([1e4, 1e4, 1e5, 1e5]);

/** One layer's scores of TopK and of the architecture compared with it (same kind, same units). */
export interface LayerScores {
  /** S_TopK,l. */
  topk: number;
  /** S_X,l. */
  x: number;
}

/** Aggregate improvements of X over TopK across the layers of a position, in percent. */
export interface Aggregates {
  /** Per layer: 100 (S_TopK,l − S_X,l) / S_TopK,l. */
  perLayerPercent: number[];
  /**
   * The paper's arithmetic: 100 (1 − Σₗ S_X,l/uₗ / Σₗ S_TopK,l/uₗ) with the table units uₗ (by default
   * {@link PAPER_TABLE_UNITS}), i.e. a sum of the mantissas as printed (without their rounding).
   * Reproduces the paper's headline numbers (59.67 %, 63.15 %, 8.54 %).
   */
  asPrintedPercent: number;
  /** The same with uₗ = 1 for every layer: the improvement of the summed scores. */
  consistentPercent: number;
}

/**
 * Aggregates per-layer SCALAR scores of X and TopK both ways the reports show side by side.
 *
 * @param perLayer Per layer, in order, the raw scores (e.g. KL × edges, not mantissas).
 * @param units The per-layer units of the paper's tables. @default PAPER_TABLE_UNITS
 * @returns Per-layer, as-printed and unit-consistent improvements in percent.
 * @throws {RangeError} If `units` does not give one positive unit per layer.
 *
 * @example FF block, relative SCALAR (Tables 7/8)
 * ```ts
 * import { aggregates } from "./score.ts";
 * const topk = [10.8e4, 13.1e4, 2.43e5, 1.84e5], stair = [2.40e4, 6.65e4, 1.30e5, 1.01e5];
 * const a = aggregates(topk.map((t, l) => ({ topk: t, x: stair[l]! })));
 * if (a.asPrintedPercent.toFixed(2) !== "59.67") throw new Error();
 * if (a.consistentPercent.toFixed(2) !== "51.73") throw new Error();
 * ```
 */
export function aggregates(
  perLayer: readonly LayerScores[],
  units: readonly number[] = PAPER_TABLE_UNITS,
): Aggregates {
  if (units.length !== perLayer.length || units.some((u) => !(u > 0))) {
    throw new RangeError(
      `Cannot aggregate ${perLayer.length} layers with units [${units}]: need one positive unit ` +
        `per layer (the paper's tables define units for the toy model's 4 layers; pass them for ` +
        `other models)`,
    );
  }
  const weighted = (u: (l: number) => number) => {
    let t = 0, x = 0;
    perLayer.forEach((s, l) => {
      t += s.topk / u(l);
      x += s.x / u(l);
    });
    return 100 * (1 - x / t);
  };
  return {
    perLayerPercent: perLayer.map((s) => 100 * improvement(s.topk, s.x)),
    asPrintedPercent: weighted((l) => units[l]!),
    consistentPercent: weighted(() => 1),
  };
}

/**
 * SCALAR's two stages timed on whatever tfjs backend is active (the GPU call runs them on tfjs
 * `webgpu`): the batched edge attribution and the ablation curve of one pair at `mlp-block` and
 * one at `block`, at the paper's settings (5 IG steps over 24 × 24 sequences, 50 prompts, the
 * log2-half edge grid, 1,000 bootstrap resamples) with 512-feature TopK SAEs (k 10), randomly
 * initialised: time does not depend on what the SAEs learned, only on how many features fire,
 * which TopK fixes.
 *
 * The model is the trained toy model when given (its validation tokens would change nothing but
 * the values), else the toy shape randomly initialised; tokens are seeded random ids.
 *
 * @module
 */
import { GPT, type GPTConfig, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import { loadModel } from "../model/load.ts";
import { buildSaes } from "../sae/architectures.ts";
import { layoutPosition, type Position } from "../sae/positions.ts";
import { ablationCurve } from "../scalar/ablation.ts";
import { attributePair } from "../scalar/attribution.ts";
import { edgeCounts, rankEdges } from "../scalar/ranking.ts";
import { scalarScores } from "../scalar/score.ts";
import { createRng } from "../util/rng.ts";

/** The sizes of one SCALAR timing. */
export interface ScalarPairSizes {
  /** SAE features (both of the pair: TopK). */
  features: number;
  /** Kept features per token. */
  k: number;
  /** IG steps. */
  igSteps: number;
  /** Sequences the attribution sums over. */
  igSequences: number;
  /** Sequences per attribution batch. */
  igBatch: number;
  /** Prompts of the ablation curve. */
  prompts: number;
  /** Sequences per ablation forward pass. */
  promptBatch: number;
  /** Bootstrap resamples per curve point. */
  bootstrap: number;
}

/** The paper's toy settings (`SCALAR_DEFAULTS`, 512 TopK features, k 10). */
export const PAPER_SCALAR_SIZES: Readonly<ScalarPairSizes> = Object.freeze({
  features: 512,
  k: 10,
  igSteps: 5,
  igSequences: 576,
  igBatch: 24,
  prompts: 50,
  promptBatch: 10,
  bootstrap: 1000,
});

/** Sizes a software adapter finishes in seconds (for the call's own test). */
export const TINY_SCALAR_SIZES: Readonly<ScalarPairSizes> = Object.freeze({
  features: 16,
  k: 2,
  igSteps: 2,
  igSequences: 2,
  igBatch: 2,
  prompts: 2,
  promptBatch: 2,
  bootstrap: 20,
});

/** A model shape a software adapter runs in milliseconds. */
export const TINY_GPT: Readonly<GPTConfig> = Object.freeze({
  nLayer: 2,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 16,
  vocabSize: 128,
  lnEps: 1e-5,
});

/** One pair's timings. */
export interface ScalarPairTiming {
  /** `scalar_pair mlp-block` or `scalar_pair block`. */
  name: string;
  /** The pair, `up→down`. */
  pair: string;
  /** Attribution wall time, ms. */
  attributionMs: number;
  /** Ablation curve wall time, ms. */
  ablationMs: number;
  /** Relative SCALAR of the curve against the model (a sanity value: random SAEs). */
  relative: number;
  /** What ran. */
  detail: string;
}

/**
 * Times attribution and ablation of the first pair at `mlp-block` and at `block`.
 *
 * @param o The model (a toy checkpoint folder; unset: `shape` randomly initialised), the sizes,
 *   and `onTiming`, told each timing as it is taken (a caller cut off by a time cap keeps those).
 * @returns One timing per position, in that order.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { scalarPairTimings, TINY_GPT, TINY_SCALAR_SIZES } from "./gpu_scalar.ts";
 * const rows = await scalarPairTimings({ sizes: TINY_SCALAR_SIZES, shape: TINY_GPT });
 * equal(rows.map((r) => r.name).join(", "), "scalar_pair mlp-block, scalar_pair block");
 * ```
 */
export async function scalarPairTimings(o: {
  model?: string;
  shape?: GPTConfig;
  sizes: ScalarPairSizes;
  log?: (line: string) => void;
  onTiming?: (t: ScalarPairTiming) => void;
}): Promise<ScalarPairTiming[]> {
  const model = o.model === undefined
    ? GPT.init(o.shape ?? SHAKESPEARE_64X4, 0)
    : (await loadModel("toy", o.model)).model;
  const s = o.sizes;
  const log = o.log ?? (() => {});
  const { nCtx, vocabSize, nLayer, dModel } = model.config;
  const rng = createRng(2);
  const windows = Math.max(s.igSequences, s.prompts);
  const tokens = Int32Array.from({ length: windows * nCtx }, () => rng.int(vocabSize));
  const out: ScalarPairTiming[] = [];
  try {
    for (const position of ["mlp-block", "block"] as Position[]) {
      const layout = layoutPosition(position, nLayer);
      const saes = buildSaes(
        { arch: "topk", features: s.features, k: s.k, jsaeLambda: 0 },
        layout,
        dModel,
        1,
      );
      const pair = layout.pairs[0]!;
      try {
        let t0 = performance.now();
        const attribution = await attributePair({
          model,
          saes,
          pair,
          tokens,
          sequences: s.igSequences,
          batchSequences: s.igBatch,
          steps: s.igSteps,
          log,
        });
        const attributionMs = performance.now() - t0;
        const eTot = s.features * s.features;
        const order = rankEdges(attribution.scores, s.features, s.features, 0);
        t0 = performance.now();
        const curve = await ablationCurve({
          model,
          saes,
          pair,
          order,
          counts: edgeCounts(eTot),
          tokens,
          prompts: s.prompts,
          batchSequences: s.promptBatch,
          bootstrap: { resamples: s.bootstrap, seed: 0 },
          log,
        });
        const timing: ScalarPairTiming = {
          name: `scalar_pair ${position}`,
          pair: `${pair.up}→${pair.down}`,
          attributionMs,
          ablationMs: performance.now() - t0,
          relative: scalarScores(curve, eTot).model.relative,
          detail:
            `${s.features} × ${s.features} TopK k=${s.k}; attribution ${s.igSteps} IG steps ` +
            `over ${s.igSequences} × ${nCtx} tokens (batches of ${s.igBatch}); ablation ` +
            `${curve.length} edge counts × ${s.prompts} prompts, ${s.bootstrap} resamples`,
        };
        out.push(timing);
        o.onTiming?.(timing);
      } finally {
        saes.dispose();
      }
    }
  } finally {
    model.dispose();
  }
  return out;
}

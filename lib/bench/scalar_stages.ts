/**
 * SCALAR's three stages on one toy pair at the paper's settings, each beside its FLOP floor:
 * attribution (576 sequences, 5 IG steps), ranking (every one of the 512 × 512 edges) and the
 * ablation curve (50 prompts, the 35 edge counts of `edgeCounts`). Model, SAEs and tokens are
 * randomly initialised as in `attribution_case.ts`: the work's shape, not its values, sets the time.
 *
 * A floor counts the products a stage cannot avoid (a multiply-add is 2 FLOPs) at the toy widths —
 * D 64, M 256 (MLP), F 512 features, T 128, H 4 heads, V 128, S 5 steps:
 *
 * - attribution at `mlp-block` (per token): the forward of each (token, α), MLP + downstream
 *   encoder, 4·D·M + 2·D·F; then each backward row (token, target, α) with a nonzero cotangent,
 *   the MLP's input VJP + its Gram update, 4·D·M + 2·D²;
 * - attribution at `block` (per sequence): the forward of each (sequence, α),
 *   T·(2·D·(4·D + 2·M) + 2·D·F) + 4·T²·D; each cotangent entry once, 4·D·M + 6·D² + 4·D·T, and
 *   over its earlier key positions (T/2 on average) 4·H·D each (`block_vjp.ts`), entries taken as
 *   tokens · S · k, an upper bound; each stored row position its Gram update, 2·D²;
 * - ranking has no FLOPs: its floor is the same run's native sort of the E_tot scores
 *   (`Float32Array.prototype.sort`, no comparator);
 * - the ablation curve: each segment position the curve runs (its progress lines count them), MLP
 *   4·D·M at `mlp-block`, a block 2·D·(4·D + 2·M) + 2·T·D at `block`; and per edge count the rest
 *   of the model over the 6,400 prompt tokens, 2·D·(4·D + 2·M) + 2·T·D per later block and 2·D·V
 *   for the head.
 *
 * @module
 */
import { GPT, type GPTConfig, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import { buildSaes } from "../sae/architectures.ts";
import { layoutPosition, type SaePair } from "../sae/positions.ts";
import { ablationCurve } from "../scalar/ablation.ts";
import { attributePair, type Attribution } from "../scalar/attribution.ts";
import { edgeCounts, rankEdges } from "../scalar/ranking.ts";
import { createRng } from "../util/rng.ts";

/** The paper's SCALAR settings for one pair. */
export const STAGE_SETTINGS = { sequences: 576, steps: 5, prompts: 50, features: 512, k: 10 };

/** One stage's time beside its floor. */
export interface StageTiming {
  /** `scalar_<position>_<stage>`. */
  name: string;
  /** Wall-clock milliseconds of the stage. */
  ms: number;
  /** FLOPs of the floor (0 for ranking, whose floor is `floorMs`, measured). */
  flops: number;
  /** Ranking: the native sort's milliseconds in the same run. */
  floorMs?: number;
  /** What was timed. */
  detail: string;
}

/**
 * FLOPs per token of the model's last `blocks` blocks and its head.
 *
 * @param c The model's shape.
 * @param blocks Blocks left to run.
 * @returns FLOPs per token.
 */
function restFlops(c: GPTConfig, blocks: number): number {
  return blocks * blockFlops(c) + 2 * c.dModel * c.vocabSize;
}

/** FLOPs per token of one block: its weights, and attention over T/2 keys on average (causal). */
function blockFlops(c: GPTConfig): number {
  return 2 * c.dModel * (4 * c.dModel + 2 * c.dMlp) + 2 * c.nCtx * c.dModel;
}

/**
 * The attribution floor (see the module comment).
 *
 * @param position The pair's position.
 * @param c The model's shape.
 * @param a The attribution's token and backward counts.
 * @param s IG steps, downstream features and k.
 * @returns FLOPs.
 *
 * @example Token rows at `mlp-block`: forwards plus rows
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { SHAKESPEARE_64X4 } from "../model/gpt.ts";
 * import { attributionFlops } from "./scalar_stages.ts";
 * const a = { tokens: 1, gradientRows: 2, gradientTokens: 2 };
 * const flops = attributionFlops("mlp-block", SHAKESPEARE_64X4, a, { steps: 1, features: 512, k: 10 });
 * equal(flops, (4 * 64 * 256 + 2 * 64 * 512) + 2 * (4 * 64 * 256 + 2 * 64 * 64));
 * ```
 */
export function attributionFlops(
  position: "mlp-block" | "block",
  c: GPTConfig,
  a: Pick<Attribution, "tokens" | "gradientRows" | "gradientTokens">,
  s: { steps: number; features: number; k: number },
): number {
  const { dModel: D, dMlp: M, nCtx: T, nHead: H } = c;
  if (position === "mlp-block") {
    return a.tokens * s.steps * (4 * D * M + 2 * D * s.features) +
      a.gradientRows * (4 * D * M + 2 * D * D);
  }
  const sequences = a.tokens / T;
  const forward = T * (2 * D * (4 * D + 2 * M) + 2 * D * s.features) + 4 * T * T * D;
  const entries = a.tokens * s.steps * s.k;
  return sequences * s.steps * forward +
    entries * (4 * D * M + 6 * D * D + 4 * D * T + 4 * H * D * (T / 2)) +
    a.gradientTokens * 2 * D * D;
}

/** Segment positions a curve's progress line reports ("… 1234 positions through the segment"). */
const POSITIONS = /(\d+) positions through the segment/;

/**
 * Runs the three stages once on the layer-1 pair of `position` and times each.
 *
 * @param position `mlp-block` or `block`.
 * @param seed Seed of the model, SAEs and tokens.
 * @returns The attribution, ranking and ablation-curve rows, in that order.
 */
export async function scalarStages(
  position: "mlp-block" | "block",
  seed = 0,
): Promise<StageTiming[]> {
  const c = SHAKESPEARE_64X4, s = STAGE_SETTINGS;
  const model = GPT.init(c, seed);
  const layout = layoutPosition(position, c.nLayer);
  const sae = { arch: "topk" as const, features: s.features, k: s.k, jsaeLambda: 0 };
  const saes = buildSaes(sae, layout, c.dModel, seed + 1);
  const rng = createRng(seed + 2);
  const tokens = Int32Array.from({ length: s.sequences * c.nCtx }, () => rng.int(c.vocabSize));
  const pair: SaePair = layout.pairs[1]!;
  const prefix = `scalar_${position.replace("-", "_")}`;
  try {
    let t0 = performance.now();
    const a = await attributePair({
      ...{ model, saes, pair, tokens, sequences: s.sequences, steps: s.steps },
      log: () => {},
    });
    const attributionMs = performance.now() - t0;
    t0 = performance.now();
    const order = rankEdges(a.scores, a.up, a.down, seed);
    const rankMs = performance.now() - t0;
    t0 = performance.now();
    Float32Array.from(a.scores).sort();
    const sortMs = performance.now() - t0;
    let positions = 0;
    const counts = edgeCounts(a.up * a.down);
    t0 = performance.now();
    await ablationCurve({
      ...{ model, saes, pair, order, counts, tokens, prompts: s.prompts, batchSequences: 10 },
      bootstrap: { seed },
      log: (line) => positions += Number(POSITIONS.exec(line)?.[1] ?? 0),
    });
    const curveMs = performance.now() - t0;
    const segment = position === "mlp-block" ? 4 * c.dModel * c.dMlp : blockFlops(c);
    // Both positions' downstream hook is block `layer`'s output: the blocks after it remain.
    const later = c.nLayer - 1 - pair.layer;
    const curveFlops = positions * segment +
      counts.length * s.prompts * c.nCtx * restFlops(c, later);
    const where = `toy ${position} pair ${a.up} × ${a.down} TopK k=${s.k}`;
    return [
      {
        name: `${prefix}_attribution`,
        ms: attributionMs,
        flops: attributionFlops(position, c, a, s),
        detail: `${where}, ${s.sequences} sequences, ${s.steps} IG steps: ${a.gradientRows} ` +
          `backward rows, ${a.gradientTokens} row positions`,
      },
      {
        name: `${prefix}_ranking`,
        ms: rankMs,
        flops: 0,
        floorMs: sortMs,
        detail: `${where}: ${a.up * a.down} edges; floor: the native sort of as many float32`,
      },
      {
        name: `${prefix}_ablation_curve`,
        ms: curveMs,
        flops: curveFlops,
        detail: `${where}, ${s.prompts} prompts, ${counts.length} edge counts: ${positions} ` +
          `segment positions`,
      },
    ];
  } finally {
    model.dispose();
    saes.dispose();
  }
}

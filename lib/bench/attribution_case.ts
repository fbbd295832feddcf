/**
 * Benchmark workloads for SCALAR edge attribution (`lib/scalar/attribution.ts`): the paper's toy
 * pairs at `mlp-block` and `block` (layer 1; 512 × 512 TopK features, k 10, randomly initialised,
 * on the randomly initialised toy GPT), the paper's 5 IG steps, over the reference's 24 batches ×
 * 24 sequences of 128 tokens (random token ids: timing does not need the corpus).
 *
 * The per-target reference runs one backward pass per target feature, step and batch, hours for
 * the whole pair on a CPU, so its case times a sample of targets and batches; `timeScale` says by
 * how much to multiply a step's time to get the whole pair's.
 *
 * @module
 */
import { GPT, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import { buildSaes, type SaeSet } from "../sae/architectures.ts";
import { layoutPosition, type Position, type SaePair } from "../sae/positions.ts";
import { attributePair, attributePairReference } from "../scalar/attribution.ts";
import { createRng } from "../util/rng.ts";
import type { BenchCase } from "./cases.ts";

/** Shape of the attribution cases: the reference's toy attribution run for one pair. */
export const ATTRIBUTION_CASE = {
  features: 512,
  k: 10,
  batches: 24,
  batchSequences: 24,
  steps: 5,
} as const;

/** A case whose step covers part of the whole workload. */
export interface AttributionBenchCase extends BenchCase {
  /** Multiply a step's time by this to get the whole pair's (24 batches, all 512 targets). */
  timeScale: number;
}

/** Sizes of an attribution case. */
export interface AttributionCaseOptions {
  /** Batches of 24 sequences per step (the whole pair: 24). */
  batches?: number;
  /** Reference only: target features per step, spread evenly over the 512 (all: 512). */
  targets?: number;
}

function prepare(seed: number, batches: number, position: Position = "mlp-block"): {
  model: GPT;
  saes: SaeSet;
  pair: SaePair;
  tokens: Int32Array;
} {
  const { features, k, batchSequences } = ATTRIBUTION_CASE;
  const c = SHAKESPEARE_64X4;
  if (!Number.isSafeInteger(batches) || batches < 1 || batches > ATTRIBUTION_CASE.batches) {
    throw new RangeError(
      `Cannot time ${batches} attribution batches: need an integer in ` +
        `[1, ${ATTRIBUTION_CASE.batches}]`,
    );
  }
  const model = GPT.init(c, seed);
  const layout = layoutPosition(position, c.nLayer);
  const saes = buildSaes({ arch: "topk", features, k, jsaeLambda: 0 }, layout, c.dModel, seed + 1);
  const rng = createRng(seed + 2);
  const tokens = Int32Array.from(
    { length: batches * batchSequences * c.nCtx },
    () => rng.int(c.vocabSize),
  );
  return { model, saes, pair: layout.pairs[1]!, tokens };
}

/**
 * The batched attribution (`attributePair`, token rows) of the toy `mlp-block` pair.
 *
 * @param seed Seed of the model, SAEs and tokens.
 * @param o Batches per step (default 1; batches are independent, so the whole pair takes 24 ×).
 * @returns The prepared case; its `timeScale` extrapolates to 24 batches.
 * @throws {RangeError} If `batches` is not an integer in [1, 24].
 */
export function attributionBatched(seed = 0, o: AttributionCaseOptions = {}): AttributionBenchCase {
  const batches = o.batches ?? 1;
  const { model, saes, pair, tokens } = prepare(seed, batches);
  const { features, k, batchSequences, steps } = ATTRIBUTION_CASE;
  const timeScale = ATTRIBUTION_CASE.batches / batches;
  return {
    name: "attribution_mlp_block",
    detail: `IG edge scores, toy mlp-block pair ${features} × ${features} TopK k=${k}, ` +
      `${batches} of ${ATTRIBUTION_CASE.batches} batches × ${batchSequences} × 128 tokens, ` +
      `${steps} steps, batched (token × target rows): multiply by ${timeScale} for the whole pair`,
    timeScale,
    async step() {
      await attributePair({
        model,
        saes,
        pair,
        tokens,
        sequences: batches * batchSequences,
        batchSequences,
        steps,
        log: () => {},
      });
    },
    dispose() {
      model.dispose();
      saes.dispose();
    },
  };
}

/**
 * The reference's per-target loop (`attributePairReference`) on the same pair, timed on a sample:
 * `targets` target features (evenly spread) and `batches` batches per step.
 *
 * @param seed Seed of the model, SAEs and tokens.
 * @param o Batches (default 1) and targets (default 8) per step.
 * @returns The prepared case; its `timeScale` extrapolates to 24 batches × 512 targets.
 * @throws {RangeError} If `batches` is not an integer in [1, 24] or `targets` not in [1, 512].
 */
export function attributionReference(
  seed = 0,
  o: AttributionCaseOptions = {},
): AttributionBenchCase {
  const batches = o.batches ?? 1;
  const count = o.targets ?? 8;
  const { features, batchSequences, steps } = ATTRIBUTION_CASE;
  if (!Number.isSafeInteger(count) || count < 1 || count > features) {
    throw new RangeError(`Cannot time ${count} targets: need an integer in [1, ${features}]`);
  }
  const { model, saes, pair, tokens } = prepare(seed, batches);
  const targets = Array.from({ length: count }, (_, m) => Math.floor(m * features / count));
  const timeScale = (ATTRIBUTION_CASE.batches / batches) * (features / count);
  return {
    name: "attribution_mlp_block_reference",
    detail: `the same, per-target reference (one backward per target, step and batch) on ` +
      `${count} of ${features} targets × ${batches} of ${ATTRIBUTION_CASE.batches} batches: ` +
      `multiply by ${timeScale} for the whole pair`,
    timeScale,
    async step() {
      await attributePairReference({
        model,
        saes,
        pair,
        tokens,
        sequences: batches * batchSequences,
        batchSequences,
        steps,
        targets,
        log: () => {},
      });
    },
    dispose() {
      model.dispose();
      saes.dispose();
    },
  };
}

/** Sequences per step of {@link attributionPaper} (the PyTorch peer's attribution cases match). */
export const PAPER_STEP_SEQUENCES = 6;

/**
 * One pair's batched attribution at the paper's settings (576 sequences, 5 IG steps), timed on
 * {@link PAPER_STEP_SEQUENCES} sequences per step (the work is per sequence, so the whole pair
 * takes `timeScale` = 96 steps); the peer's cases `attribution_mlp_block` and `attribution_block`
 * time the authors' per-target loop on the same sequences.
 *
 * @param position `mlp-block` (token rows) or `block` (sequence rows).
 * @param seed Seed of the model, SAEs and tokens.
 * @returns The prepared case.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { attributionPaper } from "./attribution_case.ts";
 * const c = attributionPaper("block");
 * equal([c.name, c.timeScale].join(), "attribution_block,96");
 * c.dispose();
 * ```
 */
export function attributionPaper(position: "mlp-block" | "block", seed = 0): AttributionBenchCase {
  const { model, saes, pair, tokens } = prepare(seed, 1, position);
  const sequences = PAPER_STEP_SEQUENCES, { features, k, steps } = ATTRIBUTION_CASE;
  const timeScale = (ATTRIBUTION_CASE.batches * ATTRIBUTION_CASE.batchSequences) / sequences;
  return {
    name: `attribution_${position.replace("-", "_")}`,
    detail: `IG edge scores, toy ${position} pair ${features} × ${features} TopK k=${k}, ` +
      `${steps} steps, ${sequences} of 576 sequences per step (× ${timeScale} for the pair)`,
    timeScale,
    async step() {
      await attributePair({
        model,
        saes,
        pair,
        tokens,
        sequences,
        batchSequences: sequences,
        steps,
        log: () => {},
      });
    },
    dispose() {
      model.dispose();
      saes.dispose();
    },
  };
}

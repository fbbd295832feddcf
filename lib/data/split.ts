/**
 * The train/validation split of a token array (SPEC §2): train is the first 90% of the tokens
 * rounded down to a multiple of 256, validation is the rest.
 *
 * @module
 */

/** Fraction of the tokens that goes to the training split before rounding. */
export const TRAIN_FRACTION = 0.9;

/** The training split's length is rounded down to a multiple of this. */
export const TRAIN_ALIGN = 256;

/** A token array cut into its training and validation parts. */
export interface TrainValSplit {
  /** The first {@linkcode trainLength} tokens. */
  train: Int32Array;
  /** Every token after the training split. */
  val: Int32Array;
}

/**
 * Number of training tokens for a corpus of `n` tokens: floor(0.9·n) rounded down to a multiple
 * of 256. The product 0.9·n is computed in floating point exactly as the reference's Python
 * `int(0.9 * n)` does, so both agree on every length.
 *
 * @param n Total number of tokens, a non-negative integer.
 * @returns The training split's length (1,003,776 for Tiny Shakespeare's 1,115,394).
 * @throws {RangeError} If `n` is not a non-negative integer.
 *
 * @example Tiny Shakespeare
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { trainLength } from "./split.ts";
 *
 * equal(trainLength(1_115_394), 1_003_776);
 * ```
 */
export function trainLength(n: number): number {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RangeError(`Cannot split "${n}" tokens: not a non-negative integer`);
  }
  const unaligned = Math.floor(TRAIN_FRACTION * n);
  return unaligned - (unaligned % TRAIN_ALIGN);
}

/**
 * Splits tokens into training and validation parts with {@linkcode trainLength}. Both parts are
 * views of `tokens` (no copy), so writing to one writes to `tokens`.
 *
 * @param tokens The whole corpus, tokenized.
 * @returns The training part (a prefix) and the validation part (the rest).
 *
 * @example Split 1,000 tokens
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { splitTrainVal } from "./split.ts";
 *
 * const { train, val } = splitTrainVal(new Int32Array(1000));
 * equal(train.length, 768);
 * equal(val.length, 232);
 * ```
 */
export function splitTrainVal(tokens: Int32Array): TrainValSplit {
  const cut = trainLength(tokens.length);
  return { train: tokens.subarray(0, cut), val: tokens.subarray(cut) };
}

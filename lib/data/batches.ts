/**
 * Deterministic language-model batches over a token array, read in order as nanoGPT and the
 * reference loader do: no shuffling, no random offsets, so a run is reproducible from its cursor.
 *
 * @module
 */

/** One batch of next-token prediction examples, row-major with shape (batch, seq). */
export interface TokenBatch {
  /** Input tokens, `shape[0]` windows of `shape[1]` tokens each. */
  inputs: Int32Array;
  /** The inputs shifted by one token: `targets[i]` is the token after `inputs[i]`. */
  targets: Int32Array;
  /** (B, T): number of windows and tokens per window. */
  shape: readonly [number, number];
}

/** Sizes of the batches a {@linkcode BatchLoader} reads. */
export interface BatchLoaderOptions {
  /** Windows per batch (B). */
  batchSize: number;
  /** Tokens per window (T). */
  seqLen: number;
  /**
   * Token offset of the next batch, as saved from {@linkcode BatchLoader.cursor}.
   * @default {0}
   */
  cursor?: number;
}

/**
 * Reads batches of B consecutive, non-overlapping windows of T tokens from a cursor p: inputs are
 * tokens[p, p + B·T) as (B, T), targets the same span shifted by one, then p advances by B·T.
 * When the batch after that would run past the end (it needs B·T + 1 tokens), p returns to 0, so
 * the loader cycles over the first {@linkcode BatchLoader.batchesPerEpoch} batches forever.
 *
 * @example Two batches and the wraparound
 * ```ts
 * import { deepEqual, equal } from "node:assert/strict";
 * import { BatchLoader } from "./batches.ts";
 *
 * const tokens = Int32Array.from({ length: 10 }, (_, i) => i);
 * const loader = new BatchLoader(tokens, { batchSize: 2, seqLen: 2 });
 * deepEqual([...loader.next().inputs], [0, 1, 2, 3]);
 * equal(loader.cursor, 4);
 * deepEqual([...loader.next().targets], [5, 6, 7, 8]);
 * equal(loader.cursor, 0);
 * ```
 */
export class BatchLoader {
  /** The token array batches are read from (not copied). */
  readonly tokens: Int32Array;
  /** Windows per batch (B). */
  readonly batchSize: number;
  /** Tokens per window (T). */
  readonly seqLen: number;
  #cursor = 0;

  /**
   * Creates a loader positioned at `options.cursor`.
   *
   * @param tokens The split to read, e.g. the training tokens.
   * @param options Batch sizes and the starting cursor.
   * @throws {RangeError} If a size is not a positive integer, `tokens` holds fewer than B·T + 1
   * tokens, or the cursor is out of range (see {@linkcode BatchLoader.cursor}).
   */
  constructor(tokens: Int32Array, options: BatchLoaderOptions) {
    const { batchSize, seqLen, cursor = 0 } = options;
    checkPositiveInteger("batch size", batchSize);
    checkPositiveInteger("sequence length", seqLen);
    const needed = batchSize * seqLen + 1;
    if (tokens.length < needed) {
      throw new RangeError(
        `Cannot read batches of ${batchSize}x${seqLen} tokens from "${tokens.length}" tokens: ` +
          `one batch needs ${needed}`,
      );
    }
    this.tokens = tokens;
    this.batchSize = batchSize;
    this.seqLen = seqLen;
    this.cursor = cursor;
  }

  /**
   * Token offset where the next batch starts. Save it with a checkpoint and assign it (or pass it
   * to the constructor) to resume at exactly the same batch.
   *
   * @throws {RangeError} On assignment, if the value is not an integer p with 0 ≤ p and
   * p + B·T + 1 ≤ the number of tokens.
   */
  get cursor(): number {
    return this.#cursor;
  }

  set cursor(value: number) {
    const last = this.tokens.length - this.batchSize * this.seqLen - 1;
    if (!Number.isSafeInteger(value) || value < 0 || value > last) {
      throw new RangeError(
        `Cannot set batch cursor to "${value}": must be an integer in [0, ${last}] for ` +
          `${this.batchSize}x${this.seqLen} batches of "${this.tokens.length}" tokens`,
      );
    }
    this.#cursor = value;
  }

  /**
   * Number of distinct batches before the cursor returns to 0 when starting from 0:
   * floor((n − 1) / (B·T)), e.g. 61 for Tiny Shakespeare's training split at 128×128.
   */
  get batchesPerEpoch(): number {
    return Math.floor((this.tokens.length - 1) / (this.batchSize * this.seqLen));
  }

  /**
   * Reads the batch at the cursor and advances it, wrapping to 0 when the following batch would
   * not fit.
   *
   * @returns Fresh arrays (not views of `tokens`), so callers may keep or mutate them.
   */
  next(): TokenBatch {
    const span = this.batchSize * this.seqLen;
    const batch = readWindows(this.tokens, this.#cursor, this.batchSize, this.seqLen);
    this.#cursor += span;
    if (this.#cursor + span + 1 > this.tokens.length) this.#cursor = 0;
    return batch;
  }
}

/** How many leading windows {@linkcode evalBatches} covers and how it groups them. */
export interface EvalBatchOptions {
  /** Number of windows (M), taken from the start of the tokens. */
  windows: number;
  /** Tokens per window (T). */
  seqLen: number;
  /** Windows per yielded batch; the last batch holds the remainder. */
  batchSize: number;
}

/**
 * Yields the first M non-overlapping windows of T tokens (with their shifted targets) in batches
 * of at most B windows, without wrapping: every window is seen exactly once, which makes a fixed
 * evaluation set such as a validation-loss estimate or the attribution sequences.
 *
 * @param tokens The split to read, usually the validation tokens.
 * @param options Number of windows, window length and batch size.
 * @returns A generator of ceil(M / B) batches; the last one has M mod B windows when B does not
 * divide M.
 * @throws {RangeError} If a size is not a positive integer or `tokens` holds fewer than M·T + 1
 * tokens. Thrown when the generator is created, before any batch is read.
 *
 * @example Three windows in batches of two
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { evalBatches } from "./batches.ts";
 *
 * const tokens = Int32Array.from({ length: 7 }, (_, i) => i);
 * const shapes = [...evalBatches(tokens, { windows: 3, seqLen: 2, batchSize: 2 })]
 *   .map((batch) => batch.shape);
 * deepEqual(shapes, [[2, 2], [1, 2]]);
 * ```
 */
export function evalBatches(tokens: Int32Array, options: EvalBatchOptions): Generator<TokenBatch> {
  const { windows, seqLen, batchSize } = options;
  checkPositiveInteger("window count", windows);
  checkPositiveInteger("sequence length", seqLen);
  checkPositiveInteger("batch size", batchSize);
  const needed = windows * seqLen + 1;
  if (tokens.length < needed) {
    throw new RangeError(
      `Cannot read ${windows} windows of ${seqLen} tokens from "${tokens.length}" tokens: ` +
        `they need ${needed}`,
    );
  }
  return generateEvalBatches(tokens, windows, seqLen, batchSize);
}

// Separate from evalBatches so that bad sizes throw at the call, not at the first next().
function* generateEvalBatches(
  tokens: Int32Array,
  windows: number,
  seqLen: number,
  batchSize: number,
): Generator<TokenBatch> {
  for (let first = 0; first < windows; first += batchSize) {
    const rows = Math.min(batchSize, windows - first);
    yield readWindows(tokens, first * seqLen, rows, seqLen);
  }
}

function readWindows(tokens: Int32Array, start: number, rows: number, seqLen: number): TokenBatch {
  const end = start + rows * seqLen;
  return {
    inputs: tokens.slice(start, end),
    targets: tokens.slice(start + 1, end + 1),
    shape: [rows, seqLen],
  };
}

function checkPositiveInteger(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`Cannot use ${what} "${value}": not a positive integer`);
  }
}

/**
 * Feature inspection, the paper's interpretability check: run the frozen model over validation
 * sequences, encode one hook's activations with its SAE, and keep for every feature how often it
 * fires (density) and the contexts where it fires most strongly.
 *
 * Memory stays bounded by features × top (not features × tokens): each feature keeps a min-heap of
 * its `top` best activations, so GPT-2's 24,576 features over millions of tokens fit as easily as
 * the toy model's 512 over the 111k validation tokens.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { evalBatches } from "../data/batches.ts";
import type { GPT } from "../model/gpt.ts";
import { encode, type SaeWeights } from "./sae.ts";

/** One activation of a feature: its value and the token it was read at. */
export interface FeatureActivation {
  /** The feature's activation (> 0). */
  value: number;
  /** The sequence (window of `seqLen` tokens from the start of the tokens), from 0. */
  sequence: number;
  /** The token's position within its sequence, from 0. */
  position: number;
}

/** What {@link topActivations} found for one feature. */
export interface FeatureSummary {
  /** The feature's index in the SAE. */
  feature: number;
  /** Fraction of the evaluated tokens where the feature is active (> 0). */
  density: number;
  /** Number of evaluated tokens where the feature is active. */
  count: number;
  /** The highest activations, highest first; among equal values the earlier token first. */
  top: FeatureActivation[];
}

/** What {@link topActivations} returns. */
export interface TopActivationsResult {
  /** Tokens per sequence (the model's context). */
  seqLen: number;
  /** Sequences evaluated. */
  sequences: number;
  /** Tokens evaluated: sequences × seqLen, the denominator of every density. */
  tokens: number;
  /** One entry per inspected feature, by ascending index. */
  features: FeatureSummary[];
}

/** Inputs of {@link topActivations}. */
export interface TopActivationsOptions {
  /** The frozen model the SAE was trained on. */
  model: GPT;
  /** The SAE's weights (owned by the caller; not disposed). */
  weights: SaeWeights;
  /** Features the SAE keeps per token (its TopK k). */
  k: number;
  /** The hook whose activations the SAE encodes. */
  hook: string;
  /** Token ids to read, usually the validation split. */
  tokens: Int32Array;
  /** Number of leading non-overlapping windows of `model.config.nCtx` tokens to evaluate. */
  sequences: number;
  /** Windows per forward pass (bounds the `[tokens, features]` activations held at once). */
  batchSequences: number;
  /** Activations kept per feature. */
  top: number;
  /** Features to inspect (deduplicated, reported by ascending index). @default every feature */
  features?: readonly number[];
  /** Called after each batch with sequences done and the total, for progress lines. */
  onBatch?: (done: number, total: number) => void;
}

/**
 * Finds each feature's density and strongest activations over the first `sequences` windows of
 * the tokens. Activations are TopK encodings ({@link encode}) of the model's activations at
 * `hook`, exactly as the SAE saw them in training; only the ≤ k active features per token are
 * read back from the backend.
 *
 * @param o Model, SAE, tokens and how many activations to keep.
 * @returns Per feature: density, count and the `top` highest activations.
 * @throws {RangeError} For a non-positive `top`, `k` or batch size, a feature index outside the
 * SAE, too few tokens for `sequences` windows, an unknown hook, or a hook whose width differs
 * from the SAE's input width.
 *
 * @example
 * ```ts ignore
 * const { features } = await topActivations({
 *   model, weights: saes.weights(hook), k: saes.k, hook, tokens: val,
 *   sequences: 64, batchSequences: 16, top: 10,
 * });
 * ```
 */
export async function topActivations(o: TopActivationsOptions): Promise<TopActivationsResult> {
  const [d, width] = o.weights.wEnc.shape;
  const seqLen = o.model.config.nCtx;
  checkPositiveInteger("top", o.top);
  checkPositiveInteger("k", o.k);
  const inspected = o.features === undefined
    ? Array.from({ length: width }, (_, i) => i)
    : [...new Set(o.features)].sort((a, b) => a - b);
  for (const f of inspected) {
    if (!Number.isInteger(f) || f < 0 || f >= width) {
      throw new RangeError(
        `Cannot inspect feature "${f}": the SAE at "${o.hook}" has features 0–${width - 1}`,
      );
    }
  }
  // Feature → slot in the heaps and counts, −1 for features not inspected.
  const slotOf = new Int32Array(width).fill(-1);
  inspected.forEach((f, slot) => (slotOf[f] = slot));
  const counts = new Float64Array(inspected.length);
  const heaps = new TopActivationHeaps(inspected.length, o.top);
  const kept = Math.min(o.k, width);

  let done = 0;
  const batches = evalBatches(o.tokens, {
    windows: o.sequences,
    seqLen,
    batchSize: o.batchSequences,
  });
  for (const batch of batches) {
    const [rows, T] = batch.shape;
    const { values, indices } = tf.tidy(() => {
      const ids = tf.tensor2d(batch.inputs, [rows, T], "int32");
      const x = o.model.run({ tokens: ids, stopAt: o.hook }).output;
      if (x.shape.at(-1) !== d) {
        throw new RangeError(
          `Cannot encode activations of "${o.hook}": width ${x.shape.at(-1)}, the SAE reads ${d}`,
        );
      }
      const f = encode(o.weights, x.reshape([rows * T, d]) as tf.Tensor2D, o.k);
      // At most k entries per row are nonzero, so the row's top k holds all of them: reading
      // [N, k] instead of [N, F] keeps GPT-2's 24,576-wide rows off the host.
      return tf.topk(f, kept);
    });
    let value: Float32Array, feature: Int32Array;
    try {
      [value, feature] = await Promise.all([
        values.data() as Promise<Float32Array>,
        indices.data() as Promise<Int32Array>,
      ]);
    } finally {
      values.dispose();
      indices.dispose();
    }
    const firstToken = done * seqLen;
    for (let row = 0; row < rows * T; row++) {
      for (let j = row * kept; j < (row + 1) * kept; j++) {
        const v = value[j]!;
        if (!(v > 0)) continue;
        const slot = slotOf[feature[j]!]!;
        if (slot < 0) continue;
        counts[slot]!++;
        heaps.push(slot, v, firstToken + row);
      }
    }
    done += rows;
    o.onBatch?.(done, o.sequences);
  }

  const tokens = o.sequences * seqLen;
  return {
    seqLen,
    sequences: o.sequences,
    tokens,
    features: inspected.map((feature, slot) => ({
      feature,
      density: counts[slot]! / tokens,
      count: counts[slot]!,
      top: heaps.sorted(slot).map(({ value, token }) => ({
        value,
        sequence: Math.floor(token / seqLen),
        position: token % seqLen,
      })),
    })),
  };
}

/**
 * Many bounded min-heaps in flat typed arrays: heap h keeps the `capacity` best (value, token)
 * pairs pushed into it, where higher values are better and, among equal values, the earlier
 * (smaller) token is better. The root of each heap is its worst kept pair, so a push costs one
 * comparison when the pair does not qualify and O(log capacity) when it does.
 */
export class TopActivationHeaps {
  readonly #capacity: number;
  readonly #values: Float64Array;
  readonly #tokens: Float64Array;
  readonly #sizes: Int32Array;

  /**
   * Creates empty heaps.
   *
   * @param heaps Number of heaps (one per feature).
   * @param capacity Pairs each heap keeps.
   * @throws {RangeError} If `heaps` is negative or `capacity` not positive (or not integers).
   */
  constructor(heaps: number, capacity: number) {
    if (!Number.isSafeInteger(heaps) || heaps < 0) {
      throw new RangeError(`Cannot create "${heaps}" heaps: not a non-negative integer`);
    }
    checkPositiveInteger("heap capacity", capacity);
    this.#capacity = capacity;
    this.#values = new Float64Array(heaps * capacity);
    this.#tokens = new Float64Array(heaps * capacity);
    this.#sizes = new Int32Array(heaps);
  }

  /**
   * Offers a pair to a heap; it is kept if the heap is not full or it beats the worst kept pair.
   *
   * @param heap Which heap.
   * @param value The activation.
   * @param token The token's index (any order of pushes gives the same result).
   */
  push(heap: number, value: number, token: number): void {
    const base = heap * this.#capacity;
    const size = this.#sizes[heap]!;
    const vs = this.#values, ts = this.#tokens;
    if (size < this.#capacity) {
      // Sift up from the new leaf while the parent is better than the new pair.
      let i = size;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!worse(value, token, vs[base + parent]!, ts[base + parent]!)) break;
        vs[base + i] = vs[base + parent]!;
        ts[base + i] = ts[base + parent]!;
        i = parent;
      }
      vs[base + i] = value;
      ts[base + i] = token;
      this.#sizes[heap] = size + 1;
      return;
    }
    if (!worse(vs[base]!, ts[base]!, value, token)) return;
    // Replace the root and sift down: move the worse child up while it is worse than the pair.
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= size) break;
      let child = left;
      const right = left + 1;
      if (
        right < size &&
        worse(vs[base + right]!, ts[base + right]!, vs[base + left]!, ts[base + left]!)
      ) child = right;
      if (!worse(vs[base + child]!, ts[base + child]!, value, token)) break;
      vs[base + i] = vs[base + child]!;
      ts[base + i] = ts[base + child]!;
      i = child;
    }
    vs[base + i] = value;
    ts[base + i] = token;
  }

  /**
   * The pairs a heap kept, best first.
   *
   * @param heap Which heap.
   * @returns Up to `capacity` pairs, by descending value, then ascending token.
   */
  sorted(heap: number): { value: number; token: number }[] {
    const base = heap * this.#capacity;
    const out = Array.from({ length: this.#sizes[heap]! }, (_, i) => ({
      value: this.#values[base + i]!,
      token: this.#tokens[base + i]!,
    }));
    return out.sort((a, b) => b.value - a.value || a.token - b.token);
  }
}

/** Whether pair a ranks below pair b: a lower value, or the same value at a later token. */
function worse(aValue: number, aToken: number, bValue: number, bToken: number): boolean {
  return aValue < bValue || (aValue === bValue && aToken > bToken);
}

/** How much text {@link formatContext} shows on each side of the marked character. */
export interface ContextWidth {
  /** Characters before the marked one. */
  before: number;
  /** Characters after the marked one. */
  after: number;
}

// Every character that would end a terminal line; shown as ⏎ so that one context is one line.
const LINE_BREAKS = /[\n\r\v\f\u0085\u2028\u2029]/g;
const visible = (s: string) => s.replace(LINE_BREAKS, "⏎");

/**
 * Formats the text around one character as a single line with that character marked `⟦ ⟧`: `…`
 * where the snippet was cut short of the text's start or end, and line breaks shown as `⏎`.
 *
 * @param text The text (indices count UTF-16 code units; the character tokenizer's decoded text
 * has one unit per token).
 * @param index The marked character's index.
 * @param width Characters to show before and after it.
 * @param length Characters marked from `index` on (a BPE token is several). @default 1
 * @returns The one-line snippet.
 * @throws {RangeError} If `index` is outside the text or a width is not a non-negative integer.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { formatContext } from "./features.ts";
 *
 * equal(formatContext("O, the king's\nson", 8, { before: 5, after: 4 }), "…the k⟦i⟧ng's…");
 * ```
 */
export function formatContext(
  text: string,
  index: number,
  width: ContextWidth,
  length = 1,
): string {
  if (!Number.isInteger(index) || index < 0 || index + length > text.length || length < 1) {
    throw new RangeError(
      `Cannot mark character "${index}": outside the text of ${text.length} characters`,
    );
  }
  for (const [name, n] of Object.entries(width)) {
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new RangeError(`Cannot show "${n}" characters ${name}: not a non-negative integer`);
    }
  }
  const start = Math.max(0, index - width.before);
  const end = Math.min(text.length, index + length + width.after);
  return (start > 0 ? "…" : "") + visible(text.slice(start, index)) +
    `⟦${visible(text.slice(index, index + length))}⟧` + visible(text.slice(index + length, end)) +
    (end < text.length ? "…" : "");
}

function checkPositiveInteger(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`Cannot use ${what} "${value}": not a positive integer`);
  }
}

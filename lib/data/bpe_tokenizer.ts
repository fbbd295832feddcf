/**
 * GPT-2's byte-level BPE tokenizer (tiktoken's `r50k_base`, the same ranks and pattern as its
 * `gpt2` encoding), through the `gpt-tokenizer` npm package, which ships the encoding inside
 * the package so nothing is downloaded at run time.
 *
 * Text is encoded as tiktoken's `encode_ordinary` does (what the reference's FineWeb preparation
 * calls): a literal `<|endoftext|>` in a document is ordinary text, never the special token, so
 * documents cannot forge separators. Separators are inserted as ids ({@linkcode GPT2_EOT}).
 *
 * @module
 */
import { decode, encode, vocabularySize } from "gpt-tokenizer/encoding/r50k_base";
import type { CorpusTokenizer } from "./text_corpus.ts";

/** GPT-2's `<|endoftext|>` id, the last of its vocabulary. */
export const GPT2_EOT = 50256;

/** Number of GPT-2 token ids (50,000 merges + 256 bytes + `<|endoftext|>`). */
export const GPT2_VOCAB_SIZE = 50257;

if (vocabularySize !== GPT2_VOCAB_SIZE) {
  // A package update that swapped the encoding would silently change every cached corpus.
  throw new Error(
    `Cannot load the GPT-2 tokenizer: gpt-tokenizer's r50k_base has ${vocabularySize} ids, ` +
      `expected ${GPT2_VOCAB_SIZE}`,
  );
}

// No special token is recognised in text; the same object every call avoids rebuilding sets.
const ORDINARY = Object.freeze({ disallowedSpecial: new Set<string>() });

/**
 * Encodes text with GPT-2's BPE, treating `<|endoftext|>` in the text as ordinary characters.
 *
 * @param text The text.
 * @returns Token ids in [0, 50257).
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { encodeGpt2 } from "./bpe_tokenizer.ts";
 *
 * deepEqual([...encodeGpt2("Hello world")], [15496, 995]);
 * ```
 */
export function encodeGpt2(text: string): Int32Array {
  return Int32Array.from(encode(text, ORDINARY));
}

/**
 * Decodes GPT-2 token ids to text. Bytes that do not form valid UTF-8 (a sequence cut inside a
 * character) become U+FFFD, as tiktoken's `decode` does.
 *
 * @param ids Token ids, each an integer in [0, 50257); {@linkcode GPT2_EOT} decodes to
 *   `<|endoftext|>`.
 * @returns The text.
 * @throws {RangeError} If an id is outside the vocabulary.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { decodeGpt2 } from "./bpe_tokenizer.ts";
 *
 * equal(decodeGpt2([15496, 995, 50256]), "Hello world<|endoftext|>");
 * ```
 */
export function decodeGpt2(ids: ArrayLike<number>): string {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= GPT2_VOCAB_SIZE) {
      throw new RangeError(
        `Cannot decode token id "${id}" at index ${i}: outside the GPT-2 vocabulary ` +
          `[0, ${GPT2_VOCAB_SIZE})`,
      );
    }
  }
  return decode(Array.from(ids));
}

/**
 * GPT-2's tokenizer as a corpus tokenizer: every document is preceded by `<|endoftext|>`.
 * Its name keys the token caches, so changing it invalidates them.
 */
export const GPT2_TOKENIZER: Readonly<CorpusTokenizer> = Object.freeze({
  name: "gpt2",
  encode: encodeGpt2,
  decode: decodeGpt2,
  documentSeparator: GPT2_EOT,
});

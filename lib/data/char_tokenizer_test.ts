import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { CHAR_UNKNOWN_ID, CHAR_VOCAB_SIZE, decodeChars, encodeChars } from "./char_tokenizer.ts";
import { resolveCorpus } from "./corpus.ts";

Deno.test("encodeChars() maps ASCII characters to their code points", () => {
  deepEqual([...encodeChars("A")], [65]);
  deepEqual([...encodeChars("a\n ~\x00\x7f")], [97, 10, 32, 126, 0, 127]);
  ok(encodeChars("x") instanceof Int32Array);
  deepEqual(encodeChars(""), new Int32Array());
});

Deno.test("encodeChars() maps each non-ASCII code point to one '?'", () => {
  equal(CHAR_UNKNOWN_ID, "?".charCodeAt(0));
  deepEqual([...encodeChars("é")], [63]);
  deepEqual([...encodeChars("😀")], [63]);
  deepEqual([...encodeChars("café 😀!")], [99, 97, 102, 63, 32, 63, 33]);
  // Lone surrogates are not pairs: each is its own unknown character.
  deepEqual([...encodeChars("\ud83dA\ude00")], [63, 65, 63]);
  deepEqual([...encodeChars("a\ud83d")], [97, 63]);
});

Deno.test("decodeChars() inverts encodeChars() and rejects ids outside the vocabulary", () => {
  equal(decodeChars(encodeChars("Hello, world!\n")), "Hello, world!\n");
  equal(decodeChars(encodeChars("naïve 😀")), "na?ve ?");
  equal(decodeChars([]), "");
  throws(
    () => decodeChars([65, CHAR_VOCAB_SIZE]),
    new RangeError('Cannot decode token id "128" at index 1: outside the vocabulary [0, 128)'),
  );
  throws(() => decodeChars([-1]), RangeError);
  throws(() => decodeChars([1.5]), RangeError);
});

Deno.test("encodeChars() round-trips the real Tiny Shakespeare", async () => {
  const { text } = await resolveCorpus("tinyshakespeare");
  const ids = encodeChars(text);
  equal(ids.length, 1_115_394);
  equal(decodeChars(ids), text);
  equal(new Set(ids).size, 65);
  equal(ids.reduce((a, b) => Math.max(a, b)), 122);
});

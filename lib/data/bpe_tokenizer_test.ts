import assert from "node:assert/strict";
import {
  decodeGpt2,
  encodeGpt2,
  GPT2_EOT,
  GPT2_TOKENIZER,
  GPT2_VOCAB_SIZE,
} from "./bpe_tokenizer.ts";

Deno.test("encodeGpt2() gives GPT-2's known ids", () => {
  assert.deepEqual(encodeGpt2("Hello world"), Int32Array.from([15496, 995]));
  assert.deepEqual([...encodeGpt2("The quick brown fox")], [464, 2068, 7586, 21831]);
  assert.deepEqual([...encodeGpt2("hello")], [31373]);
  assert.deepEqual([...encodeGpt2("")], []);
  // tiktoken's encode_ordinary: the special token's text is ordinary characters.
  assert.deepEqual([...encodeGpt2("<|endoftext|>")], [27, 91, 437, 1659, 5239, 91, 29]);
  assert.ok(!encodeGpt2("a<|endoftext|>b").includes(GPT2_EOT));
});

Deno.test("decodeGpt2() inverts encodeGpt2() on ASCII, unicode and whitespace", () => {
  for (
    const text of [
      "Hello world",
      "  leading spaces, tabs\tand\nnewlines\r\n\n",
      "naïve café — “quotes” ünïcödé",
      "日本語のテキスト and 中文",
      "emoji 😀👍🏽 and a flag 🇺🇦",
      "<|endoftext|> stays text",
    ]
  ) {
    const ids = encodeGpt2(text);
    assert.ok(ids.every((id) => id >= 0 && id < GPT2_VOCAB_SIZE));
    assert.equal(decodeGpt2(ids), text);
  }
  assert.equal(decodeGpt2([GPT2_EOT]), "<|endoftext|>");
  assert.throws(() => decodeGpt2([15496, 50257]), /token id "50257" at index 1: outside/);
  assert.throws(() => decodeGpt2([-1]), RangeError);
});

Deno.test("GPT2_TOKENIZER separates documents with <|endoftext|>", () => {
  assert.equal(GPT2_TOKENIZER.name, "gpt2");
  assert.equal(GPT2_TOKENIZER.documentSeparator, 50256);
  assert.deepEqual(GPT2_TOKENIZER.encode("Hello world"), Int32Array.from([15496, 995]));
});

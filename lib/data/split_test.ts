import { deepEqual, equal, throws } from "node:assert/strict";
import { decodeChars, encodeChars } from "./char_tokenizer.ts";
import { resolveCorpus } from "./corpus.ts";
import { splitTrainVal, trainLength } from "./split.ts";

Deno.test("trainLength() rounds floor(0.9·n) down to a multiple of 256", () => {
  // n: floor(0.9·n) -> aligned
  equal(trainLength(0), 0);
  equal(trainLength(10), 0); // 9 -> 0
  equal(trainLength(284), 0); // 255 -> 0
  equal(trainLength(285), 256); // 256 -> 256
  equal(trainLength(1000), 768); // 900 -> 768
  equal(trainLength(2845), 2560); // 2560 -> 2560
  equal(trainLength(2844), 2304); // 2559 -> 2304
  equal(trainLength(1_115_394), 1_003_776); // 1,003,854 -> 1,003,776
  throws(
    () => trainLength(-1),
    new RangeError('Cannot split "-1" tokens: not a non-negative integer'),
  );
  throws(() => trainLength(2.5), RangeError);
});

Deno.test("splitTrainVal() returns a prefix and the rest as views of the tokens", () => {
  const tokens = Int32Array.from({ length: 300 }, (_, i) => i);
  const { train, val } = splitTrainVal(tokens);
  equal(train.length, 256);
  equal(val.length, 44);
  equal(train[255], 255);
  equal(val[0], 256);
  equal(train.buffer, tokens.buffer);
  deepEqual(splitTrainVal(new Int32Array(5)), { train: new Int32Array(), val: new Int32Array(5) });
});

Deno.test("splitTrainVal() cuts the real Tiny Shakespeare at 1,003,776 / 111,618", async () => {
  const { text } = await resolveCorpus("tinyshakespeare");
  const { train, val } = splitTrainVal(encodeChars(text));
  equal(train.length, 1_003_776);
  equal(val.length, 111_618);
  equal(decodeChars(val.subarray(0, 21)), "f revenge.\n\nBAPTISTA:");
  equal(decodeChars(train.subarray(0, 14)), "First Citizen:");
});

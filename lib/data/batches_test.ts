import { deepEqual, equal, notEqual, throws } from "node:assert/strict";
import { BatchLoader, evalBatches, type TokenBatch } from "./batches.ts";

// Token i has value 100 + i, so every expected batch can be written from its offsets.
function ramp(length: number): Int32Array {
  return Int32Array.from({ length }, (_, i) => 100 + i);
}

function plain(batch: TokenBatch): { inputs: number[]; targets: number[]; shape: number[] } {
  return { inputs: [...batch.inputs], targets: [...batch.targets], shape: [...batch.shape] };
}

Deno.test("BatchLoader.next() reads consecutive windows with targets shifted by one", () => {
  const loader = new BatchLoader(ramp(20), { batchSize: 2, seqLen: 3 });
  equal(loader.batchesPerEpoch, 3); // floor(19 / 6)
  deepEqual(plain(loader.next()), {
    inputs: [100, 101, 102, 103, 104, 105],
    targets: [101, 102, 103, 104, 105, 106],
    shape: [2, 3],
  });
  equal(loader.cursor, 6);
  deepEqual(plain(loader.next()), {
    inputs: [106, 107, 108, 109, 110, 111],
    targets: [107, 108, 109, 110, 111, 112],
    shape: [2, 3],
  });
  equal(loader.cursor, 12);
});

Deno.test("BatchLoader.next() wraps to 0 when the next batch would overrun", () => {
  // 19 tokens: batches at 0, 6 and 12 fit (12 + 6 + 1 = 19); one at 18 would not.
  const loader = new BatchLoader(ramp(19), { batchSize: 2, seqLen: 3 });
  loader.next();
  loader.next();
  const third = loader.next();
  deepEqual([...third.targets], [113, 114, 115, 116, 117, 118]);
  equal(loader.cursor, 0);
  deepEqual([...loader.next().inputs], [100, 101, 102, 103, 104, 105]);

  // 18 tokens: the batch at 12 would need token 18 as its last target, so it is never read.
  const short = new BatchLoader(ramp(18), { batchSize: 2, seqLen: 3 });
  equal(short.batchesPerEpoch, 2);
  short.next();
  short.next();
  equal(short.cursor, 0);
});

Deno.test("BatchLoader.batchesPerEpoch matches the reference's 61 train and 6 val batches", () => {
  const sizes = { batchSize: 128, seqLen: 128 };
  equal(new BatchLoader(new Int32Array(1_003_776), sizes).batchesPerEpoch, 61);
  equal(new BatchLoader(new Int32Array(111_618), sizes).batchesPerEpoch, 6);
});

Deno.test("BatchLoader.cursor saved and restored gives the same next batch", () => {
  const tokens = ramp(50);
  const sizes = { batchSize: 2, seqLen: 4 };
  const original = new BatchLoader(tokens, sizes);
  original.next();
  original.next();
  const saved: number = JSON.parse(JSON.stringify(original.cursor));

  const resumed = new BatchLoader(tokens, { ...sizes, cursor: saved });
  const assigned = new BatchLoader(tokens, sizes);
  assigned.cursor = saved;
  for (let i = 0; i < 8; i++) {
    const expected = plain(original.next());
    deepEqual(plain(resumed.next()), expected);
    deepEqual(plain(assigned.next()), expected);
  }
  equal(resumed.cursor, original.cursor);
});

Deno.test("BatchLoader.next() returns copies, not views of the tokens", () => {
  const tokens = ramp(10);
  const batch = new BatchLoader(tokens, { batchSize: 1, seqLen: 4 }).next();
  batch.inputs[0] = -1;
  equal(tokens[0], 100);
  notEqual(batch.inputs.buffer, tokens.buffer);
});

Deno.test("BatchLoader rejects bad sizes and cursors", () => {
  throws(
    () => new BatchLoader(ramp(6), { batchSize: 2, seqLen: 3 }),
    new RangeError('Cannot read batches of 2x3 tokens from "6" tokens: one batch needs 7'),
  );
  throws(
    () => new BatchLoader(ramp(20), { batchSize: 0, seqLen: 3 }),
    new RangeError('Cannot use batch size "0": not a positive integer'),
  );
  throws(() => new BatchLoader(ramp(20), { batchSize: 2, seqLen: 1.5 }), RangeError);
  throws(
    () => new BatchLoader(ramp(20), { batchSize: 2, seqLen: 3, cursor: 14 }),
    new RangeError(
      'Cannot set batch cursor to "14": must be an integer in [0, 13] for 2x3 batches of "20" tokens',
    ),
  );
  const loader = new BatchLoader(ramp(20), { batchSize: 2, seqLen: 3 });
  throws(() => (loader.cursor = -1), RangeError);
  throws(() => (loader.cursor = 0.5), RangeError);
  equal(loader.cursor, 0);
  loader.cursor = 13;
  deepEqual([...loader.next().targets], [114, 115, 116, 117, 118, 119]);
});

Deno.test("evalBatches() yields the first M windows once, in batches of at most B", () => {
  const batches = [...evalBatches(ramp(20), { windows: 5, seqLen: 3, batchSize: 2 })].map(plain);
  deepEqual(batches, [
    {
      inputs: [100, 101, 102, 103, 104, 105],
      targets: [101, 102, 103, 104, 105, 106],
      shape: [2, 3],
    },
    {
      inputs: [106, 107, 108, 109, 110, 111],
      targets: [107, 108, 109, 110, 111, 112],
      shape: [2, 3],
    },
    { inputs: [112, 113, 114], targets: [113, 114, 115], shape: [1, 3] },
  ]);
  // M·T + 1 tokens are exactly enough.
  equal([...evalBatches(ramp(16), { windows: 5, seqLen: 3, batchSize: 5 })].length, 1);
});

Deno.test("evalBatches() rejects sizes that do not fit when called", () => {
  throws(
    () => evalBatches(ramp(15), { windows: 5, seqLen: 3, batchSize: 2 }),
    new RangeError('Cannot read 5 windows of 3 tokens from "15" tokens: they need 16'),
  );
  throws(
    () => evalBatches(ramp(15), { windows: 0, seqLen: 3, batchSize: 2 }),
    new RangeError('Cannot use window count "0": not a positive integer'),
  );
  throws(() => evalBatches(ramp(15), { windows: 1, seqLen: 3, batchSize: -2 }), RangeError);
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { decode, encode, initSaeValues, reconstructionLoss, type SaeWeights } from "./sae.ts";
import { createRng } from "../util/rng.ts";

function weights(v: ReturnType<typeof initSaeValues>, d: number, f: number): SaeWeights {
  return {
    wEnc: tf.tensor2d(v.wEnc, [d, f]),
    bEnc: tf.tensor1d(v.bEnc),
    wDec: tf.tensor2d(v.wDec, [f, d]),
    bDec: tf.tensor1d(v.bDec),
  };
}

Deno.test("initSaeValues() draws W_dec in ±√(6/D), W_enc = W_decᵀ, zero biases", () => {
  const v = initSaeValues(4, 6, createRng(1));
  const bound = Math.sqrt(6 / 4);
  assert.ok(v.wDec.every((x) => Math.abs(x) <= bound));
  assert.ok(Math.max(...v.wDec.map(Math.abs)) > 0.5 * bound);
  for (let f = 0; f < 6; f++) {
    for (let i = 0; i < 4; i++) assert.equal(v.wEnc[i * 6 + f], v.wDec[f * 4 + i]);
  }
  assert.ok(v.bEnc.every((x) => x === 0) && v.bDec.every((x) => x === 0));
});

Deno.test("encode() and decode() match a hand computation", async () => {
  // D = 2, F = 3, k = 1: W_enc = [[1, 0, 1], [0, 1, 1]], b_dec = [1, 0], b_enc = [0, 0, -1].
  const w: SaeWeights = {
    wEnc: tf.tensor2d([[1, 0, 1], [0, 1, 1]]),
    bEnc: tf.tensor1d([0, 0, -1]),
    wDec: tf.tensor2d([[1, 0], [0, 1], [0.5, 0.5]]),
    bDec: tf.tensor1d([1, 0]),
  };
  const x = tf.tensor2d([[3, 1], [1, 4]]);
  // x − b_dec = [[2, 1], [0, 4]] → pre = [[2, 1, 2], [0, 4, 3]] → top-1 = [[2, 0, 0], [0, 4, 0]]
  const f = encode(w, x, 1);
  assert.deepEqual([...(await f.data())], [2, 0, 0, 0, 4, 0]);
  assert.deepEqual([...(await decode(w, f).data())], [3, 0, 1, 4]);
  // Errors [0, 1] and [0, 0]: (1 + 0) / 2 tokens.
  assert.equal((await reconstructionLoss(x, decode(w, f)).data())[0], 0.5);
});

Deno.test("an SAE with all features kept reconstructs an input in its span exactly", async () => {
  const v = initSaeValues(3, 3, createRng(2));
  // Make W_dec the identity and W_enc its inverse; k = F keeps everything positive.
  const w = weights(v, 3, 3);
  w.wEnc = tf.eye(3) as tf.Tensor2D;
  w.wDec = tf.eye(3) as tf.Tensor2D;
  const x = tf.tensor2d([[0.5, 2, 1], [3, 0.25, 4]]);
  assert.equal((await reconstructionLoss(x, decode(w, encode(w, x, 3))).data())[0], 0);
});

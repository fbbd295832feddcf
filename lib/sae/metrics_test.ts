import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { crossEntropy, GPT } from "../model/gpt.ts";
import { createRng } from "../util/rng.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "./architectures.ts";
import { evaluateSaes, reconstructionMetrics, type SaeEvaluation } from "./metrics.ts";
import { layoutPosition, type Position, POSITIONS } from "./positions.ts";
import { decode, encode } from "./sae.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";

const D = TINY.dModel, T = TINY.nCtx, SEQUENCES = 5;

/** Synthetic validation tokens: random ids, enough for SEQUENCES windows and their targets. */
function randomTokens(seed: number): Int32Array {
  const rng = createRng(seed);
  return Int32Array.from({ length: SEQUENCES * T + 1 }, () => rng.int(TINY.vocabSize));
}

const config = (arch: SaeConfig["arch"] = "topk"): SaeConfig => ({
  arch,
  features: 16,
  k: 3,
  jsaeLambda: 0,
});

/**
 * The set's hooks with a lossless dictionary: W_enc = [I, −I], W_dec = [I; −I], zero biases and
 * k = 2D, so x̂ = relu(x) − relu(−x) = x exactly.
 */
function perfectSaes(base: SaeSet): SaeSet {
  const wEnc = tf.concat([tf.eye(D), tf.eye(D).neg()], 1) as tf.Tensor2D;
  const wDec = tf.concat([tf.eye(D), tf.eye(D).neg()], 0) as tf.Tensor2D;
  const bEnc = tf.zeros([2 * D]) as tf.Tensor1D, bDec = tf.zeros([D]) as tf.Tensor1D;
  return {
    arch: base.arch,
    hooks: base.hooks,
    k: 2 * D,
    params: base.params,
    width: () => 2 * D,
    weights: () => ({ wEnc, bEnc, wDec, bDec }),
    dispose: () => {
      tf.dispose([wEnc, wDec, bEnc, bDec]);
      base.dispose();
    },
  };
}

const evaluate = (model: GPT, saes: SaeSet, tokens: Int32Array, batchSequences = SEQUENCES) =>
  evaluateSaes({ model, saes, tokens, sequences: SEQUENCES, batchSequences, log: () => {} });

/** Fits the tiny model to a repeating sequence, so that zeroing a hook visibly costs loss. */
function trainedModel(): { model: GPT; tokens: Int32Array } {
  const model = GPT.init(TINY, 1);
  const tokens = Int32Array.from({ length: SEQUENCES * T + 1 }, (_, i) => (i * 3) % 7);
  const inputs = tf.tensor2d(tokens.slice(0, SEQUENCES * T), [SEQUENCES, T], "int32");
  const targets = tf.tensor2d(tokens.slice(1), [SEQUENCES, T], "int32");
  const optimizer = tf.train.adam(3e-2);
  const params = [...model.params.values()];
  for (let step = 0; step < 60; step++) {
    optimizer.minimize(() => crossEntropy(model.forward(inputs), targets), false, params);
  }
  optimizer.dispose();
  tf.dispose([inputs, targets]);
  return { model, tokens };
}

for (const position of POSITIONS) {
  Deno.test(`evaluateSaes() finds a perfect SAE at "${position}" costs nothing`, async () => {
    const model = GPT.init(TINY, 1);
    const saes = perfectSaes(buildSaes(config(), layoutPosition(position, 2), D, 0));
    const before = tf.memory().numTensors;
    const r = await evaluate(model, saes, randomTokens(2), 2); // 3 batches, the last short
    assert.equal(tf.memory().numTensors, before, "evaluateSaes() leaks tensors");
    for (const hook of saes.hooks) {
      const m = r.saes[hook]!;
      assert.ok(Math.abs(m.ce_loss_increase) < 1e-5, `${hook}: ${m.ce_loss_increase}`);
      assert.ok(Math.abs(m.kl_div_with_sae) < 1e-6, `${hook}: ${m.kl_div_with_sae}`);
      assert.ok(m.fvu < 1e-10 && m.mse < 1e-10, `${hook}: fvu ${m.fvu}, mse ${m.mse}`);
      assert.ok(Math.abs(m.l2_ratio - 1) < 1e-6);
      assert.equal(m.tokens, SEQUENCES * T);
    }
    assert.ok(Math.abs(r.run.ce_loss_all_increase) < 1e-5);
    assert.ok(Math.abs(r.run.kl_div_all_saes) < 1e-6);
    saes.dispose();
    model.dispose();
  });
}

Deno.test("reconstructionMetrics() matches a hand computation", () => {
  // x = [[1, 0], [3, 4]], x̂ = [[1, 0], [3, 3]]: squared errors 0 and 1 → mse 0.5. μ = [2, 2],
  // Σ‖x − μ‖² = (1 + 4) + (1 + 4) = 10 → fvu 1/10. Features: token 0 fires #0, token 1 fires #0
  // and #2 → l0 1.5, #1 dead → 1/3. ‖x̂‖/‖x‖ = 1/1 and √18/5.
  const m = reconstructionMetrics([1, 0, 3, 4], [1, 0, 3, 3], [2, 0, 0, 1, 0, 3], 2);
  assert.equal(m.mse, 0.5);
  assert.equal(m.fvu, 0.1);
  assert.ok(Math.abs(m.explained_variance - 0.9) < 1e-15);
  assert.equal(m.l0, 1.5);
  assert.equal(m.dead_fraction, 1 / 3);
  assert.equal(m.l2_ratio, (1 + Math.sqrt(18) / 5) / 2);
  assert.equal(m.tokens, 2);
  // A zero activation divides by 1 rather than 0 (SAELens's guard); a constant x has no variance.
  const zero = reconstructionMetrics([0, 0], [3, 4], [1], 2);
  assert.equal(zero.l2_ratio, 5);
  assert.equal(zero.fvu, Infinity);
  assert.throws(() => reconstructionMetrics([1, 2, 3], [1, 2, 3], [1], 2), RangeError);
});

Deno.test("evaluateSaes() agrees with the definitions on the model's own activations", async () => {
  tf.engine().startScope();
  const model = GPT.init(TINY, 1);
  const saes = buildSaes(config("staircase"), layoutPosition("mlp", 2), D, 3);
  const tokens = randomTokens(4);
  const r = await evaluate(model, saes, tokens, 2);
  const inputs = tf.tensor2d(tokens.slice(0, SEQUENCES * T), [SEQUENCES, T], "int32");
  const targets = tf.tensor2d(tokens.slice(1, SEQUENCES * T + 1), [SEQUENCES, T], "int32");
  const { cache } = model.run({ tokens: inputs, cache: saes.hooks });
  const close = (a: number, b: number, what: string) =>
    assert.ok(Math.abs(a - b) <= 1e-5 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
  const replace = (hook: string) => (v: tf.Tensor) => {
    const w = saes.weights(hook);
    return decode(w, encode(w, v.reshape([-1, D]) as tf.Tensor2D, saes.k)).reshape(v.shape);
  };
  const ce = async (patches: Map<string, (v: tf.Tensor) => tf.Tensor>) =>
    (await crossEntropy(model.run({ tokens: inputs, patches }).output, targets).data())[0]!;
  for (const hook of saes.hooks) {
    // Reconstruction metrics from the arrays, and CE from a full run with the patch.
    const w = saes.weights(hook);
    const x = cache.get(hook)!.reshape([-1, D]) as tf.Tensor2D;
    const f = encode(w, x, saes.k);
    const expected = reconstructionMetrics(
      await x.data(),
      await decode(w, f).data(),
      await f.data(),
      D,
    );
    const m = r.saes[hook]!;
    for (const key of ["mse", "fvu", "l0", "dead_fraction", "l2_ratio"] as const) {
      close(m[key], expected[key], `${hook} ${key}`);
    }
    close(m.ce_loss_with_sae, await ce(new Map([[hook, replace(hook)]])), `${hook} CE`);
    const zero = (v: tf.Tensor) => tf.zerosLike(v);
    close(m.ce_loss_with_ablation, await ce(new Map([[hook, zero]])), `${hook} ablation CE`);
  }
  close(r.run.ce_loss_clean, await ce(new Map()), "clean CE");
  const everySae = new Map(saes.hooks.map((h) => [h, replace(h)]));
  close(r.run.ce_loss_all_saes, await ce(everySae), "all-SAE CE");
  assert.ok(Math.abs(r.run.ce_loss_all_increase) > 1e-4, "random SAEs must change the loss");
  saes.dispose();
  model.dispose();
  tf.engine().endScope();
});

Deno.test("evaluateSaes() scores a perfect SAE 1, zero ablation above the clean CE", async () => {
  const { model, tokens } = trainedModel();
  const saes = perfectSaes(buildSaes(config(), layoutPosition("block", 2), D, 0));
  const r = await evaluate(model, saes, tokens);
  assert.ok(r.run.ce_loss_clean < 0.5 * Math.log(TINY.vocabSize), "the model should have learned");
  for (const hook of saes.hooks) {
    const m = r.saes[hook]!;
    assert.ok(m.ce_loss_with_ablation > m.ce_loss_without_sae + 0.1, `${hook}`);
    assert.ok(Math.abs(m.ce_loss_score - 1) < 1e-5, `${hook}: ${m.ce_loss_score}`);
    assert.ok(m.kl_div_with_ablation > 0 && Math.abs(m.kl_div_score - 1) < 1e-5);
  }
  saes.dispose();
  model.dispose();
});

/** The evaluation's numbers, flattened to name → value. */
function flatten(r: SaeEvaluation): Map<string, number> {
  const out = new Map(Object.entries(r.run).map(([k, v]) => [`run.${k}`, v]));
  for (const [hook, m] of Object.entries(r.saes)) {
    for (const [k, v] of Object.entries(m)) out.set(`${hook}.${k}`, v);
  }
  return out;
}

// Every architecture once, each at a position it serves.
const CASES: [SaeConfig["arch"], Position][] = [
  ["topk", "mlp"],
  ["jsae", "mlp"],
  ["staircase", "block"],
  ["staircase-detached", "mlp-block"],
];
for (const [arch, position] of CASES) {
  Deno.test(`evaluateSaes() of "${arch}" at "${position}" ignores the batch size`, async () => {
    const model = GPT.init(TINY, 5);
    const saes = buildSaes(config(arch), layoutPosition(position, 2), D, 6);
    const tokens = randomTokens(7);
    const one = flatten(await evaluate(model, saes, tokens, 1));
    const all = flatten(await evaluate(model, saes, tokens, SEQUENCES));
    assert.deepEqual([...one.keys()], [...all.keys()]);
    for (const [key, a] of one) {
      const b = all.get(key)!;
      assert.ok(Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), `${key}: ${a} vs ${b}`);
    }
    saes.dispose();
    model.dispose();
  });
}

Deno.test("evaluateSaes() refuses bad sizes and unknown hooks before any work", async () => {
  const model = GPT.init(TINY, 1);
  const saes = buildSaes(config(), layoutPosition("mlp", 2), D, 0);
  const tokens = randomTokens(1);
  await assert.rejects(
    evaluateSaes({ model, saes, tokens, sequences: SEQUENCES + 1, batchSequences: 2 }),
    /Cannot read 6 windows of 6 tokens/,
  );
  await assert.rejects(
    evaluateSaes({ model, saes, tokens, sequences: 2, batchSequences: 0 }),
    RangeError,
  );
  const wrong = { ...saes, hooks: ["blocks.7.hook_mlp_in"] };
  await assert.rejects(
    evaluateSaes({ model, saes: wrong, tokens, sequences: 2, batchSequences: 1 }),
    /Cannot evaluate the SAE at "blocks.7.hook_mlp_in": the model has no such hook/,
  );
  saes.dispose();
  model.dispose();
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import {
  countParameters,
  crossEntropy,
  dynamicTanh,
  GPT,
  hookNames,
  layerNorm,
  LOGITS,
  SHAKESPEARE_64X4,
} from "./gpt.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { TINY } from "./testdata/tiny_gpt.ts";

function randomTokens(seed: number, b: number, t: number, vocab: number): tf.Tensor2D {
  const rng = createRng(seed);
  return tf.tensor2d(Array.from({ length: b * t }, () => rng.int(vocab)), [b, t], "int32");
}

async function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const d = tf.tidy(() => tf.abs(tf.sub(a, b)).max());
  const v = (await d.data())[0]!;
  d.dispose();
  return v;
}

Deno.test("countParameters() gives the toy model's 216,448 parameters", () => {
  assert.equal(countParameters(SHAKESPEARE_64X4), 216_448);
});

Deno.test("GPT.init() is reproducible from its seed and differs between seeds", async () => {
  const [a, b, c] = [GPT.init(TINY, 1), GPT.init(TINY, 1), GPT.init(TINY, 2)];
  const [va, vb, vc] = await Promise.all([a, b, c].map((m) => m.parameterValues()));
  assert.deepEqual(va.get("h.0.mlp.c_fc.weight"), vb.get("h.0.mlp.c_fc.weight"));
  assert.notDeepEqual(va.get("h.0.mlp.c_fc.weight"), vc.get("h.0.mlp.c_fc.weight"));
  // Residual projections are scaled by (2·nLayer)^-½ = 0.5 here.
  const std = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
  const big = GPT.init(SHAKESPEARE_64X4, 0);
  const values = await big.parameterValues();
  assert.ok(Math.abs(std(values.get("h.0.mlp.c_fc.weight")!) - 0.02) < 0.001);
  assert.ok(Math.abs(std(values.get("h.0.mlp.c_proj.weight")!) - 0.02 / Math.sqrt(8)) < 0.0005);
  for (const m of [a, b, c, big]) m.dispose();
});

Deno.test("GPT.forward() gives logits whose first position ignores later tokens", async () => {
  const model = GPT.init(TINY, 3);
  const ids = Array.from({ length: 12 }, (_, i) => (i * 7) % TINY.vocabSize);
  const x = tf.tensor2d(ids, [2, 6], "int32");
  ids[5] = (ids[5]! + 1) % TINY.vocabSize; // change only the last token of row 0
  const y = tf.tensor2d(ids, [2, 6], "int32");
  const [a, b] = [model.forward(x), model.forward(y)];
  assert.deepEqual(a.shape, [2, 6, TINY.vocabSize]);
  const early = await maxAbsDiff(a.slice([0, 0, 0], [1, 5, -1]), b.slice([0, 0, 0], [1, 5, -1]));
  const last = await maxAbsDiff(a.slice([0, 5, 0], [1, 1, -1]), b.slice([0, 5, 0], [1, 1, -1]));
  assert.equal(early, 0, "causal mask leaks future tokens");
  assert.ok(last > 0);
  model.dispose();
});

Deno.test("GPT.run() with every hook patched by its own value leaves the logits unchanged", async () => {
  const model = GPT.init(SHAKESPEARE_64X4, 0);
  const tokens = randomTokens(5, 2, 32, 128);
  const clean = model.forward(tokens);
  const patches = new Map(hookNames(model.config).map((h) => [h, (v: tf.Tensor) => v.clone()]));
  const patched = model.run({ tokens, patches }).output;
  assert.ok((await maxAbsDiff(clean, patched)) < 1e-5);
  // A patch that changes the activation must change the logits.
  const zeroed = model.run({
    tokens,
    patches: new Map([["blocks.2.hook_mlp_out", (v: tf.Tensor) => tf.zerosLike(v)]]),
  }).output;
  assert.ok((await maxAbsDiff(clean, zeroed)) > 1e-3);
  model.dispose();
});

Deno.test("GPT.run() from any hook to any later hook equals the full forward pass", async () => {
  const model = GPT.init(TINY, 7);
  const tokens = randomTokens(8, 3, 5, TINY.vocabSize);
  const names = hookNames(TINY);
  const full = model.run({ tokens, cache: names });
  const logits = full.output;
  for (const start of names.filter((n) => n !== "hook_embed")) {
    for (const stop of [...names.slice(names.indexOf(start)), LOGITS]) {
      const out = model.run({
        start: { hook: start, value: full.cache.get(start)!, context: full.cache },
        stopAt: stop,
      }).output;
      const expected = stop === LOGITS ? logits : full.cache.get(stop)!;
      assert.ok((await maxAbsDiff(out, expected)) < 1e-6, `${start} → ${stop}`);
    }
  }
  model.dispose();
});

Deno.test("GPT.run() names the missing skip connection when started mid-block", () => {
  const model = GPT.init(TINY, 7);
  const value = tf.zeros([1, 3, TINY.dModel]);
  assert.throws(
    () => model.run({ start: { hook: "blocks.1.hook_mlp_in", value } }),
    /Cannot run from "blocks\.1\.hook_mlp_in": it needs "blocks\.1\.hook_resid_mid" in start\.context/,
  );
  assert.throws(
    () => model.run({ start: { hook: "blocks.9.hook_resid_pre", value } }),
    /no such hook/,
  );
  assert.throws(
    () => model.run({ start: { hook: "blocks.1.hook_resid_pre", value }, stopAt: "hook_embed" }),
    /comes earlier/,
  );
  model.dispose();
});

Deno.test("GPT gradients match central finite differences on a tiny model", async () => {
  const model = GPT.init(TINY, 11);
  const tokens = randomTokens(12, 2, 6, TINY.vocabSize);
  const targets = randomTokens(13, 2, 6, TINY.vocabSize);
  // Bigger weights than the 0.02 init make every layer's contribution visible in the loss.
  const rng = createRng(14);
  for (const v of model.params.values()) {
    v.assign(v.add(tf.randomUniform(v.shape, -0.3, 0.3, "float32", rng.int(1e9))));
  }
  const loss = () => crossEntropy(model.forward(tokens), targets);
  const vars = [...model.params.values()];
  const { grads } = tf.variableGrads(loss, vars);
  // One random direction through all parameters at once: its derivative is large enough to
  // compare in float32, and a wrong gradient anywhere shifts it.
  const dirs = vars.map((v) => tf.randomNormal(v.shape, 0, 1, "float32", rng.int(1e9)));
  const analytic =
    (await tf.addN(vars.map((v, i) => grads[v.name]!.mul(dirs[i]!).sum())).data())[0]!;
  const eps = 1e-3;
  const originals = vars.map((v) => v.clone());
  const lossAt = async (sign: number) => {
    vars.forEach((v, i) => v.assign(originals[i]!.add(dirs[i]!.mul(sign * eps))));
    return (await loss().data())[0]!;
  };
  const numeric = ((await lossAt(1)) - (await lossAt(-1))) / (2 * eps);
  assert.ok(
    Math.abs(numeric - analytic) < 2e-2 * Math.abs(analytic) + 1e-3,
    `analytic ${analytic} vs numeric ${numeric}`,
  );
  // And per parameter group, so that a wrong gradient in one place cannot hide behind the others.
  for (const [i, v] of vars.entries()) {
    if (
      !v.name.includes("h.1.attn.c_attn") && !v.name.includes("wpe") && !v.name.includes("ln_f")
    ) continue;
    vars.forEach((w, j) => w.assign(originals[j]!));
    const g = (await grads[v.name]!.mul(dirs[i]!).sum().data())[0]!;
    v.assign(originals[i]!.add(dirs[i]!.mul(eps)));
    const up = (await loss().data())[0]!;
    v.assign(originals[i]!.sub(dirs[i]!.mul(eps)));
    const down = (await loss().data())[0]!;
    const fd = (up - down) / (2 * eps);
    assert.ok(Math.abs(fd - g) < 3e-2 * Math.abs(g) + 2e-3, `${v.name}: analytic ${g} vs ${fd}`);
  }
  model.dispose();
});

/** Asserts that tf.grads of `loss` matches central finite differences in every input element. */
async function assertGradsMatchFiniteDifferences(
  loss: (...args: tf.Tensor[]) => tf.Scalar,
  inputs: tf.Tensor[],
): Promise<void> {
  const grads = tf.grads(loss)(inputs);
  const eps = 1e-3;
  for (const [n, t] of inputs.entries()) {
    const values = (await t.data()) as Float32Array;
    const g = await grads[n]!.data();
    for (let i = 0; i < values.length; i++) {
      const at = async (delta: number) => {
        const v = values.slice();
        v[i]! += delta;
        return (await loss(...inputs.map((u, m) => (m === n ? tf.tensor(v, t.shape) : u))).data())[
          0
        ]!;
      };
      const fd = ((await at(eps)) - (await at(-eps))) / (2 * eps);
      assert.ok(
        Math.abs(fd - g[i]!) < 2e-3 * (1 + Math.abs(fd)),
        `input ${n}[${i}]: ${g[i]} vs ${fd}`,
      );
    }
  }
}

Deno.test("dynamicTanh() gradients in x, α, γ and β match central finite differences", async () => {
  const rng = createRng(21);
  const inputs = [
    tf.tensor2d(normalArray(rng, 12, 1.5), [3, 4]), // x
    tf.tensor1d([0.7]), // α
    tf.tensor1d(normalArray(rng, 4, 1)), // γ
    tf.tensor1d(normalArray(rng, 4, 1)), // β
  ];
  const w = tf.tensor2d(normalArray(rng, 12, 1), [3, 4]);
  await assertGradsMatchFiniteDifferences(
    (x, a, g, b) => dynamicTanh(x, a!, g!, b!).mul(w).sum() as tf.Scalar,
    inputs,
  );
});

Deno.test("layerNorm()'s closed-form gradients in x, weight and bias match finite differences and autodiff", async () => {
  const rng = createRng(22);
  // Rows of a [2, 3, 5] input: the weight and bias gradients sum over both leading axes.
  const inputs = [
    tf.tensor3d(normalArray(rng, 30, 1.5), [2, 3, 5]),
    tf.tensor1d(normalArray(rng, 5, 1)),
    tf.tensor1d(normalArray(rng, 5, 1)),
  ];
  const w = tf.tensor3d(normalArray(rng, 30, 1), [2, 3, 5]);
  const loss = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) =>
    layerNorm(x, g, b).mul(w).sum() as tf.Scalar;
  await assertGradsMatchFiniteDifferences(loss, inputs);
  // The same function written out, differentiated by tfjs's autodiff through tf.moments.
  const plain = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return x.sub(mean).mul(tf.rsqrt(variance.add(1e-5))).mul(g).add(b).mul(w).sum() as tf.Scalar;
  };
  const [ours, theirs] = [tf.grads(loss)(inputs), tf.grads(plain)(inputs)];
  for (let n = 0; n < inputs.length; n++) {
    assert.ok((await maxAbsDiff(ours[n]!, theirs[n]!)) < 1e-5, `input ${n}`);
  }
  assert.ok(
    (await maxAbsDiff(
      loss(...(inputs as [tf.Tensor, tf.Tensor, tf.Tensor])),
      plain(...(inputs as [tf.Tensor, tf.Tensor, tf.Tensor])),
    )) < 1e-5,
  );
});

Deno.test("a GPT with a DynamicTanh ln_2 starts at α 2, γ 1, β 0 and applies it at hook_mlp_in", async () => {
  const model = GPT.init({ ...TINY, mlpNorm: "dyt" }, 3);
  assert.ok(!model.params.has("h.0.ln_2.weight"));
  assert.deepEqual([...await model.params.get("h.1.ln_2.alpha")!.data()], [2]);
  assert.ok((await model.params.get("h.1.ln_2.gamma")!.data()).every((v) => v === 1));
  assert.ok((await model.params.get("h.1.ln_2.beta")!.data()).every((v) => v === 0));
  // Same seed, same draws: the DynamicTanh parameters take nothing from the generator.
  const plain = GPT.init(TINY, 3);
  assert.deepEqual(
    await model.params.get("h.1.mlp.c_fc.weight")!.data(),
    await plain.params.get("h.1.mlp.c_fc.weight")!.data(),
  );
  const tokens = randomTokens(22, 2, 6, TINY.vocabSize);
  const hooks = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_in"];
  const { cache } = model.run({ tokens, stopAt: hooks[1], cache: hooks });
  const mid = (await cache.get(hooks[0]!)!.data()) as Float32Array;
  const got = await cache.get(hooks[1]!)!.data();
  mid.forEach((v, i) => assert.ok(Math.abs(got[i]! - Math.tanh(2 * v)) < 1e-6, `${i}`));
  assert.throws(
    () => new GPT({ ...TINY, mlpNorm: "rms" as "dyt" }, new Map()),
    /mlpNorm "rms" is not one of layernorm, dyt/,
  );
  model.dispose();
  plain.dispose();
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { GPT, LOGITS } from "../model/gpt.ts";
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import { layoutPosition, type Position } from "../sae/positions.ts";
import { decode, encode, type SaeWeights } from "../sae/sae.ts";
import { createRng } from "../util/rng.ts";
import {
  ablationCurve,
  Bootstrap,
  bootstrapMeanCi,
  klPerToken,
  modelSegment,
  Subcircuit,
  subcircuitFeatures,
  topkNoRelu,
} from "./ablation.ts";
import { BlockVjp } from "./block_vjp.ts";
import { randomModel } from "./testdata/random_model.ts";
import { MlpVjp } from "./mlp_vjp.ts";
import { edgeCounts, rankEdges } from "./ranking.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";

const closeArrays = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-6) => {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    assert.ok(
      Math.abs(a[i]! - b[i]!) <= tol * Math.max(1, Math.abs(b[i]!)),
      `${i}: ${a[i]} != ${b[i]}`,
    );
  }
};

Deno.test("topkNoRelu() keeps exactly k per row, negatives included, ties to the lower index", () => {
  const v = new Float32Array([
    ...[3, -1, 3, 2], // tie at 3: both kept before 2 (k = 2)
    ...[-5, -2, -3, -4], // all negative: the two largest survive
    ...[1, 1, 1, 1], // ties: columns 0 and 1
  ]);
  assert.deepEqual([...topkNoRelu(v, 3, 4, 2)], [3, 0, 3, 0, 0, -2, -3, 0, 1, 1, 0, 0]);
  assert.deepEqual([...topkNoRelu(v, 3, 4, 0)], new Array(12).fill(0));
  assert.deepEqual(topkNoRelu(v, 3, 4, 4), v);
  assert.throws(() => topkNoRelu(v, 2, 4, 1), /Cannot select the top 1 of 12 values as \[2, 4\]/);
});

Deno.test("klPerToken() equals a hand value, is 0 for equal rows and never negative", () => {
  const p = [0.5, 0.25, 0.25], q = [0.25, 0.5, 0.25];
  const logs = (x: number[]) => Float32Array.from(x.map(Math.log));
  const [kl] = klPerToken(logs(p), logs(q), 3);
  const hand = p.reduce((s, pi, i) => s + pi * (Math.log(pi + 1e-8) - Math.log(q[i]! + 1e-8)), 0);
  assert.ok(Math.abs(kl! - hand) < 1e-7);
  assert.equal(klPerToken(logs(p), logs(p), 3)[0], 0);
  // Nearly equal rows, where rounding can make the sum slightly negative: clamped at 0.
  const rng = createRng(3);
  const a = Float32Array.from({ length: 64 * 50 }, () => rng.normal() - 4);
  const b = a.map((x) => x + 1e-7 * rng.normal());
  assert.ok(klPerToken(a, b, 50).every((x) => x >= 0));
});

Deno.test("bootstrapMeanCi() brackets the mean and is reproducible from its seed", () => {
  const rng = createRng(11);
  const values = Float64Array.from({ length: 500 }, () => rng.uniform() ** 3);
  const a = bootstrapMeanCi(values, 1000, 42);
  const mean = values.reduce((s, v) => s + v, 0) / values.length;
  assert.equal(a.mean, mean);
  assert.ok(a.low < mean && mean < a.high, JSON.stringify(a));
  // The CI of a mean of 500 values: about ±2σ/√500.
  assert.ok(a.high - a.low < 0.1);
  assert.deepEqual(bootstrapMeanCi(values, 1000, 42), a);
  assert.notDeepEqual(bootstrapMeanCi(values, 1000, 43), a);
  assert.throws(() => bootstrapMeanCi([], 10, 0), /Cannot bootstrap 0 values/);
});

Deno.test("Bootstrap draws its resamples once: every series gets the seed's own draws", () => {
  const rng = createRng(12);
  const series = [0, 1, 2].map(() => Float64Array.from({ length: 300 }, () => rng.uniform()));
  // The reference's loop, drawing afresh from the seed for each series.
  const drawn = (values: Float64Array, R: number, seed: number) => {
    const draw = createRng(seed), means = new Float64Array(R), n = values.length;
    for (let r = 0; r < R; r++) {
      let sum = 0;
      for (let i = 0; i < n; i++) sum += values[draw.int(n)]!;
      means[r] = sum / n;
    }
    means.sort();
    return [means[Math.floor(0.025 * R)], means[Math.floor(0.975 * R)]];
  };
  const boot = new Bootstrap(300, 400, 5);
  for (const values of series) {
    const ci = boot.meanCi(values);
    assert.deepEqual([ci.low, ci.high], drawn(values, 400, 5));
  }
  assert.throws(() => boot.meanCi(series[0]!.subarray(1)), /Cannot bootstrap 299 values/);
});

/**
 * A hand-built 3 × 3 pair at width 2: upstream decoder rows [1, 0], [0, 1], [1, 1] with b_dec
 * [0.5, 0]; the segment doubles; downstream pre-activations (y − [0.25, 0])·W_enc + b_enc with
 * W_enc columns x₀, x₁, x₀ − x₁ and b_enc [0, −1, −0.2]. One prompt of two tokens.
 */
function handPair(k: number) {
  const up: SaeWeights = {
    wEnc: tf.tensor2d([[1, 0, 1], [0, 1, 1]]),
    bEnc: tf.tensor1d([0, 0, 0]),
    wDec: tf.tensor2d([[1, 0], [0, 1], [1, 1]]),
    bDec: tf.tensor1d([0.5, 0]),
  };
  const down: SaeWeights = {
    wEnc: tf.tensor2d([[1, 0, 1], [0, 1, -1]]),
    bEnc: tf.tensor1d([0, -1, -0.2]),
    wDec: tf.tensor2d([[1, 0], [0, 1], [1, 1]]),
    bDec: tf.tensor1d([0.25, 0]),
  };
  const z0 = tf.tensor3d([[[1, 2, 0], [0, 3, 1]]]);
  return {
    up: () => up,
    down: () => down,
    k,
    segment: (x: tf.Tensor3D) => x.mul(2) as tf.Tensor3D,
    z0,
    batchSequences: 1,
    dispose: () => tf.dispose([z0, ...Object.values(up), ...Object.values(down)]),
  };
}

const edge = (i: number, j: number) => i * 3 + j;

// Tokenwise passes decode in subcircuit.c, or in the TypeScript loop it is held to.
for (const [tokenwise, nativeDecode] of [[false, true], [true, true], [true, false]]) {
  const mode = tokenwise ? "tokenwise" : "grouped";
  const name = tokenwise && !nativeDecode ? "tokenwise, TypeScript decode" : mode;

  Deno.test(`subcircuitFeatures() of a hand-built 3 x 3 pair equals the hand computation (${name})`, async () => {
    const before = tf.memory().numTensors;
    // Kept: (0,0), (1,0), (2,1). U₀ = {0, 1}, U₁ = {2}, feature 2 has no edge.
    // j = 0, token 0: z_U = [1, 2, 0] → x̂ = [1.5, 2] → y = [3, 4] → pre₀ = 3 − 0.25 = 2.75;
    //        token 1: z_U = [0, 3, 0] → x̂ = [0.5, 3] → y = [1, 6] → pre₀ = 0.75.
    // j = 1, token 0: z_U = 0 → x̂ = b_dec = [0.5, 0] → y = [1, 0] → pre₁ = 0 − 1 = −1;
    //        token 1: z_U = [0, 0, 1] → x̂ = [1.5, 1] → y = [3, 2] → pre₁ = 2 − 1 = 1.
    const kept = [edge(0, 0), edge(1, 0), edge(2, 1)];
    const k3 = { ...handPair(3), tokenwise, nativeDecode };
    // k = 3 keeps everything: the negative pre-activation survives (no ReLU).
    closeArrays(await subcircuitFeatures({ ...k3, kept }), [2.75, -1, 0, 0.75, 1, 0]);
    k3.dispose();
    const k2 = { ...handPair(2), tokenwise, nativeDecode };
    // k = 2: token 0 keeps 2.75 and the edge-less 0 (0 > −1).
    closeArrays(await subcircuitFeatures({ ...k2, kept }), [2.75, 0, 0, 0.75, 1, 0]);
    // Nothing kept: every downstream feature is 0.
    assert.deepEqual([...await subcircuitFeatures({ ...k2, kept: [] })], new Array(6).fill(0));
    k2.dispose();
    assert.equal(tf.memory().numTensors, before);
  });

  Deno.test(`all edges: the full circuit unchanged; the assembly differs by ReLU (${name})`, async () => {
    const all = Array.from({ length: 9 }, (_, e) => e);
    // Full circuit: token 0: x̂ = [1.5, 2] → y = [3, 4] → pre = [2.75, 3, −1.45];
    //               token 1: x̂ = [1.5, 4] → y = [3, 8] → pre = [2.75, 7, −5.45].
    const o = { ...handPair(3), tokenwise, nativeDecode };
    const full = await subcircuitFeatures({ ...o, kept: all });
    closeArrays(full, [2.75, 3, 0, 2.75, 7, 0]);
    const z1 = tf.tidy(() => {
      const y = o.segment(decode(o.up(), o.z0.reshape([2, 3])).reshape([1, 2, 2]) as tf.Tensor3D);
      return encode(o.down(), y.reshape([2, 2]), 3);
    });
    assert.deepEqual(full, await z1.data()); // exactly, not approximately
    z1.dispose();
    // Without the n = E_tot shortcut, the assembled pre-activations keep their negative values.
    const sub = await Subcircuit.create(o);
    assert.equal(sub.mode, mode);
    sub.addEdges(all);
    closeArrays(await sub.features(), [2.75, 3, -1.45, 2.75, 7, -5.45]);
    o.dispose();
  });

  Deno.test(`Subcircuit recomputes only what changed (${name})`, async () => {
    const o = { ...handPair(3), tokenwise, nativeDecode };
    const sub = await Subcircuit.create(o);
    // Active features: token 0 {0, 1}, token 1 {1, 2}. Positions run, per call:
    // grouped: 2 groups × 2 tokens; tokenwise: (t0, {0}), (t0, {1}), (t1, {1}) — feature 0 at t1
    // is the shared empty-set value.
    sub.addEdges([edge(0, 0), edge(1, 1)]);
    await sub.features();
    assert.equal(sub.lastPositions, tokenwise ? 3 : 4);
    // Feature 0 only; tokenwise only at token 1, where feature 2 is active.
    sub.addEdges([edge(2, 0)]);
    const f = await sub.features();
    assert.equal(sub.lastPositions, 2 - (tokenwise ? 1 : 0));
    assert.equal(sub.lastConnected, 2);
    // Features 1 and 2 both keep {0, 1} now → one group (grouped) or two distinct (token, set).
    sub.addEdges([edge(1, 2), edge(0, 2), edge(0, 1)]);
    const g = await sub.features();
    assert.equal(sub.lastGroups, tokenwise ? 0 : 1);
    assert.equal(sub.lastPositions, 2);
    assert.equal(sub.lastConnected, 3);
    // Incremental equals from scratch, and both modes agree.
    for (const t of [false, true]) {
      const one = [edge(0, 0), edge(1, 1), edge(2, 0)];
      closeArrays(f, await subcircuitFeatures({ ...o, tokenwise: t, kept: one }));
      const all = [...one, edge(1, 2), edge(0, 2), edge(0, 1)];
      closeArrays(g, await subcircuitFeatures({ ...o, tokenwise: t, kept: all }));
    }
    assert.throws(() => sub.addEdges([9]), /Cannot keep edge 9: the pair has 9 edges/);
    // An upstream feature that is never active changes nothing: no recomputation.
    const z0 = tf.tensor3d([[[1, 2, 0], [0, 3, 0]]]);
    const quiet = await Subcircuit.create({ ...o, z0 });
    quiet.addEdges([edge(0, 0)]);
    const h = await quiet.features();
    quiet.addEdges([edge(2, 0)]);
    assert.deepEqual(await quiet.features(), h);
    assert.equal(quiet.lastPositions, 0);
    z0.dispose();
    o.dispose();
  });
}

function setup(position: Position, arch: SaeConfig["arch"] = "topk", features = 6) {
  const model = GPT.init(TINY, 1);
  const layout = layoutPosition(position, TINY.nLayer);
  const saes = buildSaes({ arch, features, k: 2, jsaeLambda: 0 }, layout, TINY.dModel, 5);
  const rng = createRng(9);
  const tokens = Int32Array.from({ length: 40 }, () => rng.int(TINY.vocabSize));
  return { model, saes, tokens, pairs: layout.pairs };
}

/** A random edge order with some zero scores. */
function order(fUp: number, fDown: number): Int32Array {
  const rng = createRng(fUp * 100 + fDown);
  const scores = Float32Array.from({ length: fUp * fDown }, () => {
    const u = rng.uniform();
    return u < 0.3 ? 0 : u;
  });
  return rankEdges(scores, fUp, fDown, 125);
}

for (
  const [position, arch] of [["mlp", "topk"], ["mlp-block", "staircase"], [
    "block",
    "topk",
  ]] as const
) {
  Deno.test(`ablationCurve() at ${position} (${arch}): KL ≥ 0, ends at the full circuit`, async () => {
    const { model, saes, tokens, pairs } = setup(position, arch);
    const before = tf.memory().numTensors;
    const pair = pairs[position === "block" ? 1 : 0]!;
    const fUp = saes.width(pair.up), fDown = saes.width(pair.down), eTot = fUp * fDown;
    const ord = order(fUp, fDown);
    const counts = edgeCounts(eTot);
    const base = {
      model,
      saes,
      pair,
      order: ord,
      tokens,
      prompts: 5,
      bootstrap: { resamples: 200, seed: 3 },
      log: () => {},
    };
    const curve = await ablationCurve({ ...base, counts, batchSequences: 3 });
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
    assert.deepEqual(curve.map((p) => p.n), counts);
    for (const p of curve) {
      for (const v of Object.values(p)) assert.ok(v >= 0 && Number.isFinite(v), JSON.stringify(p));
      assert.ok(p.klModelLow <= p.klModelHigh && p.klFullLow <= p.klFullHigh);
    }
    const last = curve.at(-1)!;
    assert.equal(last.n, eTot);
    assert.deepEqual([last.klFull, last.klFullLow, last.klFullHigh], [0, 0, 0]);
    assert.ok(last.klModel > 0);

    // Re-using work across counts, the batch size and the way of sharing change nothing beyond
    // rounding.
    if (position !== "block") {
      const grouped = await ablationCurve({ ...base, counts, batchSequences: 2, tokenwise: false });
      closeArrays(grouped.map((p) => p.klModel), curve.map((p) => p.klModel), 1e-4);
      closeArrays(grouped.map((p) => p.klFullHigh), curve.map((p) => p.klFullHigh), 1e-4);
    } else {
      await assert.rejects(
        () => ablationCurve({ ...base, counts, batchSequences: 2, tokenwise: true }),
        /Cannot share work per token .* mixes positions/,
      );
    }
    // The native segment passes and decoding (MLP and block pairs) against tfjs and TypeScript.
    // Relative to each value, not to max(1, value): these KLs are 1e-6 to 1e-2, computed from
    // float32 log-probabilities (a few 1e-4 relative between the two paths at the smallest).
    const reference = await ablationCurve({ ...base, counts, batchSequences: 3, native: false });
    reference.forEach((r, i) => {
      for (const key of ["klModel", "klFullLow"] as const) {
        const want = r[key], got = curve[i]![key];
        assert.ok(
          Math.abs(got - want) <= 1e-2 * want + 1e-9,
          `n ${r.n} ${key}: ${got} vs ${want}`,
        );
      }
    });
    const mid = counts[Math.floor(counts.length / 2)]!;
    const [alone] = await ablationCurve({ ...base, counts: [mid], batchSequences: 1 });
    const inCurve = curve.find((p) => p.n === mid)!;
    closeArrays(
      [alone!.klModel, alone!.klFull, alone!.klModelLow],
      [inCurve.klModel, inCurve.klFull, inCurve.klModelLow],
      1e-4,
    );
    saes.dispose();
    model.dispose();
  });
}

Deno.test("subcircuitFeatures() on the host segment equals tfjs's (mlp-block, block)", async () => {
  for (const position of ["mlp-block", "block"] as const) {
    const { model: init, saes, tokens, pairs } = setup(position);
    // Drawn weights: a fresh init's attention is near uniform whatever its scale.
    init.dispose();
    const model = randomModel(TINY, 3);
    const pair = pairs[1]!, prompts = 3, T = TINY.nCtx;
    const ids = tf.tensor2d(tokens.subarray(0, prompts * T), [prompts, T], "int32");
    const z0 = tf.tidy(() => {
      const x = model.run({ tokens: ids, stopAt: pair.up }).output.reshape([-1, TINY.dModel]);
      return encode(saes.weights(pair.up), x as tf.Tensor2D, 2).reshape([prompts, T, 6]);
    }) as tf.Tensor3D;
    const layer = pair.layer;
    const vjp = position === "block"
      ? await BlockVjp.open(model, layer)
      : await MlpVjp.open(model, { layer, norm: true, residual: true });
    if ("error" in vjp) throw new Error(vjp.error);
    const o = {
      up: () => saes.weights(pair.up),
      down: () => saes.weights(pair.down),
      k: 2,
      segment: modelSegment(model, pair),
      z0,
      batchSequences: 2,
      kept: order(6, 6).subarray(0, 13),
    };
    const host = (x: Float32Array, sequences: number) =>
      vjp instanceof BlockVjp ? vjp.run(x, sequences) : vjp.run(x);
    const want = await subcircuitFeatures(o);
    const got = await subcircuitFeatures({ ...o, hostSegment: host });
    assert.ok(want.some((v) => v !== 0), position);
    closeArrays(got, want, 1e-5);
    tf.dispose([ids, z0]);
    saes.dispose();
    model.dispose();
  }
});

Deno.test("ablationCurve() at mlp equals the subcircuit spliced in by hand", async () => {
  const { model, saes, tokens, pairs } = setup("mlp");
  const pair = pairs[1]!;
  const ord = order(6, 6);
  const n = 11, prompts = 3, T = TINY.nCtx, V = TINY.vocabSize;
  const [point] = await ablationCurve({
    model,
    saes,
    pair,
    order: ord,
    counts: [n],
    tokens,
    prompts,
    batchSequences: 2,
    bootstrap: { seed: 1 },
    log: () => {},
  });
  const ids = tf.tensor2d(tokens.subarray(0, prompts * T), [prompts, T], "int32");
  const clean = model.run({ tokens: ids, cache: [pair.up, "blocks.1.hook_resid_mid"] });
  const z0 = tf.tidy(() =>
    encode(saes.weights(pair.up), clean.cache.get(pair.up)!.reshape([-1, 8]), 2)
      .reshape([prompts, T, 6])
  ) as tf.Tensor3D;
  const f = await subcircuitFeatures({
    up: () => saes.weights(pair.up),
    down: () => saes.weights(pair.down),
    k: 2,
    segment: modelSegment(model, pair),
    z0,
    batchSequences: 5,
    kept: ord.subarray(0, n),
  });
  const logQ = tf.tidy(() => {
    const xHat = decode(saes.weights(pair.down), tf.tensor2d(f, [prompts * T, 6]));
    const context = new Map([[
      "blocks.1.hook_resid_mid",
      clean.cache.get("blocks.1.hook_resid_mid")!,
    ]]);
    const out = model.run({
      start: { hook: pair.down, value: xHat.reshape([prompts, T, 8]), context },
      stopAt: LOGITS,
    });
    return tf.logSoftmax(out.output.reshape([-1, V]));
  });
  const logP = tf.tidy(() => tf.logSoftmax(clean.output.reshape([-1, V])));
  const kl = klPerToken(
    (await logP.data()) as Float32Array,
    (await logQ.data()) as Float32Array,
    V,
  );
  const mean = kl.reduce((s, v) => s + v, 0) / kl.length;
  closeArrays([point!.klModel], [mean], 1e-5);
  tf.dispose([ids, clean.output, ...clean.cache.values(), z0, logQ, logP]);
  saes.dispose();
  model.dispose();
});

Deno.test("ablationCurve() at mlp-block (topk): the last point, n = E_tot, is the reference's full circuit with the clean skip", async () => {
  const { model, saes, tokens, pairs } = setup("mlp-block");
  const pair = pairs[1]!, prompts = 4, T = TINY.nCtx, V = TINY.vocabSize, D = TINY.dModel;
  const eTot = 36;
  const curve = await ablationCurve({
    model,
    saes,
    pair,
    order: order(6, 6),
    counts: edgeCounts(eTot),
    tokens,
    prompts,
    batchSequences: 3,
    bootstrap: { resamples: 50, seed: 1 },
    log: () => {},
  });
  // By hand: x = clean resid_mid, x̂ = up's reconstruction, resid_post = x + MLP(ln_2(x̂)) (the
  // reference splices only ln_2's input), then the downstream SAE and the rest of the model. The
  // skip fed with x̂ instead (the subcircuit's segment) gives another value.
  const klOf = async (skip: "clean" | "reconstructed") => {
    const kl = tf.tidy(() => {
      const ids = tf.tensor2d(tokens.subarray(0, prompts * T), [prompts, T], "int32");
      const clean = model.run({ tokens: ids, cache: [pair.up] });
      const x = clean.cache.get(pair.up)!;
      const up = saes.weights(pair.up), down = saes.weights(pair.down);
      const xHat = decode(up, encode(up, x.reshape([-1, D]), 2)).reshape([prompts, T, D]);
      const mlp =
        model.run({ start: { hook: pair.up, value: xHat }, stopAt: "blocks.1.hook_mlp_out" })
          .output;
      const residPost = mlp.add(skip === "clean" ? x : xHat);
      const z1 = encode(down, residPost.reshape([-1, D]), 2);
      const out = model.run({
        start: { hook: pair.down, value: decode(down, z1).reshape([prompts, T, D]) },
        stopAt: LOGITS,
      }).output;
      const logP = tf.logSoftmax(clean.output.reshape([-1, V]));
      return [logP, tf.logSoftmax(out.reshape([-1, V]))];
    });
    const [p, q] = await Promise.all(kl.map((t) => t.data() as Promise<Float32Array>));
    tf.dispose(kl);
    const perToken = klPerToken(p!, q!, V);
    return perToken.reduce((s, v) => s + v, 0) / perToken.length;
  };
  const last = curve.at(-1)!;
  assert.equal(last.n, eTot);
  const reference = await klOf("clean"), spliced = await klOf("reconstructed");
  closeArrays([last.klModel], [reference], 1e-5);
  assert.ok(Math.abs(spliced - reference) > 1e-3 * reference, `${spliced} vs ${reference}`);
  assert.equal(last.klFull, 0);
  saes.dispose();
  model.dispose();
});

Deno.test("ablationCurve() rejects bad counts, short orders and too few tokens", async () => {
  const { model, saes, tokens, pairs } = setup("mlp-block");
  const base = {
    model,
    saes,
    pair: pairs[0]!,
    order: order(6, 6),
    tokens,
    prompts: 2,
    batchSequences: 2,
    bootstrap: { seed: 0 },
    log: () => {},
  };
  await assert.rejects(() => ablationCurve({ ...base, counts: [4, 2] }), /increasing integers/);
  await assert.rejects(() => ablationCurve({ ...base, counts: [37] }), /in \[1, 36\]/);
  await assert.rejects(
    () => ablationCurve({ ...base, order: new Int32Array(3), counts: [4] }),
    /Cannot keep 4 edges/,
  );
  await assert.rejects(
    () => ablationCurve({ ...base, prompts: 7, counts: [4] }),
    /Cannot read 7 prompts of 6 tokens from 40 tokens/,
  );
  saes.dispose();
  model.dispose();
});

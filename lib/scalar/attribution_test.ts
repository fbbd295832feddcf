import assert from "node:assert/strict";
import { assertRelClose } from "./testdata/close.ts";
import * as tf from "@tensorflow/tfjs";
import { GPT } from "../model/gpt.ts";
import { buildSaes, type SaeSet } from "../sae/architectures.ts";
import { isTokenwisePair, layoutPosition, type Position, POSITIONS } from "../sae/positions.ts";
import { decode, encode } from "../sae/sae.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { attributePair, attributePairReference, type Attribution } from "./attribution.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";

const CONFIG = TINY;
const SEQUENCES = 5;
const quiet = () => {};

function setup(position: Position, arch: "topk" | "staircase", seed: number) {
  const model = GPT.init(CONFIG, 1);
  const layout = layoutPosition(position, CONFIG.nLayer);
  const saes = buildSaes({ arch, features: 12, k: 3, jsaeLambda: 0 }, layout, 8, seed);
  const rng = createRng(seed + 100);
  // Nonzero biases (they start at 0), so that the α = 0 point decode(0) = b_dec keeps features.
  for (const [name, v] of saes.params) {
    if (/b_(enc|dec)$/.test(name)) v.assign(tf.tensor(normalArray(rng, v.size, 0.5), v.shape));
  }
  const tokens = Int32Array.from({ length: SEQUENCES * CONFIG.nCtx + 3 }, () => rng.int(11));
  return { model, saes, pair: layout.pairs[1]!, tokens };
}

function assertNonNegative(r: Attribution, what: string): void {
  assert.ok(r.scores.every((s) => s >= 0 && Number.isFinite(s)), `${what}: negative or NaN`);
}

for (const position of POSITIONS) {
  for (const arch of ["topk", "staircase"] as const) {
    Deno.test(`attributePair() equals the per-target oracle: ${position}, ${arch}`, async () => {
      const { model, saes, pair, tokens } = setup(position, arch, 3);
      try {
        const lines: string[] = [];
        const log = (line: string) => lines.push(line);
        const common = { model, saes, pair, tokens, sequences: SEQUENCES, log };
        const before = tf.memory().numTensors;
        for (const steps of [3, 1]) {
          const ref = await attributePairReference({ ...common, batchSequences: 2, steps });
          assertNonNegative(ref, "reference");
          assert.equal(ref.up, saes.width(pair.up));
          assert.equal(ref.down, saes.width(pair.down));
          assert.equal(ref.tokens, SEQUENCES * CONFIG.nCtx);
          const variants: Parameters<typeof attributePair>[0][] = [
            { ...common, batchSequences: 2, steps },
            // Chunked targets and a budget so small that every pass holds one or two rows.
            { ...common, batchSequences: 3, steps, targetChunk: 5, memoryBytes: 40_000 },
            // Too small for the per-target Gram matrices (8 · F_down · D² bytes): the direct map.
            { ...common, batchSequences: 2, steps, targetChunk: 7, memoryBytes: 4_000 },
          ];
          if (isTokenwisePair(pair)) {
            variants.push({ ...common, batchSequences: 2, steps, mode: "sequence" });
          }
          for (const v of variants) {
            const got = await attributePair(v);
            const what = `steps ${steps}, ${got.mode}, chunk ${v.targetChunk ?? "default"}`;
            assertRelClose(got.scores, ref.scores, 1e-4, what);
            assertNonNegative(got, what);
            assert.equal(got.zeroColumns, ref.zeroColumns, what);
            assert.ok(got.gradientRows > 0);
          }
        }
        assert.equal(tf.memory().numTensors, before, "tensors leaked");
        // A block pair runs the batched block backward (block_vjp.ts), a per-token pair in token
        // mode the host clean pass and the MLP's backward (mlp_vjp.ts): not the tfjs fallback.
        assert.ok(!lines.some((l) => l.includes("autodiff")), lines.join("\n"));
      } finally {
        model.dispose();
        saes.dispose();
      }
    });
  }
}

/** Zeroes the MLP of layer 1 so that resid_post = resid_mid: the mlp-block segment is x ↦ x. */
function identitySegment(model: GPT): void {
  for (const name of ["c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"]) {
    const v = model.params.get(`h.1.mlp.${name}`)!;
    v.assign(tf.zerosLike(v));
  }
}

/**
 * By hand for an identity segment: f(z) = TopK(ReLU((z·W_dec_up + b_dec_up − b_dec_down)·W_enc_down
 * + b_enc_down)), so g_α[t, i, j] = mask_α[t, j] · M[i, j] with M = W_dec_up · W_enc_down, and
 * score[i, j] = |M[i, j]| · sqrt(Σ_t (‖z0[t]‖₂ / S · Σ_α mask_α[t, j])²).
 */
async function handScores(
  model: GPT,
  saes: SaeSet,
  pair: { up: string; down: string },
  tokens: Int32Array,
  steps: number,
): Promise<{ scores: Float32Array; inactive: number[] }> {
  const { nCtx: T } = model.config;
  const N = SEQUENCES * T, k = saes.k;
  const fUp = saes.width(pair.up), fDown = saes.width(pair.down);
  const alphas = steps === 1 ? [0] : Array.from({ length: steps }, (_, s) => s / (steps - 1));
  const parts = tf.tidy(() => {
    const ids = tf.tensor2d(tokens.subarray(0, N), [SEQUENCES, T], "int32");
    const x = model.run({ tokens: ids, stopAt: pair.up }).output.reshape([N, -1]) as tf.Tensor2D;
    const up = saes.weights(pair.up), down = saes.weights(pair.down);
    const z0 = encode(up, x, k);
    return {
      z0,
      m: tf.matMul(up.wDec, down.wEnc),
      masks: alphas.map((a) => encode(down, decode(up, z0.mul(a)), k).greater(0).toFloat()),
    };
  });
  const z0 = (await parts.z0.data()) as Float32Array;
  const m = (await parts.m.data()) as Float32Array;
  const masks: Float32Array[] = [];
  for (const t of parts.masks) masks.push((await t.data()) as Float32Array);
  tf.dispose([parts.z0, parts.m, ...parts.masks]);
  const scores = new Float32Array(fUp * fDown);
  for (let j = 0; j < fDown; j++) {
    let sum = 0;
    for (let t = 0; t < N; t++) {
      let norm = 0;
      for (let i = 0; i < fUp; i++) norm += z0[t * fUp + i]! ** 2;
      const hits = masks.reduce((acc, mask) => acc + mask[t * fDown + j]!, 0);
      sum += (Math.sqrt(norm) / steps * hits) ** 2;
    }
    for (let i = 0; i < fUp; i++) {
      scores[i * fDown + j] = Math.abs(m[i * fDown + j]!) * Math.sqrt(sum);
    }
  }
  const inactive = Array.from({ length: fUp }, (_, i) => i).filter((i) =>
    Array.from({ length: N }, (_, t) => z0[t * fUp + i]!).every((v) => v === 0)
  );
  return { scores, inactive };
}

Deno.test("attributePair() scales by the whole latent norm ‖z0‖₂ / steps (by hand)", async () => {
  const { model, saes, pair, tokens } = setup("mlp-block", "topk", 5);
  identitySegment(model);
  const common = (steps: number) => ({
    model,
    saes,
    pair,
    tokens,
    sequences: SEQUENCES,
    steps,
    log: quiet,
  });
  try {
    for (const steps of [4, 1]) {
      const hand = await handScores(model, saes, pair, tokens, steps);
      for (const mode of ["token", "sequence"] as const) {
        const got = await attributePair({ ...common(steps), batchSequences: 2, mode });
        assertRelClose(got.scores, hand.scores, 1e-5, `steps ${steps}, ${mode}`);
      }
      const ref = await attributePairReference({ ...common(steps), batchSequences: 2 });
      assertRelClose(ref.scores, hand.scores, 1e-5, `reference, steps ${steps}`);
    }
    // Textbook IG would weight by z0_i, giving 0 to upstream features never active; the
    // reference's step length gives them attribution too.
    const got = await attributePair({ ...common(2), batchSequences: 2 });
    const hand = await handScores(model, saes, pair, tokens, 2);
    assert.ok(hand.inactive.length > 0, "every upstream feature is active somewhere");
    for (const i of hand.inactive) {
      assert.ok(got.scores.subarray(i * got.down, (i + 1) * got.down).some((v) => v > 0), `${i}`);
    }
  } finally {
    model.dispose();
    saes.dispose();
  }
});

Deno.test("attributePair() gives a never-kept target feature an all-zero column", async () => {
  for (const position of ["mlp", "block"] as const) {
    const { model, saes, pair, tokens } = setup(position, "topk", 7);
    try {
      const never = 4;
      const bEnc = saes.params.get(`${pair.down}/b_enc`)!;
      const values = (await bEnc.data()) as Float32Array;
      values[never] = -1e6;
      bEnc.assign(tf.tensor1d(values));
      const common = { model, saes, pair, tokens, sequences: SEQUENCES, steps: 3, log: quiet };
      const got = await attributePair(common);
      const ref = await attributePairReference(common);
      for (const r of [got, ref]) {
        assertNonNegative(r, position);
        for (let i = 0; i < r.up; i++) assert.equal(r.scores[i * r.down + never], 0, position);
        assert.ok(r.zeroColumns >= 1);
        assert.ok(r.zeroFraction >= 1 / r.down);
      }
      assertRelClose(got.scores, ref.scores, 1e-4, position);
    } finally {
      model.dispose();
      saes.dispose();
    }
  }
});

Deno.test("attributePair() refuses token mode across attention and too few tokens", async () => {
  const { model, saes, pair, tokens } = setup("block", "topk", 1);
  try {
    await assert.rejects(
      attributePair({ model, saes, pair, tokens, sequences: 2, mode: "token", log: quiet }),
      /Cannot attribute pair blocks\.1\.hook_resid_pre → blocks\.1\.hook_resid_post in "token"/,
    );
    await assert.rejects(
      attributePair({ model, saes, pair, tokens, sequences: 6, log: quiet }),
      /Cannot read 6 sequences of 6 tokens from 33 tokens: they need 36/,
    );
    await assert.rejects(
      attributePair({ model, saes, pair, tokens, sequences: 2, steps: 0, log: quiet }),
      /Cannot attribute with steps = 0: not a positive integer/,
    );
    await assert.rejects(
      attributePairReference({ model, saes, pair, tokens, sequences: 2, targets: [99] }),
      /Cannot attribute target 99: the downstream SAE has 12 features/,
    );
  } finally {
    model.dispose();
    saes.dispose();
  }
});

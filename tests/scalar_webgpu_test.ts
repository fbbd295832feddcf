/**
 * SCALAR on the GPU: edge attribution (the batched cotangent rows) and the ablation forward passes
 * run through tfjs's WebGPU kernels give the CPU reference's numbers, to 1e-4 of the largest value,
 * at a tokenwise pair (`mlp-block`) and a pair with attention between (`block`). Here that is
 * Mesa's llvmpipe; the GPU call (`gpu/run.sh`) times the same stages on a hardware adapter.
 *
 * Skipped, saying why, when there is no WebGPU adapter.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-webgpu";
import { GPT } from "../lib/model/gpt.ts";
import { TINY } from "../lib/model/testdata/tiny_gpt.ts";
import { buildSaes } from "../lib/sae/architectures.ts";
import { requestGpu } from "../lib/sae/gpu/device.ts";
import { layoutPosition, type Position } from "../lib/sae/positions.ts";
import { ablationCurve } from "../lib/scalar/ablation.ts";
import { attributePair } from "../lib/scalar/attribution.ts";
import { edgeCounts, rankEdges } from "../lib/scalar/ranking.ts";
import type { CurvePoint } from "../lib/scalar/score.ts";
import { createRng, normalArray } from "../lib/util/rng.ts";

const gpu = await requestGpu();
if (typeof gpu === "string") console.log(`SCALAR webgpu test skipped: ${gpu}`);
const quiet = () => {};

/** max |a − b| ≤ tol · max |b|, with b not all zero. */
function assertRelClose(a: ArrayLike<number>, b: ArrayLike<number>, tol: number, what: string) {
  assert.equal(a.length, b.length, what);
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  assert.ok(scale > 0, `${what}: the reference is all zero`);
  assert.ok(diff <= tol * scale, `${what}: max |a − b| = ${diff}, max |b| = ${scale}`);
}

/** Attribution scores and the ablation curve (in the given edge order, else the scores' own). */
async function scalarOf(
  setup: ReturnType<typeof pairSetup>,
  order?: Int32Array,
): Promise<{ scores: Float32Array; order: Int32Array; curve: CurvePoint[] }> {
  const { model, saes, pair, tokens } = setup;
  const { scores } = await attributePair({
    model,
    saes,
    pair,
    tokens,
    sequences: 4,
    batchSequences: 2,
    steps: 3,
    log: quiet,
  });
  const f = saes.width(pair.up), g = saes.width(pair.down);
  order ??= rankEdges(scores, f, g, 0);
  const curve = await ablationCurve({
    model,
    saes,
    pair,
    order,
    counts: edgeCounts(f * g),
    tokens,
    prompts: 3,
    batchSequences: 2,
    bootstrap: { resamples: 50, seed: 0 },
    log: quiet,
  });
  return { scores, order, curve };
}

function pairSetup(position: Position) {
  const model = GPT.init(TINY, 1);
  // Weights 4× the initial scale: peaked next-token distributions, so that the curve's KLs
  // (1e-4 nats at the initial scale, where f32's log-probabilities are only good to ~1e-7) are
  // large enough for a 1e-4 comparison to mean something.
  for (const v of model.params.values()) if (v.rank === 2) v.assign(v.mul(4));
  const layout = layoutPosition(position, TINY.nLayer);
  const saes = buildSaes({ arch: "topk", features: 12, k: 3, jsaeLambda: 0 }, layout, 8, 2);
  const rng = createRng(7);
  // Nonzero biases (they start at 0), so that features fire at every IG step.
  for (const [name, v] of saes.params) {
    if (/b_(enc|dec)$/.test(name)) v.assign(tf.tensor(normalArray(rng, v.size, 0.5), v.shape));
  }
  const tokens = Int32Array.from({ length: 4 * TINY.nCtx }, () => rng.int(TINY.vocabSize));
  return { model, saes, pair: layout.pairs[0]!, tokens };
}

for (const position of ["mlp-block", "block"] as Position[]) {
  Deno.test({
    name: `SCALAR at ${position} on tfjs webgpu equals the CPU reference to 1e-4`,
    ignore: typeof gpu === "string",
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await tf.setBackend("cpu");
      // The reference runs on stock tfjs cpu on purpose: its banner would only advertise tfjs-node.
      (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
      const setup = pairSetup(position);
      try {
        const cpu = await scalarOf(setup);
        assert.ok(await tf.setBackend("webgpu"), "tfjs webgpu did not start");
        const gpuRun = await scalarOf(setup, cpu.order);
        assertRelClose(gpuRun.scores, cpu.scores, 1e-4, "edge scores");
        for (const key of ["klModel", "klFull"] as const) {
          assertRelClose(gpuRun.curve.map((p) => p[key]), cpu.curve.map((p) => p[key]), 1e-4, key);
        }
      } finally {
        await tf.setBackend("cpu");
        setup.model.dispose();
        setup.saes.dispose();
      }
    },
  });
}

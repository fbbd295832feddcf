import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import {
  architecture,
  ARCHITECTURES,
  buildSaes,
  type SaeConfig,
  saeShapes,
} from "./architectures.ts";
import { layoutPosition, POSITIONS } from "./positions.ts";
import { decode, encode, reconstructionLoss } from "./sae.ts";
import { createRng, normalArray } from "../util/rng.ts";

const config = (arch: SaeConfig["arch"], features = 512): SaeConfig => ({
  arch,
  features,
  k: 10,
  jsaeLambda: 0,
});

const count = (arch: SaeConfig["arch"], position: "mlp-block" | "block") => {
  const saes = buildSaes(config(arch), layoutPosition(position, 4), 64, 0);
  const n = [...saes.params.values()].reduce((s, v) => s + v.size, 0);
  saes.dispose();
  return n;
};

Deno.test("buildSaes() has the paper's parameter counts on the toy model", () => {
  // Paper App. E / reference: TopK x8 at block 330,560; Staircase 335,680; at mlp-block 528,896
  // (TopK) and 530,944 (Staircase).
  assert.equal(count("topk", "block"), 330_560);
  assert.equal(count("staircase", "block"), 335_680);
  assert.equal(count("topk", "mlp-block"), 528_896);
  assert.equal(count("staircase", "mlp-block"), 530_944);
});

Deno.test("buildSaes() gives Staircase SAEs prefixes of widths 512, 1024, … along a chain", () => {
  const saes = buildSaes(config("staircase"), layoutPosition("block", 4), 64, 0);
  assert.deepEqual(saes.hooks.map((h) => saes.width(h)), [512, 1024, 1536, 2048, 2560]);
  const w = saes.weights("blocks.2.hook_resid_pre");
  assert.deepEqual([w.wEnc.shape, w.wDec.shape, w.bEnc.shape], [[64, 1536], [1536, 64], [1536]]);
  saes.dispose();
});

/** Gradient of the downstream SAE's loss with respect to the shared decoder, as rows' norms. */
async function decoderRowGrads(arch: "staircase" | "staircase-detached"): Promise<number[]> {
  const saes = buildSaes(config(arch, 4), layoutPosition("mlp-block", 1), 3, 1);
  const down = "blocks.0.hook_resid_post";
  const x = tf.tensor2d(normalArray(createRng(2), 20 * 3, 1), [20, 3]);
  const shared = saes.params.get("chain0/W_dec")!;
  const { grads } = tf.variableGrads(() => {
    const w = saes.weights(down);
    return reconstructionLoss(x, decode(w, encode(w, x, 8)));
  }, [shared]);
  const rows = await grads[shared.name]!.square().sum(1).data();
  saes.dispose();
  return [...rows];
}

Deno.test("staircase shares the prefix; staircase-detached stops exactly the earlier chunk", async () => {
  // Chain of 2 hooks with 4-feature chunks: rows 0-3 are the upstream SAE's, 4-7 the downstream's.
  const shared = await decoderRowGrads("staircase");
  const detached = await decoderRowGrads("staircase-detached");
  assert.ok(shared.slice(0, 4).some((g) => g > 0), "downstream loss must train the shared prefix");
  assert.ok(shared.slice(4).some((g) => g > 0));
  assert.deepEqual(detached.slice(0, 4), [0, 0, 0, 0]);
  assert.deepEqual(detached.slice(4), shared.slice(4));
});

Deno.test("buildSaes() refuses jsae at block before any work, saying why", () => {
  assert.throws(
    () => buildSaes(config("jsae"), layoutPosition("block", 4), 64, 0),
    /Cannot train "jsae" at position "block": its Jacobian needs an MLP between the pair/,
  );
});

Deno.test("saeShapes() names every parameter buildSaes() creates, in order and shape, for every architecture and position it serves", () => {
  let served = 0;
  for (const arch of ARCHITECTURES) {
    for (const position of POSITIONS) {
      if (architecture(arch).positionProblem(position) !== undefined) continue;
      served++;
      const layout = layoutPosition(position, 2);
      const saes = buildSaes(config(arch, 6), layout, 5, 0);
      assert.deepEqual(
        [...saes.params].map(([name, v]) => [name, v.shape]),
        [...saeShapes(config(arch, 6), layout, 5)],
        `${arch} at ${position}`,
      );
      saes.dispose();
    }
  }
  // jsae serves mlp alone.
  assert.equal(served, 3 * 3 + 1);
});

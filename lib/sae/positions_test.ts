import assert from "node:assert/strict";
import { isTokenwisePair, layersProblem, layoutPosition } from "./positions.ts";

Deno.test("layoutPosition() gives every layer a pair by default", () => {
  const l = layoutPosition("mlp", 2);
  assert.deepEqual(l.hooks, [
    "blocks.0.hook_mlp_in",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_mlp_in",
    "blocks.1.hook_mlp_out",
  ]);
  assert.deepEqual(l.chains, [l.hooks.slice(0, 2), l.hooks.slice(2)]);
  assert.ok(l.pairs.every(isTokenwisePair));
});

Deno.test("layoutPosition() lays out the paper's GPT-2 layers 1, 6, 11 at mlp-block", () => {
  const l = layoutPosition("mlp-block", 12, [1, 6, 11]);
  assert.deepEqual(
    l.pairs,
    [1, 6, 11].map((layer) => ({
      up: `blocks.${layer}.hook_resid_mid`,
      down: `blocks.${layer}.hook_resid_post`,
      layer,
    })),
  );
  assert.equal(l.hooks.length, 6);
});

Deno.test("layoutPosition() chains consecutive blocks, ending at the next block or the output", () => {
  const inner = layoutPosition("block", 12, [3, 4]);
  assert.deepEqual(inner.hooks, [
    "blocks.3.hook_resid_pre",
    "blocks.4.hook_resid_pre",
    "blocks.5.hook_resid_pre",
  ]);
  assert.deepEqual(inner.pairs.map((p) => p.layer), [3, 4]);
  const all = layoutPosition("block", 12);
  assert.equal(all.hooks.length, 13);
  assert.equal(all.hooks.at(-1), "blocks.11.hook_resid_post");
  assert.deepEqual(all.chains, [all.hooks]);
});

Deno.test("layersProblem() names what is wrong with a choice of layers", () => {
  assert.equal(layersProblem("mlp", 4, [0, 2]), undefined);
  assert.equal(layersProblem("mlp", 4, [4]), "layer 4 is not in the model (its layers are 0 … 3)");
  assert.equal(layersProblem("mlp", 4, [2, 1]), "[2, 1] is not strictly ascending");
  assert.equal(layersProblem("mlp", 4, []), "lists no layer");
  assert.match(layersProblem("block", 4, [0, 2])!, /has gaps/);
  assert.throws(() => layoutPosition("block", 4, [0, 2]), /Cannot lay out SAEs at block: layers/);
});

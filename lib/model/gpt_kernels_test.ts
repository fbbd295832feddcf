import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import "@tensorflow/tfjs-backend-wasm";
import { selectBackend } from "../backend/select.ts";
import { crossEntropy, GPT, SHAKESPEARE_64X4 } from "./gpt.ts";
import { createRng } from "../util/rng.ts";

/** The toy GPT's loss on random tokens and its gradient in every parameter, read back. */
async function lossAndGrads(): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  const model = GPT.init(SHAKESPEARE_64X4, 0);
  const rng = createRng(1), [B, T] = [4, SHAKESPEARE_64X4.nCtx];
  const ids = Int32Array.from({ length: B * T + 1 }, () => rng.int(SHAKESPEARE_64X4.vocabSize));
  const vars = [...model.params.values()];
  const { value, grads } = tf.tidy(() => {
    const x = tf.tensor2d(ids.subarray(0, B * T), [B, T], "int32");
    const y = tf.tensor2d(ids.subarray(1), [B, T], "int32");
    return tf.variableGrads(() => crossEntropy(model.forward(x), y), vars);
  });
  const out = new Map<string, Float32Array>();
  for (const [name, v] of model.params) {
    out.set(name, (await grads[v.name]!.data()) as Float32Array);
  }
  const loss = (await value.data())[0]!;
  tf.dispose([value, ...Object.values(grads)]);
  model.dispose();
  return { loss, grads: out };
}

Deno.test("the toy GPT's loss and gradients with wasm's fast kernels equal the stock ops", async () => {
  // Stock tfjs first (nothing of ours registered in this process yet), then the selected backend
  // with every kernel of the project: attention, LayerNorm, GELU, products, reductions.
  assert.ok(await tf.setBackend("wasm"));
  const stock = await lossAndGrads();
  const selected = await selectBackend("wasm");
  assert.match(selected.detail, /fused native attention, native GELU, native LayerNorm/);
  const fast = await lossAndGrads();
  assert.ok(Math.abs(fast.loss - stock.loss) <= 1e-5 * stock.loss, `${fast.loss} vs ${stock.loss}`);
  for (const [name, want] of stock.grads) {
    const got = fast.grads.get(name)!;
    // Relative to the tensor's largest gradient: float32 sums over 512 tokens in other orders.
    const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    want.forEach((w, i) => {
      assert.ok(
        Math.abs(got[i]! - w) <= 1e-4 * scale,
        `${name}[${i}]: ${got[i]} vs ${w} (max ${scale})`,
      );
    });
  }
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu": the fused path runs on both.
import "@tensorflow/tfjs-backend-wasm";
import { AdamW, clipGlobalNorm } from "./adamw.ts";
import { ADAMW_KERNEL, registerAdamWKernel } from "../backend/adamw_kernel.ts";
import type { CpuKernelBackend } from "../backend/kernel_storage.ts";
import { createRng, normalArray } from "../util/rng.ts";

// Importing the wasm backend makes it the default; the hand-computed tests run on cpu.
await tf.setBackend("cpu");

Deno.test("AdamW.update() matches a hand computation of two steps with weight decay", async () => {
  const w = tf.variable(tf.tensor1d([1, -2]));
  const b = tf.variable(tf.tensor1d([0.5]));
  const opt = new AdamW(new Map([["w", w], ["b", b]]), {
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weightDecay: 0.1,
    decays: (name) => name === "w",
  });
  // Reference arithmetic in float64, PyTorch's AdamW formula.
  const ref = { p: [1, -2, 0.5], m: [0, 0, 0], v: [0, 0, 0] };
  const gs = [[0.2, -0.4, 1.0], [-0.1, 0.3, 0.5]];
  for (const [t, g] of gs.entries()) {
    const lr = 0.01 * (t + 1);
    opt.update(new Map([["w", tf.tensor1d(g.slice(0, 2))], ["b", tf.tensor1d(g.slice(2))]]), lr);
    for (let i = 0; i < 3; i++) {
      ref.m[i] = 0.9 * ref.m[i]! + 0.1 * g[i]!;
      ref.v[i] = 0.95 * ref.v[i]! + 0.05 * g[i]! ** 2;
      const mh = ref.m[i]! / (1 - 0.9 ** (t + 1)), vh = ref.v[i]! / (1 - 0.95 ** (t + 1));
      ref.p[i] = ref.p[i]! * (1 - lr * (i < 2 ? 0.1 : 0)) - (lr * mh) / (Math.sqrt(vh) + 1e-8);
    }
  }
  const got = [...(await w.data()), ...(await b.data())];
  got.forEach((x, i) => assert.ok(Math.abs(x - ref.p[i]!) < 1e-6, `${x} vs ${ref.p[i]}`));
  assert.equal(opt.step, 2);
});

Deno.test("AdamW.state() and load() resume to the same next update", async () => {
  const make = () => tf.variable(tf.tensor2d([[1, 2], [3, 4]]));
  const [p1, p2] = [make(), make()];
  const [o1, o2] = [new AdamW(new Map([["p", p1]])), new AdamW(new Map([["p", p2]]))];
  const g = new Map([["p", tf.tensor2d([[0.1, -0.2], [0.3, 0.0]])]]);
  o1.update(g, 0.1);
  const saved = await o1.state();
  o2.load(saved);
  p2.assign(p1);
  o1.update(g, 0.1);
  o2.update(g, 0.1);
  assert.deepEqual(await p1.data(), await p2.data());
  assert.throws(() => o2.load({ step: 1, tensors: new Map() }), /moment "m\.p" is missing/);
});

Deno.test("clipGlobalNorm() scales to the limit only when the norm exceeds it", async () => {
  const grads = new Map([["a", tf.tensor1d([3])], ["b", tf.tensor1d([4])]]); // norm 5
  const clipped = clipGlobalNorm(grads, 1);
  assert.ok(Math.abs((await clipped.norm.data())[0]! - 5) < 1e-6);
  assert.ok(Math.abs((await clipped.grads.get("a")!.data())[0]! - 0.6) < 1e-6);
  assert.ok(Math.abs((await clipped.grads.get("b")!.data())[0]! - 0.8) < 1e-6);
  const kept = clipGlobalNorm(grads, 10);
  assert.equal((await kept.grads.get("a")!.data())[0], 3);
});

// Three steps of clipAndUpdate on a matrix (decays) and a vector (does not), with or without the
// fused kernel registered; the parameters and both moments after them, flattened.
async function threeSteps(
  backend: CpuKernelBackend,
  fusedKernel: boolean,
): Promise<Float32Array[]> {
  assert.ok(await tf.setBackend(backend));
  const restore = fusedKernel ? registerAdamWKernel(backend) : undefined;
  if (!fusedKernel && tf.getKernel(ADAMW_KERNEL, backend)) {
    tf.unregisterKernel(ADAMW_KERNEL, backend);
  }
  try {
    const rng = createRng(3);
    const w = tf.variable(tf.tensor2d(normalArray(rng, 12, 1), [3, 4]));
    const b = tf.variable(tf.tensor1d(normalArray(rng, 5, 1)));
    const opt = new AdamW(new Map<string, tf.Variable>([["w", w], ["b", b]]), {
      weightDecay: 0.1,
      decays: (_name, shape) => shape.length >= 2,
    });
    // Norms about 4, 0.4 and 40 against a limit of 1: clipped, kept, clipped.
    for (const [t, scale] of [1, 0.1, 10].entries()) {
      const grads = new Map<string, tf.Tensor>([
        ["w", tf.tensor2d(normalArray(rng, 12, scale), [3, 4])],
        ["b", tf.tensor1d(normalArray(rng, 5, scale))],
      ]);
      opt.clipAndUpdate(grads, 0.01 * (t + 1), 1);
      tf.dispose([...grads.values()]);
    }
    assert.equal(opt.step, 3);
    const state = await opt.state();
    const out = [await w.data(), await b.data(), ...[...state.tensors.values()].map((t) => t.data)];
    tf.dispose([w, b]);
    opt.dispose();
    return out as Float32Array[];
  } finally {
    restore?.();
  }
}

for (const backend of ["cpu", "wasm"] as const) {
  Deno.test(`AdamW.clipAndUpdate() fused on ${backend} equals clipGlobalNorm() then update()`, async () => {
    try {
      const want = await threeSteps(backend, false);
      const got = await threeSteps(backend, true);
      want.forEach((w, k) => {
        w.forEach((x, i) => {
          const err = Math.abs(got[k]![i]! - x);
          assert.ok(err <= 1e-6 * (1 + Math.abs(x)), `array ${k}[${i}]: ${got[k]![i]} vs ${x}`);
        });
      });
      // The moments differ from one step to the next: the fused path really updated them.
      assert.notDeepEqual(got[2], new Float32Array(12));
    } finally {
      await tf.setBackend("cpu");
    }
  });
}

Deno.test("the fused AdamW kernel refuses moments of another shape, naming them", () => {
  const restore = registerAdamWKernel("cpu");
  try {
    const p = tf.zeros([2, 3]);
    assert.throws(
      () => tf.engine().runKernel(ADAMW_KERNEL, { param: p, grad: p, m: p, v: tf.zeros([6]) }, {}),
      /ScalarAdamW: v is \[6\], expected \[2,3\]/,
    );
  } finally {
    restore();
  }
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; each kernel test runs on both.
import "@tensorflow/tfjs-backend-wasm";
import {
  ATTENTION_GRAD_KERNEL,
  ATTENTION_KERNEL,
  type AttentionLibrary,
  loadAttentionLibrary,
  registerAttentionKernels,
} from "./attention_kernel.ts";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import { withFastKernels } from "./testdata/fast_kernels.ts";
import { causalAttention } from "../model/gpt.ts";
import { createRng, normalArray } from "../util/rng.ts";

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];
const lib: AttentionLibrary = await loadAttentionLibrary();

async function use(name: CpuKernelBackend): Promise<void> {
  assert.ok(await tf.setBackend(name), `setBackend("${name}")`);
  if (name === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
}

/** Runs f with the fused kernels registered on the active backend (the reference otherwise). */
function fused<T>(backend: CpuKernelBackend, f: () => T): T {
  return withFastKernels(
    backend,
    [ATTENTION_KERNEL, ATTENTION_GRAD_KERNEL],
    (b) => registerAttentionKernels(b, lib),
    () => {
      assert.ok(tf.getKernel(ATTENTION_KERNEL, backend), "fused kernel registered");
      return f();
    },
  ).result;
}

interface Case {
  B: number;
  T: number;
  H: number;
  S: number;
}

// Odd sizes (no 16-float block fits), one position, a length crossing a block edge, lengths and
// head sizes crossing the kernel's 32-query tiles and 16-float column blocks (70 × 20: the last
// tile 6 rows, heads padded to 32), GPT-2's head size, the toy model.
const CASES: Case[] = [
  { B: 3, T: 7, H: 2, S: 5 },
  { B: 1, T: 1, H: 1, S: 3 },
  { B: 2, T: 33, H: 3, S: 16 },
  { B: 2, T: 70, H: 2, S: 20 },
  { B: 1, T: 45, H: 2, S: 64 },
  { B: 2, T: 128, H: 4, S: 16 },
];

/** Output and dL/dqkv of L = Σ attention(qkv) ∘ dy, from whichever path is registered. */
async function outputAndGrad(
  c: Case,
  qkv: Float32Array,
  dy: Float32Array,
): Promise<{ y: Float32Array; g: Float32Array }> {
  const { B, T, H, S } = c;
  const [y, g] = tf.tidy(() => {
    const x = tf.tensor2d(qkv, [B * T, 3 * H * S]);
    const up = tf.tensor2d(dy, [B * T, H * S]);
    const f = (t: tf.Tensor) => causalAttention(t as tf.Tensor2D, T, H);
    return [f(x), tf.grad((t) => f(t).mul(up).sum())(x)];
  });
  const out = { y: (await y!.data()) as Float32Array, g: (await g!.data()) as Float32Array };
  tf.dispose([y!, g!]);
  return out;
}

function assertClose(got: Float32Array, want: Float32Array, tol: number, label: string): void {
  assert.equal(got.length, want.length, `${label}: length`);
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    assert.ok(
      err <= tol * (1 + Math.abs(want[i]!)),
      `${label}[${i}]: got ${got[i]}, expected ${want[i]} (error ${err})`,
    );
  }
}

for (const backend of BACKENDS) {
  Deno.test(`fused attention equals the stock-op reference on ${backend} (values, gradients)`, async () => {
    try {
      await use(backend);
      for (const [n, c] of CASES.entries()) {
        const rng = createRng(10 + n);
        // Scale 2: peaked softmax rows, where a wrong max or log-sum-exp would show.
        const qkv = normalArray(rng, c.B * c.T * 3 * c.H * c.S, 2);
        const dy = normalArray(rng, c.B * c.T * c.H * c.S, 1);
        const want = await outputAndGrad(c, qkv, dy);
        const got = await fused(backend, () => outputAndGrad(c, qkv, dy));
        const label = `${backend} B${c.B} T${c.T} H${c.H} S${c.S}`;
        assertClose(got.y, want.y, 1e-5, `${label} y`);
        assertClose(got.g, want.g, 1e-5, `${label} dqkv`);
      }
    } finally {
      await use("cpu");
    }
  });
}

Deno.test("fused attention's gradient matches central finite differences", async () => {
  const c: Case = { B: 2, T: 5, H: 2, S: 3 };
  const rng = createRng(3);
  const qkv = normalArray(rng, c.B * c.T * 3 * c.H * c.S, 1);
  const dy = normalArray(rng, c.B * c.T * c.H * c.S, 1);
  const { g } = await fused("cpu", () => outputAndGrad(c, qkv, dy));
  const loss = async (x: Float32Array) => {
    const { y } = await fused("cpu", () => outputAndGrad(c, x, dy));
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i]! * dy[i]!;
    return s;
  };
  const eps = 1e-2;
  for (let i = 0; i < qkv.length; i++) {
    const plus = qkv.slice(), minus = qkv.slice();
    plus[i]! += eps;
    minus[i]! -= eps;
    const fd = ((await loss(plus)) - (await loss(minus))) / (2 * eps);
    // float32 forward: ~1e-6 relative rounding over ~60 terms, divided by 2ε, plus O(ε²).
    assert.ok(Math.abs(fd - g[i]!) <= 2e-3 * (1 + Math.abs(fd)), `dqkv[${i}]: ${g[i]} vs ${fd}`);
  }
});

Deno.test("fused attention kernels reject misshapen inputs, naming the input and the shape", () => {
  fused("cpu", () => {
    const qkv = tf.zeros([6, 12]);
    assert.throws(
      () => tf.engine().runKernel(ATTENTION_KERNEL, { qkv }, { heads: 5, positions: 3 }),
      /ScalarCausalAttention on qkv \[6,12\] with 5 heads of 3 positions: need \[B·T, 3·H·S\]/,
    );
    const lse = tf.zeros([2, 2, 2]), y = tf.zeros([6, 4]);
    assert.throws(
      () =>
        tf.engine().runKernel(ATTENTION_GRAD_KERNEL, { qkv, y, lse, dy: y }, {
          heads: 2,
          positions: 3,
        }),
      /ScalarCausalAttentionGrad: lse is \[2,2,2\], expected \[2,2,3\]/,
    );
    tf.dispose([qkv, lse, y]);
  });
});

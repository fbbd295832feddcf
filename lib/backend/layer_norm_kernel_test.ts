import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; each kernel test runs on both.
import "@tensorflow/tfjs-backend-wasm";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import {
  LAYER_NORM_GRAD_KERNEL,
  LAYER_NORM_KERNEL,
  type LayerNormLibrary,
  loadLayerNormLibrary,
  registerLayerNormKernels,
} from "./layer_norm_kernel.ts";
import { withFastKernels } from "./testdata/fast_kernels.ts";
import { layerNorm } from "../model/gpt.ts";
import { createRng, normalArray } from "../util/rng.ts";

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];
const lib: LayerNormLibrary = await loadLayerNormLibrary();

async function use(name: CpuKernelBackend): Promise<void> {
  assert.ok(await tf.setBackend(name), `setBackend("${name}")`);
}

/** Runs f with the fused kernels registered on the active backend (the reference otherwise). */
function fused<T>(backend: CpuKernelBackend, f: () => T): T {
  return withFastKernels(
    backend,
    [LAYER_NORM_KERNEL, LAYER_NORM_GRAD_KERNEL],
    (b) => registerLayerNormKernels(b, lib),
    () => {
      assert.ok(tf.getKernel(LAYER_NORM_KERNEL, backend), "fused kernel registered");
      return f();
    },
  ).result;
}

/** The output and the gradients of L = Σ layerNorm(x)·up with respect to x, weight and bias. */
async function outputAndGrads(
  shape: number[],
  x: Float32Array,
  weight: Float32Array,
  bias: Float32Array,
  up: Float32Array,
): Promise<Float32Array[]> {
  const tensors = tf.tidy(() => {
    const [xt, wt, bt] = [tf.tensor(x, shape), tf.tensor1d(weight), tf.tensor1d(bias)];
    const u = tf.tensor(up, shape);
    const y = layerNorm(xt, wt, bt);
    const grads = tf.grads((a, b, c) => layerNorm(a!, b!, c!).mul(u).sum())([xt, wt, bt]);
    return [y, ...grads];
  });
  const out = await Promise.all(tensors.map(async (t) => (await t.data()) as Float32Array));
  tf.dispose(tensors);
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

// One row; rows not a multiple of the 64-row gradient blocks, in 3-D; a width that is not a
// multiple of 16; the toy model's [B, T, 64].
const SHAPES = [[1, 5], [3, 67, 20], [130, 7], [4, 128, 64]];

for (const backend of BACKENDS) {
  Deno.test(`fused LayerNorm equals the stock-op reference on ${backend} (values, gradients)`, async () => {
    await use(backend);
    try {
      for (const shape of SHAPES) {
        const D = shape[shape.length - 1]!, n = shape.reduce((a, b) => a * b, 1);
        const rng = createRng(n);
        // An offset mean and a spread per row, as residual streams have.
        const x = normalArray(rng, n, 3).map((v, i) => v + (i % D) * 0.1 - 1);
        const [w, b, up] = [normalArray(rng, D, 1), normalArray(rng, D, 1), normalArray(rng, n, 1)];
        const want = await outputAndGrads(shape, x, w, b, up);
        const got = await fused(backend, () => outputAndGrads(shape, x, w, b, up));
        ["y", "dx", "dweight", "dbias"].forEach((name, i) =>
          assertClose(got[i]!, want[i]!, 2e-5, `${backend} [${shape}] ${name}`)
        );
      }
    } finally {
      await use("cpu");
    }
  });
}

Deno.test("fused LayerNorm's gradients match central finite differences", async () => {
  const shape = [3, 6], rng = createRng(7);
  const [x, w, b, up] = [18, 6, 6, 18].map((n) => normalArray(rng, n, 1));
  const [, dx, dw, db] = await fused("cpu", () => outputAndGrads(shape, x, w, b, up));
  const loss = async (xs: Float32Array, ws: Float32Array, bs: Float32Array) => {
    const [y] = await fused("cpu", () => outputAndGrads(shape, xs, ws, bs, up));
    return y!.reduce((s, v, i) => s + v * up[i]!, 0);
  };
  const eps = 1e-2;
  const check = async (which: number, grad: Float32Array, label: string) => {
    const args = [x, w, b];
    for (let i = 0; i < grad.length; i++) {
      const plus = args.map((a) => a.slice()), minus = args.map((a) => a.slice());
      plus[which]![i]! += eps;
      minus[which]![i]! -= eps;
      const fd = ((await loss(plus[0]!, plus[1]!, plus[2]!)) -
        (await loss(minus[0]!, minus[1]!, minus[2]!))) / (2 * eps);
      assert.ok(
        Math.abs(fd - grad[i]!) <= 2e-3 * (1 + Math.abs(fd)),
        `${label}[${i}]: ${grad[i]} vs ${fd}`,
      );
    }
  };
  await check(0, dx!, "dx");
  await check(1, dw!, "dweight");
  await check(2, db!, "dbias");
});

Deno.test("fused LayerNorm kernels reject misshapen inputs, naming the input and the shape", () => {
  fused("cpu", () => {
    const x = tf.zeros([4, 3]), w = tf.ones([3]);
    assert.throws(
      () =>
        tf.engine().runKernel(LAYER_NORM_KERNEL, { x, weight: tf.ones([4]), bias: w }, {
          eps: 1e-5,
        }),
      /ScalarLayerNorm on x \[4,3\] with weight \[4\]: need x \[\.\.\., D\] and weight \[D\]/,
    );
    assert.throws(
      () =>
        tf.engine().runKernel(LAYER_NORM_KERNEL, { x, weight: w, bias: tf.ones([2]) }, {
          eps: 1e-5,
        }),
      /ScalarLayerNorm: bias is \[2\], expected \[3\]/,
    );
    const r = tf.ones([3]);
    assert.throws(
      () =>
        tf.engine().runKernel(
          LAYER_NORM_GRAD_KERNEL,
          { dy: x, x, weight: w, mean: r, rstd: r },
          {},
        ),
      /ScalarLayerNormGrad: mean is \[3\], expected \[4\]/,
    );
    assert.throws(
      () => tf.engine().runKernel(LAYER_NORM_KERNEL, { x, weight: w }, { eps: 1e-5 }),
      /ScalarLayerNorm: input "bias" is missing/,
    );
  });
});

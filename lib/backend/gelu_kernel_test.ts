import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; each kernel test runs on both.
import "@tensorflow/tfjs-backend-wasm";
import {
  expFast,
  GELU_TANH_GRAD_KERNEL,
  GELU_TANH_KERNEL,
  type GeluLoops,
  geluTanhGradValues,
  geluTanhValues,
  loadNativeGeluLoops,
  registerGeluKernels,
  tanhFast,
  wasmSimdGeluLoops,
} from "./gelu_kernel.ts";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import { geluTanh } from "../model/gpt.ts";
import { createRng, normalArray, uniformArray } from "../util/rng.ts";

const BACKENDS: CpuKernelBackend[] = ["cpu", "wasm"];
const C = Math.sqrt(2 / Math.PI);

// Every 4099th float32 bit pattern (a prime stride, so all exponents and many mantissas are hit):
// about a million values spread log-uniformly over the whole float32 range, both signs, with
// subnormals, infinities and NaNs among them.
function float32Sweep(): Float32Array {
  const bits = new Uint32Array(Math.floor(2 ** 32 / 4099) + 1);
  for (let i = 0; i < bits.length; i++) bits[i] = i * 4099;
  return new Float32Array(bits.buffer);
}

// GELU in float64 as the truth: x·σ(2u) with Math.exp, equal to ½x(1 + tanh u) but without its
// cancellation for negative x (checked against that form below where both are exact enough).
function gelu64(x: number): number {
  return x / (1 + Math.exp(-2 * C * (x + 0.044715 * x * x * x)));
}

// |actual − expected| ≤ tol·(1 + |expected|): absolute near 0, relative for large values.
function assertClose(actual: number, expected: number, tol: number, label: string): void {
  if (Number.isNaN(expected)) {
    assert.ok(Number.isNaN(actual), `${label}: got ${actual}, expected NaN`);
    return;
  }
  if (actual === expected) return; // also equal infinities
  const err = Math.abs(actual - expected);
  assert.ok(
    err <= tol * (1 + Math.abs(expected)),
    `${label}: got ${actual}, expected ${expected} (error ${err})`,
  );
}

Deno.test("expFast() is within 6e-10 relative of Math.exp on [-88, 88]", () => {
  let worst = 0;
  for (let i = 0; i <= 2_000_000; i++) {
    const y = -88 + (176 * i) / 2_000_000;
    worst = Math.max(worst, Math.abs(expFast(y) / Math.exp(y) - 1));
  }
  assert.ok(worst < 6e-10, `max relative error ${worst}`);
  assert.equal(expFast(0), 1);
});

Deno.test("tanhFast() is within 2e-7 of Math.tanh over the whole float32 range", () => {
  const xs = float32Sweep();
  let worst = 0;
  for (const x of xs) {
    const got = tanhFast(x), want = Math.tanh(x);
    if (Number.isNaN(want)) assert.ok(Number.isNaN(got), `tanhFast(${x})`);
    else worst = Math.max(worst, Math.abs(got - want));
  }
  // Dense near the origin and through the bend, where the sweep is sparse in linear terms.
  for (let i = 0; i <= 1_000_000; i++) {
    const x = -12 + (24 * i) / 1_000_000;
    worst = Math.max(worst, Math.abs(tanhFast(x) - Math.tanh(x)));
  }
  assert.ok(worst <= 2e-7, `max abs error ${worst}`);
  for (const x of [Infinity, -Infinity, Number.MAX_VALUE, -Number.MAX_VALUE]) {
    assert.equal(tanhFast(x), Math.tanh(x), `tanhFast(${x})`);
  }
  for (const x of [0, 5e-324, -5e-324, 1e-30, -1e-30]) {
    assert.ok(Math.abs(tanhFast(x) - x) <= 2e-7, `tanhFast(${x})`);
  }
  assert.ok(Number.isNaN(tanhFast(NaN)));
});

// The three implementations of the loops. The SIMD one runs on arrays in a wasm memory of its own
// here, placed at 4-byte (not 16-byte) offsets, as tfjs tensors may be.
const simdMemory = new WebAssembly.Memory({ initial: 256 }); // 16 MiB
const nativeLoops = await loadNativeGeluLoops();
const LOOPS: {
  name: string;
  loops: GeluLoops;
  arrays: (...lengths: number[]) => Float32Array[];
}[] = [
  {
    name: "float64 JavaScript",
    loops: { values: geluTanhValues, gradValues: geluTanhGradValues },
    arrays: (...lengths) => lengths.map((n) => new Float32Array(n)),
  },
  {
    name: "wasm SIMD",
    loops: wasmSimdGeluLoops(simdMemory)!,
    arrays: (...lengths) => {
      let offset = 4;
      return lengths.map((n) => {
        const a = new Float32Array(simdMemory.buffer, offset, n);
        offset += 4 * n + 4;
        return a;
      });
    },
  },
  {
    name: "native",
    loops: nativeLoops,
    arrays: (...lengths) => lengths.map((n) => new Float32Array(n)),
  },
];

// How close each implementation is to the float64 truth, relative to 1 + |truth|: the JavaScript
// loops round once; the SIMD ones round each float32 step (mostly y = −2u, whose error e^y
// magnifies where the result is tiny). Both are far inside the 1e-6 the kernels are held to
// against the stock ops.
const VALUE_TOLERANCE: Record<string, number> = {
  "float64 JavaScript": 6e-8,
  "wasm SIMD": 3e-7,
  native: 3e-7,
};

Deno.test("the native GELU loops refuse arrays of different lengths", () => {
  assert.throws(
    () => nativeLoops.values(new Float32Array(8), new Float32Array(7)),
    /Cannot run the native GELU: the arrays differ in length/,
  );
  const [a, b] = [new Float32Array(4), new Float32Array(5)];
  assert.throws(() => nativeLoops.gradValues(a, a, b), /differ in length/);
});

Deno.test("wasmSimdGeluLoops() is available here and refuses arrays outside its memory", () => {
  const loops = wasmSimdGeluLoops(simdMemory);
  assert.ok(loops, "this engine should have wasm SIMD");
  assert.equal(wasmSimdGeluLoops(simdMemory), loops, "one instance per memory");
  assert.throws(() => loops.values(new Float32Array(8), new Float32Array(8)), RangeError);
  const [x, out] = LOOPS[1]!.arrays(8, 7);
  assert.throws(() => loops.values(x!, out!), RangeError);
});

for (const { name, loops, arrays } of LOOPS) {
  Deno.test(`${name} GELU rounds the float64 GELU to float32 over the whole range`, () => {
    const sweep = float32Sweep();
    const [xs, out] = arrays(sweep.length, sweep.length);
    xs!.set(sweep);
    loops.values(xs!, out!);
    for (let i = 0; i < xs!.length; i++) {
      const x = xs![i]!;
      // Below about -9.3 the true value is under 1e-34; the kernels return (signed) 0 or about that.
      const want = Math.fround(gelu64(x));
      if (Number.isNaN(x)) assert.ok(Number.isNaN(out![i]!), "NaN in, NaN out");
      else assertClose(out![i]!, want, VALUE_TOLERANCE[name]!, `gelu(${x})`);
    }
    // Lengths that leave 1–3 elements past the last 4-lane step, and in place.
    for (const n of [1, 2, 3, 5, 6, 7, 13]) {
      const [v] = arrays(n);
      v!.set(Float32Array.from({ length: n }, (_, i) => i - 3.25));
      const want = [...v!].map((x) => Math.fround(gelu64(x)));
      loops.values(v!, v!);
      want.forEach((w, i) => assertClose(v![i]!, w, VALUE_TOLERANCE[name]!, `n ${n} [${i}]`));
    }
  });

  Deno.test(`${name} GELU gradient matches central finite differences of the float64 GELU`, () => {
    const rng = createRng(5);
    const xs = [
      ...normalArray(rng, 20_000, 3),
      ...[0, 1e-20, -1e-20, 0.5, -0.75, -0.7517915, 2, -2, 5, -5, 8, -8, 9.4, -9.4, 10, -10],
      ...[30, -30, 100, -100, 1e3, -1e3, 1e6, -1e6, 1e12, -1e12, 3e38, -3e38, NaN],
    ];
    const [x, dy, dx] = arrays(xs.length, xs.length, xs.length);
    x!.set(xs);
    dy!.set(Float32Array.from(xs, (_, i) => (i % 3) - 1.5));
    loops.gradValues(dy!, x!, dx!);
    for (let i = 0; i < x!.length; i++) {
      const v = x![i]!;
      if (Number.isNaN(v)) {
        assert.ok(Number.isNaN(dx![i]!), "NaN in, NaN out");
        continue;
      }
      // A step that keeps the truncation error (h²·f‴/6) and the rounding error (1e-16/h) far
      // below the tolerance; beyond |x| = 20 GELU is x or 0 to every digit, so take that exactly.
      const h = 1e-5 * Math.max(1, Math.abs(v));
      const slope = Math.abs(v) > 20 ? (v > 0 ? 1 : 0) : (gelu64(v + h) - gelu64(v - h)) / (2 * h);
      assertClose(dx![i]!, dy![i]! * slope, 1e-6, `gelu'(${v}) · ${dy![i]}`);
    }
  });
}

Deno.test("the σ(2u) form equals ½x(1 + tanh u) where the latter is accurate", () => {
  for (let x = -4; x <= 4; x += 0.001) {
    const tanhForm = 0.5 * x * (1 + Math.tanh(C * (x + 0.044715 * x ** 3)));
    assertClose(gelu64(x), tanhForm, 1e-12, `identity at ${x}`);
  }
});

// Tests switch backends inside this one process. tfjs would silently move a tensor made on one
// backend to another when an op uses it there, so every test makes its tensors after switching.
async function use(name: CpuKernelBackend): Promise<void> {
  if (!(await tf.setBackend(name))) throw new Error(`Cannot start backend "${name}"`);
}

// geluTanh and its gradient, read back, with the kernels registered (on the native loops, or the
// JavaScript and SIMD ones for `true`) or not (then the op runs its stock-op reference), and the
// names of the kernels that ran.
async function geluAndGrad(
  name: CpuKernelBackend,
  x: Float32Array,
  w: Float32Array,
  fused: boolean | GeluLoops,
): Promise<{ value: Float32Array; grad: Float32Array; kernels: Set<string> }> {
  await use(name);
  if (fused) registerGeluKernels(name, fused === true ? undefined : fused);
  else {
    for (const k of [GELU_TANH_KERNEL, GELU_TANH_GRAD_KERNEL]) {
      if (tf.getKernel(k, name)) tf.unregisterKernel(k, name);
    }
  }
  const before = tf.memory().numTensors;
  const xt = tf.tensor1d(x), wt = tf.tensor1d(w);
  let value!: tf.Tensor, grad!: tf.Tensor;
  const profile = await tf.profile(() => {
    // The reference's intermediates belong to the caller's scope, as for any composite op.
    value = tf.tidy(() => geluTanh(xt));
    // A weighted sum makes dy non-uniform, so the gradient kernel's dy input matters.
    grad = tf.grad((t: tf.Tensor) => geluTanh(t).mul(wt).sum())(xt);
  });
  const result = {
    value: (await value.data()) as Float32Array,
    grad: (await grad.data()) as Float32Array,
    kernels: new Set(profile.kernelNames),
  };
  for (const t of [xt, wt, value, grad]) t.dispose();
  assert.equal(tf.memory().numTensors, before, `${name}: tensors leaked`);
  return result;
}

Deno.test("geluTanh() through the kernels equals the stock-op reference on cpu and wasm", async () => {
  const rng = createRng(11);
  const large = [0, -0.75, 3, -3, 5, -5, 8, -8, 10, -10, 30, -30, 100, -100, 1e3, -1e3];
  // An odd length, so that the SIMD kernels also run their last few elements in JavaScript.
  const x = Float32Array.from([...normalArray(rng, 4003, 2), ...large]);
  // |dy| ≤ 1 keeps the check on the derivative itself: the stock float32 tanh saturates to -1
  // below x ≈ -5, where the reference's derivative is 0 and the true one up to 6e-7.
  const w = uniformArray(rng, x.length, -1, 1);
  for (const name of BACKENDS) {
    const ref = await geluAndGrad(name, x, w, false);
    assert.ok(!ref.kernels.has(GELU_TANH_KERNEL), `${name}: reference used the kernel`);
    for (const loops of [true, nativeLoops]) {
      const label = `${name} (${loops === true ? "JavaScript or SIMD" : "native"} loops)`;
      const fast = await geluAndGrad(name, x, w, loops);
      assert.ok(fast.kernels.has(GELU_TANH_KERNEL), `${label}: forward kernel not used`);
      assert.ok(fast.kernels.has(GELU_TANH_GRAD_KERNEL), `${label}: gradient kernel not used`);
      for (let i = 0; i < x.length; i++) {
        assertClose(fast.value[i]!, ref.value[i]!, 1e-6, `${label} gelu(${x[i]})`);
        assertClose(fast.grad[i]!, ref.grad[i]!, 1e-6, `${label} gelu'(${x[i]}) · ${w[i]}`);
        // And the kernels against the float64 truth, which the reference only approximates.
        assertClose(fast.value[i]!, Math.fround(gelu64(x[i]!)), 3e-7, `${label} gelu(${x[i]})`);
      }
    }
    registerGeluKernels(name);
  }
  // On wasm the kernels run the SIMD loops: the module must instantiate on tfjs's memory.
  const memory =
    (tf.findBackend("wasm") as unknown as { wasm: { asm: { memory: WebAssembly.Memory } } })
      .wasm.asm.memory;
  assert.ok(wasmSimdGeluLoops(memory), "wasm kernels fell back to JavaScript");
});

Deno.test("geluTanh() keeps the stock ops for int32 input", async () => {
  for (const name of BACKENDS) {
    await use(name);
    registerGeluKernels(name);
    const x = tf.tensor1d([-2, 0, 1, 3], "int32");
    const y = geluTanh(x);
    const got = await y.data();
    [-2, 0, 1, 3].forEach((v, i) => assertClose(got[i]!, gelu64(v), 1e-6, `${name} gelu(${v})`));
    x.dispose();
    y.dispose();
  }
});

Deno.test("registerGeluKernels() can repeat and refuses unknown backends", () => {
  registerGeluKernels("cpu");
  registerGeluKernels("cpu");
  assert.ok(tf.getKernel(GELU_TANH_KERNEL, "cpu"));
  assert.throws(
    () => registerGeluKernels("webgl" as CpuKernelBackend),
    /Cannot register GELU kernels for "webgl"/,
  );
});

/**
 * One AdamW step of one parameter as a single tfjs kernel on the CPU backends: the gradient's clip
 * factor, both moments and the decayed, updated parameter in one pass over the backend's memory.
 *
 * `AdamW.update` in `lib/optim/adamw.ts` (the reference) runs about fifteen elementwise ops per
 * parameter and the global-norm clipping three more: ~950 kernel calls a step for the toy GPT's 52
 * parameters, almost all of them on tensors too small for the work to outweigh a call's overhead
 * (8 ms of its training step). `AdamW.clipAndUpdate` dispatches here where the kernel is
 * registered.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CpuKernelBackend, fillOutputs, kernelInput, STORAGE } from "./kernel_storage.ts";

/**
 * The tfjs kernel name: inputs `{param, grad, m, v}`, float32, one shape; attributes
 * {@link AdamWStepAttrs}; outputs `[param, m, v]` after the step.
 */
export const ADAMW_KERNEL = "ScalarAdamW";

/** The settings of one step, the kernel's attributes. */
export interface AdamWStepAttrs {
  /** Learning rate. */
  lr: number;
  /** First moment's decay rate. */
  beta1: number;
  /** Second moment's decay rate. */
  beta2: number;
  /** Added to the root of the bias-corrected second moment. */
  eps: number;
  /** Decoupled weight decay per unit learning rate (0 for parameters that do not decay). */
  weightDecay: number;
  /** The step's number, from 1 (the bias corrections 1 − βᵗ). */
  step: number;
  /** The gradient's factor: the global-norm clipping's min(1, maxNorm / (norm + 1e-6)). */
  gradScale: number;
}

/**
 * One AdamW step, PyTorch's definition, over arrays: with g = grad·gradScale,
 * m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + eps) where
 * m̂ = m/(1 − β₁ᵗ), v̂ = v/(1 − β₂ᵗ). Computes in float64 from the stored float32 moments, as the
 * reference reads them back.
 *
 * @param p The parameter, with `g`, `m`, `v` (all one length).
 * @param g The gradient.
 * @param m The first moment.
 * @param v The second moment.
 * @param out Where the new parameter and moments go (may be `p`, `m`, `v` themselves).
 * @param a The step's settings.
 *
 * @example The first step moves every parameter by lr against its gradient's sign
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { adamwValues } from "./adamw_kernel.ts";
 * const p = Float32Array.of(1, 1), m = new Float32Array(2), v = new Float32Array(2);
 * const a = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 0, weightDecay: 0, step: 1, gradScale: 1 };
 * adamwValues(p, Float32Array.of(3, -0.5), m, v, { p, m, v }, a);
 * equal(p.join(), [Math.fround(0.9), Math.fround(1.1)].join());
 * ```
 */
export function adamwValues(
  p: Float32Array,
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  out: { p: Float32Array; m: Float32Array; v: Float32Array },
  a: AdamWStepAttrs,
): void {
  const { lr, beta1, beta2, eps, gradScale } = a;
  const c1 = 1 - beta1 ** a.step, c2 = 1 - beta2 ** a.step, decay = 1 - lr * a.weightDecay;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]! * gradScale;
    out.m[i] = beta1 * m[i]! + (1 - beta1) * gi;
    out.v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi;
    out.p[i] = p[i]! * decay - lr * (out.m[i]! / c1) / (Math.sqrt(out.v[i]! / c2) + eps);
  }
}

/**
 * Registers {@link ADAMW_KERNEL} for a CPU backend, replacing any registered before.
 *
 * @param backendName `cpu` or `wasm` (for `wasm`, `@tensorflow/tfjs-backend-wasm` imported first).
 * @returns A function that unregisters the kernel; calling it again does nothing.
 * @throws {Error} If `backendName` is not `cpu` or `wasm`.
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { ADAMW_KERNEL, registerAdamWKernel } from "./adamw_kernel.ts";
 * const restore = registerAdamWKernel("cpu");
 * ok(tf.getKernel(ADAMW_KERNEL, "cpu"));
 * restore();
 * ```
 */
export function registerAdamWKernel(backendName: CpuKernelBackend): () => void {
  if (!Object.hasOwn(STORAGE, backendName)) {
    throw new Error(
      `Cannot register the AdamW kernel for "${backendName}": not a supported backend ` +
        `(${Object.keys(STORAGE).join(", ")})`,
    );
  }
  const storageOf = STORAGE[backendName];
  if (tf.getKernel(ADAMW_KERNEL, backendName)) tf.unregisterKernel(ADAMW_KERNEL, backendName);
  tf.registerKernel({
    kernelName: ADAMW_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const storage = storageOf(backend);
      const param = kernelInput(storage, ADAMW_KERNEL, inputs, "param");
      const named = ["grad", "m", "v"].map((n) =>
        kernelInput(storage, ADAMW_KERNEL, inputs, n, param.shape)
      );
      const shape = param.shape;
      return fillOutputs(storage, [shape, shape, shape], ([p, m, v], read) => {
        const [g, m0, v0] = named.map(read);
        adamwValues(
          read(param),
          g!,
          m0!,
          v0!,
          { p: p!, m: m!, v: v! },
          attrs as unknown as AdamWStepAttrs,
        );
      });
    },
  });
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    tf.unregisterKernel(ADAMW_KERNEL, backendName);
  };
}

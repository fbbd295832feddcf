/**
 * Test helpers shared by the kernel families' tests: run code with a family's fast kernels
 * registered while counting how often they fell back to the stock ones.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import type { CpuKernelBackend } from "../kernel_storage.ts";

/**
 * Wraps the kernels registered now under `names` (the stock ones, or none) so that a test can
 * tell a fallback from the fast path: the fast kernels keep whatever was registered as fallback.
 *
 * @param backend The backend.
 * @param names The kernel names to count.
 * @returns The call count so far and a function that unwraps the kernels.
 */
export function countStockCalls(
  backend: CpuKernelBackend,
  names: readonly string[],
): { calls: () => number; restore: () => void } {
  const configs = names.map((name) => tf.getKernel(name, backend)).filter((c) => c !== undefined);
  let calls = 0;
  for (const config of configs) {
    tf.unregisterKernel(config.kernelName, backend);
    tf.registerKernel({
      ...config,
      kernelFunc: (args) => {
        calls++;
        return config.kernelFunc(args);
      },
    });
  }
  return {
    calls: () => calls,
    restore: () => {
      for (const config of configs) {
        tf.unregisterKernel(config.kernelName, backend);
        tf.registerKernel(config);
      }
    },
  };
}

/**
 * Runs `f` with a family's fast kernels registered for `backend`, which must be the active one
 * (else the stock kernels would run and the test would check nothing).
 *
 * @param backend The backend.
 * @param names The family's kernel names.
 * @param register The family's registration (returns its restore function).
 * @param f The code to run.
 * @returns `f`'s result and how many calls fell back to the stock kernels.
 */
export function withFastKernels<T>(
  backend: CpuKernelBackend,
  names: readonly string[],
  register: (backend: CpuKernelBackend) => () => void,
  f: () => T,
): { result: T; stock: number } {
  assert.equal(tf.getBackend(), backend, "active backend");
  const counter = countStockCalls(backend, names);
  try {
    const restore = register(backend);
    try {
      return { result: f(), stock: counter.calls() };
    } finally {
      restore();
    }
  } finally {
    counter.restore();
  }
}

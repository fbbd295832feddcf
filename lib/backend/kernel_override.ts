/**
 * Registering the project's kernels in place of tfjs's stock ones on a CPU backend, with a restore
 * function: one mechanism for every kernel family (BLAS products, reductions, gathers).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CpuKernelBackend, type KernelStorage, STORAGE } from "./kernel_storage.ts";

/** The arguments tfjs passes to a kernel. */
export type KernelArgs = Parameters<tf.KernelFunc>[0];

/**
 * A project kernel: it gets the backend's storage, the call, and the stock kernel to fall back
 * to for inputs it does not handle.
 */
export type FastKernel = (
  storage: KernelStorage,
  args: KernelArgs,
  stock: tf.KernelFunc,
) => tf.TensorInfo | tf.TensorInfo[];

const PACKAGES: Record<CpuKernelBackend, string> = {
  cpu: "@tensorflow/tfjs",
  wasm: "@tensorflow/tfjs-backend-wasm",
};

const registered = new Set<string>();

/**
 * Replaces a backend's stock kernels by the family's fast ones.
 *
 * @param family The family's name, for messages (e.g. `BLAS`).
 * @param backendName `cpu` or `wasm`; for `wasm` its package must be imported first (its
 *   backend need not be active yet).
 * @param kernels Kernel name → fast kernel.
 * @param fallback The kernel to fall back to where the backend has no stock one; without it a
 *   missing stock kernel is an error.
 * @returns A function that restores the previous kernels (removing those the backend lacked);
 *   calling it again does nothing.
 * @throws {Error} For another backend, a family already registered there, or a missing stock
 *   kernel without a fallback.
 */
export function overrideKernels(
  family: string,
  backendName: CpuKernelBackend,
  kernels: Readonly<Record<string, FastKernel>>,
  fallback?: (kernelName: string) => tf.KernelFunc,
): () => void {
  // The type stops TypeScript callers; this stops JavaScript ones and casts.
  if (!Object.hasOwn(STORAGE, backendName)) {
    throw new Error(
      `Cannot register ${family} kernels for "${backendName}": not a supported backend ` +
        `(${Object.keys(STORAGE).join(", ")})`,
    );
  }
  const key = `${family}/${backendName}`;
  if (registered.has(key)) {
    throw new Error(
      `Cannot register ${family} kernels for "${backendName}": already registered; ` +
        "call the restore function first",
    );
  }
  const storageOf = STORAGE[backendName];
  const stock = Object.entries(kernels).map(([kernelName, fast]) => {
    const config = tf.getKernel(kernelName, backendName);
    if (config === undefined && fallback === undefined) {
      throw new Error(
        `Cannot register ${family} kernel "${kernelName}" for "${backendName}": no stock kernel ` +
          `to replace (is ${PACKAGES[backendName]} imported?)`,
      );
    }
    const stockFunc = config?.kernelFunc ?? fallback!(kernelName);
    // registerKernel would overwrite too, but warns on the console about the duplicate.
    if (config !== undefined) tf.unregisterKernel(kernelName, backendName);
    tf.registerKernel({
      kernelName,
      backendName,
      kernelFunc: (args) => fast(storageOf(args.backend), args, stockFunc),
      // The engine runs a kernel's setupFunc when its backend starts; the stock wasm kernels
      // bind their C functions there, and the fallback to them needs that even if wasm starts
      // after this.
      setupFunc: config?.setupFunc,
      disposeFunc: config?.disposeFunc,
    });
    return { kernelName, config };
  });
  registered.add(key);
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    for (const { kernelName, config } of stock) {
      tf.unregisterKernel(kernelName, backendName);
      if (config !== undefined) tf.registerKernel(config);
    }
    registered.delete(key);
  };
}

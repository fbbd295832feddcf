/**
 * A wasm `Identity` that shares its input's memory instead of copying it.
 *
 * tfjs runs `Identity` on every tensor the gradient tape keeps for the backward pass; the stock
 * wasm kernel copies the data each time (a full copy per kept activation), while the stock cpu
 * kernel shares it by reference count. Tensors are never written in place (kernels write fresh
 * outputs and variables get a new buffer on assign), and the wasm backend already shares memory
 * the same way in its own `Reshape`, so sharing is safe.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

// The parts of tfjs-backend-wasm's BackendWasm this kernel uses.
interface RefCounted {
  incRef(dataId: tf.DataId): void;
}

/**
 * Replaces the wasm backend's `Identity` with one that shares memory.
 *
 * @returns A function that restores the stock kernel; calling it again does nothing.
 * @throws {Error} If the wasm backend's kernels are not registered (import the package first).
 */
export function registerSharedIdentity(): () => void {
  const stock = tf.getKernel(tf.Identity, "wasm");
  if (stock === undefined) {
    throw new Error(
      'Cannot replace "Identity" for "wasm": no stock kernel (is @tensorflow/tfjs-backend-wasm imported?)',
    );
  }
  tf.unregisterKernel(tf.Identity, "wasm");
  tf.registerKernel({
    kernelName: tf.Identity,
    backendName: "wasm",
    kernelFunc: (args) => {
      const x = args.inputs.x!;
      // Strings live outside the heap: the stock kernel handles them.
      if (x.dtype === "string") return stock.kernelFunc(args);
      (args.backend as unknown as RefCounted).incRef(x.dataId);
      return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
    },
  });
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    tf.unregisterKernel(tf.Identity, "wasm");
    tf.registerKernel(stock);
  };
}

/**
 * In-place access to the float32 tensors of the tfjs CPU backends (`cpu`: plain arrays; `wasm`:
 * views of the wasm heap), so that the project's own kernels (OpenBLAS products, TopK) serve both
 * backends with one code path and never copy operands.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

/** The tfjs backends whose tensors live in this process's memory. */
export type CpuKernelBackend = "cpu" | "wasm";

// The parts of tfjs-backend-cpu's MathBackendCPU these kernels use; that package is not imported
// directly, only through the umbrella package, which does not export its types.
interface CpuBackend {
  data: { get(dataId: tf.DataId): { values?: unknown } | undefined };
  makeTensorInfo(shape: number[], dtype: "float32", values: Float32Array): tf.TensorInfo;
  disposeData(dataId: tf.DataId): boolean;
}

// The parts of tfjs-backend-wasm's BackendWasm these kernels use. Importing its types would make
// this module load the wasm package even for callers that only want `cpu`.
interface WasmBackend {
  wasm: { HEAPU8: Uint8Array };
  dataIdMap: {
    has(dataId: tf.DataId): boolean;
    get(dataId: tf.DataId): { memoryOffset: number | null };
  };
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  disposeData(dataId: tf.DataId): boolean;
}

/**
 * A kernel's one output, freshly allocated, with in-place views of it and of the inputs. Each view
 * covers exactly one tensor's elements, so sgemm's bounds checks stop at that tensor's end rather
 * than at the end of the whole wasm heap, where an overrun would silently corrupt a neighbour.
 */
export interface Allocation {
  /** The output tensor to return from the kernel. */
  info: tf.TensorInfo;
  /** The output's values, written in place; not zeroed on wasm. */
  values: Float32Array;
  /** An input's values, read in place; only for tensors that `KernelStorage.isFloat32` accepted. */
  read(t: tf.TensorInfo): Float32Array;
  /** Frees the output, for a kernel that fails after allocating it. */
  release(): void;
}

/**
 * Where one backend keeps float32 tensors. Views come only from an allocation because on wasm an
 * allocation may grow the memory, which detaches every earlier view of it: a kernel allocates its
 * output once, then reads its inputs through that allocation and finishes before any other
 * allocation can happen.
 */
export interface KernelStorage {
  /** Whether `t` is present and holds float32 values this storage can view in place. */
  isFloat32(t: tf.TensorInfo | undefined): t is tf.TensorInfo;
  /** Allocates a float32 output of `shape`. */
  allocate(shape: number[]): Allocation;
}

function cpuStorage(backend: CpuBackend): KernelStorage {
  const valuesOf = (t: tf.TensorInfo) => backend.data.get(t.dataId)?.values;
  return {
    isFloat32: (t): t is tf.TensorInfo =>
      t !== undefined && t.dtype === "float32" && valuesOf(t) instanceof Float32Array,
    allocate(shape) {
      const values = new Float32Array(sizeOf(shape));
      // The cpu backend keeps `values` by reference, so filling it after this call fills the tensor.
      const info = backend.makeTensorInfo(shape, "float32", values);
      return {
        info,
        values,
        read: (t) => valuesOf(t) as Float32Array,
        release: () => void backend.disposeData(info.dataId),
      };
    },
  };
}

function wasmStorage(backend: WasmBackend): KernelStorage {
  return {
    isFloat32: (t): t is tf.TensorInfo =>
      t !== undefined && t.dtype === "float32" && backend.dataIdMap.has(t.dataId),
    allocate(shape) {
      const info = backend.makeOutput(shape, "float32");
      // Taken after makeOutput: its malloc may have grown the memory and detached the old buffer.
      const heap = backend.wasm.HEAPU8.buffer;
      const view = (t: tf.TensorInfo) => {
        const offset = backend.dataIdMap.get(t.dataId).memoryOffset;
        if (offset === null) {
          throw new Error(`Cannot read tensor ${t.dtype}[${t.shape}]: not in the wasm heap`);
        }
        // Throws on a misaligned offset rather than reading shifted values.
        return new Float32Array(heap, offset, sizeOf(t.shape));
      };
      return {
        info,
        values: view(info),
        read: view,
        release: () => void backend.disposeData(info.dataId),
      };
    },
  };
}

export const STORAGE: Record<CpuKernelBackend, (backend: unknown) => KernelStorage> = {
  cpu: (backend) => cpuStorage(backend as CpuBackend),
  wasm: (backend) => wasmStorage(backend as WasmBackend),
};

/**
 * Runs `write` on a freshly allocated output and returns the output, freeing it instead when
 * `write` throws (a kernel must not leak an output it never returns).
 *
 * @param out The allocation.
 * @param write Fills `out.values` (reading inputs through `out.read`).
 * @returns The output tensor.
 */
export function fill(out: Allocation, write: (out: Allocation) => void): tf.TensorInfo {
  try {
    write(out);
  } catch (e) {
    out.release();
    throw e;
  }
  return out.info;
}

/**
 * A kernel's several outputs: allocates one of each shape, runs `write` on views of all of them
 * (and reads inputs through `read`), views taken after the last allocation since on wasm each may
 * grow the memory; frees every output when `write` throws.
 *
 * @param storage The backend's storage.
 * @param shapes The outputs' shapes.
 * @param write Fills the outputs' values, in `shapes`' order.
 * @returns The output tensors.
 */
export function fillOutputs(
  storage: KernelStorage,
  shapes: readonly number[][],
  write: (outputs: Float32Array[], read: (t: tf.TensorInfo) => Float32Array) => void,
): tf.TensorInfo[] {
  const allocations = shapes.map((s) => storage.allocate(s));
  const last = allocations[allocations.length - 1]!;
  try {
    write(allocations.map((a) => last.read(a.info)), last.read);
  } catch (e) {
    for (const a of allocations) a.release();
    throw e;
  }
  return allocations.map((a) => a.info);
}

/**
 * Number of elements of a shape.
 *
 * @param shape Dimensions.
 * @returns Their product (1 for a scalar).
 */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * An input of a kernel call, checked: present, float32 in the backend's memory, of `shape`.
 *
 * @param storage The backend's storage.
 * @param kernel The kernel's name, for the messages.
 * @param inputs The call's inputs.
 * @param name The input's name.
 * @param shape Its expected shape, when the kernel knows it.
 * @returns The input.
 * @throws {Error} If it is missing or not float32 in memory; {RangeError} if its shape differs.
 */
export function kernelInput(
  storage: KernelStorage,
  kernel: string,
  inputs: tf.NamedTensorInfoMap,
  name: string,
  shape?: readonly number[],
): tf.TensorInfo {
  const t: tf.TensorInfo | undefined = inputs[name];
  if (t === undefined) throw new Error(`Cannot run ${kernel}: input "${name}" is missing`);
  if (!storage.isFloat32(t as tf.TensorInfo | undefined)) {
    throw new Error(
      `Cannot run ${kernel}: input "${name}" is ${t.dtype}[${t.shape}], expected float32 in memory`,
    );
  }
  if (shape !== undefined && !tf.util.arraysEqual(t.shape, [...shape])) {
    throw new RangeError(`Cannot run ${kernel}: ${name} is [${t.shape}], expected [${shape}]`);
  }
  return t;
}

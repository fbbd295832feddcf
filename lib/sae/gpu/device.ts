/**
 * The WebGPU device the project's own compute kernels run on, and the few buffer and pipeline
 * helpers every kernel shares. One device per process, requested with the adapter's largest
 * buffer and workgroup-memory limits (an SAE batch's pre-activations pass WebGPU's default
 * 128 MiB binding limit).
 *
 * The device is the engine's own, not tfjs's: the engine reads and writes tfjs variables through
 * their values only, so it works beside any tfjs backend, and kernel tests need no tfjs WebGPU.
 *
 * @module
 */

/** Names that adapters running on the CPU report (Mesa's llvmpipe/lavapipe, SwiftShader, …). */
export const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|swiftshader|softpipe|software|basic render/i;

/** A WebGPU device and what it runs on. */
export interface Gpu {
  /** The device. */
  readonly device: GPUDevice;
  /** The adapter's description, e.g. `NVIDIA H200` or `llvmpipe (LLVM 15.0.6, 256 bits)`. */
  readonly adapter: string;
  /** Whether the adapter is a software renderer on the CPU: correct, but no speed to measure. */
  readonly software: boolean;
}

let acquired: Promise<Gpu | string> | undefined;

/**
 * The process's WebGPU device, requested on first use; software adapters are accepted (the
 * caller decides whether one is good enough, see {@link Gpu.software}).
 *
 * @returns The device, or why there is none (no `navigator.gpu`, no adapter, no device).
 */
export function requestGpu(): Promise<Gpu | string> {
  acquired ??= acquire();
  return acquired;
}

async function acquire(): Promise<Gpu | string> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  if (gpu === undefined) return "navigator.gpu is not available in this runtime";
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (adapter === null) return "no WebGPU adapter (is a Vulkan driver installed?)";
  const info = adapter.info;
  const name = info.description || info.device || info.vendor || "unnamed adapter";
  const fallback = (info as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  const limits = adapter.limits;
  try {
    // Timestamps let the engine say where a step's time goes (`SaeEngine.profile`).
    const timing: GPUFeatureName[] = adapter.features.has("timestamp-query")
      ? ["timestamp-query"]
      : [];
    const device = await adapter.requestDevice({
      requiredFeatures: timing,
      requiredLimits: {
        maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
        maxBufferSize: limits.maxBufferSize,
        // The gradient gather stages 32·D bytes per workgroup: GPT-2's D = 768 needs 24 KiB.
        maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      },
    });
    device.addEventListener("uncapturederror", (e) => {
      const message = (e as GPUUncapturedErrorEvent).error.message;
      if (!failures.has(device)) failures.set(device, message);
    });
    return { device, adapter: name, software: fallback || SOFTWARE_ADAPTER.test(name) };
  } catch (e) {
    return `the adapter (${name}) gave no device: ${e instanceof Error ? e.message : e}`;
  }
}

// The first error WebGPU raised on a device outside an error scope: a failed command leaves its
// outputs untouched rather than throwing, so work is checked with `throwGpuError`.
const failures = new WeakMap<GPUDevice, string>();

/**
 * Throws the first WebGPU error raised on the device since the last call, if any (validation
 * and out-of-memory errors do not throw where they happen; results would silently be wrong).
 *
 * @param device The device.
 * @param doing What the work was, for the message.
 * @throws {Error} With WebGPU's message.
 */
export function throwGpuError(device: GPUDevice, doing: string): void {
  const message = failures.get(device);
  if (message === undefined) return;
  failures.delete(device);
  throw new Error(`Cannot ${doing}: WebGPU reported "${message}"`);
}

/** Usage of every buffer a kernel reads or writes: storage, and copies both ways. */
const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/**
 * A storage buffer, zero-filled or holding `data`. Sizes round up to 4 bytes and to at least 4
 * (WebGPU rejects empty bindings).
 *
 * @param device The device.
 * @param label Name shown in WebGPU errors.
 * @param contents Byte size, or the initial values.
 * @returns The buffer.
 */
export function storageBuffer(
  device: GPUDevice,
  label: string,
  contents: number | Float32Array | Uint32Array,
): GPUBuffer {
  const bytes = typeof contents === "number" ? contents : contents.byteLength;
  const buffer = device.createBuffer({
    label,
    size: Math.max(4, Math.ceil(bytes / 4) * 4),
    usage: STORAGE,
  });
  if (typeof contents !== "number") writeArray(device, buffer, 0, contents);
  return buffer;
}

/**
 * A uniform buffer holding `data`, writable later with `queue.writeBuffer`.
 *
 * @param device The device.
 * @param label Name shown in WebGPU errors.
 * @param data Initial contents (16-byte multiples, as uniform structs are laid out).
 * @returns The buffer.
 */
export function uniformBuffer(device: GPUDevice, label: string, data: ArrayBufferView): GPUBuffer {
  const buffer = device.createBuffer({
    label,
    size: Math.ceil(data.byteLength / 16) * 16,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  writeArray(device, buffer, 0, data);
  return buffer;
}

/**
 * Queues a write of a typed array's bytes into a buffer (ordered after work submitted so far).
 *
 * @param device The device.
 * @param buffer The buffer (`COPY_DST` usage).
 * @param offset Byte offset in the buffer.
 * @param data The values.
 */
export function writeArray(
  device: GPUDevice,
  buffer: GPUBuffer,
  offset: number,
  data: ArrayBufferView,
): void {
  // WebGPU takes no SharedArrayBuffer views; the project's arrays never are.
  device.queue.writeBuffer(
    buffer,
    offset,
    data.buffer as ArrayBuffer,
    data.byteOffset,
    data.byteLength,
  );
}

/**
 * Copies a buffer's first `bytes` bytes back to the CPU (waits for all work submitted so far).
 *
 * @param device The device.
 * @param buffer A buffer with `COPY_SRC` usage.
 * @param bytes How many bytes, from the start.
 * @returns A copy of the bytes.
 */
export async function readBuffer(
  device: GPUDevice,
  buffer: GPUBuffer,
  bytes = buffer.size,
): Promise<ArrayBuffer> {
  const staging = device.createBuffer({
    size: Math.ceil(bytes / 4) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const encoder = device.createCommandEncoder();
  encoder.copyBufferToBuffer(buffer, 0, staging, 0, staging.size);
  device.queue.submit([encoder.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const copy = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return copy;
}

/** A compiled compute kernel: its pipeline and how many workgroups a piece of work takes. */
export interface Kernel {
  /** Label shown in WebGPU errors. */
  readonly label: string;
  /** The compute pipeline (entry point `main`, bind group 0). */
  readonly pipeline: GPUComputePipeline;
  /** Workgroups (x, y) for `count` units of the kernel's work (rows, entries, features…). */
  groups(count: number): [number, number];
}

const compiled = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/**
 * Compiles a WGSL kernel (entry point `main`), once per device and source text, and throws with
 * the compiler's message instead of leaving a broken pipeline to fail later.
 *
 * @param device The device.
 * @param label Name shown in errors.
 * @param code WGSL source.
 * @param groupsFor Workgroups needed for `count` units of work (see {@link Kernel.groups});
 *   by default one unit per workgroup.
 * @returns The kernel.
 * @throws {Error} If the WGSL does not compile or the pipeline is invalid.
 */
export async function compileKernel(
  device: GPUDevice,
  label: string,
  code: string,
  groupsFor: (count: number) => number = (count) => count,
): Promise<Kernel> {
  let cache = compiled.get(device);
  if (cache === undefined) compiled.set(device, cache = new Map());
  let pipeline = cache.get(code);
  if (pipeline === undefined) {
    device.pushErrorScope("validation");
    const module = device.createShaderModule({ label, code });
    pipeline = device.createComputePipeline({
      label,
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    const error = await device.popErrorScope();
    if (error !== null) throw new Error(`Cannot compile WGSL kernel "${label}": ${error.message}`);
    cache.set(code, pipeline);
  }
  return { label, pipeline, groups: (count) => spreadGroups(groupsFor(count)) };
}

/**
 * Binds whole buffers to a kernel's group 0 in binding order 0, 1, 2, ….
 *
 * @param device The device.
 * @param kernel The kernel.
 * @param buffers One buffer per binding, in order.
 * @returns The bind group.
 */
export function bindBuffers(device: GPUDevice, kernel: Kernel, buffers: GPUBuffer[]): GPUBindGroup {
  return device.createBindGroup({
    label: kernel.label,
    layout: kernel.pipeline.getBindGroupLayout(0),
    entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
  });
}

/** WebGPU's guaranteed largest workgroup count per dimension. */
export const MAX_GROUPS = 65_535;

/**
 * Spreads `count` workgroups over x and y, since one dimension holds at most {@link MAX_GROUPS};
 * a kernel recovers its flat index as `wg.y * num_workgroups.x + wg.x` and skips indices ≥ count.
 *
 * @param count Workgroups needed.
 * @returns `[x, y]`.
 */
export function spreadGroups(count: number): [number, number] {
  if (count <= MAX_GROUPS) return [Math.max(1, count), 1];
  return [MAX_GROUPS, Math.ceil(count / MAX_GROUPS)];
}

/**
 * Records one dispatch into a compute pass.
 *
 * @param pass The pass.
 * @param kernel The kernel.
 * @param group Its bind group.
 * @param count Units of the kernel's work (see {@link Kernel.groups}).
 */
export function dispatch(
  pass: GPUComputePassEncoder,
  kernel: Kernel,
  group: GPUBindGroup,
  count: number,
): void {
  const [x, y] = kernel.groups(count);
  pass.setPipeline(kernel.pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(x, y);
}

/**
 * The per-micro-batch uniform every row kernel reads: which rows of the step's batch it covers.
 * WGSL side: `struct Rows { offset: u32, count: u32, index: u32, pad: u32 }`.
 */
export const ROWS_STRUCT = "struct Rows { offset: u32, count: u32, index: u32, pad: u32 }";

/**
 * Values of the {@link ROWS_STRUCT} uniform.
 *
 * @param offset First row of the batch.
 * @param count Rows in this micro-batch.
 * @param index The micro-batch's index in the step.
 * @returns The uniform's bytes.
 */
export function rowsUniform(offset: number, count: number, index: number): Uint32Array {
  return Uint32Array.of(offset, count, index, 0);
}

/**
 * Formats a number as a WGSL f32 literal (exact for f32 values: 9 significant digits).
 *
 * @param x The value.
 * @returns e.g. `0.5f`, `-1.25e-7f`.
 */
export function f32Literal(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`Cannot write ${x} as a WGSL literal`);
  const s = Math.fround(x).toPrecision(9);
  return `${s.includes("e") || s.includes(".") ? s : s + ".0"}f`;
}

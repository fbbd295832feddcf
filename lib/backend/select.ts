/**
 * Chooses the TensorFlow.js backend at run time: native TensorFlow where a user has it, WebGPU on
 * a real GPU, then the fastest CPU path (tfjs `wasm` with OpenBLAS matrix products, else `cpu`).
 * Nothing else in the project depends on the choice: numeric code reads tensors asynchronously
 * only, so every backend runs the same code.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createRequire } from "node:module";
import { registerAdamWKernel } from "./adamw_kernel.ts";
import { openAttentionKernels } from "./attention_kernel.ts";
import { openBlas } from "./blas.ts";
import { registerBlasKernels } from "./blas_kernels.ts";
import type { CpuKernelBackend } from "./kernel_storage.ts";
import { loadNativeGeluLoops, registerGeluKernels } from "./gelu_kernel.ts";
import { openLayerNormKernels } from "./layer_norm_kernel.ts";
import { registerSharedIdentity } from "./identity_kernel.ts";
import { registerReduceKernels } from "./reduce_kernels.ts";
import { registerScatterKernels } from "./scatter_kernels.ts";
import { registerSplitKernel } from "./split_kernel.ts";
import { registerTopkReluKernel } from "./topk_relu_kernel.ts";

/** The backends a user can ask for. */
export const BACKEND_CHOICES = ["auto", "tensorflow", "webgpu", "wasm", "cpu"] as const;

/** A backend a user can ask for; `auto` picks the fastest one present. */
export type BackendChoice = typeof BACKEND_CHOICES[number];

/** The environment variable that chooses the backend when no `--backend` flag is given. */
export const BACKEND_ENV = "SCALAR_BACKEND";

/** The backend a run got. */
export interface SelectedBackend {
  /** The tfjs backend name now active (`tensorflow`, `webgpu`, `wasm` or `cpu`). */
  name: Exclude<BackendChoice, "auto">;
  /** What runs it, e.g. `cpu + OpenBLAS (/usr/lib/…/libopenblas.so.0)` or `webgpu (NVIDIA H200)`. */
  detail: string;
  /** Why each faster candidate was passed over, worded for a person. */
  skipped: string[];
}

/** Thrown when an explicitly requested backend cannot run. */
export class BackendError extends Error {
  override name = "BackendError";
}

type Probe = { ok: true; detail: string } | { ok: false; reason: string };

/** Native TensorFlow through tfjs-node(-gpu), if the user installed it; never downloads. */
async function probeTensorflow(): Promise<Probe> {
  const require = createRequire(import.meta.url);
  const missing: string[] = [];
  for (const pkg of ["@tensorflow/tfjs-node-gpu", "@tensorflow/tfjs-node"]) {
    let resolved: string;
    try {
      resolved = require.resolve(pkg);
    } catch {
      missing.push(pkg.replace("@tensorflow/", ""));
      continue;
    }
    try {
      // The package registers the "tensorflow" backend when it loads.
      await import(resolved);
      await tf.setBackend("tensorflow");
      return { ok: true, detail: `tensorflow (${pkg})` };
    } catch (e) {
      return { ok: false, reason: `${pkg} is installed but failed to load: ${message(e)}` };
    }
  }
  return { ok: false, reason: `${missing.join(" and ")} not installed` };
}

/** Names that adapters running on the CPU report. */
const SOFTWARE_ADAPTER = /llvmpipe|lavapipe|swiftshader|softpipe|software|microsoft basic render/i;

/**
 * Gives the process a private `XDG_RUNTIME_DIR` when it has none: the Vulkan loader's window-system
 * probing prints `error: XDG_RUNTIME_DIR is invalid or not set` twice on every adapter request
 * without one (a headless server, a container), which is noise, not an error of ours.
 */
function ensureRuntimeDir(): void {
  const dir = Deno.env.get("XDG_RUNTIME_DIR");
  try {
    if (dir && Deno.statSync(dir).isDirectory) return;
  } catch {
    // Missing: made below.
  }
  // One folder per user, reused, so that processes leave no trail of temporary folders.
  const own = `${Deno.env.get("TMPDIR") || "/tmp"}/scalar-lab-runtime-${Deno.uid() ?? 0}`;
  Deno.mkdirSync(own, { recursive: true, mode: 0o700 });
  Deno.env.set("XDG_RUNTIME_DIR", own);
}

/** WebGPU, accepting a software adapter only when the user asked for WebGPU by name. */
async function probeWebgpu(allowSoftware: boolean): Promise<Probe> {
  const gpu = (navigator as { gpu?: GPU }).gpu;
  if (gpu === undefined) return { ok: false, reason: "navigator.gpu is not available" };
  ensureRuntimeDir();
  const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
  if (adapter === null) {
    return { ok: false, reason: "no WebGPU adapter (is a Vulkan driver installed?)" };
  }
  const info = adapter.info;
  const name = info.description || info.device || info.vendor || "unnamed adapter";
  const fallback = (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  if (!allowSoftware && (fallback || SOFTWARE_ADAPTER.test(name))) {
    return { ok: false, reason: `the adapter is a software renderer (${name}), not a GPU` };
  }
  await import("@tensorflow/tfjs-backend-webgpu");
  if (!(await tf.setBackend("webgpu"))) return { ok: false, reason: "tfjs webgpu failed to start" };
  return { ok: true, detail: `webgpu (${name})` };
}

/**
 * Activates a CPU backend as tfjs ships it, without the project's kernels (the benchmark's
 * baseline; {@link selectBackend} adds the kernels on top).
 *
 * @param name `wasm` or `cpu`.
 * @returns Whether the backend started.
 */
export async function useStockBackend(name: CpuKernelBackend): Promise<boolean> {
  if (name === "wasm") await import("@tensorflow/tfjs-backend-wasm");
  if (!(await tf.setBackend(name))) return false;
  // We announce the backend ourselves; tfjs's first-use banner would only advertise tfjs-node.
  if (name === "cpu") (tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
  return true;
}

/**
 * Starts a CPU backend (`wasm`: SIMD elementwise ops; `cpu`: plain JavaScript) with the project's
 * kernels: matrix products in OpenBLAS when the library loads, reductions without transposes,
 * gathers and scatter-adds, splits, fused GELU, the SAE TopK selection, one AdamW step per
 * parameter, fused causal attention, LayerNorm and native GELU loops (native, when a C compiler
 * builds them), and (wasm) tape copies that share memory.
 */
async function probeCpuBackend(name: CpuKernelBackend): Promise<Probe & { blas?: string }> {
  if (!(await useStockBackend(name))) return { ok: false, reason: `tfjs ${name} failed to start` };
  registerTopkReluKernel(name);
  registerReduceKernels(name);
  registerScatterKernels(name);
  registerSplitKernel(name);
  registerAdamWKernel(name);
  if (name === "wasm") registerSharedIdentity();
  // Without a C compiler the model still runs, with attention in stock ops and GELU in JavaScript
  // or wasm SIMD; the line says why.
  const attention = await openAttentionKernels(name);
  const gelu = await loadNativeGeluLoops().catch((e: unknown) => ({ error: message(e) }));
  registerGeluKernels(name, "error" in gelu ? undefined : gelu);
  const layerNorm = await openLayerNormKernels(name);
  const fused =
    ("error" in attention
      ? `, attention in stock ops (${attention.error})`
      : ", fused native attention") +
    ("error" in gelu ? "" : ", native GELU") +
    ("error" in layerNorm ? "" : ", native LayerNorm");
  const blas = openBlas();
  if ("error" in blas) {
    return { ok: true, detail: `${name} (stock matmul${fused})`, blas: blas.error };
  }
  registerBlasKernels(blas, name);
  return { ok: true, detail: `${name} + OpenBLAS (${blas.path}${fused})` };
}

/**
 * Parses a backend name from a flag, the environment or a manifest.
 *
 * @param value The text given.
 * @param source Where it came from, for the error message.
 * @returns The choice.
 * @throws {BackendError} If the name is not one of {@link BACKEND_CHOICES}.
 */
export function parseBackendChoice(value: string, source: string): BackendChoice {
  if ((BACKEND_CHOICES as readonly string[]).includes(value)) return value as BackendChoice;
  throw new BackendError(
    `Cannot use backend "${value}" from ${source}: expected one of ${BACKEND_CHOICES.join(", ")}`,
  );
}

let selected: SelectedBackend | undefined;

/**
 * Activates a backend. With `auto`: native TensorFlow if tfjs-node(-gpu) loads, then WebGPU on a
 * hardware adapter, then tfjs `wasm`, then tfjs `cpu` — both with OpenBLAS products when the library
 * loads. A named
 * backend that cannot run is an error rather than a silent fallback. Selecting twice in one process
 * returns the first selection (tfjs kernels are process-global).
 *
 * @param choice What the user asked for.
 * @returns What runs, and why faster candidates were skipped.
 * @throws {BackendError} If a named backend is not available here.
 */
export async function selectBackend(choice: BackendChoice): Promise<SelectedBackend> {
  if (selected) {
    if (choice !== "auto" && choice !== selected.name) {
      throw new BackendError(
        `Cannot switch to backend "${choice}": "${selected.name}" is already active in this process`,
      );
    }
    return selected;
  }
  const skipped: string[] = [];
  const attempt = (name: SelectedBackend["name"], probe: Probe) => {
    if (probe.ok) return (selected = { name, detail: probe.detail, skipped });
    if (choice === name) throw new BackendError(`Cannot use backend "${name}": ${probe.reason}`);
    skipped.push(`${name}: ${probe.reason}`);
    return undefined;
  };
  if (choice === "auto" || choice === "tensorflow") {
    const got = attempt("tensorflow", await probeTensorflow());
    if (got) return got;
  }
  if (choice === "auto" || choice === "webgpu") {
    const got = attempt("webgpu", await probeWebgpu(choice === "webgpu"));
    if (got) return got;
  }
  // wasm before cpu: both get OpenBLAS products, and wasm's elementwise ops are far faster.
  for (const name of ["wasm", "cpu"] as const) {
    if (choice !== "auto" && choice !== name) continue;
    const probe = await probeCpuBackend(name);
    if (probe.blas !== undefined) skipped.push(`OpenBLAS: ${probe.blas}`);
    const got = attempt(name, probe);
    if (got) return got;
  }
  throw new BackendError(`Cannot start any backend: ${skipped.join("; ")}`);
}

/**
 * Formats the one line a command prints about its backend.
 *
 * @param b The selection.
 * @returns e.g. `backend: cpu + OpenBLAS (…) — skipped tensorflow: not installed; webgpu: …`.
 */
export function describeBackend(b: SelectedBackend): string {
  return `backend: ${b.detail}` + (b.skipped.length ? ` — skipped ${b.skipped.join("; ")}` : "");
}

/**
 * Reads the backend choice from a command-line value, else `$SCALAR_BACKEND`, else the default.
 *
 * @param flag The `--backend` value, if given.
 * @param fallback The manifest's choice or `auto`.
 * @returns The choice.
 * @throws {BackendError} If a given name is unknown.
 */
export function backendChoiceFrom(
  flag: string | undefined,
  fallback: BackendChoice,
): BackendChoice {
  if (flag !== undefined) return parseBackendChoice(flag, "--backend");
  const env = Deno.env.get(BACKEND_ENV);
  if (env) return parseBackendChoice(env, `$${BACKEND_ENV}`);
  return fallback;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

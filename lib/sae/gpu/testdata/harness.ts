/**
 * Test helpers shared by the GPU kernel tests: one device for the test module (tests are skipped,
 * with the reason printed, only when no WebGPU adapter exists at all, so a software adapter such
 * as Mesa's llvmpipe runs them), buffer round trips, and the comparison with the tfjs reference,
 * which runs on the stock tfjs `cpu` backend.
 *
 * @module
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { buildSaes, type SaeConfig, type SaeSet } from "../../architectures.ts";
import { layoutPosition } from "../../positions.ts";
import { decode, preActivations, reconstructionLoss } from "../../sae.ts";
import { topkRelu } from "../../topk_relu.ts";
import { createRng, normalArray } from "../../../util/rng.ts";
import {
  bindBuffers,
  dispatch,
  type Gpu,
  type Kernel,
  readBuffer,
  requestGpu,
  storageBuffer,
} from "../device.ts";
import { layoutParams, type ParamLayout } from "../../param_layout.ts";

// Mesa's Vulkan drivers complain on stderr when this is unset; set before the first adapter.
if (Deno.env.get("XDG_RUNTIME_DIR") === undefined) Deno.env.set("XDG_RUNTIME_DIR", "/tmp");

await tf.setBackend("cpu");
// The reference runs on stock tfjs cpu on purpose; its first-use banner would only advertise tfjs-node.
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;
const gpu = await requestGpu();
if (typeof gpu === "string") console.log(`GPU kernel tests skipped: ${gpu}`);

/**
 * Registers a test that gets the device, or is ignored (with the reason printed once) when no
 * WebGPU adapter exists.
 *
 * @param name Test name.
 * @param fn The test.
 */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void>): void {
  if (typeof gpu === "string") Deno.test({ name, ignore: true, fn() {} });
  else Deno.test(name, () => fn(gpu));
}

/**
 * A storage buffer holding `data`.
 *
 * @param g The device.
 * @param data Values.
 * @returns The buffer.
 */
export function upload(g: Gpu, data: Float32Array | Uint32Array): GPUBuffer {
  return storageBuffer(g.device, "test input", data);
}

/**
 * Reads `n` f32 values back.
 *
 * @param g The device.
 * @param buffer The buffer.
 * @param n Values to read.
 * @returns The values.
 */
export async function readF32(g: Gpu, buffer: GPUBuffer, n: number): Promise<Float32Array> {
  return new Float32Array(await readBuffer(g.device, buffer, n * 4));
}

/**
 * Reads `n` u32 values back.
 *
 * @param g The device.
 * @param buffer The buffer.
 * @param n Values to read.
 * @returns The values.
 */
export async function readU32(g: Gpu, buffer: GPUBuffer, n: number): Promise<Uint32Array> {
  return new Uint32Array(await readBuffer(g.device, buffer, n * 4));
}

/**
 * Asserts that `actual` equals the reference within `tol` relative to the reference's largest
 * magnitude (max |a − e| / max |e|; elementwise relative error is meaningless for entries that
 * cancel to near zero). With `$SCALAR_TEST_ERRORS` set, prints the measured error.
 *
 * @param actual The kernel's values.
 * @param expected The reference's values.
 * @param what Names the quantity in the message.
 * @param tol Largest allowed relative error. @default 1e-4
 * @returns The measured relative error.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  tol = 1e-4,
): number {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let diff = 0, scale = 0, worst = -1;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= diff)) [diff, worst] = [d, i];
    scale = Math.max(scale, Math.abs(expected[i]!));
  }
  const rel = scale === 0 ? diff : diff / scale;
  if (Deno.env.get("SCALAR_TEST_ERRORS")) {
    console.log(`  ${what}: max rel error ${rel.toExponential(2)}`);
  }
  assert.ok(
    rel <= tol,
    `${what}: relative error ${rel} > ${tol} at ${worst} (got ${actual[worst]}, want ${
      expected[worst]
    }; scale ${scale})`,
  );
  return rel;
}

/**
 * A tensor's values as a Float32Array.
 *
 * @param t The tensor (disposed).
 * @returns Its values.
 */
export async function values(t: tf.Tensor): Promise<Float32Array> {
  const v = (await t.data()) as Float32Array;
  t.dispose();
  return Float32Array.from(v);
}

/**
 * Gives every parameter of an SAE set random values (biases too, which start at zero), so that
 * tests exercise every term.
 *
 * @param saes The SAEs.
 * @param seed Seed.
 */
export function randomizeParams(saes: SaeSet, seed: number): void {
  const rng = createRng(seed);
  for (const v of saes.params.values()) v.assign(tf.tensor(normalArray(rng, v.size, 0.3), v.shape));
}

/**
 * An SAE set's parameters packed as the engine's flat buffer lays them out.
 *
 * @param saes The SAEs.
 * @param layout Their layout.
 * @returns The flat values.
 */
export async function flatParams(saes: SaeSet, layout: ParamLayout): Promise<Float32Array> {
  const flat = new Float32Array(layout.length);
  for (const s of layout.slots) {
    flat.set(await saes.params.get(s.name)!.data() as Float32Array, s.offset);
  }
  return flat;
}

/**
 * Random activations.
 *
 * @param rows Rows.
 * @param d Width.
 * @param seed Seed.
 * @returns `[rows, d]` standard normal values.
 */
export function randomRows(rows: number, d: number, seed: number): Float32Array {
  return normalArray(createRng(seed), rows * d, 1);
}

/** The reference's intermediate values of one TopK SAE on one batch (see {@link referenceSae}). */
export interface SaeReference {
  /** Kept pairs per row, ascending feature order: indices `[rows, k]`. */
  idx: Uint32Array;
  /** Their values. */
  val: Float32Array;
  /** ∂L/∂x̂ `[rows, D]` for the loss Σ_d (x̂ − x)² averaged over the rows. */
  dxhat: Float32Array;
  /** ∂L/∂pre at the kept pairs `[rows, k]`. */
  dpre: Float32Array;
  /** The loss. */
  loss: number;
  /** Mean count of positive kept values per row. */
  l0: number;
  /** Gradients of the SAE's own parameters by name (`W_enc`, `b_enc`, `W_dec`, `b_dec`). */
  grads: Map<string, Float32Array>;
}

/**
 * Computes a TopK SAE's forward and backward pass with the reference's tfjs code.
 *
 * @param saes A `topk` SAE set.
 * @param hook The SAE.
 * @param x Its batch `[rows, D]`.
 * @param rows Rows.
 * @returns Kept pairs, gradients and loss.
 */
export async function referenceSae(
  saes: SaeSet,
  hook: string,
  x: Float32Array,
  rows: number,
): Promise<SaeReference> {
  const w = saes.weights(hook);
  const [d, k] = [w.bDec.shape[0], saes.k];
  const xs = tf.tensor2d(x, [rows, d]);
  const pre = preActivations(w, xs);
  const lossOf = (p: tf.Tensor) => reconstructionLoss(xs, decode(w, topkRelu(p as tf.Tensor2D, k)));
  const f = topkRelu(pre, k);
  const { indices } = tf.topk(tf.relu(pre), k);
  const ids = await indices.data(), fv = await f.data();
  const dpreDense = await tf.grad(lossOf)(pre).data();
  const xhat = decode(w, f);
  const dxhat = await values(xhat.sub(xs).mul(2 / rows));
  const idx = new Uint32Array(rows * k), val = new Float32Array(rows * k);
  const dpre = new Float32Array(rows * k);
  const width = pre.shape[1];
  for (let r = 0; r < rows; r++) {
    const sorted = [...ids.subarray(r * k, (r + 1) * k)].sort((a, b) => a - b);
    sorted.forEach((j, s) => {
      idx[r * k + s] = j;
      val[r * k + s] = fv[r * width + j]!;
      dpre[r * k + s] = dpreDense[r * width + j]!;
    });
  }
  const names = ["W_enc", "b_enc", "W_dec", "b_dec"];
  const vars = names.map((n) => saes.params.get(`${hook}/${n}`)!);
  const { value, grads } = tf.variableGrads(() => lossOf(preActivations(w, xs)), vars);
  const l0 = val.reduce((n, v) => n + (v > 0 ? 1 : 0), 0) / rows;
  const result = {
    idx,
    val,
    dxhat,
    dpre,
    loss: (await value.data())[0]!,
    l0,
    grads: new Map(
      await Promise.all(
        names.map(async (n, i) => [n, await values(grads[vars[i]!.name]!)] as const),
      ),
    ),
  };
  tf.dispose([xs, pre, f, indices, xhat, value]);
  return result;
}

/**
 * Runs one kernel dispatch and waits for it.
 *
 * @param g The device.
 * @param kernel The kernel.
 * @param buffers Its bindings in order.
 * @param count Units of its work.
 */
export async function runKernel(
  g: Gpu,
  kernel: Kernel,
  buffers: GPUBuffer[],
  count: number,
): Promise<void> {
  const encoder = g.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  dispatch(pass, kernel, bindBuffers(g.device, kernel, buffers), count);
  pass.end();
  g.device.queue.submit([encoder.finish()]);
  await g.device.queue.onSubmittedWorkDone();
}

/** A random TopK SAE set on one `mlp` pair, laid out, with its first SAE's view. */
export async function topkFixture(d: number, features: number, k: number, seed: number) {
  const config: SaeConfig = { arch: "topk", features, k, jsaeLambda: 0 };
  const saes = buildSaes(config, layoutPosition("mlp", 1), d, seed);
  randomizeParams(saes, seed + 1);
  const layout = layoutParams(saes, config);
  return { saes, layout, view: layout.saes[0]!, flat: await flatParams(saes, layout) };
}

/**
 * The per-feature lists of kept pairs (`feature_lists.ts`), computed on the CPU.
 *
 * @param idx Kept indices `[rows, k]`.
 * @param width Features.
 * @returns Lists (pair indices in row order, feature after feature) and their starts.
 */
export function featureLists(idx: Uint32Array, width: number): {
  lists: Uint32Array;
  starts: Uint32Array;
} {
  const lists: number[][] = Array.from({ length: width }, () => []);
  idx.forEach((j, e) => lists[j]!.push(e));
  const starts = [0];
  for (const l of lists) starts.push(starts.at(-1)! + l.length);
  return { lists: Uint32Array.from(lists.flat()), starts: Uint32Array.from(starts) };
}

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
import type { SaeSet } from "../../sae/architectures.ts";
import { createRng, normalArray } from "../../util/rng.ts";
import { type Gpu, readBuffer, requestGpu, storageBuffer } from "../device.ts";
import type { ParamLayout } from "../layout.ts";

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

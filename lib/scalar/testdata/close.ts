/**
 * Closeness of two arrays for the SCALAR tests: the largest difference relative to the reference's
 * largest magnitude.
 *
 * @module
 */
import assert from "node:assert/strict";

/**
 * Asserts max |a − b| ≤ tol · max |b|, with b not all zero.
 *
 * @param a The values under test.
 * @param b The reference values.
 * @param tol Relative tolerance.
 * @param what Named in the failure message.
 *
 * @example
 * ```ts
 * import { assertRelClose } from "./close.ts";
 * assertRelClose(new Float32Array([1, 2.0001]), new Float32Array([1, 2]), 1e-3, "x");
 * ```
 */
export function assertRelClose(a: Float32Array, b: Float32Array, tol: number, what: string): void {
  assert.equal(a.length, b.length, what);
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  assert.ok(scale > 0, `${what}: reference is all zero`);
  assert.ok(diff <= tol * scale, `${what}: max |a − b| = ${diff}, max |b| = ${scale}`);
}

/**
 * The sha256 of a file's bytes, read as a stream (a model's weights can be gigabytes).
 *
 * @module
 */
import { createHash } from "node:crypto";

/**
 * Hashes a file.
 *
 * @param path The file.
 * @returns Its sha256 as 64 lowercase hex digits.
 * @throws Deno's error when the file cannot be read (`Deno.errors.NotFound`…).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { sha256File } from "./sha256_file.ts";
 * const file = await Deno.makeTempFile();
 * await Deno.writeTextFile(file, "abc");
 * equal(
 *   await sha256File(file),
 *   "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
 * );
 * await Deno.remove(file);
 * ```
 */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await Deno.open(path);
  // The stream closes the file when it ends or fails.
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

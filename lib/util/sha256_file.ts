/**
 * The sha256 of a file's bytes, read as a stream (a model's weights can be gigabytes), and a
 * cache of it keyed by where the file is, its size, modification time and inode, so that checking
 * a manifest again does not read gigabytes again; any rewrite of the file changes the key.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";

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

/**
 * Hashes a file, or reads its hash from `cacheDir` when the file has not changed since (same
 * real path, size, modification time and inode). A cache that cannot be written is skipped.
 *
 * @param path The file.
 * @param cacheDir Where the hashes are kept (created when needed).
 * @returns Its sha256 as 64 lowercase hex digits.
 * @throws Deno's error when the file cannot be read.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { cachedSha256File } from "./sha256_file.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/f`, "abc");
 * const first = await cachedSha256File(`${dir}/f`, `${dir}/cache`);
 * equal(await cachedSha256File(`${dir}/f`, `${dir}/cache`), first);
 * await Deno.writeTextFile(`${dir}/f`, "abcd");
 * equal(
 *   await cachedSha256File(`${dir}/f`, `${dir}/cache`),
 *   "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589",
 * );
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function cachedSha256File(path: string, cacheDir: string): Promise<string> {
  const stat = await Deno.stat(path);
  const key = createHash("sha256")
    .update(JSON.stringify([await Deno.realPath(path), stat.size, stat.mtime?.getTime(), stat.ino]))
    .digest("hex");
  const entry = join(cacheDir, key);
  const known = await Deno.readTextFile(entry).catch(() => "");
  if (/^[0-9a-f]{64}$/.test(known)) return known;
  const sha256 = await sha256File(path);
  await Deno.mkdir(cacheDir, { recursive: true })
    .then(() => Deno.writeTextFile(`${entry}.tmp-${Deno.pid}`, sha256))
    .then(() => Deno.rename(`${entry}.tmp-${Deno.pid}`, entry))
    .catch(() => {});
  return sha256;
}

/**
 * Where the project caches what it can rebuild (downloaded corpora, token caches, compiled native
 * kernels): one rule for every cache.
 *
 * @module
 */
import { join } from "node:path";

/**
 * The cache directory: `$SCALAR_CACHE_DIR`, else `$XDG_CACHE_HOME/scalar-lab`, else
 * `$HOME/.cache/scalar-lab`.
 *
 * @returns The directory path (it may not exist yet).
 * @throws {Error} If none of those variables is set.
 *
 * @example Locate the cache
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { defaultCacheDir } from "./cache_dir.ts";
 *
 * ok(defaultCacheDir().length > 0);
 * ```
 */
export function defaultCacheDir(): string {
  const explicit = Deno.env.get("SCALAR_CACHE_DIR");
  if (explicit) return explicit;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "scalar-lab");
  const home = Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE");
  if (home) return join(home, ".cache", "scalar-lab");
  throw new Error(
    "Cannot locate the cache directory: none of SCALAR_CACHE_DIR, XDG_CACHE_HOME, HOME is set",
  );
}

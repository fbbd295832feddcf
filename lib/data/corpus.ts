/**
 * Named text corpora and where their bytes come from. A registered corpus is looked for in
 * `$SCALAR_DATA_DIR`, then in the repository's `data/` folder (Tiny Shakespeare ships there, so
 * the default job needs no network), then in the download cache, then downloaded from its public
 * URL; every copy is checked against the registered sha256 so that every run trains on the same
 * bytes.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultCacheDir } from "../util/cache_dir.ts";

/**
 * The repository's `data/` folder, where corpora committed with the code live.
 *
 * @example
 * ```ts
 * import { ok } from "node:assert/strict";
 * import { SHIPPED_DATA_DIR } from "./corpus.ts";
 *
 * ok(Deno.statSync(`${SHIPPED_DATA_DIR}/tinyshakespeare.txt`).isFile);
 * ```
 */
export const SHIPPED_DATA_DIR: string = fileURLToPath(new URL("../../data", import.meta.url));

/** A corpus the product knows by name. */
export interface CorpusEntry {
  /** Registry key, e.g. `tinyshakespeare`. */
  name: string;
  /** File name inside `$SCALAR_DATA_DIR` and the cache directory. */
  fileName: string;
  /** Public URL the file is downloaded from when no local copy exists. */
  url: string;
  /** Lower-case hex sha256 of the file's bytes. */
  sha256: string;
  /** Size of the file in bytes, shown in messages. */
  bytes: number;
  /** Whether the repository ships the file in its `data/` folder ({@linkcode SHIPPED_DATA_DIR}). */
  shipped?: boolean;
}

/** Every built-in corpus by name. */
export const CORPORA: Readonly<Record<string, CorpusEntry>> = Object.freeze({
  tinyshakespeare: {
    name: "tinyshakespeare",
    fileName: "tinyshakespeare.txt",
    url:
      "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256: "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    bytes: 1_115_394,
    shipped: true,
  },
});

/** Where {@linkcode resolveCorpus} found the text. */
export type CorpusSource = "path" | "data-dir" | "shipped" | "cache" | "download";

/** A corpus's text together with its provenance. */
export interface Corpus {
  /** The registry name, or the file's base name for a plain path. */
  name: string;
  /** The whole file decoded as UTF-8. */
  text: string;
  /** The file the text was read from (for a download: the cache file it was written to). */
  path: string;
  /** Lower-case hex sha256 of the file's bytes. */
  sha256: string;
  /** Which of the lookup steps produced the text. */
  source: CorpusSource;
}

/** Overrides for {@linkcode resolveCorpus}; the defaults read the environment. */
export interface ResolveCorpusOptions {
  /**
   * Directory searched first for the corpus file; `null` skips this step.
   * @default {Deno.env.get("SCALAR_DATA_DIR") || null}
   */
  dataDir?: string | null;
  /**
   * Directory holding the corpora the repository ships (for entries marked `shipped`); `null`
   * skips this step.
   * @default {SHIPPED_DATA_DIR}
   */
  shippedDir?: string | null;
  /**
   * Directory for downloaded copies.
   * @default {defaultCacheDir()}
   */
  cacheDir?: string;
  /**
   * URL downloaded instead of the registered one (tests point it at a local server).
   * @default {the registry entry's url}
   */
  url?: string;
  /**
   * The corpora known by name.
   * @default {CORPORA}
   */
  corpora?: Readonly<Record<string, CorpusEntry>>;
  /**
   * Receives the one-line progress message printed before a download.
   * @default {a function that writes the line to stderr}
   */
  log?: (line: string) => void;
}

/** Any failure to produce a corpus's text; the message says what to do about it. */
export class CorpusError extends Error {
  /**
   * Creates the error.
   *
   * @param message What failed, and where a correct file can be put.
   * @param options The underlying error, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CorpusError";
  }
}

/** The download cache directory (`lib/util/cache_dir.ts`: one rule for every cache). */
export { defaultCacheDir };

/**
 * Computes the sha256 of some bytes.
 *
 * @param bytes The data to hash.
 * @returns The digest as 64 lower-case hex digits.
 *
 * @example Hash the empty input
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { sha256Hex } from "./corpus.ts";
 *
 * equal(
 *   await sha256Hex(new Uint8Array()),
 *   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
 * );
 * ```
 */
export async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * Returns a corpus's text. A name is looked up in the registry and its file taken from the first
 * of: `<dataDir>/<fileName>`, `<shippedDir>/<fileName>` (for corpora the repository ships),
 * `<cacheDir>/<fileName>`, a download from the corpus's URL (verified, then written into the cache
 * atomically). A `{ path }` reads that file as is, for users' own text.
 *
 * A file in the data directory or the shipped folder with the wrong sha256 is an error (someone put
 * it there on purpose, or the checkout is damaged); a wrong file in the cache is replaced by a fresh
 * download.
 *
 * @param source A registered corpus name, or `{ path }` of a UTF-8 text file.
 * @param options Directory, URL and logger overrides.
 * @returns The text, the file it came from, its sha256 and which lookup step found it.
 * @throws {CorpusError} If the name is unknown, a file cannot be read or is not UTF-8, a data-dir
 * or shipped copy has the wrong sha256, the download fails or has the wrong sha256, or the cache
 * cannot be written; the message says where to put a correct file.
 *
 * @example Load the shipped Tiny Shakespeare (no network)
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { resolveCorpus } from "./corpus.ts";
 *
 * const { text, source } = await resolveCorpus("tinyshakespeare", { dataDir: null });
 * equal(text.length, 1115394);
 * equal(source, "shipped");
 * ```
 */
export async function resolveCorpus(
  source: string | { path: string },
  options: ResolveCorpusOptions = {},
): Promise<Corpus> {
  if (typeof source !== "string") {
    const bytes = await readFileOrNull(source.path, `Cannot read corpus file "${source.path}"`);
    if (bytes === null) {
      throw new CorpusError(`Cannot read corpus file "${source.path}": no such file`);
    }
    return {
      name: basename(source.path),
      text: decodeUtf8(bytes, source.path),
      path: source.path,
      sha256: await sha256Hex(bytes),
      source: "path",
    };
  }

  const corpora = options.corpora ?? CORPORA;
  const entry = Object.hasOwn(corpora, source) ? corpora[source] : undefined;
  if (entry === undefined) {
    const known = Object.keys(corpora).map((name) => `"${name}"`).join(", ");
    throw new CorpusError(
      `Cannot resolve corpus "${source}": unknown name (known: ${known}; ` +
        `pass { path } for a text file of your own)`,
    );
  }

  const dataDir = options.dataDir === undefined
    ? Deno.env.get("SCALAR_DATA_DIR") || null
    : options.dataDir;
  const shippedDir = options.shippedDir === undefined ? SHIPPED_DATA_DIR : options.shippedDir;
  const local: [string | null, CorpusSource, string][] = [
    [dataDir, "data-dir", "replace the file or unset SCALAR_DATA_DIR"],
    [
      entry.shipped ? shippedDir : null,
      "shipped",
      `restore it with: git checkout -- data/${entry.fileName}`,
    ],
  ];
  for (const [dir, where, remedy] of local) {
    const found = dir === null ? null : await readVerified(entry, dir, where, remedy);
    if (found !== null) return found;
  }

  const log = options.log ?? ((line: string) => console.error(line));
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const cachePath = join(cacheDir, entry.fileName);
  const cached = await readFileOrNull(cachePath, `Cannot read cached corpus "${cachePath}"`);
  if (cached !== null) {
    const sha256 = await sha256Hex(cached);
    if (sha256 === entry.sha256) return corpusFrom(entry, cached, cachePath, sha256, "cache");
    log(
      `Cached corpus "${cachePath}" has sha256 ${sha256}, expected ${entry.sha256}; replacing it`,
    );
  }

  const url = options.url ?? entry.url;
  const dataPathHint = dataDir === null
    ? `$SCALAR_DATA_DIR/${entry.fileName}`
    : `"${join(dataDir, entry.fileName)}"`;
  const fail = (what: string, cause?: unknown): CorpusError =>
    new CorpusError(
      `Cannot get corpus "${entry.name}": ${what}. Put the file at ${dataPathHint} ` +
        `(${describe(entry.bytes, entry.sha256)}) or in "${cacheDir}"`,
      { cause },
    );
  log(`Downloading corpus "${entry.name}" (${entry.bytes} bytes) from ${url} to ${cachePath}`);
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    const response = await fetch(url);
    if (!response.ok) {
      await response.body?.cancel();
      const status = [response.status, response.statusText].filter(Boolean).join(" ");
      throw fail(`download from "${url}" failed (HTTP ${status})`);
    }
    bytes = new Uint8Array(await response.arrayBuffer());
  } catch (error) {
    if (error instanceof CorpusError) throw error;
    throw fail(`download from "${url}" failed (${messageOf(error)})`, error);
  }
  const sha256 = await sha256Hex(bytes);
  if (sha256 !== entry.sha256) {
    throw fail(
      `download from "${url}" has ${describe(bytes.length, sha256)}, expected ` +
        `${describe(entry.bytes, entry.sha256)}`,
    );
  }
  await writeAtomically(cachePath, bytes);
  return corpusFrom(entry, bytes, cachePath, sha256, "download");
}

function corpusFrom(
  entry: CorpusEntry,
  bytes: Uint8Array,
  path: string,
  sha256: string,
  source: CorpusSource,
): Corpus {
  return { name: entry.name, text: decodeUtf8(bytes, path), path, sha256, source };
}

// A local copy someone chose (the data directory, the checkout) must match: silently reading
// other bytes would train on a different corpus than the run's record says.
async function readVerified(
  entry: CorpusEntry,
  dir: string,
  source: CorpusSource,
  remedy: string,
): Promise<Corpus | null> {
  const path = join(dir, entry.fileName);
  const bytes = await readFileOrNull(path, `Cannot read corpus file "${path}"`);
  if (bytes === null) return null;
  const sha256 = await sha256Hex(bytes);
  if (sha256 !== entry.sha256) {
    throw new CorpusError(
      `Cannot use corpus file "${path}": ${describe(bytes.length, sha256)}, expected ` +
        `${describe(entry.bytes, entry.sha256)} for corpus "${entry.name}" (${remedy})`,
    );
  }
  return corpusFrom(entry, bytes, path, sha256, source);
}

function describe(bytes: number, sha256: string): string {
  return `${bytes} bytes with sha256 ${sha256}`;
}

// fetch() rejects with a bare "fetch failed" and keeps the reason (DNS, refused connection) in
// its cause, which is the part a user can act on.
function messageOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  return error.cause instanceof Error ? `${error.message}: ${error.cause.message}` : error.message;
}

function decodeUtf8(bytes: Uint8Array, path: string): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    throw new CorpusError(`Cannot read corpus file "${path}": not valid UTF-8`, { cause: error });
  }
}

// A missing file is a normal lookup miss; any other read failure (a directory in its place,
// no permission) would otherwise be silently skipped, so it is reported.
async function readFileOrNull(
  path: string,
  failure: string,
): Promise<Uint8Array<ArrayBuffer> | null> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new CorpusError(`${failure}: ${messageOf(error)}`, { cause: error });
  }
}

// Renaming a finished temporary file means a concurrent or interrupted run never sees a partial
// corpus in the cache.
async function writeAtomically(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID()}.tmp`;
  try {
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (error) {
    await Deno.remove(tmp).catch(() => {});
    throw new CorpusError(
      `Cannot write corpus cache "${path}": ${messageOf(error)} ` +
        `(set SCALAR_CACHE_DIR to a writable directory)`,
      { cause: error },
    );
  }
}

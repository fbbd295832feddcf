/**
 * Text corpora from local files and folders, tokenized once and cached.
 *
 * A source is a `.txt` file (one document), a `.jsonl` file (one document per non-blank line,
 * read from a configurable string field, `text` by default), or a folder holding such files at
 * any depth (hidden entries skipped, files taken in the order of their relative paths, so the
 * token stream does not depend on the file system's listing order).
 *
 * As in the reference's FineWeb-Edu preparation, every document is preceded by the tokenizer's
 * document separator (GPT-2's `<|endoftext|>`), so exactly one separator lies between any two
 * documents and one opens the stream; a tokenizer without a separator concatenates them.
 *
 * The tokens are cached in `<cacheDir>/<key>.int32` (raw little-endian int32, readable with
 * `numpy.fromfile(path, "<i4")`) beside `<key>.json` (what they were made from). The key is the
 * sha256 of the tokenizer's name, the separator, the text field, and the kind and sha256 of every
 * source file in order, so editing, adding, removing or reordering a file, or changing the
 * tokenizer, makes a new cache entry, and renaming a folder does not.
 *
 * The split is the project's usual one ({@linkcode splitTrainVal}, SPEC §2), on tokens: train is
 * the first 90% of the token stream rounded down to a multiple of 256, validation the rest (the
 * last ~10%, i.e. the last documents in source order).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { extname, join, relative } from "node:path";
import { writeFileAtomic } from "../model/safetensors.ts";
import { formatCount, formatDuration } from "../util/progress.ts";
import { cachedSha256File } from "../util/sha256_file.ts";
import { CorpusError, defaultCacheDir } from "./corpus.ts";
import { splitTrainVal } from "./split.ts";

/** How a corpus is turned into ids; {@linkcode GPT2_TOKENIZER} in `bpe_tokenizer.ts` is one. */
export interface CorpusTokenizer {
  /** Identifies the tokenizer in cache keys; change it whenever the ids could change. */
  name: string;
  /** Encodes one document. */
  encode(text: string): Int32Array;
  /** Decodes ids back to text (for showing contexts). */
  decode(ids: ArrayLike<number>): string;
  /** Id placed before every document (GPT-2: 50256); none when absent. */
  documentSeparator?: number;
}

/** Options of {@linkcode loadTextCorpus}. */
export interface TextCorpusOptions {
  /** The tokenizer. */
  tokenizer: CorpusTokenizer;
  /** Field of each `.jsonl` line that holds the document's text. @default "text" */
  textField?: string;
  /** Folder of the token caches. @default {join(defaultCacheDir(), "tokens")} */
  cacheDir?: string;
  /** Receives progress lines. @default {a function that writes the line to stderr} */
  log?: (line: string) => void;
  /** Corpora of at least this many bytes print progress lines. @default 33554432 (32 MiB) */
  progressBytes?: number;
  /** Least time between two progress lines, in milliseconds. @default 5000 */
  progressIntervalMs?: number;
}

/** A tokenized corpus and its split. */
export interface TextCorpus {
  /** Every token, documents in source order, each preceded by the separator. */
  tokens: Int32Array;
  /** The training part: a prefix of `tokens` (a view, no copy). */
  train: Int32Array;
  /** The validation part: the rest of `tokens` (a view, no copy). */
  val: Int32Array;
  /** Number of documents (a `.txt` file or a non-blank `.jsonl` line each). */
  documents: number;
  /** The source files, in the order their documents were read. */
  files: string[];
  /** Total size of the source files in bytes. */
  bytes: number;
  /** The cache key: lower-case hex sha256 (see the module documentation). */
  key: string;
  /** The raw int32 token file. */
  cachePath: string;
  /** Whether the tokens were read from the cache rather than tokenized now. */
  fromCache: boolean;
}

/** What `<key>.json` beside a token cache holds. */
interface CacheInfo {
  format: typeof CACHE_FORMAT;
  key: string;
  tokenizer: string;
  documentSeparator: number | null;
  textField: string | null;
  tokens: number;
  documents: number;
  bytes: number;
  files: { path: string; sha256: string }[];
}

type Kind = "txt" | "jsonl";

interface Source {
  path: string;
  kind: Kind;
  size: number;
}

const CACHE_FORMAT = "scalar-lab/text-corpus-tokens-v1";
const KINDS: Readonly<Record<string, Kind>> = { ".txt": "txt", ".jsonl": "jsonl" };
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Lists the `.txt` and `.jsonl` files of a file or folder, in a fixed order. */
async function listSources(path: string): Promise<Source[]> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    const state = error instanceof Deno.errors.NotFound
      ? "no such file or folder"
      : messageOf(error);
    throw new CorpusError(`Cannot read corpus "${path}": ${state}`, { cause: error });
  }
  if (info.isFile) {
    const kind = KINDS[extname(path).toLowerCase()];
    if (kind === undefined) {
      throw new CorpusError(
        `Cannot read corpus file "${path}": not a .txt or .jsonl file`,
      );
    }
    return [{ path, kind, size: info.size }];
  }
  const found: (Source & { rel: string })[] = [];
  const walk = async (dir: string): Promise<void> => {
    for await (const entry of Deno.readDir(dir)) {
      // Hidden entries are tool state (.git, .DS_Store, editors' swap files), not text.
      if (entry.name.startsWith(".")) continue;
      const child = join(dir, entry.name);
      // Symbolic links are followed to files only: a linked folder could form a cycle.
      const stat = entry.isSymlink ? await Deno.stat(child).catch(() => undefined) : undefined;
      if (entry.isDirectory) await walk(child);
      else if (entry.isFile || stat?.isFile) {
        const kind = KINDS[extname(entry.name).toLowerCase()];
        if (kind === undefined) continue;
        const size = stat?.size ?? (await Deno.stat(child)).size;
        found.push({
          path: child,
          kind,
          size,
          rel: relative(path, child).split(/[\\/]/).join("/"),
        });
      }
    }
  };
  await walk(path);
  if (found.length === 0) {
    throw new CorpusError(
      `Cannot read corpus folder "${path}": it holds no .txt or .jsonl files`,
    );
  }
  // Code-unit order of the relative paths: the same on every platform and locale.
  found.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  return found.map(({ path, kind, size }) => ({ path, kind, size }));
}

/** Prints a progress line at most every `intervalMs`, and only for large corpora. */
class ByteProgress {
  #done = 0;
  #last = performance.now();
  readonly #start = performance.now();
  constructor(
    readonly enabled: boolean,
    readonly intervalMs: number,
    readonly line: (done: number, seconds: number) => string,
    readonly log: (line: string) => void,
  ) {}

  advance(bytes: number): void {
    this.#done += bytes;
    const now = performance.now();
    if (!this.enabled || now - this.#last < this.intervalMs) return;
    this.#last = now;
    this.log(this.line(this.#done, (now - this.#start) / 1000));
  }

  get seconds(): number {
    return (performance.now() - this.#start) / 1000;
  }
}

async function hashFile(source: Source, progress: ByteProgress): Promise<string> {
  const hash = createHash("sha256");
  try {
    const file = await Deno.open(source.path);
    // The stream closes the file when it ends or fails.
    for await (const chunk of file.readable) {
      hash.update(chunk);
      progress.advance(chunk.length);
    }
  } catch (error) {
    throw new CorpusError(`Cannot read corpus file "${source.path}": ${messageOf(error)}`, {
      cause: error,
    });
  }
  return hash.digest("hex");
}

/**
 * The identity of a corpus's bytes, without tokenizing it: a sha256 over the kind and sha256 of
 * every source file, in the order the corpus reads them, and the text field where a file is JSONL
 * (what a run id records of its data).
 *
 * @param path A `.txt`/`.jsonl` file or a folder of them.
 * @param textField The field of each `.jsonl` line that holds the text. @default "text"
 * @param hashCache Where the files' hashes are kept between calls (see `cachedSha256File`);
 * unset, every file is read.
 * @returns 64 lowercase hex digits.
 * @throws {CorpusError} Naming the file or folder that is missing, unreadable or of no known kind.
 *
 * @example
 * ```ts
 * import { equal, notEqual } from "node:assert/strict";
 * import { corpusSourcesSha256 } from "./text_corpus.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/a.txt`, "to be");
 * const before = await corpusSourcesSha256(dir);
 * equal(await corpusSourcesSha256(dir), before);
 * await Deno.writeTextFile(`${dir}/a.txt`, "or not");
 * notEqual(await corpusSourcesSha256(dir), before);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function corpusSourcesSha256(
  path: string,
  textField = "text",
  hashCache?: string,
): Promise<string> {
  const sources = await listSources(path);
  const quiet = new ByteProgress(false, 0, () => "", () => {});
  const hashes: string[] = [];
  for (const source of sources) {
    hashes.push(
      hashCache === undefined
        ? await hashFile(source, quiet)
        : await cachedSha256File(source.path, hashCache).catch((error) => {
          throw new CorpusError(`Cannot read corpus file "${source.path}": ${messageOf(error)}`, {
            cause: error,
          });
        }),
    );
  }
  const hasJsonl = sources.some((s) => s.kind === "jsonl");
  return createHash("sha256").update(JSON.stringify({
    textField: hasJsonl ? textField : null,
    sources: sources.map((s, i) => [s.kind, hashes[i]]),
  })).digest("hex");
}

function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
}

function jsonlDocument(line: string, where: string, field: string): string | undefined {
  if (line.trim() === "") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new CorpusError(
      `Cannot read corpus file "${where}": not valid JSON (${messageOf(error)})`,
      { cause: error },
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new CorpusError(
      `Cannot read corpus file "${where}": the line is ${typeName(value)}, not an object with ` +
        `a "${field}" field`,
    );
  }
  const record = value as Record<string, unknown>;
  if (!Object.hasOwn(record, field)) {
    const fields = Object.keys(record).slice(0, 8).map((k) => `"${k}"`).join(", ");
    throw new CorpusError(
      `Cannot read corpus file "${where}": no "${field}" field (the line has ` +
        `${fields || "no fields"}; name the text field to read another)`,
    );
  }
  const text = record[field];
  if (typeof text !== "string") {
    throw new CorpusError(
      `Cannot read corpus file "${where}": field "${field}" is ${typeName(text)}, not a string`,
    );
  }
  return text;
}

/** Yields the documents of one source file, reporting the bytes read to `progress`. */
async function* readDocuments(
  source: Source,
  field: string,
  progress: ByteProgress,
): AsyncGenerator<string> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const invalid = (where: string, error: unknown) =>
    new CorpusError(`Cannot read corpus file "${where}": not valid UTF-8`, { cause: error });
  let file: Deno.FsFile;
  try {
    file = await Deno.open(source.path);
  } catch (error) {
    throw new CorpusError(`Cannot read corpus file "${source.path}": ${messageOf(error)}`, {
      cause: error,
    });
  }
  if (source.kind === "txt") {
    // One document: BPE needs the whole text at once (its pre-tokenizer looks across lines).
    const chunks: string[] = [];
    try {
      for await (const chunk of file.readable) {
        chunks.push(decoder.decode(chunk, { stream: true }));
        progress.advance(chunk.length);
      }
      chunks.push(decoder.decode());
    } catch (error) {
      if (error instanceof TypeError) throw invalid(source.path, error);
      throw error;
    }
    yield chunks.join("");
    return;
  }
  // JSONL is streamed line by line, so a file larger than memory can be tokenized.
  let rest = "";
  let line = 0;
  const lines = function* (text: string, final: boolean): Generator<[string, number]> {
    const parts = (rest + text).split("\n");
    rest = final ? "" : parts.pop()!;
    for (const part of parts) yield [part, ++line];
  };
  const reader = file.readable.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      let text: string;
      try {
        text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      } catch (error) {
        throw invalid(`${source.path}:${line + 1}`, error);
      }
      for (const [part, n] of lines(text, done)) {
        const doc = jsonlDocument(part, `${source.path}:${n}`, field);
        if (doc !== undefined) yield doc;
      }
      if (done) break;
      progress.advance(value.length);
    }
  } finally {
    // Closes the file also when the consumer stops early or a line is refused.
    await reader.cancel().catch(() => {});
  }
}

/** An Int32Array that grows as tokens are appended. */
class TokenBuilder {
  #data: Int32Array;
  length = 0;

  constructor(capacity: number) {
    this.#data = new Int32Array(Math.max(1024, capacity));
  }

  #reserve(extra: number): void {
    const needed = this.length + extra;
    if (needed <= this.#data.length) return;
    const grown = new Int32Array(Math.max(needed, Math.ceil(this.#data.length * 1.5)));
    grown.set(this.#data.subarray(0, this.length));
    this.#data = grown;
  }

  push(id: number): void {
    this.#reserve(1);
    this.#data[this.length++] = id;
  }

  append(ids: Int32Array): void {
    this.#reserve(ids.length);
    this.#data.set(ids, this.length);
    this.length += ids.length;
  }

  finish(): Int32Array {
    return this.length === this.#data.length ? this.#data : this.#data.slice(0, this.length);
  }
}

function littleEndianBytes(tokens: Int32Array): Uint8Array {
  const bytes = new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength);
  if (LITTLE_ENDIAN_HOST) return bytes;
  const copy = bytes.slice();
  for (let i = 0; i < copy.length; i += 4) copy.subarray(i, i + 4).reverse();
  return copy;
}

function tokensFromLittleEndian(bytes: Uint8Array): Int32Array {
  const copy = LITTLE_ENDIAN_HOST && bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (!LITTLE_ENDIAN_HOST) {
    for (let i = 0; i < copy.length; i += 4) copy.subarray(i, i + 4).reverse();
  }
  return new Int32Array(copy.buffer, copy.byteOffset, copy.byteLength / 4);
}

async function readCache(
  cachePath: string,
  infoPath: string,
  key: string,
  log: (line: string) => void,
): Promise<{ tokens: Int32Array; info: CacheInfo } | undefined> {
  let info: CacheInfo;
  let bytes: Uint8Array;
  try {
    info = JSON.parse(await Deno.readTextFile(infoPath));
    bytes = await Deno.readFile(cachePath);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    log(`Cannot read token cache "${cachePath}": ${messageOf(error)}; tokenizing again`);
    return undefined;
  }
  if (info.format !== CACHE_FORMAT || info.key !== key || bytes.length !== info.tokens * 4) {
    log(
      `Cannot use token cache "${cachePath}": it holds ${bytes.length} bytes, its record ` +
        `says ${info.tokens} tokens; tokenizing again`,
    );
    return undefined;
  }
  return { tokens: tokensFromLittleEndian(bytes), info };
}

/**
 * Reads a text corpus from a `.txt` or `.jsonl` file or a folder of them, tokenizes it (or reads
 * the tokens from the cache when the same sources were tokenized the same way before), and
 * splits it into training and validation tokens.
 *
 * @param path A `.txt` file, a `.jsonl` file, or a folder searched at any depth.
 * @param options The tokenizer, the `.jsonl` text field, the cache folder and the logger.
 * @returns The tokens, their split, and where they came from.
 * @throws {CorpusError} If the path does not exist or holds no corpus files, a file is not
 *   UTF-8, a `.jsonl` line is not a JSON object with a string text field (named as
 *   `file:line`), or the cache cannot be written.
 *
 * @example
 * ```ts ignore
 * import { loadTextCorpus } from "./text_corpus.ts";
 * import { GPT2_TOKENIZER } from "./bpe_tokenizer.ts";
 *
 * const corpus = await loadTextCorpus("data/fineweb-sample", { tokenizer: GPT2_TOKENIZER });
 * console.log(corpus.train.length, corpus.val.length, corpus.fromCache);
 * ```
 */
export async function loadTextCorpus(
  path: string,
  options: TextCorpusOptions,
): Promise<TextCorpus> {
  const { tokenizer } = options;
  const field = options.textField ?? "text";
  const log = options.log ?? ((line: string) => console.error(line));
  const cacheDir = options.cacheDir ?? join(defaultCacheDir(), "tokens");
  const intervalMs = options.progressIntervalMs ?? 5000;

  const sources = await listSources(path);
  const bytes = sources.reduce((sum, s) => sum + s.size, 0);
  const large = bytes >= (options.progressBytes ?? 32 * 1024 * 1024);
  const fileCount = `${sources.length} file${sources.length === 1 ? "" : "s"}`;

  const hashing = new ByteProgress(
    large,
    intervalMs,
    (done) => `Hashing corpus "${path}": ${megabytes(done)} of ${megabytes(bytes)}`,
    log,
  );
  const hashes: string[] = [];
  for (const source of sources) hashes.push(await hashFile(source, hashing));
  const hasJsonl = sources.some((s) => s.kind === "jsonl");
  const separator = tokenizer.documentSeparator ?? null;
  const keyMaterial = JSON.stringify({
    format: CACHE_FORMAT,
    tokenizer: tokenizer.name,
    separator,
    // The field only matters when some file is JSONL; leaving it out otherwise lets .txt
    // corpora share their cache whatever field is configured.
    textField: hasJsonl ? field : null,
    sources: sources.map((s, i) => [s.kind, hashes[i]]),
  });
  const key = createHash("sha256").update(keyMaterial).digest("hex");
  const cachePath = join(cacheDir, `${key}.int32`);
  const infoPath = join(cacheDir, `${key}.json`);
  const files = sources.map((s) => s.path);

  const cached = await readCache(cachePath, infoPath, key, log);
  if (cached !== undefined) {
    const { train, val } = splitTrainVal(cached.tokens);
    return {
      tokens: cached.tokens,
      train,
      val,
      documents: cached.info.documents,
      files,
      bytes,
      key,
      cachePath,
      fromCache: true,
    };
  }

  // GPT-2 BPE averages about 4 bytes of English per token; growing covers other tokenizers.
  const builder = new TokenBuilder(Math.ceil(bytes / 4));
  let documents = 0;
  let filesDone = 0;
  const tokenizing = new ByteProgress(
    large,
    intervalMs,
    (done, seconds) =>
      `Tokenizing corpus "${path}" with ${tokenizer.name}: ` +
      `${Math.floor((100 * done) / Math.max(1, bytes))}% (${megabytes(done)} of ` +
      `${megabytes(bytes)}, ${filesDone} of ${fileCount}), ${
        formatCount(builder.length)
      } tokens, ` +
      `${megabytes(done / Math.max(seconds, 1e-3))}/s, ETA ` +
      formatDuration(done > 0 ? (seconds * (bytes - done)) / done : NaN),
    log,
  );
  if (large) {
    log(`Tokenizing corpus "${path}" (${megabytes(bytes)} in ${fileCount}) with ${tokenizer.name}`);
  }
  for (const source of sources) {
    for await (const text of readDocuments(source, field, tokenizing)) {
      if (separator !== null) builder.push(separator);
      builder.append(tokenizer.encode(text));
      documents++;
    }
    filesDone++;
  }
  const tokens = builder.finish();

  const info: CacheInfo = {
    format: CACHE_FORMAT,
    key,
    tokenizer: tokenizer.name,
    documentSeparator: separator,
    textField: hasJsonl ? field : null,
    tokens: tokens.length,
    documents,
    bytes,
    files: sources.map((s, i) => ({ path: s.path, sha256: hashes[i] })),
  };
  try {
    await Deno.mkdir(cacheDir, { recursive: true });
    // The token file first: a record without its tokens is never left behind as a valid entry.
    await writeFileAtomic(cachePath, littleEndianBytes(tokens));
    await writeFileAtomic(infoPath, new TextEncoder().encode(JSON.stringify(info, null, 2)));
  } catch (error) {
    throw new CorpusError(
      `Cannot write token cache "${cachePath}": ${messageOf(error)} ` +
        `(set SCALAR_CACHE_DIR to a writable folder)`,
      { cause: error },
    );
  }
  if (large) {
    log(
      `Tokenized corpus "${path}": ${formatCount(tokens.length)} tokens in ${documents} ` +
        `documents (${tokenizing.seconds.toFixed(1)} s), cached as "${cachePath}"`,
    );
  }
  const { train, val } = splitTrainVal(tokens);
  return { tokens, train, val, documents, files, bytes, key, cachePath, fromCache: false };
}

/**
 * The activation cache: the clean activations of a frozen GPT at the hooks that SAEs are trained
 * on, computed once per (model checkpoint, corpus split, sequence length, set of hooks) and shared
 * by every run of a grid.
 *
 * The split is cut into its floor(n / seqLen) complete, non-overlapping windows (a token's
 * activation depends on the window it sits in, so windows are the unit) and the model runs over
 * them in batches, recording every hook in one pass that stops at the last one. A cache is a
 * folder `<root>/<id>/` (id from {@link cacheKey}) holding, per hook, `<hook>.f32`: raw
 * little-endian float32 `[tokens, width]`, row-major, tokens in split order; and `meta.json`,
 * written last with `"complete": true`. It is filled in `<dir>.tmp-<pid>` and renamed into place,
 * so an interrupted fill never looks complete.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { type GPT, hookNames } from "../model/gpt.ts";
import { formatCount, formatDuration } from "../util/progress.ts";
import type { ActivationSource } from "./train.ts";

/** The `format` field of a cache's `meta.json`. */
export const ACTIVATION_CACHE_FORMAT = "scalar-lab/activation-cache";

/** The layout version; part of the key, so a new layout never reads an old folder. */
export const ACTIVATION_CACHE_VERSION = 1;

/** Default forward batch: sequences per model call while filling. */
export const DEFAULT_BATCH_SEQUENCES = 32;

/** Default memory budget: caches up to this many bytes are read into memory, larger ones streamed. */
export const DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024 ** 3;

/** Default interval between progress lines while filling, in milliseconds. */
export const DEFAULT_PROGRESS_INTERVAL_MS = 5000;

/** Where no `/proc` tells whether a process lives: a tmp folder untouched this long is abandoned. */
const STALE_TMP_MS = 10 * 60 * 1000;

const META_FILE = "meta.json";
const HEX64 = /^[0-9a-f]{64}$/;

/** The corpus split a cache holds. */
export type CacheSplit = "train" | "val";

/** What identifies a cache: the same key always means the same activations. */
export interface ActivationCacheKey {
  /** sha256 of the model's parameters ({@link modelFingerprint}), 64 lowercase hex digits. */
  modelSha256: string;
  /** sha256 of the corpus text, 64 lowercase hex digits. */
  corpusSha256: string;
  /** Which split of the corpus. */
  split: CacheSplit;
  /** Tokens per window. */
  seqLen: number;
  /** The hooks recorded; order and repeats do not matter. */
  hooks: readonly string[];
}

/** Contents of a complete cache's `meta.json`. */
export interface ActivationCacheMeta {
  /** Always {@link ACTIVATION_CACHE_FORMAT}. */
  format: typeof ACTIVATION_CACHE_FORMAT;
  /** Always {@link ACTIVATION_CACHE_VERSION}. */
  version: number;
  /** The folder's id ({@link cacheKey} of `key`). */
  id: string;
  /**
   * The key fields, hooks in canonical (sorted) order; null when the cache was filled from a bare
   * id (see {@link EnsureActivationCacheOptions.key}).
   */
  key: {
    modelSha256: string;
    corpusSha256: string;
    split: CacheSplit;
    seqLen: number;
    hooks: string[];
  } | null;
  /** Rows of every hook file: windows × seqLen. */
  tokens: number;
  /** Windows the split was cut into. */
  windows: number;
  /** Tokens per window. */
  seqLen: number;
  /** The hooks, in forward order. */
  hooks: string[];
  /** Hook → activation width (floats per row). */
  widths: Record<string, number>;
  /** Hook → file name inside the folder. */
  files: Record<string, string>;
  /** Hook → file size in bytes (tokens × width × 4). */
  bytes: Record<string, number>;
  /** Written last: only a fully written folder has it. */
  complete: true;
}

/** Raised when a cache folder is unusable; `path` names the folder or the file at fault. */
export class ActivationCacheError extends Error {
  /** The cache folder or the file inside it that the error is about. */
  readonly path: string;

  /**
   * Creates the error; the message is complete, nothing is added to it.
   *
   * @param path The folder or file at fault.
   * @param message The full message.
   * @param options The underlying error, if any.
   */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ActivationCacheError";
    this.path = path;
  }
}

/** Rows of cached activations, read from memory or from disk. */
export interface ActivationCache extends ActivationSource {
  /** The cache folder. */
  readonly dir: string;
  /** Its `meta.json`. */
  readonly meta: Readonly<ActivationCacheMeta>;
  /** Rows (tokens) of every hook. */
  readonly tokens: number;
  /** The cached hooks, in forward order. */
  readonly hooks: readonly string[];
  /** Whether the files were read into memory (else every read goes to disk). */
  readonly inMemory: boolean;
  /**
   * Floats per row of a hook.
   *
   * @param hook A cached hook.
   * @returns Its width.
   * @throws {RangeError} If the hook is not cached.
   */
  width(hook: string): number;
  /**
   * Reads rows [start, start + count) of one hook.
   *
   * @param hook A cached hook.
   * @param start First row.
   * @param count Number of rows.
   * @returns A fresh array `[count, width]`, row-major (the caller may keep or change it).
   * @throws {RangeError} If the hook is not cached or the rows are out of range.
   * @throws {ActivationCacheError} If the file has become shorter since the cache was opened.
   */
  read(hook: string, start: number, count: number): Promise<Float32Array>;
  /**
   * Reads rows [start, start + count) of several hooks.
   *
   * @param hooks Cached hooks.
   * @param start First row.
   * @param count Number of rows.
   * @returns Hook → a fresh array `[count, width]`.
   * @throws {RangeError} If a hook is not cached or the rows are out of range.
   * @throws {ActivationCacheError} If a file has become shorter since the cache was opened.
   */
  batch(hooks: readonly string[], start: number, count: number): Promise<Map<string, Float32Array>>;
}

/** Options of {@link openActivationCache}. */
export interface OpenActivationCacheOptions {
  /** Read the files into memory when their total size is at most this. @default 4 GiB */
  memoryBudgetBytes?: number;
}

/** Inputs of {@link ensureActivationCache}. */
export interface EnsureActivationCacheOptions {
  /** The frozen model (only its shape and `run` are used). */
  model: Pick<GPT, "config" | "run">;
  /** The split's tokens. */
  tokens: Int32Array;
  /** Tokens per window, at most the model's context. */
  seqLen: number;
  /** Hooks to record (any order, repeats ignored). */
  hooks: readonly string[];
  /** Folder holding the caches, one sub-folder per key. */
  root: string;
  /**
   * Which model, corpus and split the tokens come from: the key fields (seqLen and hooks, if
   * given, must agree with the options'), or the id {@link cacheKey} made of the full key. The
   * fields are better: they are recorded in `meta.json` and checked when the cache is reused.
   */
  key: string | Omit<ActivationCacheKey, "seqLen" | "hooks"> | ActivationCacheKey;
  /** Where the size line and progress lines go. @default a line on stderr */
  log?: (line: string) => void;
  /** Sequences per forward batch while filling. @default 32 */
  batchSequences?: number;
  /** Read the cache into memory when it is at most this large. @default 4 GiB */
  memoryBudgetBytes?: number;
  /** Milliseconds between progress lines while filling. @default 5000 */
  progressIntervalMs?: number;
}

/**
 * Computes the id of a cache: the first 16 hex digits of the sha256 of a canonical JSON of the
 * key (fixed field order, hooks sorted and deduplicated, the layout version included).
 *
 * @param key The model, corpus split, window length and hooks.
 * @returns 16 lowercase hex digits, the same for the same key on every machine.
 * @throws {RangeError} If a checksum is not 64 lowercase hex digits, the split is not
 * `train`/`val`, seqLen is not a positive integer or there are no hooks.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { cacheKey } from "./activation_cache.ts";
 * const base = { modelSha256: "a".repeat(64), corpusSha256: "b".repeat(64), split: "train" as const, seqLen: 128 };
 * equal(cacheKey({ ...base, hooks: ["x", "y"] }), cacheKey({ ...base, hooks: ["y", "x", "x"] }));
 * ```
 */
export function cacheKey(key: ActivationCacheKey): string {
  const canonical = canonicalKey(key);
  const json = JSON.stringify({
    format: ACTIVATION_CACHE_FORMAT,
    version: ACTIVATION_CACHE_VERSION,
    ...canonical,
  });
  return createHash("sha256").update(json).digest("hex").slice(0, 16);
}

/**
 * Fingerprints a model's parameters, so that a retrained model never reuses a stale cache: the
 * sha256 of, for each parameter in name order, its name, its length and its float32 bytes.
 * The shape fields that have no parameter (nHead, lnEps) are not covered.
 *
 * @param params Parameter name → values, as `GPT.parameterValues()` or a checkpoint gives them.
 * @returns 64 lowercase hex digits.
 */
export function modelFingerprint(params: ReadonlyMap<string, Float32Array>): string {
  checkLittleEndian("fingerprint model parameters");
  const hash = createHash("sha256");
  for (const name of [...params.keys()].sort()) {
    const values = params.get(name)!;
    // Name and length delimit the raw bytes, so no two parameter sets hash the same stream.
    hash.update(`${JSON.stringify(name)}:${values.length}\n`);
    hash.update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }
  return hash.digest("hex");
}

/**
 * Opens a complete cache folder, checking `meta.json` and every file's size.
 *
 * @param dir The cache folder (`<root>/<id>`).
 * @param options The memory budget.
 * @returns The cache, in memory when its files total at most the budget, else streamed.
 * @throws {ActivationCacheError} If `meta.json` is missing, unreadable, incomplete or has missing
 * or bad fields, or a hook file is missing or has the wrong size; the message names the file and
 * says to delete the folder.
 */
export async function openActivationCache(
  dir: string,
  options: OpenActivationCacheOptions = {},
): Promise<ActivationCache> {
  checkLittleEndian(`open activation cache "${dir}"`);
  const budget = options.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const meta = await readMeta(dir);
  let total = 0;
  for (const hook of meta.hooks) {
    const path = join(dir, meta.files[hook]!);
    const expected = meta.tokens * meta.widths[hook]! * 4;
    let size: number;
    try {
      size = (await Deno.stat(path)).size;
    } catch (error) {
      throw corrupt(dir, path, `${describe(error)}`, error);
    }
    if (size !== expected || meta.bytes[hook] !== expected) {
      throw corrupt(
        dir,
        path,
        `it has ${size} bytes, expected ${expected} (${meta.tokens} tokens × ` +
          `${meta.widths[hook]} floats × 4 bytes; meta.json says ${meta.bytes[hook]})`,
      );
    }
    total += size;
  }
  let memory: Map<string, Float32Array> | undefined;
  if (total <= budget) {
    memory = new Map();
    for (const hook of meta.hooks) {
      const path = join(dir, meta.files[hook]!);
      const values = new Float32Array(meta.tokens * meta.widths[hook]!);
      await readBytes(path, 0, new Uint8Array(values.buffer), dir);
      memory.set(hook, values);
    }
  }
  return new Cache(dir, meta, memory);
}

/**
 * Returns the cache of a model's activations over a split, filling it first when no complete one
 * exists under `root`. Before filling it logs one line with the size on disk and whether the
 * cache will be held in memory, then a progress line every few seconds.
 *
 * A stale `<id>.tmp-*` folder (this process's, or one whose process is gone) is removed; one of a
 * live process is left alone and filled beside.
 *
 * @param o The model, tokens, window length, hooks, cache root and key, and fill settings.
 * @returns The opened cache.
 * @throws {RangeError} If a hook is unknown, seqLen exceeds the model's context, the split holds
 * no complete window, or a size option is not a positive integer (budget: non-negative number).
 * @throws {ActivationCacheError} If the existing folder is corrupt or holds other activations
 * than the key and tokens describe (delete it to rebuild), or the cache cannot be written.
 */
export async function ensureActivationCache(
  o: EnsureActivationCacheOptions,
): Promise<ActivationCache> {
  const log = o.log ?? ((line: string) => console.error(line));
  const batchSequences = o.batchSequences ?? DEFAULT_BATCH_SEQUENCES;
  const budget = o.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
  const interval = o.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
  checkPositiveInteger("batch of sequences", batchSequences);
  if (!(budget >= 0)) {
    throw new RangeError(`Cannot use memory budget "${budget}": not a non-negative number`);
  }
  const c = o.model.config;
  checkPositiveInteger("sequence length", o.seqLen);
  if (o.seqLen > c.nCtx) {
    throw new RangeError(
      `Cannot cache windows of ${o.seqLen} tokens: the model's context is ${c.nCtx}`,
    );
  }
  const canonical = typeof o.key === "string" ? null : canonicalKey({
    ...o.key,
    seqLen: o.seqLen,
    hooks: o.hooks,
  });
  if (typeof o.key !== "string" && ("seqLen" in o.key || "hooks" in o.key)) {
    const given = canonicalKey(o.key as ActivationCacheKey);
    if (JSON.stringify(given) !== JSON.stringify(canonical)) {
      throw new RangeError(
        `Cannot cache activations under key ${JSON.stringify(given)}: the options ask for ` +
          `seqLen ${o.seqLen} and hooks ${JSON.stringify(canonical!.hooks)}`,
      );
    }
  }
  const id = typeof o.key === "string" ? o.key : cacheKey(canonical!);
  if (!/^[0-9a-f]{16}$/.test(id)) {
    throw new RangeError(`Cannot use activation cache id "${id}": not 16 lowercase hex digits`);
  }
  const order = hookNames(c);
  const hooks = [...new Set(o.hooks)];
  for (const hook of hooks) {
    if (!order.includes(hook)) {
      throw new RangeError(
        `Cannot cache hook "${hook}": no such hook in a ${c.nLayer}-layer GPT ` +
          `(known: "${order[0]}" … "${order.at(-1)}")`,
      );
    }
  }
  hooks.sort((a, b) => order.indexOf(a) - order.indexOf(b));
  const windows = Math.floor(o.tokens.length / o.seqLen);
  if (windows === 0) {
    throw new RangeError(
      `Cannot cache activations of ${o.tokens.length} tokens: one window needs ${o.seqLen}`,
    );
  }
  const tokens = windows * o.seqLen;
  const widths = Object.fromEntries(
    hooks.map((h) => [h, h.endsWith(".mlp.hook_post") ? c.dMlp : c.dModel]),
  );
  const dir = join(o.root, id);
  const meta: ActivationCacheMeta = {
    format: ACTIVATION_CACHE_FORMAT,
    version: ACTIVATION_CACHE_VERSION,
    id,
    key: canonical,
    tokens,
    windows,
    seqLen: o.seqLen,
    hooks,
    widths,
    files: Object.fromEntries(hooks.map((h) => [h, `${h}.f32`])),
    bytes: Object.fromEntries(hooks.map((h) => [h, tokens * widths[h]! * 4])),
    complete: true,
  };

  if (await exists(dir)) {
    const cache = await openExisting(dir, meta, budget);
    log(`activation cache: reusing ${dir} (${grouped(tokens)} tokens)`);
    return cache;
  }

  const total = Object.values(meta.bytes).reduce((a, b) => a + b, 0);
  const widthList = hooks.map((h) => widths[h]!);
  const shape = widthList.every((w) => w === widthList[0])
    ? `${hooks.length} hooks × ${grouped(tokens)} tokens × ${widthList[0]} floats`
    : `${grouped(tokens)} tokens × ${widthList.reduce((a, b) => a + b, 0)} floats ` +
      `(${hooks.length} hooks: ${widthList.join(" + ")})`;
  const where = total <= budget
    ? "in memory"
    : `streamed from disk (over the ${formatBytes(budget)} memory budget)`;
  log(`activation cache: ${shape} = ${formatBytes(total)} on disk (${dir}); ${where}`);

  await Deno.mkdir(o.root, { recursive: true });
  await removeStaleTmp(o.root, id, log);
  const tmp = `${dir}.tmp-${Deno.pid}`;
  // A cache held in memory keeps the fill's own rows rather than reading its files back (2 GB
  // for the quickstart: ~10 s on a 2-core VM).
  const memory = total <= budget
    ? new Map(hooks.map((h) => [h, new Float32Array(tokens * widths[h]!)]))
    : undefined;
  try {
    await fill(o.model, o.tokens, meta, tmp, batchSequences, interval, log, memory);
    // meta.json last: a folder without it was never finished.
    await Deno.writeTextFile(join(tmp, META_FILE), JSON.stringify(meta, null, 2) + "\n");
    try {
      await Deno.rename(tmp, dir);
      if (memory !== undefined) return new Cache(dir, meta, memory);
    } catch (error) {
      // Another process may have finished the same cache first; theirs is as good as ours.
      if (!(await exists(join(dir, META_FILE)))) throw error;
      log(`activation cache: ${dir} was filled by another process meanwhile; using it`);
      await Deno.remove(tmp, { recursive: true });
    }
  } catch (error) {
    // Best effort: the interesting error is the fill's, and a leftover tmp is ignored anyway.
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (error instanceof RangeError || error instanceof ActivationCacheError) throw error;
    throw new ActivationCacheError(
      tmp,
      `Cannot fill activation cache "${dir}": ${describe(error)}`,
      { cause: error },
    );
  }
  return await openExisting(dir, meta, budget);
}

/**
 * Runs the model on consecutive windows of tokens and reads the activations at some hooks.
 *
 * @param model The frozen model.
 * @param tokens The split's tokens.
 * @param seqLen Tokens per window.
 * @param hooks Hooks in forward order (the run stops at the last).
 * @param first The first window.
 * @param windows How many windows.
 * @returns Per hook, in the order given, the rows `[windows · seqLen, width]`, row-major.
 */
export async function recordWindows(
  model: Pick<GPT, "run">,
  tokens: Int32Array,
  seqLen: number,
  hooks: readonly string[],
  first: number,
  windows: number,
): Promise<Float32Array[]> {
  // Inputs only: evalBatches also slices targets and so needs one token past the last window.
  const ids = tokens.subarray(first * seqLen, (first + windows) * seqLen);
  const outputs = tf.tidy(() => {
    const input = tf.tensor2d(ids, [windows, seqLen], "int32");
    const { cache } = model.run({ tokens: input, cache: hooks, stopAt: hooks.at(-1)! });
    // hook_pos_embed is [1, T, D]: every window gets the same rows.
    return hooks.map((h) => {
      const t = cache.get(h)!;
      return tf.broadcastTo(t, [windows, seqLen, t.shape.at(-1)!]);
    });
  });
  try {
    const values: Float32Array[] = [];
    for (const t of outputs) values.push((await t.data()) as Float32Array);
    return values;
  } finally {
    for (const t of outputs) t.dispose();
  }
}

/**
 * Runs the model over every window and appends each batch's activations to the hook files (and,
 * when given, copies them into `memory`'s arrays of `[tokens, width]` rows).
 */
async function fill(
  model: Pick<GPT, "config" | "run">,
  tokens: Int32Array,
  meta: ActivationCacheMeta,
  tmp: string,
  batchSequences: number,
  interval: number,
  log: (line: string) => void,
  memory: Map<string, Float32Array> | undefined,
): Promise<void> {
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.mkdir(tmp, { recursive: true });
  const { hooks, seqLen, windows } = meta;
  const files = new Map<string, Deno.FsFile>();
  let pendingWrite: Promise<void> = Promise.resolve();
  try {
    for (const hook of hooks) {
      files.set(
        hook,
        await Deno.open(join(tmp, meta.files[hook]!), {
          write: true,
          create: true,
          truncate: true,
        }),
      );
    }
    const started = performance.now();
    let lastReport = started;
    for (let first = 0; first < windows; first += batchSequences) {
      const rows = Math.min(batchSequences, windows - first);
      const values = await recordWindows(model, tokens, seqLen, hooks, first, rows);
      for (const [i, h] of memory === undefined ? [] : hooks.entries()) {
        memory!.get(h)!.set(values[i]!, first * seqLen * meta.widths[h]!);
      }
      // The previous batch's writes ran while this batch computed; order in each file is kept
      // because a batch's writes start only after the last batch's have finished.
      await pendingWrite;
      pendingWrite = Promise.all(
        hooks.map((h, i) => writeAll(files.get(h)!, values[i]!)),
      ).then(() => {});
      // Handled here so that a failing batch before the next await is not an unhandled
      // rejection; awaiting it still throws.
      pendingWrite.catch(() => {});
      const done = first + rows;
      const now = performance.now();
      if (now - lastReport >= interval && done < windows) {
        lastReport = now;
        const rate = (done * seqLen) / ((now - started) / 1000);
        const eta = ((windows - done) * seqLen) / rate;
        log(
          `activation cache: ${grouped(done)}/${grouped(windows)} windows | ` +
            `${formatCount(rate)} tok/s | ETA ${formatDuration(eta)}`,
        );
      }
    }
    await pendingWrite;
    const seconds = (performance.now() - started) / 1000;
    log(
      `activation cache: ${grouped(windows)} windows (${grouped(meta.tokens)} tokens) in ` +
        `${formatDuration(seconds)} | ${formatCount(meta.tokens / seconds)} tok/s`,
    );
  } finally {
    // No write may still be using a file when it is closed.
    await pendingWrite.catch(() => {});
    for (const file of files.values()) file.close();
  }
}

/** Opens an existing folder and checks that it holds what `expected` describes. */
async function openExisting(
  dir: string,
  expected: ActivationCacheMeta,
  budget: number,
): Promise<ActivationCache> {
  const cache = await openActivationCache(dir, { memoryBudgetBytes: budget });
  const found = cache.meta;
  const keyDiffers = found.id !== expected.id ||
    (expected.key !== null && found.key !== null &&
      JSON.stringify(found.key) !== JSON.stringify(expected.key));
  const mismatch = keyDiffers
    ? `its key is ${JSON.stringify(found.key)} (id ${found.id}), expected ` +
      `${JSON.stringify(expected.key)} (id ${expected.id})`
    : found.seqLen !== expected.seqLen ||
        JSON.stringify(found.hooks) !== JSON.stringify(expected.hooks)
    ? `it holds hooks ${JSON.stringify(found.hooks)} at seqLen ${found.seqLen}, expected ` +
      `${JSON.stringify(expected.hooks)} at ${expected.seqLen}`
    : found.tokens !== expected.tokens
    ? `it holds ${found.tokens} tokens, but the split has ${expected.tokens} in whole windows ` +
      `(different tokens under the same corpus checksum?)`
    : JSON.stringify(found.widths) !== JSON.stringify(expected.widths)
    ? `its widths are ${JSON.stringify(found.widths)}, the model's ${
      JSON.stringify(expected.widths)
    }`
    : undefined;
  if (mismatch !== undefined) {
    throw new ActivationCacheError(
      dir,
      `Cannot use activation cache "${dir}": ${mismatch}; delete the folder to rebuild it`,
    );
  }
  return cache;
}

/**
 * Whether the process that writes a `<id>.tmp-<pid>` folder is gone: its PID runs no process (on
 * Linux, where `/proc` tells), or, where that cannot be known, the folder is untouched for
 * {@link STALE_TMP_MS}.
 */
async function fillAbandoned(path: string, pid: number): Promise<boolean> {
  if (pid === Deno.pid) return true;
  const proc = await Deno.stat("/proc/self").then(() => true, () => false);
  if (proc) return !(await Deno.stat(`/proc/${pid}`).then(() => true, () => false));
  return Date.now() - await newestMtime(path) > STALE_TMP_MS;
}

/** Removes this process's leftover tmp folder and other processes' abandoned ones. */
async function removeStaleTmp(root: string, id: string, log: (line: string) => void) {
  for await (const entry of Deno.readDir(root)) {
    if (!entry.isDirectory || !entry.name.startsWith(`${id}.tmp-`)) continue;
    const path = join(root, entry.name);
    if (await fillAbandoned(path, Number(entry.name.slice(id.length + 5)))) {
      log(`activation cache: removing unfinished fill ${path}`);
      await Deno.remove(path, { recursive: true }).catch(() => {});
    } else {
      const age = Date.now() - await newestMtime(path);
      log(
        `activation cache: ${path} was written ${formatDuration(age / 1000)} ago (another ` +
          `process filling the same cache?); filling separately`,
      );
    }
  }
}

/**
 * Removes the unfinished fills of killed processes under a cache root (`<id>.tmp-<pid>` folders
 * whose process is gone): a fill killed midway can leave gigabytes behind. A runner calls this as
 * it starts; fills of live processes are left alone.
 *
 * @param root The folder the caches live in (missing: nothing to do).
 * @param log Told of every folder removed.
 * @returns The folders removed.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { removeAbandonedFills } from "./activation_cache.ts";
 * const root = await Deno.makeTempDir();
 * // PID 2^22 + 1 is above Linux's largest, so no process has it.
 * await Deno.mkdir(`${root}/abc.tmp-4194305`);
 * await Deno.mkdir(`${root}/abc.tmp-${Deno.pid}`); // this process's: a fill at work
 * deepEqual(await removeAbandonedFills(root, () => {}), [`${root}/abc.tmp-4194305`]);
 * await Deno.remove(root, { recursive: true });
 * ```
 */
export async function removeAbandonedFills(
  root: string,
  log: (line: string) => void,
): Promise<string[]> {
  const removed: string[] = [];
  try {
    for await (const entry of Deno.readDir(root)) {
      const pid = /\.tmp-(\d+)$/.exec(entry.name)?.[1];
      const path = join(root, entry.name);
      if (!entry.isDirectory || pid === undefined || Number(pid) === Deno.pid) continue;
      if (!(await fillAbandoned(path, Number(pid)))) continue;
      log(`activation cache: removing the unfinished fill of a stopped process, ${path}`);
      await Deno.remove(path, { recursive: true });
      removed.push(path);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return removed;
}

/** The newest modification time of a folder and the files in it, in ms since the epoch. */
async function newestMtime(dir: string): Promise<number> {
  let newest = (await Deno.stat(dir)).mtime?.getTime() ?? 0;
  for await (const entry of Deno.readDir(dir)) {
    const stat = await Deno.stat(join(dir, entry.name)).catch(() => undefined);
    newest = Math.max(newest, stat?.mtime?.getTime() ?? 0);
  }
  return newest;
}

/** Reads and validates `meta.json`. */
async function readMeta(dir: string): Promise<ActivationCacheMeta> {
  const path = join(dir, META_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound
      ? "it is missing (an unfinished or foreign folder)"
      : describe(error);
    throw corrupt(dir, path, why, error);
  }
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(text);
  } catch (error) {
    throw corrupt(dir, path, `it is not JSON (${describe(error)})`, error);
  }
  const bad = (why: string) => corrupt(dir, path, why);
  if (typeof m !== "object" || m === null || Array.isArray(m)) throw bad("it is not an object");
  if (m.format !== ACTIVATION_CACHE_FORMAT) {
    throw bad(`"format" is ${JSON.stringify(m.format)}, expected "${ACTIVATION_CACHE_FORMAT}"`);
  }
  if (m.version !== ACTIVATION_CACHE_VERSION) {
    throw bad(`"version" is ${JSON.stringify(m.version)}, expected ${ACTIVATION_CACHE_VERSION}`);
  }
  if (m.complete !== true) throw bad(`"complete" is not true (the fill did not finish)`);
  for (const field of ["tokens", "windows", "seqLen"]) {
    const v = m[field];
    if (!Number.isSafeInteger(v) || (v as number) <= 0) {
      throw bad(`"${field}" is ${JSON.stringify(v)}, expected a positive integer`);
    }
  }
  if (m.tokens !== (m.windows as number) * (m.seqLen as number)) {
    throw bad(`"tokens" ${m.tokens} is not "windows" ${m.windows} × "seqLen" ${m.seqLen}`);
  }
  if (typeof m.id !== "string") throw bad(`"id" is missing`);
  const hooks = m.hooks;
  if (
    !Array.isArray(hooks) || hooks.length === 0 || !hooks.every((h) => typeof h === "string")
  ) {
    throw bad(`"hooks" is ${JSON.stringify(hooks)}, expected a non-empty list of hook names`);
  }
  for (const field of ["widths", "files", "bytes"]) {
    const record = m[field] as Record<string, unknown> | undefined;
    if (typeof record !== "object" || record === null) throw bad(`"${field}" is missing`);
    for (const hook of hooks) {
      const v = record[hook];
      const ok = field === "files"
        ? typeof v === "string" && v.length > 0 && !v.includes("/") && !v.includes("\\")
        : Number.isSafeInteger(v) && (v as number) > 0;
      if (!ok) throw bad(`"${field}" has ${JSON.stringify(v)} for hook "${hook}"`);
    }
  }
  const key = m.key as Record<string, unknown> | undefined;
  // null: filled from a bare id, whose fields were never known.
  if (
    key !== null &&
    (typeof key !== "object" || typeof key.modelSha256 !== "string" ||
      typeof key.corpusSha256 !== "string" || typeof key.split !== "string" ||
      typeof key.seqLen !== "number" || !Array.isArray(key.hooks))
  ) {
    throw bad(`"key" lacks modelSha256, corpusSha256, split, seqLen or hooks`);
  }
  return m as unknown as ActivationCacheMeta;
}

/** The cache behind {@link openActivationCache}. */
class Cache implements ActivationCache {
  readonly dir: string;
  readonly meta: Readonly<ActivationCacheMeta>;
  readonly tokens: number;
  readonly hooks: readonly string[];
  readonly inMemory: boolean;
  readonly #memory: Map<string, Float32Array> | undefined;

  constructor(dir: string, meta: ActivationCacheMeta, memory?: Map<string, Float32Array>) {
    this.dir = dir;
    this.meta = meta;
    this.tokens = meta.tokens;
    this.hooks = Object.freeze([...meta.hooks]);
    this.inMemory = memory !== undefined;
    this.#memory = memory;
  }

  width(hook: string): number {
    const width = this.meta.widths[hook];
    if (!this.meta.hooks.includes(hook) || width === undefined) {
      throw new RangeError(
        `Cannot use hook "${hook}" of activation cache "${this.dir}": it holds ` +
          this.meta.hooks.map((h) => `"${h}"`).join(", "),
      );
    }
    return width;
  }

  async read(hook: string, start: number, count: number): Promise<Float32Array> {
    const width = this.width(hook);
    if (
      !Number.isSafeInteger(start) || !Number.isSafeInteger(count) || start < 0 || count < 0 ||
      start + count > this.tokens
    ) {
      throw new RangeError(
        `Cannot read rows [${start}, ${start + count}) of "${hook}" from activation cache ` +
          `"${this.dir}": it holds rows [0, ${this.tokens})`,
      );
    }
    const memory = this.#memory?.get(hook);
    if (memory !== undefined) return memory.slice(start * width, (start + count) * width);
    const out = new Float32Array(count * width);
    await readBytes(
      join(this.dir, this.meta.files[hook]!),
      start * width * 4,
      new Uint8Array(out.buffer),
      this.dir,
    );
    return out;
  }

  async batch(
    hooks: readonly string[],
    start: number,
    count: number,
  ): Promise<Map<string, Float32Array>> {
    const arrays = await Promise.all(hooks.map((h) => this.read(h, start, count)));
    return new Map(hooks.map((h, i) => [h, arrays[i]!]));
  }
}

/** Fills `into` from the file at byte `offset`; reads may return fewer bytes than asked. */
async function readBytes(path: string, offset: number, into: Uint8Array, dir: string) {
  if (into.length === 0) return;
  try {
    using file = await Deno.open(path, { read: true });
    await file.seek(offset, Deno.SeekMode.Start);
    for (let done = 0; done < into.length;) {
      const n = await file.read(into.subarray(done));
      if (n === null) {
        throw corrupt(
          dir,
          path,
          `it ended at byte ${offset + done}, expected at least ${offset + into.length}`,
        );
      }
      done += n;
    }
  } catch (error) {
    if (error instanceof ActivationCacheError) throw error;
    throw corrupt(dir, path, describe(error), error);
  }
}

/** Writes every byte of `values`; a write may take fewer bytes than given. */
async function writeAll(file: Deno.FsFile, values: Float32Array): Promise<void> {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  for (let written = 0; written < bytes.length;) {
    written += await file.write(bytes.subarray(written));
  }
}

/** The key with validated fields and hooks sorted and deduplicated. */
function canonicalKey(key: ActivationCacheKey): ActivationCacheMeta["key"] {
  for (const field of ["modelSha256", "corpusSha256"] as const) {
    if (typeof key[field] !== "string" || !HEX64.test(key[field])) {
      throw new RangeError(
        `Cannot compute activation cache key: ${field} "${key[field]}" is not a sha256 ` +
          `(64 lowercase hex digits)`,
      );
    }
  }
  if (key.split !== "train" && key.split !== "val") {
    throw new RangeError(
      `Cannot compute activation cache key: split "${key.split}" is not "train" or "val"`,
    );
  }
  checkPositiveInteger("sequence length", key.seqLen);
  if (key.hooks.length === 0) {
    throw new RangeError("Cannot compute activation cache key: no hooks");
  }
  return {
    modelSha256: key.modelSha256,
    corpusSha256: key.corpusSha256,
    split: key.split,
    seqLen: key.seqLen,
    hooks: [...new Set(key.hooks)].sort(),
  };
}

function corrupt(dir: string, path: string, why: string, cause?: unknown): ActivationCacheError {
  return new ActivationCacheError(
    path,
    `Cannot open activation cache "${dir}": ${path}: ${why}; delete the folder "${dir}" to ` +
      `rebuild it`,
    cause === undefined ? undefined : { cause },
  );
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function checkPositiveInteger(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`Cannot use ${what} "${value}": not a positive integer`);
  }
}

// The files are little-endian float32 copied straight from typed arrays, which hold the host's
// byte order; every platform Deno runs on is little-endian, but say so rather than misread.
function checkLittleEndian(action: string): void {
  if (new Uint8Array(new Float32Array([1]).buffer)[3] !== 0x3f) {
    throw new Error(`Cannot ${action}: this host is big-endian, the cache is little-endian`);
  }
}

function grouped(n: number): string {
  return n.toLocaleString("en-US");
}

function formatBytes(n: number): string {
  if (n < 1e3) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let i = 0, v = n / 1e3;
  while (v >= 1e3 && i < units.length - 1) {
    v /= 1e3;
    i++;
  }
  return `${v.toFixed(2)} ${units[i]}`;
}

/**
 * Checkpoint folders: `model.safetensors` (F32 parameters) and `config.json`, plus optionally
 * `state.safetensors` and `state.json` holding whatever a run needs to resume (optimizer
 * moments, step, data cursor, RNG state).
 *
 * Saving replaces the whole folder at once, so a crash at any point leaves the previous or the
 * new checkpoint loadable: the new folder is written as `<dir>.tmp-<pid>`, the old one is moved
 * to `<dir>.old`, the new one is renamed into place, and `<dir>.old` is removed. Loading falls
 * back to `<dir>.old` when a crash came between the two renames.
 *
 * @module
 */

import { join } from "node:path";
import { decodeSafetensors, encodeSafetensors, writeFileAtomic } from "./safetensors.ts";

/** A float32 tensor as stored in a checkpoint. */
export interface CheckpointTensor {
  /** Dimensions, row-major; `[]` is a scalar. */
  shape: number[];
  /** Values in row-major order. */
  data: Float32Array;
}

/** Resume state: any JSON value plus named float32 tensors. */
export interface CheckpointState {
  /** Any JSON value: step, data cursor, RNG state and the like. */
  json: unknown;
  /** Tensors such as optimizer moments, by name. */
  tensors: Record<string, CheckpointTensor>;
}

/** Everything a checkpoint folder holds. */
export interface Checkpoint {
  /** Any JSON value, typically the model config. */
  config: unknown;
  /** Model parameters by name. */
  params: Record<string, CheckpointTensor>;
  /** Present when the checkpoint can resume training. */
  state?: CheckpointState;
}

/** Raised when a checkpoint folder cannot be saved or loaded; `path` names the file or folder. */
export class CheckpointError extends Error {
  /** The checkpoint folder or the file inside it that the error is about. */
  readonly path: string;

  /**
   * Creates the error; the message is complete, nothing is added to it.
   *
   * @param path checkpoint folder or file the error is about
   * @param message full message, already naming the file and what to do
   * @param options standard error options, e.g. the underlying `cause`
   */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CheckpointError";
    this.path = path;
  }
}

const MODEL_FILE = "model.safetensors";
const CONFIG_FILE = "config.json";
const STATE_TENSORS_FILE = "state.safetensors";
const STATE_JSON_FILE = "state.json";
const CHECKPOINT_FILES = new Set([MODEL_FILE, CONFIG_FILE, STATE_TENSORS_FILE, STATE_JSON_FILE]);

// A trailing slash would put the sibling `.tmp-<pid>` and `.old` folders inside the checkpoint.
function normalize(dir: string): string {
  const trimmed = dir.replace(/[\\/]+$/, "");
  return trimmed === "" ? dir : trimmed;
}

async function stat(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

async function removeIfPresent(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}

function encodeJson(dir: string, what: string, value: unknown): Uint8Array {
  let text: string | undefined;
  try {
    text = JSON.stringify(value, null, 2);
  } catch (error) {
    throw new CheckpointError(
      dir,
      `Cannot save checkpoint "${dir}": ${what} is not JSON-serializable ` +
        `(${(error as Error).message}); pass plain objects, arrays, strings, numbers and booleans`,
      { cause: error },
    );
  }
  if (text === undefined) {
    throw new CheckpointError(
      dir,
      `Cannot save checkpoint "${dir}": ${what} is ${String(value)}, which JSON cannot hold; ` +
        `pass a JSON value`,
    );
  }
  return new TextEncoder().encode(`${text}\n`);
}

// Replacing a folder deletes it, so only folders that hold nothing but checkpoint files may be
// replaced; anything else is probably a wrong path.
async function checkReplaceable(dir: string): Promise<void> {
  const info = await stat(dir);
  if (!info) return;
  if (!info.isDirectory) {
    throw new CheckpointError(
      dir,
      `Cannot save checkpoint "${dir}": "${dir}" is a file, not a folder; choose another path`,
    );
  }
  for await (const entry of Deno.readDir(dir)) {
    if (!CHECKPOINT_FILES.has(entry.name)) {
      throw new CheckpointError(
        dir,
        `Cannot save checkpoint "${dir}": the folder holds "${entry.name}", which is not a ` +
          `checkpoint file; choose another folder or remove it`,
      );
    }
  }
}

/**
 * Saves a checkpoint folder, replacing any checkpoint already there as a single step.
 *
 * Crash safety: each file is fsynced before the folder is renamed into place; a crash at any
 * point leaves `dir` or `<dir>.old` holding a complete checkpoint that {@link loadCheckpoint}
 * finds. Concurrent saves to the same `dir` are not supported.
 *
 * @param dir checkpoint folder; parent folders are created as needed
 * @param checkpoint config, parameters and optional resume state
 * @throws {CheckpointError} when the config or state is not JSON-serializable, or `dir` exists
 *   but is not a checkpoint folder
 * @throws {SafetensorsError} when a tensor's shape does not match its data
 * @throws {Deno.errors.PermissionDenied} and other I/O errors from the file system
 */
export async function saveCheckpoint(dir: string, checkpoint: Checkpoint): Promise<void> {
  dir = normalize(dir);
  // Encode everything before touching the disk, so invalid input leaves no trace.
  const files: [string, Uint8Array][] = [
    [CONFIG_FILE, encodeJson(dir, "config", checkpoint.config)],
    [MODEL_FILE, encodeSafetensors(checkpoint.params, undefined, join(dir, MODEL_FILE))],
  ];
  if (checkpoint.state) {
    const { json, tensors } = checkpoint.state;
    files.push([STATE_JSON_FILE, encodeJson(dir, "state.json", json)]);
    files.push([
      STATE_TENSORS_FILE,
      encodeSafetensors(tensors, undefined, join(dir, STATE_TENSORS_FILE)),
    ]);
  }
  await checkReplaceable(dir);

  const temporary = `${dir}.tmp-${Deno.pid}`;
  const old = `${dir}.old`;
  await removeIfPresent(temporary);
  try {
    await Deno.mkdir(temporary, { recursive: true });
    for (const [name, bytes] of files) await writeFileAtomic(join(temporary, name), bytes);

    if (await stat(dir)) {
      // `dir` is complete, so a leftover `.old` from an earlier crash is stale.
      await removeIfPresent(old);
      await Deno.rename(dir, old);
    }
    // When `dir` was missing, a leftover `.old` is the last complete checkpoint and must
    // survive until the new one is in place.
    await Deno.rename(temporary, dir);
    await removeIfPresent(old);
  } catch (error) {
    // Whichever step failed, `dir` or `.old` still holds a complete checkpoint, so the partial
    // new one is only clutter; the original error is the one worth reporting.
    await removeIfPresent(temporary).catch(() => {});
    throw error;
  }
}

async function resolveFolder(dir: string): Promise<string | undefined> {
  for (const candidate of [dir, `${dir}.old`]) {
    const info = await stat(candidate);
    if (info) {
      if (!info.isDirectory) {
        throw new CheckpointError(
          candidate,
          `Cannot load checkpoint "${dir}": "${candidate}" is a file, not a checkpoint folder`,
        );
      }
      return candidate;
    }
  }
  return undefined;
}

async function readFile(dir: string, folder: string, name: string): Promise<Uint8Array> {
  const path = join(folder, name);
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new CheckpointError(
      path,
      `Cannot load checkpoint "${dir}": "${path}" is missing; save the checkpoint again`,
      { cause: error },
    );
  }
}

async function readJson(dir: string, folder: string, name: string): Promise<unknown> {
  const path = join(folder, name);
  const bytes = await readFile(dir, folder, name);
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (error) {
    throw new CheckpointError(
      path,
      `Cannot load checkpoint "${dir}": "${path}" is not valid JSON ` +
        `(${(error as Error).message}); fix the file or save the checkpoint again`,
      { cause: error },
    );
  }
}

async function readTensors(
  dir: string,
  folder: string,
  name: string,
): Promise<Record<string, CheckpointTensor>> {
  const path = join(folder, name);
  const { tensors } = decodeSafetensors(await readFile(dir, folder, name), path);
  const result: [string, CheckpointTensor][] = [];
  for (const [tensorName, { dtype, shape, data }] of tensors) {
    if (!(data instanceof Float32Array)) {
      throw new CheckpointError(
        path,
        `Cannot load checkpoint "${dir}": tensor "${tensorName}" in "${path}" is ${dtype}, ` +
          `but checkpoint tensors must be floating point (F32, F16 or BF16)`,
      );
    }
    result.push([tensorName, { shape, data }]);
  }
  return Object.fromEntries(result);
}

async function exists(path: string): Promise<boolean> {
  return (await stat(path))?.isFile ?? false;
}

/**
 * Loads a checkpoint folder, falling back to `<dir>.old` when a save was interrupted between
 * moving the old checkpoint aside and moving the new one in.
 *
 * Parameters stored as F16 or BF16 (for instance by other tools) are widened to float32.
 *
 * @param dir checkpoint folder
 * @returns the config, parameters, and the resume state when the folder has one
 * @throws {CheckpointError} when the folder or a required file is missing, a JSON file is
 *   invalid, only half of the resume state is present, or a tensor is not floating point
 * @throws {SafetensorsError} when a `.safetensors` file is malformed
 */
export async function loadCheckpoint(dir: string): Promise<Checkpoint> {
  dir = normalize(dir);
  const folder = await resolveFolder(dir);
  if (!folder) {
    throw new CheckpointError(
      dir,
      `Cannot load checkpoint "${dir}": the folder does not exist; check the path or save a ` +
        `checkpoint there first`,
    );
  }
  const config = await readJson(dir, folder, CONFIG_FILE);
  const params = await readTensors(dir, folder, MODEL_FILE);

  const hasStateJson = await exists(join(folder, STATE_JSON_FILE));
  const hasStateTensors = await exists(join(folder, STATE_TENSORS_FILE));
  if (hasStateJson !== hasStateTensors) {
    const [present, missing] = hasStateJson
      ? [STATE_JSON_FILE, STATE_TENSORS_FILE]
      : [STATE_TENSORS_FILE, STATE_JSON_FILE];
    throw new CheckpointError(
      join(folder, missing),
      `Cannot load checkpoint "${dir}": "${join(folder, present)}" is present but ` +
        `"${join(folder, missing)}" is missing; delete "${present}" to load the parameters ` +
        `without resume state`,
    );
  }
  if (!hasStateJson) return { config, params };
  const json = await readJson(dir, folder, STATE_JSON_FILE);
  const tensors = await readTensors(dir, folder, STATE_TENSORS_FILE);
  return { config, params, state: { json, tensors } };
}

/**
 * Tells whether `dir` (or its `<dir>.old` fallback) holds the files of a checkpoint. The
 * contents are not validated; {@link loadCheckpoint} does that.
 *
 * @param dir checkpoint folder
 * @returns true when `config.json` and `model.safetensors` are present
 * @throws {CheckpointError} when `dir` is a file rather than a folder
 */
export async function hasCheckpoint(dir: string): Promise<boolean> {
  const folder = await resolveFolder(normalize(dir));
  return folder !== undefined && await exists(join(folder, CONFIG_FILE)) &&
    await exists(join(folder, MODEL_FILE));
}

/**
 * Reader and writer for the safetensors format, written from the format description:
 * an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {key: value}}`
 * (offsets relative to the first byte after the header), then the tensor data.
 *
 * @module
 */

/** Array type that each safetensors dtype decodes to. F16 and BF16 are widened to float32. */
export interface DtypeData {
  /** IEEE double. */
  F64: Float64Array;
  /** IEEE single. */
  F32: Float32Array;
  /** IEEE half, widened exactly to float32. */
  F16: Float32Array;
  /** bfloat16 (the top half of a float32), widened exactly to float32. */
  BF16: Float32Array;
  /** Signed 64-bit integer, as BigInt because a Number cannot hold every value. */
  I64: BigInt64Array;
  /** Signed 32-bit integer. */
  I32: Int32Array;
  /** Signed 16-bit integer. */
  I16: Int16Array;
  /** Signed 8-bit integer. */
  I8: Int8Array;
  /** Unsigned 64-bit integer, as BigInt because a Number cannot hold every value. */
  U64: BigUint64Array;
  /** Unsigned 32-bit integer. */
  U32: Uint32Array;
  /** Unsigned 16-bit integer. */
  U16: Uint16Array;
  /** Unsigned 8-bit integer. */
  U8: Uint8Array;
  /** One byte per value, 0 for false; other values are passed through unchecked. */
  BOOL: Uint8Array;
}

/** A safetensors element type this module can read. */
export type Dtype = keyof DtypeData;

/**
 * One decoded tensor. `dtype` is the type stored in the file; narrowing on it narrows `data`.
 * `data` may be a view into the decoded bytes, so it shares their memory.
 */
export type DecodedTensor = {
  [D in Dtype]: { dtype: D; shape: number[]; data: DtypeData[D] };
}[Dtype];

/** Contents of a safetensors file: tensors keyed by name, plus the string metadata. */
export interface DecodedSafetensors {
  /** Tensors by name. */
  tensors: Map<string, DecodedTensor>;
  /** The `__metadata__` strings; empty when the file has none. */
  metadata: Record<string, string>;
}

/** A tensor to write. Only F32 is written, so `dtype` may be omitted. */
export interface TensorToWrite {
  /** Element type; F32 is the only one written. */
  dtype?: "F32";
  /** Dimensions, row-major; `[]` is a scalar. Their product must equal `data.length`. */
  shape: readonly number[];
  /** Values in row-major order. */
  data: Float32Array;
}

/** Raised for every malformed safetensors input or unwritable tensor; `path` names the file. */
export class SafetensorsError extends Error {
  /** The file (or `"<memory>"`) that could not be read or written. */
  readonly path: string;

  /**
   * Creates the error; the message is complete, nothing is added to it.
   *
   * @param path file the error is about, or `"<memory>"`
   * @param message full message, already naming the file and the tensor
   * @param options standard error options, e.g. the underlying `cause`
   */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SafetensorsError";
    this.path = path;
  }
}

const BYTES_PER_ELEMENT: Record<Dtype, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
};

const METADATA_KEY = "__metadata__";

// Typed arrays use the host byte order while the format is little-endian; every mainstream
// host is little-endian, but a big-endian one must byte-swap instead of viewing.
const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function count(n: number | bigint): string {
  return n.toLocaleString("en-US");
}

function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

// Corrupt headers can hold arbitrarily large values; keep messages readable.
function preview(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isShape(value: unknown): value is number[] {
  return Array.isArray(value) &&
    value.every((dim) => Number.isSafeInteger(dim) && (dim as number) >= 0);
}

function isDtype(value: unknown): value is Dtype {
  return typeof value === "string" && Object.hasOwn(BYTES_PER_ELEMENT, value);
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, dim) => product * dim, 1);
}

// Returns little-endian data as host-order bytes at an offset the element size divides, viewing
// the input when possible so that large checkpoints are not copied.
function alignedHostOrder(
  bytes: Uint8Array,
  start: number,
  byteLength: number,
  size: number,
): { buffer: ArrayBufferLike; byteOffset: number } {
  const absolute = bytes.byteOffset + start;
  if (LITTLE_ENDIAN_HOST && absolute % size === 0) {
    return { buffer: bytes.buffer, byteOffset: absolute };
  }
  const copy = bytes.slice(start, start + byteLength);
  if (!LITTLE_ENDIAN_HOST) {
    for (let i = 0; i < copy.length; i += size) copy.subarray(i, i + size).reverse();
  }
  return { buffer: copy.buffer, byteOffset: 0 };
}

// Widening is done on bit patterns, not values, so NaN payloads and -0 survive exactly.
function halfToFloat32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = (h & 0x8000) << 16;
    const exponent = (h >> 10) & 0x1f;
    let mantissa = h & 0x3ff;
    if (exponent === 0x1f) {
      bits[i] = sign | 0x7f800000 | (mantissa << 13);
    } else if (exponent !== 0) {
      bits[i] = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa === 0) {
      bits[i] = sign;
    } else {
      // Every half subnormal is a float32 normal: shift the leading 1 into the implicit bit.
      let biased = 113;
      while ((mantissa & 0x400) === 0) {
        mantissa <<= 1;
        biased--;
      }
      bits[i] = sign | (biased << 23) | ((mantissa & 0x3ff) << 13);
    }
  }
  return out;
}

function bfloat16ToFloat32(halves: Uint16Array): Float32Array {
  const out = new Float32Array(halves.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16;
  return out;
}

function tensorData(
  dtype: Dtype,
  bytes: Uint8Array,
  start: number,
  length: number,
): DtypeData[Dtype] {
  const size = BYTES_PER_ELEMENT[dtype];
  const { buffer, byteOffset } = alignedHostOrder(bytes, start, length * size, size);
  switch (dtype) {
    case "F64":
      return new Float64Array(buffer, byteOffset, length);
    case "F32":
      return new Float32Array(buffer, byteOffset, length);
    case "F16":
      return halfToFloat32(new Uint16Array(buffer, byteOffset, length));
    case "BF16":
      return bfloat16ToFloat32(new Uint16Array(buffer, byteOffset, length));
    case "I64":
      return new BigInt64Array(buffer, byteOffset, length);
    case "I32":
      return new Int32Array(buffer, byteOffset, length);
    case "I16":
      return new Int16Array(buffer, byteOffset, length);
    case "I8":
      return new Int8Array(buffer, byteOffset, length);
    case "U64":
      return new BigUint64Array(buffer, byteOffset, length);
    case "U32":
      return new Uint32Array(buffer, byteOffset, length);
    case "U16":
      return new Uint16Array(buffer, byteOffset, length);
    case "U8":
    case "BOOL":
      return new Uint8Array(buffer, byteOffset, length);
  }
}

interface Entry {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

function parseEntry(
  name: string,
  value: unknown,
  dataLength: number,
  fail: (state: string) => never,
): Entry {
  if (!isRecord(value)) fail(`header entry for "${name}" is ${preview(value)}, not an object`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (!isDtype(dtype)) {
    const known = Object.keys(BYTES_PER_ELEMENT).join(", ");
    fail(`unsupported dtype ${preview(dtype)} for "${name}" (supported: ${known})`);
  }
  if (!isShape(shape)) {
    fail(`shape of "${name}" is ${preview(shape)}, not a list of non-negative integers`);
  }
  if (!isShape(offsets) || offsets.length !== 2) {
    fail(`data_offsets of "${name}" are ${preview(offsets)}, not a pair of non-negative integers`);
  }
  const [begin, end] = offsets;
  if (end < begin) fail(`data_offsets of "${name}" are [${begin}, ${end}]: end before begin`);
  const expected = elementCount(shape) * BYTES_PER_ELEMENT[dtype];
  if (expected !== end - begin) {
    fail(
      `"${name}" has shape ${formatShape(shape)} of ${dtype}, which needs ${count(expected)} ` +
        `bytes, but its data_offsets [${begin}, ${end}] span ${count(end - begin)}`,
    );
  }
  if (end > dataLength) {
    fail(
      `truncated: header says the data of "${name}" ends at byte ${count(end)} ` +
        `but the file holds only ${count(dataLength)} bytes of data`,
    );
  }
  return { name, dtype, shape, begin, end };
}

// The format requires tensors to tile the data section exactly, so a gap or overlap means the
// header and data disagree.
function checkLayout(entries: Entry[], dataLength: number, fail: (state: string) => never) {
  const ordered = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let position = 0;
  let previous: Entry | undefined;
  for (const entry of ordered) {
    if (previous && entry.begin < position) {
      fail(
        `data of "${entry.name}" (bytes ${count(entry.begin)}-${count(entry.end)}) overlaps ` +
          `"${previous.name}" (bytes ${count(previous.begin)}-${count(previous.end)})`,
      );
    }
    if (entry.begin > position) {
      const after = previous ? `after "${previous.name}"` : "at the start of the data";
      fail(`${count(entry.begin - position)} unused bytes ${after}, before "${entry.name}"`);
    }
    position = entry.end;
    previous = entry;
  }
  if (position < dataLength) {
    fail(
      `${count(dataLength - position)} bytes of trailing garbage after the last tensor's data`,
    );
  }
}

function parseMetadata(value: unknown, fail: (state: string) => never): Record<string, string> {
  if (value === undefined) return {};
  if (!isRecord(value)) fail(`"${METADATA_KEY}" is ${preview(value)}, not an object`);
  for (const [key, item] of Object.entries(value)) {
    if (typeof item !== "string") {
      fail(`"${METADATA_KEY}" value of "${key}" is ${preview(item)}, not a string`);
    }
  }
  return value as Record<string, string>;
}

/**
 * Decodes a safetensors file held in memory, validating the whole layout first.
 *
 * Tensors whose data is suitably aligned are returned as views into `bytes` (no copy), so
 * later writes to `bytes` show through; F16 and BF16 are widened into new Float32Arrays.
 *
 * @param bytes the complete file contents
 * @param source name of the file, used in error messages
 * @returns the tensors by name, and the `__metadata__` strings (empty when absent)
 * @throws {SafetensorsError} when the bytes are not a well-formed safetensors file
 */
export function decodeSafetensors(bytes: Uint8Array, source = "<memory>"): DecodedSafetensors {
  const fail: (state: string) => never = (state) => {
    throw new SafetensorsError(source, `Cannot read checkpoint "${source}": ${state}`);
  };
  if (bytes.length < 8) {
    fail(`truncated: file is ${count(bytes.length)} bytes, shorter than the 8-byte header length`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(bytes.length - 8)) {
    fail(
      `truncated: header length is ${count(headerLength)} bytes ` +
        `but the file ends ${count(bytes.length - 8)} bytes after the length field`,
    );
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart));
    header = JSON.parse(text);
  } catch (error) {
    fail(`header is not valid UTF-8 JSON (${(error as Error).message})`);
  }
  if (!isRecord(header)) fail(`header is ${preview(header)}, not a JSON object`);

  const dataLength = bytes.length - dataStart;
  const metadata = parseMetadata(header[METADATA_KEY], fail);
  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, value]) => parseEntry(name, value, dataLength, fail));
  checkLayout(entries, dataLength, fail);

  const tensors = new Map<string, DecodedTensor>();
  for (const { name, dtype, shape, begin, end } of entries) {
    const length = (end - begin) / BYTES_PER_ELEMENT[dtype];
    const data = tensorData(dtype, bytes, dataStart + begin, length);
    tensors.set(name, { dtype, shape, data } as DecodedTensor);
  }
  return { tensors, metadata };
}

/**
 * Encodes float32 tensors as a safetensors file: tensors sorted by name, data section aligned
 * to 8 bytes by space-padding the header.
 *
 * @param tensors tensors by name; `__metadata__` is reserved and rejected
 * @param metadata optional string metadata, stored as `__metadata__`
 * @param target name of the destination, used in error messages
 * @returns the complete file contents
 * @throws {SafetensorsError} when a tensor's shape does not match its data, its dtype is not
 *   F32, its name is reserved, or a metadata value is not a string
 */
export function encodeSafetensors(
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
  target = "<memory>",
): Uint8Array<ArrayBuffer> {
  const fail: (state: string) => never = (state) => {
    throw new SafetensorsError(target, `Cannot write checkpoint "${target}": ${state}`);
  };
  // Built as entries because assigning a tensor named "__proto__" would set the prototype.
  const header: [string, unknown][] = [];
  if (metadata !== undefined) header.push([METADATA_KEY, parseMetadata(metadata, fail)]);
  const names = Object.keys(tensors).sort();
  let dataLength = 0;
  for (const name of names) {
    const { dtype = "F32", shape, data } = tensors[name];
    if (name === METADATA_KEY) fail(`tensor name "${name}" is reserved for metadata`);
    if (dtype !== "F32") fail(`dtype ${preview(dtype)} of "${name}" cannot be written, only F32`);
    if (!(data instanceof Float32Array)) fail(`data of "${name}" is not a Float32Array`);
    if (!isShape(shape)) {
      fail(`shape of "${name}" is ${preview(shape)}, not a list of non-negative integers`);
    }
    if (elementCount(shape) !== data.length) {
      fail(
        `"${name}" has shape ${formatShape(shape)} (${count(elementCount(shape))} values) ` +
          `but its data holds ${count(data.length)}`,
      );
    }
    header.push([name, {
      dtype,
      shape: [...shape],
      data_offsets: [dataLength, dataLength + data.byteLength],
    }]);
    dataLength += data.byteLength;
  }

  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(header)));
  const headerLength = json.length + (8 - (json.length % 8)) % 8;
  const out = new Uint8Array(8 + headerLength + dataLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLength);
  let position = 8 + headerLength;
  for (const name of names) {
    const { data } = tensors[name];
    const region = out.subarray(position, position + data.byteLength);
    region.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    if (!LITTLE_ENDIAN_HOST) {
      for (let i = 0; i < region.length; i += 4) region.subarray(i, i + 4).reverse();
    }
    position += data.byteLength;
  }
  return out;
}

/**
 * Reads and decodes a safetensors file.
 *
 * @param path file to read
 * @returns the tensors by name, and the `__metadata__` strings (empty when absent)
 * @throws {SafetensorsError} when the file cannot be read or is malformed
 */
export async function readSafetensors(path: string): Promise<DecodedSafetensors> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    const state = error instanceof Deno.errors.NotFound
      ? "file does not exist"
      : (error as Error).message;
    throw new SafetensorsError(path, `Cannot read checkpoint "${path}": ${state}`, {
      cause: error,
    });
  }
  return decodeSafetensors(bytes, path);
}

/**
 * Writes bytes to `path` through a temporary sibling that is fsynced and then renamed over
 * `path`, so readers see either the previous file or the complete new one, never a prefix.
 *
 * @param path destination file
 * @param bytes complete contents
 * @throws {Deno.errors.NotFound} when the parent folder does not exist, and other I/O errors
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const temporary = `${path}.tmp-${Deno.pid}`;
  try {
    {
      // Closed before the rename, which some platforms refuse on an open file.
      using file = await Deno.open(temporary, { write: true, create: true, truncate: true });
      for (let written = 0; written < bytes.length;) {
        written += await file.write(bytes.subarray(written));
      }
      await file.sync();
    }
    await Deno.rename(temporary, path);
  } catch (error) {
    // Best effort: the temporary may never have been created, and the write error is the one
    // worth reporting.
    await Deno.remove(temporary).catch(() => {});
    throw error;
  }
}

/**
 * Encodes float32 tensors and writes them atomically (see {@link writeFileAtomic}).
 *
 * @param path destination file
 * @param tensors tensors by name
 * @param metadata optional string metadata, stored as `__metadata__`
 * @throws {SafetensorsError} when a tensor is invalid (see {@link encodeSafetensors}) or the
 *   file cannot be written
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  const bytes = encodeSafetensors(tensors, metadata, path);
  try {
    await writeFileAtomic(path, bytes);
  } catch (error) {
    throw new SafetensorsError(
      path,
      `Cannot write checkpoint "${path}": ${(error as Error).message}`,
      { cause: error },
    );
  }
}

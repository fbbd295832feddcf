/**
 * Finds and opens a CBLAS library (OpenBLAS first) through `Deno.dlopen` and exposes `sgemm`.
 *
 * @module
 */

/** Environment variable that names the BLAS shared library to open instead of searching. */
export const BLAS_LIB_ENV = "SCALAR_BLAS_LIB";

// CBLAS enum values from cblas.h.
const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32", // order
      "i32", // transA
      "i32", // transB
      "i32", // m
      "i32", // n
      "i32", // k
      "f32", // alpha
      "buffer", // a
      "i32", // lda
      "buffer", // b
      "i32", // ldb
      "f32", // beta
      "buffer", // c
      "i32", // ldc
    ],
    result: "void",
  },
  // Only OpenBLAS has these; they let a benchmark say which build and thread count it measured.
  openblas_get_config: { parameters: [], result: "pointer", optional: true },
  openblas_get_num_threads: { parameters: [], result: "i32", optional: true },
} as const;

const NO_FFI_PERMISSION = "no FFI permission (run with --allow-ffi)";

// Debian's BLAS interface (`blasint`) is 32-bit; ILP64 builds use different sonames (libopenblas64).
const MAX_BLAS_INT = 2 ** 31 - 1;

/** One single-precision matrix product `C = alpha * op(A) · op(B) + beta * C`, all row-major. */
export interface SgemmParams {
  /** Use `Aᵀ`: then A is stored as k × m instead of m × k. */
  transA: boolean;
  /** Use `Bᵀ`: then B is stored as n × k instead of k × n. */
  transB: boolean;
  /** Rows of op(A) and of C. */
  m: number;
  /** Columns of op(B) and of C. */
  n: number;
  /** Columns of op(A), rows of op(B). */
  k: number;
  /** Scale of the product; defaults to 1. */
  alpha?: number;
  /** Storage of A. */
  a: Float32Array;
  /** Index of A's first element in `a`; defaults to 0. */
  aOffset?: number;
  /** Row stride of A as stored; defaults to its column count (dense). */
  lda?: number;
  /** Storage of B. */
  b: Float32Array;
  /** Index of B's first element in `b`; defaults to 0. */
  bOffset?: number;
  /** Row stride of B as stored; defaults to its column count (dense). */
  ldb?: number;
  /** Scale of C's previous contents; defaults to 0 (C is overwritten). */
  beta?: number;
  /** Storage of C, written in place. */
  c: Float32Array;
  /** Index of C's first element in `c`; defaults to 0. */
  cOffset?: number;
  /** Row stride of C; defaults to `n` (dense). */
  ldc?: number;
}

/** An opened BLAS library. */
export interface BlasLibrary {
  /** The path or soname that was opened. */
  readonly path: string;
  /** OpenBLAS's build description (version, kernel, thread model), or null for another BLAS. */
  readonly config: string | null;
  /** Threads OpenBLAS uses, or null for another BLAS. */
  readonly threads: number | null;
  /**
   * Computes one single-precision matrix product in row-major layout.
   *
   * @param params the operands, shapes and scales; bounds are checked before the native call
   *   because an out-of-range access in native code would corrupt memory instead of throwing
   */
  sgemm(params: SgemmParams): void;
  /** Releases the library; later `sgemm` calls are invalid. */
  close(): void;
}

/** Why no BLAS library could be opened, worded for a person to act on. */
export interface BlasError {
  /** The reason, e.g. which paths were tried and what to install. */
  error: string;
}

/**
 * Lists the libraries `openBlas` tries when no path is given, best first.
 *
 * @returns absolute paths of the distribution packages, then sonames left to the dynamic loader
 */
export function blasCandidates(): string[] {
  if (Deno.build.os === "darwin") {
    return [
      "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
      "/usr/local/opt/openblas/lib/libopenblas.dylib",
      "libopenblas.dylib",
    ];
  }
  const triplet = `${Deno.build.arch}-linux-gnu`;
  return [
    ...["openblas-pthread", "openblas-openmp", "openblas-serial"].map(
      (variant) => `/usr/lib/${triplet}/${variant}/libopenblas.so.0`,
    ),
    "libopenblas.so.0",
    "libopenblas.so",
    // Whatever the alternatives system points at: OpenBLAS, BLIS or reference BLAS (with CBLAS).
    `/usr/lib/${triplet}/libcblas.so.3`,
    "libcblas.so.3",
    `/usr/lib/${triplet}/libblas.so.3`,
    "libblas.so.3",
  ];
}

/**
 * Opens a BLAS library that exports `cblas_sgemm`. Never throws: a failure comes back as a reason.
 *
 * @param path library to open; without it `$SCALAR_BLAS_LIB`, and without that the first of
 *   `blasCandidates()` that opens
 * @returns the library, or `{error}` saying what was tried and how to fix it
 */
export function openBlas(path?: string): BlasLibrary | BlasError {
  if (path !== undefined) {
    const opened = tryOpen(path);
    return typeof opened === "string"
      ? { error: `Cannot open BLAS library "${path}": ${opened}` }
      : opened;
  }
  const fromEnv = envPath();
  if (fromEnv !== undefined) {
    const opened = tryOpen(fromEnv);
    return typeof opened === "string"
      ? {
        error: `Cannot open BLAS library "${fromEnv}" named by ${BLAS_LIB_ENV}: ${opened}; ` +
          `fix or unset ${BLAS_LIB_ENV}`,
      }
      : opened;
  }
  const tried: string[] = [];
  for (const candidate of blasCandidates()) {
    const opened = tryOpen(candidate);
    if (typeof opened !== "string") return opened;
    // Without FFI permission every candidate fails the same way; the path list would hide that.
    if (opened === NO_FFI_PERMISSION) return { error: `Cannot open OpenBLAS: ${opened}` };
    tried.push(`"${candidate}"`);
  }
  return {
    error: `Cannot open OpenBLAS: not found (tried ${tried.join(", ")}); ` +
      `install libopenblas0-pthread or set ${BLAS_LIB_ENV}`,
  };
}

function envPath(): string | undefined {
  try {
    const value = Deno.env.get(BLAS_LIB_ENV);
    return value === "" ? undefined : value;
  } catch {
    // No env permission: nobody could have meant the override for this process.
    return undefined;
  }
}

function tryOpen(path: string): BlasLibrary | string {
  let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  try {
    lib = Deno.dlopen(path, SYMBOLS);
  } catch (e) {
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      return NO_FFI_PERMISSION;
    }
    // Deno repeats this prefix; the loader's own message after it names the problem.
    return (e instanceof Error ? e.message : String(e)).replace(/^(Could not open library: )+/, "");
  }
  const { cblas_sgemm, openblas_get_config, openblas_get_num_threads } = lib.symbols;
  const configPtr = openblas_get_config?.() ?? null;
  const config = configPtr === null ? null : new Deno.UnsafePointerView(configPtr).getCString();
  return {
    path,
    config,
    threads: openblas_get_num_threads?.() ?? null,
    sgemm(p: SgemmParams): void {
      const { transA, transB, m, n, k } = p;
      const lda = p.lda ?? (transA ? m : k);
      const ldb = p.ldb ?? (transB ? k : n);
      const ldc = p.ldc ?? n;
      for (const [name, v] of Object.entries({ m, n, k, lda, ldb, ldc })) {
        if (!Number.isInteger(v) || v < 0 || v > MAX_BLAS_INT) {
          throw new RangeError(`Cannot run sgemm with ${name} ${v}: not a 32-bit size`);
        }
      }
      if (m === 0 || n === 0) return;
      const c = checkedView("C", p.c, p.cOffset ?? 0, m, n, ldc);
      if (k === 0) {
        // BLAS would not touch C's rows beyond scaling by beta; do the same without a native call.
        scaleRows(c, m, n, ldc, p.beta ?? 0);
        return;
      }
      const a = checkedView("A", p.a, p.aOffset ?? 0, transA ? k : m, transA ? m : k, lda);
      const b = checkedView("B", p.b, p.bOffset ?? 0, transB ? n : k, transB ? k : n, ldb);
      cblas_sgemm(
        CBLAS_ROW_MAJOR,
        transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
        transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
        m,
        n,
        k,
        p.alpha ?? 1,
        a,
        lda,
        b,
        ldb,
        p.beta ?? 0,
        c,
        ldc,
      );
    },
    close(): void {
      lib.close();
    },
  };
}

// Returns the part of `data` a rows × cols matrix with row stride `ld` at `offset` occupies.
function checkedView(
  name: string,
  data: Float32Array,
  offset: number,
  rows: number,
  cols: number,
  ld: number,
): Float32Array {
  if (ld < Math.max(1, cols)) {
    throw new RangeError(
      `Cannot run sgemm with ld${name.toLowerCase()} ${ld}: below ${cols} columns`,
    );
  }
  const extent = (rows - 1) * ld + cols;
  if (!Number.isInteger(offset) || offset < 0 || offset + extent > data.length) {
    throw new RangeError(
      `Cannot run sgemm on ${name} at offset ${offset}: ${rows}×${cols} (ld ${ld}) needs ` +
        `${offset + extent} elements, the array has ${data.length}`,
    );
  }
  return data.subarray(offset, offset + extent);
}

function scaleRows(c: Float32Array, rows: number, cols: number, ld: number, beta: number): void {
  for (let i = 0; i < rows; i++) {
    const row = c.subarray(i * ld, i * ld + cols);
    if (beta === 0) row.fill(0);
    else for (let j = 0; j < cols; j++) row[j] *= beta;
  }
}

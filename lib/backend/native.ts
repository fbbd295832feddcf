/**
 * Native kernels from C sources that sit beside the code using them: a source is compiled with
 * the system C compiler at first use into the cache (`lib/util/cache_dir.ts`, under `native/`),
 * then opened with `Deno.dlopen`. A compiled library is named by the sha256 of its source, the
 * compiler command and the host CPU, so an edited source, other flags or another machine sharing
 * the cache (a cluster's home directory) each get their own build, and an unchanged one is
 * compiled once. Builds are written to a temporary file and renamed into place, so a process
 * never opens a library another one is still writing.
 *
 * Libraries are built with `-O3 -march=native -fopenmp`: OpenMP threads for the loops that pay,
 * vector instructions of this CPU; and as `nodelete`, so that they stay mapped until the process
 * is gone. OpenMP's idle threads are told to sleep (`OMP_WAIT_POLICY=passive`
 * unless set): they share the cores with OpenBLAS's threads, and spinning ones would slow its
 * products down.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { defaultCacheDir } from "../util/cache_dir.ts";

/** `exp_vec.c`: a vectorisable e^x, the prelude of the kernels with a GELU (see its comment). */
export const EXP_VEC_SOURCE: URL = new URL("./exp_vec.c", import.meta.url);

/**
 * `gelu_tanh.c`: GPT-2's tanh GELU and its slope at one value, the prelude (after
 * {@link EXP_VEC_SOURCE}) of every kernel with a GELU.
 */
export const GELU_TANH_SOURCE: URL = new URL("./gelu_tanh.c", import.meta.url);

/** The compiler flags every native library is built with (before `-o`). */
export const NATIVE_FLAGS: readonly string[] = [
  "-O3",
  "-march=native",
  "-fopenmp",
  "-shared",
  "-fPIC",
  // Never unmapped, not even when Deno closes its libraries at exit: libgomp's parked worker
  // threads would then run unmapped code (a SIGSEGV after the program's last line, in about one
  // exit in five here with two threads).
  "-Wl,-z,nodelete",
];

/** Where and how to build; every field has a default. */
export interface NativeOptions {
  /** The C compiler. @default $CC, else "cc" */
  compiler?: string;
  /** The cache directory. @default {defaultCacheDir()} */
  cacheDir?: string;
  /**
   * C sources compiled ahead of this one, in the same unit: helpers several libraries share
   * (`static inline` functions, e.g. `lib/backend/exp_vec.c`), since the compiler reads the source
   * from stdin and cannot resolve an `#include` beside it. Part of the build's name. @default []
   */
  prelude?: readonly (string | URL)[];
}

/**
 * An opened native library. It stays loaded for the life of the process (there is no `close`,
 * and the library is linked `nodelete` against the runtime's own close at exit): unloading a
 * library whose OpenMP threads are parked in libgomp would unmap code they run.
 */
export interface NativeLibrary<S extends Deno.ForeignLibraryInterface> {
  /** The functions, as `Deno.dlopen` gives them. */
  readonly symbols: Deno.DynamicLibrary<S>["symbols"];
  /** The compiled library's path in the cache. */
  readonly path: string;
}

/** Thrown when a source cannot be compiled or opened; says what to do. */
export class NativeError extends Error {
  override name = "NativeError";
}

// One build per library path and process: concurrent first uses wait for the same compiler run.
const builds = new Map<string, Promise<void>>();
// The libraries opened so far, by path and symbol set: each is opened once per process.
const opened = new Map<string, Deno.DynamicLibrary<Deno.ForeignLibraryInterface>>();

/**
 * Compiles a C source (once per source, compiler command and CPU; later calls find it in the
 * cache) and opens it.
 *
 * @param source The C file, e.g. `new URL("./kernel.c", import.meta.url)`.
 * @param symbols The functions to open, as `Deno.dlopen` takes them.
 * @param options Compiler and cache directory.
 * @returns The opened library.
 * @throws {NativeError} If the source cannot be read, the compiler is missing (naming the
 *   command and the package to install) or fails (with its messages), or a symbol is missing.
 *
 * @example Compile and call a C function
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { loadNative } from "./native.ts";
 * const dir = await Deno.makeTempDir();
 * const source = `${dir}/add.c`;
 * await Deno.writeTextFile(source, "int add(int a, int b) { return a + b; }\n");
 * const lib = await loadNative(source, { add: { parameters: ["i32", "i32"], result: "i32" } }, {
 *   cacheDir: dir,
 * });
 * equal(lib.symbols.add(2, 3), 5);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function loadNative<const S extends Deno.ForeignLibraryInterface>(
  source: string | URL,
  symbols: S,
  options: NativeOptions = {},
): Promise<NativeLibrary<S>> {
  const compiler = options.compiler ?? (Deno.env.get("CC") || "cc");
  const name = String(source).replace(/^.*\//, "").replace(/\.c$/, "");
  // Each part under a `#line` of its own file, so that compiler messages name it.
  let code = "";
  for (const part of [...options.prelude ?? [], source]) {
    try {
      code += `#line 1 "${filePath(part)}"\n${await Deno.readTextFile(part)}\n`;
    } catch (e) {
      throw new NativeError(`Cannot read native source "${part}": ${messageOf(e)}`);
    }
  }
  const key = createHash("sha256")
    .update([code, compiler, ...NATIVE_FLAGS, await cpuSignature()].join("\0"))
    .digest("hex")
    .slice(0, 16);
  const path = join(options.cacheDir ?? defaultCacheDir(), "native", `${name}-${key}.so`);
  let build = builds.get(path);
  if (build === undefined) {
    build = exists(path).then((found) => found ? undefined : compile(code, source, compiler, path));
    builds.set(path, build);
    // A failed build is retried by the next call (the compiler may have been installed since).
    build.catch(() => builds.delete(path));
  }
  await build;
  // libgomp reads this when it is loaded, with the library.
  if (Deno.env.get("OMP_WAIT_POLICY") === undefined) Deno.env.set("OMP_WAIT_POLICY", "passive");
  const handle = `${path}\0${JSON.stringify(symbols)}`;
  try {
    let lib = opened.get(handle);
    if (lib === undefined) opened.set(handle, lib = Deno.dlopen(path, symbols));
    return { symbols: lib.symbols as Deno.DynamicLibrary<S>["symbols"], path };
  } catch (e) {
    throw new NativeError(
      `Cannot open native library "${path}" (compiled from "${source}"): ${messageOf(e)}; ` +
        `delete it to rebuild`,
    );
  }
}

// Compiles into a temporary file beside the target, then renames it into place (atomic on one
// file system): a concurrent process sees either no library or a whole one. The compiler reads the
// text that was hashed, from stdin, not the files, which may have changed since; their `#line`s
// keep the files' names in its messages.
async function compile(
  code: string,
  source: string | URL,
  compiler: string,
  path: string,
): Promise<void> {
  const sourcePath = filePath(source);
  const dir = path.slice(0, path.lastIndexOf("/"));
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    throw new NativeError(
      `Cannot create the native cache "${dir}": ${messageOf(e)} (set SCALAR_CACHE_DIR to a ` +
        `writable directory)`,
    );
  }
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID()}.tmp`;
  const args = [...NATIVE_FLAGS, "-o", tmp, "-x", "c", "-", "-lm"];
  const command = `${compiler} ${args.join(" ")} < ${sourcePath}`;
  let output: Deno.CommandOutput;
  try {
    const child = new Deno.Command(compiler, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(code));
    await writer.close();
    output = await child.output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new NativeError(
        `Cannot compile "${sourcePath}": the C compiler "${compiler}" is not installed (ran ` +
          `\`${command}\`); install one (apt-get install gcc) or name it in $CC`,
      );
    }
    throw new NativeError(`Cannot run \`${command}\`: ${messageOf(e)}`);
  }
  if (!output.success) {
    await Deno.remove(tmp).catch(() => {});
    const messages = new TextDecoder().decode(output.stderr).trim();
    throw new NativeError(
      `Cannot compile "${sourcePath}": \`${command}\` exited with ${output.code}:\n${messages}`,
    );
  }
  await Deno.rename(tmp, path);
}

// What -march=native depends on: the CPU model and its instruction-set flags (Linux), else the
// architecture alone.
async function cpuSignature(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    const field = (name: string) => info.match(new RegExp(`^${name}\\s*:(.*)$`, "m"))?.[1] ?? "";
    return [Deno.build.arch, field("model name"), field("flags")].join("|");
  } catch {
    return Deno.build.arch;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new NativeError(`Cannot read the native cache "${path}": ${messageOf(e)}`);
  }
}

function filePath(source: string | URL): string {
  return source instanceof URL ? decodeURIComponent(source.pathname) : source;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

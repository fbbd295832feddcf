import { deepEqual, equal, match, notEqual, rejects } from "node:assert/strict";
import { loadNative, NativeError } from "./native.ts";

const SYMBOLS = { twice: { parameters: ["i32"], result: "i32" } } as const;

// A temporary folder with a C source in it and a cache beside it.
async function withSource(
  code: string,
  body: (source: string, cacheDir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/twice.c`, code);
    await body(`${dir}/twice.c`, `${dir}/cache`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const cached = async (cacheDir: string) =>
  (await Array.fromAsync(Deno.readDir(`${cacheDir}/native`))).map((e) => e.name).sort();

Deno.test("loadNative compiles once per source into the cache and reuses the build", async () => {
  await withSource("int twice(int x) { return 2 * x; }\n", async (source, cacheDir) => {
    const [a, b] = await Promise.all([
      loadNative(source, SYMBOLS, { cacheDir }),
      loadNative(source, SYMBOLS, { cacheDir }),
    ]);
    equal(a.symbols.twice(21), 42);
    equal(a.path, b.path);
    // Opened once per process.
    equal(a.symbols, b.symbols);
    match(a.path, /\/native\/twice-[0-9a-f]{16}\.so$/);
    const built = (await Deno.stat(a.path)).mtime;
    const again = await loadNative(source, SYMBOLS, { cacheDir });
    deepEqual((await Deno.stat(again.path)).mtime, built);
    // No temporary file is left behind.
    deepEqual(await cached(cacheDir), [a.path.replace(/^.*\//, "")]);
    // An edited source is another library.
    await Deno.writeTextFile(source, "int twice(int x) { return x + x + 1; }\n");
    const edited = await loadNative(source, SYMBOLS, { cacheDir });
    notEqual(edited.path, a.path);
    equal(edited.symbols.twice(21), 43);
  });
});

Deno.test("loadNative compiles a prelude ahead of the source, and names a build by both", async () => {
  await withSource("int twice(int x) { return times(x, 2); }\n", async (source, cacheDir) => {
    const prelude = source.replace(/twice\.c$/, "times.c");
    await Deno.writeTextFile(prelude, "static inline int times(int x, int y) { return x * y; }\n");
    const a = await loadNative(source, SYMBOLS, { cacheDir, prelude: [prelude] });
    equal(a.symbols.twice(21), 42);
    // An edited prelude is another library; the compiler's messages name the prelude's file.
    await Deno.writeTextFile(
      prelude,
      "static inline int times(int x, int y) { return x * y + 1; }\n",
    );
    const b = await loadNative(source, SYMBOLS, { cacheDir, prelude: [prelude] });
    notEqual(b.path, a.path);
    equal(b.symbols.twice(21), 43);
    await Deno.writeTextFile(prelude, "static inline int times(int x, int y) { return x * y }\n");
    await rejects(loadNative(source, SYMBOLS, { cacheDir, prelude: [prelude] }), /times\.c:1:/);
  });
});

Deno.test("loadNative names the compiler command and the package when cc is missing", async () => {
  await withSource("int twice(int x) { return 2 * x; }\n", async (source, cacheDir) => {
    await rejects(
      loadNative(source, SYMBOLS, { cacheDir, compiler: "no-such-cc-1234" }),
      (e: Error) => {
        equal(e.name, "NativeError");
        match(e.message, /the C compiler "no-such-cc-1234" is not installed/);
        match(
          e.message,
          /`no-such-cc-1234 -O3 -march=native -fopenmp -shared -fPIC -Wl,-z,nodelete -o /,
        );
        match(e.message, /apt-get install gcc/);
        return true;
      },
    );
  });
});

Deno.test("loadNative reports the compiler's messages, and a missing symbol", async () => {
  await withSource("int twice(int x) { return 2 * x }\n", async (source, cacheDir) => {
    await rejects(loadNative(source, SYMBOLS, { cacheDir }), (e: Error) => {
      equal(e instanceof NativeError, true);
      match(e.message, /^Cannot compile ".*twice\.c": `cc .*` exited with 1:\n/);
      match(e.message, /twice\.c:1:32: error: expected .;. before/);
      return true;
    });
    // Nothing half-written is left in the cache.
    deepEqual(await cached(cacheDir), []);
  });
  await withSource("int thrice(int x) { return 3 * x; }\n", async (source, cacheDir) => {
    await rejects(
      loadNative(source, SYMBOLS, { cacheDir }),
      /Cannot open native library ".*twice-[0-9a-f]+\.so" \(compiled from ".*twice\.c"\): .*twice/,
    );
  });
  await rejects(loadNative("/no/such/kernel.c", SYMBOLS), /Cannot read native source/);
});

Deno.test("loadNative links libraries nodelete: Deno's close at exit leaves OpenMP's code mapped", async () => {
  // Without it, libgomp's parked threads ran unmapped code after the program's last line: the
  // engine's two-thread digest (cpu_engine_test.ts) exited with SIGSEGV in about one run in five.
  await withSource("int twice(int x) { return 2 * x; }\n", async (source, cacheDir) => {
    const { path } = await loadNative(source, SYMBOLS, { cacheDir });
    const { stdout } = await new Deno.Command("readelf", { args: ["-d", path] }).output();
    match(new TextDecoder().decode(stdout), /FLAGS_1\)\s+Flags: NODELETE/);
  });
});

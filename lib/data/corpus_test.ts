import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { join } from "node:path";
import {
  CORPORA,
  type CorpusEntry,
  CorpusError,
  resolveCorpus,
  type ResolveCorpusOptions,
  sha256Hex,
  SHIPPED_DATA_DIR,
} from "./corpus.ts";

const SHAKESPEARE = CORPORA.tinyshakespeare!;
const TEXT = "To be, or not to be, that is the question\n";
const TEXT_BYTES = new TextEncoder().encode(TEXT);

interface Server {
  url: string;
  hits: () => number;
}

// Serves `body` (or a status code) on 127.0.0.1 for the duration of `fn`, counting requests so
// tests can prove a cached copy was used instead of the network.
async function withServer(
  response: () => Response,
  fn: (server: Server) => Promise<void>,
): Promise<void> {
  let hits = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    hits++;
    return response();
  });
  try {
    await fn({ url: `http://127.0.0.1:${server.addr.port}/input.txt`, hits: () => hits });
  } finally {
    await server.shutdown();
  }
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "scalar_corpus_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function smallCorpus(url: string): Promise<Record<string, CorpusEntry>> {
  return {
    small: {
      name: "small",
      fileName: "small.txt",
      url,
      sha256: await sha256Hex(TEXT_BYTES),
      bytes: TEXT_BYTES.length,
    },
  };
}

function isCorpusError(pattern: RegExp): (error: unknown) => boolean {
  return (error) => {
    ok(error instanceof CorpusError, `expected a CorpusError, got ${error}`);
    match(error.message, pattern);
    return true;
  };
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

Deno.test("resolveCorpus() downloads, verifies and caches, then reads the cache", async () => {
  await withTempDir(async (cacheDir) => {
    await withServer(() => new Response(TEXT), async (server) => {
      const lines: string[] = [];
      const options: ResolveCorpusOptions = {
        dataDir: null,
        cacheDir,
        corpora: await smallCorpus(server.url),
        log: (line) => lines.push(line),
      };
      const first = await resolveCorpus("small", options);
      const cachePath = join(cacheDir, "small.txt");
      deepEqual(first, {
        name: "small",
        text: TEXT,
        path: cachePath,
        sha256: await sha256Hex(TEXT_BYTES),
        source: "download",
      });
      equal(lines.length, 1);
      match(lines[0]!, new RegExp(`^Downloading corpus "small" .*${escape(server.url)}`));
      equal(await Deno.readTextFile(cachePath), TEXT);
      deepEqual([...Deno.readDirSync(cacheDir)].map((e) => e.name), ["small.txt"]);

      const second = await resolveCorpus("small", options);
      equal(server.hits(), 1);
      deepEqual(second, { ...first, source: "cache" });
      equal(lines.length, 1);
    });
  });
});

Deno.test("resolveCorpus() replaces a cached copy with the wrong sha256", async () => {
  await withTempDir(async (cacheDir) => {
    await Deno.writeTextFile(join(cacheDir, "small.txt"), "stale");
    await withServer(() => new Response(TEXT), async (server) => {
      const lines: string[] = [];
      const corpus = await resolveCorpus("small", {
        dataDir: null,
        cacheDir,
        corpora: await smallCorpus(server.url),
        log: (line) => lines.push(line),
      });
      equal(corpus.source, "download");
      equal(await Deno.readTextFile(join(cacheDir, "small.txt")), TEXT);
      match(lines[0]!, /^Cached corpus ".*small\.txt" has sha256 [0-9a-f]{64}, expected/);
    });
  });
});

Deno.test("resolveCorpus() reports a download with the wrong sha256 and caches nothing", async () => {
  await withTempDir(async (cacheDir) => {
    // Hashed before the download starts: an await between creating the rejecting promise and
    // handing it to rejects() would leave its rejection unhandled when the download wins.
    const sha256 = await sha256Hex(TEXT_BYTES);
    await withServer(() => new Response(TEXT), async (server) => {
      await rejects(
        resolveCorpus("tinyshakespeare", {
          dataDir: null,
          shippedDir: null,
          cacheDir,
          url: server.url,
          log: () => {},
        }),
        isCorpusError(
          new RegExp(
            `^Cannot get corpus "tinyshakespeare": download from "${escape(server.url)}" has ` +
              `${TEXT_BYTES.length} bytes with sha256 ${sha256}, expected ` +
              `1115394 bytes with sha256 ${SHAKESPEARE.sha256}\\. Put the file at ` +
              `\\$SCALAR_DATA_DIR/tinyshakespeare\\.txt \\(1115394 bytes with sha256 ` +
              `${SHAKESPEARE.sha256}\\) or in "${escape(cacheDir)}"$`,
          ),
        ),
      );
      deepEqual([...Deno.readDirSync(cacheDir)], []);
    });
  });
});

Deno.test("resolveCorpus() reports an HTTP error status", async () => {
  await withTempDir(async (cacheDir) => {
    await withServer(() => new Response("gone", { status: 404 }), async (server) => {
      await rejects(
        resolveCorpus("tinyshakespeare", {
          dataDir: null,
          shippedDir: null,
          cacheDir,
          url: server.url,
          log: () => {},
        }),
        isCorpusError(
          new RegExp(
            `^Cannot get corpus "tinyshakespeare": download from "${escape(server.url)}" failed ` +
              `\\(HTTP 404 Not Found\\)\\. Put the file at \\$SCALAR_DATA_DIR/tinyshakespeare\\.txt`,
          ),
        ),
      );
    });
  });
});

Deno.test("resolveCorpus() reports a network error", async () => {
  await withTempDir(async (cacheDir) => {
    // Nothing listens on a port whose server has already shut down.
    let url = "";
    await withServer(() => new Response(TEXT), (server) => {
      url = server.url;
      return Promise.resolve();
    });
    await rejects(
      resolveCorpus("tinyshakespeare", {
        dataDir: null,
        shippedDir: null,
        cacheDir,
        url,
        log: () => {},
      }),
      isCorpusError(
        new RegExp(
          `^Cannot get corpus "tinyshakespeare": download from "${escape(url)}" failed \\(`,
        ),
      ),
    );
  });
});

Deno.test("resolveCorpus() prefers the data directory over cache and network", async () => {
  await withTempDir(async (dir) => {
    const dataDir = join(dir, "data");
    const cacheDir = join(dir, "cache");
    await Deno.mkdir(dataDir);
    await Deno.mkdir(cacheDir);
    await Deno.writeFile(join(dataDir, "small.txt"), TEXT_BYTES);
    await Deno.writeTextFile(join(cacheDir, "small.txt"), "stale");
    await withServer(() => new Response(TEXT), async (server) => {
      const corpus = await resolveCorpus("small", {
        dataDir,
        cacheDir,
        corpora: await smallCorpus(server.url),
        log: () => {},
      });
      deepEqual(
        { path: corpus.path, source: corpus.source, text: corpus.text },
        { path: join(dataDir, "small.txt"), source: "data-dir", text: TEXT },
      );
      equal(server.hits(), 0);
    });
  });
});

Deno.test("resolveCorpus() rejects a wrong file in the data directory", async () => {
  await withTempDir(async (dataDir) => {
    const path = join(dataDir, "tinyshakespeare.txt");
    await Deno.writeFile(path, TEXT_BYTES);
    // Hashed before the call: awaiting between creating the rejecting promise and handing it to
    // rejects() would leave its rejection unhandled for a moment, which Deno treats as fatal.
    const actual = await sha256Hex(TEXT_BYTES);
    await rejects(
      resolveCorpus("tinyshakespeare", { dataDir, cacheDir: dataDir, url: "http://127.0.0.1:1/" }),
      isCorpusError(
        new RegExp(
          `^Cannot use corpus file "${escape(path)}": ${TEXT_BYTES.length} bytes with sha256 ` +
            `${actual}, expected 1115394 bytes with sha256 ` +
            `${SHAKESPEARE.sha256} for corpus "tinyshakespeare"`,
        ),
      ),
    );
  });
});

Deno.test("resolveCorpus() lists the known corpora for an unknown name", async () => {
  await rejects(
    resolveCorpus("shakespeare"),
    isCorpusError(/^Cannot resolve corpus "shakespeare": unknown name \(known: "tinyshakespeare";/),
  );
  await rejects(resolveCorpus("toString"), isCorpusError(/unknown name/));
});

Deno.test("resolveCorpus() reads a plain path and reports a missing one", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "mine.txt");
    await Deno.writeTextFile(path, "héllo\n");
    const corpus = await resolveCorpus({ path });
    deepEqual(corpus, {
      name: "mine.txt",
      text: "héllo\n",
      path,
      sha256: await sha256Hex(new TextEncoder().encode("héllo\n")),
      source: "path",
    });
    const missing = join(dir, "absent.txt");
    await rejects(
      resolveCorpus({ path: missing }),
      isCorpusError(new RegExp(`^Cannot read corpus file "${escape(missing)}": no such file$`)),
    );
    const binary = join(dir, "binary.bin");
    await Deno.writeFile(binary, new Uint8Array([0xff, 0xfe, 0x00]));
    await rejects(resolveCorpus({ path: binary }), isCorpusError(/not valid UTF-8$/));
  });
});

Deno.test("resolveCorpus() reads the shipped Tiny Shakespeare without cache or network", async () => {
  await withTempDir(async (cacheDir) => {
    const corpus = await resolveCorpus("tinyshakespeare", {
      dataDir: null,
      cacheDir,
      url: "http://127.0.0.1:1/",
    });
    equal(corpus.source, "shipped");
    equal(corpus.path, join(SHIPPED_DATA_DIR, "tinyshakespeare.txt"));
    equal(corpus.text.length, 1_115_394);
    equal(corpus.sha256, SHAKESPEARE.sha256);
    equal(await sha256Hex(await Deno.readFile(corpus.path)), SHAKESPEARE.sha256);
    deepEqual([...Deno.readDirSync(cacheDir)], []);
  });
});

Deno.test("resolveCorpus() prefers the data directory to the shipped copy, and rejects a damaged shipped copy", async () => {
  await withTempDir(async (dir) => {
    const shippedDir = join(dir, "shipped");
    await Deno.mkdir(shippedDir);
    await Deno.writeFile(join(shippedDir, "small.txt"), TEXT_BYTES);
    const corpora = {
      small: { ...(await smallCorpus("http://127.0.0.1:1/")).small, shipped: true },
    };
    const shipped = await resolveCorpus("small", { dataDir: null, shippedDir, corpora });
    equal(shipped.source, "shipped");
    const fromDataDir = await resolveCorpus("small", { dataDir: shippedDir, shippedDir, corpora });
    equal(fromDataDir.source, "data-dir");

    const damaged = join(shippedDir, "small.txt");
    await Deno.writeTextFile(damaged, "to be or not");
    const actual = await sha256Hex(new TextEncoder().encode("to be or not"));
    await rejects(
      resolveCorpus("small", { dataDir: null, shippedDir, corpora }),
      isCorpusError(
        new RegExp(
          `^Cannot use corpus file "${escape(damaged)}": 12 bytes with sha256 ${actual}, ` +
            `expected ${TEXT_BYTES.length} bytes with sha256 ${corpora.small.sha256} for corpus ` +
            `"small" \\(restore it with: git checkout -- data/small\\.txt\\)$`,
        ),
      ),
    );
  });
});

import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import {
  ActivationCacheError,
  cacheKey,
  ensureActivationCache,
  type EnsureActivationCacheOptions,
  modelFingerprint,
  openActivationCache,
} from "./activation_cache.ts";
import { GPT } from "../model/gpt.ts";
import { createRng } from "../util/rng.ts";
import { TINY } from "../model/testdata/tiny_gpt.ts";

const SEQ = 6, WINDOWS = 7;
// Three tokens past the last whole window: they are not cached.
const TOKENS = (() => {
  const rng = createRng(3);
  return Int32Array.from({ length: WINDOWS * SEQ + 3 }, () => rng.int(TINY.vocabSize));
})();
// Out of forward order and with a repeat, to check both are handled; includes the MLP's wider
// hook and the batch-1 position embedding.
const HOOKS = [
  "blocks.1.hook_resid_post",
  "blocks.0.mlp.hook_post",
  "hook_pos_embed",
  "blocks.0.hook_mlp_in",
  "blocks.0.hook_mlp_in",
];
const FORWARD = [
  "hook_pos_embed",
  "blocks.0.hook_mlp_in",
  "blocks.0.mlp.hook_post",
  "blocks.1.hook_resid_post",
];
const CORPUS = "c".repeat(64);

/** A model wrapper that counts forward passes and remembers where each stopped. */
function spy(model: GPT) {
  const calls: (string | undefined)[] = [];
  return {
    calls,
    model: {
      config: model.config,
      run: (o: Parameters<GPT["run"]>[0]) => {
        calls.push(o.stopAt);
        return model.run(o);
      },
    },
  };
}

async function setup(extra: Partial<EnsureActivationCacheOptions> = {}) {
  const root = await Deno.makeTempDir();
  const model = GPT.init(TINY, 1);
  const modelSha256 = modelFingerprint(await model.parameterValues());
  const s = spy(model);
  const lines: string[] = [];
  const key = { modelSha256, corpusSha256: CORPUS, split: "train" as const };
  const options: EnsureActivationCacheOptions = {
    model: s.model,
    tokens: TOKENS,
    seqLen: SEQ,
    hooks: HOOKS,
    root,
    key,
    log: (l) => lines.push(l),
    batchSequences: 3,
    ...extra,
  };
  const id = cacheKey({ ...key, seqLen: SEQ, hooks: HOOKS });
  const dir = join(root, id);
  const done = async () => {
    model.dispose();
    await Deno.remove(root, { recursive: true });
  };
  return { root, id, key, dir, model, calls: s.calls, lines, options, done };
}

/** The hooks' activations from one direct run over all windows, as `[tokens, width]` rows. */
async function direct(model: GPT): Promise<Map<string, Float32Array>> {
  const input = tf.tensor2d(TOKENS.subarray(0, WINDOWS * SEQ), [WINDOWS, SEQ], "int32");
  const { output, cache } = model.run({ tokens: input, cache: FORWARD });
  const out = new Map<string, Float32Array>();
  for (const h of FORWARD) {
    const t = cache.get(h)!;
    const full = tf.broadcastTo(t, [WINDOWS, SEQ, t.shape[2]!]);
    out.set(h, (await full.data()) as Float32Array);
    full.dispose();
  }
  tf.dispose([input, output, ...cache.values()]);
  return out;
}

Deno.test("ensureActivationCache() stores exactly the activations of a direct run", async () => {
  const t = await setup();
  const cache = await ensureActivationCache(t.options);
  assert.deepEqual(cache.hooks, FORWARD);
  assert.equal(cache.tokens, WINDOWS * SEQ);
  assert.equal(cache.inMemory, true);
  assert.equal(cache.width("blocks.0.mlp.hook_post"), 16);
  assert.equal(cache.width("hook_pos_embed"), 8);
  // Batches of 3, 3 and 1 windows, each stopping at the last needed hook.
  assert.deepEqual(t.calls, Array(3).fill("blocks.1.hook_resid_post"));
  assert.equal(
    t.lines[0],
    `activation cache: 42 tokens × 40 floats (4 hooks: 8 + 8 + 16 + 8) = 6.72 kB on disk ` +
      `(${t.dir}); in memory`,
  );
  const expected = await direct(t.model);
  for (const h of FORWARD) {
    const stored = await Deno.readFile(join(t.dir, `${h}.f32`));
    const e = expected.get(h)!;
    assert.deepEqual(stored, new Uint8Array(e.buffer, e.byteOffset, e.byteLength), h);
    assert.deepEqual(await cache.read(h, 0, cache.tokens), e, h);
  }
  const meta = JSON.parse(await Deno.readTextFile(join(t.dir, "meta.json")));
  assert.equal(Object.keys(meta).at(-1), "complete");
  assert.equal(meta.windows, WINDOWS);
  assert.deepEqual(meta.bytes["blocks.0.mlp.hook_post"], WINDOWS * SEQ * 16 * 4);
  await t.done();
});

Deno.test("a cache filled in memory keeps the fill's rows instead of reading its files back", async () => {
  const t = await setup();
  // Every file the fill opens for reading, while it runs.
  const open = Deno.open, reads: string[] = [];
  Deno.open = (path, options) => {
    if (!options?.write) reads.push(String(path));
    return open(path, options);
  };
  let cache;
  try {
    cache = await ensureActivationCache(t.options);
  } finally {
    Deno.open = open;
  }
  assert.deepEqual(reads, []);
  assert.equal(cache.inMemory, true);
  const expected = await direct(t.model);
  for (const h of FORWARD) {
    assert.deepEqual(await cache.read(h, 0, cache.tokens), expected.get(h), h);
  }
  await t.done();
});

Deno.test("ensureActivationCache() reuses a complete cache without running the model", async () => {
  const t = await setup({ progressIntervalMs: 0 });
  const first = await ensureActivationCache(t.options);
  assert.equal(t.calls.length, 3);
  // With no interval, a progress line after every batch but the last, then a summary.
  assert.match(t.lines[1]!, /^activation cache: 3\/7 windows \| .* tok\/s \| ETA /);
  assert.match(t.lines.at(-1)!, /^activation cache: 7 windows \(42 tokens\) in /);
  t.lines.length = 0;
  const second = await ensureActivationCache(t.options);
  assert.equal(t.calls.length, 3);
  assert.deepEqual(t.lines, [`activation cache: reusing ${t.dir} (42 tokens)`]);
  for (const h of FORWARD) {
    assert.deepEqual(await second.read(h, 0, 42), await first.read(h, 0, 42));
  }
  await t.done();
});

Deno.test("streamed reads equal in-memory reads, across windows and at the end", async () => {
  const t = await setup({ memoryBudgetBytes: 0 });
  const streamed = await ensureActivationCache(t.options);
  assert.equal(streamed.inMemory, false);
  assert.match(t.lines[0]!, /streamed from disk \(over the 0 B memory budget\)$/);
  const memory = await openActivationCache(t.dir);
  assert.equal(memory.inMemory, true);
  // [5, 8) and [10, 23) cross window boundaries (every 6 rows); the last rows end the file.
  const ranges = [[0, 42], [5, 3], [10, 13], [36, 6], [41, 1], [39, 3], [17, 0], [42, 0]];
  for (const [start, count] of ranges) {
    for (const h of FORWARD) {
      const a = await streamed.read(h, start!, count!);
      assert.equal(a.length, count! * streamed.width(h));
      assert.deepEqual(a, await memory.read(h, start!, count!), `${h} [${start}, +${count})`);
    }
    assert.deepEqual(
      await streamed.batch(FORWARD, start!, count!),
      await memory.batch(FORWARD, start!, count!),
    );
  }
  await assert.rejects(streamed.read(FORWARD[0]!, 40, 3), RangeError);
  await assert.rejects(streamed.read("blocks.1.hook_resid_pre", 0, 1), /it holds "hook_pos/);
  // A copy: changing what a read returned does not change the cache.
  (await memory.read(FORWARD[1]!, 0, 1)).fill(NaN);
  assert.ok(!Number.isNaN((await memory.read(FORWARD[1]!, 0, 1))[0]));
  await t.done();
});

Deno.test("ensureActivationCache() redoes an interrupted fill", async () => {
  const t = await setup();
  // This process's leftover and another's abandoned 20 minutes ago: both replaced.
  const own = `${t.dir}.tmp-${Deno.pid}`, other = `${t.dir}.tmp-999999999`;
  for (const tmp of [own, other]) {
    await Deno.mkdir(tmp, { recursive: true });
    await Deno.writeFile(join(tmp, `${FORWARD[0]}.f32`), new Uint8Array(12));
  }
  const old = new Date(Date.now() - 20 * 60 * 1000);
  await Deno.utime(join(other, `${FORWARD[0]}.f32`), old, old);
  await Deno.utime(other, old, old);
  const cache = await ensureActivationCache(t.options);
  assert.equal(t.calls.length, 3);
  assert.equal((await cache.read(FORWARD[0]!, 0, 42)).length, 42 * 8);
  const left = [...Deno.readDirSync(t.root)].map((e) => e.name);
  assert.deepEqual(left, [t.id]);

  // A fill that fails half-way leaves no cache behind, and the next call fills it.
  await Deno.remove(t.dir, { recursive: true });
  let runs = 0;
  const failing = {
    config: t.model.config,
    run: (o: Parameters<GPT["run"]>[0]) => {
      if (++runs === 2) throw new Error("interrupted");
      return t.model.run(o);
    },
  };
  await assert.rejects(
    ensureActivationCache({ ...t.options, model: failing }),
    /Cannot fill activation cache ".*": interrupted/,
  );
  assert.deepEqual([...Deno.readDirSync(t.root)], []);
  await ensureActivationCache(t.options);
  assert.equal(t.calls.length, 6);
  await t.done();
});

Deno.test("a corrupt cache gives an error naming the file and saying to delete the folder", async () => {
  const t = await setup();
  await ensureActivationCache(t.options);
  const file = join(t.dir, "blocks.0.mlp.hook_post.f32");
  await Deno.truncate(file, 100);
  const truncated = (e: unknown) =>
    e instanceof ActivationCacheError && e.path === file &&
    e.message.includes(`${file}: it has 100 bytes, expected 2688`) &&
    e.message.includes(`delete the folder "${t.dir}"`);
  await assert.rejects(openActivationCache(t.dir), truncated);
  await assert.rejects(ensureActivationCache(t.options), truncated);
  assert.equal(t.calls.length, 3);

  const metaPath = join(t.dir, "meta.json");
  const meta = JSON.parse(await Deno.readTextFile(metaPath));
  delete meta.widths;
  await Deno.writeTextFile(metaPath, JSON.stringify(meta));
  await assert.rejects(openActivationCache(t.dir), /meta\.json: "widths" is missing; delete/);
  await Deno.writeTextFile(metaPath, "{");
  await assert.rejects(openActivationCache(t.dir), /meta\.json: it is not JSON/);
  await Deno.remove(metaPath);
  await assert.rejects(openActivationCache(t.dir), /meta\.json: it is missing/);
  await t.done();
});

Deno.test("cacheKey() changes with the model, split, seqLen and hooks, and only with them", async () => {
  const a = GPT.init(TINY, 1), b = GPT.init(TINY, 2);
  const shaA = modelFingerprint(await a.parameterValues());
  const shaB = modelFingerprint(await b.parameterValues());
  assert.match(shaA, /^[0-9a-f]{64}$/);
  assert.equal(shaA, modelFingerprint(await a.parameterValues()));
  assert.notEqual(shaA, shaB);
  const base = {
    modelSha256: shaA,
    corpusSha256: CORPUS,
    split: "train" as const,
    seqLen: 6,
    hooks: HOOKS,
  };
  const id = cacheKey(base);
  assert.match(id, /^[0-9a-f]{16}$/);
  assert.equal(cacheKey({ ...base, hooks: [...FORWARD].reverse() }), id);
  const variants = [
    { modelSha256: shaB },
    { corpusSha256: "d".repeat(64) },
    { split: "val" as const },
    { seqLen: 5 },
    { hooks: FORWARD.slice(1) },
  ];
  const ids = variants.map((v) => cacheKey({ ...base, ...v }));
  assert.equal(new Set([id, ...ids]).size, variants.length + 1);
  assert.throws(() => cacheKey({ ...base, modelSha256: "model" }), /not a sha256/);
  a.dispose();
  b.dispose();
});

Deno.test("ensureActivationCache() takes the full key or its id, and checks the full key", async () => {
  const t = await setup();
  const full = { ...t.key, seqLen: SEQ, hooks: FORWARD };
  // A bare id: the same folder, but meta.json cannot record the key's fields.
  const byId = await ensureActivationCache({ ...t.options, key: cacheKey(full) });
  assert.equal(byId.dir, t.dir);
  assert.equal(byId.meta.key, null);
  const byFields = await ensureActivationCache({ ...t.options, key: full });
  assert.equal(t.calls.length, 3);
  assert.equal(byFields.tokens, 42);
  await assert.rejects(
    ensureActivationCache({ ...t.options, key: { ...full, seqLen: 5 } }),
    /Cannot cache activations under key .*: the options ask for seqLen 6/,
  );
  await assert.rejects(
    ensureActivationCache({ ...t.options, key: "not-an-id" }),
    /Cannot use activation cache id "not-an-id"/,
  );
  await assert.rejects(
    ensureActivationCache({ ...t.options, hooks: ["blocks.9.hook_resid_pre"] }),
    /Cannot cache hook "blocks\.9\.hook_resid_pre": no such hook/,
  );
  await t.done();
});

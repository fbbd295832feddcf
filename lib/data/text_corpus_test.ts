import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeGpt2, GPT2_EOT, GPT2_TOKENIZER } from "./bpe_tokenizer.ts";
import { trainLength } from "./split.ts";
import { type CorpusTokenizer, loadTextCorpus } from "./text_corpus.ts";

/** A tokenizer that counts its calls, to tell tokenizing from reading the cache. */
function counting(inner: CorpusTokenizer): CorpusTokenizer & { calls: number } {
  const t = {
    ...inner,
    calls: 0,
    encode: (text: string) => {
      t.calls++;
      return inner.encode(text);
    },
  };
  return t;
}

/** One id per UTF-16 code unit, with separator 0: easy to predict. */
const CODES: CorpusTokenizer = {
  name: "test-codes",
  encode: (text) => Int32Array.from(text, (c) => c.charCodeAt(0)),
  decode: (ids) => String.fromCharCode(...Array.from(ids)),
  documentSeparator: 0,
};

async function writeFiles(dir: string, files: Record<string, string | Uint8Array>) {
  for (const [name, content] of Object.entries(files)) {
    const path = join(dir, name);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    if (typeof content === "string") await Deno.writeTextFile(path, content);
    else await Deno.writeFile(path, content);
  }
}

const jsonl = (...lines: unknown[]) => lines.map((l) => JSON.stringify(l)).join("\n") + "\n";

Deno.test("loadTextCorpus() tokenizes a folder once, in path order, then reads the cache", async () => {
  const dir = await Deno.makeTempDir();
  const src = join(dir, "src");
  await writeFiles(src, {
    "b.txt": "Hello world",
    "a/z.jsonl": jsonl({ text: "first doc", id: 1 }, { text: "second", id: 2 }) + "\n  \n",
    "c.jsonl": jsonl({ text: "<|endoftext|> is text here" }),
    "notes.md": "ignored: not .txt or .jsonl",
    ".hidden/x.txt": "ignored: hidden",
  });
  const cacheDir = join(dir, "cache");
  const tokenizer = counting(GPT2_TOKENIZER);
  const first = await loadTextCorpus(src, { tokenizer, cacheDir, log: () => {} });
  assert.equal(first.fromCache, false);
  assert.deepEqual(first.files, ["a/z.jsonl", "b.txt", "c.jsonl"].map((f) => join(src, f)));
  assert.equal(first.documents, 4);
  assert.equal(tokenizer.calls, 4);
  const expected = ["first doc", "second", "Hello world", "<|endoftext|> is text here"]
    .flatMap((doc) => [GPT2_EOT, ...encodeGpt2(doc)]);
  assert.deepEqual([...first.tokens], expected);
  assert.match(first.key, /^[0-9a-f]{64}$/);
  assert.equal(first.cachePath, join(cacheDir, `${first.key}.int32`));
  // The cache is raw little-endian int32.
  const raw = await Deno.readFile(first.cachePath);
  assert.equal(raw.length, expected.length * 4);
  assert.equal(new DataView(raw.buffer).getInt32(4, true), expected[1]);

  const second = await loadTextCorpus(src, { tokenizer, cacheDir, log: () => {} });
  assert.equal(second.fromCache, true);
  assert.equal(tokenizer.calls, 4, "the second call does not tokenize");
  assert.deepEqual(second.tokens, first.tokens);
  assert.equal(second.documents, 4);
  assert.equal(second.key, first.key);

  // Another tokenizer, or changed bytes, make a new entry.
  const other = await loadTextCorpus(src, { tokenizer: CODES, cacheDir, log: () => {} });
  assert.equal(other.fromCache, false);
  assert.notEqual(other.key, first.key);
  await Deno.writeTextFile(join(src, "b.txt"), "Hello world!");
  const edited = await loadTextCorpus(src, { tokenizer, cacheDir, log: () => {} });
  assert.equal(edited.fromCache, false);
  assert.notEqual(edited.key, first.key);
  // A damaged cache file is replaced, not trusted.
  await Deno.writeFile(edited.cachePath, new Uint8Array(6));
  const lines: string[] = [];
  const repaired = await loadTextCorpus(src, { tokenizer, cacheDir, log: (l) => lines.push(l) });
  assert.equal(repaired.fromCache, false);
  assert.deepEqual(repaired.tokens, edited.tokens);
  assert.match(lines.join("\n"), /Cannot use token cache .*tokenizing again/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadTextCorpus() reads the configured JSONL field and names file:line when it is missing", async () => {
  const dir = await Deno.makeTempDir();
  const cacheDir = join(dir, "cache");
  const file = join(dir, "docs.jsonl");
  await writeFiles(dir, {
    "docs.jsonl": jsonl({ content: "ab", id: 1 }, { content: "c", id: 2 }, { body: "x", id: 3 }),
  });
  const opts = { tokenizer: CODES, cacheDir, log: () => {} };
  await assert.rejects(loadTextCorpus(file, opts), (e: Error) => {
    assert.equal(e.name, "CorpusError");
    assert.equal(
      e.message,
      `Cannot read corpus file "${file}:1": no "text" field (the line has "content", "id"; ` +
        `name the text field to read another)`,
    );
    return true;
  });
  await assert.rejects(
    loadTextCorpus(file, { ...opts, textField: "content" }),
    new RegExp(`"${file}:3": no "content" field \\(the line has "body", "id"`),
  );
  await Deno.writeTextFile(file, jsonl({ content: "ab" }, { content: "c" }));
  const corpus = await loadTextCorpus(file, { ...opts, textField: "content" });
  assert.deepEqual([...corpus.tokens], [0, 97, 98, 0, 99]);
  // The field is part of the key: the same bytes read through another field are another corpus.
  await Deno.writeTextFile(file, jsonl({ content: "ab", text: "z" }, { content: "c", text: "y" }));
  const byText = await loadTextCorpus(file, opts);
  const byContent = await loadTextCorpus(file, { ...opts, textField: "content" });
  assert.deepEqual([...byText.tokens], [0, 122, 0, 121]);
  assert.deepEqual([...byContent.tokens], [0, 97, 98, 0, 99]);

  await Deno.writeTextFile(file, `{"text": "ok"}\n{"text": 5}\n`);
  await assert.rejects(loadTextCorpus(file, opts), /docs\.jsonl:2": field "text" is a number/);
  await Deno.writeTextFile(file, `{"text": "ok"}\r\n{"text": \n`);
  await assert.rejects(loadTextCorpus(file, opts), /docs\.jsonl:2": not valid JSON/);
  await Deno.writeTextFile(file, `["text"]\n`);
  await assert.rejects(loadTextCorpus(file, opts), /docs\.jsonl:1": the line is an array/);
  await Deno.writeFile(file, new Uint8Array([0x7b, 0xff, 0x7d, 0x0a]));
  await assert.rejects(loadTextCorpus(file, opts), /docs\.jsonl:1": not valid UTF-8/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadTextCorpus() splits tokens deterministically: train is the first 90% rounded to 256", async () => {
  const dir = await Deno.makeTempDir();
  const docs = Array.from(
    { length: 40 },
    (_, i) => ({ text: `document ${i} `.repeat(3 + (i % 5)) }),
  );
  await writeFiles(dir, { "src/d.jsonl": jsonl(...docs) });
  const a = await loadTextCorpus(join(dir, "src"), {
    tokenizer: CODES,
    cacheDir: join(dir, "c1"),
    log: () => {},
  });
  const b = await loadTextCorpus(join(dir, "src"), {
    tokenizer: CODES,
    cacheDir: join(dir, "c2"),
    log: () => {},
  });
  const n = a.tokens.length;
  assert.ok(n > 1000);
  assert.equal(a.train.length, trainLength(n));
  assert.equal(a.train.length % 256, 0);
  assert.equal(a.train.length + a.val.length, n);
  assert.deepEqual(a.train, a.tokens.subarray(0, a.train.length));
  assert.deepEqual(a.val, a.tokens.subarray(a.train.length));
  assert.deepEqual(b.train, a.train);
  assert.deepEqual(b.val, a.val);
  const cached = await loadTextCorpus(join(dir, "src"), {
    tokenizer: CODES,
    cacheDir: join(dir, "c1"),
    log: () => {},
  });
  assert.equal(cached.fromCache, true);
  assert.deepEqual(cached.train, a.train);
  assert.deepEqual(cached.val, a.val);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadTextCorpus() prints progress for large corpora and refuses paths without text", async () => {
  const dir = await Deno.makeTempDir();
  await writeFiles(dir, { "src/a.txt": "abc", "src/b.txt": "de", "empty/readme.md": "# no" });
  const lines: string[] = [];
  await loadTextCorpus(join(dir, "src"), {
    tokenizer: CODES,
    cacheDir: join(dir, "cache"),
    log: (l) => lines.push(l),
    progressBytes: 0,
    progressIntervalMs: 0,
  });
  assert.match(lines[0]!, /^Hashing corpus ".*src": 0\.0 MB of 0\.0 MB$/);
  assert.ok(
    lines.some((l) => /^Tokenizing corpus ".*src" \(0\.0 MB in 2 files\) with test-codes$/.test(l)),
  );
  assert.ok(
    lines.some((l) => /^Tokenizing corpus .*: 100% \(.*\), 4 tokens, .*\/s, ETA \d+s$/.test(l)),
  );
  assert.match(
    lines.at(-1)!,
    /^Tokenized corpus ".*src": 7 tokens in 2 documents .*cached as ".*\.int32"$/,
  );
  const opts = { tokenizer: CODES, cacheDir: join(dir, "cache"), log: () => {} };
  await assert.rejects(
    loadTextCorpus(join(dir, "nope"), opts),
    /Cannot read corpus ".*nope": no such file or folder/,
  );
  await assert.rejects(loadTextCorpus(join(dir, "empty"), opts), /holds no \.txt or \.jsonl files/);
  await assert.rejects(
    loadTextCorpus(join(dir, "empty/readme.md"), opts),
    /readme\.md": not a \.txt or \.jsonl file/,
  );
  await Deno.writeFile(join(dir, "src/b.txt"), new Uint8Array([0xc3]));
  await assert.rejects(loadTextCorpus(join(dir, "src"), opts), /b\.txt": not valid UTF-8/);
  await Deno.remove(dir, { recursive: true });
});

import assert from "node:assert/strict";
import { join } from "node:path";
import { encodeGpt2, GPT2_EOT } from "./bpe_tokenizer.ts";
import { encodeChars } from "./char_tokenizer.ts";
import { SHIPPED_DATA_DIR } from "./corpus.ts";
import { loadDataset, TOKENIZERS } from "./dataset.ts";
import { splitTrainVal } from "./split.ts";

Deno.test({
  name:
    "loadDataset() reads Tiny Shakespeare with characters exactly as the toy model trains on it",
  async fn() {
    const text = await Deno.readTextFile(join(SHIPPED_DATA_DIR, "tinyshakespeare.txt"));
    const want = splitTrainVal(encodeChars(text));
    const got = await loadDataset({ corpus: "tinyshakespeare" }, TOKENIZERS.char);
    assert.equal(got.name, "tinyshakespeare");
    assert.equal(got.train.length, 1_003_776);
    assert.equal(got.val.length, 111_618);
    assert.deepEqual(got.train, want.train);
    assert.deepEqual(got.val, want.val);
    assert.match(got.sha256, /^[0-9a-f]{64}$/);
  },
});

Deno.test("loadDataset() tokenizes a local path with GPT-2 BPE, documents separated by <|endoftext|>", async () => {
  const dir = await Deno.makeTempDir();
  const prev = Deno.env.get("SCALAR_CACHE_DIR");
  Deno.env.set("SCALAR_CACHE_DIR", join(dir, "cache"));
  try {
    const file = join(dir, "docs.jsonl");
    const docs = ["Hello world", "The cat sat on the mat."];
    await Deno.writeTextFile(file, docs.map((d) => JSON.stringify({ body: d })).join("\n"));
    const got = await loadDataset(
      { corpus: "tinyshakespeare", path: file, textField: "body" },
      TOKENIZERS.gpt2,
    );
    const all = [...docs.flatMap((d) => [GPT2_EOT, ...encodeGpt2(d)])];
    assert.deepEqual([...got.train, ...got.val], all);
    assert.equal(got.name, file);
    assert.equal(got.tokenizer.decode([15496, 995]), "Hello world");
    // The same bytes read by characters are another dataset: another cache identity.
    const chars = await loadDataset({ corpus: "", path: file, textField: "body" }, TOKENIZERS.char);
    assert.notEqual(chars.sha256, got.sha256);
  } finally {
    if (prev === undefined) Deno.env.delete("SCALAR_CACHE_DIR");
    else Deno.env.set("SCALAR_CACHE_DIR", prev);
    await Deno.remove(dir, { recursive: true });
  }
});

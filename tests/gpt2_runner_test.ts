/**
 * GPT-2 through the whole runner: a tiny random model written in the Hugging Face layout, text
 * tokenized with GPT-2's BPE, SAEs at chosen layers trained in micro-batches, metrics, SCALAR and
 * the database; and a grid too large for the machine refused with its figures before any work.
 */
import assert from "node:assert/strict";
import { GPT, type GPTConfig } from "../lib/model/gpt.ts";
import { saveGpt2 } from "../lib/model/gpt2.ts";
import { createRng } from "../lib/util/rng.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** GPT-2's vocabulary and layout at a size the test can afford. */
const TINY_GPT2: GPTConfig = {
  nLayer: 3,
  nHead: 2,
  dModel: 8,
  dMlp: 32,
  nCtx: 16,
  vocabSize: 50257,
  lnEps: 1e-5,
};

async function cli(cwd: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env: { NO_COLOR: "1", SCALAR_BACKEND: "wasm", SCALAR_CACHE_DIR: `${cwd}/cache` },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/** A few thousand words of plain English: enough windows for training and validation. */
function englishText(sentences: number): string {
  const rng = createRng(11);
  const pick = (words: string[]) => words[rng.int(words.length)]!;
  const subjects = [
    "The king",
    "A sailor",
    "My friend",
    "The old woman",
    "Every child",
    "The city",
  ];
  const verbs = ["walked to", "spoke of", "looked at", "remembered", "feared", "loved"];
  const objects = [
    "the sea",
    "a quiet garden",
    "the market",
    "his brother",
    "the winter",
    "the bridge",
  ];
  return Array.from(
    { length: sentences },
    () => `${pick(subjects)} ${pick(verbs)} ${pick(objects)} before ${pick(objects)}.`,
  ).join(" ");
}

async function setUp(manifest: string): Promise<string> {
  const dir = await Deno.makeTempDir();
  const model = GPT.init(TINY_GPT2, 5);
  await saveGpt2(`${dir}/gpt2`, TINY_GPT2, await model.parameterValues());
  model.dispose();
  await Deno.writeTextFile(`${dir}/text.txt`, englishText(600));
  await Deno.writeTextFile(`${dir}/grid.yaml`, manifest);
  return dir;
}

Deno.test("a gpt2 manifest runs end to end: BPE text, chosen layers, micro-batches, SCALAR, DB", async () => {
  const dir = await setUp(`name: tiny-gpt2
model: { kind: gpt2, path: gpt2, layers: [0, 2] }
data: { path: text.txt }
position: mlp-block
sae: { arch: topk, features: 12, k: 2 }
train: { steps: 4, batch: 4, micro_batch: 2, warmup: 1, log_every: 2, checkpoint_every: 2 }
eval: { sequences: 6 }
scalar: { ig_steps: 2, ig_batches: 1, ig_batch_size: 2, prompts: 2, bootstrap: 20 }
matrix:
  sae.arch: [topk, staircase]
`);
  try {
    const first = await cli(dir, "run", "grid.yaml");
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /estimate \(rough/);
    assert.match(
      first.stderr,
      /memory at the peak of the largest run: [\d.]+ GB of [\d.]+ GB available/,
    );
    assert.match(first.stdout, /done\s+sae\.arch=staircase seed=0/);
    const rows = await cli(
      dir,
      "query",
      "select r.config->>'$.model_kind' as kind, count(distinct m.sae) filter (where m.metric = 'l0') as saes, " +
        "string_agg(distinct s.pair, ' ' order by s.pair) as pairs " +
        "from runs r join metrics m on m.run_id = r.id join scalar_scores s on s.run_id = r.id " +
        "group by kind",
      "--format",
      "csv",
    );
    assert.equal(rows.code, 0, rows.stderr);
    assert.equal(
      rows.stdout.trim(),
      "kind,saes,pairs\n" +
        "gpt2,4,blocks.0.hook_resid_mid→blocks.0.hook_resid_post " +
        "blocks.2.hook_resid_mid→blocks.2.hook_resid_post",
    );
    // The features of a GPT-2 SAE show BPE tokens decoded back to the corpus's words.
    const id = (await cli(dir, "query", "select min(id) from runs", "--format", "csv")).stdout
      .trim().split("\n")[1]!;
    const features = await cli(
      dir,
      "features",
      `results/runs/${id}/saes`,
      "--sae",
      "blocks.2.hook_resid_post",
      "--top",
      "3",
      "--format",
      "json",
    );
    assert.equal(features.code, 0, features.stderr);
    const doc = JSON.parse(features.stdout);
    const text = await Deno.readTextFile(`${dir}/text.txt`);
    const tops = doc.features.flatMap((f: { top: { token: string; context: string }[] }) => f.top);
    assert.ok(tops.length > 0);
    for (const a of tops) {
      assert.ok(text.includes(a.token), `token ${JSON.stringify(a.token)} is not in the text`);
      assert.ok(a.context.includes(`⟦${a.token}⟧`), a.context);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a grid whose estimated memory exceeds the machine's is refused with its figures", async () => {
  const dir = await setUp(`name: too-big
model: { kind: gpt2, path: gpt2 }
data: { path: text.txt }
position: mlp-block
sae: { arch: topk, features: 400000000, k: 2 }
train: { steps: 1, batch: 1, warmup: 0 }
`);
  try {
    const out = await cli(dir, "run", "grid.yaml");
    assert.equal(out.code, 2, out.stderr);
    assert.match(
      out.stderr,
      /the largest run needs about [\d.]+ GB at its peak, but only [\d.]+ GB are available; .* pass --yes/,
    );
    assert.doesNotMatch(out.stderr, /\[run 1\//);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { featuresCommand, resolveRunDir } from "../cli/features.ts";
import { UsageError } from "../cli/args.ts";
import { encodeChars } from "../data/char_tokenizer.ts";
import { CorpusError, resolveCorpus } from "../data/corpus.ts";
import { loadDataset, TOKENIZERS } from "../data/dataset.ts";
import { splitTrainVal } from "../data/split.ts";
import { saveCheckpoint } from "../model/checkpoint.ts";
import { GPT, type GPTConfig, initParameters } from "../model/gpt.ts";
import { gptTensors } from "../model/gpt_checkpoint.ts";
import { createRng } from "../util/rng.ts";
import { buildSaes, type SaeConfig } from "./architectures.ts";
import { formatContext, TopActivationHeaps, topActivations } from "./features.ts";
import { layoutPosition } from "./positions.ts";
import type { SaeCheckpointConfig } from "./sae_checkpoint.ts";

const CONFIG: GPTConfig = {
  nLayer: 1,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 6,
  vocabSize: 128,
  lnEps: 1e-5,
};

Deno.test("topActivations() finds the hand-expected tokens, densities and tie order", async () => {
  // At hook_embed the activation is the token's embedding row. Only "a" (e0) and "b" (2·e1) have
  // nonzero embeddings, so: feature 0 = e0 fires 1 on "a"; feature 1 = e1 fires 2 on "b";
  // feature 2 = e0 + e1 fires 1 on "a" and 2 on "b"; feature 3 = −e0 never fires.
  const values = initParameters(CONFIG, 1);
  const wte = new Float32Array(CONFIG.vocabSize * CONFIG.dModel);
  wte["a".charCodeAt(0) * 8 + 0] = 1;
  wte["b".charCodeAt(0) * 8 + 1] = 2;
  values.set("wte.weight", wte);
  const model = new GPT(CONFIG, values, false);
  const wEnc = new Float32Array(8 * 4);
  wEnc[0 * 4 + 0] = 1; // [D, F]: row i, column f
  wEnc[1 * 4 + 1] = 1;
  wEnc[0 * 4 + 2] = 1;
  wEnc[1 * 4 + 2] = 1;
  wEnc[0 * 4 + 3] = -1;
  const weights = {
    wEnc: tf.tensor2d(wEnc, [8, 4]),
    bEnc: tf.zeros([4]) as tf.Tensor1D,
    wDec: tf.zeros([4, 8]) as tf.Tensor2D,
    bDec: tf.zeros([8]) as tf.Tensor1D,
  };
  // Three windows of six tokens, then one the windows never reach.
  const tokens = encodeChars("..a.b." + "b..a.a" + "ab...." + "ab");
  const base = { model, weights, k: 2, hook: "hook_embed", tokens, sequences: 3, top: 3 };
  // Two windows per batch: the third comes in a second batch.
  const result = await topActivations({ ...base, batchSequences: 2 });
  assert.equal(result.tokens, 18);
  assert.equal(result.seqLen, 6);
  const at = (sequence: number, position: number, value: number) => ({
    value,
    sequence,
    position,
  });
  assert.deepEqual(result.features, [
    { feature: 0, density: 4 / 18, count: 4, top: [at(0, 2, 1), at(1, 3, 1), at(1, 5, 1)] },
    { feature: 1, density: 3 / 18, count: 3, top: [at(0, 4, 2), at(1, 0, 2), at(2, 1, 2)] },
    { feature: 2, density: 7 / 18, count: 7, top: [at(0, 4, 2), at(1, 0, 2), at(2, 1, 2)] },
    { feature: 3, density: 0, count: 0, top: [] },
  ]);

  const some = await topActivations({ ...base, batchSequences: 3, features: [2, 0, 2], top: 5 });
  assert.deepEqual(some.features.map((f) => f.feature), [0, 2]);
  assert.deepEqual(
    some.features[1]!.top,
    [at(0, 4, 2), at(1, 0, 2), at(2, 1, 2), at(0, 2, 1), at(1, 3, 1)],
  );
  await assert.rejects(
    topActivations({ ...base, batchSequences: 1, features: [4] }),
    /Cannot inspect feature "4": the SAE at "hook_embed" has features 0–3/,
  );
  await assert.rejects(
    topActivations({ ...base, batchSequences: 1, sequences: 4 }),
    /Cannot read 4 windows of 6 tokens from "20" tokens/,
  );
  model.dispose();
  Object.values(weights).forEach((t) => t.dispose());
});

Deno.test("TopActivationHeaps keeps the true top N, ties by earlier token, in any push order", () => {
  const rng = createRng(7);
  for (const [n, capacity] of [[500, 10], [30, 50], [1, 1]] as const) {
    const heaps = new TopActivationHeaps(3, capacity);
    const pushed: { value: number; token: number }[][] = [[], [], []];
    // Values from a small set force many ties; tokens shuffled so the tie rule, not the push
    // order, decides.
    const order = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    for (const token of order) {
      for (let h = 0; h < 3; h++) {
        const value = h === 2 ? rng.uniform() : rng.int(8) / 4;
        heaps.push(h, value, token);
        pushed[h]!.push({ value, token });
      }
    }
    for (let h = 0; h < 3; h++) {
      const expected = pushed[h]!.sort((a, b) => b.value - a.value || a.token - b.token)
        .slice(0, capacity);
      assert.deepEqual(heaps.sorted(h), expected, `n ${n}, capacity ${capacity}, heap ${h}`);
    }
  }
});

Deno.test("formatContext() marks the character, trims at the edges and shows line breaks", () => {
  const text = "O, the king's\nson";
  assert.equal(formatContext(text, 8, { before: 5, after: 4 }), "…the k⟦i⟧ng's…");
  assert.equal(formatContext(text, 0, { before: 5, after: 2 }), "⟦O⟧, …");
  assert.equal(formatContext(text, 16, { before: 3, after: 9 }), "…⏎so⟦n⟧");
  assert.equal(formatContext(text, 13, { before: 2, after: 1 }), "…'s⟦⏎⟧s…");
  assert.equal(formatContext(text, 3, { before: 99, after: 99 }), "O, ⟦t⟧he king's⏎son");
  assert.equal(formatContext("a\r\nb", 3, { before: 3, after: 0 }), "a⏎⏎⟦b⟧");
  assert.doesNotMatch(formatContext("x\ny\u2028z", 2, { before: 9, after: 9 }), /[\n\u2028]/);
  assert.throws(
    () => formatContext(text, 17, { before: 1, after: 1 }),
    /Cannot mark character "17"/,
  );
  assert.throws(() => formatContext(text, 1, { before: -1, after: 1 }), RangeError);
});

// --- the command, in-process ------------------------------------------------------------------

const SAE: SaeConfig = { arch: "staircase", features: 16, k: 3, jsaeLambda: 0 };

/** Writes a tiny model and a Staircase SAE run on it; returns the SAE folder. */
async function writeRun(root: string, sha256: string): Promise<string> {
  const modelDir = join(root, "model");
  await saveCheckpoint(modelDir, {
    config: { format: "scalar-lab/gpt", model: CONFIG, tokenizer: "char" },
    params: gptTensors(CONFIG, initParameters(CONFIG, 3)),
  });
  const layout = layoutPosition("mlp", CONFIG.nLayer);
  const saes = buildSaes(SAE, layout, CONFIG.dModel, 5);
  const params = Object.fromEntries(
    await Promise.all(
      [...saes.params].map(async ([name, v]) => [
        name,
        { shape: v.shape, data: (await v.data()) as Float32Array },
      ]),
    ),
  );
  const config: SaeCheckpointConfig = {
    format: "scalar-lab/saes",
    settings: { sae: SAE, train: {} },
    hooks: layout.hooks,
    widths: Object.fromEntries(layout.hooks.map((h) => [h, saes.width(h)])),
    modelDir,
    position: "mlp",
    nLayer: CONFIG.nLayer,
    d: CONFIG.dModel,
    corpus: { name: "tinyshakespeare", sha256 },
  };
  saes.dispose();
  const dir = join(root, "saes");
  await saveCheckpoint(dir, { config, params });
  return dir;
}

/** Runs the command with stdout captured and stderr silenced. */
async function runCommand(...args: string[]): Promise<{ code: number; stdout: string }> {
  const { log, error } = console;
  const lines: string[] = [];
  console.log = (...parts: unknown[]) => lines.push(parts.join(" "));
  console.error = () => {};
  try {
    const code = await featuresCommand.run(args);
    return { code, stdout: lines.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

const HOOK = "blocks.0.hook_mlp_in";

Deno.test("features: a bad --sae lists the hooks, a bad --feature states the range", async () => {
  const root = await Deno.makeTempDir();
  // Usage mistakes are found before the corpus is read: its key does not matter here.
  const dir = await writeRun(root, "f".repeat(64));
  await assert.rejects(
    runCommand(dir, "--sae", "blocks.0.hook_mlp_inn"),
    (e: Error) =>
      e instanceof UsageError &&
      e.message.includes(`Cannot inspect SAE "blocks.0.hook_mlp_inn"`) &&
      e.message.includes(`"blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"`),
  );
  await assert.rejects(runCommand(dir), /missing --sae HOOK.*"blocks\.0\.hook_mlp_out"/);
  // The Staircase SAE downstream has both chunks: 32 features.
  await assert.rejects(
    runCommand(dir, "--sae", "blocks.0.hook_mlp_out", "--feature", "32"),
    (e: Error) =>
      e instanceof UsageError &&
      /Cannot inspect feature "32": the SAE at "blocks\.0\.hook_mlp_out" has features 0–31/
        .test(e.message),
  );
  await assert.rejects(runCommand(dir, "--sae", HOOK, "--format", "yaml"), UsageError);
  await assert.rejects(runCommand(dir, "--sae", HOOK, "--top", "0"), UsageError);
  await Deno.remove(root, { recursive: true });
});

Deno.test({
  name: "features --format json describes each feature; a corpus checksum mismatch is refused",
  async fn() {
    const root = await Deno.makeTempDir();
    // What identifies the corpus to a run: its bytes read by the model's tokenizer.
    const key = (await loadDataset({ corpus: "tinyshakespeare" }, TOKENIZERS.char)).sha256;
    const dir = await writeRun(root, key);
    const { code, stdout } = await runCommand(
      dir,
      "--sae",
      HOOK,
      "--sequences",
      "50",
      "--top",
      "4",
      "--format",
      "json",
    );
    assert.equal(code, 0);
    const doc = JSON.parse(stdout);
    assert.equal(doc.hook, HOOK);
    assert.equal(doc.width, 16);
    assert.equal(doc.k, 3);
    assert.equal(doc.arch, "staircase");
    assert.equal(doc.tokens, 300);
    assert.deepEqual(doc.features.map((f: { feature: number }) => f.feature), [
      ...Array(16).keys(),
    ]);
    const val = splitTrainVal(encodeChars((await resolveCorpus("tinyshakespeare")).text)).val;
    let active = 0;
    for (const f of doc.features) {
      assert.equal(f.density, f.count / 300);
      active += f.count;
      assert.ok(f.top.length === Math.min(4, f.count));
      for (let i = 0; i < f.top.length; i++) {
        const a = f.top[i];
        assert.ok(a.value > 0);
        if (i > 0) assert.ok(f.top[i - 1].value >= a.value);
        assert.equal(a.token.charCodeAt(0), val[a.sequence * 6 + a.position]);
        assert.ok(a.before.length <= a.position, "context before stays in the sequence");
        assert.ok(a.context.includes(`⟦${a.token === "\n" ? "⏎" : a.token}⟧`));
        assert.doesNotMatch(a.context, /\n/);
      }
    }
    // TopK keeps 3 features per token, all active unless pre-activations are ≤ 0.
    assert.ok(active > 0 && active <= 3 * 300, `${active} activations`);

    const one = await runCommand(dir, "--sae", HOOK, "--sequences", "50", "--feature", "3");
    assert.equal(one.code, 0);
    assert.match(one.stdout, /^feature 3: density [\d.]+%/m);
    assert.doesNotMatch(one.stdout, /^feature (?!3:)/m);

    const bad = await writeRun(join(root, "bad"), "0".repeat(64));
    await assert.rejects(
      runCommand(bad, "--sae", HOOK),
      (e: Error) =>
        e instanceof CorpusError &&
        e.message.includes(`trained on ${"0".repeat(64)}`) &&
        e.message.includes(`has key ${key}`),
    );
    await Deno.remove(root, { recursive: true });
  },
});

Deno.test("features RUN: a run id or an unambiguous prefix names results/runs/<id>/saes; others are refused", async () => {
  const root = await Deno.makeTempDir();
  try {
    for (const id of ["0a1b2c3d4e5f", "0a1bffffffff", "9f00aa00bb00"]) {
      await Deno.mkdir(`${root}/${id}/saes`, { recursive: true });
    }
    assert.equal(await resolveRunDir("9f", root), `${root}/9f00aa00bb00/saes`);
    assert.equal(await resolveRunDir("0a1b2", root), `${root}/0a1b2c3d4e5f/saes`);
    await assert.rejects(
      resolveRunDir("0a1b", root),
      (e: Error) =>
        e instanceof UsageError &&
        e.message ===
          `Cannot choose a run: "0a1b" begins 2 run ids (0a1b2c3d4e5f, 0a1bffffffff); type more of the id`,
    );
    await assert.rejects(resolveRunDir("77", root), /Cannot find run "77": not an SAE folder/);
    await Deno.writeTextFile(`${root}/9f00aa00bb00/saes/config.json`, "{}");
    assert.equal(await resolveRunDir(`${root}/9f00aa00bb00`), `${root}/9f00aa00bb00/saes`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

import assert from "node:assert/strict";
import { loadModelManifest } from "./model_manifest.ts";
import { ManifestError } from "./manifest_source.ts";
import { LM_TRAIN_DEFAULTS } from "../model/train.ts";

async function withManifest<T>(text: string, f: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/m.yaml`;
  await Deno.writeTextFile(path, text);
  try {
    return await f(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("loadModelManifest() fills the paper's defaults", async () => {
  const m = await withManifest("name: toy\ntrain:\n  steps: 300\n", loadModelManifest);
  assert.equal(m.name, "toy");
  assert.equal(m.model.dModel, 64);
  assert.deepEqual(m.train, { ...LM_TRAIN_DEFAULTS, steps: 300 });
  assert.equal(m.backend, "auto");
});

Deno.test("loadModelManifest() reports every problem with its line, column and field", async () => {
  const text = [
    "name: toy", //              1
    "train:", //                 2
    "  warmpu: 10", //           3
    "  lr: -1", //               4
    "  steps: many", //          5
    "backend: gpu", //           6
  ].join("\n");
  const err = await withManifest(text, (p) => loadModelManifest(p).then(() => undefined, (e) => e));
  assert.ok(err instanceof ManifestError);
  assert.equal(err.problems.length, 4);
  const lines = err.message.split("\n").slice(1).map((l) => l.replace(/^.*m\.yaml:/, ""));
  assert.deepEqual(lines, [
    '3:3: train.warmpu: unknown field "warmpu" (did you mean "warmup"?); allowed: steps, batch, ' +
    "lr, min_lr, warmup, weight_decay, beta1, beta2, grad_clip, micro_batch, eval_every, " +
    "eval_sequences, " +
    "checkpoint_every, log_every",
    "4:3: train.lr: must be > 0, got -1",
    '5:3: train.steps: expected a number, got string "many"',
    '6:1: backend: "gpu" is not one of auto, tensorflow, webgpu, wasm, cpu (did you mean "cpu"?)',
  ]);
});

Deno.test("loadModelManifest() reports YAML syntax errors and missing files with positions", async () => {
  const err = await withManifest("name: [unclosed\n", (p) => loadModelManifest(p).catch((e) => e));
  assert.ok(err instanceof ManifestError);
  assert.match(err.message, /m\.yaml:\d+:\d+: /);
  await assert.rejects(loadModelManifest("/nonexistent/x.yaml"), /the file does not exist/);
});

Deno.test("loadModelManifest() reads a DynamicTanh fine-tune and needs a base to freeze", async () => {
  const text =
    "name: dyt\nmodel:\n  mlp_norm: dyt\nfinetune:\n  from: models/base\n  trainable: mlp\n";
  const m = await withManifest(text, loadModelManifest);
  assert.equal(m.model.mlpNorm, "dyt");
  assert.deepEqual(m.finetune, { from: "models/base", trainable: "mlp" });
  // Without the options, the model and its checkpoints are exactly as before.
  const plain = await withManifest("name: toy\n", loadModelManifest);
  assert.equal("mlpNorm" in plain.model, false);
  assert.equal(plain.finetune, undefined);
  const err = await withManifest(
    "name: dyt\nfinetune:\n  trainable: mlp\n",
    (p) => loadModelManifest(p).catch((e) => e),
  );
  assert.match(err.message, /3:3: finetune\.trainable: freezing parameters needs finetune\.from/);
});

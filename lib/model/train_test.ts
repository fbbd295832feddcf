import assert from "node:assert/strict";
import { GPT, type GPTConfig } from "./gpt.ts";
import {
  bestModelDir,
  createLmOptimizer,
  FINETUNE_TRAINABLE,
  finetuneValues,
  LM_TRAIN_DEFAULTS,
  lmStep,
  trainLm,
  type TrainLmOptions,
} from "./train.ts";
import { loadCheckpoint } from "./checkpoint.ts";
import { loadGpt, readGptCheckpoint } from "./gpt_checkpoint.ts";

const TINY: GPTConfig = {
  nLayer: 1,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 8,
  vocabSize: 5,
  lnEps: 1e-5,
};

// A learnable stream: the cycle 0 1 2 3 4 repeated, so next-token loss can approach 0.
const stream = (n: number) => Int32Array.from({ length: n }, (_, i) => i % 5);

function options(outDir: string, extra: Partial<TrainLmOptions> = {}): TrainLmOptions {
  return {
    model: TINY,
    train: {
      ...LM_TRAIN_DEFAULTS,
      steps: 40,
      batch: 4,
      lr: 1e-2,
      minLr: 1e-3,
      warmup: 4,
      evalEvery: 20,
      checkpointEvery: 100,
      logEvery: 1,
    },
    tokens: { train: stream(400), val: stream(100) },
    outDir,
    provenance: { tokenizer: "char" },
    log: () => {},
    ...extra,
  };
}

Deno.test("trainLm() lowers the validation loss on a learnable stream", async () => {
  const dir = await Deno.makeTempDir();
  const result = await trainLm(options(`${dir}/m`));
  assert.equal(result.history.length, 2);
  assert.ok(result.history[0]!.valLoss < Math.log(5), `${result.history[0]!.valLoss}`);
  assert.ok(result.history[1]!.valLoss < 0.5 * Math.log(5), `${result.history[1]!.valLoss}`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("trainLm() keeps the weights of the best validation loss, not the last", async () => {
  const dir = await Deno.makeTempDir();
  // Validation on the reversed cycle: the better the model learns 0 1 2 3 4, the worse it predicts
  // 4 3 2 1 0, so the validation loss peaks late and the best weights are early ones.
  const reversed = Int32Array.from({ length: 100 }, (_, i) => 4 - (i % 5));
  const result = await trainLm(options(`${dir}/m`, {
    tokens: { train: stream(400), val: reversed },
    train: { ...options("").train, evalEvery: 10 },
  }));
  const losses = result.history.map((p) => p.valLoss);
  const bestStep = result.history[losses.indexOf(Math.min(...losses))]!.step;
  assert.ok(bestStep < 40, `the last step should not be the best here: ${losses}`);
  const [best, last] = await Promise.all(
    [bestModelDir(`${dir}/m`), `${dir}/m`].map(loadCheckpoint),
  );
  assert.equal((best.config as { step: number }).step, bestStep);
  assert.equal(best.state, undefined);
  assert.notDeepEqual(best.params["wte.weight"]!.data, last.params["wte.weight"]!.data);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("trainLm() interrupted and resumed ends bit-exact with an uninterrupted run", async () => {
  const dir = await Deno.makeTempDir();
  await trainLm(options(`${dir}/straight`));
  const abort = new AbortController();
  const first = await trainLm(options(`${dir}/resumed`, {
    signal: abort.signal,
    log: (line) => line.startsWith("step 13/") && abort.abort(),
  }));
  // The request arrives during step 13's report; the run stops after the next step.
  assert.deepEqual([first.step, first.interrupted], [14, true]);
  const second = await trainLm(options(`${dir}/resumed`));
  assert.deepEqual([second.step, second.interrupted], [40, false]);
  const [a, b] = await Promise.all([`${dir}/straight`, `${dir}/resumed`].map(loadCheckpoint));
  for (const name of Object.keys(a!.params)) {
    assert.deepEqual(b!.params[name]!.data, a!.params[name]!.data, name);
  }
  assert.deepEqual(
    (b!.config as { history: unknown }).history,
    (a!.config as { history: unknown }).history,
  );
  // Other settings in the same folder are refused rather than silently mixed.
  const other = options(`${dir}/resumed`);
  other.train = { ...other.train, lr: 0.5 };
  await assert.rejects(trainLm(other), /holds a run with other settings/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("trainLm() stops with the step named when the loss diverges", async () => {
  const dir = await Deno.makeTempDir();
  const o = options(`${dir}/m`);
  o.train = { ...o.train, lr: 1e30, gradClip: 1e30, warmup: 1 };
  await assert.rejects(
    trainLm(o),
    /Cannot train: the loss of the model became (NaN|Infinity) at step \d+/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("lmStep() in micro-batches equals one full-batch step", async () => {
  const batch = { inputs: stream(32), targets: stream(33).subarray(1), shape: [4, 8] as const };
  const results = [];
  for (const microBatch of [4, 3, 1]) {
    const model = GPT.init(TINY, 5);
    const optimizer = createLmOptimizer(model, LM_TRAIN_DEFAULTS);
    const loss = lmStep(model, optimizer, batch, 1e-2, { gradClip: 1, microBatch });
    results.push({ loss: (await loss.data())[0]!, params: await model.parameterValues() });
  }
  for (const r of results.slice(1)) {
    assert.ok(Math.abs(r.loss - results[0]!.loss) < 1e-6);
    for (const [name, v] of results[0]!.params) {
      const w = r.params.get(name)!;
      v.forEach((x, i) => assert.ok(Math.abs(x - w[i]!) < 1e-6, name));
    }
  }
});

Deno.test("a DynamicTanh fine-tune starts from the base, trains only ln_2 and the MLP, round-trips", async () => {
  const dir = await Deno.makeTempDir();
  const train = { ...options("").train, steps: 10, evalEvery: 5 };
  await trainLm(options(`${dir}/base`, { train }));
  const base = readGptCheckpoint(`${dir}/base`, await loadCheckpoint(`${dir}/base`));
  const dyt: GPTConfig = { ...TINY, mlpNorm: "dyt" };
  const start = {
    values: finetuneValues({ config: base.config.model, values: base.values }, dyt, 0),
    trainable: FINETUNE_TRAINABLE.mlp,
  };
  await trainLm(options(`${dir}/dyt`, { model: dyt, start, train }));
  const tuned = await loadGpt(`${dir}/dyt`);
  assert.equal(tuned.config.model.mlpNorm, "dyt");
  const after = await tuned.model.parameterValues();
  assert.deepEqual(
    [...after.keys()].filter((n) => n.includes("ln_2")),
    ["h.0.ln_2.alpha", "h.0.ln_2.gamma", "h.0.ln_2.beta"],
  );
  for (const [name, v] of base.values) {
    if (name.includes("mlp") || name.includes("ln_2")) continue;
    assert.deepEqual(after.get(name), v, `${name} stays frozen`);
  }
  for (const name of ["h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.bias"]) {
    assert.notDeepEqual(after.get(name), base.values.get(name), `${name} trains`);
  }
  assert.notEqual(after.get("h.0.ln_2.alpha")![0], 2, "α trains");
  // The base, a model without DynamicTanh, loads as it was saved.
  const plain = await loadGpt(`${dir}/base`);
  assert.equal(plain.config.model.mlpNorm, undefined);
  assert.deepEqual(await plain.model.parameterValues(), base.values);
  // Another shape is refused with the field named.
  assert.throws(
    () =>
      finetuneValues({ config: base.config.model, values: base.values }, {
        ...dyt,
        dModel: 16,
      }, 0),
    /the base model's dModel is 8, the manifest's 16/,
  );
  tuned.model.dispose();
  plain.model.dispose();
  await Deno.remove(dir, { recursive: true });
});

import assert from "node:assert/strict";
import { CORPORA } from "../data/corpus.ts";
import { GPT2_SMALL, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import { hfConfigFromGpt } from "../model/gpt2.ts";
import { SHIPPED_MODELS } from "../model/shipped.ts";
import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
import {
  canonicalJson,
  expandManifest,
  expandManifestText,
  type ManifestExpansion,
  runId,
} from "./manifest.ts";
import { ManifestError } from "./manifest_source.ts";
import { type SaeRunConfig, SCALAR_DEFAULTS } from "./sae_run.ts";

/** A folder that passes for a trained toy model (the checks read its files, not its weights). */
const MODEL = Deno.makeTempDirSync({ prefix: "manifest_test_model_" });
Deno.writeTextFileSync(
  `${MODEL}/config.json`,
  JSON.stringify({ format: "scalar-lab/gpt", model: SHAKESPEARE_64X4, tokenizer: "char" }),
);
Deno.writeTextFileSync(`${MODEL}/model.safetensors`, "");
/** A folder that passes for a Hugging Face GPT-2 Small (the checks read config.json only). */
const GPT2 = Deno.makeTempDirSync({ prefix: "manifest_test_gpt2_" });
Deno.writeTextFileSync(`${GPT2}/config.json`, JSON.stringify(hfConfigFromGpt(GPT2_SMALL)));
Deno.writeTextFileSync(`${GPT2}/model.safetensors`, "");
/** The sha256 of the empty weights files above, and of the registered corpus: part of run ids. */
const CONTENT = {
  modelSha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  dataSha256: CORPORA.tinyshakespeare!.sha256,
};
globalThis.addEventListener("unload", () => {
  Deno.removeSync(MODEL, { recursive: true });
  Deno.removeSync(GPT2, { recursive: true });
  Deno.removeSync(CORPUS, { recursive: true });
});

/** A local corpus folder (manifest checking hashes its files). */
const CORPUS = Deno.makeTempDirSync({ prefix: "manifest_test_corpus_" });
Deno.writeTextFileSync(`${CORPUS}/a.jsonl`, '{"body": "to be"}\n');

/** Lines 1–2 of every test manifest: a name and the model. */
const HEAD = `name: t\nmodel: { checkpoint: ${MODEL} }\n`;

const expand = (body: string): Promise<ManifestExpansion> =>
  expandManifestText("m.yaml", HEAD + body);

/** The runs as [seed, varied] pairs. */
const grid = (e: ManifestExpansion) => e.runs.map((r) => [r.seed, r.varied]);

/** The problem lines of a rejected manifest, without the leading spaces. */
async function problems(text: string): Promise<string[]> {
  const err = await expandManifestText("m.yaml", text).then(() => undefined, (e) => e);
  assert.ok(err instanceof ManifestError, `expected a ManifestError, got ${err}`);
  assert.doesNotMatch(err.message, /\n\s+at /, "no stack trace in the message");
  return err.message.split("\n").slice(1).map((l) => l.trim());
}

Deno.test("expandManifestText() without a matrix gives one run per seed with the paper's defaults", async () => {
  const e = await expand("seeds: [0, 1]\n");
  assert.equal(e.manifest.name, "t");
  assert.equal(e.manifest.backend, "auto");
  assert.deepEqual(e.manifest.varied, []);
  assert.deepEqual(grid(e), [[0, {}], [1, {}]]);
  const expected: SaeRunConfig = {
    modelDir: MODEL,
    ...CONTENT,
    corpus: "tinyshakespeare",
    position: "mlp",
    sae: { arch: "topk", features: 512, k: 10, jsaeLambda: 0.001 },
    train: { ...SAE_TRAIN_DEFAULTS, seed: 1 },
    evalSequences: 0,
    scalar: { ...SCALAR_DEFAULTS },
  };
  assert.deepEqual(e.runs[1]!.config, expected);
  assert.equal(e.runs[1]!.id, runId(expected));
  assert.equal(e.runs[1]!.backend, "auto");
});

Deno.test("expandManifestText() maps every field of the manifest into the run's config", async () => {
  const e = await expand(
    [
      "data: { corpus: tinyshakespeare }",
      "position: mlp-block",
      "sae: { arch: staircase, features: 64, k: 4, jsae: { lambda: 0.5 } }",
      "train: { steps: 20, batch: 8, lr: 0.01, min_lr: 0.001, warmup: 2, beta1: 0.8, beta2: 0.9,",
      "  weight_decay: 0.1, grad_clip: 2, log_every: 5, checkpoint_every: 10 }",
      "eval: { sequences: 16 }",
      "scalar: { enabled: false, ig_steps: 3, ig_batches: 2, ig_batch_size: 4, prompts: 7,",
      "  bootstrap: 100, edges: log2-half }",
      "seeds: [9]",
      "backend: cpu",
    ].join("\n"),
  );
  assert.deepEqual(e.runs.map((r) => [r.backend, r.config]), [["cpu", {
    modelDir: MODEL,
    ...CONTENT,
    corpus: "tinyshakespeare",
    position: "mlp-block",
    sae: { arch: "staircase", features: 64, k: 4, jsaeLambda: 0.5 },
    train: {
      steps: 20,
      batch: 8,
      lr: 0.01,
      minLr: 0.001,
      warmup: 2,
      beta1: 0.8,
      beta2: 0.9,
      weightDecay: 0.1,
      gradClip: 2,
      logEvery: 5,
      checkpointEvery: 10,
      seed: 9,
    },
    evalSequences: 16,
    scalar: {
      enabled: false,
      igSteps: 3,
      igSequences: 8,
      igBatch: 4,
      prompts: 7,
      bootstrap: 100,
    },
  }]]);
});

Deno.test("expandManifestText() expands the matrix by dotted paths, seeds slowest", async () => {
  const e = await expand(
    "seeds: [0, 1]\nmatrix:\n  sae.arch: [topk, staircase]\n  sae.k: [8, 16]\n",
  );
  assert.deepEqual(grid(e), [
    [0, { "sae.arch": "topk", "sae.k": 8 }],
    [0, { "sae.arch": "topk", "sae.k": 16 }],
    [0, { "sae.arch": "staircase", "sae.k": 8 }],
    [0, { "sae.arch": "staircase", "sae.k": 16 }],
    [1, { "sae.arch": "topk", "sae.k": 8 }],
    [1, { "sae.arch": "topk", "sae.k": 16 }],
    [1, { "sae.arch": "staircase", "sae.k": 8 }],
    [1, { "sae.arch": "staircase", "sae.k": 16 }],
  ]);
  assert.deepEqual(e.manifest.varied, ["sae.arch", "sae.k"]);
  assert.deepEqual(e.runs.map((r) => [r.config.sae.arch, r.config.sae.k, r.config.train.seed]), [
    ["topk", 8, 0],
    ["topk", 16, 0],
    ["staircase", 8, 0],
    ["staircase", 16, 0],
    ["topk", 8, 1],
    ["topk", 16, 1],
    ["staircase", 8, 1],
    ["staircase", 16, 1],
  ]);
  assert.equal(new Set(e.runs.map((r) => r.id)).size, 8);
});

Deno.test("expandManifestText() applies exclude, then include entries that extend or add", async () => {
  const e = await expand(
    [
      "seeds: [0, 1]",
      "matrix:",
      "  sae.arch: [topk, jsae]",
      "  train.steps: [1000, 2000]",
      "  exclude:",
      "    - { sae.arch: topk, train.steps: 2000 }",
      "  include:",
      "    - { sae.arch: jsae, sae.jsae.lambda: 0.01 }", // extends every jsae combination
      "    - { sae.arch: staircase, sae.features: 256 }", // agrees with none: new, per seed
      "    - { sae.arch: topk, seed: 1, train.lr: 0.002 }", // extends topk at seed 1 only
    ].join("\n"),
  );
  assert.deepEqual(grid(e), [
    [0, { "sae.arch": "topk", "train.steps": 1000 }],
    [0, { "sae.arch": "jsae", "train.steps": 1000, "sae.jsae.lambda": 0.01 }],
    [0, { "sae.arch": "jsae", "train.steps": 2000, "sae.jsae.lambda": 0.01 }],
    [1, { "sae.arch": "topk", "train.steps": 1000, "train.lr": 0.002 }],
    [1, { "sae.arch": "jsae", "train.steps": 1000, "sae.jsae.lambda": 0.01 }],
    [1, { "sae.arch": "jsae", "train.steps": 2000, "sae.jsae.lambda": 0.01 }],
    [0, { "sae.arch": "staircase", "sae.features": 256 }],
    [1, { "sae.arch": "staircase", "sae.features": 256 }],
  ]);
  assert.deepEqual(e.manifest.varied, [
    "sae.arch",
    "train.steps",
    "sae.jsae.lambda",
    "train.lr",
    "sae.features",
  ]);
  const staircase = e.runs.at(-1)!.config;
  assert.deepEqual([staircase.sae.features, staircase.train.steps], [256, 7500]);
  assert.equal(e.runs[3]!.config.train.lr, 0.002);
  assert.equal(e.runs[0]!.config.train.lr, 0.001);
});

Deno.test("expandManifestText() varies a list field by whole lists, on an axis or in include", async () => {
  const e = await expand(
    [
      "position: mlp",
      "matrix:",
      "  model.layers: [[0], [1, 2]]",
      "  exclude:",
      "    - { model.layers: [0] }",
      "  include:",
      "    - { model.layers: [1, 2], sae.k: 8 }", // extends the axis value it names, item by item
      "    - { sae.arch: jsae, model.layers: [3] }",
    ].join("\n"),
  );
  assert.deepEqual(grid(e), [
    [0, { "model.layers": [1, 2], "sae.k": 8 }],
    [0, { "sae.arch": "jsae", "model.layers": [3] }],
  ]);
  assert.deepEqual(e.runs.map((r) => r.config.layers), [[1, 2], [3]]);
});

Deno.test("expandManifestText() advances zipped lists together as one axis", async () => {
  const e = await expand(
    [
      "seeds: [3]",
      "matrix:",
      "  sae.arch: [topk, staircase]",
      "  zip:",
      "    sae.features: [256, 512]",
      "    sae.k: [8, 16]",
    ].join("\n"),
  );
  assert.deepEqual(grid(e), [
    [3, { "sae.arch": "topk", "sae.features": 256, "sae.k": 8 }],
    [3, { "sae.arch": "topk", "sae.features": 512, "sae.k": 16 }],
    [3, { "sae.arch": "staircase", "sae.features": 256, "sae.k": 8 }],
    [3, { "sae.arch": "staircase", "sae.features": 512, "sae.k": 16 }],
  ]);
});

Deno.test("expandManifestText() takes seeds from the matrix's seed axis, in file order", async () => {
  const e = await expand(
    "seeds: [0, 1, 2]\nmatrix:\n  position: [mlp, block]\n  seed: [5, 6]\n",
  );
  assert.deepEqual(grid(e), [
    [5, { position: "mlp" }],
    [6, { position: "mlp" }],
    [5, { position: "block" }],
    [6, { position: "block" }],
  ]);
});

Deno.test("expandManifestText() runs include-only combinations over every seed", async () => {
  const e = await expand(
    [
      "seeds: [0, 1]",
      "matrix:",
      "  include:",
      "    - { sae.arch: topk }",
      "    - { sae.arch: jsae, sae.jsae.lambda: 0.01 }",
    ].join("\n"),
  );
  assert.deepEqual(grid(e), [
    [0, { "sae.arch": "topk" }],
    [1, { "sae.arch": "topk" }],
    [0, { "sae.arch": "jsae", "sae.jsae.lambda": 0.01 }],
    [1, { "sae.arch": "jsae", "sae.jsae.lambda": 0.01 }],
  ]);
});

Deno.test("expandManifest() accepts the vocabulary of the reference sketch", async () => {
  const sketch = await Deno.readTextFile(
    new URL("../../../shared/reference/manifest-example.yaml", import.meta.url),
  ).catch(() => undefined);
  if (sketch === undefined) return; // shared/ is beside the checkout only in the workplace
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/toy-mlp.yaml`;
    await Deno.writeTextFile(
      file,
      sketch.replace(/^ {2}config: .*$/m, (line) => `${line}\n  checkpoint: ${MODEL}`),
    );
    const e = await expandManifest(file);
    // 3 architectures × 5 seeds, less staircase at seed 4; jsae gets λ = 0.01.
    assert.equal(e.runs.length, 14);
    assert.ok(
      e.runs.every((r) => (r.config.sae.arch === "jsae") === (r.config.sae.jsaeLambda === 0.01)),
    );
    assert.equal(e.runs[0]!.config.scalar.igSequences, 24 * 24);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Malformed manifests: each gives exactly these problem lines. */
const MALFORMED: { what: string; text: string; expect: string[] }[] = [
  {
    what: "unknown key with a suggestion",
    text: `${HEAD}sae:\n  featurs: 256\n`,
    expect: [
      'm.yaml:4:3: sae.featurs: unknown field "featurs" (did you mean "features"?); allowed: ' +
      "arch, features, k, jsae",
    ],
  },
  {
    what: "wrong type",
    text: `${HEAD}train:\n  steps: many\n`,
    expect: ['m.yaml:4:3: train.steps: expected a number, got string "many"'],
  },
  {
    what: "out of range",
    text: `${HEAD}sae: { k: 0 }\n`,
    expect: ["m.yaml:3:8: sae.k: must be ≥ 1, got 0"],
  },
  {
    what: "bad enum",
    text: `${HEAD}position: blok\n`,
    expect: [
      'm.yaml:3:1: position: "blok" is not one of mlp, mlp-block, block (did you mean "block"?)',
    ],
  },
  {
    what: "jsae at block, directly",
    text: `${HEAD}position: block\nsae:\n  arch: jsae\n`,
    expect: [
      'm.yaml:5:3: sae.arch: Cannot train "jsae" at position "block": its Jacobian needs an MLP ' +
      "between the pair, and attention mixes positions, so no cheap closed form exists (the " +
      'paper\'s finding); use "mlp" or another architecture',
    ],
  },
  {
    what: "jsae at block, through the matrix",
    text: `${HEAD}position: block\nseeds: [0, 1]\nmatrix:\n  sae.arch: [topk, jsae]\n`,
    expect: [
      'm.yaml:6:20: matrix.sae.arch[1]: Cannot train "jsae" at position "block": its Jacobian ' +
      "needs an MLP between the pair, and attention mixes positions, so no cheap closed form " +
      'exists (the paper\'s finding); use "mlp" or another architecture',
    ],
  },
  {
    what: "jsae at mlp-block, through a matrix position",
    text: `${HEAD}sae: { arch: jsae }\nmatrix:\n  position: [mlp, mlp-block]\n`,
    expect: [
      'm.yaml:5:19: matrix.position[1]: Cannot train "jsae" at position "mlp-block": only "mlp" ' +
      "is supported (the paper's tables use JSAEs across the MLP alone; the block Jacobian " +
      "through ln_2 is not implemented)",
    ],
  },
  {
    what: "zip lists of unequal length",
    text: `${HEAD}matrix:\n  zip:\n    sae.features: [256, 512]\n    sae.k: [4, 8, 16]\n`,
    expect: [
      'm.yaml:6:5: matrix.zip.sae.k: has 3 values but "sae.features" has 2: zipped lists ' +
      "advance together, so they need the same length",
    ],
  },
  {
    what: "unknown matrix path",
    text: `${HEAD}matrix:\n  sae.kk: [4, 8]\n`,
    expect: ['m.yaml:4:3: matrix.sae.kk: unknown field path "sae.kk" (did you mean "sae.k"?)'],
  },
  {
    what: "non-list matrix value",
    text: `${HEAD}matrix:\n  sae.k: 8\n`,
    expect: [
      'm.yaml:4:3: matrix.sae.k: expected a list of values to vary "sae.k" over, got number 8',
    ],
  },
  {
    what: "bad value in a matrix list",
    text: `${HEAD}matrix:\n  train.lr: [0.001, -1]\n`,
    expect: ["m.yaml:4:21: matrix.train.lr[1]: must be > 0, got -1"],
  },
  {
    what: "include with an unknown key",
    text: `${HEAD}matrix:\n  sae.arch: [topk, jsae]\n  include:\n    - sae.arch: jsae\n` +
      `      sae.jsae.lamda: 0.01\n`,
    expect: [
      "m.yaml:7:7: matrix.include[0].sae.jsae.lamda: unknown field path " +
      '"sae.jsae.lamda" (did you mean "sae.jsae.lambda"?)',
    ],
  },
  {
    what: "exclude naming a field the matrix does not vary",
    text:
      `${HEAD}matrix:\n  sae.arch: [topk, jsae]\n  exclude:\n    - { sae.arch: jsae, sae.k: 4 }\n`,
    expect: [
      'm.yaml:6:25: matrix.exclude[0].sae.k: "sae.k" is not varied by the matrix; exclude ' +
      "entries name its axes (sae.arch, seed)",
    ],
  },
  {
    what: "exclude that matches nothing",
    text: `${HEAD}seeds: [0, 1]\nmatrix:\n  sae.arch: [topk, jsae]\n  exclude:\n` +
      `    - { sae.arch: jsae, seed: 4 }\n`,
    expect: ["m.yaml:7:7: matrix.exclude[0]: matches no combination, so it excludes nothing"],
  },
  {
    what: "a list field varied by its items instead of by lists",
    text: `${HEAD}matrix:\n  model.layers: [0, [1]]\n`,
    expect: [
      'm.yaml:4:18: matrix.model.layers[0]: "model.layers" takes a list, so each value is one: ' +
      "e.g. [[0], [1, 2]], got number 0",
    ],
  },
  {
    what: "a list value repeated in a matrix list",
    text: `${HEAD}matrix:\n  model.layers: [[1, 2], [1, 2]]\n`,
    expect: ["m.yaml:4:26: matrix.model.layers[1]: [1,2] is already in the list"],
  },
  {
    what: "a layer list in include that the model lacks",
    text: `${HEAD}matrix:\n  include:\n    - { sae.k: 4, model.layers: [4] }\n`,
    expect: [
      "m.yaml:5:19: matrix.include[0].model.layers: layer 4 is not in the model (its layers are " +
      "0 … 3)",
    ],
  },
  {
    what: "backend in the matrix",
    text: `${HEAD}matrix:\n  backend: [cpu, wasm]\n`,
    expect: [
      'm.yaml:4:3: matrix.backend: "backend" cannot be varied: runs that differ only in backend ' +
      "are the same run (one id); use --backend instead",
    ],
  },
  {
    what: "a combination that repeats another",
    text: `${HEAD}matrix:\n  sae.k: [4, 8]\n  include:\n` +
      `    - { sae.k: 16, sae.arch: staircase }\n    - { sae.k: 16, sae.arch: staircase }\n`,
    expect: [
      'm.yaml:7:20: matrix.include[1].sae.arch: combination {sae.k: 16, sae.arch: "staircase"} ' +
      "is already in the grid",
    ],
  },
  {
    what: "k above the features, through a zip",
    text: `${HEAD}matrix:\n  zip:\n    sae.features: [16, 32]\n    sae.k: [20, 8]\n`,
    expect: [
      "m.yaml:6:13: matrix.zip.sae.k[0]: k = 20 is more than the 16 features: TopK keeps k of them",
    ],
  },
  {
    what: "repeated seeds",
    text: `${HEAD}seeds: [0, 1, 0]\n`,
    expect: ["m.yaml:3:1: seeds: item 3: 0 is already in the list"],
  },
  {
    what: "warm-up longer than training",
    text: `${HEAD}train: { steps: 100 }\n`,
    expect: [
      "m.yaml:3:10: train.steps: warm-up of 750 steps is longer than training (100 steps): the " +
      "learning rate would never reach its peak",
    ],
  },
  {
    what: "missing name",
    text: `model: { checkpoint: ${MODEL} }\n`,
    expect: [
      "m.yaml:1:1: name: required field is missing (Experiment name: its runs are stored under " +
      "it in the results database)",
    ],
  },
  {
    what: "YAML syntax error",
    text: `${HEAD}sae: { k: 4\nposition: mlp\n`,
    expect: [
      "m.yaml:4:1: Flow map in block collection must be sufficiently indented and end with a }",
    ],
  },
  {
    what: "missing checkpoint folder",
    text: "name: t\nmodel:\n  checkpoint: /nonexistent/models/toy\n",
    expect: [
      'm.yaml:3:3: model.checkpoint: Cannot find trained model "/nonexistent/models/toy": the ' +
      "folder does not exist; train it with `deno task train-model experiments/toy-model.yaml`",
    ],
  },
  {
    what: "missing reduced model",
    text: "name: t\nmodel:\n  checkpoint: /nonexistent/models/toy-model-2k\n",
    expect: [
      'm.yaml:3:3: model.checkpoint: Cannot find trained model "/nonexistent/models/toy-model-2k": ' +
      "the folder does not exist; train it with `deno task train-model " +
      "experiments/reduced/toy-model.yaml`",
    ],
  },
  {
    what: "missing best-validation weights of a reduced fine-tune",
    text: "name: t\nmodel:\n  checkpoint: /nonexistent/models/toy-model-dyt-2k-best\n",
    expect: [
      "m.yaml:3:3: model.checkpoint: Cannot find trained model " +
      '"/nonexistent/models/toy-model-dyt-2k-best": the folder does not exist; train it with ' +
      "`deno task train-model experiments/reduced/toy-model-dyt.yaml`",
    ],
  },
  {
    what: "missing shipped model",
    text: "name: t\nmodel:\n  checkpoint: models/absent-model\n",
    expect: [
      'm.yaml:3:3: model.checkpoint: Cannot find trained model "models/absent-model": the ' +
      "folder does not exist; it ships with the project (restore it with `git checkout -- " +
      "models/absent-model`), or train it with `deno task train-model " +
      "experiments/toy-model.yaml` and copy results/models/toy-model-best to models/absent-model",
    ],
  },
  {
    what: "a GPT-2 folder without weights",
    text: `name: t\nmodel:\n  kind: gpt2\n  path: ${GPT2}/empty\n`,
    expect: [
      `m.yaml:4:3: model.path: Cannot find GPT-2 in "${GPT2}/empty": config.json and ` +
      `model.safetensors are missing; with internet access: huggingface-cli download ` +
      `openai-community/gpt2 config.json model.safetensors --local-dir ${GPT2}/empty`,
    ],
  },
  {
    what: "GPT-2 without a path",
    text: "name: t\nmodel:\n  kind: gpt2\n",
    expect: [
      'm.yaml:3:3: model.kind: kind "gpt2" needs model.path: the folder with config.json and ' +
      "model.safetensors",
    ],
  },
  {
    what: "layers the model does not have",
    text: `name: t\nmodel:\n  kind: gpt2\n  path: ${GPT2}\n  layers: [1, 12]\n`,
    expect: ["m.yaml:5:3: model.layers: layer 12 is not in the model (its layers are 0 … 11)"],
  },
  {
    what: "a block chain with gaps",
    text: `name: t\nmodel: { checkpoint: ${MODEL}, layers: [0, 2] }\nposition: block\n`,
    expect: [
      `m.yaml:2:${`model: { checkpoint: ${MODEL}, `.length + 1}: model.layers: [0, 2] has gaps: ` +
      'at "block" the SAEs form one chain through consecutive blocks',
    ],
  },
  {
    what: "a micro-batch larger than the batch",
    text: `${HEAD}train: { batch: 8, micro_batch: 16 }\n`,
    expect: [
      "m.yaml:3:20: train.micro_batch: micro_batch = 16 is more than the batch of 8 sequences",
    ],
  },
];

for (const { what, text, expect } of MALFORMED) {
  Deno.test(`expandManifestText() rejects a manifest with ${what}`, async () => {
    assert.deepEqual(await problems(text), expect);
  });
}

Deno.test("expandManifestText() reports every problem of a file together, in file order", async () => {
  const text = [
    "name: t", //                                   1
    `model: { checkpoint: ${MODEL}/nothing }`, //   2
    "position: block", //                           3
    "sae:", //                                      4
    "  arch: jsae", //                              5
    "  k: ten", //                                  6
    "matrix:", //                                   7
    "  sae.arch: [topk, stairs]", //                8
    "  train.stepz: [1]", //                        9
  ].join("\n");
  const lines = await problems(text);
  assert.deepEqual(lines.map((l) => l.replace(/: .*$/s, "")), [
    "m.yaml:2:10", // the missing model
    "m.yaml:6:3", // sae.k
    "m.yaml:8:20", // stairs
    "m.yaml:9:3", // train.stepz
  ]);
  // jsae at block is not reported: the matrix replaces sae.arch in every run.
  assert.ok(lines.every((l) => !l.includes("Cannot train")));
});

Deno.test("expandManifest() reports a missing file without a stack trace", async () => {
  await assert.rejects(
    expandManifest("/nonexistent/x.yaml"),
    (e) => e instanceof ManifestError && /x\.yaml:0:0: the file does not exist/.test(e.message),
  );
});

Deno.test("runId() is the same for the same config, whatever the key order", async () => {
  const a = await expand("sae: { arch: staircase, k: 4 }\nseeds: [3]\ntrain: { steps: 900 }\n");
  const b = await expandManifestText(
    "other.yaml",
    `train:\n  steps: 900\nseeds: [3]\nmodel:\n  checkpoint: ${MODEL}/\nsae:\n  k: 4\n` +
      "  arch: staircase\nname: other\nbackend: cpu\n",
  );
  assert.equal(a.runs[0]!.id, b.runs[0]!.id);
  const config = a.runs[0]!.config;
  const reversed = JSON.parse(
    canonicalJson(config),
    (_, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).reverse())
        : v,
  );
  assert.notEqual(JSON.stringify(reversed), JSON.stringify(config));
  assert.equal(runId(reversed), runId(config));
  // The same matrix point reached by a matrix or by plain fields is the same run.
  const c = await expand(
    "seeds: [3]\ntrain: { steps: 900 }\nmatrix:\n  sae.k: [4]\n" +
      "  sae.arch: [staircase]\n",
  );
  assert.equal(c.runs[0]!.id, a.runs[0]!.id);
});

Deno.test("a matrix over model folders tells runs apart by the weights, not by the path", async () => {
  const other = Deno.makeTempDirSync({ prefix: "manifest_test_model_" });
  const copy = Deno.makeTempDirSync({ prefix: "manifest_test_model_" });
  try {
    for (const dir of [other, copy]) {
      Deno.copyFileSync(`${MODEL}/config.json`, `${dir}/config.json`);
    }
    Deno.writeTextFileSync(`${other}/model.safetensors`, "other weights");
    Deno.writeTextFileSync(`${copy}/model.safetensors`, "");
    const two = await expand(`matrix:\n  model.checkpoint: [${MODEL}, ${other}]\n`);
    assert.equal(new Set(two.runs.map((r) => r.id)).size, 2);
    assert.deepEqual(await problems(`${HEAD}matrix:\n  model.checkpoint: [${MODEL}, ${copy}]\n`), [
      `m.yaml:4:${`  model.checkpoint: [${MODEL}, `.length + 1}: matrix.model.checkpoint[1]: ` +
      `combination {model.checkpoint: "${copy}"} is the same run as ` +
      `{model.checkpoint: "${MODEL}"} (the same resolved config)`,
    ]);
  } finally {
    Deno.removeSync(other, { recursive: true });
    Deno.removeSync(copy, { recursive: true });
  }
});

Deno.test("runId() changes with every setting, the seed, the weights and the data, not with paths", () => {
  const base: SaeRunConfig = {
    modelDir: "results/models/toy-model",
    ...CONTENT,
    corpus: "tinyshakespeare",
    position: "mlp",
    sae: { arch: "topk", features: 512, k: 10, jsaeLambda: 0.001 },
    train: { ...SAE_TRAIN_DEFAULTS },
    evalSequences: 0,
    scalar: { ...SCALAR_DEFAULTS },
  };
  // Pinned: a new id for the same config would orphan every stored run.
  assert.equal(runId(base), runId(structuredClone(base)));
  assert.equal(runId(base), "5f09fe116cde");
  // Where the files lie is no part of what a run computes.
  assert.equal(runId({ ...base, modelDir: "elsewhere", dataPath: "x.txt" }), runId(base));
  const ids = new Set([runId(base)]);
  const visit = (node: Record<string, unknown>, path: string) => {
    for (const [key, value] of Object.entries(node)) {
      if (key === "modelDir") continue;
      if (typeof value === "object" && value !== null) {
        visit(value as Record<string, unknown>, `${path}${key}.`);
        continue;
      }
      node[key] = typeof value === "number"
        ? value + 1
        : typeof value === "boolean"
        ? !value
        : `${value}x`;
      const id = runId(base);
      assert.ok(!ids.has(id), `changing ${path}${key} must change the id`);
      ids.add(id);
      node[key] = value;
    }
  };
  visit(base as unknown as Record<string, unknown>, "");
  // base, then the leaves: top (content hashes included), sae, train, scalar
  assert.equal(ids.size, 1 + 5 + 4 + 12 + 6);
});

Deno.test("canonicalJson() refuses values JSON cannot hold", () => {
  assert.throws(() => canonicalJson({ a: NaN }), /Cannot write NaN as canonical JSON/);
});

Deno.test("expandManifestText() maps a GPT-2 manifest: folder, layers, local data, micro-batches", async () => {
  const { runs } = await expandManifestText(
    "m.yaml",
    `name: g\nmodel: { kind: gpt2, path: ${GPT2}/, layers: [1, 6, 11] }\n` +
      `data: { path: ${CORPUS}/, text_field: body }\nposition: mlp-block\n` +
      `train: { batch: 32, micro_batch: 1 }\n`,
  );
  const c = runs[0]!.config;
  assert.equal(c.modelKind, "gpt2");
  assert.equal(c.modelDir, GPT2);
  assert.deepEqual(c.layers, [1, 6, 11]);
  assert.equal(c.dataPath, CORPUS);
  assert.equal(c.textField, "body");
  assert.equal(c.train.microBatch, 1);
  // Unset optional fields stay out of the config, so toy runs keep the ids they always had.
  const toy = (await expand("")).runs[0]!.config;
  for (const key of ["modelKind", "layers", "dataPath", "textField"]) assert.ok(!(key in toy), key);
  assert.ok(!("microBatch" in toy.train));
});

Deno.test("expandManifestText() refuses a shipped model folder whose weights are not the shipped ones", async () => {
  const root = Deno.cwd(), dir = await Deno.makeTempDir({ prefix: "manifest_test_shipped_" });
  await Deno.mkdir(`${dir}/models`);
  await Deno.rename(await Deno.makeTempDir({ dir }), `${dir}/models/toy-model`);
  await Deno.copyFile(`${MODEL}/config.json`, `${dir}/models/toy-model/config.json`);
  await Deno.writeTextFile(`${dir}/models/toy-model/model.safetensors`, "");
  Deno.chdir(dir);
  try {
    assert.deepEqual(await problems("name: t\nmodel: { checkpoint: ./models/toy-model/ }\n"), [
      'm.yaml:2:10: model.checkpoint: Cannot use shipped model "models/toy-model": its ' +
      `weights' sha256 is ${CONTENT.modelSha256.slice(0, 12)}…, the shipped model's is ` +
      `${SHIPPED_MODELS["models/toy-model"]!.sha256.slice(0, 12)}…; restore it with ` +
      "`git checkout -- models/toy-model` (or train it again with `deno task train-model " +
      "experiments/toy-model.yaml` into a folder of another name)",
    ]);
  } finally {
    Deno.chdir(root);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("expandManifestText() runs on the shipped toy model: its weights hash to the registered sha256", async () => {
  const { runs } = await expandManifestText(
    "m.yaml",
    "name: t\nmodel: { checkpoint: models/toy-model }\n",
  );
  assert.equal(runs[0]!.config.modelSha256, SHIPPED_MODELS["models/toy-model"]!.sha256);
});

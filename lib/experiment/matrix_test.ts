import assert from "node:assert/strict";
import {
  type Combination,
  expandMatrix,
  type MatrixAxis,
  type MatrixOrigin,
  type MatrixValue,
  readMatrix,
} from "./matrix.ts";
import { MATRIX_FIELDS, MATRIX_FIXED } from "./manifest.ts";

type Plain = Record<string, MatrixValue>;

const combo = (entry: Plain): Combination<null> =>
  new Map(Object.entries(entry).map(([k, value]) => [k, { value, origin: null }]));
const axis = (path: string, values: MatrixValue[]): MatrixAxis<null> => ({
  paths: [path],
  rows: values.map((value) => combo({ [path]: value })),
});
const plain = (cs: Combination<unknown>[]): Plain[] =>
  cs.map((c) => Object.fromEntries([...c].map(([k, cell]) => [k, cell.value])));

Deno.test("expandMatrix() forms the product with the first axis slowest", () => {
  const { combinations } = expandMatrix({
    axes: [axis("a", [1, 2]), axis("b", ["x", "y", "z"])],
    exclude: [],
    include: [],
  });
  assert.deepEqual(plain(combinations), [
    { a: 1, b: "x" },
    { a: 1, b: "y" },
    { a: 1, b: "z" },
    { a: 2, b: "x" },
    { a: 2, b: "y" },
    { a: 2, b: "z" },
  ]);
});

Deno.test("expandMatrix() reproduces the include example of the GitHub Actions docs", () => {
  // docs.github.com, "Running variations of jobs in a workflow": expanding a matrix.
  const { combinations } = expandMatrix({
    axes: [axis("fruit", ["apple", "pear"]), axis("animal", ["cat", "dog"])],
    exclude: [],
    include: [
      combo({ color: "green" }),
      combo({ color: "pink", animal: "cat" }),
      combo({ fruit: "apple", shape: "circle" }),
      combo({ fruit: "banana" }),
      combo({ fruit: "banana", animal: "cat" }),
    ],
  });
  assert.deepEqual(plain(combinations), [
    { fruit: "apple", animal: "cat", color: "pink", shape: "circle" },
    { fruit: "apple", animal: "dog", color: "green", shape: "circle" },
    { fruit: "pear", animal: "cat", color: "pink" },
    { fruit: "pear", animal: "dog", color: "green" },
    { fruit: "banana" },
    { fruit: "banana", animal: "cat" },
  ]);
});

Deno.test("expandMatrix() drops excluded combinations before include and counts matches", () => {
  const { combinations, excluded } = expandMatrix({
    axes: [axis("os", ["linux", "mac"]), axis("v", [1, 2])],
    exclude: [new Map<string, MatrixValue>([["os", "mac"], ["v", 1]]), new Map([["v", 3]])],
    // Agrees with the excluded {mac, 1} only: that combination is gone, so this one is new.
    include: [combo({ os: "mac", v: 1, extra: true })],
  });
  assert.deepEqual(plain(combinations), [
    { os: "linux", v: 1 },
    { os: "linux", v: 2 },
    { os: "mac", v: 2 },
    { os: "mac", v: 1, extra: true },
  ]);
  assert.deepEqual(excluded, [1, 0]);
});

Deno.test("expandMatrix() treats a zip group as one axis", () => {
  const zipped: MatrixAxis<null> = {
    paths: ["f", "k"],
    rows: [combo({ f: 256, k: 8 }), combo({ f: 512, k: 16 })],
  };
  const { combinations } = expandMatrix({
    axes: [axis("arch", ["topk", "staircase"]), zipped],
    exclude: [],
    include: [],
  });
  assert.deepEqual(plain(combinations), [
    { arch: "topk", f: 256, k: 8 },
    { arch: "topk", f: 512, k: 16 },
    { arch: "staircase", f: 256, k: 8 },
    { arch: "staircase", f: 512, k: 16 },
  ]);
});

Deno.test("expandMatrix() runs an added combination over the repeated axis unless it names it", () => {
  const { combinations } = expandMatrix({
    axes: [axis("seed", [0, 1]), axis("arch", ["topk"])],
    repeatAxis: 0,
    exclude: [],
    include: [
      combo({ arch: "topk", lr: 0.002 }), // extends both seeds
      combo({ arch: "jsae" }), // new: once per seed
      combo({ arch: "staircase", seed: 7 }), // new, with its own seed
    ],
  });
  assert.deepEqual(plain(combinations), [
    { seed: 0, arch: "topk", lr: 0.002 },
    { seed: 1, arch: "topk", lr: 0.002 },
    { arch: "jsae", seed: 0 },
    { arch: "jsae", seed: 1 },
    { arch: "staircase", seed: 7 },
  ]);
});

Deno.test("expandMatrix() makes each include entry a combination when only seeds vary", () => {
  const { combinations } = expandMatrix({
    axes: [axis("seed", [0, 1])],
    repeatAxis: 0,
    exclude: [],
    include: [combo({ arch: "topk" }), combo({ arch: "jsae", lambda: 0.01 })],
  });
  assert.deepEqual(plain(combinations), [
    { arch: "topk", seed: 0 },
    { arch: "topk", seed: 1 },
    { arch: "jsae", lambda: 0.01, seed: 0 },
    { arch: "jsae", lambda: 0.01, seed: 1 },
  ]);
  // With nothing to include, the empty matrix is one combination per seed.
  const bare = expandMatrix({
    axes: [axis("seed", [0, 1])],
    repeatAxis: 0,
    exclude: [],
    include: [],
  });
  assert.deepEqual(plain(bare.combinations), [{ seed: 0 }, { seed: 1 }]);
});

Deno.test("readMatrix() reads axes, zip, include and exclude with their origins", () => {
  const problems: string[] = [];
  const seeds: MatrixAxis<MatrixOrigin> = {
    paths: ["seed"],
    rows: [0, 1].map((value, i) =>
      new Map([["seed", { value, origin: { segments: ["seeds", i], field: `seeds[${i}]` } }]])
    ),
  };
  const { spec, excludeOrigins } = readMatrix({
    "sae.arch": ["topk", "jsae"],
    zip: { "sae.features": [256, 512], "sae.k": [8, 16] },
    include: [{ "sae.arch": "jsae", "sae.jsae.lambda": 0.01 }],
    exclude: [{ "sae.arch": "topk", seed: 1 }],
  }, {
    fields: MATRIX_FIELDS,
    fixed: MATRIX_FIXED,
    repeatPath: "seed",
    defaultRepeat: seeds,
    report: (o, m) => problems.push(`${o.field}: ${m}`),
  });
  assert.deepEqual(problems, []);
  assert.deepEqual(spec.axes.map((a) => a.paths), [["seed"], ["sae.arch"], [
    "sae.features",
    "sae.k",
  ]]);
  assert.equal(spec.repeatAxis, 0);
  assert.deepEqual(spec.axes[1]!.rows[1]!.get("sae.arch")!.origin, {
    segments: ["matrix", "sae.arch", 1],
    field: "matrix.sae.arch[1]",
  });
  assert.equal(spec.axes[2]!.rows[1]!.get("sae.k")!.origin.field, "matrix.zip.sae.k[1]");
  const lambda = spec.include[0]!.get("sae.jsae.lambda")!;
  assert.equal(lambda.origin.field, "matrix.include[0].sae.jsae.lambda");
  assert.deepEqual(spec.exclude, [
    new Map<string, MatrixValue>([["sae.arch", "topk"], ["seed", 1]]),
  ]);
  assert.deepEqual(excludeOrigins.map((o) => o.field), ["matrix.exclude[0]"]);
});

Deno.test("readMatrix() reports every problem and keeps the valid rest", () => {
  const problems: string[] = [];
  const { spec } = readMatrix({
    "sae.arch": ["topk", "jsea", "topk"],
    "sae.ks": [1],
    "sae.k": 8,
    sae: [1],
    backend: ["cpu"],
    seeds: [1, 2],
    zip: { "train.steps": [1, 2], "train.lr": [0.1] },
    include: [{ "sae.jsae.lamda": 1 }, "topk"],
    exclude: [{ "train.batch": 4 }, {}],
  }, {
    fields: MATRIX_FIELDS,
    fixed: MATRIX_FIXED,
    repeatPath: "seed",
    defaultRepeat: { paths: ["seed"], rows: [] },
    report: (o, m) => problems.push(`${o.field}: ${m}`),
  });
  assert.deepEqual(problems, [
    'matrix.sae.arch[1]: "jsea" is not one of topk, staircase, staircase-detached, jsae ' +
    '(did you mean "jsae"?)',
    'matrix.sae.arch[2]: "topk" is already in the list',
    'matrix.sae.ks: unknown field path "sae.ks" (did you mean "sae.k"?)',
    'matrix.sae.k: expected a list of values to vary "sae.k" over, got number 8',
    'matrix.sae: "sae" is a section; vary one of its fields, e.g. "sae.arch"',
    `matrix.backend: "backend" cannot be varied: ${MATRIX_FIXED.backend}`,
    `matrix.seeds: "seeds" cannot be varied: ${MATRIX_FIXED.seeds}`,
    'matrix.zip.train.lr: has 1 values but "train.steps" has 2: zipped lists advance together, ' +
    "so they need the same length",
    'matrix.include[0].sae.jsae.lamda: unknown field path "sae.jsae.lamda" (did you mean ' +
    '"sae.jsae.lambda"?)',
    'matrix.include[1]: expected a mapping of field paths to values, got string "topk"',
    'matrix.exclude[0].train.batch: "train.batch" is not varied by the matrix; exclude entries ' +
    "name its axes (sae.arch, sae.k, train.steps, train.lr, seed)",
    "matrix.exclude[1]: an empty entry would exclude every combination",
  ]);
  assert.deepEqual(spec.axes.map((a) => a.paths), [["seed"], ["sae.arch"]]);
  assert.equal(spec.axes[1]!.rows.length, 1);
});

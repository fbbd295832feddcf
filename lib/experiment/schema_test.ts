import assert from "node:assert/strict";
import { parse } from "yaml";
import { ARCHITECTURES } from "../sae/architectures.ts";
import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
import { MATRIX_FIELDS } from "./manifest.ts";
import { type JsonSchema, manifestSchema, SCHEMA_FILE, schemaText } from "./schema.ts";

Deno.test("experiments/schema.json is the generated schema (regenerate: deno run --allow-write lib/experiment/schema.ts)", async () => {
  assert.equal(await Deno.readTextFile(SCHEMA_FILE), schemaText());
});

Deno.test("manifestSchema() carries each rule's doc, default, choices and range", () => {
  const schema = manifestSchema() as {
    required: string[];
    additionalProperties: boolean;
    properties: Record<string, { properties: Record<string, JsonSchema> } & JsonSchema>;
    $defs: Record<string, JsonSchema>;
  };
  assert.deepEqual(schema.required, ["name"]);
  assert.equal(schema.additionalProperties, false);
  const { sae, train, scalar, seeds } = schema.properties;
  assert.deepEqual(sae!.properties.arch, {
    description: "Architecture (jsae only at position mlp)",
    type: "string",
    enum: [...ARCHITECTURES],
    default: "topk",
  });
  assert.deepEqual(train!.properties.lr, {
    description: "Peak learning rate",
    type: "number",
    exclusiveMinimum: 0,
    default: SAE_TRAIN_DEFAULTS.lr,
  });
  assert.equal(train!.additionalProperties, false);
  assert.deepEqual(scalar!.properties.enabled, {
    description: "Whether to measure SCALAR (metrics alone are much faster)",
    type: "boolean",
    default: true,
  });
  assert.deepEqual(seeds!.default, [0]);
  assert.deepEqual(Object.keys(schema.$defs), [...MATRIX_FIELDS.keys()]);
  const missing: string[] = [];
  const walk = (s: JsonSchema, at: string) => {
    if (s.description === undefined) missing.push(at);
    for (const [k, v] of Object.entries((s.properties ?? {}) as Record<string, JsonSchema>)) {
      walk(v, `${at}.${k}`);
    }
  };
  for (const [k, v] of Object.entries(schema.properties)) walk(v, k);
  assert.deepEqual(missing, []);
});

/**
 * The part of JSON Schema 2020-12 that manifestSchema() uses, enough to check that the schema
 * accepts what the runner accepts and rejects what it rejects.
 */
function validate(root: JsonSchema, value: unknown): string[] {
  const errors: string[] = [];
  const check = (s: JsonSchema, v: unknown, at: string): void => {
    if (typeof s.$ref === "string") {
      const name = s.$ref.replace("#/$defs/", "");
      return check((root.$defs as Record<string, JsonSchema>)[name]!, v, at);
    }
    const type = s.type as string | undefined;
    const kind = Array.isArray(v)
      ? "array"
      : v === null
      ? "null"
      : typeof v === "number"
      ? (Number.isInteger(v) ? "integer" : "number")
      : typeof v;
    if (type && !(type === kind || (type === "number" && kind === "integer"))) {
      errors.push(`${at}: expected ${type}`);
      return;
    }
    if (s.enum && !(s.enum as unknown[]).includes(v)) errors.push(`${at}: not in enum`);
    if (typeof s.pattern === "string" && !new RegExp(s.pattern).test(v as string)) {
      errors.push(`${at}: does not match pattern`);
    }
    if (typeof v === "number") {
      if (typeof s.minimum === "number" && v < s.minimum) errors.push(`${at}: below minimum`);
      if (typeof s.exclusiveMinimum === "number" && v <= s.exclusiveMinimum) {
        errors.push(`${at}: not above exclusiveMinimum`);
      }
      if (typeof s.maximum === "number" && v > s.maximum) errors.push(`${at}: above maximum`);
    }
    if (Array.isArray(v)) {
      if (typeof s.minItems === "number" && v.length < s.minItems) errors.push(`${at}: too short`);
      if (s.uniqueItems && new Set(v).size !== v.length) errors.push(`${at}: repeated items`);
      v.forEach((item, i) => check(s.items as JsonSchema, item, `${at}[${i}]`));
    }
    if (kind === "object") {
      const obj = v as Record<string, unknown>;
      const props = (s.properties ?? {}) as Record<string, JsonSchema>;
      for (const key of (s.required ?? []) as string[]) {
        if (!(key in obj)) errors.push(`${at}.${key}: required`);
      }
      if (typeof s.minProperties === "number" && Object.keys(obj).length < s.minProperties) {
        errors.push(`${at}: too few properties`);
      }
      for (const [key, item] of Object.entries(obj)) {
        if (props[key]) check(props[key], item, `${at}.${key}`);
        else if (s.additionalProperties === false) errors.push(`${at}.${key}: not allowed`);
      }
    }
  };
  check(root, value, "$");
  return errors;
}

const FULL = `
name: full
model: { kind: toy, config: shakespeare_64x4, checkpoint: results/models/toy-model }
data: { corpus: tinyshakespeare }
position: mlp
sae: { arch: topk, features: 512, k: 10, jsae: { lambda: 0.001 } }
train: { steps: 7500, batch: 128, lr: 0.001, min_lr: 0.0001, warmup: 750, beta1: 0.9, beta2: 0.95,
  weight_decay: 0, grad_clip: 1, log_every: 25, checkpoint_every: 500 }
eval: { sequences: 0 }
scalar: { enabled: true, ig_steps: 5, ig_batches: 24, ig_batch_size: 24, prompts: 50,
  bootstrap: 1000, edges: log2-half }
seeds: [0, 1, 2]
backend: auto
matrix:
  sae.arch: [topk, staircase, jsae]
  zip: { sae.features: [256, 512], sae.k: [8, 16] }
  include:
    - { sae.arch: jsae, sae.jsae.lambda: 0.01 }
  exclude:
    - { sae.arch: staircase, seed: 2 }
`;

Deno.test("manifestSchema() accepts a manifest that sets every field", () => {
  assert.deepEqual(validate(manifestSchema(), parse(FULL)), []);
});

Deno.test("manifestSchema() accepts the reference sketch", async () => {
  const sketch = await Deno.readTextFile(
    new URL("../../../shared/reference/manifest-example.yaml", import.meta.url),
  ).catch(() => undefined);
  if (sketch === undefined) return; // shared/ is beside the checkout only in the workplace
  assert.deepEqual(validate(manifestSchema(), parse(sketch)), []);
});

Deno.test("manifestSchema() rejects what the runner rejects field by field", () => {
  const schema = manifestSchema();
  const cases: [string, string][] = [
    ["name: x\nsae: { featurs: 3 }", "$.sae.featurs: not allowed"],
    ["name: x\nposition: blok", "$.position: not in enum"],
    ["name: x\ntrain: { lr: 0 }", "$.train.lr: not above exclusiveMinimum"],
    ["name: x\ntrain: { steps: 1.5 }", "$.train.steps: expected integer"],
    ["name: x\nseeds: [0, 0]", "$.seeds: repeated items"],
    ["sae: { k: 4 }", "$.name: required"],
    ["name: x y", "$.name: does not match pattern"],
    ["name: x\nmatrix: { sae.kk: [1] }", "$.matrix.sae.kk: not allowed"],
    ["name: x\nmatrix: { backend: [cpu] }", "$.matrix.backend: not allowed"],
    ["name: x\nmatrix: { sae.k: 4 }", "$.matrix.sae.k: expected array"],
    ["name: x\nmatrix: { sae.arch: [jsea] }", "$.matrix.sae.arch[0]: not in enum"],
    [
      "name: x\nmatrix: { include: [{ sae.lamda: 1 }] }",
      "$.matrix.include[0].sae.lamda: not allowed",
    ],
    ["name: x\nmatrix: { exclude: [{}] }", "$.matrix.exclude[0]: too few properties"],
    ["name: x\nmatrix: { zip: { sae.k: 4 } }", "$.matrix.zip.sae.k: expected array"],
  ];
  for (const [text, error] of cases) assert.deepEqual(validate(schema, parse(text)), [error], text);
});

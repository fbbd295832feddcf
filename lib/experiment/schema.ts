/**
 * The JSON Schema of experiment manifests, generated from the same rules the runner checks them
 * with (`manifest.ts`), so that editors validate and complete exactly what the runner accepts.
 * Shipped as `experiments/schema.json`; every shipped manifest starts with
 * `# yaml-language-server: $schema=./schema.json`. Regenerate it after changing a rule with
 * `deno run --allow-write lib/experiment/schema.ts` (a test fails while it is stale).
 *
 * Cross-field rules (`jsae` only at `mlp`, a trained model in `model.checkpoint`…) are beyond a
 * schema: the runner reports those.
 *
 * @module
 */
import type { FieldRule, ItemRule, ListRule, Rules, ScalarRule } from "./fields.ts";
import { MANIFEST_RULES, MATRIX_FIELDS } from "./manifest.ts";

/** A JSON Schema object. */
export type JsonSchema = Record<string, unknown>;

/** Where the schema is shipped. */
export const SCHEMA_FILE: URL = new URL("../../experiments/schema.json", import.meta.url);

/**
 * Builds the JSON Schema (draft 2020-12) of experiment manifests: every field's description from
 * its rule's doc, its default, allowed values and range, no unknown keys, and the matrix with one
 * property per field path it may vary.
 *
 * @returns The schema.
 *
 * @example
 * ```ts
 * import { manifestSchema } from "./schema.ts";
 * const schema = manifestSchema() as { properties: Record<string, { enum?: string[] }> };
 * if (!schema.properties.position!.enum!.includes("mlp-block")) throw new Error();
 * ```
 */
export function manifestSchema(): JsonSchema {
  const defs: Record<string, JsonSchema> = {};
  for (const [path, rule] of MATRIX_FIELDS) {
    defs[path] = rule.type === "list" ? listSchema(rule, false) : scalarSchema(rule, false);
  }
  return {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    title: "SCALAR lab experiment manifest",
    description: "A grid of SAE runs: one run's settings (defaults are the paper's) and a matrix " +
      "that varies them. The runner checks the same rules, and also what a schema cannot say " +
      "(jsae only at position mlp, a trained model in model.checkpoint).",
    ...objectSchema(MANIFEST_RULES),
    $defs: defs,
  };
}

/**
 * The schema as the text of `experiments/schema.json`.
 *
 * @returns Indented JSON with a final newline.
 */
export function schemaText(): string {
  return `${JSON.stringify(manifestSchema(), null, 2)}\n`;
}

/**
 * Writes the schema file.
 *
 * @param path Where to write it.
 * @default {@link SCHEMA_FILE}
 */
export async function writeSchema(path: string | URL = SCHEMA_FILE): Promise<void> {
  await Deno.writeTextFile(path, schemaText());
}

function objectSchema(rules: Rules): JsonSchema {
  const required = Object.entries(rules)
    .filter(([, r]) => (r.type === "string" || r.type === "number") && r.required)
    .map(([key]) => key);
  return {
    type: "object",
    properties: Object.fromEntries(Object.entries(rules).map(([k, r]) => [k, fieldSchema(r)])),
    ...(required.length ? { required } : {}),
    additionalProperties: false,
  };
}

function fieldSchema(rule: FieldRule): JsonSchema {
  switch (rule.type) {
    case "object":
      return { description: rule.doc, ...objectSchema(rule.fields) };
    case "list":
      return listSchema(rule, true);
    case "external":
      return { description: rule.doc, ...matrixSchema() };
    default:
      return scalarSchema(rule, true);
  }
}

function listSchema(rule: ListRule, withDefault: boolean): JsonSchema {
  return {
    description: rule.doc,
    type: "array",
    items: itemSchema(rule.items),
    ...(rule.minItems !== undefined ? { minItems: rule.minItems } : {}),
    ...(rule.unique ? { uniqueItems: true } : {}),
    ...(withDefault ? { default: rule.default } : {}),
  };
}

function scalarSchema(rule: ScalarRule, withDefault: boolean): JsonSchema {
  const out: JsonSchema = { description: rule.doc };
  if (rule.type === "boolean") out.type = "boolean";
  else Object.assign(out, itemSchema(rule));
  // An empty string default means "not set": there is no value to suggest.
  const hasDefault = rule.default !== "" && !("required" in rule && rule.required);
  if (withDefault && hasDefault) out.default = rule.default;
  return out;
}

function itemSchema(rule: ItemRule): JsonSchema {
  if (rule.type === "string") {
    return {
      type: "string",
      ...(rule.choices ? { enum: [...rule.choices] } : {}),
      ...(rule.pattern !== undefined ? { pattern: `^(?:${rule.pattern})$` } : {}),
    };
  }
  return {
    type: rule.integer ? "integer" : "number",
    ...(rule.min === undefined
      ? {}
      : rule.exclusiveMin
      ? { exclusiveMinimum: rule.min }
      : { minimum: rule.min }),
    ...(rule.max === undefined ? {} : { maximum: rule.max }),
  };
}

/** The matrix: one list per field path, plus include, exclude and zip. */
function matrixSchema(): JsonSchema {
  const ref = (path: string) => ({ $ref: `#/$defs/${path}` });
  const paths = [...MATRIX_FIELDS.keys()];
  const list = (path: string) => ({ type: "array", minItems: 1, items: ref(path) });
  const entry = (extra: JsonSchema) => ({
    type: "object",
    properties: Object.fromEntries(paths.map((p) => [p, ref(p)])),
    additionalProperties: false,
    ...extra,
  });
  return {
    type: "object",
    properties: {
      ...Object.fromEntries(paths.map((p) => [p, {
        description: `Values of ${p}, one per combination`,
        ...list(p),
        uniqueItems: true,
      }])),
      include: {
        description: "Entries that extend every combination agreeing with them on the axes they " +
          "name, or else add a new combination (run with every seed unless it names one)",
        type: "array",
        items: entry({}),
      },
      exclude: {
        description: "Partial combinations to drop; their keys must be axes of the matrix",
        type: "array",
        items: entry({ minProperties: 1 }),
      },
      zip: {
        description: "Lists of equal length that advance together as one axis of the product",
        type: "object",
        properties: Object.fromEntries(paths.map((p) => [p, {
          description: `Values of ${p}, advancing with the other zipped lists`,
          ...list(p),
        }])),
        additionalProperties: false,
        minProperties: 1,
      },
    },
    additionalProperties: false,
  };
}

if (import.meta.main) {
  await writeSchema();
  console.error(`wrote ${SCHEMA_FILE.pathname}`);
}

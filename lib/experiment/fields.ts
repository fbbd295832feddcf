/**
 * Declarative field rules for manifests: each field's type, range, allowed values and default in
 * one place, checked with every problem recorded at its position.
 *
 * @module
 */
import { didYouMean, type ManifestSource } from "./manifest_source.ts";

/** A number field. */
export interface NumberRule {
  type: "number";
  /** What the field means, for messages and the schema. */
  doc: string;
  default: number;
  min?: number;
  /** Whether `min` itself is excluded. */
  exclusiveMin?: boolean;
  max?: number;
  integer?: boolean;
  /** Whether the manifest must give it (its default is then never used). */
  required?: boolean;
}

/** A string field; `default: ""` means "not set". */
export interface StringRule {
  type: "string";
  /** What the field means, for messages and the schema. */
  doc: string;
  default: string;
  choices?: readonly string[];
  /** A regular expression the whole value must match. */
  pattern?: string;
  /** Whether the manifest must give it (its default is then never used). */
  required?: boolean;
}

/** A true/false field. */
export interface BooleanRule {
  type: "boolean";
  /** What the field means, for messages and the schema. */
  doc: string;
  default: boolean;
}

/** The rule of a list's items: a number or string rule without doc and default. */
export type ItemRule =
  | Omit<NumberRule, "doc" | "default" | "required">
  | Omit<StringRule, "doc" | "default" | "required">;

/** A list of numbers or strings. */
export interface ListRule {
  type: "list";
  /** What the field means, for messages and the schema. */
  doc: string;
  default: readonly (number | string)[];
  items: ItemRule;
  /** Fewest items allowed. */
  minItems?: number;
  /** Whether an item may not appear twice. */
  unique?: boolean;
}

/** A mapping of fields. */
export interface ObjectRule {
  type: "object";
  /** What the field means, for messages and the schema. */
  doc: string;
  fields: Rules;
}

/**
 * A field whose value {@link checkFields} passes through unchecked, because its owner checks it
 * with rules of its own (the experiment manifest's `matrix`, whose keys are paths of other fields).
 */
export interface ExternalRule {
  type: "external";
  /** What the field means, for messages and the schema. */
  doc: string;
}

/** A field that holds one value. */
export type ScalarRule = NumberRule | StringRule | BooleanRule;

/** A rule for one manifest field. */
export type FieldRule = ScalarRule | ListRule | ObjectRule | ExternalRule;

/** Rules for the fields of a mapping, by key. */
export type Rules = Readonly<Record<string, FieldRule>>;

/**
 * Checks a mapping against rules, recording a problem for every unknown key (with a suggestion),
 * wrong type or out-of-range value, and filling absent fields with their defaults.
 *
 * @param src The manifest, where problems are recorded.
 * @param value The mapping read from the manifest.
 * @param rules Its fields' rules.
 * @param prefix The mapping's own dotted path ("" at the top).
 * @returns The mapping with defaults filled in (fields with problems keep their defaults).
 */
export function checkFields(
  src: ManifestSource,
  value: unknown,
  rules: Rules,
  prefix = "",
): Record<string, unknown> {
  const at = (key: string) => (prefix ? `${prefix}.${key}` : key);
  const given = value ?? {};
  if (typeof given !== "object" || Array.isArray(given)) {
    src.problem(prefix, `expected a mapping, got ${describe(value)}`);
    return checkFields(src, {}, rules, prefix);
  }
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(given)) {
    if (!(key in rules)) {
      const guess = didYouMean(key, Object.keys(rules));
      src.problem(
        at(key),
        `unknown field "${key}"${guess ? ` (did you mean "${guess}"?)` : ""}; allowed: ${
          Object.keys(rules).join(", ")
        }`,
      );
    }
  }
  for (const [key, rule] of Object.entries(rules)) {
    const v = (given as Record<string, unknown>)[key];
    if (rule.type === "object") {
      out[key] = checkFields(src, v, rule.fields, at(key));
      continue;
    }
    if (rule.type === "external") {
      out[key] = v;
      continue;
    }
    out[key] = rule.type === "list" ? [...rule.default] : rule.default;
    if (v === undefined || v === null) {
      if ("required" in rule && rule.required) {
        src.problem(at(key), `required field is missing (${rule.doc})`);
      }
      continue;
    }
    const problem = checkValue(rule, v);
    if (problem) src.problem(at(key), problem);
    else out[key] = v;
  }
  return out;
}

/**
 * Checks one value against a field's rule.
 *
 * @param rule The field's rule (or a list's item rule).
 * @param v The value read from the manifest.
 * @returns What is wrong, or undefined when the value is allowed.
 *
 * @example
 * ```ts
 * import { checkValue } from "./fields.ts";
 * const rule = { type: "number", doc: "Steps", default: 1, min: 1, integer: true } as const;
 * if (checkValue(rule, 0) !== "must be ≥ 1, got 0") throw new Error();
 * if (checkValue(rule, 3) !== undefined) throw new Error();
 * ```
 */
export function checkValue(
  rule: ScalarRule | ListRule | ItemRule,
  v: unknown,
): string | undefined {
  switch (rule.type) {
    case "number":
      return numberProblem(v, rule);
    case "string":
      return stringProblem(v, rule);
    case "boolean":
      return typeof v === "boolean" ? undefined : `expected true or false, got ${describe(v)}`;
    case "list":
      return listProblem(v, rule);
  }
}

function listProblem(v: unknown, r: ListRule): string | undefined {
  if (!Array.isArray(v)) return `expected a list, got ${describe(v)}`;
  if (r.minItems !== undefined && v.length < r.minItems) {
    return `expected at least ${r.minItems} item${r.minItems === 1 ? "" : "s"}, got ${v.length}`;
  }
  for (const [i, item] of v.entries()) {
    const problem = checkValue(r.items, item);
    if (problem) return `item ${i + 1}: ${problem}`;
    if (r.unique && v.indexOf(item) < i) {
      return `item ${i + 1}: ${JSON.stringify(item)} is already in the list`;
    }
  }
  return undefined;
}

function numberProblem(
  v: unknown,
  r: Omit<NumberRule, "doc" | "default">,
): string | undefined {
  if (typeof v !== "number" || !Number.isFinite(v)) return `expected a number, got ${describe(v)}`;
  if (r.integer && !Number.isInteger(v)) return `expected a whole number, got ${v}`;
  if (r.min !== undefined && (r.exclusiveMin ? v <= r.min : v < r.min)) {
    return `must be ${r.exclusiveMin ? ">" : "≥"} ${r.min}, got ${v}`;
  }
  if (r.max !== undefined && v > r.max) return `must be ≤ ${r.max}, got ${v}`;
  return undefined;
}

function stringProblem(
  v: unknown,
  r: Omit<StringRule, "doc" | "default">,
): string | undefined {
  if (typeof v !== "string") return `expected a string, got ${describe(v)}`;
  if (r.pattern !== undefined && !new RegExp(`^(?:${r.pattern})$`).test(v)) {
    return `"${v}" does not match ${r.pattern}`;
  }
  if (r.choices && !r.choices.includes(v)) {
    const guess = didYouMean(v, r.choices);
    return `"${v}" is not one of ${r.choices.join(", ")}${
      guess ? ` (did you mean "${guess}"?)` : ""
    }`;
  }
  return undefined;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object") return "a mapping";
  return `${typeof v} ${JSON.stringify(v)}`;
}

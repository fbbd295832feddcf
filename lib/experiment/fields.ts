/**
 * Declarative field rules for manifests: each field's type, range, allowed values and default in
 * one place, checked with every problem recorded at its position.
 *
 * @module
 */
import { didYouMean, type ManifestSource } from "./manifest_source.ts";

/** A rule for one manifest field. */
export type FieldRule =
  | {
    type: "number";
    /** What the field means, for messages and the schema. */
    doc: string;
    default: number;
    min?: number;
    /** Whether `min` itself is excluded. */
    exclusiveMin?: boolean;
    max?: number;
    integer?: boolean;
  }
  | { type: "string"; doc: string; default: string; choices?: readonly string[] }
  | { type: "object"; doc: string; fields: Rules };

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
    out[key] = rule.default;
    if (v === undefined || v === null) continue;
    const problem = rule.type === "number" ? numberProblem(v, rule) : stringProblem(v, rule);
    if (problem) src.problem(at(key), problem);
    else out[key] = v;
  }
  return out;
}

function numberProblem(v: unknown, r: Extract<FieldRule, { type: "number" }>): string | undefined {
  if (typeof v !== "number" || !Number.isFinite(v)) return `expected a number, got ${describe(v)}`;
  if (r.integer && !Number.isInteger(v)) return `expected a whole number, got ${v}`;
  if (r.min !== undefined && (r.exclusiveMin ? v <= r.min : v < r.min)) {
    return `must be ${r.exclusiveMin ? ">" : "≥"} ${r.min}, got ${v}`;
  }
  if (r.max !== undefined && v > r.max) return `must be ≤ ${r.max}, got ${v}`;
  return undefined;
}

function stringProblem(v: unknown, r: Extract<FieldRule, { type: "string" }>): string | undefined {
  if (typeof v !== "string") return `expected a string, got ${describe(v)}`;
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

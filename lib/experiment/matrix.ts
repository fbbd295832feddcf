/**
 * The experiment matrix: axes of field values expanded as a cartesian product, then `exclude` and
 * `include` entries as in GitHub Actions, with `zip` groups that advance together as one axis and a
 * seed axis that every combination is run over.
 *
 * Expansion, in order:
 * 1. The product of the axes, first axis slowest. A `zip` group is one axis whose rows set several
 *    paths at once.
 * 2. `exclude`: a combination that matches every key of an entry is dropped.
 * 3. `include`: an entry extends every product combination that agrees with it on the axes it names
 *    (its other keys are added, and may overwrite what an earlier `include` added, never an axis
 *    value); an entry that extends none is added as a new combination. A new combination that names
 *    no value of the repeated axis (the seeds) is added once per row of that axis.
 *
 * As in GitHub Actions, a matrix whose only axis is the repeated one and that has `include` entries
 * has no product combinations: each entry is a combination of its own (then run over every seed).
 *
 * @module
 */
import { checkValue, type ListRule, type ScalarRule } from "./fields.ts";
import { didYouMean } from "./manifest_source.ts";

/** A value a matrix can give a field: a scalar, or a whole list (`model.layers: [0]`). */
export type MatrixValue = string | number | boolean | readonly (string | number)[];

/** The rule of a field a matrix may vary. */
export type MatrixRule = ScalarRule | ListRule;

/**
 * Whether two matrix values are the same: lists item by item.
 *
 * @param a One value.
 * @param b The other.
 * @returns Whether they are equal.
 *
 * @example
 * ```ts
 * import { sameMatrixValue } from "./matrix.ts";
 * if (!sameMatrixValue([0, 1], [0, 1]) || sameMatrixValue([0], 0)) throw new Error();
 * ```
 */
export function sameMatrixValue(a: MatrixValue | undefined, b: MatrixValue | undefined): boolean {
  if (!Array.isArray(a) || !Array.isArray(b)) return a === b;
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * A matrix value as text, the one spelling of `run_params`, `--only` and progress lines: strings
 * as they are, anything else as JSON (`0.0018`, `true`, `[0,1]`).
 *
 * @param value The value.
 * @returns Its text.
 *
 * @example
 * ```ts
 * import { matrixValueText } from "./matrix.ts";
 * if (matrixValueText([0, 1]) !== "[0,1]" || matrixValueText("topk") !== "topk") throw new Error();
 * ```
 */
export function matrixValueText(value: MatrixValue): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** One field's value in a combination, with where it came from (for messages). */
export interface Cell<O> {
  /** The value. */
  value: MatrixValue;
  /** Where it was written. */
  origin: O;
}

/** One combination: field path → value, in the order the paths were set. */
export type Combination<O> = Map<string, Cell<O>>;

/** One axis of the product: its rows each set all of its paths (one path unless zipped). */
export interface MatrixAxis<O> {
  /** The field paths the axis sets. */
  paths: string[];
  /** Its rows, in order. */
  rows: Combination<O>[];
}

/** A matrix ready to expand. */
export interface MatrixSpec<O> {
  /** The axes, slowest first. */
  axes: MatrixAxis<O>[];
  /** Partial combinations to drop (path → value). */
  exclude: Map<string, MatrixValue>[];
  /** Entries that extend combinations or add new ones. */
  include: Combination<O>[];
  /**
   * Index in `axes` of the axis that new `include` combinations are repeated over when they name
   * none of its paths (the seeds: a combination added for one architecture runs with every seed).
   */
  repeatAxis?: number;
}

/** What {@link expandMatrix} returns. */
export interface MatrixExpansion<O> {
  /** Every combination: the product's (extended by `include`), then those `include` added. */
  combinations: Combination<O>[];
  /** For each `exclude` entry, how many product combinations it matched. */
  excluded: number[];
}

/**
 * Expands a matrix into its combinations.
 *
 * @param spec Axes, `exclude` and `include` entries.
 * @returns The combinations and what each `exclude` entry dropped.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { expandMatrix, type MatrixAxis } from "./matrix.ts";
 * const axis = (path: string, values: string[]): MatrixAxis<null> => ({
 *   paths: [path],
 *   rows: values.map((value) => new Map([[path, { value, origin: null }]])),
 * });
 * const { combinations } = expandMatrix({
 *   axes: [axis("a", ["x", "y"]), axis("b", ["1", "2"])],
 *   exclude: [new Map([["a", "y"], ["b", "1"]])],
 *   include: [],
 * });
 * deepEqual(combinations.map((c) => [...c.values()].map((v) => v.value).join("")), ["x1", "x2", "y2"]);
 * ```
 */
export function expandMatrix<O>(spec: MatrixSpec<O>): MatrixExpansion<O> {
  const { axes, repeatAxis } = spec;
  // GitHub Actions: a matrix of `include` entries alone has no product to extend.
  const onlyRepeat = axes.every((_, i) => i === repeatAxis);
  let product: Combination<O>[] = onlyRepeat && spec.include.length > 0 ? [] : [new Map()];
  for (const axis of axes) {
    product = product.flatMap((c) => axis.rows.map((row) => new Map([...c, ...row])));
  }

  const excluded = spec.exclude.map(() => 0);
  product = product.filter((c) => {
    let keep = true;
    spec.exclude.forEach((e, i) => {
      if ([...e].every(([k, v]) => sameMatrixValue(c.get(k)?.value, v))) {
        [keep, excluded[i]] = [false, excluded[i]! + 1];
      }
    });
    return keep;
  });

  const axisPaths = new Set(axes.flatMap((a) => a.paths));
  const repeat = repeatAxis === undefined ? undefined : axes[repeatAxis];
  const added: Combination<O>[] = [];
  for (const entry of spec.include) {
    let extended = false;
    for (const c of product) {
      const agrees = [...entry].every(([k, cell]) =>
        !axisPaths.has(k) || sameMatrixValue(c.get(k)?.value, cell.value)
      );
      if (!agrees) continue;
      extended = true;
      // Axis values never change (they agree); values added by earlier entries may be replaced.
      for (const [k, cell] of entry) if (!axisPaths.has(k)) c.set(k, cell);
    }
    if (extended) continue;
    if (repeat && !repeat.paths.some((p) => entry.has(p))) {
      for (const row of repeat.rows) added.push(new Map([...entry, ...row]));
    } else {
      added.push(new Map(entry));
    }
  }
  return { combinations: [...product, ...added], excluded };
}

/** Where a matrix value was written: its YAML path (to find its line) and how messages name it. */
export interface MatrixOrigin {
  /** Keys and list indices from the document's top, e.g. `["matrix", "sae.arch", 2]`. */
  segments: (string | number)[];
  /** The field as messages name it, e.g. `matrix.sae.arch[2]`. */
  field: string;
}

/** Options of {@link readMatrix}. */
export interface ReadMatrixOptions {
  /** The fields a matrix may vary: dotted path → rule. */
  fields: ReadonlyMap<string, MatrixRule>;
  /** Fields that exist but cannot be varied, with the reason. */
  fixed: Readonly<Record<string, string>>;
  /** The path of the repeated axis (`seed`). */
  repeatPath: string;
  /** That axis when the matrix does not vary its path (the manifest's `seeds`). */
  defaultRepeat: MatrixAxis<MatrixOrigin>;
  /** Records a problem at a place in the file. */
  report: (origin: MatrixOrigin, message: string) => void;
}

/** What {@link readMatrix} returns. */
export interface ReadMatrixResult {
  /** The matrix, ready for {@link expandMatrix}; values with problems are left out. */
  spec: MatrixSpec<MatrixOrigin>;
  /** Where each `exclude` entry of `spec` was written. */
  excludeOrigins: MatrixOrigin[];
}

/** The keys of a matrix that are not field paths. */
export const MATRIX_KEYWORDS = ["include", "exclude", "zip"] as const;

const describe = (v: unknown): string =>
  v === null
    ? "null"
    : Array.isArray(v)
    ? "a list"
    : typeof v === "object"
    ? "a mapping"
    : `${typeof v} ${JSON.stringify(v)}`;

const isMapping = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Reads a manifest's `matrix` section, checking every path and value, and recording every problem
 * with its place.
 *
 * @param raw The section as parsed from YAML (undefined when absent).
 * @param o The fields that may be varied, the seeds, and where problems go.
 * @returns The matrix to expand.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { readMatrix } from "./matrix.ts";
 * const problems: string[] = [];
 * const { spec } = readMatrix({ "sae.kk": [1, 2] }, {
 *   fields: new Map([["sae.k", { type: "number", doc: "k", default: 10 }]]),
 *   fixed: {},
 *   repeatPath: "seed",
 *   defaultRepeat: { paths: ["seed"], rows: [] },
 *   report: (origin, message) => problems.push(`${origin.field}: ${message}`),
 * });
 * equal(spec.axes.length, 1); // only the seeds
 * equal(problems[0], 'matrix.sae.kk: unknown field path "sae.kk" (did you mean "sae.k"?)');
 * ```
 */
export function readMatrix(raw: unknown, o: ReadMatrixOptions): ReadMatrixResult {
  const axes: MatrixAxis<MatrixOrigin>[] = [];
  const include: Combination<MatrixOrigin>[] = [];
  const exclude: Map<string, MatrixValue>[] = [];
  const excludeOrigins: MatrixOrigin[] = [];
  const top: MatrixOrigin = { segments: ["matrix"], field: "matrix" };
  const spec = (): ReadMatrixResult => {
    let repeatAxis = axes.findIndex((a) => a.paths.length === 1 && a.paths[0] === o.repeatPath);
    if (!axes.some((a) => a.paths.includes(o.repeatPath))) {
      axes.unshift(o.defaultRepeat);
      repeatAxis = 0;
    }
    return {
      spec: { axes, include, exclude, repeatAxis: repeatAxis < 0 ? undefined : repeatAxis },
      excludeOrigins,
    };
  };
  if (raw === undefined || raw === null) return spec();
  if (!isMapping(raw)) {
    o.report(top, `expected a mapping of field paths to lists of values, got ${describe(raw)}`);
    return spec();
  }

  /** The rule of a path, or undefined after reporting why it cannot be varied. */
  const ruleOf = (path: string, at: MatrixOrigin): MatrixRule | undefined => {
    const rule = o.fields.get(path);
    if (rule) return rule;
    if (path in o.fixed) {
      o.report(at, `"${path}" cannot be varied: ${o.fixed[path]}`);
    } else if ([...o.fields.keys()].some((p) => p.startsWith(`${path}.`))) {
      const example = [...o.fields.keys()].find((p) => p.startsWith(`${path}.`));
      o.report(at, `"${path}" is a section; vary one of its fields, e.g. "${example}"`);
    } else {
      const guess = didYouMean(path, [...o.fields.keys()]);
      o.report(
        at,
        `unknown field path "${path}"${guess ? ` (did you mean "${guess}"?)` : ""}`,
      );
    }
    return undefined;
  };

  /** The checked values of a list (problems reported, bad and repeated values left out). */
  const listValues = (
    path: string,
    rule: MatrixRule,
    list: unknown,
    at: MatrixOrigin,
  ): Cell<MatrixOrigin>[] | undefined => {
    if (!Array.isArray(list)) {
      o.report(at, `expected a list of values to vary "${path}" over, got ${describe(list)}`);
      return undefined;
    }
    if (list.length === 0) {
      o.report(at, `expected at least one value: an empty list would leave no runs`);
      return undefined;
    }
    const cells: Cell<MatrixOrigin>[] = [];
    list.forEach((value, i) => {
      const origin = { segments: [...at.segments, i], field: `${at.field}[${i}]` };
      const problem = rule.type === "list" && !Array.isArray(value)
        ? `"${path}" takes a list, so each value is one: e.g. [[0], [1, 2]], got ${describe(value)}`
        : checkValue(rule, value);
      if (problem) o.report(origin, problem);
      else if (list.findIndex((v) => sameMatrixValue(v, value)) < i) {
        o.report(origin, `${JSON.stringify(value)} is already in the list`);
      } else cells.push({ value: value as MatrixValue, origin });
    });
    return cells;
  };

  const varied = new Map<string, string>();
  const claim = (path: string, at: MatrixOrigin): boolean => {
    const before = varied.get(path);
    if (before !== undefined) {
      o.report(at, `"${path}" is varied twice (already by ${before})`);
      return false;
    }
    varied.set(path, at.field);
    return true;
  };

  /** One `include`/`exclude` entry: path → checked value. */
  const entry = (value: unknown, at: MatrixOrigin): Combination<MatrixOrigin> | undefined => {
    if (!isMapping(value)) {
      o.report(at, `expected a mapping of field paths to values, got ${describe(value)}`);
      return undefined;
    }
    const cells: Combination<MatrixOrigin> = new Map();
    let ok = true;
    for (const [path, v] of Object.entries(value)) {
      const origin = { segments: [...at.segments, path], field: `${at.field}.${path}` };
      const rule = ruleOf(path, origin);
      const problem = rule && checkValue(rule, v);
      if (problem) o.report(origin, problem);
      if (!rule || problem) ok = false;
      else cells.set(path, { value: v as MatrixValue, origin });
    }
    return ok ? cells : undefined;
  };

  const entries = (key: "include" | "exclude"): [unknown, MatrixOrigin][] => {
    const at = { segments: ["matrix", key], field: `matrix.${key}` };
    const list = raw[key];
    if (list === undefined || list === null) return [];
    if (!Array.isArray(list)) {
      o.report(at, `expected a list of mappings (field path → value), got ${describe(list)}`);
      return [];
    }
    return list.map((v, i) => [v, { segments: [...at.segments, i], field: `${at.field}[${i}]` }]);
  };

  for (const [key, value] of Object.entries(raw)) {
    if (key === "include" || key === "exclude") continue;
    const at = { segments: ["matrix", key], field: `matrix.${key}` };
    if (key === "zip") {
      if (!isMapping(value)) {
        o.report(at, `expected a mapping of field paths to lists, got ${describe(value)}`);
        continue;
      }
      const columns: [string, Cell<MatrixOrigin>[], MatrixOrigin][] = [];
      for (const [path, list] of Object.entries(value)) {
        const origin = { segments: ["matrix", "zip", path], field: `matrix.zip.${path}` };
        const rule = ruleOf(path, origin);
        if (!rule || !claim(path, origin)) continue;
        const cells = listValues(path, rule, list, origin);
        if (cells) columns.push([path, cells, origin]);
      }
      if (columns.length === 0) {
        if (Object.keys(value).length === 0) o.report(at, "expected at least one field path");
        continue;
      }
      const [firstPath, firstCells] = columns[0]!;
      const uneven = columns.filter(([, cells]) => cells.length !== firstCells.length);
      for (const [, cells, origin] of uneven) {
        o.report(
          origin,
          `has ${cells.length} values but "${firstPath}" has ${firstCells.length}: zipped lists ` +
            `advance together, so they need the same length`,
        );
      }
      if (uneven.length > 0) continue;
      axes.push({
        paths: columns.map(([path]) => path),
        rows: firstCells.map((_, i) => new Map(columns.map(([path, cells]) => [path, cells[i]!]))),
      });
      continue;
    }
    const rule = ruleOf(key, at);
    if (!rule || !claim(key, at)) continue;
    const cells = listValues(key, rule, value, at);
    // An axis whose values all have problems is left out, so as not to also report "no runs".
    if (cells?.length) axes.push({ paths: [key], rows: cells.map((c) => new Map([[key, c]])) });
  }

  for (const [value, at] of entries("include")) {
    const cells = entry(value, at);
    if (cells) include.push(cells);
  }
  const axisPaths = new Set([...varied.keys(), o.repeatPath]);
  for (const [value, at] of entries("exclude")) {
    const cells = entry(value, at);
    if (!cells) continue;
    if (cells.size === 0) {
      o.report(at, "an empty entry would exclude every combination");
      continue;
    }
    const loose = [...cells].filter(([path]) => !axisPaths.has(path));
    for (const [path, cell] of loose) {
      o.report(
        cell.origin,
        `"${path}" is not varied by the matrix; exclude entries name its axes (${
          [...axisPaths].join(", ")
        })`,
      );
    }
    // An axis left out for its own problems cannot match: say nothing more about this entry.
    const formed = new Set([...axes.flatMap((a) => a.paths), o.repeatPath]);
    if (loose.length > 0 || [...cells.keys()].some((path) => !formed.has(path))) continue;
    exclude.push(new Map([...cells].map(([path, cell]) => [path, cell.value])));
    excludeOrigins.push(at);
  }
  return spec();
}

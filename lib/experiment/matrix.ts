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

/** A value a matrix can give a field. */
export type MatrixValue = string | number | boolean;

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
      if ([...e].every(([k, v]) => c.get(k)?.value === v)) {
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
        !axisPaths.has(k) || c.get(k)?.value === cell.value
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

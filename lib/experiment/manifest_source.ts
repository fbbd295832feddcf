/**
 * Reading a YAML manifest with positions: every problem found while checking it is collected with
 * its file, line, column and field path, and all of them are reported together.
 *
 * @module
 */
import { type Document, isMap, isScalar, LineCounter, parseDocument } from "yaml";

/** One problem in a manifest. */
export interface ManifestProblem {
  /** Dotted field path, e.g. `train.lr` (empty for the whole file). */
  path: string;
  /** 1-based line, or 0 when unknown. */
  line: number;
  /** 1-based column, or 0 when unknown. */
  column: number;
  /** What is wrong and what is allowed. */
  message: string;
}

/** Every problem of a manifest file; its message lists them as `file:line:col: field: message`. */
export class ManifestError extends Error {
  override name = "ManifestError";

  /**
   * @param file The manifest's path.
   * @param problems What is wrong, in file order.
   */
  constructor(readonly file: string, readonly problems: ManifestProblem[]) {
    super(
      `Cannot use manifest "${file}": ${problems.length} problem${
        problems.length === 1 ? "" : "s"
      }\n` +
        problems.map((p) =>
          `  ${file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ""}${p.message}`
        ).join("\n"),
    );
  }
}

/** A parsed manifest whose fields can be read with checks that record problems. */
export class ManifestSource {
  readonly problems: ManifestProblem[] = [];
  readonly #doc: Document;
  readonly #lines: LineCounter;

  /**
   * Parses YAML text; syntax errors become problems with their positions.
   *
   * @param file The path, for messages.
   * @param text The YAML text.
   */
  constructor(readonly file: string, text: string) {
    this.#lines = new LineCounter();
    this.#doc = parseDocument(text, { lineCounter: this.#lines, prettyErrors: false });
    for (const e of this.#doc.errors) {
      const pos = this.#lines.linePos(e.pos[0]);
      this.problems.push({ path: "", line: pos.line, column: pos.col, message: e.message });
    }
    if (this.#doc.errors.length === 0 && !isMap(this.#doc.contents)) {
      this.problems.push({ path: "", line: 1, column: 1, message: "expected a mapping of fields" });
    }
  }

  /**
   * Reads a manifest file.
   *
   * @param file Its path.
   * @returns The parsed source.
   * @throws {ManifestError} If the file cannot be read.
   */
  static async read(file: string): Promise<ManifestSource> {
    return new ManifestSource(file, await readManifestText(file));
  }

  /** The whole document as plain data (undefined when it did not parse). */
  get data(): Record<string, unknown> {
    const value = this.problems.length ? {} : this.#doc.toJS();
    return (value ?? {}) as Record<string, unknown>;
  }

  /**
   * Records a problem at a field (its key's position, or its parent's when absent).
   *
   * @param path Dotted field path.
   * @param message What is wrong.
   */
  problem(path: string, message: string): void {
    // Point at the deepest key that exists on the path: the field itself, or its parent.
    let node: unknown = this.#doc.contents;
    let range: [number, number, number] | undefined = [0, 0, 0];
    for (const key of path ? path.split(".") : []) {
      const pair = isMap(node)
        ? node.items.find((p) => isScalar(p.key) && p.key.value === key)
        : undefined;
      if (pair === undefined) break;
      range = (pair.key as { range?: [number, number, number] }).range ?? range;
      node = pair.value;
    }
    const pos = this.#lines.linePos(range[0]);
    this.problems.push({ path, line: pos.line, column: pos.col, message });
  }

  /**
   * Throws when any problem was recorded, listing them in file order.
   *
   * @throws {ManifestError} With every problem.
   */
  throwIfProblems(): void {
    if (this.problems.length === 0) return;
    this.problems.sort((a, b) => a.line - b.line || a.column - b.column);
    throw new ManifestError(this.file, this.problems);
  }
}

/**
 * Reads a manifest file's text.
 *
 * @param file Its path.
 * @returns The text.
 * @throws {ManifestError} If the file cannot be read, saying why.
 */
export async function readManifestText(file: string): Promise<string> {
  try {
    return await Deno.readTextFile(file);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "the file does not exist" : String(e);
    throw new ManifestError(file, [{ path: "", line: 0, column: 0, message: why }]);
  }
}

/**
 * Suggests the known name closest to a misspelt one (edit distance ≤ 2, or a shared prefix).
 *
 * @param name What was written.
 * @param known What is allowed.
 * @returns The suggestion, or undefined when nothing is close.
 *
 * @example
 * ```ts
 * import { didYouMean } from "./manifest_source.ts";
 * if (didYouMean("warmpu", ["warmup", "steps"]) !== "warmup") throw new Error();
 * ```
 */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined, bestDistance = 3;
  for (const candidate of known) {
    const d = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(
        row[j]! + 1,
        next[j - 1]! + 1,
        row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    row = next;
  }
  return row[b.length]!;
}

/**
 * Progress lines for long work: the step, the caller's figures, throughput and time left.
 *
 * @module
 */

/**
 * Formats seconds as `45s`, `12m05s` or `3h07m`.
 *
 * @param seconds A duration; negative or non-finite values print as `?`.
 * @returns The short form.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * if (formatDuration(3725) !== "1h02m") throw new Error();
 * ```
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * Formats a count with a k/M suffix (`48.3k`), for throughputs.
 *
 * @param n The count.
 * @returns The short form.
 */
export function formatCount(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n.toFixed(0);
}

/** Measures throughput between reports and estimates the time left. */
export class Progress {
  readonly #total: number;
  readonly #unit: string;
  readonly #write: (line: string) => void;
  #lastStep: number;
  #lastTime = performance.now();
  #rate = NaN;

  /**
   * @param total The step count at which the work is done.
   * @param start The step the work starts (or resumes) at.
   * @param unit What one step processes, for the throughput (e.g. `tok`), with `unitsPerStep`.
   * @param unitsPerStep How many units one step processes.
   * @param write Where lines go. @default a line on stderr
   */
  constructor(
    total: number,
    start: number,
    readonly unitsPerStep: number,
    unit: string,
    write: (line: string) => void = (line) => console.error(line),
  ) {
    this.#total = total;
    this.#lastStep = start;
    this.#unit = unit;
    this.#write = write;
  }

  /** Units per second measured over the last reported span (NaN before the first report). */
  get rate(): number {
    return this.#rate;
  }

  /**
   * Prints `step s/total | fields | rate unit/s | ETA`.
   *
   * @param step Steps completed.
   * @param fields The caller's figures, already formatted (e.g. `loss 2.431`).
   */
  report(step: number, fields: string): void {
    const now = performance.now();
    if (step > this.#lastStep) {
      this.#rate = ((step - this.#lastStep) * this.unitsPerStep) / ((now - this.#lastTime) / 1000);
    }
    this.#lastStep = step;
    this.#lastTime = now;
    const eta = ((this.#total - step) * this.unitsPerStep) / this.#rate;
    const width = String(this.#total).length;
    this.#write(
      `step ${String(step).padStart(width)}/${this.#total} | ${fields} | ` +
        `${formatCount(this.#rate)} ${this.#unit}/s | ETA ${formatDuration(eta)}`,
    );
  }
}

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

/** How a {@link LiveLog} shows lines. */
export interface LiveLogOptions {
  /**
   * Whether the output is a terminal: then the status line is redrawn in place. @default whether
   * stderr is a terminal
   */
  tty?: boolean;
  /** Print every line as it comes, details included (`--verbose`). @default false */
  verbose?: boolean;
  /** On a pipe, seconds between two status lines. @default 30 */
  intervalSeconds?: number;
  /** Terminal width the status line is cut to. @default the terminal's, else 100 */
  columns?: number;
  /** Where text goes (lines end in `\n`; a redraw starts with `\r`). @default stderr */
  write?: (text: string) => void;
  /** Where {@link LiveLog.result} lines go. @default stdout */
  writeResult?: (text: string) => void;
  /** The clock, in milliseconds. @default performance.now */
  now?: () => number;
}

/**
 * Quiet, live output for long jobs. Work reports every line through {@link LiveLog.status}: on a
 * terminal the latest one redraws a single status line in place (prefixed with the job's label,
 * e.g. `[run 1/2 topk]`, and the current stage); on a pipe a status line is printed at most every
 * `intervalSeconds`; with `verbose` every line is printed. Lines indented by two spaces are
 * details (one ablation-curve point each): shown on a terminal's status line and with `verbose`,
 * never as periodic lines. {@link LiveLog.print} writes a permanent line (a run's summary, an
 * error) above the status line.
 *
 * @example On a pipe: periodic status lines with their stage, details dropped
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { LiveLog } from "./progress.ts";
 *
 * let t = 0, out = "";
 * const live = new LiveLog({ tty: false, intervalSeconds: 10, now: () => t, write: (s) => out += s });
 * live.label = "[run 1/2]";
 * live.status("training 8 topk SAEs (512 features) for 400 steps"); // t = 0: printed
 * t = 5_000;
 * live.status("step 100/400 | loss 0.5 | ETA 15s"); // within the interval: dropped
 * t = 12_000;
 * live.status("  n=1024: KL 0.1"); // a detail: dropped
 * live.status("step 200/400 | loss 0.3 | ETA 10s"); // printed with its stage
 * live.print("run 1/2 done");
 * deepEqual(out.split("\n"), [
 *   "[run 1/2] training 8 topk SAEs (512 features) for 400 steps",
 *   "[run 1/2] training 8 topk SAEs | step 200/400 | loss 0.3 | ETA 10s",
 *   "run 1/2 done",
 *   "",
 * ]);
 * ```
 */
export class LiveLog {
  /** Put before every status line, e.g. `[run 1/2 topk]`; empty for none. */
  label = "";
  readonly #tty: boolean;
  readonly #verbose: boolean;
  readonly #intervalMs: number;
  readonly #columns: number;
  readonly #write: (text: string) => void;
  readonly #writeResult: (text: string) => void;
  readonly #now: () => number;
  #stage = "";
  #shown = "";
  #lastPrinted = -Infinity;

  /** @param o Terminal or pipe, verbosity, interval, width, sink and clock. */
  constructor(o: LiveLogOptions = {}) {
    this.#tty = o.tty ?? Deno.stderr.isTerminal();
    this.#verbose = o.verbose ?? false;
    this.#intervalMs = (o.intervalSeconds ?? 30) * 1000;
    this.#columns = o.columns ?? terminalColumns();
    const encoder = new TextEncoder();
    this.#write = o.write ?? ((text) => Deno.stderr.writeSync(encoder.encode(text)));
    this.#writeResult = o.writeResult ?? ((text) => Deno.stdout.writeSync(encoder.encode(text)));
    this.#now = o.now ?? (() => performance.now());
  }

  /**
   * Reports progress: a stage (`evaluating 8 SAEs…`), a step line (`step 25/400 | …`, shown after
   * the stage's short name), or an indented detail.
   *
   * @param line The line, without a newline.
   */
  status(line: string): void {
    const detail = line.startsWith("  ");
    const text = line.trim();
    if (!detail && !text.startsWith("step ")) this.#stage = text;
    const shortStage = this.#stage.split(/ \(|: /)[0]!;
    const body = text === this.#stage || shortStage === "" ? text : `${shortStage} | ${text}`;
    const full = this.label ? `${this.label} ${body}` : body;
    if (this.#verbose) return this.print(this.label ? `${this.label} ${line}` : line);
    if (this.#tty) {
      this.#shown = full.length > this.#columns - 1 ? `${full.slice(0, this.#columns - 2)}…` : full;
      this.#write(`\r\x1b[2K${this.#shown}`);
      return;
    }
    if (detail || this.#now() - this.#lastPrinted < this.#intervalMs) return;
    this.#lastPrinted = this.#now();
    this.#write(`${full}\n`);
  }

  /**
   * Writes a permanent line; on a terminal the status line is cleared first and redrawn after.
   *
   * @param line The line, without a newline.
   */
  print(line: string): void {
    if (!this.#tty) return this.#write(`${line}\n`);
    this.#write(`\r\x1b[2K${line}\n${this.#shown}`);
  }

  /**
   * Writes a result line (a finished run's summary) to the result stream, above the status line.
   *
   * @param line The line, without a newline.
   */
  result(line: string): void {
    if (this.#tty && this.#shown !== "") this.#write("\r\x1b[2K");
    this.#writeResult(`${line}\n`);
    if (this.#tty && this.#shown !== "") this.#write(this.#shown);
  }

  /** Clears the status line (before the job prints its results). */
  clear(): void {
    if (this.#tty && this.#shown !== "") this.#write("\r\x1b[2K");
    this.#shown = "";
    this.#stage = "";
    this.#lastPrinted = -Infinity;
  }
}

function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns;
  } catch {
    return 100;
  }
}

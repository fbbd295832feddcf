/**
 * The loop both trainers (the GPT's and the SAEs') share: steps, progress lines, divergence
 * detection, periodic evaluation and checkpoints, and a clean stop on request. What a step does,
 * what is evaluated and what a checkpoint holds are the caller's.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import { formatDuration, Progress } from "../util/progress.ts";

/** When the loop reports, evaluates and saves. */
export interface LoopSchedule {
  /** Total steps. */
  steps: number;
  /** Steps between progress lines (and divergence checks). */
  logEvery: number;
  /** Steps between evaluations (and at the end). */
  evalEvery: number;
  /** Steps between checkpoints (and at the end). */
  checkpointEvery: number;
}

/** Inputs of {@link runTrainingLoop}. */
export interface TrainingLoopOptions {
  /** When to report, evaluate and save. */
  schedule: LoopSchedule;
  /** Steps already done (0, or a resumed checkpoint's step). */
  start: number;
  /** Tokens one step trains on, for the throughput. */
  tokensPerStep: number;
  /**
   * Runs step `step` (0-based) and returns its loss components as a 1-D tensor (or a scalar),
   * which the loop reads only at log points (`willReport`): reading synchronises with the device.
   * At those points the step may append extra figures (e.g. L0) after the components.
   */
  step(step: number, willReport: boolean): tf.Tensor | Promise<tf.Tensor>;
  /** Names of the loss components (the tensor's first entries), for the divergence message. */
  components: readonly string[];
  /** Formats the progress fields from the components read at a log point. */
  report(step: number, values: Float32Array): string;
  /** Evaluates after `step` steps; called at `evalEvery` and at the end. */
  evaluate?(step: number): Promise<void>;
  /** Saves a checkpoint after `step` steps; `finished` at the end. */
  save(step: number, finished: boolean): Promise<void>;
  /** When it fires, the loop finishes its step, saves and returns. */
  signal?: AbortSignal;
  /** Where lines go. */
  log: (line: string) => void;
}

/** How a loop ended. */
export interface LoopResult {
  /** Steps done. */
  step: number;
  /** Whether it stopped early on request (its checkpoint resumes it). */
  interrupted: boolean;
  /** Wall time of this invocation, in seconds. */
  seconds: number;
  /** Training tokens per second over this invocation. */
  tokensPerSecond: number;
}

/** Thrown when a loss stops being a finite number; names the step and the component. */
export class DivergenceError extends Error {
  override name = "DivergenceError";
}

/**
 * Runs the training loop from `start` to `schedule.steps`.
 *
 * @param o The step, reporting, evaluation and checkpoint callbacks.
 * @returns Steps done, whether interrupted, and throughput.
 * @throws {DivergenceError} When a loss component is NaN or infinite at a log point; no
 *   checkpoint is written from a diverged state.
 */
export async function runTrainingLoop(o: TrainingLoopOptions): Promise<LoopResult> {
  const { schedule: s } = o;
  const progress = new Progress(s.steps, o.start, o.tokensPerStep, "tok", o.log);
  const began = performance.now();
  let step = o.start, lastChecked = o.start, interrupted = false;
  while (step < s.steps) {
    const done = step + 1;
    const end = done === s.steps;
    const evalNow = end || done % s.evalEvery === 0;
    const saveNow = end || done % s.checkpointEvery === 0;
    // A checkpoint or evaluation must never start from a diverged state, so check before either.
    // The request to stop is read once per step, so the step that stops is also checked.
    interrupted = o.signal?.aborted === true && !end;
    const check = end || evalNow || saveNow || interrupted || done % s.logEvery === 0;
    const losses = await o.step(step, check);
    step = done;
    if (check) {
      const values = (await losses.data()) as Float32Array;
      const bad = values.subarray(0, o.components.length).findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        throw new DivergenceError(
          `Cannot train: the loss of ${o.components[bad]} became ${values[bad]} at step ${step}` +
            (step - lastChecked > 1 ? ` (or after step ${lastChecked}, the last check)` : ""),
        );
      }
      lastChecked = step;
      progress.report(step, o.report(step, values));
    }
    losses.dispose();
    if (evalNow && o.evaluate) await o.evaluate(step);
    if (saveNow || interrupted) await o.save(step, end);
    if (interrupted) break;
  }
  const seconds = (performance.now() - began) / 1000;
  const tokensPerSecond = ((step - o.start) * o.tokensPerStep) / seconds;
  o.log(
    interrupted
      ? `interrupted at step ${step}; run the same command again to resume`
      : `done: ${step} steps in ${formatDuration(seconds)}`,
  );
  return { step, interrupted, seconds, tokensPerSecond };
}

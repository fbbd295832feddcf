/**
 * Learning-rate schedules.
 *
 * @module
 */

/** Settings of {@link warmupCosine}. */
export interface WarmupCosine {
  /** Peak learning rate, reached at the end of warm-up. */
  lr: number;
  /** Learning rate at the last step. */
  minLr: number;
  /** Steps of linear warm-up. */
  warmup: number;
  /** Total steps; the cosine reaches `minLr` here. */
  steps: number;
}

/**
 * Linear warm-up then cosine decay, as nanoGPT and the SCALAR authors train: step s (0-based) gets
 * lr·(s+1)/warmup during warm-up (so the first step already moves), then
 * minLr + ½(1 + cos(π·progress))·(lr − minLr) with progress going from 0 to 1 over the remaining steps.
 *
 * @param s The schedule's settings.
 * @param step The 0-based step.
 * @returns The learning rate for that step.
 *
 * @example
 * ```ts
 * import { warmupCosine } from "./schedule.ts";
 * const s = { lr: 1e-3, minLr: 1e-5, warmup: 10, steps: 100 };
 * if (warmupCosine(s, 9) !== 1e-3 || warmupCosine(s, 99) !== 1e-5) throw new Error();
 * ```
 */
export function warmupCosine(s: WarmupCosine, step: number): number {
  if (step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  const span = s.steps - 1 - (s.warmup - 1);
  if (span <= 0) return s.lr;
  const progress = Math.min(1, (step - (s.warmup - 1)) / span);
  return s.minLr + 0.5 * (1 + Math.cos(Math.PI * progress)) * (s.lr - s.minLr);
}

/**
 * Seeded pseudo-random numbers, so that every initialisation and every random choice in a run can be
 * reproduced from its seed on any backend (tfjs's own seeded ops differ between backends).
 *
 * @module
 */

/** A seeded generator of uniform and normal floats. */
export interface Rng {
  /** A uniform float in [0, 1). */
  uniform(): number;
  /** A standard normal float (mean 0, standard deviation 1). */
  normal(): number;
  /** A uniform integer in [0, n). */
  int(n: number): number;
  /** The current state, to save with a checkpoint and resume from with {@link restoreRng}. */
  state(): number;
}

/**
 * Creates a generator from a seed (SplitMix32: tiny, fast, and good enough for initialisation and
 * shuffling; not for cryptography).
 *
 * @param seed Any integer; different seeds give independent-looking streams.
 * @returns A generator whose stream depends on the seed alone.
 *
 * @example
 * ```ts
 * import { createRng } from "./rng.ts";
 * const a = createRng(7), b = createRng(7);
 * if (a.uniform() !== b.uniform()) throw new Error("not reproducible");
 * ```
 */
export function createRng(seed: number): Rng {
  return restoreRng(Math.imul(seed | 0, 0x9e3779b9) ^ 0x6a09e667);
}

/**
 * Recreates a generator from a state returned by {@link Rng.state}.
 *
 * @param state The saved state.
 * @returns A generator that continues the saved stream.
 */
export function restoreRng(state: number): Rng {
  let s = state | 0;
  const next = (): number => {
    s = (s + 0x9e3779b9) | 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
  return {
    uniform: next,
    // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
    normal: () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next()),
    int: (n) => Math.floor(next() * n),
    state: () => s,
  };
}

/**
 * Fills a new Float32Array with normal samples N(0, std²).
 *
 * @param rng The generator to draw from.
 * @param size Number of samples.
 * @param std Standard deviation.
 * @returns The samples.
 */
export function normalArray(rng: Rng, size: number, std: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = rng.normal() * std;
  return out;
}

/**
 * Fills a new Float32Array with uniform samples in [low, high).
 *
 * @param rng The generator to draw from.
 * @param size Number of samples.
 * @param low Lower bound.
 * @param high Upper bound.
 * @returns The samples.
 */
export function uniformArray(rng: Rng, size: number, low: number, high: number): Float32Array {
  const out = new Float32Array(size);
  for (let i = 0; i < size; i++) out[i] = low + (high - low) * rng.uniform();
  return out;
}

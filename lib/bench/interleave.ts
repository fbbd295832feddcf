/**
 * Ours against the PyTorch peer with the repetitions interleaved (ours, peer, ours, peer…): on a
 * shared machine the load changes by the minute, and a peer timed later would see another one.
 * Each row reports both medians and the median of the per-repetition ratios.
 *
 * @module
 */
import type { BenchCase } from "./cases.ts";
import { medians } from "./gpu_bench.ts";
import type { PeerServer } from "./peer.ts";

/** One row of interleaved timings. */
export interface InterleavedRow {
  /** The case. */
  name: string;
  /** What ran ours. */
  detail: string;
  /** Our median step time. */
  oursMs: number;
  /** The peer's median, or null when the peer does not run the case. */
  peerMs: number | null;
  /** The median over repetitions of peer time / our time (above 1: we are faster), or null. */
  ratio: number | null;
}

/**
 * Times each case `reps` times, each of our steps followed by one of the peer's on the same case
 * when it has one.
 *
 * @param cases Our cases (names the peer knows, or others it skips).
 * @param peer The peer, if it runs.
 * @param peerCases The case names the peer serves.
 * @param reps Timed repetitions.
 * @param warmup Our untimed steps per case first (the peer warms up at its first request).
 * @returns One row per case.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { timeInterleaved } from "./interleave.ts";
 * const order: string[] = [];
 * const ours = { name: "a", detail: "", step: async () => void order.push("ours"), dispose() {} };
 * const peer = { step: async () => (order.push("peer"), 5), close: async () => {} };
 * const [row] = await timeInterleaved([ours], peer, ["a"], 2, 0);
 * equal(order.join(" "), "ours peer ours peer");
 * equal(row!.peerMs, 5);
 * ```
 */
export async function timeInterleaved(
  cases: readonly BenchCase[],
  peer: PeerServer | undefined,
  peerCases: readonly string[],
  reps: number,
  warmup = 2,
): Promise<InterleavedRow[]> {
  for (const c of cases) for (let i = 0; i < warmup; i++) await c.step();
  const [ours, theirs, ratios] = [new Map<string, number[]>(), new Map(), new Map()];
  for (let rep = 0; rep < reps; rep++) {
    for (const c of cases) {
      const t0 = performance.now();
      await c.step();
      const ms = performance.now() - t0;
      push(ours, c.name, ms);
      if (peer === undefined || !peerCases.includes(c.name)) continue;
      const peerMs = await peer.step(c.name);
      push(theirs, c.name, peerMs);
      push(ratios, c.name, peerMs / ms);
    }
  }
  const [oursMs, peerMs, ratio] = [medians(ours), medians(theirs), medians(ratios)];
  return cases.map((c) => ({
    name: c.name,
    detail: c.detail,
    oursMs: oursMs.get(c.name)!,
    peerMs: peerMs.get(c.name) ?? null,
    ratio: ratio.get(c.name) ?? null,
  }));
}

function push(values: Map<string, number[]>, key: string, value: number): void {
  values.set(key, [...values.get(key) ?? [], value]);
}

/**
 * The benchmark's output rows and their table, shared by `deno task bench` (CPU) and its GPU
 * variant, so both print the same columns: name, ours_ms, peer_ms, ratio.
 *
 * @module
 */

/** One output row: ours against the peer. */
export interface BenchRow {
  /** Case name (and the configuration, for stock baselines). */
  name: string;
  /** Our median step time. */
  ours_ms: number;
  /** The PyTorch peer's median step time on the same shapes, or null when it could not run. */
  peer_ms: number | null;
  /** peer_ms / ours_ms: above 1 means we are faster. */
  ratio: number | null;
  /** What ran. */
  backend: string;
}

/**
 * A row from two timings.
 *
 * @param name The row's name.
 * @param oursMs Our time.
 * @param peerMs The baseline's time, if it ran.
 * @param backend What ran ours.
 * @param ratio The ratio when measured otherwise (the median of interleaved repetitions' ratios);
 *   default peerMs / oursMs.
 * @returns The row, times rounded to 0.1 ms (0.001 ms below 10 ms), the ratio to 3 decimals.
 */
export function benchRow(
  name: string,
  oursMs: number,
  peerMs: number | null | undefined,
  backend: string,
  ratio?: number,
): BenchRow {
  const peer = peerMs ?? null;
  return {
    name,
    ours_ms: roundMs(oursMs),
    peer_ms: peer === null ? null : roundMs(peer),
    ratio: peer === null ? null : round(ratio ?? peer / oursMs, 3),
    backend,
  };
}

/**
 * The rows as an aligned text table (the `backend` column is left to a line of its own).
 *
 * @param rows The rows.
 * @returns Lines: a header, then one per row.
 */
export function formatRows(rows: readonly BenchRow[]): string[] {
  const width = Math.max(4, ...rows.map((r) => r.name.length));
  const ms = (x: number | null) => (x === null ? "–" : x < 10 ? x.toFixed(3) : x.toFixed(1));
  return [
    `${"case".padEnd(width)}  ${"ours ms".padStart(9)}  ${"peer ms".padStart(9)}  ratio`,
    ...rows.map((r) =>
      `${r.name.padEnd(width)}  ${ms(r.ours_ms).padStart(9)}  ${ms(r.peer_ms).padStart(9)}  ${
        r.ratio?.toFixed(2) ?? "–"
      }`
    ),
  ];
}

function roundMs(x: number): number {
  return round(x, x < 10 ? 3 : 1);
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

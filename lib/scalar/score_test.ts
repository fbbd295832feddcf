import assert from "node:assert/strict";
import {
  aggregates,
  type CurvePoint,
  improvement,
  PAPER_TABLE_UNITS,
  scalarScores,
  trapezoid,
} from "./score.ts";

const close = (a: number, b: number, tol = 1e-9) =>
  assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${a} != ${b}`);

Deno.test("trapezoid() equals hand values", () => {
  assert.equal(trapezoid([1, 2, 4], [3, 2, 0]), 1 * 2.5 + 2 * 1);
  assert.equal(trapezoid([5], [7]), 0);
  assert.equal(trapezoid([0, 10], [1, 1]), 10);
  assert.throws(() => trapezoid([2, 1], [0, 0]), /x\[1\] < x\[0\]/);
  assert.throws(() => trapezoid([1, 2], [0]), /Cannot integrate/);
});

Deno.test("scalarScores() of a known curve: absolute, relative, CI bounds and log axis", () => {
  const point = (n: number, y: number, lo: number, hi: number, yf: number): CurvePoint => ({
    n,
    klModel: y,
    klModelLow: lo,
    klModelHigh: hi,
    klFull: yf,
    klFullLow: yf,
    klFullHigh: yf,
  });
  const curve = [point(1, 4, 3, 5, 2), point(3, 2, 1, 3, 1), point(7, 0, 0, 1, 0)];
  const s = scalarScores(curve, 2 ** 19);
  // Linear axis: 2·(4+2)/2 + 4·(2+0)/2 = 10; bounds: 2·2 + 4·0.5 = 6 and 2·4 + 4·2 = 16.
  assert.equal(s.model.absolute, 10);
  assert.equal(s.model.absoluteLow, 6);
  assert.equal(s.model.absoluteHigh, 16);
  assert.equal(s.model.absoluteError, 5);
  // Relative = absolute × 2^18 / E_tot = absolute / 2 for a 512 × 1024 (Staircase) pair.
  assert.equal(s.model.relative, 5);
  assert.equal(s.model.relativeLow, 3);
  assert.equal(s.model.relativeHigh, 8);
  // Log axis: x = log2 n = 0, log2 3, log2 7.
  const l3 = Math.log2(3), l7 = Math.log2(7);
  close(s.model.logAxis, l3 * 3 + (l7 - l3) * 1);
  assert.equal(s.full.absolute, 2 * 1.5 + 4 * 0.5);
  assert.deepEqual(s.nRange, [1, 7]);
  assert.equal(s.eTot, 2 ** 19);
  assert.throws(() => scalarScores([curve[1]!, curve[0]!], 9), /increasing/);
  assert.throws(() => scalarScores([], 9), /no points/);
});

Deno.test("improvement() reproduces per-layer values of Tables 1-3 from Tables 7/8", () => {
  const pct = (t: number, x: number) => (100 * improvement(t, x)).toFixed(2);
  assert.equal(pct(10.8, 4.81), "55.46"); // FF block L0, absolute
  assert.equal(pct(10.8, 2.40), "77.78"); // FF block L0, relative
  assert.equal(pct(13.1, 6.65), "49.24"); // FF block L1, relative
  assert.equal(pct(37.4, 17.40), "53.48"); // transformer block L0, relative
  assert.equal(pct(5.55, 4.19), "24.50"); // FF layer JSAE L1
});

/** Table 7/8 values in raw units (layers 0–1 printed in 1e4, 2–3 in 1e5). */
const raw = (mantissas: number[]) => mantissas.map((m, l) => m * PAPER_TABLE_UNITS[l]!);
const pairUp = (t: number[], x: number[]) => raw(t).map((topk, l) => ({ topk, x: raw(x)[l]! }));

Deno.test("aggregates() reproduces the paper's headline numbers and the consistent-unit ones", () => {
  const ffTopk = [10.8, 13.1, 2.43, 1.84];
  const ffRel = aggregates(pairUp(ffTopk, [2.40, 6.65, 1.30, 1.01]));
  assert.equal(ffRel.asPrintedPercent.toFixed(2), "59.67");
  assert.equal(ffRel.consistentPercent.toFixed(2), "51.73");
  assert.deepEqual(ffRel.perLayerPercent.map((p) => p.toFixed(2)), [
    "77.78",
    "49.24",
    "46.50",
    "45.11",
  ]);
  const ffAbs = aggregates(pairUp(ffTopk, [4.81, 13.3, 2.61, 2.03]));
  assert.equal(ffAbs.asPrintedPercent.toFixed(2), "19.24");
  assert.equal(ffAbs.consistentPercent.toFixed(2), "3.14");

  const tbTopk = [37.4, 26.2, 3.37, 1.88];
  const tbRel = aggregates(pairUp(tbTopk, [17.40, 7.18, 0.58, 0.21]));
  assert.equal(tbRel.asPrintedPercent.toFixed(2), "63.15");
  assert.equal(tbRel.consistentPercent.toFixed(2), "72.02");
  const tbAbs = aggregates(pairUp(tbTopk, [34.8, 43.1, 6.99, 4.24]));
  assert.equal(tbAbs.asPrintedPercent.toFixed(2), "-29.46");
  assert.equal(tbAbs.consistentPercent.toFixed(2), "-63.82");

  const jsae = aggregates(pairUp([0.0977, 5.55, 1.57, 1.35], [0.686, 4.19, 1.42, 1.54]));
  assert.equal(jsae.asPrintedPercent.toFixed(2), "8.54");
  assert.equal(jsae.consistentPercent.toFixed(2), "1.07");
});

Deno.test("aggregates() takes other units and rejects a mismatch", () => {
  const a = aggregates([{ topk: 4, x: 1 }, { topk: 4, x: 3 }], [1, 1]);
  assert.equal(a.asPrintedPercent, 50);
  assert.equal(a.consistentPercent, 50);
  assert.throws(() => aggregates([{ topk: 1, x: 1 }]), /Cannot aggregate 1 layers/);
});

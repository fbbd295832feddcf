import assert from "node:assert/strict";
import { buildSaes, type SaeConfig } from "../architectures.ts";
import { layoutPosition } from "../positions.ts";
import { MultiRunEngine } from "./multi_run.ts";
import { SaeEngine, type SaeEngineOptions } from "./sae_engine.ts";
import { gpuTest, randomizeParams, randomRows } from "./testdata/harness.ts";

const D = 8, ROWS = 24, STEPS = 3;
const layout = layoutPosition("mlp-block", 2);

// Three runs of one grid on the same data: two TopK seeds and a Staircase run, each with its own
// learning rate and micro-batches for one of them.
const RUNS: { sae: SaeConfig; seed: number; lr: number; microRows?: number }[] = [
  { sae: { arch: "topk", features: 16, k: 3, jsaeLambda: 0 }, seed: 0, lr: 1e-2 },
  { sae: { arch: "topk", features: 16, k: 3, jsaeLambda: 0 }, seed: 1, lr: 3e-3, microRows: 8 },
  { sae: { arch: "staircase", features: 8, k: 2, jsaeLambda: 0 }, seed: 2, lr: 5e-3 },
];

function options(run: (typeof RUNS)[number]): SaeEngineOptions {
  const saes = buildSaes(run.sae, layout, D, run.seed);
  randomizeParams(saes, run.seed + 10);
  return {
    saes,
    sae: run.sae,
    rows: ROWS,
    microRows: run.microRows,
    adam: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 },
    gradClip: 1,
  };
}

/** The batch every run sees at a step (the runs share their data). */
function batch(step: number): Map<string, Float32Array> {
  return new Map(layout.hooks.map((h, i) => [h, randomRows(ROWS, D, 100 * step + i)]));
}

/** Everything a run ends with: the figures of every step, parameters and optimizer state. */
async function outcome(engine: SaeEngine, figures: Float32Array[]) {
  const state = await engine.state();
  return {
    figures,
    params: [...await engine.params()].map(([name, p]) => [name, p.data]),
    step: state.step,
    moments: [...state.tensors].map(([name, t]) => [name, t.data]),
  };
}

gpuTest("runs stepped together equal each run trained alone, bit for bit", async (gpu) => {
  const alone = [];
  for (const run of RUNS) {
    const o = options(run);
    const engine = await SaeEngine.create(gpu, o);
    const figures: Float32Array[] = [];
    for (let s = 0; s < STEPS; s++) figures.push((await engine.step(batch(s), run.lr, true))!);
    alone.push(await outcome(engine, figures));
    engine.dispose();
    o.saes.dispose();
  }

  const opts = RUNS.map(options);
  const together = await MultiRunEngine.create(gpu, opts);
  const figures: Float32Array[][] = RUNS.map(() => []);
  for (let s = 0; s < STEPS; s++) {
    const b = batch(s);
    const out = await together.step(RUNS.map(() => b), RUNS.map((r) => r.lr), true);
    out.forEach((f, i) => figures[i]!.push(f!));
  }
  for (let i = 0; i < RUNS.length; i++) {
    const got = await outcome(together.engines[i]!, figures[i]!);
    assert.deepEqual(got, alone[i], `run ${i} (${RUNS[i]!.sae.arch}, seed ${RUNS[i]!.seed})`);
  }
  // The runs did learn something different from each other (the comparison is not vacuous).
  assert.notDeepEqual(alone[0]!.params, alone[1]!.params);
  assert.equal(alone[0]!.step, STEPS);

  // A step that reports nothing returns nothing per run, and still steps every run.
  const quiet = await together.step(RUNS.map(() => undefined), RUNS.map((r) => r.lr), false);
  assert.deepEqual(quiet, [undefined, undefined, undefined]);
  assert.deepEqual(together.engines.map((e) => e.stepsDone), [4, 4, 4]);
  together.dispose();
  for (const o of opts) o.saes.dispose();
});

gpuTest("runs stepped together need one batch and one learning rate per run", async (gpu) => {
  const opts = RUNS.slice(0, 2).map(options);
  const together = await MultiRunEngine.create(gpu, opts);
  try {
    await assert.rejects(
      together.step([batch(0)], [1e-3, 1e-3], true),
      /Cannot step 2 runs together with 1 batches and 2 learning rates: give one of each per run/,
    );
  } finally {
    together.dispose();
    for (const o of opts) o.saes.dispose();
  }
  await assert.rejects(MultiRunEngine.create(gpu, []), /no runs given/);
});

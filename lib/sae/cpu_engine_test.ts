import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { AdamW } from "../optim/adamw.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "./architectures.ts";
import { BLOCK_ROWS, CpuSaeEngine, encoderRows } from "./cpu_engine.ts";
import { layoutPosition, type Position } from "./positions.ts";
import { type ReferenceJacobian, referenceStep } from "./testdata/reference_step.ts";

await tf.setBackend("cpu");
// The reference runs on stock tfjs cpu on purpose; its first-use banner would only advertise tfjs-node.
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;

interface Case {
  name: string;
  sae: SaeConfig;
  position: Position;
  nLayer: number;
  d: number;
  rows: number;
  microRows?: number;
  gradClip: number;
  weightDecay?: number;
  decays?: (name: string, shape: readonly number[]) => boolean;
  /** JSAE: the MLP width. */
  m?: number;
  /** Makes every feature's pre-activation equal to another's (ties for the selection). */
  ties?: boolean;
  /** Added to every b_enc: a negative one leaves fewer than k positive (zeros kept, all tied). */
  shift?: number;
}

const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
const LR = [1e-3, 2e-3, 1.5e-3];

/**
 * Asserts max |a − e| / max |e| ≤ tol (elementwise relative error means nothing for entries that
 * cancel to near zero).
 */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
  tol = 1e-5,
) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let diff = 0, scale = 0, worst = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(actual[i]! - expected[i]!);
    if (!(d <= diff)) [diff, worst] = [d, i];
    scale = Math.max(scale, Math.abs(expected[i]!));
  }
  const rel = scale === 0 ? diff : diff / scale;
  assert.ok(
    rel <= tol,
    `${what}: relative error ${rel} > ${tol} at ${worst} (got ${actual[worst]}, want ${
      expected[worst]
    })`,
  );
}

// Random values for every parameter (biases too, which start at zero) so every term is exercised;
// with `ties`, each odd feature copies the even one before it, so their pre-activations are equal.
function randomize(saes: SaeSet, seed: number, ties = false, shift = 0): void {
  const rng = createRng(seed);
  for (const [name, v] of saes.params) {
    const values = normalArray(rng, v.size, 0.3);
    if (name.endsWith("b_enc")) values.forEach((x, i) => (values[i] = x + shift));
    if (ties && /W_enc|b_enc/.test(name)) {
      const cols = v.shape.at(-1)!;
      for (let i = 0; i < v.size; i++) if (i % cols % 2 === 1) values[i] = values[i - 1]!;
    }
    v.assign(tf.tensor(values, v.shape));
  }
}

function prepare(c: Case) {
  const layout = layoutPosition(c.position, c.nLayer);
  const [ours, theirs] = [buildSaes(c.sae, layout, c.d, 5), buildSaes(c.sae, layout, c.d, 5)];
  randomize(ours, 6, c.ties, c.shift);
  randomize(theirs, 6, c.ties, c.shift);
  const batches = LR.map((_, s) =>
    new Map(layout.hooks.map((h, i) => [h, normalArray(createRng(100 * s + i), c.rows * c.d, 1)]))
  );
  let jacobian: ReferenceJacobian | undefined;
  if (c.m !== undefined) {
    const rng = createRng(7);
    const mlps = layout.pairs.map(() => ({
      wFc: tf.tensor2d(normalArray(rng, c.d * c.m!, 0.3), [c.d, c.m!]),
      bFc: tf.tensor1d(normalArray(rng, c.m!, 0.3)),
      wProj: tf.tensor2d(normalArray(rng, c.m! * c.d, 0.3), [c.m!, c.d]),
    }));
    jacobian = {
      pairs: layout.pairs,
      mlp: (p) => mlps[layout.pairs.indexOf(p)]!,
      lambda: c.sae.jsaeLambda,
    };
  }
  const settings = { ...adam, weightDecay: c.weightDecay ?? 0, decays: c.decays };
  return { ours, theirs, batches, layout, jacobian, settings };
}

function engineFor(c: Case, saes: SaeSet, jacobian?: ReferenceJacobian): Promise<CpuSaeEngine> {
  return CpuSaeEngine.create({
    saes,
    sae: c.sae,
    rows: c.rows,
    microRows: c.microRows,
    adam: { ...adam, weightDecay: c.weightDecay ?? 0, decays: c.decays },
    gradClip: c.gradClip,
    jacobian,
  });
}

const topk = (features: number, k: number): SaeConfig => ({
  arch: "topk",
  features,
  k,
  jsaeLambda: 0,
});

const cases: Case[] = [
  {
    name: "topk, rows not a multiple of the block or encoder chunk",
    sae: topk(70, 6),
    position: "mlp",
    nLayer: 1,
    d: 20,
    rows: 4 * encoderRows(70) + BLOCK_ROWS + 37,
    gradClip: 1e3,
  },
  {
    name: "topk in micro-batches, clipping active",
    sae: topk(40, 5),
    position: "mlp",
    nLayer: 1,
    d: 16,
    rows: 700,
    microRows: 300,
    gradClip: 0.05,
  },
  {
    name: "topk, k = 1 and weight decay on matrices only",
    sae: topk(30, 1),
    position: "mlp",
    nLayer: 1,
    d: 12,
    rows: 70,
    gradClip: 1,
    weightDecay: 0.1,
    decays: (_, shape) => shape.length === 2,
  },
  {
    name: "topk, k = width (zero values kept)",
    sae: topk(8, 8),
    position: "mlp",
    nLayer: 1,
    d: 12,
    rows: 40,
    gradClip: 1,
  },
  {
    name: "topk, tied pre-activations",
    sae: topk(24, 5),
    position: "mlp",
    nLayer: 1,
    d: 10,
    rows: 90,
    gradClip: 1,
    ties: true,
  },
  {
    name: "topk, fewer than k positive in many rows (zeros kept, tied)",
    sae: topk(150, 12),
    position: "mlp",
    nLayer: 1,
    d: 10,
    rows: 80,
    gradClip: 1,
    shift: -2.5,
  },
  {
    name: "staircase chain of three (block)",
    sae: { arch: "staircase", features: 24, k: 4, jsaeLambda: 0 },
    position: "block",
    nLayer: 2,
    d: 16,
    rows: 300,
    gradClip: 1,
  },
  {
    name: "staircase-detached chain of three (block), micro-batches",
    sae: { arch: "staircase-detached", features: 24, k: 4, jsaeLambda: 0 },
    position: "block",
    nLayer: 2,
    d: 16,
    rows: 300,
    microRows: 128,
    gradClip: 1,
  },
  {
    name: "staircase, two chains (mlp-block)",
    sae: { arch: "staircase", features: 20, k: 3, jsaeLambda: 0 },
    position: "mlp-block",
    nLayer: 2,
    d: 16,
    rows: 90,
    microRows: 50,
    gradClip: 1,
  },
  {
    name: "jsae, two pairs, micro-batches",
    sae: { arch: "jsae", features: 40, k: 4, jsaeLambda: 0.05 },
    position: "mlp",
    nLayer: 2,
    d: 16,
    rows: 300,
    microRows: 128,
    gradClip: 1,
    m: 48,
  },
  {
    name: "jsae, rows over one Jacobian chunk",
    sae: { arch: "jsae", features: 24, k: 3, jsaeLambda: 0.5 },
    position: "mlp",
    nLayer: 1,
    d: 8,
    rows: 1100,
    gradClip: 1,
    m: 16,
  },
];

for (const c of cases) {
  Deno.test(`CPU engine steps equal the tfjs reference: figures, moments, parameters (${c.name})`, async () => {
    const { ours, theirs, batches, layout, jacobian, settings } = prepare(c);
    const engine = await engineFor(c, ours, jacobian);
    const optimizer = new AdamW(theirs.params, settings);
    for (const [s, lr] of LR.entries()) {
      const got = await engine.step(batches[s], lr, true);
      const x = new Map(
        layout.hooks.map((h) => [h, tf.tensor2d(batches[s]!.get(h)!, [c.rows, c.d])]),
      );
      const want = referenceStep(theirs, optimizer, x, c.gradClip, lr, jacobian);
      tf.dispose([...x.values()]);
      assertClose(got!, want, `step ${s + 1} losses, Jacobian terms, L0`);
      // After one step m = (1 − β₁)·clipped gradient: the gradients themselves, checked.
      const [mine, ref] = [await engine.state(), await optimizer.state()];
      assert.equal(mine.step, ref.step);
      for (const [name, t] of ref.tensors) {
        assertClose(mine.tensors.get(name)!.data, t.data, `step ${s + 1} ${name}`);
      }
      const params = await engine.params();
      for (const [name, v] of theirs.params) {
        assertClose(params.get(name)!.data, await v.data(), `step ${s + 1} ${name}`);
      }
    }
    engine.dispose();
    optimizer.dispose();
    ours.dispose();
    theirs.dispose();
  });
}

Deno.test("CPU engine gives the same bits with 1 and 2 threads (OpenMP and OpenBLAS)", async () => {
  const digest = async (threads: string) => {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", new URL("./testdata/engine_digest.ts", import.meta.url).href],
      env: { OMP_NUM_THREADS: threads, OPENBLAS_NUM_THREADS: threads },
    }).output();
    assert.equal(code, 0, new TextDecoder().decode(stderr));
    return new TextDecoder().decode(stdout).trim();
  };
  const [one, two] = [await digest("1"), await digest("2")];
  assert.match(one, /^[0-9a-f]{64}$/);
  assert.equal(two, one);
});

Deno.test("CPU engine: a run stopped and resumed from state() ends bit-exact with one that was not", async () => {
  const c = cases.find((c) => c.name.startsWith("jsae"))!;
  const { ours, theirs, batches, jacobian } = prepare(c);
  const whole = await engineFor(c, ours, jacobian);
  for (const [s, lr] of LR.entries()) await whole.step(batches[s], lr, false);
  // The other run stops after one step: its parameters go back into the SAE set (as a checkpoint
  // restores them) and a new engine continues from the saved moments.
  const first = await engineFor(c, theirs, jacobian);
  await first.step(batches[0], LR[0]!, false);
  const saved = await first.state();
  await first.writeBack();
  first.dispose();
  const resumed = await engineFor(c, theirs, jacobian);
  await resumed.load(saved);
  for (let s = 1; s < LR.length; s++) await resumed.step(batches[s], LR[s]!, false);
  assert.deepEqual(await resumed.params(), await whole.params());
  assert.deepEqual(await resumed.state(), await whole.state());
  ours.dispose();
  theirs.dispose();
});

Deno.test("CPU engine refuses what it cannot train, naming the problem", async () => {
  const c = cases[0]!;
  const { ours, batches } = prepare(c);
  await assert.rejects(
    CpuSaeEngine.create({
      saes: ours,
      sae: { ...c.sae, arch: "jsae" },
      rows: c.rows,
      adam: { ...adam, weightDecay: 0 },
      gradClip: 1,
    }),
    /Cannot train "jsae" SAEs on the CPU engine without the MLPs of the Jacobian term/,
  );
  await assert.rejects(
    engineFor({ ...c, sae: topk(70, 71) }, ours),
    /Cannot keep k = 71 features: need 1 ≤ k ≤ every SAE's width/,
  );
  await assert.rejects(
    engineFor({ ...c, microRows: 0 }, ours),
    /Cannot train on 1317 rows per step in passes of 0/,
  );
  const engine = await engineFor(c, ours);
  await assert.rejects(
    engine.step(undefined, 1e-3, true),
    /Cannot train "blocks.0.hook_mlp_in": its batch has no values, not 1317 × 20/,
  );
  const hook = [...batches[0]!.keys()][0]!;
  await assert.rejects(
    engine.step(new Map([[hook, new Float32Array(5)]]), 1e-3, true),
    /Cannot train "blocks.0.hook_mlp_in": its batch has 5 values, not 1317 × 20/,
  );
  ours.dispose();
});

import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { createRng, normalArray } from "../util/rng.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "./architectures.ts";
import { CpuSaeEngine } from "./cpu_engine.ts";
import type { MlpWeights } from "./jacobian.ts";
import { layoutPosition, type Position, type SaePair } from "./positions.ts";
import { TfjsStepper } from "./steppers/tfjs.ts";

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
  /** JSAE: the MLP width. */
  m?: number;
  /** Added to every b_enc: a negative one leaves fewer than k positive (zeros kept, all tied). */
  shift?: number;
}

/** JSAE pairs with random MLPs between them. */
interface Jacobian {
  pairs: readonly SaePair[];
  mlp: (pair: SaePair) => MlpWeights;
  lambda: number;
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
// `shift` is added to every b_enc.
function randomize(saes: SaeSet, seed: number, shift = 0): void {
  const rng = createRng(seed);
  for (const [name, v] of saes.params) {
    const values = normalArray(rng, v.size, 0.3);
    if (name.endsWith("b_enc")) values.forEach((x, i) => (values[i] = x + shift));
    v.assign(tf.tensor(values, v.shape));
  }
}

function prepare(c: Case) {
  const layout = layoutPosition(c.position, c.nLayer);
  const [ours, theirs] = [buildSaes(c.sae, layout, c.d, 5), buildSaes(c.sae, layout, c.d, 5)];
  randomize(ours, 6, c.shift);
  randomize(theirs, 6, c.shift);
  const batches = LR.map((_, s) =>
    new Map(layout.hooks.map((h, i) => [h, normalArray(createRng(100 * s + i), c.rows * c.d, 1)]))
  );
  let jacobian: Jacobian | undefined;
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
  return { ours, theirs, batches, jacobian };
}

function engineFor(c: Case, saes: SaeSet, jacobian?: Jacobian): Promise<CpuSaeEngine> {
  return CpuSaeEngine.create({
    saes,
    sae: c.sae,
    rows: c.rows,
    microRows: c.microRows,
    adam: { ...adam, weightDecay: 0 },
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

// The engine's own paths; the cases every stepper shares are in steppers_test.ts.
const cases: Case[] = [
  {
    name: "topk, fewer than k positive in many rows (zeros kept and tied: the insertion path)",
    sae: topk(150, 12),
    position: "mlp",
    nLayer: 1,
    d: 10,
    rows: 80,
    gradClip: 1,
    shift: -2.5,
  },
  {
    name: "jsae, rows over one Jacobian chunk",
    sae: { arch: "jsae", features: 24, k: 3, jsaeLambda: 0.5 },
    position: "mlp",
    nLayer: 1,
    d: 8,
    rows: 1100,
    gradClip: 1,
    // Not a multiple of 16: the backward's column loop ends one column at a time.
    m: 20,
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
];

for (const c of cases) {
  Deno.test(`CPU engine steps equal the tfjs reference: figures, moments, parameters (${c.name})`, async () => {
    const { ours, theirs, batches, jacobian } = prepare(c);
    const engine = await engineFor(c, ours, jacobian);
    const reference = new TfjsStepper({
      saes: theirs,
      sae: c.sae,
      rows: c.rows,
      microRows: c.microRows,
      adam: { ...adam, weightDecay: 0 },
      gradClip: c.gradClip,
      jacobian,
    });
    for (const [s, lr] of LR.entries()) {
      const got = await engine.step(batches[s], lr, true);
      const want = await reference.step(batches[s]!, lr, true);
      assertClose(got!, want!, `step ${s + 1} losses, Jacobian terms, L0`);
      // After one step m = (1 − β₁)·clipped gradient: the gradients themselves, checked.
      const [mine, ref] = [await engine.state(), await reference.state()];
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
    reference.dispose();
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
    engineFor({ ...c, sae: topk(150, 151) }, ours),
    /Cannot keep k = 151 features: need 1 ≤ k ≤ every SAE's width/,
  );
  await assert.rejects(
    engineFor({ ...c, microRows: 0 }, ours),
    /Cannot train on 80 rows per step in passes of 0/,
  );
  const engine = await engineFor(c, ours);
  await assert.rejects(
    engine.step(undefined, 1e-3, true),
    /Cannot train "blocks.0.hook_mlp_in": its batch has no values, not 80 × 10/,
  );
  const hook = [...batches[0]!.keys()][0]!;
  await assert.rejects(
    engine.step(new Map([[hook, new Float32Array(5)]]), 1e-3, true),
    /Cannot train "blocks.0.hook_mlp_in": its batch has 5 values, not 80 × 10/,
  );
  ours.dispose();
});

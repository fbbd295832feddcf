/**
 * One table of cases for every SAE stepper available here (`stepper.ts`): each engine's steps
 * equal the tfjs reference's within 1e-5 relative (figures, Adam moments, parameters), and a
 * whole short `trainSaes` run on each logs the reference's losses and resumes bit-exactly. An
 * engine that cannot start here (no C compiler or OpenBLAS; no WebGPU adapter, Mesa's llvmpipe
 * counting as one) has its tests ignored, with the reason printed.
 */
import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "./architectures.ts";
import { assertClose } from "./gpu/testdata/harness.ts";
import type { MlpWeights } from "./jacobian.ts";
import { layoutPosition, type Position, type SaePair } from "./positions.ts";
import type { StepperKind, StepperOptions } from "./stepper.ts";
import { chooseStepper } from "./steppers/choose.ts";
import { TfjsStepper } from "./steppers/tfjs.ts";
import { sparseSource } from "./testdata/sparse_source.ts";
import { SAE_TRAIN_DEFAULTS, trainSaes, type TrainSaesOptions } from "./train.ts";

await tf.setBackend("cpu");
// The reference runs on stock tfjs cpu on purpose; its first-use banner would only advertise tfjs-node.
(tf.backend() as unknown as { firstUse: boolean }).firstUse = false;

const TOLERANCE = 1e-5;
const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
const LR = [1e-3, 2e-3, 1.5e-3];

// Every engine that starts here, tried once on a tiny set of SAEs.
const ENGINES: StepperKind[] = [];
for (const kind of ["cpu", "webgpu"] as const) {
  const sae: SaeConfig = { arch: "topk", features: 4, k: 1, jsaeLambda: 0 };
  const saes = buildSaes(sae, layoutPosition("mlp", 1), 2, 0);
  try {
    const options = { saes, sae, rows: 2, adam: { ...adam, weightDecay: 0 }, gradClip: 1 };
    (await chooseStepper(options, { stepper: kind })).stepper.dispose();
    ENGINES.push(kind);
  } catch (e) {
    console.log(`${kind} stepper tests skipped: ${(e as Error).message}`);
  }
  saes.dispose();
}

/** Registers a test per stepper, ignored where the stepper cannot start. */
function stepperTest(
  kinds: readonly StepperKind[],
  name: (kind: StepperKind) => string,
  fn: (kind: StepperKind) => Promise<void>,
): void {
  for (const kind of kinds) {
    const available = kind === "tfjs" || ENGINES.includes(kind);
    Deno.test({ name: name(kind), ignore: !available, fn: () => fn(kind) });
  }
}

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
  /** Makes every odd feature's pre-activation equal to the even one's before it. */
  ties?: boolean;
}

const topk = (features: number, k: number): SaeConfig => ({
  arch: "topk",
  features,
  k,
  jsaeLambda: 0,
});

const cases: Case[] = [
  {
    // Not a multiple of the GPU's 64-row blocks nor of the CPU engine's 256-row blocks and
    // 1,024-row encoder chunks; D above one 64-wide GPU tile.
    name: "topk, D > 64, rows a multiple of no block size",
    sae: topk(70, 6),
    position: "mlp",
    nLayer: 1,
    d: 80,
    rows: 1024 + 256 + 37,
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
    name: "staircase, two chains (mlp-block), micro-batches",
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
];

// Random values for every parameter (biases too, which start at zero) so every term is exercised;
// with `ties`, each odd feature copies the even one before it, so their pre-activations are equal.
function randomize(saes: SaeSet, seed: number, ties = false): void {
  const rng = createRng(seed);
  for (const [name, v] of saes.params) {
    const values = normalArray(rng, v.size, 0.3);
    if (ties && /W_enc|b_enc/.test(name)) {
      const cols = v.shape.at(-1)!;
      for (let i = 0; i < v.size; i++) if (i % cols % 2 === 1) values[i] = values[i - 1]!;
    }
    v.assign(tf.tensor(values, v.shape));
  }
}

/** A random frozen MLP `d → m → d` per pair. */
function randomMlps(pairs: readonly SaePair[], d: number, m: number): (p: SaePair) => MlpWeights {
  const rng = createRng(7);
  const mlps = pairs.map(() => ({
    wFc: tf.tensor2d(normalArray(rng, d * m, 0.3), [d, m]),
    bFc: tf.tensor1d(normalArray(rng, m, 0.3)),
    wProj: tf.tensor2d(normalArray(rng, m * d, 0.3), [m, d]),
  }));
  return (p) => mlps[pairs.indexOf(p)]!;
}

// The same SAEs twice and the stepper options over each.
function prepare(c: Case): { options: [StepperOptions, StepperOptions]; hooks: string[] } {
  const layout = layoutPosition(c.position, c.nLayer);
  const mlp = c.m === undefined ? undefined : randomMlps(layout.pairs, c.d, c.m);
  const options = [0, 1].map((): StepperOptions => {
    const saes = buildSaes(c.sae, layout, c.d, 5);
    randomize(saes, 6, c.ties);
    return {
      saes,
      sae: c.sae,
      rows: c.rows,
      microRows: c.microRows,
      adam: { ...adam, weightDecay: c.weightDecay ?? 0, decays: c.decays },
      gradClip: c.gradClip,
      jacobian: mlp && { pairs: layout.pairs, mlp, lambda: c.sae.jsaeLambda },
    };
  });
  return { options: options as [StepperOptions, StepperOptions], hooks: layout.hooks };
}

for (const c of cases) {
  stepperTest(
    ["cpu", "webgpu"],
    (kind) => `${kind} stepper equals the tfjs reference: figures, moments, parameters (${c.name})`,
    async (kind) => {
      const { options: [ours, theirs], hooks } = prepare(c);
      const { stepper } = await chooseStepper(ours, { stepper: kind });
      const reference = new TfjsStepper(theirs);
      for (const [s, lr] of LR.entries()) {
        const batch = new Map(
          hooks.map((h, i) => [h, normalArray(createRng(100 * s + i), c.rows * c.d, 1)]),
        );
        const got = await stepper.step(batch, lr, true);
        const want = await reference.step(batch, lr, true);
        const at = `${kind}, ${c.name}, step ${s + 1}`;
        assertClose(got!, want!, `${at}: losses, pair terms, L0`, TOLERANCE);
        // After one step m = (1 − β₁)·clipped gradient: the gradients themselves, checked.
        const [mine, ref] = [await stepper.state(), await reference.state()];
        assert.equal(mine.step, ref.step);
        for (const [name, t] of ref.tensors) {
          assertClose(mine.tensors.get(name)!.data, t.data, `${at}: ${name}`, TOLERANCE);
        }
        await stepper.writeBack();
        for (const [name, v] of theirs.saes.params) {
          const got = await ours.saes.params.get(name)!.data();
          assertClose(got, await v.data(), `${at}: ${name}`, TOLERANCE);
        }
      }
      stepper.dispose();
      reference.dispose();
      ours.saes.dispose();
      theirs.saes.dispose();
    },
  );
}

Deno.test("chooseStepper() takes the backend's engine, hands over to the reference when it cannot start, and SCALAR_SAE_STEPPER forces one", async () => {
  // Each choice in a process of its own, with the variables set there only (see the script).
  const choose = async (env: Record<string, string>, stepper?: StepperKind) => {
    const script = new URL("./testdata/choose_stepper.ts", import.meta.url).href;
    const args = ["run", "--allow-all", script, ...(stepper ? [stepper] : [])];
    const out = await new Deno.Command(Deno.execPath(), { args, env, stderr: "inherit" }).output();
    assert.ok(out.success, `choose_stepper.ts exited with ${out.code}`);
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    return JSON.parse(lines.at(-1)!) as { kind?: string; line?: string; error?: string };
  };
  const none = { SCALAR_SAE_STEPPER: "" };
  // The tests run on the tfjs cpu backend, whose engine is the CPU one; where it cannot start
  // (here: its kernels cannot be compiled) the reference trains, saying why; forced, it fails.
  if (ENGINES.includes("cpu")) {
    assert.deepEqual(await choose(none), { kind: "cpu", line: "SAE steps: the CPU engine" });
    const noCompiler = { ...none, CC: "/nonexistent/cc" };
    assert.match((await choose(noCompiler, "cpu")).error!, /\/nonexistent\/cc/);
    const handedOver = await choose(noCompiler);
    assert.equal(handedOver.kind, "tfjs");
    assert.match(handedOver.line!, /^SAE steps: tfjs cpu ops \(cpu engine unavailable: .+\)$/);
  }
  assert.deepEqual(await choose({ SCALAR_SAE_STEPPER: "tfjs" }), {
    kind: "tfjs",
    line: "SAE steps: tfjs cpu ops",
  });
  assert.match(
    (await choose({ SCALAR_SAE_STEPPER: "gpu" })).error!,
    /SCALAR_SAE_STEPPER=gpu: use one of tfjs, cpu, webgpu/,
  );
});

/** A whole short training run, on every stepper. */
interface RunCase {
  name: string;
  sae: SaeConfig;
  position: Position;
  /** JSAE: the MLP width. */
  m?: number;
  microBatch?: number;
}

const D = 8, SEQ = 4, STEPS = 12;
const runs: RunCase[] = [
  {
    name: "staircase at mlp-block",
    sae: { arch: "staircase", features: 16, k: 3, jsaeLambda: 0 },
    position: "mlp-block",
  },
  {
    name: "jsae at mlp, micro-batches",
    sae: { arch: "jsae", features: 16, k: 3, jsaeLambda: 0.02 },
    position: "mlp",
    m: 32,
    microBatch: 6,
  },
];

type Logged = { step: number; sae: string; loss: number; l0: number }[];

async function train(
  kind: StepperKind,
  r: RunCase,
  outDir: string,
  extra: Partial<TrainSaesOptions> = {},
) {
  const layout = layoutPosition(r.position, 1);
  const saes = buildSaes(r.sae, layout, D, 0);
  const logged: Logged = [];
  const result = await trainSaes({
    saes,
    sae: r.sae,
    train: {
      ...SAE_TRAIN_DEFAULTS,
      steps: STEPS,
      batch: 16,
      microBatch: r.microBatch,
      warmup: 3,
      lr: 1e-2,
      logEvery: 1,
    },
    seqLen: SEQ,
    d: D,
    data: sparseSource(400, layout.hooks, D),
    mlps: r.m === undefined
      ? undefined
      : { pairs: layout.pairs, mlp: randomMlps(layout.pairs, D, r.m) },
    outDir,
    provenance: {},
    log: () => {},
    onReport: (step, entries) => logged.push(...entries.map((e) => ({ step, ...e }))),
    stepper: kind,
    ...extra,
  });
  saes.dispose();
  return { result, logged, checkpoint: (await loadCheckpoint(outDir))! };
}

for (const r of runs) {
  stepperTest(
    ["tfjs", "cpu", "webgpu"],
    (kind) =>
      `trainSaes() on the ${kind} stepper logs the tfjs run's losses and resumes bit-exactly (${r.name})`,
    async (kind) => {
      const dir = await Deno.makeTempDir();
      const reference = await train("tfjs", r, `${dir}/reference`);
      const straight = await train(kind, r, `${dir}/straight`);
      assert.equal(straight.result.stepper, kind);
      assert.equal((straight.checkpoint.config as { stepper?: string }).stepper, kind);
      assert.deepEqual(
        straight.logged.map((e) => [e.step, e.sae]),
        reference.logged.map((e) => [e.step, e.sae]),
      );
      for (const field of ["loss", "l0"] as const) {
        const [got, want] = [straight.logged, reference.logged].map((l) => l.map((e) => e[field]));
        assertClose(got!, want!, `${kind}: logged ${field}`, TOLERANCE);
      }
      const abort = new AbortController();
      const first = await train(kind, r, `${dir}/resumed`, {
        signal: abort.signal,
        onReport: (step) => step === 5 && abort.abort(),
      });
      assert.equal(first.result.step, 6);
      const resumed = await train(kind, r, `${dir}/resumed`);
      assert.equal(resumed.result.step, STEPS);
      for (const [name, p] of Object.entries(straight.checkpoint.params)) {
        assert.deepEqual(resumed.checkpoint.params[name]!.data, p.data, `${kind}: ${name} resumed`);
      }
      assert.deepEqual(resumed.logged, straight.logged.filter((e) => e.step > 6));
      await Deno.remove(dir, { recursive: true });
    },
  );
}

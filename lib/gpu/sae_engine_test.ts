import * as tf from "@tensorflow/tfjs";
import { AdamW, clipGlobalNorm } from "../optim/adamw.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "../sae/architectures.ts";
import { layoutPosition, type Position } from "../sae/positions.ts";
import { decode, encode, reconstructionLoss } from "../sae/sae.ts";
import { SaeEngine } from "./sae_engine.ts";
import { assertClose, gpuTest, randomizeParams, randomRows } from "./testdata/harness.ts";

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
}

const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
const LR = [1e-3, 2e-3];

/** The reference step of `trainSaes`: summed losses, one backward pass, clipping, AdamW. */
function referenceStep(
  saes: SaeSet,
  optimizer: AdamW,
  x: Map<string, tf.Tensor2D>,
  gradClip: number,
  lr: number,
): number[] {
  const vars = [...saes.params.values()];
  return tf.tidy(() => {
    const figures: tf.Tensor[] = [];
    const { grads } = tf.variableGrads(() => {
      const losses = saes.hooks.map((h) => {
        const w = saes.weights(h);
        const f = encode(w, x.get(h)!, saes.k);
        figures.push(tf.keep(f.greater(0).sum(1).mean().cast("float32")));
        return reconstructionLoss(x.get(h)!, decode(w, f));
      });
      figures.unshift(...losses.map((l) => tf.keep(l.clone())));
      return tf.addN(losses) as tf.Scalar;
    }, vars);
    const named = new Map([...saes.params.keys()].map((n, i) => [n, grads[vars[i]!.name]!]));
    optimizer.update(clipGlobalNorm(named, gradClip).grads, lr);
    return figures.map((f) => f.dataSync()[0]!);
  });
}

function prepare(c: Case) {
  const config = { ...c.sae };
  const layout = layoutPosition(c.position, c.nLayer);
  const [ours, theirs] = [buildSaes(config, layout, c.d, 5), buildSaes(config, layout, c.d, 5)];
  randomizeParams(ours, 6);
  randomizeParams(theirs, 6);
  const settings = { ...adam, weightDecay: c.weightDecay ?? 0 };
  const batches = LR.map((_, s) =>
    new Map(layout.hooks.map((h, i) => [h, randomRows(c.rows, c.d, 100 * s + i)]))
  );
  return { ours, theirs, settings, batches, layout };
}

const cases: Case[] = [
  {
    name: "topk, D > 64, rows not a multiple of 64",
    sae: { arch: "topk", features: 70, k: 6, jsaeLambda: 0 },
    position: "mlp",
    nLayer: 1,
    d: 80,
    rows: 150,
    gradClip: 1e3,
  },
  {
    name: "topk in micro-batches of 64, clipping active",
    sae: { arch: "topk", features: 40, k: 5, jsaeLambda: 0 },
    position: "mlp",
    nLayer: 1,
    d: 16,
    rows: 150,
    microRows: 64,
    gradClip: 0.05,
  },
  {
    name: "topk, k = 1 and weight decay on matrices only",
    sae: { arch: "topk", features: 30, k: 1, jsaeLambda: 0 },
    position: "mlp",
    nLayer: 1,
    d: 12,
    rows: 70,
    gradClip: 1,
    weightDecay: 0.1,
    decays: (_, shape) => shape.length === 2,
  },
  {
    name: "topk, k = width",
    sae: { arch: "topk", features: 8, k: 8, jsaeLambda: 0 },
    position: "mlp",
    nLayer: 1,
    d: 12,
    rows: 40,
    gradClip: 1,
  },
  {
    name: "staircase chain of three (block)",
    sae: { arch: "staircase", features: 24, k: 4, jsaeLambda: 0 },
    position: "block",
    nLayer: 2,
    d: 16,
    rows: 100,
    gradClip: 1,
  },
  {
    name: "staircase-detached chain of three (block)",
    sae: { arch: "staircase-detached", features: 24, k: 4, jsaeLambda: 0 },
    position: "block",
    nLayer: 2,
    d: 16,
    rows: 100,
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
];

for (const c of cases) {
  gpuTest(
    `engine step equals the reference step: parameters, moments, figures (${c.name})`,
    async (g) => {
      const { ours, theirs, settings, batches, layout } = prepare(c);
      const engine = await SaeEngine.create(g, {
        saes: ours,
        sae: c.sae,
        rows: c.rows,
        microRows: c.microRows,
        adam: { ...settings, decays: c.decays },
        gradClip: c.gradClip,
      });
      const optimizer = new AdamW(theirs.params, { ...settings, decays: c.decays });
      for (const [s, lr] of LR.entries()) {
        const got = await engine.step(batches[s], lr, true);
        const x = new Map(
          layout.hooks.map((h) => [h, tf.tensor2d(batches[s]!.get(h)!, [c.rows, c.d])]),
        );
        const want = referenceStep(theirs, optimizer, x, c.gradClip, lr);
        tf.dispose([...x.values()]);
        assertClose(got!, want, `${c.name}: step ${s + 1} losses and L0`);
        // After one step m = (1 − β₁)·clipped gradient: the gradients themselves, checked.
        const [mine, ref] = [await engine.state(), await optimizer.state()];
        for (const [name, t] of ref.tensors) {
          assertClose(mine.tensors.get(name)!.data, t.data, `${c.name}: step ${s + 1} ${name}`);
        }
        const params = await engine.params();
        for (const [name, v] of theirs.params) {
          assertClose(params.get(name)!.data, await v.data(), `${c.name}: step ${s + 1} ${name}`);
        }
      }
      engine.dispose();
      optimizer.dispose();
      ours.dispose();
      theirs.dispose();
    },
  );
}

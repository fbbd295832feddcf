import * as tf from "@tensorflow/tfjs";
import { AdamW, clipGlobalNorm } from "../../optim/adamw.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "../architectures.ts";
import { jacobianLoss, type MlpWeights } from "../jacobian.ts";
import { layoutPosition, type Position, type SaePair } from "../positions.ts";
import { decode, encode, reconstructionLoss } from "../sae.ts";
import { createRng, normalArray } from "../../util/rng.ts";
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
  /** JSAE: the MLP width and λ. */
  jsae?: { m: number; lambda: number };
}

/** JSAE pairs with random MLPs between them. */
interface Jacobian {
  pairs: readonly SaePair[];
  mlp: (pair: SaePair) => MlpWeights;
  lambda: number;
}

const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
const LR = [1e-3, 2e-3];

/**
 * The reference step of `trainSaes`: summed losses (plus λ·L_J per JSAE pair, from the features'
 * index sets), one backward pass, clipping, AdamW.
 */
function referenceStep(
  saes: SaeSet,
  optimizer: AdamW,
  x: Map<string, tf.Tensor2D>,
  gradClip: number,
  lr: number,
  jacobian?: Jacobian,
): number[] {
  const vars = [...saes.params.values()];
  return tf.tidy(() => {
    const figures: tf.Tensor[] = [];
    const { grads } = tf.variableGrads(() => {
      const features = new Map<string, tf.Tensor2D>();
      const l0s: tf.Tensor[] = [];
      const terms = saes.hooks.map((h) => {
        const w = saes.weights(h);
        const f = encode(w, x.get(h)!, saes.k);
        features.set(h, f);
        l0s.push(tf.keep(f.greater(0).sum(1).mean().cast("float32")));
        return reconstructionLoss(x.get(h)!, decode(w, f));
      });
      for (const p of jacobian?.pairs ?? []) {
        const [up, down] = [saes.weights(p.up), saes.weights(p.down)];
        const [fUp, fDown] = [features.get(p.up)!, features.get(p.down)!];
        const loss = jacobianLoss(up, down, jacobian!.mlp(p), x.get(p.up)!, fUp, fDown, saes.k);
        terms.push(loss.mul(jacobian!.lambda));
      }
      figures.push(...terms.map((l) => tf.keep(l.clone())), ...l0s);
      return tf.addN(terms) as tf.Scalar;
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
  let jacobian: Jacobian | undefined;
  if (c.jsae !== undefined) {
    const { m, lambda } = c.jsae;
    const rng = createRng(7);
    const mlps = layout.pairs.map(() => ({
      wFc: tf.tensor2d(normalArray(rng, c.d * m, 0.3), [c.d, m]),
      bFc: tf.tensor1d(normalArray(rng, m, 0.3)),
      wProj: tf.tensor2d(normalArray(rng, m * c.d, 0.3), [m, c.d]),
    }));
    jacobian = { pairs: layout.pairs, mlp: (p) => mlps[layout.pairs.indexOf(p)]!, lambda };
  }
  return { ours, theirs, settings, batches, layout, jacobian };
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
    name: "jsae, two pairs, micro-batches of 64",
    sae: { arch: "jsae", features: 40, k: 4, jsaeLambda: 0.05 },
    position: "mlp",
    nLayer: 2,
    d: 16,
    rows: 100,
    microRows: 64,
    gradClip: 1,
    jsae: { m: 48, lambda: 0.05 },
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
      const { ours, theirs, settings, batches, layout, jacobian } = prepare(c);
      const engine = await SaeEngine.create(g, {
        saes: ours,
        sae: c.sae,
        rows: c.rows,
        microRows: c.microRows,
        adam: { ...settings, decays: c.decays },
        gradClip: c.gradClip,
        jacobian,
      });
      const optimizer = new AdamW(theirs.params, { ...settings, decays: c.decays });
      for (const [s, lr] of LR.entries()) {
        const got = await engine.step(batches[s], lr, true);
        const x = new Map(
          layout.hooks.map((h) => [h, tf.tensor2d(batches[s]!.get(h)!, [c.rows, c.d])]),
        );
        const want = referenceStep(theirs, optimizer, x, c.gradClip, lr, jacobian);
        tf.dispose([...x.values()]);
        assertClose(got!, want, `${c.name}: step ${s + 1} losses (and Jacobian terms), L0`);
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

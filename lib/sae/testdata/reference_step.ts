/**
 * The reference SAE training step for engine tests: what `trainSaes` computes through tfjs
 * (summed reconstruction losses plus λ·L_J per JSAE pair, one backward pass, global-norm
 * clipping, AdamW), on one whole batch, returning the logged figures in the engines' order.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type AdamW, clipGlobalNorm } from "../../optim/adamw.ts";
import type { SaeSet } from "../architectures.ts";
import { jacobianLoss, type MlpWeights } from "../jacobian.ts";
import type { SaePair } from "../positions.ts";
import { decode, encode, reconstructionLoss } from "../sae.ts";

/** JSAE pairs, the MLP between each, and λ. */
export interface ReferenceJacobian {
  /** The pairs. */
  pairs: readonly SaePair[];
  /** The MLP of a pair. */
  mlp: (pair: SaePair) => MlpWeights;
  /** The loss weight. */
  lambda: number;
}

/**
 * Takes one reference step, updating `saes` through `optimizer`.
 *
 * @param saes The SAEs (their variables are updated).
 * @param optimizer AdamW over `saes.params`.
 * @param x Per hook, the batch `[rows, D]`.
 * @param gradClip Global gradient-norm limit.
 * @param lr Learning rate.
 * @param jacobian JSAE's pairs, MLPs and λ.
 * @returns Each SAE's loss, each pair's λ-weighted Jacobian term, each SAE's L0.
 */
export function referenceStep(
  saes: SaeSet,
  optimizer: AdamW,
  x: ReadonlyMap<string, tf.Tensor2D>,
  gradClip: number,
  lr: number,
  jacobian?: ReferenceJacobian,
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

/**
 * The reference SAE stepper, in tfjs ops on whatever backend runs (SPEC §4): every SAE encodes
 * and decodes its hook, the losses (plus λ times each pair's loss) are summed for one backward
 * pass by autodiff, gradients accumulate over micro-batches, then global-norm clipping and AdamW
 * over all parameters. The engines are tested against it.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { AdamW, type AdamWState, clipGlobalNorm } from "../../optim/adamw.ts";
import { architecture } from "../architectures.ts";
import { decode, encode, reconstructionLoss } from "../sae.ts";
import type { SaeStepper, StepperOptions } from "../stepper.ts";

/**
 * The tfjs reference stepper.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSaes } from "../architectures.ts";
 * import { layoutPosition } from "../positions.ts";
 * import { TfjsStepper } from "./tfjs.ts";
 *
 * const sae = { arch: "topk", features: 4, k: 1, jsaeLambda: 0 } as const;
 * const saes = buildSaes(sae, layoutPosition("mlp", 1), 2, 0);
 * const adam = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };
 * const stepper = new TfjsStepper({ saes, sae, rows: 3, adam, gradClip: 1 });
 * const x = new Float32Array([1, 0, 0, 1, 1, 1]);
 * const figures = await stepper.step(new Map(saes.hooks.map((h) => [h, x])), 1e-3, true);
 * assert.equal(figures!.length, 4); // two losses, two L0s
 * assert.equal((await stepper.state()).step, 1);
 * stepper.dispose();
 * saes.dispose();
 * ```
 */
export class TfjsStepper implements SaeStepper {
  readonly #o: StepperOptions;
  readonly #optimizer: AdamW;

  /** @param o The SAEs, batch sizes and optimizer settings. */
  constructor(o: StepperOptions) {
    this.#o = o;
    this.#optimizer = new AdamW(o.saes.params, o.adam);
  }

  /**
   * One step (see {@link SaeStepper.step}).
   *
   * @param batch Per hook, `[rows, D]` row-major.
   * @param lr The learning rate.
   * @param report Whether to return the figures.
   * @returns The figures when reporting.
   */
  async step(
    batch: ReadonlyMap<string, Float32Array>,
    lr: number,
    report: boolean,
  ): Promise<Float32Array | undefined> {
    const { rows } = this.#o;
    for (const h of this.#o.saes.hooks) {
      const n = batch.get(h)?.length ?? 0;
      if (n === 0 || n % rows !== 0) {
        throw new RangeError(`Cannot train "${h}": its batch has ${n} values, not ${rows} rows`);
      }
    }
    const micro = this.#o.microRows ?? rows;
    let grads: tf.Tensor[] | undefined, figures: tf.Tensor | undefined;
    for (let first = 0; first < rows; first += micro) {
      const pass = this.#pass(batch, first, Math.min(micro, rows - first), report);
      if (grads === undefined) [grads, figures] = [pass.grads, pass.figures];
      else {
        const sums = tf.tidy(() => grads!.map((g, i) => g.add(pass.grads[i]!)));
        const total = figures!.add(pass.figures);
        tf.dispose([...grads, ...pass.grads, figures!, pass.figures]);
        [grads, figures] = [sums, total];
      }
    }
    tf.tidy(() => {
      const named = new Map([...this.#o.saes.params.keys()].map((n, i) => [n, grads![i]!]));
      this.#optimizer.update(clipGlobalNorm(named, this.#o.gradClip).grads, lr);
    });
    tf.dispose(grads!);
    const values = report ? (await figures!.data()) as Float32Array : undefined;
    figures!.dispose();
    return values;
  }

  // One forward/backward pass over rows [first, first + n): gradients, and the figures weighted
  // by the pass's share of the batch.
  #pass(
    batch: ReadonlyMap<string, Float32Array>,
    first: number,
    n: number,
    report: boolean,
  ): { grads: tf.Tensor[]; figures: tf.Tensor } {
    const { saes, sae, jacobian } = this.#o;
    const vars = [...saes.params.values()];
    const pairLoss = architecture(sae.arch).pairLoss;
    // Reconstruction losses are means over tokens, so each pass weighs in by its share of the
    // batch; the pair terms are sums over tokens and add up as they are.
    const share = n / this.#o.rows;
    return tf.tidy(() => {
      const x = new Map(saes.hooks.map((h) => {
        const rows = batch.get(h)!;
        const d = rows.length / this.#o.rows;
        return [h, tf.tensor2d(rows.subarray(first * d, (first + n) * d), [n, d])];
      }));
      const kept: tf.Tensor[] = [];
      const { grads, value } = tf.variableGrads(() => {
        const l0s: tf.Tensor[] = [];
        const features = new Map<string, tf.Tensor2D>();
        const terms = saes.hooks.map((h) => {
          const w = saes.weights(h);
          const f = encode(w, x.get(h)!, saes.k);
          features.set(h, f);
          if (report) l0s.push(f.greater(0).sum(1).mean().cast("float32").reshape([1]));
          const loss = reconstructionLoss(x.get(h)!, decode(w, f));
          return share === 1 ? loss : loss.mul(share);
        });
        for (const p of jacobian?.pairs ?? []) {
          const [up, down] = [saes.weights(p.up), saes.weights(p.down)];
          const [fUp, fDown] = [features.get(p.up)!, features.get(p.down)!];
          const term = pairLoss!.tfjs(up, down, jacobian!.mlp(p), x.get(p.up)!, fUp, fDown, saes.k);
          terms.push(term.mul(jacobian!.lambda));
        }
        // The components (and L0s) leave the gradient scope kept; the objective is their sum.
        const stacked = tf.stack(terms);
        const l0 = l0s.length === 0
          ? []
          : [share === 1 ? tf.concat(l0s) : tf.concat(l0s).mul(share)];
        kept.push(tf.keep(tf.concat([stacked, ...l0])));
        return stacked.sum() as tf.Scalar;
      }, vars);
      value.dispose();
      return { grads: vars.map((v) => grads[v.name]!), figures: kept[0]! };
    });
  }

  /** @returns The optimizer's step count and moments. */
  state(): Promise<AdamWState> {
    return this.#optimizer.state();
  }

  /** @param state A saved optimizer state (the parameters are already in the variables). */
  load(state: AdamWState): Promise<void> {
    this.#optimizer.load(state);
    return Promise.resolve();
  }

  /** Nothing to copy: the steps update the SAE set's variables themselves. */
  writeBack(): Promise<void> {
    return Promise.resolve();
  }

  /** Frees the optimizer's moments. */
  dispose(): void {
    this.#optimizer.dispose();
  }
}

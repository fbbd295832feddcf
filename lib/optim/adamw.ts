/**
 * AdamW with decoupled weight decay and global-norm gradient clipping, as PyTorch defines them,
 * written in TensorFlow.js ops so that it runs on every backend; on the CPU backends
 * {@link AdamW.clipAndUpdate} runs both as one fused kernel per parameter instead.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ADAMW_KERNEL } from "../backend/adamw_kernel.ts";

/** Settings of {@link AdamW}. */
export interface AdamWConfig {
  /** Decay rate of the first moment. @default 0.9 */
  beta1: number;
  /** Decay rate of the second moment. @default 0.999 */
  beta2: number;
  /** Added to the root of the second moment. @default 1e-8 */
  eps: number;
  /** Decoupled weight decay per unit learning rate. @default 0 */
  weightDecay: number;
  /**
   * Which parameters decay. GPT training decays matrices and embeddings but not biases or
   * LayerNorm gains (nanoGPT, the SCALAR reference). @default every parameter
   */
  decays?: (name: string, shape: readonly number[]) => boolean;
}

/** Saved optimizer state: the step count and both moments of every parameter. */
export interface AdamWState {
  /** Steps taken so far. */
  step: number;
  /** `m.<name>` and `v.<name>` → moment values. */
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

/** AdamW over a fixed, named set of variables. */
export class AdamW {
  readonly #params: ReadonlyMap<string, tf.Variable>;
  readonly #config: AdamWConfig;
  readonly #m = new Map<string, tf.Variable>();
  readonly #v = new Map<string, tf.Variable>();
  #step = 0;

  /**
   * @param params Name → variable to optimise.
   * @param config Moment decay rates, epsilon and weight decay.
   */
  constructor(params: ReadonlyMap<string, tf.Variable>, config: Partial<AdamWConfig> = {}) {
    this.#params = params;
    this.#config = { beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, ...config };
    for (const [name, p] of params) {
      this.#m.set(name, tf.variable(tf.zerosLike(p), false));
      this.#v.set(name, tf.variable(tf.zerosLike(p), false));
    }
  }

  /** Steps taken so far. */
  get step(): number {
    return this.#step;
  }

  /**
   * Applies one update: p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + eps), with bias-corrected moments.
   *
   * @param grads Name → gradient, for every parameter (same names as the constructor's).
   * @param lr The learning rate for this step.
   * @throws {RangeError} If a gradient is missing.
   */
  update(grads: ReadonlyMap<string, tf.Tensor>, lr: number): void {
    const { beta1, beta2, eps } = this.#config;
    this.#step++;
    const c1 = 1 - beta1 ** this.#step, c2 = 1 - beta2 ** this.#step;
    tf.tidy(() => {
      for (const [name, p] of this.#params) {
        const g = gradientOf(grads, name);
        const m = this.#m.get(name)!, v = this.#v.get(name)!;
        m.assign(m.mul(beta1).add(g.mul(1 - beta1)));
        v.assign(v.mul(beta2).add(g.square().mul(1 - beta2)));
        const stepDir = m.div(c1).div(v.div(c2).sqrt().add(eps));
        p.assign(p.mul(1 - lr * this.#weightDecayOf(name, p)).sub(stepDir.mul(lr)));
      }
    });
  }

  /**
   * {@link clipGlobalNorm}, then {@link AdamW.update}: on backends with the fused kernel
   * (`lib/backend/adamw_kernel.ts`: `cpu`, `wasm`) one kernel call per parameter after reading the
   * gradients' norm back, elsewhere those two as they are (the reference the kernel is tested
   * against).
   *
   * @param grads Name → gradient, for every parameter.
   * @param lr The learning rate for this step.
   * @param maxNorm The largest allowed global norm of the gradients.
   * @throws {RangeError} If a gradient is missing.
   */
  clipAndUpdate(grads: ReadonlyMap<string, tf.Tensor>, lr: number, maxNorm: number): void {
    if (!tf.getKernel(ADAMW_KERNEL, tf.getBackend())) {
      tf.tidy(() => this.update(clipGlobalNorm(grads, maxNorm).grads, lr));
      return;
    }
    // Read back in float64: cheap on the CPU backends, where the values already are in memory.
    let squares = 0;
    for (const g of grads.values()) {
      const values = g.dataSync();
      for (let i = 0; i < values.length; i++) squares += values[i]! * values[i]!;
    }
    const gradScale = Math.min(1, maxNorm / (Math.sqrt(squares) + 1e-6));
    const { beta1, beta2, eps } = this.#config;
    const step = ++this.#step;
    for (const [name, p] of this.#params) {
      const m = this.#m.get(name)!, v = this.#v.get(name)!;
      const attrs = {
        lr,
        beta1,
        beta2,
        eps,
        weightDecay: this.#weightDecayOf(name, p),
        step,
        gradScale,
      };
      const updated = tf.engine().runKernel(
        ADAMW_KERNEL,
        { param: p, grad: gradientOf(grads, name), m, v },
        attrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
      [p, m, v].forEach((t, i) => t.assign(updated[i]!));
      tf.dispose(updated);
    }
  }

  /** The weight decay of one parameter: the configured one, or 0 where `decays` says so. */
  #weightDecayOf(name: string, p: tf.Tensor): number {
    const { weightDecay, decays } = this.#config;
    return decays === undefined || decays(name, p.shape) ? weightDecay : 0;
  }

  /**
   * Copies the state out of the backend, for a checkpoint.
   *
   * @returns The step count and moments.
   */
  async state(): Promise<AdamWState> {
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [prefix, moments] of [["m", this.#m], ["v", this.#v]] as const) {
      for (const [name, t] of moments) {
        tensors.set(`${prefix}.${name}`, {
          shape: t.shape,
          data: (await t.data()) as Float32Array,
        });
      }
    }
    return { step: this.#step, tensors };
  }

  /**
   * Restores a state saved by {@link AdamW.state}.
   *
   * @param state The saved state.
   * @throws {RangeError} If a moment is missing or has another size.
   */
  load(state: AdamWState): void {
    for (const [prefix, moments] of [["m", this.#m], ["v", this.#v]] as const) {
      for (const [name, t] of moments) {
        const saved = state.tensors.get(`${prefix}.${name}`);
        if (saved === undefined || saved.data.length !== t.size) {
          throw new RangeError(`Cannot restore optimizer: moment "${prefix}.${name}" is missing`);
        }
        t.assign(tf.tensor(saved.data, t.shape));
      }
    }
    this.#step = state.step;
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const t of [...this.#m.values(), ...this.#v.values()]) t.dispose();
  }
}

function gradientOf(grads: ReadonlyMap<string, tf.Tensor>, name: string): tf.Tensor {
  const g = grads.get(name);
  if (g === undefined) throw new RangeError(`Cannot update "${name}": no gradient given`);
  return g;
}

/**
 * Scales gradients so that their global L2 norm is at most `maxNorm` (PyTorch's
 * `clip_grad_norm_`: factor min(1, maxNorm / (norm + 1e-6))).
 *
 * @param grads Name → gradient.
 * @param maxNorm The largest allowed global norm.
 * @returns The clipped gradients and the norm before clipping (a scalar tensor).
 */
export function clipGlobalNorm(
  grads: ReadonlyMap<string, tf.Tensor>,
  maxNorm: number,
): { grads: Map<string, tf.Tensor>; norm: tf.Scalar } {
  const names = [...grads.keys()];
  const [norm, ...clipped] = tf.tidy(() => {
    const norm = tf.sqrt(tf.addN([...grads.values()].map((g) => g.square().sum())));
    const factor = tf.minimum(1, tf.div(maxNorm, norm.add(1e-6)));
    return [norm, ...[...grads.values()].map((g) => g.mul(factor))];
  });
  return { grads: new Map(names.map((n, i) => [n, clipped[i]!])), norm: norm as tf.Scalar };
}

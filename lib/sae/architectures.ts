/**
 * The SAE architectures, as one registry: an architecture turns a position's layout into a set of
 * SAEs (their parameters and, per hook, the weights to encode and decode with). Training, metrics
 * and SCALAR see only {@link SaeSet}, never the architecture.
 *
 * - `topk`: an independent TopK SAE per hook.
 * - `staircase`: one dictionary per chain (`positions.ts`); the SAE at the j-th hook of a chain uses
 *   its first (j + 1) · features features, with biases of its own, so a feature that passes through
 *   keeps its index.
 * - `staircase-detached`: the same prefixes, but an SAE's loss trains only its own chunk: gradients
 *   into earlier chunks are stopped.
 * - `jsae`: TopK SAEs whose pairs add the Jacobian sparsity loss (`jacobian.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createRng } from "../util/rng.ts";
import type { Position, PositionLayout } from "./positions.ts";
import { initSaeValues, type SaeWeights } from "./sae.ts";

/** The architectures a manifest can name. */
export const ARCHITECTURES = ["topk", "staircase", "staircase-detached", "jsae"] as const;

/** An SAE architecture. */
export type Architecture = typeof ARCHITECTURES[number];

/** Settings of the SAEs of one run (the manifest's `sae` section). */
export interface SaeConfig {
  /** Which architecture. */
  arch: Architecture;
  /**
   * Features per SAE; for Staircase the chunk size: the j-th SAE of a chain has (j + 1) · features
   * (toy: 512 = 8 × d_model; GPT-2: 24,576).
   */
  features: number;
  /** Features kept per token (toy 10, GPT-2 32). */
  k: number;
  /** Weight λ of the JSAE Jacobian loss (summed over tokens, divided by k²). */
  jsaeLambda: number;
}

/** The SAEs of one run: parameters plus, per hook, the weights to use. */
export interface SaeSet {
  /** The architecture that built it. */
  readonly arch: Architecture;
  /** Hooks with an SAE, in forward order. */
  readonly hooks: readonly string[];
  /** Features kept per token. */
  readonly k: number;
  /** Trainable parameters by name (`<hook>/W_enc`, `chain0/W_dec`, …). */
  readonly params: ReadonlyMap<string, tf.Variable>;
  /** Number of features of the SAE at a hook. */
  width(hook: string): number;
  /** The weights of the SAE at a hook; for Staircase, slices of the shared dictionary. */
  weights(hook: string): SaeWeights;
  /** Frees the parameters. */
  dispose(): void;
}

/** The identity whose gradient is zero (tfjs has no stop-gradient op). */
const stopGradient = (x: tf.Tensor): tf.Tensor =>
  tf.customGrad((t) => ({
    value: (t as tf.Tensor).clone(),
    gradFunc: (dy) => tf.zerosLike(dy as tf.Tensor),
  }))(x);

/** Thrown when an architecture cannot serve a position; says why. */
export class ArchitectureError extends Error {
  override name = "ArchitectureError";
}

/**
 * Refuses combinations that cannot work, before any work starts.
 *
 * @param arch The architecture.
 * @param position The position.
 * @throws {ArchitectureError} For `jsae` outside `mlp`, with the reason.
 */
export function checkArchitecture(arch: Architecture, position: Position): void {
  if (arch !== "jsae" || position === "mlp") return;
  throw new ArchitectureError(
    position === "block"
      ? `Cannot train "jsae" at position "block": its Jacobian needs an MLP between the pair, and ` +
        `attention mixes positions, so no cheap closed form exists (the paper's finding); use ` +
        `"mlp" or another architecture`
      : `Cannot train "jsae" at position "${position}": only "mlp" is supported (the paper's ` +
        `tables use JSAEs across the MLP alone; the block Jacobian through ln_2 is not implemented)`,
  );
}

/**
 * Builds the SAEs of a run with seeded initial weights.
 *
 * @param config Architecture and sizes.
 * @param layout The position's hooks and chains.
 * @param d Activation width (d_model).
 * @param seed Initialisation seed.
 * @returns The SAE set.
 * @throws {ArchitectureError} For an impossible architecture/position combination.
 */
export function buildSaes(
  config: SaeConfig,
  layout: PositionLayout,
  d: number,
  seed: number,
): SaeSet {
  checkArchitecture(config.arch, layout.position);
  const rng = createRng(seed);
  const params = new Map<string, tf.Variable>();
  const add = (name: string, values: Float32Array, shape: number[]) =>
    params.set(name, tf.variable(tf.tensor(values, shape)));
  const widths = new Map<string, number>();
  let weights: (hook: string) => SaeWeights;

  if (config.arch === "topk" || config.arch === "jsae") {
    for (const hook of layout.hooks) {
      const v = initSaeValues(d, config.features, rng);
      add(`${hook}/W_enc`, v.wEnc, [d, config.features]);
      add(`${hook}/b_enc`, v.bEnc, [config.features]);
      add(`${hook}/W_dec`, v.wDec, [config.features, d]);
      add(`${hook}/b_dec`, v.bDec, [d]);
      widths.set(hook, config.features);
    }
    const p = (hook: string, name: string) => params.get(`${hook}/${name}`)!;
    weights = (hook) => ({
      wEnc: p(hook, "W_enc") as tf.Tensor2D,
      bEnc: p(hook, "b_enc") as tf.Tensor1D,
      wDec: p(hook, "W_dec") as tf.Tensor2D,
      bDec: p(hook, "b_dec") as tf.Tensor1D,
    });
  } else {
    const chainOf = new Map<string, { chain: number; position: number }>();
    layout.chains.forEach((hooks, c) => {
      const total = hooks.length * config.features;
      const v = initSaeValues(d, total, rng);
      add(`chain${c}/W_enc`, v.wEnc, [d, total]);
      add(`chain${c}/W_dec`, v.wDec, [total, d]);
      hooks.forEach((hook, j) => {
        const width = (j + 1) * config.features;
        add(`${hook}/b_enc`, new Float32Array(width), [width]);
        add(`${hook}/b_dec`, new Float32Array(d), [d]);
        widths.set(hook, width);
        chainOf.set(hook, { chain: c, position: j });
      });
    });
    const detached = config.arch === "staircase-detached";
    weights = (hook) => {
      const { chain, position } = chainOf.get(hook)!;
      const width = widths.get(hook)!;
      const wEnc = params.get(`chain${chain}/W_enc`)!;
      const wDec = params.get(`chain${chain}/W_dec`)!;
      let enc = wEnc.slice([0, 0], [d, width]) as tf.Tensor2D;
      let dec = wDec.slice([0, 0], [width, d]) as tf.Tensor2D;
      if (detached && position > 0) {
        // Earlier chunks are read but not trained by this SAE's loss.
        const own = width - config.features;
        enc = tf.concat([
          stopGradient(wEnc.slice([0, 0], [d, own])),
          wEnc.slice([0, own], [d, config.features]),
        ], 1) as tf.Tensor2D;
        dec = tf.concat([
          stopGradient(wDec.slice([0, 0], [own, d])),
          wDec.slice([own, 0], [config.features, d]),
        ], 0) as tf.Tensor2D;
      }
      return {
        wEnc: enc,
        bEnc: params.get(`${hook}/b_enc`) as tf.Tensor1D,
        wDec: dec,
        bDec: params.get(`${hook}/b_dec`) as tf.Tensor1D,
      };
    };
  }
  return {
    arch: config.arch,
    hooks: layout.hooks,
    k: config.k,
    params,
    width: (hook) => widths.get(hook)!,
    weights,
    dispose: () => params.forEach((v) => v.dispose()),
  };
}

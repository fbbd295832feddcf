/**
 * What an SAE architecture is to the rest of the code: the contract every file of `lib/sae/arch/`
 * fulfils and the registry (`../architectures.ts`) lists. Training, metrics and SCALAR see only
 * the {@link SaeSet} an architecture builds; the engines see only its flat views.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import type { Architecture } from "../architectures.ts";
import type { MlpWeights } from "../jacobian.ts";
import type { Position, PositionLayout } from "../positions.ts";
import type { SaeWeights } from "../sae.ts";

/**
 * Settings of the SAEs of one run (the manifest's `sae` section). One flat shape for every
 * architecture: it is hashed into run ids and stored in checkpoints, so fields only some
 * architectures read (`jsaeLambda`) stay here rather than in per-architecture types.
 */
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

/** Thrown when an architecture cannot serve a position; says why. */
export class ArchitectureError extends Error {
  override name = "ArchitectureError";
}

/**
 * Which part of `initSaeValues(d, features, rng)` a parameter starts from (`zeros`: none; a
 * Staircase SAE's biases start at zero whatever the chain's draw).
 */
export type InitPart = "wEnc" | "bEnc" | "wDec" | "bDec" | "zeros";

/**
 * Parameters initialised from one `initSaeValues(d, features, rng)` draw, in the order they are
 * created (the order of `SaeSet.params`, of the checkpoint and of the engines' flat buffer).
 */
export interface ParamGroup {
  /** Features of the draw. */
  features: number;
  /** Name, shape and initial values of each parameter. */
  params: { name: string; shape: number[]; init: InitPart }[];
}

/** Where one SAE's matrices sit, for the engines' flat layout (`../param_layout.ts`). */
export interface MatrixView {
  /** Name of the parameter holding its W_enc `[D, ≥ width]` (its first `width` columns). */
  wEnc: string;
  /** Name of the parameter holding its W_dec `[≥ width, D]` (its first `width` rows). */
  wDec: string;
  /** First feature whose W_enc column and W_dec row this SAE's loss trains. */
  trainFrom: number;
}

/** An extra loss over each adjacent pair of SAEs (JSAE's Jacobian term). */
export interface PairLoss {
  /** Its weight in the objective (λ). */
  weight(config: SaeConfig): number;
  /**
   * The unweighted term on a batch, in tfjs (the reference the engines are tested against).
   *
   * @param up The upstream SAE's weights.
   * @param down The downstream SAE's weights.
   * @param mlp The frozen MLP between the pair.
   * @param x The upstream hook's input activations `[N, D]`.
   * @param fUp The upstream SAE's feature activations.
   * @param fDown The downstream SAE's feature activations.
   * @param k Features kept per token.
   */
  tfjs(
    up: SaeWeights,
    down: SaeWeights,
    mlp: MlpWeights,
    x: tf.Tensor2D,
    fUp: tf.Tensor2D,
    fDown: tf.Tensor2D,
    k: number,
  ): tf.Scalar;
}

/** One SAE architecture: everything the code needs to know of it, in its own file. */
export interface ArchitectureSpec {
  /** One line for documentation. */
  summary: string;
  /** Whether reports measure every other architecture's improvement against this one. */
  baseline: boolean;
  /**
   * Why the architecture cannot serve a position, or undefined when it can.
   *
   * @param position The position.
   */
  positionProblem(position: Position): string | undefined;
  /**
   * Its parameters at a position, grouped by initialisation draw.
   *
   * @param layout The position's hooks and chains.
   * @param features The configured features (`SaeConfig.features`).
   * @param d Activation width.
   */
  params(layout: PositionLayout, features: number, d: number): ParamGroup[];
  /**
   * The weights each SAE encodes and decodes with, as tensors over the parameters.
   *
   * @param params The parameters by name (as {@link ArchitectureSpec.params} names them).
   * @param layout The position's hooks and chains.
   * @param features The configured features.
   * @param d Activation width.
   * @returns Hook → its weights.
   */
  weights(
    params: ReadonlyMap<string, tf.Variable>,
    layout: PositionLayout,
    features: number,
    d: number,
  ): (hook: string) => SaeWeights;
  /**
   * Where each SAE's matrices sit among the parameters, in hook order.
   *
   * @param saes The SAEs (as built by this architecture).
   * @param features The configured features.
   */
  matrices(saes: SaeSet, features: number): MatrixView[];
  /** The extra loss over adjacent pairs, if any. */
  pairLoss?: PairLoss;
}

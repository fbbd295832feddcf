/**
 * The sparse autoencoder every architecture shares: TopK encoding, linear decoding and the
 * squared-error reconstruction loss (SPEC §4). Architectures differ only in where the weights come
 * from (own matrices, or prefixes of a shared Staircase dictionary) and in extra loss terms.
 *
 * Dimensions: N tokens, D activation width (d_model), F features.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type Rng, uniformArray } from "../util/rng.ts";
import { topkRelu } from "./topk_relu.ts";

/** The weights one SAE encodes and decodes with (possibly views into shared tensors). */
export interface SaeWeights {
  /** Encoder `[D, F]`. */
  wEnc: tf.Tensor2D;
  /** Encoder bias `[F]`. */
  bEnc: tf.Tensor1D;
  /** Decoder `[F, D]`: row i is feature i's direction. */
  wDec: tf.Tensor2D;
  /** Decoder bias `[D]`, also subtracted from the input before encoding. */
  bDec: tf.Tensor1D;
}

/**
 * Encoder pre-activations: (x − b_dec)·W_enc + b_enc.
 *
 * @param w The SAE's weights.
 * @param x Activations `[N, D]`.
 * @returns `[N, F]`.
 */
export function preActivations(w: SaeWeights, x: tf.Tensor2D): tf.Tensor2D {
  return tf.matMul(x.sub(w.bDec), w.wEnc).add(w.bEnc);
}

/**
 * Feature activations: TopK_k(ReLU(pre-activations)), exactly k kept per token.
 *
 * @param w The SAE's weights.
 * @param x Activations `[N, D]`.
 * @param k Features kept per token.
 * @returns `[N, F]` with at most k nonzero entries per row.
 */
export function encode(w: SaeWeights, x: tf.Tensor2D, k: number): tf.Tensor2D {
  return topkRelu(preActivations(w, x), k);
}

/**
 * Reconstruction: f·W_dec + b_dec.
 *
 * @param w The SAE's weights.
 * @param f Feature activations `[N, F]`.
 * @returns `[N, D]`.
 */
export function decode(w: SaeWeights, f: tf.Tensor2D): tf.Tensor2D {
  return tf.matMul(f, w.wDec).add(w.bDec);
}

/**
 * The SAE training loss: squared error summed over the D dimensions, averaged over tokens (not
 * normalised by ‖x‖ or D, as the SCALAR reference trains).
 *
 * @param x Activations `[N, D]`.
 * @param xHat Reconstructions `[N, D]`.
 * @returns A scalar.
 */
export function reconstructionLoss(x: tf.Tensor2D, xHat: tf.Tensor2D): tf.Scalar {
  return tf.squaredDifference(x, xHat).sum(1).mean() as tf.Scalar;
}

/**
 * Initial weights of an SAE (or a shared Staircase dictionary) as the reference draws them: W_dec
 * Kaiming-uniform on `[F, D]` (PyTorch's default, bound √(6/D)), W_enc = W_decᵀ, biases zero.
 *
 * @param d Activation width D.
 * @param features Feature count F.
 * @param rng Seeded generator.
 * @returns Values for `wEnc` `[D, F]`, `bEnc` `[F]`, `wDec` `[F, D]`, `bDec` `[D]`.
 */
export function initSaeValues(
  d: number,
  features: number,
  rng: Rng,
): { wEnc: Float32Array; bEnc: Float32Array; wDec: Float32Array; bDec: Float32Array } {
  const bound = Math.sqrt(6 / d);
  const wDec = uniformArray(rng, features * d, -bound, bound);
  const wEnc = new Float32Array(d * features);
  for (let f = 0; f < features; f++) {
    for (let i = 0; i < d; i++) wEnc[i * features + f] = wDec[f * d + i]!;
  }
  return { wEnc, bEnc: new Float32Array(features), wDec, bDec: new Float32Array(d) };
}

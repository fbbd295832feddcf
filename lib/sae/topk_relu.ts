/**
 * The TopK activation of TopK SAEs: per row, ReLU then keep the k largest entries, zero the rest.
 * Exactly k entries are kept per row; among equal values the lower feature index wins, so the
 * choice is deterministic (the SCALAR reference keeps every value ≥ the k-th largest instead,
 * which can keep more than k on ties).
 *
 * Two implementations with one signature: a fast per-row partial selection registered as a tfjs
 * kernel on the CPU backends (`lib/backend/topk_relu_kernel.ts`), and a reference built from stock
 * tfjs ops that runs anywhere (and is what the fast one is tested against).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { TOPK_RELU_KERNEL } from "../backend/topk_relu_kernel.ts";

/**
 * The reference: TopK_k(ReLU(x)) from stock tfjs ops (`topk`, then `scatterND` of the kept values),
 * on any backend; what the fast kernel is tested against and what stock tfjs is timed with.
 *
 * @param x Pre-activations `[N, F]`.
 * @param k Features kept per row.
 * @returns `[N, F]` with k entries per row kept.
 */
export function topkReluReference(x: tf.Tensor2D, k: number): tf.Tensor2D {
  return tf.tidy(() => {
    const [n, f] = x.shape;
    const relu = tf.relu(x);
    if (k >= f) return relu as tf.Tensor2D;
    const { values, indices } = tf.topk(relu, k, true);
    const rows = tf.range(0, n, 1, "int32").expandDims(1).tile([1, k]);
    const where = tf.stack([rows, indices], 2).reshape([n * k, 2]);
    return tf.scatterND(where, values.reshape([n * k]), [n, f]) as tf.Tensor2D;
  });
}

/**
 * TopK_k(ReLU(x)) with exactly k kept per row. The gradient flows only through kept, positive
 * entries (kept zeros contribute nothing either way). Uses the fast kernel when the current backend
 * has one, else the reference.
 *
 * @param x Pre-activations `[N, F]`.
 * @param k Features kept per row.
 * @returns `[N, F]` with at most k nonzero entries per row.
 */
export function topkRelu(x: tf.Tensor2D, k: number): tf.Tensor2D {
  const f = tf.customGrad((input, save) => {
    const t = input as tf.Tensor2D;
    const value = tf.getKernel(TOPK_RELU_KERNEL, tf.getBackend())
      ? tf.engine().runKernel(TOPK_RELU_KERNEL, { x: t }, { k }) as tf.Tensor2D
      : topkReluReference(t, k);
    (save as tf.GradSaveFunc)([value]);
    return { value, gradFunc: (dy, saved) => (dy as tf.Tensor).mul(tf.step(saved[0]!)) };
  });
  return f(x) as tf.Tensor2D;
}

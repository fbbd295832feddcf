/**
 * The Jacobian sparsity loss of Jacobian SAEs (JSAE; SPEC §4, reference-details §3.3): a TopK SAE
 * at `hook_mlp_in` and one at `hook_mlp_out` of the same layer, trained with an extra loss that
 * makes the output SAE's active features depend on few of the input SAE's active features.
 *
 * Per token t, with K1 / K2 the k features the input / output SAE keep (TopK indices of the ReLU'd
 * pre-activations: exactly k each, possibly including zero-valued features, as in the reference)
 * and z_t the MLP pre-activation of the clean input, the Jacobian of the output SAE's kept
 * pre-activations with respect to the input SAE's kept features, through decode_in → MLP →
 * encode_out, is the k × k matrix
 *
 *   J[t][j, i] = W_dec_in[K1_i, :] · W_fc · diag(GELU′(z_t)) · W_proj · W_enc_out[:, K2_j]
 *
 * (biases drop out; the output SAE's TopK/ReLU derivative is taken as 1 on K2). The loss is
 * L_J = Σ_t Σ_{i,j} |J[t][j, i]| / k². It is a SUM over tokens, as in the reference, so the weight
 * λ of the loss depends on the batch size: the paper's λ values belong to 128 × 128 = 16,384
 * tokens per batch.
 *
 * Only W_dec of the input SAE and W_enc of the output SAE receive gradients: the clean z (hence
 * GELU′), the MLP weights and the index sets are constants, as the reference computes GELU′ from a
 * detached copy of the clean pre-activation.
 *
 * Computation: A = W_dec_in · W_fc `[F_in, d_mlp]` and Bᵀ = (W_proj · W_enc_out)ᵀ `[F_out, d_mlp]`
 * are formed once; per token the k rows A[K1] (scaled by GELU′(z_t)) and Bᵀ[K2] are gathered and
 * contracted over d_mlp by a batched matrix product (one small product per token). Tokens are
 * processed in chunks, and the backward pass gathers again instead of keeping the gathered
 * `[N, k, d_mlp]` tensors alive between the passes: a toy batch would otherwise hold ~336 MB per
 * SAE pair from the forward to the backward pass. The gathers and their gradient (a scatter-add)
 * need `registerScatterKernels` (`lib/backend/scatter_kernels.ts`) on the CPU backends: `wasm` has
 * no scatter-add, and stock `cpu` takes minutes for one. On the toy shapes (16,384 tokens, k 10,
 * d_mlp 256, 512 features) loss and gradient take ~0.5 s on two cores with `wasm` + OpenBLAS, of
 * which the two `tf.topk` calls for K1 and K2 are ~0.2 s.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { SaeWeights } from "./sae.ts";

/** The MLP weights between the two SAEs of a JSAE pair, stored input-major (as in `gpt.ts`). */
export interface MlpWeights {
  /** `c_fc` weight `[D, d_mlp]`. */
  wFc: tf.Tensor2D;
  /** `c_fc` bias `[d_mlp]`. */
  bFc: tf.Tensor1D;
  /** `c_proj` weight `[d_mlp, D]`. */
  wProj: tf.Tensor2D;
}

// Tokens per chunk. Bounds memory: a chunk's gathered `[chunk, k, d_mlp]` tensors are ~21 MB
// each on the toy shapes instead of ~168 MB for a whole batch; chunks of 2,048 to 16,384 tokens
// measured the same speed on wasm, 1,024 was slower (more, smaller kernel calls).
const CHUNK_TOKENS = 2048;

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_CUBIC = 0.044715;

/**
 * The derivative of GPT-2's tanh-approximated GELU, ½x(1 + tanh u) with u = √(2/π)(x + 0.044715x³):
 *
 *   GELU′(x) = ½(1 + tanh u) + ½x (1 − tanh² u) √(2/π) (1 + 3 · 0.044715 x²),
 *
 * computed as s (1 + 2√(2/π) x (1 − s)(1 + 3 · 0.044715 x²)) with s = σ(2u) = ½(1 + tanh u), so
 * 1 − tanh² u = 4s(1 − s): the same function, but tfjs `wasm` runs `sigmoid` about ten times faster
 * than `tanh`.
 *
 * @param z MLP pre-activations.
 * @returns GELU′(z), elementwise, same shape.
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { geluTanhDerivative } from "./jacobian.ts";
 * // GELU′(0) = ½; far from 0 the slope is 1 (right) or 0 (left).
 * const d = geluTanhDerivative(tf.tensor1d([0, 10, -10])).dataSync();
 * if (Math.abs(d[0] - 0.5) > 1e-7 || Math.abs(d[1] - 1) > 1e-6 || Math.abs(d[2]) > 1e-6) {
 *   throw new Error(String(d));
 * }
 * ```
 */
export function geluTanhDerivative(z: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const z2 = z.square();
    const twoC = 2 * SQRT_2_OVER_PI;
    // s = σ(2u), 2u = z · (2c + 2c·a·z²)
    const s = tf.sigmoid(z.mul(z2.mul(twoC * GELU_CUBIC).add(twoC)));
    // 2c · z (1 − s)(1 + 3a z²)
    const w = z.mul(tf.scalar(1).sub(s)).mul(z2.mul(3 * GELU_CUBIC * twoC).add(twoC));
    return s.mul(w.add(1));
  });
}

/**
 * The k features a TopK SAE keeps per token, as the reference's Jacobian takes them: TopK indices
 * of ReLU(pre-activations), exactly k per token, zero-valued features included when fewer than k
 * are positive (ties go to the lower index, as in `topkRelu`).
 *
 * @param f Pre-activations or feature activations `[N, F]` (ReLU is applied, so either gives the
 *   same indices).
 * @param k Features per token.
 * @returns Indices `[N, k]` (int32), largest first.
 */
export function activeFeatures(f: tf.Tensor2D, k: number): tf.Tensor2D {
  return tf.tidy(() => tf.topk(tf.relu(f), k).indices as tf.Tensor2D);
}

/** The constants of one Jacobian computation (no gradient flows into any of them). */
interface Frozen {
  /** GELU′ of the clean MLP pre-activation `[N, d_mlp]`. */
  g: tf.Tensor2D;
  /** K1, flattened `[N · k]` (int32). */
  k1: tf.Tensor1D;
  /** K2, flattened `[N · k]` (int32). */
  k2: tf.Tensor1D;
}

/**
 * The per-token Jacobians J `[N, k, k]`, J[t][j, i] = ∂ pre_out[K2_j] / ∂ f_in[K1_i] (see the module
 * comment). Differentiable with respect to `wIn.wDec` and `wOut.wEnc` only; for metrics and tests
 * (training uses {@link jacobianLoss}).
 *
 * @param wIn Weights of the SAE at `hook_mlp_in` (only `wDec` is used).
 * @param wOut Weights of the SAE at `hook_mlp_out` (only `wEnc` is used).
 * @param mlp The MLP between them.
 * @param mlpIn Clean MLP input `[N, D]` (the activation at `hook_mlp_in`).
 * @param fIn Input SAE pre-activations or activations `[N, F_in]`, for K1 (see
 *   {@link activeFeatures}); or K1 itself, int32 `[N, k]`.
 * @param fOut Output SAE pre-activations or activations `[N, F_out]`, for K2; or K2 itself.
 * @param k Features per token.
 * @returns `[N, k, k]`, rows ordered as K2 and columns as K1 (each largest feature first).
 * @throws {RangeError} If the token counts differ, or k does not fit the SAE widths or index sets.
 */
export function jacobians(
  wIn: SaeWeights,
  wOut: SaeWeights,
  mlp: MlpWeights,
  mlpIn: tf.Tensor2D,
  fIn: tf.Tensor2D,
  fOut: tf.Tensor2D,
  k: number,
): tf.Tensor3D {
  const inputs = { mlp, mlpIn, fIn, fOut, k };
  return differentiable(wIn, wOut, inputs, (j) => j.clone(), (dy) => dy as tf.Tensor3D);
}

/**
 * The JSAE Jacobian sparsity loss L_J = Σ_t Σ_{i,j} |J[t][j, i]| / k²: a SUM over the N tokens
 * (λ therefore depends on the batch size, as in the reference), not a mean; divide by N for the
 * mean per token. Its gradient reaches `wIn.wDec` and `wOut.wEnc` only (|x|′ = sign x, 0 at 0, as
 * in PyTorch).
 *
 * @param wIn Weights of the SAE at `hook_mlp_in` (only `wDec` is used).
 * @param wOut Weights of the SAE at `hook_mlp_out` (only `wEnc` is used).
 * @param mlp The MLP between them.
 * @param mlpIn Clean MLP input `[N, D]` (the activation at `hook_mlp_in`).
 * @param fIn Input SAE pre-activations or activations `[N, F_in]`, for K1 (see
 *   {@link activeFeatures}); or K1 itself, int32 `[N, k]`.
 * @param fOut Output SAE pre-activations or activations `[N, F_out]`, for K2; or K2 itself.
 * @param k Features per token.
 * @returns A scalar.
 * @throws {RangeError} If the token counts differ, or k does not fit the SAE widths or index sets.
 */
export function jacobianLoss(
  wIn: SaeWeights,
  wOut: SaeWeights,
  mlp: MlpWeights,
  mlpIn: tf.Tensor2D,
  fIn: tf.Tensor2D,
  fOut: tf.Tensor2D,
  k: number,
): tf.Scalar {
  const inputs = { mlp, mlpIn, fIn, fOut, k };
  return differentiable(
    wIn,
    wOut,
    inputs,
    (j) => tf.abs(j).sum().div(k * k) as tf.Scalar,
    (dy, j) => tf.sign(j).mul((dy as tf.Scalar).div(k * k)) as tf.Tensor3D,
  );
}

/** What a Jacobian computation needs besides the two differentiated weights. */
interface JacobianInputs {
  mlp: MlpWeights;
  mlpIn: tf.Tensor2D;
  fIn: tf.Tensor2D;
  fOut: tf.Tensor2D;
  k: number;
}

// `value(J)` as a function of (W_dec_in, W_enc_out) alone, with `dJ(dy, J)` the gradient of J
// from the value's. Everything else is computed inside the custom gradient's forward pass, where
// tfjs records nothing, so the constants cannot leak gradients and no tape keeps their
// intermediates alive; what the backward pass needs is handed over through `save`.
function differentiable<T extends tf.Tensor>(
  wIn: SaeWeights,
  wOut: SaeWeights,
  inputs: JacobianInputs,
  value: (j: tf.Tensor3D) => T,
  dJ: (dy: tf.Tensor, j: tf.Tensor3D) => tf.Tensor3D,
): T {
  const { mlp, k } = inputs;
  check(inputs);
  const f = tf.customGrad((wDec, wEnc, save) => {
    const frozen = freeze(inputs);
    const { a, bt } = factors(wDec as tf.Tensor2D, wEnc as tf.Tensor2D, mlp);
    const j = contract(a, bt, frozen, k);
    // J [N, k, k] is small next to the gathered [N, k, d_mlp] rows, which are gathered again.
    (save as tf.GradSaveFunc)([a, bt, j, frozen.g, frozen.k1, frozen.k2]);
    return {
      value: value(j),
      gradFunc: (dy, saved) => {
        const [a, bt, j, g, k1, k2] = saved as [
          tf.Tensor2D,
          tf.Tensor2D,
          tf.Tensor3D,
          tf.Tensor2D,
          tf.Tensor1D,
          tf.Tensor1D,
        ];
        return backward(dJ(dy as tf.Tensor, j), a, bt, { g, k1, k2 }, mlp, k);
      },
    };
  });
  return f(wIn.wDec, wOut.wEnc) as T;
}

function check({ mlpIn, fIn, fOut, k }: JacobianInputs): void {
  const n = mlpIn.shape[0];
  if (fIn.shape[0] !== n || fOut.shape[0] !== n) {
    throw new RangeError(
      `Cannot compute JSAE Jacobians: mlpIn has ${n} tokens, fIn ${fIn.shape[0]}, fOut ` +
        `${fOut.shape[0]}`,
    );
  }
  // An index set is [N, k]; activations are [N, F] with F ≥ k.
  const bad = [fIn, fOut].some((f) => f.dtype === "int32" ? f.shape[1] !== k : f.shape[1] < k);
  if (!Number.isInteger(k) || k < 1 || bad) {
    throw new RangeError(
      `Cannot compute JSAE Jacobians with k = ${k} from fIn ${fIn.dtype} [${fIn.shape}] and ` +
        `fOut ${fOut.dtype} [${fOut.shape}]: need k ≥ 1, activations at least k wide, index ` +
        "sets exactly k wide",
    );
  }
}

// GELU′ of the clean pre-activation and the flattened index sets.
function freeze({ mlp, mlpIn, fIn, fOut, k }: JacobianInputs): Frozen {
  const z = tf.matMul(mlpIn, mlp.wFc).add(mlp.bFc);
  // int32 inputs are index sets already (e.g. from a TopK kernel that returns them).
  const ids = (f: tf.Tensor2D) =>
    (f.dtype === "int32" ? f : activeFeatures(f, k)).reshape([-1]) as tf.Tensor1D;
  return { g: geluTanhDerivative(z) as tf.Tensor2D, k1: ids(fIn), k2: ids(fOut) };
}

// A = W_dec_in · W_fc [F_in, d_mlp] and Bᵀ = W_enc_outᵀ · W_projᵀ [F_out, d_mlp]: each feature
// pair's Jacobian entry is then a GELU′-weighted dot product of a row of A and a row of Bᵀ.
function factors(
  wDec: tf.Tensor2D,
  wEnc: tf.Tensor2D,
  mlp: MlpWeights,
): { a: tf.Tensor2D; bt: tf.Tensor2D } {
  return { a: tf.matMul(wDec, mlp.wFc), bt: tf.matMul(wEnc, mlp.wProj, true, true) };
}

// Token ranges [start, start + size) of at most CHUNK_TOKENS.
function chunks(n: number): { start: number; size: number }[] {
  const out = [];
  for (let start = 0; start < n; start += CHUNK_TOKENS) {
    out.push({ start, size: Math.min(CHUNK_TOKENS, n - start) });
  }
  return out;
}

// The gathered, GELU′-scaled rows A[K1] ⊙ g `[n, k, d_mlp]` and the rows Bᵀ[K2] `[n, k, d_mlp]`
// of one chunk of tokens.
function gathered(
  a: tf.Tensor2D,
  bt: tf.Tensor2D,
  frozen: Frozen,
  k: number,
  { start, size }: { start: number; size: number },
): { ag: tf.Tensor3D; bg: tf.Tensor3D } {
  const m = a.shape[1];
  const g = frozen.g.slice([start, 0], [size, m]).reshape([size, 1, m]);
  const ag = tf.gather(a, frozen.k1.slice([start * k], [size * k])).reshape([size, k, m]).mul(g);
  const bg = tf.gather(bt, frozen.k2.slice([start * k], [size * k])).reshape([size, k, m]);
  return { ag: ag as tf.Tensor3D, bg: bg as tf.Tensor3D };
}

// J [N, k, k] with J[t][j, i] = Σ_m Bᵀ[K2_j, m] · g_t[m] · A[K1_i, m].
function contract(a: tf.Tensor2D, bt: tf.Tensor2D, frozen: Frozen, k: number): tf.Tensor3D {
  const parts = chunks(frozen.g.shape[0]).map((c) =>
    tf.tidy(() => {
      const { ag, bg } = gathered(a, bt, frozen, k, c);
      return tf.matMul(bg, ag, false, true);
    })
  );
  const j = parts.length === 1 ? parts[0]! : tf.concat(parts, 0);
  if (parts.length > 1) tf.dispose(parts);
  return j as tf.Tensor3D;
}

// Gradients of W_dec_in and W_enc_out from dJ [N, k, k]; the gathers are redone per chunk.
function backward(
  dj: tf.Tensor3D,
  a: tf.Tensor2D,
  bt: tf.Tensor2D,
  frozen: Frozen,
  mlp: MlpWeights,
  k: number,
): tf.Tensor[] {
  const [fIn, m] = a.shape;
  const fOut = bt.shape[0];
  let da: tf.Tensor = tf.zeros([fIn, m]);
  let dbt: tf.Tensor = tf.zeros([fOut, m]);
  for (const c of chunks(frozen.g.shape[0])) {
    const [nextA, nextB] = tf.tidy(() => {
      const { ag, bg } = gathered(a, bt, frozen, k, c);
      const d = dj.slice([c.start, 0, 0], [c.size, k, k]);
      const g = frozen.g.slice([c.start, 0], [c.size, m]).reshape([c.size, 1, m]);
      // ∂L/∂(A[K1] rows) = (dJᵀ · Bᵀ[K2]) ⊙ g; ∂L/∂(Bᵀ[K2] rows) = dJ · (A[K1] ⊙ g).
      const dag = tf.matMul(d, bg, true, false).mul(g).reshape([c.size * k, m]);
      const dbg = tf.matMul(d, ag).reshape([c.size * k, m]);
      const ids1 = frozen.k1.slice([c.start * k], [c.size * k]);
      const ids2 = frozen.k2.slice([c.start * k], [c.size * k]);
      return [
        da.add(tf.unsortedSegmentSum(dag, ids1, fIn)),
        dbt.add(tf.unsortedSegmentSum(dbg, ids2, fOut)),
      ];
    });
    tf.dispose([da, dbt]);
    [da, dbt] = [nextA!, nextB!];
  }
  return tf.tidy(() => {
    // A = W_dec_in · W_fc ⇒ ∂W_dec_in = ∂A · W_fcᵀ; Bᵀ = W_enc_outᵀ · W_projᵀ ⇒ ∂W_enc_out = W_projᵀ · ∂Bᵀᵀ.
    const grads = [tf.matMul(da, mlp.wFc, false, true), tf.matMul(mlp.wProj, dbt, true, true)];
    tf.dispose([da, dbt]);
    return grads;
  });
}

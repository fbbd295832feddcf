/*
 * GPT-2's tanh GELU and its slope at one value, in operations that vectorise: a prelude
 * (lib/backend/native.ts) compiled after exp_vec.c and ahead of the kernels that call it — the
 * model's GELU kernels (gelu_kernel.c), SCALAR's block passes (lib/scalar/block_vjp.c) and the
 * JSAE's Jacobian (lib/sae/cpu_engine.c).
 *
 * With u = √(2/π)(x + 0.044715x³), y = −2u, e = e^y and s = ½(1 + tanh u) = σ(2u) = 1/(1 + e):
 * GELU = x·s and its slope s·(1 + x·e·s·(2√(2/π) + 6·0.044715·√(2/π)·x²)), since 1 − s = e·s. σ
 * keeps full relative accuracy in both tails, where 1 + tanh u would cancel. Beyond |y| = 80, s is
 * 0 or 1 to far more digits than float32 holds: both take those limits exactly (y < −80: GELU x,
 * slope 1; y > 80: x·0 for both, which carries a NaN through), which also keeps x³·e from turning
 * into inf·0 for huge |x|. The float64 loops in gelu_kernel.ts hold the same formulas.
 */

/* GELU(x); *slope = GELU′(x). */
static inline float gelu_tanh(float x, float *slope) {
  const float k1 = -1.5957691216057308f, k3 = -0.07135481627260025f; /* y = x·(k1 + k3·x²) */
  const float d0 = 1.5957691216057308f, d2 = 0.21406444881780076f;   /* 2·du/dx = d0 + d2·x² */
  const float x2 = x * x, y = x * (k1 + k3 * x2);
  const float e = exp_vec(y > 80.0f ? 80.0f : y < -80.0f ? -80.0f : y), s = 1.0f / (1.0f + e);
  const float zero = x * 0.0f;
  *slope = y < -80.0f ? 1.0f : y > 80.0f ? zero : s * (1.0f + x * e * s * (d0 + d2 * x2));
  return y > 80.0f ? zero : x * s;
}

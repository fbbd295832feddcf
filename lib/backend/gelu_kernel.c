/*
 * The model's GELU kernels in native loops (opened by lib/backend/gelu_kernel.ts): every element
 * through gelu_tanh (lib/backend/gelu_tanh.c, compiled ahead of this file with exp_vec.c), the
 * elements split over OpenMP threads. 0.1–0.2 ns per element here against the wasm SIMD loops'
 * 1.3–1.75.
 */
#include <stdint.h>

/* out[i] = GELU(x[i]) for i < n; out may be x. */
void scalar_gelu_values(const float *x, float *out, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float slope;
    out[i] = gelu_tanh(x[i], &slope);
  }
}

/* dx[i] = dy[i]·GELU′(x[i]) for i < n; dx may be dy or x. */
void scalar_gelu_grad(const float *dy, const float *x, float *dx, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; i++) {
    float slope;
    gelu_tanh(x[i], &slope);
    dx[i] = dy[i] * slope;
  }
}

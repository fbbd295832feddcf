/*
 * LayerNorm over the last axis (biased variance, as PyTorch), forward and backward in one pass
 * over each row, for lib/backend/layer_norm_kernel.ts. Rows split over OpenMP threads.
 *
 * The gain's and offset's gradients sum over every row. They are summed per fixed block of
 * LN_BLOCK rows and the blocks' sums then added in block order, so the result is the same bits
 * whatever the number of threads (a seed reproduces a run on any machine's core count).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Rows per block of the gain's and offset's gradient sums. */
#define LN_BLOCK 64

/* y = (x − μ)·r·w + b per row of D, r = 1/√(σ² + eps); each row's μ and r kept for the backward. */
void scalar_layer_norm_forward(const float *x, const float *w, const float *b, float *y,
                               float *mean, float *rstd, int64_t n, int32_t d, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const float *xr = x + i * d;
    float *yr = y + i * d, s = 0.0f, v = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int32_t j = 0; j < d; j++) s += xr[j];
    const float mu = s / (float)d;
#pragma omp simd reduction(+ : v)
    for (int32_t j = 0; j < d; j++) v += (xr[j] - mu) * (xr[j] - mu);
    const float r = 1.0f / sqrtf(v / (float)d + eps);
#pragma omp simd
    for (int32_t j = 0; j < d; j++) yr[j] = (xr[j] - mu) * r * w[j] + b[j];
    mean[i] = mu;
    rstd[i] = r;
  }
}

/*
 * With x̂ = (x − μ)·r and g = dy·w: dx = r·(g − mean(g) − x̂·mean(g·x̂)) per row,
 * dw = Σ_rows dy·x̂, db = Σ_rows dy.
 */
void scalar_layer_norm_backward(const float *dy, const float *x, const float *w,
                                const float *mean, const float *rstd, float *dx, float *dw,
                                float *db, int64_t n, int32_t d) {
  const int64_t blocks = (n + LN_BLOCK - 1) / LN_BLOCK;
  float *part = calloc((size_t)blocks * 2 * d, sizeof(float)); /* per block: dw, then db */
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; blk++) {
    float *pw = part + blk * 2 * d, *pb = pw + d;
    const int64_t end = (blk + 1) * LN_BLOCK < n ? (blk + 1) * LN_BLOCK : n;
    for (int64_t i = blk * LN_BLOCK; i < end; i++) {
      const float *xr = x + i * d, *gr = dy + i * d, mu = mean[i], r = rstd[i];
      float *dxr = dx + i * d, sg = 0.0f, sgx = 0.0f;
#pragma omp simd reduction(+ : sg, sgx)
      for (int32_t j = 0; j < d; j++) {
        const float xh = (xr[j] - mu) * r, g = gr[j] * w[j];
        sg += g;
        sgx += g * xh;
        pw[j] += gr[j] * xh;
        pb[j] += gr[j];
      }
      const float mg = sg / (float)d, mgx = sgx / (float)d;
#pragma omp simd
      for (int32_t j = 0; j < d; j++) {
        const float xh = (xr[j] - mu) * r;
        dxr[j] = r * (gr[j] * w[j] - mg - xh * mgx);
      }
    }
  }
  memset(dw, 0, sizeof(float) * d);
  memset(db, 0, sizeof(float) * d);
  for (int64_t blk = 0; blk < blocks; blk++) {
    const float *pw = part + blk * 2 * d, *pb = pw + d;
    for (int32_t j = 0; j < d; j++) dw[j] += pw[j], db[j] += pb[j];
  }
  free(part);
}

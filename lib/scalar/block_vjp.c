/*
 * The loops of lib/scalar/block_vjp.ts that are not matrix products (those run in OpenBLAS,
 * called from TypeScript): one GPT block's forward pieces (LayerNorm or DynamicTanh, causal
 * softmax, GELU with its derivative) and the backward pieces for many cotangent entries at once
 * (a row gather, norm backwards, the softmax backward, and the per-row scatter that finishes the
 * input gradient). Compiled and opened by lib/backend/native.ts.
 *
 * Layout (row-major, float32): per sequence of T positions, activations [T][D], the c_attn output
 * qkv [T][3D] (q | k | v, head h at columns h·S …), probabilities p [H][T][T] (0 above the
 * diagonal). Entries e (a cotangent vector at one position of one row) index their position with
 * pos[e]; per-entry buffers are [E][D], [E][M], or [E][H][T] and [E][H][D].
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

/* c[r][:] = bias + residual[r][:] (residual may be NULL): the initial value of an affine layer's
 * output, to which sgemm then adds the product (beta = 1). */
void bv_fill_rows(float *c, const float *bias, const float *residual, int rows, int cols) {
  for (int r = 0; r < rows; r++) {
    float *out = c + (size_t)r * cols;
    const float *res = residual ? residual + (size_t)r * cols : NULL;
#pragma omp simd
    for (int d = 0; d < cols; d++) out[d] = bias[d] + (res ? res[d] : 0.0f);
  }
}

/* LayerNorm over each of T rows (biased variance): xh = (x − mean)·rs with rs = 1/√(var + eps),
 * out = xh·g + b. Means and variances in double: the rows are short, the inputs large. */
void bv_layernorm(const float *x, const float *g, const float *b, float eps, int T, int D,
                  float *xh, float *rs, float *out) {
  for (int t = 0; t < T; t++) {
    const float *xt = x + (size_t)t * D;
    double mean = 0.0, var = 0.0;
    for (int d = 0; d < D; d++) mean += xt[d];
    mean /= D;
    for (int d = 0; d < D; d++) var += (xt[d] - mean) * (xt[d] - mean);
    const float r = (float)(1.0 / sqrt(var / D + eps)), m = (float)mean;
    rs[t] = r;
    float *h = xh + (size_t)t * D, *o = out + (size_t)t * D;
    for (int d = 0; d < D; d++) {
      h[d] = (xt[d] - m) * r;
      o[d] = h[d] * g[d] + b[d];
    }
  }
}

/* DynamicTanh over n values of rows of width D: th = tanh(alpha·x), out = g·th + b. */
void bv_dyt(const float *x, float alpha, const float *g, const float *b, int n, int D, float *th,
            float *out) {
  for (int i = 0; i < n; i++) {
    th[i] = tanhf(alpha * x[i]);
    out[i] = g[i % D] * th[i] + b[i % D];
  }
}

/* In place over p [H][T][T] holding scaled scores: each row i becomes softmax over keys 0 … i
 * (the causal mask), and its entries past i become 0. */
void bv_causal_softmax(float *p, int H, int T) {
  for (int hi = 0; hi < H * T; hi++) {
    float *row = p + (size_t)hi * T;
    const int n = hi % T + 1;
    float m = -INFINITY, sum = 0.0f;
    for (int j = 0; j < n; j++) m = row[j] > m ? row[j] : m;
    for (int j = 0; j < n; j++) sum += row[j] = expf(row[j] - m);
    const float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) row[j] *= inv;
    for (int j = n; j < T; j++) row[j] = 0.0f;
  }
}

/* GPT-2's tanh GELU and its derivative over n values: gelu_tanh (lib/backend/gelu_tanh.c, compiled
 * ahead of this file with exp_vec.c). post may be pre (each value is read before it is written). */
void bv_gelu(const float *pre, int n, float *post, float *d) {
#pragma omp parallel for simd schedule(static)
  for (int i = 0; i < n; i++) post[i] = gelu_tanh(pre[i], &d[i]);
}

/* dst[e][:] = src[ids[e]][:], rows of width D. */
void bv_gather(const float *src, const int *ids, int E, int D, float *dst) {
  for (int e = 0; e < E; e++) {
    memcpy(dst + (size_t)e * D, src + (size_t)ids[e] * D, sizeof(float) * (size_t)D);
  }
}

/* x[e][:] ∘= by[pos[e]][:], rows of width M: the GELU backward with the saved derivative. */
void bv_scale_rows(float *x, const float *by, const int *pos, int E, int M) {
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; e++) {
    float *xe = x + (size_t)e * M;
    const float *b = by + (size_t)pos[e] * M;
#pragma omp simd
    for (int m = 0; m < M; m++) xe[m] *= b[m];
  }
}

/* LayerNorm backward per entry: dx[e] = residual[e] + rs·(gy − mean(gy) − xh·mean(gy∘xh)) with
 * gy = dy[e]∘g and xh, rs the saved values at pos[e]; residual may be NULL (none). dx may be dy. */
void bv_layernorm_backward(const float *dy, const float *xh, const float *rs, const float *g,
                           const int *pos, int E, int D, const float *residual, float *dx) {
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; e++) {
    const float *in = dy + (size_t)e * D, *h = xh + (size_t)pos[e] * D;
    float m1 = 0.0f, m2 = 0.0f;
    for (int d = 0; d < D; d++) {
      m1 += in[d] * g[d];
      m2 += in[d] * g[d] * h[d];
    }
    m1 /= D, m2 /= D;
    const float r = rs[pos[e]];
    const float *res = residual ? residual + (size_t)e * D : NULL;
    float *out = dx + (size_t)e * D;
    for (int d = 0; d < D; d++) out[d] = (res ? res[d] : 0.0f) + r * (in[d] * g[d] - m1 - h[d] * m2);
  }
}

/* DynamicTanh backward per entry: dx[e] = residual[e] + dy[e]∘g·alpha·(1 − th²) at pos[e];
 * residual may be NULL (none). */
void bv_dyt_backward(const float *dy, const float *th, float alpha, const float *g, const int *pos,
                     int E, int D, const float *residual, float *dx) {
  for (int e = 0; e < E; e++) {
    const float *in = dy + (size_t)e * D, *t = th + (size_t)pos[e] * D;
    const float *res = residual ? residual + (size_t)e * D : NULL;
    float *out = dx + (size_t)e * D;
    for (int d = 0; d < D; d++) {
      out[d] = (res ? res[d] : 0.0f) + in[d] * g[d] * alpha * (1.0f - t[d] * t[d]);
    }
  }
}

/* In place over ds [E][H][T] holding dP (the gradient of each entry's probability row): the
 * softmax backward dS = P ∘ (dP − Σ_j dP·P) with P the saved row p[h][pos[e]], 0 past pos[e]. */
void bv_softmax_backward(float *ds, const float *p, const int *pos, int E, int H, int T) {
#pragma omp parallel for schedule(static)
  for (int eh = 0; eh < E * H; eh++) {
    const int i = pos[eh / H], n = i + 1;
    const float *prow = p + ((size_t)(eh % H) * T + i) * T;
    float *row = ds + (size_t)eh * T, delta = 0.0f;
    for (int j = 0; j < n; j++) delta += row[j] * prow[j];
#pragma omp simd
    for (int j = 0; j < n; j++) row[j] = prow[j] * (row[j] - delta);
    for (int j = n; j < T; j++) row[j] = 0.0f;
  }
}

/* Sixteen floats: GCC vector types keep the scatter's accumulators in registers. */
typedef float v16f __attribute__((vector_size(64)));

/* Positions per block of the scatter: JB × 4 accumulators of 16 floats stay in registers. */
enum { JB = 4 };

/*
 * The keys' and values' part of one row's gradient at ln_1's output, for positions j0 … j0 + jn − 1
 * (jn ≤ JB) and columns d0 … d0 + 16·V − 1: acc[jj][d] = Σ_{e, pos[e] ≥ j0} Σ_h
 * (ds[e][h][j0 + jj]·a[h][pos[e]][d] + p[h][pos[e]][j0 + jj]·bv[e][h][d]). ds and p are 0 past
 * pos[e], so whole blocks need no mask. Inlined with V = 4 or 1, so that every loop over v unrolls.
 */
static inline __attribute__((always_inline)) void scatter_block(
    int V, int j0, int jn, int e0, int e1, const int *pos, int T, int D, int H, const float *p,
    const float *ds, const float *a, const float *bv, int d0, float *acc) {
  v16f s[JB][4] = {};
  for (int e = e0; e < e1; e++) {
    const int i = pos[e];
    if (i < j0) continue;
    for (int h = 0; h < H; h++) {
      const float *c1 = ds + ((size_t)e * H + h) * T + j0, *c2 = p + ((size_t)h * T + i) * T + j0;
      const float *av = a + ((size_t)h * T + i) * D + d0, *bw = bv + ((size_t)e * H + h) * D + d0;
      v16f x[4], y[4];
      for (int v = 0; v < V; v++) {
        memcpy(&x[v], av + 16 * v, sizeof x[v]);
        memcpy(&y[v], bw + 16 * v, sizeof y[v]);
      }
      float k1[JB], k2[JB];
      for (int jj = 0; jj < JB; jj++) {
        k1[jj] = jj < jn ? c1[jj] : 0.0f;
        k2[jj] = jj < jn ? c2[jj] : 0.0f;
      }
      /* Two statements, so that each is one fused multiply-add into the accumulator. */
      for (int jj = 0; jj < JB; jj++) {
        for (int v = 0; v < V; v++) {
          s[jj][v] += k1[jj] * x[v];
          s[jj][v] += k2[jj] * y[v];
        }
      }
    }
  }
  for (int jj = 0; jj < jn; jj++) {
    for (int v = 0; v < V; v++) {
      memcpy(acc + (size_t)jj * D + d0 + 16 * v, &s[jj][v], sizeof s[jj][v]);
    }
  }
}

/* The same sum for one position j over all D columns, for widths that are not whole vectors. */
static void scatter_position(int j, int e0, int e1, const int *pos, int T, int D, int H,
                             const float *p, const float *ds, const float *a, const float *bv,
                             float *acc) {
  memset(acc, 0, sizeof(float) * (size_t)D);
  for (int e = e0; e < e1; e++) {
    const int i = pos[e];
    if (i < j) continue;
    for (int h = 0; h < H; h++) {
      const float c1 = ds[((size_t)e * H + h) * T + j], c2 = p[((size_t)h * T + i) * T + j];
      const float *av = a + ((size_t)h * T + i) * D, *bvv = bv + ((size_t)e * H + h) * D;
#pragma omp simd
      for (int d = 0; d < D; d++) acc[d] += c1 * av[d] + c2 * bvv[d];
    }
  }
}

/* Position j of a row from acc (the keys' and values' part, overwritten): adds the queries' part
 * daq of the entries at j, runs ln_1's backward and adds the result and the entries' dmid to o. */
static void finish_position(int j, float *acc, int e0, int e1, const int *pos, int D,
                            const float *daq, const float *dmid, const float *xh1,
                            const float *rs1, const float *g1, float *o) {
  for (int e = e0; e < e1; e++) {
    if (pos[e] != j) continue;
    const float *q = daq + (size_t)e * D;
#pragma omp simd
    for (int d = 0; d < D; d++) acc[d] += q[d];
  }
  const float *h1 = xh1 + (size_t)j * D;
  float m1 = 0.0f, m2 = 0.0f;
  for (int d = 0; d < D; d++) {
    acc[d] *= g1[d];
    m1 += acc[d];
    m2 += acc[d] * h1[d];
  }
  m1 /= D, m2 /= D;
  const float rj = rs1[j];
#pragma omp simd
  for (int d = 0; d < D; d++) o[d] += rj * (acc[d] - m1 - h1[d] * m2);
  for (int e = e0; e < e1; e++) {
    if (pos[e] != j) continue;
    const float *m = dmid + (size_t)e * D;
#pragma omp simd
    for (int d = 0; d < D; d++) o[d] += m[d];
  }
}

/*
 * Finishes the input gradient of R rows and adds it into out: row r (entries row_start[r] …
 * row_start[r+1] − 1, all its own) goes to out + out_offset[r], positions j ≤ its last entry's
 * position, D floats each. At position j, the gradient at ln_1's output is
 *   Σ_{e, pos[e] ≥ j} Σ_h (ds[e][h][j]·a[h][pos[e]] + p[h][pos[e]][j]·bv[e][h])
 *     + Σ_{pos[e] = j} daq[e]
 * (keys, values and queries; a[h][i] = scale·q_h[i]·W_kᵀ and bv[e][h] = dO_h[e]·W_vᵀ were
 * multiplied out beforehand, so each key position costs 4·H·D flops per entry); ln_1's backward
 * with the saved xh1, rs1 turns it into the gradient at the block's input, and the residual path
 * adds dmid[e] at each entry's own position. Rows run in parallel (their outputs are distinct);
 * where D is a multiple of 16, JB positions at a time in registers (scatter_block).
 */
void bv_rows(int R, const int *row_start, const int *out_offset, const int *pos, int T,
             int D, int H, const float *p, const float *ds, const float *a, const float *bv,
             const float *daq, const float *dmid, const float *xh1, const float *rs1,
             const float *g1, float *out) {
#pragma omp parallel for schedule(dynamic)
  for (int r = 0; r < R; r++) {
    const int e0 = row_start[r], e1 = row_start[r + 1];
    int length = 0;
    for (int e = e0; e < e1; e++) length = pos[e] + 1 > length ? pos[e] + 1 : length;
    float acc[JB * D];
    float *o = out + out_offset[r];
    for (int j0 = 0; j0 < length; j0 += JB) {
      const int jn = length - j0 < JB ? length - j0 : JB;
      if (D % 16 == 0) {
        int d0 = 0;
        for (; d0 + 64 <= D; d0 += 64) {
          scatter_block(4, j0, jn, e0, e1, pos, T, D, H, p, ds, a, bv, d0, acc);
        }
        for (; d0 < D; d0 += 16) {
          scatter_block(1, j0, jn, e0, e1, pos, T, D, H, p, ds, a, bv, d0, acc);
        }
      } else {
        for (int jj = 0; jj < jn; jj++) {
          scatter_position(j0 + jj, e0, e1, pos, T, D, H, p, ds, a, bv, acc + (size_t)jj * D);
        }
      }
      for (int jj = 0; jj < jn; jj++) {
        const int j = j0 + jj;
        finish_position(j, acc + (size_t)jj * D, e0, e1, pos, D, daq, dmid, xh1, rs1, g1,
                        o + (size_t)j * D);
      }
    }
  }
}

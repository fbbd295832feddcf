/*
 * Causal multi-head self-attention, forward and backward, fused per (sequence, head): scores,
 * causal mask, softmax and weighted sum in one pass over each head's keys and values, without
 * ever storing the T × T probabilities. Compiled and opened by lib/backend/attention_kernel.ts.
 *
 * Layout (row-major, float32): qkv [B·T][3·D] is the c_attn output as the model computes it
 * (q | k | v, head h at columns h·S … h·S + S − 1 of each third), y and dy [B·T][D] the heads
 * merged back, lse [B][H][T] each query row's log-sum-exp of its scaled scores. The backward
 * recomputes the probabilities from q, k and lse (flash-attention style) instead of reading
 * saved ones: memory stays O(T) per head, and the recomputation costs one product of the five.
 *
 * Each head's keys and values are first copied transposed ([S][T]) into per-thread buffers, so
 * every inner loop runs over key positions j with unit stride and the compiler vectorises it.
 * The exponential is exp_vec (lib/backend/exp_vec.c, a polynomial that vectorises too), within
 * 1.5 ulp over the range softmax needs (x ≤ 0).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Sixteen floats, and sixteen int32 of the same size (a cast between them keeps the bits). */
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

/*
 * p[j] = e^(p[j] − shift) for j < n, where every p[j] − shift ≤ 0: exp_vec (lib/backend/exp_vec.c,
 * compiled ahead of this file), clamped at −87, where the result is ~1e-38 instead of underflowing.
 */
static void exp_shifted(float *p, int n, float shift) {
#pragma omp simd
  for (int j = 0; j < n; j++) {
    const float x = p[j] - shift;
    p[j] = exp_vec(x < -87.0f ? -87.0f : x);
  }
}

/* Copies head h's keys or values of one sequence (columns col … col + S − 1) into rows[T][S]
 * and transposed into cols[S][Tp]. */
static void gather_head(const float *seq, int T, int Tp, int W, int col, int S, float *rows,
                        float *cols) {
  for (int j = 0; j < T; j++) {
    const float *row = seq + (size_t)j * W + col;
    memcpy(rows + (size_t)j * S, row, sizeof(float) * (size_t)S);
    for (int c = 0; c < S; c++) cols[(size_t)c * Tp + j] = row[c];
  }
}

/* s[j] = Σ_c a[c]·scale · mt[c][j] for j < n (a of length S, mt [S][Tp], Tp a multiple of 16):
 * 16 columns at a time in registers, two partial sums to hide the FMA latency. Values of s past n
 * (up to n rounded up to 16) are garbage. */
static void row_times(const float *a, float scale, const float *mt, int S, int Tp, int n,
                      float *s) {
  for (int j = 0; j < n; j += 16) {
    v16f acc0 = {}, acc1 = {}, m;
    int c = 0;
    for (; c + 1 < S; c += 2) {
      memcpy(&m, mt + (size_t)c * Tp + j, sizeof m);
      acc0 += (a[c] * scale) * m;
      memcpy(&m, mt + (size_t)(c + 1) * Tp + j, sizeof m);
      acc1 += (a[c + 1] * scale) * m;
    }
    if (c < S) {
      memcpy(&m, mt + (size_t)c * Tp + j, sizeof m);
      acc0 += (a[c] * scale) * m;
    }
    acc0 += acc1;
    memcpy(s + j, &acc0, sizeof acc0);
  }
}

/* out[c] = Σ_{j<n} w[j] · rows[j][c] · scale (rows [T][S]); 16 columns at a time in registers,
 * four partial sums over j, when S is a multiple of 16, else a plain loop. */
static void weighted_rows(const float *w, const float *rows, int S, int n, float scale,
                          float *out) {
  if (S % 16 != 0) {
    for (int c = 0; c < S; c++) {
      float acc = 0.0f;
      for (int j = 0; j < n; j++) acc += w[j] * rows[(size_t)j * S + c];
      out[c] = acc * scale;
    }
    return;
  }
  for (int c = 0; c < S; c += 16) {
    v16f acc[4] = {}, r;
    int j = 0;
    for (; j + 3 < n; j += 4) {
      for (int u = 0; u < 4; u++) {
        memcpy(&r, rows + (size_t)(j + u) * S + c, sizeof r);
        acc[u] += w[j + u] * r;
      }
    }
    for (; j < n; j++) {
      memcpy(&r, rows + (size_t)j * S + c, sizeof r);
      acc[0] += w[j] * r;
    }
    const v16f sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) * scale;
    memcpy(out + c, &sum, sizeof sum);
  }
}

/* Per-thread scratch: a head's k and v as rows [T][S] and transposed [S][Tp] (T rounded up to
 * whole 16-float blocks, the padding zero), the transposed gradients, two score rows [Tp]. */
struct scratch {
  float *k, *kt, *v, *vt, *dkt, *dvt, *p, *ds;
};

static struct scratch scratch_alloc(int Tp, int S) {
  const size_t block = (size_t)S * Tp;
  struct scratch w = {calloc(block, 4), calloc(block, 4), calloc(block, 4), calloc(block, 4),
                      calloc(block, 4), calloc(block, 4), calloc(Tp, 4),    calloc(Tp, 4)};
  return w;
}

static void scratch_free(struct scratch w) {
  free(w.k), free(w.kt), free(w.v), free(w.vt), free(w.dkt), free(w.dvt), free(w.p), free(w.ds);
}

/*
 * y = softmax(q·kᵀ·scale + causal mask)·v per (sequence, head); lse = each query's log-sum-exp
 * of its scaled scores. scale is 1/√S.
 */
void scalar_attention_forward(const float *qkv, float *y, float *lse, int B, int T, int H, int S,
                              float scale) {
  const int D = H * S, W = 3 * D, Tp = (T + 15) / 16 * 16;
#pragma omp parallel
  {
    struct scratch w = scratch_alloc(Tp, S);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
      const int b = bh / H, h = bh % H;
      const float *seq = qkv + (size_t)b * T * W;
      gather_head(seq, T, Tp, W, D + h * S, S, w.k, w.kt);
      gather_head(seq, T, Tp, W, 2 * D + h * S, S, w.v, w.vt);
      for (int i = 0; i < T; i++) {
        const int n = i + 1; /* the causal mask: keys 0 … i */
        row_times(seq + (size_t)i * W + h * S, scale, w.kt, S, Tp, n, w.p);
        float m = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : m)
        for (int j = 0; j < n; j++) m = w.p[j] > m ? w.p[j] : m;
        exp_shifted(w.p, n, m);
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; j++) sum += w.p[j];
        weighted_rows(w.p, w.v, S, n, 1.0f / sum, y + ((size_t)b * T + i) * D + h * S);
        lse[(size_t)bh * T + i] = m + logf(sum);
      }
    }
    scratch_free(w);
  }
}

/*
 * The gradient with respect to qkv, given dy and the forward's y and lse: with P recomputed as
 * exp(q·kᵀ·scale − lse), dP = dy·vᵀ, dS = P ∘ (dP − rowsum(dy ∘ y)), it writes dq = dS·k·scale,
 * dk = dSᵀ·q·scale and dv = Pᵀ·dy into dqkv's three thirds (every element is written).
 */
void scalar_attention_backward(const float *qkv, const float *y, const float *lse, const float *dy,
                               float *dqkv, int B, int T, int H, int S, float scale) {
  const int D = H * S, W = 3 * D, Tp = (T + 15) / 16 * 16;
#pragma omp parallel
  {
    struct scratch w = scratch_alloc(Tp, S);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
      const int b = bh / H, h = bh % H;
      const float *seq = qkv + (size_t)b * T * W;
      float *dseq = dqkv + (size_t)b * T * W;
      gather_head(seq, T, Tp, W, D + h * S, S, w.k, w.kt);
      gather_head(seq, T, Tp, W, 2 * D + h * S, S, w.v, w.vt);
      memset(w.dkt, 0, sizeof(float) * (size_t)S * Tp);
      memset(w.dvt, 0, sizeof(float) * (size_t)S * Tp);
      for (int i = 0; i < T; i++) {
        const int n = i + 1;
        const float *q = seq + (size_t)i * W + h * S;
        const float *g = dy + ((size_t)b * T + i) * D + h * S;
        const float *yi = y + ((size_t)b * T + i) * D + h * S;
        row_times(q, scale, w.kt, S, Tp, n, w.p);
        exp_shifted(w.p, n, lse[(size_t)bh * T + i]);
        row_times(g, 1.0f, w.vt, S, Tp, n, w.ds);
        float delta = 0.0f;
        for (int c = 0; c < S; c++) delta += g[c] * yi[c];
#pragma omp simd
        for (int j = 0; j < n; j++) w.ds[j] = w.p[j] * (w.ds[j] - delta);
        weighted_rows(w.ds, w.k, S, n, scale, dseq + (size_t)i * W + h * S);
        for (int c = 0; c < S; c++) {
          float *dk = w.dkt + (size_t)c * Tp, *dv = w.dvt + (size_t)c * Tp;
          const float qc = q[c] * scale, gc = g[c];
#pragma omp simd
          for (int j = 0; j < n; j++) {
            dk[j] += qc * w.ds[j];
            dv[j] += gc * w.p[j];
          }
        }
      }
      for (int j = 0; j < T; j++) {
        float *dk = dseq + (size_t)j * W + D + h * S, *dv = dseq + (size_t)j * W + 2 * D + h * S;
        for (int c = 0; c < S; c++) {
          dk[c] = w.dkt[(size_t)c * Tp + j];
          dv[c] = w.dvt[(size_t)c * Tp + j];
        }
      }
    }
    scratch_free(w);
  }
}

/*
 * Causal multi-head self-attention, forward and backward, fused per (sequence, head): scores,
 * causal mask, softmax and weighted sum without ever storing the T × T probabilities. Compiled
 * and opened by lib/backend/attention_kernel.ts.
 *
 * Layout (row-major, float32): qkv [B·T][3·D] is the c_attn output as the model computes it
 * (q | k | v, head h at columns h·S … h·S + S − 1 of each third), y and dy [B·T][D] the heads
 * merged back, lse [B][H][T] each query row's log-sum-exp of its scaled scores. The backward
 * recomputes the probabilities from q, k and lse (flash-attention style) instead of reading
 * saved ones: memory stays O(T) per head, and the recomputation costs one product of the five.
 *
 * Queries go in tiles of QB rows; within a tile every product is one of three register-blocked
 * shapes (a tile's rows times transposed keys; a tile's scores times key rows; a tile's scores,
 * transposed, times its own rows, accumulated into the keys' gradients), each loading a 16-float
 * vector once per 4 or 8 multiply-adds instead of once per one. Head rows are copied into
 * per-thread buffers padded to Sp = S rounded up to 16 (zeros), so any head size runs the same
 * loops. The exponential is exp_vec (lib/backend/exp_vec.c, compiled ahead of this file).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Sixteen floats: one AVX-512 register, two AVX2 ones. */
typedef float v16f __attribute__((vector_size(64)));

/* Query rows per tile: a multiple of 8 (the blocks below), small enough that a tile's scores
 * stay in L2 for long sequences (32 × 1,024 floats). */
#define QB 32

#define INLINE static inline __attribute__((always_inline))

INLINE int round16(int n) { return (n + 15) & ~15; }
INLINE int min_int(int a, int b) { return a < b ? a : b; }
INLINE v16f load16(const float *p) {
  v16f v;
  memcpy(&v, p, sizeof v);
  return v;
}
INLINE void store16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

/* C[u][16·v …] = Σ_c A[u][c] · Bt[c][16·v …] for u < 4, v < nv (1 or 2), storing rows u < rows. */
INLINE void abt_block(const float *A, const float *Bt, int rows, int Sp, int Tp, float *C,
                      const int nv) {
  v16f acc[4][2] = {};
  for (int c = 0; c < Sp; c++) {
    v16f b[2];
    for (int v = 0; v < nv; v++) b[v] = load16(Bt + (size_t)c * Tp + 16 * v);
    for (int u = 0; u < 4; u++) {
      const float a = A[u * Sp + c];
      for (int v = 0; v < nv; v++) acc[u][v] += a * b[v];
    }
  }
  for (int u = 0; u < rows; u++)
    for (int v = 0; v < nv; v++) store16(C + (size_t)u * Tp + 16 * v, acc[u][v]);
}

/*
 * C = A · Bt for a tile whose row r is query first + r: A [≥ R rounded up to 4][Sp], Bt [Sp][Tp],
 * C [R][Tp]. Each group of 4 rows is computed over the keys its last row sees, rounded up to 16.
 */
static void abt_tile(const float *A, const float *Bt, int R, int Sp, int Tp, int first, float *C) {
  for (int r = 0; r < R; r += 4) {
    const int rows = min_int(4, R - r), nc = round16(first + r + rows);
    const float *a = A + (size_t)r * Sp;
    float *c = C + (size_t)r * Tp;
    int j = 0;
    for (; j + 32 <= nc; j += 32) abt_block(a, Bt + j, rows, Sp, Tp, c + j, 2);
    if (j < nc) abt_block(a, Bt + j, rows, Sp, Tp, c + j, 1);
  }
}

/* C[u][0 … 15] = Σ_{j<n} A[u][j] · B[j][0 … 15] for u < 8, storing rows u < rows. */
INLINE void ab_block(const float *A, int Tp, const float *B, int Sp, int n, float *C, int rows) {
  v16f acc[8] = {};
  for (int j = 0; j < n; j++) {
    const v16f b = load16(B + (size_t)j * Sp);
    for (int u = 0; u < 8; u++) acc[u] += A[(size_t)u * Tp + j] * b;
  }
  for (int u = 0; u < rows; u++) store16(C + (size_t)u * Sp, acc[u]);
}

/*
 * C = A · B for a tile whose row r is query first + r, over the keys each group of 8 rows sees:
 * A [≥ R rounded up to 8][Tp] (zero past each row's own keys), B [T][Sp], C [R][Sp].
 */
static void ab_tile(const float *A, int Tp, const float *B, int Sp, int R, int first, float *C) {
  for (int r = 0; r < R; r += 8) {
    const int rows = min_int(8, R - r), n = first + r + rows;
    for (int c = 0; c < Sp; c += 16)
      ab_block(A + (size_t)r * Tp, Tp, B + c, Sp, n, C + (size_t)r * Sp + c, rows);
  }
}

/* C[u][0 … 15] += Σ_{r0≤r<R} A[r][u] · B[r][0 … 15] for u < cols (at most 8). */
INLINE void atb_block(const float *A, int Tp, const float *B, int Sp, int r0, int R, float *C,
                      int cols) {
  v16f acc[8] = {};
  for (int r = r0; r < R; r++) {
    const v16f b = load16(B + (size_t)r * Sp);
    for (int u = 0; u < 8; u++) acc[u] += A[(size_t)r * Tp + u] * b;
  }
  for (int u = 0; u < cols; u++) store16(C + (size_t)u * Sp, load16(C + (size_t)u * Sp) + acc[u]);
}

/*
 * C += Aᵀ · B for a tile whose row r is query first + r: A [R][Tp] (zero past each row's keys, up
 * to the tile's keys rounded up to 16), B [R][Sp], C [T][Sp] accumulating over every key j the
 * tile sees; key j only from the rows that see it.
 */
static void atb_tile(const float *A, int Tp, const float *B, int Sp, int R, int first, float *C) {
  const int nk = first + R;
  for (int j = 0; j < nk; j += 8) {
    const int cols = min_int(8, nk - j), r0 = j > first ? j - first : 0;
    for (int c = 0; c < Sp; c += 16)
      atb_block(A + j, Tp, B + c, Sp, r0, R, C + (size_t)j * Sp + c, cols);
  }
}

/* dst[r][c] = src[r][c] · scale (src rows `stride` apart) for r < R, c < S; zero for S ≤ c < Sp. */
static void gather_rows(const float *src, int stride, int R, int S, int Sp, float scale,
                        float *dst) {
  for (int r = 0; r < R; r++) {
    for (int c = 0; c < S; c++) dst[(size_t)r * Sp + c] = src[(size_t)r * stride + c] * scale;
    for (int c = S; c < Sp; c++) dst[(size_t)r * Sp + c] = 0.0f;
  }
}

/* rows[T][Sp] and, when cols is given, cols[Sp][Tp]: the T rows of one head's keys or values
 * (rows `stride` apart). Padding columns and rows stay as allocated: zero. */
static void gather_head(const float *src, int stride, int T, int S, int Sp, int Tp, float *rows,
                        float *cols) {
  gather_rows(src, stride, T, S, Sp, 1.0f, rows);
  if (cols)
    for (int j = 0; j < T; j++)
      for (int c = 0; c < S; c++) cols[(size_t)c * Tp + j] = rows[(size_t)j * Sp + c];
}

/* Per-thread scratch: a head's k and v as rows [T][Sp] and transposed [Sp][Tp], the gradients of
 * k and v [T][Sp]; a tile's two row blocks [QB][Sp], its output [QB][Sp], two score blocks
 * [QB][Tp]. All zeroed once: padding stays zero. */
struct scratch {
  float *k, *kt, *v, *vt, *dk, *dv, *a, *g, *o, *p, *ds;
};

static struct scratch scratch_alloc(int Tp, int Sp) {
  const size_t head = (size_t)Sp * Tp, tile = (size_t)QB * Sp, scores = (size_t)QB * Tp;
  struct scratch w = {calloc(head, 4), calloc(head, 4), calloc(head, 4), calloc(head, 4),
                      calloc(head, 4), calloc(head, 4), calloc(tile, 4), calloc(tile, 4),
                      calloc(tile, 4), calloc(scores, 4), calloc(scores, 4)};
  return w;
}

static void scratch_free(struct scratch w) {
  free(w.k), free(w.kt), free(w.v), free(w.vt), free(w.dk), free(w.dv);
  free(w.a), free(w.g), free(w.o), free(w.p), free(w.ds);
}

/*
 * p[j] = e^(p[j] − shift) for j < n, where every p[j] − shift ≤ 0 (exp_vec, clamped at −87, where
 * the result is ~1e-38 instead of underflowing), and zero for n ≤ j < end.
 */
static void exp_shifted(float *p, int n, int end, float shift) {
#pragma omp simd
  for (int j = 0; j < n; j++) {
    const float x = p[j] - shift;
    p[j] = exp_vec(x < -87.0f ? -87.0f : x);
  }
  for (int j = n; j < end; j++) p[j] = 0.0f;
}

/* One (sequence, head) of the forward: seq its qkv rows, y its output rows (stride D), lse [T]. */
static void forward_head(const float *seq, int T, int H, int S, int h, float scale,
                         struct scratch *w, float *y, float *lse) {
  const int D = H * S, W = 3 * D, Sp = round16(S), Tp = round16(T);
  gather_head(seq + D + h * S, W, T, S, Sp, Tp, w->k, w->kt);
  gather_head(seq + 2 * D + h * S, W, T, S, Sp, Tp, w->v, NULL);
  for (int first = 0; first < T; first += QB) {
    const int R = min_int(QB, T - first), end = round16(first + R);
    gather_rows(seq + (size_t)first * W + h * S, W, R, S, Sp, scale, w->a);
    abt_tile(w->a, w->kt, R, Sp, Tp, first, w->p);
    float inv[QB];
    for (int r = 0; r < R; r++) {
      float *p = w->p + (size_t)r * Tp, m = -INFINITY, sum = 0.0f;
      const int n = first + r + 1; /* the causal mask: keys 0 … first + r */
#pragma omp simd reduction(max : m)
      for (int j = 0; j < n; j++) m = p[j] > m ? p[j] : m;
      exp_shifted(p, n, end, m);
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < n; j++) sum += p[j];
      inv[r] = 1.0f / sum;
      lse[first + r] = m + logf(sum);
    }
    ab_tile(w->p, Tp, w->v, Sp, R, first, w->o);
    for (int r = 0; r < R; r++)
      for (int c = 0; c < S; c++) y[(size_t)(first + r) * D + h * S + c] = w->o[r * Sp + c] * inv[r];
  }
}

/*
 * y = softmax(q·kᵀ·scale + causal mask)·v per (sequence, head); lse = each query's log-sum-exp
 * of its scaled scores. scale is 1/√S.
 */
void scalar_attention_forward(const float *qkv, float *y, float *lse, int B, int T, int H, int S,
                              float scale) {
#pragma omp parallel
  {
    struct scratch w = scratch_alloc(round16(T), round16(S));
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
      const int b = bh / H, h = bh % H;
      forward_head(qkv + (size_t)b * T * 3 * H * S, T, H, S, h, scale, &w,
                   y + (size_t)b * T * H * S, lse + (size_t)bh * T);
    }
    scratch_free(w);
  }
}

/*
 * One query tile of the backward: P recomputed from the scores and lse, dS = P ∘ (dy·vᵀ − δ) with
 * δ = rowsum(dy ∘ y); dq = dS·k·scale written to dq (rows stride W), dS ᵀ·q·scale and Pᵀ·dy added
 * to the head's dk and dv.
 */
static void backward_tile(const float *seq, const float *y, const float *dy, const float *lse,
                          float *dq, int first, int R, int T, int H, int S, int h, float scale,
                          struct scratch *w) {
  const int D = H * S, W = 3 * D, Sp = round16(S), Tp = round16(T), end = round16(first + R);
  gather_rows(seq + (size_t)first * W + h * S, W, R, S, Sp, scale, w->a);
  gather_rows(dy + (size_t)first * D + h * S, D, R, S, Sp, 1.0f, w->g);
  abt_tile(w->a, w->kt, R, Sp, Tp, first, w->p);
  abt_tile(w->g, w->vt, R, Sp, Tp, first, w->ds);
  for (int r = 0; r < R; r++) {
    const int n = first + r + 1;
    const float *yr = y + (size_t)(first + r) * D + h * S, *gr = w->g + (size_t)r * Sp;
    float delta = 0.0f, *p = w->p + (size_t)r * Tp, *ds = w->ds + (size_t)r * Tp;
    for (int c = 0; c < S; c++) delta += gr[c] * yr[c];
    exp_shifted(p, n, end, lse[first + r]);
#pragma omp simd
    for (int j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - delta);
    for (int j = n; j < end; j++) ds[j] = 0.0f;
  }
  ab_tile(w->ds, Tp, w->k, Sp, R, first, w->o);
  for (int r = 0; r < R; r++)
    for (int c = 0; c < S; c++) dq[(size_t)(first + r) * W + c] = w->o[r * Sp + c] * scale;
  atb_tile(w->ds, Tp, w->a, Sp, R, first, w->dk);
  atb_tile(w->p, Tp, w->g, Sp, R, first, w->dv);
}

/*
 * The gradient with respect to qkv, given dy and the forward's y and lse: with P recomputed as
 * exp(q·kᵀ·scale − lse), dP = dy·vᵀ, dS = P ∘ (dP − rowsum(dy ∘ y)), it writes dq = dS·k·scale,
 * dk = dSᵀ·q·scale and dv = Pᵀ·dy into dqkv's three thirds (every element is written).
 */
void scalar_attention_backward(const float *qkv, const float *y, const float *lse, const float *dy,
                               float *dqkv, int B, int T, int H, int S, float scale) {
  const int D = H * S, W = 3 * D, Sp = round16(S), Tp = round16(T);
#pragma omp parallel
  {
    struct scratch w = scratch_alloc(Tp, Sp);
#pragma omp for schedule(dynamic)
    for (int bh = 0; bh < B * H; bh++) {
      const int b = bh / H, h = bh % H;
      const float *seq = qkv + (size_t)b * T * W;
      float *dseq = dqkv + (size_t)b * T * W;
      gather_head(seq + D + h * S, W, T, S, Sp, Tp, w.k, w.kt);
      gather_head(seq + 2 * D + h * S, W, T, S, Sp, Tp, w.v, w.vt);
      memset(w.dk, 0, sizeof(float) * (size_t)T * Sp);
      memset(w.dv, 0, sizeof(float) * (size_t)T * Sp);
      for (int first = 0; first < T; first += QB)
        backward_tile(seq, y + (size_t)b * T * D, dy + (size_t)b * T * D, lse + (size_t)bh * T,
                      dseq + h * S, first, min_int(QB, T - first), T, H, S, h, scale, &w);
      for (int j = 0; j < T; j++)
        for (int c = 0; c < S; c++) {
          dseq[(size_t)j * W + D + h * S + c] = w.dk[(size_t)j * Sp + c];
          dseq[(size_t)j * W + 2 * D + h * S + c] = w.dv[(size_t)j * Sp + c];
        }
    }
    scratch_free(w);
  }
}

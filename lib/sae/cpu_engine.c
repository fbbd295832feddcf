/*
 * The sparse parts of the CPU SAE engine (lib/sae/cpu_engine.ts), which calls OpenBLAS for the
 * dense products between them. Compiled at first use by lib/backend/native.ts.
 *
 * Layout (row-major, float32 unless said): x, xc, dxhat [n][d]; pre [n][width] (a chunk of
 * rows); kept pairs idx (int32) / val / dpre [n][k], pair e = r·k + s; per-feature lists: starts
 * [width + 1] and list [n·k] of pair ids, each feature's pairs in row order; W_enc [d][ld] (its
 * first width columns), W_dec [≥ width][d].
 *
 * Determinism: every loop that OpenMP splits runs over fixed blocks (of rows, features or
 * elements) whose bounds do not depend on the thread count, and every sum has one owner that
 * adds in a fixed order (a block's rows in order, a feature's pairs in row order, block partials
 * in block order). So any thread count gives the same bits.
 */
#include <dlfcn.h>
#include <math.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Features per scheduling unit of the per-feature loops. */
#define FEATURE_BLOCK 16
/* Elements per block of the optimizer's loops (and per partial sum of squares). */
#define ELEMENT_BLOCK 4096
/* The most candidates a row's TopK ranks at once (select_ranked). */
#define CANDIDATES 64

/* Lanes of the dot products: sums run over LANES independent partials (which the compiler keeps
 * in vector registers) added in a fixed order, instead of one serial chain it may not reorder. */
#define LANES 16

/* Rows per block of jsae_gelu's product. */
#define GEMM_ROWS 64

/* cblas_sgemm, and OpenBLAS's thread count (absent from other BLAS libraries). */
typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float *, int, const float *,
                        int, float, float *, int);
static sgemm_t blas_sgemm;
static void (*blas_set_threads)(int);
static int (*blas_get_threads)(void);

/*
 * Finds cblas_sgemm in the BLAS library at path (the one lib/backend/blas.ts opens; held open
 * from here on). Returns 0 when it cannot.
 */
int32_t sae_use_blas(const char *path) {
  void *lib = dlopen(path, RTLD_NOW);
  if (lib == NULL) return 0;
  blas_sgemm = (sgemm_t)dlsym(lib, "cblas_sgemm");
  blas_set_threads = (void (*)(int))dlsym(lib, "openblas_set_num_threads");
  blas_get_threads = (int (*)(void))dlsym(lib, "openblas_get_num_threads");
  return blas_sgemm != NULL;
}

/* OpenMP threads the loops use: per-thread scratch is allocated for this many. */
int32_t sae_max_threads(void) { return omp_get_max_threads(); }

/*
 * Inside the OpenMP loops every thread calls BLAS on its own fixed block, single-threaded
 * (OpenBLAS splits a product differently for other thread counts, which changes its bits); the
 * caller's setting is restored after.
 */
static int blas_solo(void) {
  int threads = blas_get_threads != NULL ? blas_get_threads() : 1;
  if (blas_set_threads != NULL && threads != 1) blas_set_threads(1);
  return threads;
}

static void blas_restore(int threads) {
  if (blas_set_threads != NULL && threads != 1) blas_set_threads(threads);
}

/* One row-major product C = alpha·op(A)·op(B) + beta·C of rows [r0, r0 + rows) of C. */
static void gemm_rows(int32_t trans_a, int32_t trans_b, int32_t r0, int32_t rows, int32_t n,
                      int32_t k, float alpha, const float *a, int32_t lda, const float *b,
                      int32_t ldb, float beta, float *c, int32_t ldc) {
  const float *ar = trans_a ? a + r0 : a + (int64_t)r0 * lda;
  blas_sgemm(101, trans_a ? 112 : 111, trans_b ? 112 : 111, rows, n, k, alpha, ar, lda, b, ldb,
             beta, c + (int64_t)r0 * ldc, ldc);
}

/*
 * C[m × n] = alpha·op(A)·op(B) + beta·C, row-major with cblas_sgemm's arguments, as fixed blocks
 * of block_rows rows of C, one single-threaded BLAS call each: the same bits for any thread count.
 */
void sae_gemm(int32_t trans_a, int32_t trans_b, int32_t m, int32_t n, int32_t k, float alpha,
              const float *a, int32_t lda, const float *b, int32_t ldb, float beta, float *c,
              int32_t ldc, int32_t block_rows) {
  int32_t blocks = (m + block_rows - 1) / block_rows;
  int saved = blas_solo();
#pragma omp parallel for schedule(dynamic, 1)
  for (int32_t g = 0; g < blocks; g++) {
    int32_t rows = (g + 1) * block_rows < m ? block_rows : m - g * block_rows;
    gemm_rows(trans_a, trans_b, g * block_rows, rows, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  blas_restore(saved);
}

/* xc = x − b_dec, the encoder's input (also what W_enc's gradient multiplies). */
void sae_center(const float *x, const float *b_dec, int32_t n, int32_t d, float *xc) {
  for (int64_t r = 0; r < n; r++)
    for (int32_t i = 0; i < d; i++) xc[r * d + i] = x[r * d + i] - b_dec[i];
}

/* LANES floats or int32s: GCC/Clang vector types, so the selection's scans run in vector registers
 * on any target (one AVX-512 register, two AVX2 ones, …). */
typedef float vfloat __attribute__((vector_size(4 * LANES)));
typedef int32_t vint __attribute__((vector_size(4 * LANES)));

static inline vfloat load_lanes(const float *p) {
  vfloat v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* The sum of a vector's lanes, as a tree of halves (short dependency chains, a fixed order). */
static inline float lane_sum(vfloat v) {
  float p[LANES];
  memcpy(p, &v, sizeof p);
  for (int32_t w = LANES / 2; w >= 1; w /= 2)
    for (int32_t q = 0; q < w; q++) p[q] += p[q + w];
  return p[0];
}

/* Σ_i a[i]·b[i] over LANES partial sums (one vector register), then lane_sum. */
static inline float dot(const float *a, const float *b, int32_t n) {
  vfloat acc = {0};
  int32_t i = 0;
  for (; i + LANES <= n; i += LANES) acc += load_lanes(a + i) * load_lanes(b + i);
  float part[LANES];
  memcpy(part, &acc, sizeof part);
  for (int32_t q = 0; i + q < n; q++) part[q] += a[i + q] * b[i + q];
  memcpy(&acc, part, sizeof acc);
  return lane_sum(acc);
}

/* dot(b, a + u·n, n) for u = 0 … 3 at once (b read once, four independent chains). n is a
 * multiple of LANES. */
static inline void dot4(const float *b, const float *a, int32_t n, float *out) {
  vfloat acc[4] = {{0}, {0}, {0}, {0}};
  for (int32_t i = 0; i < n; i += LANES) {
    vfloat x = load_lanes(b + i);
    for (int32_t u = 0; u < 4; u++) acc[u] += x * load_lanes(a + u * n + i);
  }
  for (int32_t u = 0; u < 4; u++) out[u] = lane_sum(acc[u]);
}

static inline float relu_sum(float a, float b) { return a + b > 0.0f ? a + b : 0.0f; }

/* ReLU(p + b) of LANES features at once (a comparison gives all-ones lanes, a mask keeps them). */
static inline vfloat relu_lanes(const float *p, const float *b) {
  vfloat x, y;
  memcpy(&x, p, sizeof x);
  memcpy(&y, b, sizeof y);
  vfloat v = x + y;
  return (vfloat)((vint)v & (v > (vfloat){0}));
}

/* The lanes of a comparison's result (all ones where true) as bits, lane q at bit q. */
static inline uint32_t lane_bits(vint m) {
#if defined(__AVX512F__)
  __m512i x;
  memcpy(&x, &m, sizeof x);
  return _mm512_test_epi32_mask(x, x);
#elif defined(__AVX__)
  __m256 lo, hi;
  memcpy(&lo, &m, sizeof lo);
  memcpy(&hi, (const char *)&m + sizeof lo, sizeof hi);
  return (uint32_t)_mm256_movemask_ps(lo) | (uint32_t)_mm256_movemask_ps(hi) << 8;
#else
  uint32_t bits = 0;
  for (int32_t q = 0; q < LANES; q++) bits |= (uint32_t)(m[q] & 1) << q;
  return bits;
#endif
}

static inline vfloat splat(float t) { return (vfloat){0} + t; }

/* The larger of a and b in each lane (neither is NaN: both are ReLU outputs). */
static inline vfloat max_lanes(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  __m512 x, y;
  memcpy(&x, &a, sizeof x);
  memcpy(&y, &b, sizeof y);
  x = _mm512_max_ps(x, y);
  memcpy(&a, &x, sizeof a);
  return a;
#else
  vint above = b > a;
  return (vfloat)(((vint)b & above) | ((vint)a & ~above));
#endif
}

/*
 * A value the k-th largest of ReLU(p + b) is at least: the k-th largest of the LANES lane maxima
 * (the maxima of features q, q + LANES, q + 2·LANES, …), which are LANES distinct entries of the
 * row. −1 (no bound) when k > LANES or the row is shorter than LANES.
 */
static float select_bound(const float *p, const float *b, int32_t width, int32_t k) {
  if (k > LANES || width < LANES) return -1.0f;
  /* Two running maxima over alternate groups, merged at the end: a maximum waits on the one
   * before it, so a single chain would leave the loop latency-bound. */
  vfloat lane = relu_lanes(p, b), odd = lane;
  int32_t j = LANES;
  for (; j + 2 * LANES <= width; j += 2 * LANES) {
    lane = max_lanes(lane, relu_lanes(p + j, b + j));
    odd = max_lanes(odd, relu_lanes(p + j + LANES, b + j + LANES));
  }
  if (j + LANES <= width) lane = max_lanes(lane, relu_lanes(p + j, b + j));
  lane = max_lanes(lane, odd);
  /* The k-th largest: the lane maximum with fewer than k above it and at least k at or above. */
  float bound = 0.0f;
  for (int32_t q = 0; q < LANES; q++) {
    int32_t greater = __builtin_popcount(lane_bits(lane > splat(lane[q])));
    int32_t notless = __builtin_popcount(lane_bits(lane >= splat(lane[q])));
    if (greater < k && notless >= k) bound = lane[q];
  }
  return bound;
}

/*
 * The fast path of select_row: collects the candidates (values at or above the bound, in feature
 * order; at most CANDIDATES) and keeps those ranked below k, where a candidate's rank counts the
 * larger candidates and the equal ones at lower features — the order TopK keeps them in. Ranks
 * are counted LANES candidates at a time, without branches. Returns 0 (nothing written) when
 * there are more candidates (many ties at the bound).
 */
static int32_t select_ranked(const float *p, const float *b, int32_t width, int32_t k,
                             float bound, int32_t *bi, float *bv) {
  float cv[CANDIDATES + LANES];
  int32_t ci[CANDIDATES], n = 0;
  for (int32_t j0 = 0; j0 < width; j0 += LANES) {
    uint32_t bits = 0;
    if (j0 + LANES <= width) bits = lane_bits(relu_lanes(p + j0, b + j0) >= splat(bound));
    else
      for (int32_t q = 0; j0 + q < width; q++)
        bits |= (uint32_t)(relu_sum(p[j0 + q], b[j0 + q]) >= bound) << q;
    for (; bits != 0; bits &= bits - 1, n++) {
      if (n == CANDIDATES) return 0;
      ci[n] = j0 + __builtin_ctz(bits);
      cv[n] = relu_sum(p[ci[n]], b[ci[n]]);
    }
  }
  /* −1 pads the last group of LANES: never larger than, nor equal to, a ReLU value. */
  for (int32_t q = 0; q < LANES; q++) cv[n + q] = -1.0f;
  int32_t kept = 0;
  for (int32_t c = 0; c < n; c++) {
    int32_t rank = 0;
    for (int32_t g = 0; g < n; g += LANES) {
      vfloat v;
      memcpy(&v, cv + g, sizeof v);
      uint32_t before = c - g >= LANES ? ~0u : c <= g ? 0u : (1u << (c - g)) - 1u;
      rank += __builtin_popcount(lane_bits(v > splat(cv[c])));
      rank += __builtin_popcount(lane_bits(v == splat(cv[c])) & before);
    }
    /* Written every time, kept (the slot advanced) only below rank k: bi, bv have k + 1 slots. */
    bi[kept] = ci[c];
    bv[kept] = cv[c];
    kept += rank < k;
  }
  return 1;
}

/*
 * The general path of select_row: features in order, the best k so far kept sorted (value
 * descending, index ascending); a value enters only if it beats the smallest kept one strictly,
 * so a later equal feature never displaces an earlier one. Then sorted by feature.
 */
static void select_inserting(const float *p, const float *b, int32_t width, int32_t k,
                             int32_t *bi, float *bv) {
  float floor = -1.0f;
  int32_t count = 0;
  for (int32_t j = 0; j < width; j++) {
    float v = relu_sum(p[j], b[j]);
    if (count == k && !(v > floor)) continue;
    int32_t at = count < k ? count++ : k - 1;
    for (; at > 0 && bv[at - 1] < v; at--) {
      bv[at] = bv[at - 1];
      bi[at] = bi[at - 1];
    }
    bv[at] = v;
    bi[at] = j;
    if (count == k) floor = bv[k - 1];
  }
  for (int32_t s = 1; s < k; s++) {
    int32_t j = bi[s], at = s;
    float v = bv[s];
    for (; at > 0 && bi[at - 1] > j; at--) {
      bi[at] = bi[at - 1];
      bv[at] = bv[at - 1];
    }
    bi[at] = j;
    bv[at] = v;
  }
}

/*
 * One row's TopK of ReLU(p + b): the k largest values, ties to the lower feature, into bi / bv
 * (k + 1 slots) in ascending feature order.
 */
static void select_row(const float *p, const float *b, int32_t width, int32_t k, int32_t *bi,
                       float *bv) {
  float bound = select_bound(p, b, width, k);
  if (bound < 0.0f || !select_ranked(p, b, width, k, bound, bi, bv))
    select_inserting(p, b, width, k, bi, bv);
}

/*
 * The encoder and the selection, per fixed block of `chunk` rows: pre = xc·W_enc (BLAS, into the
 * thread's own scratch, sized so it stays in cache), then per row the TopK of ReLU(pre + b_enc)
 * (select_row) as (index, value) pairs in ascending feature order — zero values included when
 * fewer than k are positive. pre holds `slots` scratch blocks of chunk × width.
 */
void sae_encode(const float *xc, int32_t n, int32_t d, const float *w_enc, int32_t ld,
                int32_t width, const float *b_enc, int32_t k, int32_t chunk, int32_t slots,
                float *pre, int32_t *idx, float *val) {
  int32_t blocks = (n + chunk - 1) / chunk;
  int saved = blas_solo();
#pragma omp parallel num_threads(slots)
  {
    float *mine = pre + (int64_t)omp_get_thread_num() * chunk * width;
    int32_t *bi = malloc(sizeof(int32_t) * (k + 1));
    float *bv = malloc(sizeof(float) * (k + 1));
#pragma omp for schedule(dynamic, 1)
    for (int32_t g = 0; g < blocks; g++) {
      int32_t r0 = g * chunk, rows = r0 + chunk < n ? chunk : n - r0;
      blas_sgemm(101, 111, 111, rows, width, d, 1.0f, xc + (int64_t)r0 * d, d, w_enc, ld, 0.0f,
                 mine, width);
      for (int64_t r = 0; r < rows; r++) {
        select_row(mine + r * width, b_enc, width, k, bi, bv);
        memcpy(idx + (r0 + r) * k, bi, sizeof(int32_t) * k);
        memcpy(val + (r0 + r) * k, bv, sizeof(float) * k);
      }
    }
    free(bi);
    free(bv);
  }
  blas_restore(saved);
}

/*
 * Sparse decode fused with the start of the backward pass, per block of rows:
 * x̂ = Σ_s v_s·W_dec[i_s] + b_dec (pairs in ascending feature order), e = x̂ − x,
 * ∂L/∂x̂ = scale·e (scale = 2 / tokens in the step), ∂L/∂pre at each kept pair =
 * ∂L/∂x̂ · W_dec[i_s] when its value is positive, else 0 (ReLU's gradient); per block: Σ e², the
 * count of positive kept values (sums[2b], sums[2b + 1]) and the column sums of ∂L/∂x̂
 * (cols[b][d], for b_dec's gradient).
 */
void sae_decode(const float *x, const float *w_dec, const float *b_dec, const int32_t *idx,
                const float *val, int32_t n, int32_t d, int32_t k, float scale,
                int32_t block_rows, float *dxhat, float *dpre, float *sums, float *cols) {
  int32_t blocks = (n + block_rows - 1) / block_rows;
#pragma omp parallel
  {
    float *e = malloc(sizeof(float) * d);
#pragma omp for schedule(dynamic, 1)
  for (int32_t b = 0; b < blocks; b++) {
    int32_t end = (b + 1) * block_rows < n ? (b + 1) * block_rows : n;
    float *col = cols + (int64_t)b * d;
    float sq = 0.0f, positives = 0.0f;
    memset(col, 0, sizeof(float) * d);
    for (int64_t r = (int64_t)b * block_rows; r < end; r++) {
      float *g = dxhat + r * d;
      const int32_t *ids = idx + r * k;
      const float *vs = val + r * k;
      memset(g, 0, sizeof(float) * d);
      for (int32_t s = 0; s < k; s++) {
        const float *w = w_dec + (int64_t)ids[s] * d;
        float v = vs[s];
        for (int32_t i = 0; i < d; i++) g[i] += v * w[i];
      }
      for (int32_t i = 0; i < d; i++) {
        e[i] = (g[i] + b_dec[i]) - x[r * d + i];
        g[i] = e[i] * scale;
        col[i] += g[i];
      }
      sq += dot(e, e, d);
      for (int32_t s = 0; s < k; s++) {
        float acc = 0.0f;
        if (vs[s] > 0.0f) {
          acc = dot(g, w_dec + (int64_t)ids[s] * d, d);
          positives += 1.0f;
        }
        dpre[r * k + s] = acc;
      }
    }
    sums[2 * b] = sq;
    sums[2 * b + 1] = positives;
  }
    free(e);
  }
}

/* Per-feature lists of the kept pairs (a stable counting sort: each feature's pairs in row order). */
void sae_lists(const int32_t *idx, int32_t pairs, int32_t width, int32_t *starts, int32_t *list) {
  memset(starts, 0, sizeof(int32_t) * (width + 1));
  for (int32_t e = 0; e < pairs; e++) starts[idx[e] + 1]++;
  for (int32_t j = 0; j < width; j++) starts[j + 1] += starts[j];
  int32_t *next = malloc(sizeof(int32_t) * width);
  memcpy(next, starts, sizeof(int32_t) * width);
  for (int32_t e = 0; e < pairs; e++) list[next[idx[e]]++] = e;
  free(next);
}

/*
 * The weight gradients, gathered feature by feature over the lists: for feature j with kept
 * pairs e = (r, s) of value v_e and pre-activation gradient g_e,
 *   ∂W_dec[j] += Σ_e v_e·∂L/∂x̂[r],  ∂W_enc[:, j] += Σ_e g_e·xc[r] (into enc_t[j], transposed),
 *   ∂b_enc[j] += Σ_e g_e.
 * Features below train_from (earlier chunks of a detached Staircase SAE) get their b_enc
 * gradient only.
 */
void sae_feature_grads(const int32_t *starts, const int32_t *list, const float *val,
                       const float *dpre, const float *dxhat, const float *xc, int32_t d,
                       int32_t k, int32_t width, int32_t train_from, float *g_wdec, float *enc_t,
                       float *g_benc) {
  int32_t blocks = (width + FEATURE_BLOCK - 1) / FEATURE_BLOCK;
#pragma omp parallel for schedule(dynamic, 1)
  for (int32_t b = 0; b < blocks; b++) {
    int32_t end = (b + 1) * FEATURE_BLOCK < width ? (b + 1) * FEATURE_BLOCK : width;
    for (int32_t j = b * FEATURE_BLOCK; j < end; j++) {
      float bias = 0.0f;
      float *gd = g_wdec + (int64_t)j * d, *ge = enc_t + (int64_t)j * d;
      for (int32_t p = starts[j]; p < starts[j + 1]; p++) {
        int32_t e = list[p];
        float g = dpre[e];
        bias += g;
        if (j < train_from) continue;
        const float *dx = dxhat + (int64_t)(e / k) * d, *xr = xc + (int64_t)(e / k) * d;
        float v = val[e];
        for (int32_t i = 0; i < d; i++) {
          gd[i] += v * dx[i];
          ge[i] += g * xr[i];
        }
      }
      g_benc[j] += bias;
    }
  }
}

/* ∂W_enc[i][j] += enc_t[j][i] for features j in [from, width) (W_enc's row stride ld). */
void sae_add_transposed(const float *enc_t, int32_t d, int32_t from, int32_t width, int32_t ld,
                        float *g_wenc) {
  for (int64_t i = 0; i < d; i++)
    for (int32_t j = from; j < width; j++) g_wenc[i * ld + j] += enc_t[(int64_t)j * d + i];
}

/*
 * b_dec's gradient, once per step: b_dec is added by the decoder and subtracted before the
 * encoder, so ∂b_dec += Σ_blocks cols[b] − W_enc·∂b_enc (the encoder input's gradient summed
 * over tokens is W_enc times the summed pre-activation gradient, which is ∂b_enc).
 */
void sae_bdec_grad(const float *cols, int32_t blocks, int32_t d, const float *w_enc, int32_t ld,
                   int32_t width, const float *g_benc, float *g_bdec) {
  for (int64_t i = 0; i < d; i++) {
    float decoded = 0.0f;
    for (int64_t b = 0; b < blocks; b++) decoded += cols[b * d + i];
    g_bdec[i] += decoded - dot(w_enc + i * ld, g_benc, width);
  }
}

/* Σ g² over the flat gradients: per-block partial sums (in double), added in block order. */
double sae_sum_squares(const float *g, int64_t length) {
  int64_t blocks = (length + ELEMENT_BLOCK - 1) / ELEMENT_BLOCK;
  double *partial = malloc(sizeof(double) * blocks);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    int64_t end = (b + 1) * ELEMENT_BLOCK < length ? (b + 1) * ELEMENT_BLOCK : length;
    double part[LANES] = {0};
    int64_t i = b * ELEMENT_BLOCK;
    for (; i + LANES <= end; i += LANES)
      for (int32_t q = 0; q < LANES; q++) part[q] += (double)g[i + q] * g[i + q];
    for (int32_t q = 0; i + q < end; q++) part[q] += (double)g[i + q] * g[i + q];
    double s = 0.0;
    for (int32_t q = 0; q < LANES; q++) s += part[q];
    partial[b] = s;
  }
  double total = 0.0;
  for (int64_t b = 0; b < blocks; b++) total += partial[b];
  free(partial);
  return total;
}

/*
 * Clipping and AdamW in one pass, as lib/optim/adamw.ts orders the operations:
 * g ← factor·g; m ← β₁m + (1 − β₁)g; v ← β₂v + (1 − β₂)g²; p ← p·(1 − lr·wd) below decay_end;
 * p ← p − lr·(m/c₁)/(√(v/c₂) + ε). c = [factor, lr, 1 − lr·wd, c₁, c₂, β₁, β₂, 1 − β₁, 1 − β₂, ε].
 */
void sae_adamw(float *p, const float *g, float *m, float *v, int64_t length, int64_t decay_end,
               const float *c) {
  float factor = c[0], lr = c[1], decay = c[2], c1 = c[3], c2 = c[4], beta1 = c[5];
  float beta2 = c[6], rest1 = c[7], rest2 = c[8], eps = c[9];
  int64_t blocks = (length + ELEMENT_BLOCK - 1) / ELEMENT_BLOCK;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; b++) {
    int64_t end = (b + 1) * ELEMENT_BLOCK < length ? (b + 1) * ELEMENT_BLOCK : length;
    for (int64_t i = b * ELEMENT_BLOCK; i < end; i++) {
      float gi = g[i] * factor;
      float m1 = m[i] * beta1 + gi * rest1;
      float v1 = v[i] * beta2 + (gi * gi) * rest2;
      m[i] = m1;
      v[i] = v1;
      float dir = (m1 / c1) / (sqrtf(v1 / c2) + eps);
      float q = i < decay_end ? p[i] * decay : p[i];
      p[i] = q - dir * lr;
    }
  }
}

/*
 * JSAE: GELU′ of the clean MLP pre-activation z = x·W_fc + b_fc, per fixed block of GEMM_ROWS
 * rows (the product in BLAS, then GELU′ while the block is in cache) through gelu_tanh
 * (lib/backend/gelu_tanh.c, compiled ahead of this file with exp_vec.c). g is [n][m].
 */
void jsae_gelu(const float *x, int32_t n, int32_t d, const float *w_fc, const float *b_fc,
               int32_t m, float *g) {
  int32_t blocks = (n + GEMM_ROWS - 1) / GEMM_ROWS;
  int saved = blas_solo();
#pragma omp parallel for schedule(dynamic, 1)
  for (int32_t b = 0; b < blocks; b++) {
    int32_t rows = (b + 1) * GEMM_ROWS < n ? GEMM_ROWS : n - b * GEMM_ROWS;
    gemm_rows(0, 0, b * GEMM_ROWS, rows, m, d, 1.0f, x, d, w_fc, m, 0.0f, g, m);
    for (int32_t r = 0; r < rows; r++) {
      float *gr = g + ((int64_t)b * GEMM_ROWS + r) * m;
#pragma omp simd
      for (int32_t j = 0; j < m; j++) gelu_tanh(gr[j] + b_fc[j], &gr[j]);
    }
  }
  blas_restore(saved);
}

/*
 * JSAE forward, per token t: J[j][i] = Σ_q Bᵀ[K2_tj][q]·(A[K1_ti][q]·g_t[q]); stores
 * dJ = sign(J)·scale (scale = λ/k², the loss's gradient) and per block of rows Σ|J| in sums[b].
 */
void jsae_forward(const int32_t *k1, const int32_t *k2, const float *a, const float *bt,
                  const float *g, int32_t n, int32_t k, int32_t m, float scale,
                  int32_t block_rows, float *dj, float *sums) {
  int32_t blocks = (n + block_rows - 1) / block_rows;
#pragma omp parallel
  {
    float *ag = malloc(sizeof(float) * k * m);
#pragma omp for schedule(dynamic, 1)
    for (int32_t b = 0; b < blocks; b++) {
      int32_t end = (b + 1) * block_rows < n ? (b + 1) * block_rows : n;
      float size = 0.0f;
      for (int64_t t = (int64_t)b * block_rows; t < end; t++) {
        const float *gt = g + t * m;
        for (int32_t i = 0; i < k; i++) {
          const float *ar = a + (int64_t)k1[t * k + i] * m;
          for (int32_t q = 0; q < m; q++) ag[i * m + q] = ar[q] * gt[q];
        }
        for (int32_t j = 0; j < k; j++) {
          const float *br = bt + (int64_t)k2[t * k + j] * m;
          float js[4];
          for (int32_t i = 0; i < k; i++) {
            /* Four entries at a time where the width allows. */
            if (m % LANES == 0 && i % 4 == 0 && i + 4 <= k) dot4(br, ag + i * m, m, js);
            float acc = m % LANES == 0 && i - i % 4 + 4 <= k ? js[i % 4] : dot(br, ag + i * m, m);
            dj[(t * k + j) * k + i] = acc > 0.0f ? scale : acc < 0.0f ? -scale : 0.0f;
            size += fabsf(acc);
          }
        }
      }
      sums[b] = size;
    }
    free(ag);
  }
}

/*
 * One pair's term of the JSAE backward: out[q] += g[q]·Σ_o w_o·factor[other[o]][q], with
 * w_o = dj[o·stride]. Columns go 4·LANES at a time with the sums in registers (each factor row
 * read once per block of columns), then LANES at a time, then one at a time.
 */
static void jsae_pair_grad(const float *dj, int32_t stride, const int32_t *other,
                           const float *factor, const float *g, int32_t k, int32_t m,
                           float *out) {
  int32_t q = 0;
  for (int32_t width = 4; width >= 1; width /= 4)
    for (; q + width * LANES <= m; q += width * LANES) {
      vfloat acc[4] = {{0}, {0}, {0}, {0}};
      for (int32_t o = 0; o < k; o++) {
        float w = dj[o * stride];
        if (w == 0.0f) continue;
        const float *fr = factor + (int64_t)other[o] * m + q;
        for (int32_t u = 0; u < width; u++) acc[u] += w * load_lanes(fr + u * LANES);
      }
      for (int32_t u = 0; u < width; u++) {
        vfloat v = load_lanes(out + q + u * LANES) + acc[u] * load_lanes(g + q + u * LANES);
        memcpy(out + q + u * LANES, &v, sizeof v);
      }
    }
  for (; q < m; q++) {
    float acc = 0.0f;
    for (int32_t o = 0; o < k; o++) acc += dj[o * stride] * factor[(int64_t)other[o] * m + q];
    out[q] += acc * g[q];
  }
}

/*
 * JSAE backward, gathered per feature f over its list of pairs (t, s), into grad[f] (rows of m):
 * input side (f = K1_ts): ∂A[f] += g_t ⊙ Σ_o dJ[t][o][s]·Bᵀ[K2_to];
 * output side (f = K2_ts): ∂Bᵀ[f] += g_t ⊙ Σ_o dJ[t][s][o]·A[K1_to].
 * `other` is the other SAE's index set and `factor` the other factor (Bᵀ or A).
 */
void jsae_backward(const int32_t *starts, const int32_t *list, const float *dj,
                   const int32_t *other, const float *factor, const float *g, int32_t k,
                   int32_t m, int32_t width, int32_t output_side, float *grad) {
  int32_t blocks = (width + FEATURE_BLOCK - 1) / FEATURE_BLOCK;
#pragma omp parallel for schedule(dynamic, 1)
  for (int32_t b = 0; b < blocks; b++) {
    int32_t end = (b + 1) * FEATURE_BLOCK < width ? (b + 1) * FEATURE_BLOCK : width;
    for (int32_t f = b * FEATURE_BLOCK; f < end; f++)
      for (int32_t p = starts[f]; p < starts[f + 1]; p++) {
        int64_t e = list[p], t = e / k, s = e % k;
        const float *w = output_side ? dj + (t * k + s) * k : dj + t * k * k + s;
        jsae_pair_grad(w, output_side ? 1 : k, other + t * k, factor, g + t * m, k, m,
                       grad + (int64_t)f * m);
      }
  }
}

/*
 * The host decode of lib/scalar/ablation.ts's subcircuit passes in tokenwise sharing: each pass
 * row is one token of the clean upstream features z0 with only some of that token's nonzeros
 * kept. Compiled and opened by lib/backend/native.ts; ablation.ts keeps the same loop in
 * TypeScript where this cannot be built, and its tests hold the two to each other.
 *
 * z0 is row-compressed (one row per token): token t's nonzeros are cols/vals[row_ptr[t] …
 * row_ptr[t + 1] − 1], at most 32 of them. dec is the upstream decoder [f_up + 1][d], b_dec last.
 */
#include <stddef.h>
#include <stdint.h>

/* out[r] = b_dec + Σ vals[q]·dec[cols[q]] over token tok[r]'s nonzeros q whose bit
 * (q − row_ptr[tok[r]]) is set in bits[r], added in the CSR order. */
void sc_decode_rows(const float *dec, int f_up, int d, const int *row_ptr, const int *cols,
                    const float *vals, const int *tok, const uint32_t *bits, int rows,
                    float *out) {
  const float *b_dec = dec + (size_t)f_up * d;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    float *o = out + (size_t)r * d;
    for (int i = 0; i < d; i++) o[i] = b_dec[i];
    const int q0 = row_ptr[tok[r]], q1 = row_ptr[tok[r] + 1];
    for (int q = q0; q < q1; q++) {
      if (!((bits[r] >> (q - q0)) & 1u)) continue;
      const float v = vals[q], *w = dec + (size_t)cols[q] * d;
#pragma omp simd
      for (int i = 0; i < d; i++) o[i] += v * w[i];
    }
  }
}

/*
 * The host decode of lib/scalar/ablation.ts's subcircuit passes: each pass row is one token of the
 * clean upstream features z0 with only some of that token's nonzeros kept. Compiled and opened by
 * lib/backend/native.ts; ablation.ts keeps the same loop in TypeScript where this cannot be built,
 * and its tests hold the two to each other.
 *
 * z0's nonzeros are cols/vals (row-compressed by token in ablation.ts); row r keeps the nonzeros
 * q = kept[row_start[r]] … kept[row_start[r + 1] − 1]. dec is the upstream decoder [f_up + 1][d],
 * b_dec last.
 */
#include <stddef.h>
#include <stdint.h>

/* out[r] = b_dec + Σ vals[q]·dec[cols[q]] over row r's kept nonzeros q, added in their order. */
void sc_decode_rows(const float *dec, int f_up, int d, const int *cols, const float *vals,
                    const int *row_start, const int *kept, int rows, float *out) {
  const float *b_dec = dec + (size_t)f_up * d;
#pragma omp parallel for schedule(static)
  for (int r = 0; r < rows; r++) {
    float *o = out + (size_t)r * d;
    for (int i = 0; i < d; i++) o[i] = b_dec[i];
    for (int e = row_start[r]; e < row_start[r + 1]; e++) {
      const int q = kept[e];
      const float v = vals[q], *w = dec + (size_t)cols[q] * d;
#pragma omp simd
      for (int i = 0; i < d; i++) o[i] += v * w[i];
    }
  }
}

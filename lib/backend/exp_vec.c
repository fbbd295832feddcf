/*
 * e^x in operations that vectorise, for the native kernels' GELUs and softmax: libm's expf is a
 * call per value, ~15× slower on this machine inside a loop that GCC vectorises, and GELU runs on
 * every MLP activation of SCALAR's passes and of the JSAE's Jacobian. A prelude (lib/backend/native.ts):
 * compiled ahead of the kernels that call it, in the same unit.
 */
#include <stdint.h>
#include <string.h>

/*
 * e^x for x in [−87, 88], within 1.5 ulp (lib/backend/exp_vec_test.ts). Round x·log₂e to n with
 * the 1.5·2²³ trick, reduce r = x − n·ln 2 in two parts (Cody–Waite), Cephes' degree-6 polynomial
 * for e^r, times 2^n built in the exponent bits. Callers clamp x: outside [−87, 88] the result is
 * meaningless (never undefined).
 */
static inline float exp_vec(float x) {
  const float t = x * 1.44269504088896341f + 12582912.0f, n = t - 12582912.0f;
  uint32_t bits;
  memcpy(&bits, &t, sizeof bits);
  const uint32_t e = (bits - 0x4B400000u + 127u) << 23;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale;
  memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

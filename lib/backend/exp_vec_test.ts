import { ok } from "node:assert/strict";
import { EXP_VEC_SOURCE, loadNative } from "./native.ts";

Deno.test("exp_vec is e^x within 1.5 float32 ulp over [−87, 88] (exp_vec.c)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A wrapper that applies the prelude's inline function to an array.
    const source = `${dir}/exp_vec_probe.c`;
    await Deno.writeTextFile(
      source,
      "void probe(const float *x, int n, float *y) { for (int i = 0; i < n; i++) y[i] = exp_vec(x[i]); }\n",
    );
    const lib = await loadNative(
      source,
      { probe: { parameters: ["buffer", "i32", "buffer"], result: "void" } },
      { prelude: [EXP_VEC_SOURCE], cacheDir: dir },
    );
    const n = 1_000_001, x = new Float32Array(n), y = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = -87 + (175 * i) / (n - 1);
    lib.symbols.probe(x, n, y);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const want = Math.exp(x[i]!);
      worst = Math.max(worst, Math.abs(y[i]! - want) / want);
    }
    // One ulp of float32 is 2^-24 relative at most (2^-23 at a power of two's bottom).
    ok(worst < 1.5 * 2 ** -23, `worst relative error ${worst}`);
    ok(worst > 0, "the probe ran");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

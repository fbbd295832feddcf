import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
// Registers the "wasm" backend next to "cpu"; one test runs the loss there.
import "@tensorflow/tfjs-backend-wasm";
import { registerScatterKernels } from "../backend/scatter_kernels.ts";
import { useStockBackend } from "../backend/select.ts";
import { geluTanh } from "../model/gpt.ts";
import { createRng, type Rng } from "../util/rng.ts";
import {
  activeFeatures,
  geluTanhDerivative,
  jacobianLoss,
  jacobians,
  type MlpWeights,
} from "./jacobian.ts";
import { preActivations, type SaeWeights } from "./sae.ts";
import { topkRelu } from "./topk_relu.ts";

// Importing the wasm package makes it the default backend, which needs an asynchronous start:
// these tests run on cpu unless they switch.
await useStockBackend("cpu");

// A tiny layer: d_model 3, d_mlp 5, 4 features per SAE, k 2.
const D = 3, M = 5, F = 4, K = 2;

const normal = (rng: Rng, shape: number[], std = 1) =>
  tf.tensor(
    Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => std * rng.normal()),
    shape,
  );

/** Random SAE pair, MLP and clean activations; fIn/fOut are the SAEs' pre-activations. */
interface Layer {
  wIn: SaeWeights;
  wOut: SaeWeights;
  mlp: MlpWeights & { bProj: tf.Tensor1D };
  mlpIn: tf.Tensor2D;
  fIn: tf.Tensor2D;
  fOut: tf.Tensor2D;
}

function sae(rng: Rng, d: number, f: number): SaeWeights {
  return {
    wEnc: normal(rng, [d, f]) as tf.Tensor2D,
    bEnc: normal(rng, [f], 0.5) as tf.Tensor1D,
    wDec: normal(rng, [f, d]) as tf.Tensor2D,
    bDec: normal(rng, [d], 0.5) as tf.Tensor1D,
  };
}

// Makes everything with tensors on the current backend.
function layer(seed: number, n: number, d = D, m = M, f = F): Layer {
  const rng = createRng(seed);
  const wIn = sae(rng, d, f), wOut = sae(rng, d, f);
  const mlp = {
    wFc: normal(rng, [d, m]) as tf.Tensor2D,
    bFc: normal(rng, [m], 0.5) as tf.Tensor1D,
    wProj: normal(rng, [m, d]) as tf.Tensor2D,
    bProj: normal(rng, [d], 0.5) as tf.Tensor1D,
  };
  const mlpIn = normal(rng, [n, d]) as tf.Tensor2D;
  const mlpOut = tf.matMul(geluTanh(tf.matMul(mlpIn, mlp.wFc).add(mlp.bFc)), mlp.wProj)
    .add(mlp.bProj) as tf.Tensor2D;
  return {
    wIn,
    wOut,
    mlp,
    mlpIn,
    fIn: preActivations(wIn, mlpIn),
    fOut: preActivations(wOut, mlpOut),
  };
}

const args = (l: Layer, k = K) => [l.wIn, l.wOut, l.mlp, l.mlpIn, l.fIn, l.fOut, k] as const;

// Brute force: per token, the Jacobian by autodiff of the map decode_in → linearised MLP →
// encode_out pre-activation, biases included (they must drop out), GELU′ frozen at the clean
// pre-activation; then the K2 × K1 block. Returns [N][j][i].
function bruteForce(l: Layer, k = K): number[][][] {
  return tf.tidy(() => {
    const { wIn, wOut, mlp } = l;
    const g = tf.grad((z: tf.Tensor) => geluTanh(z).sum())(
      tf.matMul(l.mlpIn, mlp.wFc).add(mlp.bFc),
    );
    const k1 = activeFeatures(l.fIn, k).arraySync() as number[][];
    const k2 = activeFeatures(l.fOut, k).arraySync() as number[][];
    const n = l.mlpIn.shape[0];
    return Array.from({ length: n }, (_, t) => {
      const gt = g.slice([t, 0], [1, -1]);
      const map = (f: tf.Tensor) => {
        const x = tf.matMul(f, wIn.wDec).add(wIn.bDec);
        const y = tf.matMul(tf.matMul(x, mlp.wFc).add(mlp.bFc).mul(gt), mlp.wProj).add(mlp.bProj);
        return preActivations(wOut, y as tf.Tensor2D);
      };
      const f0 = l.fIn.slice([t, 0], [1, -1]);
      return k2[t]!.map((j) => {
        const row = tf.grad((f: tf.Tensor) => map(f).slice([0, j], [1, 1]).sum())(f0);
        const values = row.dataSync();
        return k1[t]!.map((i) => values[i]!);
      });
    });
  });
}

function assertClose(actual: number, expected: number, tol: number, label: string): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${label}: ${actual} vs ${expected} (±${tol})`);
}

Deno.test("geluTanhDerivative equals autodiff of GPT-2's tanh GELU", () => {
  tf.tidy(() => {
    const z = tf.linspace(-8, 8, 1601);
    const want = tf.grad((x: tf.Tensor) => geluTanh(x).sum())(z).dataSync();
    const got = geluTanhDerivative(z).dataSync();
    want.forEach((w, i) => assertClose(got[i]!, w, 2e-6, `z = ${z.dataSync()[i]}`));
    // ½ at 0; negative below 0 with its minimum ≈ −0.13 near z ≈ −1.4 (as the exact GELU's).
    assertClose(geluTanhDerivative(tf.scalar(0)).dataSync()[0]!, 0.5, 1e-7, "GELU′(0)");
    const least = Math.min(...got);
    assert.ok(least > -0.14 && least < -0.12, `minimum ${least}`);
  });
});

Deno.test("activeFeatures: exactly k per token, zero-valued features included, lower index first", () => {
  tf.tidy(() => {
    // Row 0: one positive, then ties at 0 (negatives ReLU to 0); row 1: all positive.
    const pre = tf.tensor2d([[-1, 0.5, -2, -3], [1, 4, 3, 2]]);
    assert.deepEqual(activeFeatures(pre, 3).arraySync(), [[1, 0, 2], [1, 2, 3]]);
    // The same features the SAE's TopK keeps (where it keeps a zero, by the same tie rule).
    const kept = topkRelu(tf.tensor2d([[-1, 0.5, -2, -3]]), 1).arraySync()[0]!;
    assert.deepEqual(kept.map((v, i) => (v > 0 ? i : -1)).filter((i) => i >= 0), [1]);
    // Activations give the same indices as pre-activations.
    assert.deepEqual(activeFeatures(tf.relu(pre) as tf.Tensor2D, 3).arraySync(), [[1, 0, 2], [
      1,
      2,
      3,
    ]]);
  });
});

Deno.test("jacobians equal a per-token autodiff Jacobian of the linearised map", () => {
  tf.tidy(() => {
    const l = layer(1, 6);
    const want = bruteForce(l);
    const got = jacobians(...args(l)).arraySync();
    assert.deepEqual([got.length, got[0]!.length, got[0]![0]!.length], [6, K, K]);
    want.forEach((jt, t) =>
      jt.forEach((row, j) =>
        row.forEach((w, i) =>
          assertClose(got[t]![j]![i]!, w, 1e-5 * Math.max(1, Math.abs(w)), `J[${t}][${j},${i}]`)
        )
      )
    );
    const sum = want.flat(2).reduce((a, v) => a + Math.abs(v), 0);
    const loss = jacobianLoss(...args(l)).dataSync()[0]!;
    assertClose(loss, sum / (K * K), 1e-5 * Math.max(1, sum), "loss = Σ|J| / k²");
  });
});

Deno.test("jacobianLoss is a sum over tokens, not a mean", () => {
  tf.tidy(() => {
    const l = layer(2, 4);
    const once = jacobianLoss(...args(l)).dataSync()[0]!;
    const twice = {
      ...l,
      mlpIn: tf.concat([l.mlpIn, l.mlpIn]) as tf.Tensor2D,
      fIn: tf.concat([l.fIn, l.fIn]) as tf.Tensor2D,
      fOut: tf.concat([l.fOut, l.fOut]) as tf.Tensor2D,
    };
    assertClose(jacobianLoss(...args(twice)).dataSync()[0]!, 2 * once, 1e-5 * once, "doubled");
  });
});

Deno.test("jacobianLoss gradients match central finite differences", () => {
  tf.tidy(() => {
    const l = layer(3, 5);
    const lossAt = (wDec: tf.Tensor, wEnc: tf.Tensor) =>
      jacobianLoss(
        { ...l.wIn, wDec: wDec as tf.Tensor2D },
        { ...l.wOut, wEnc: wEnc as tf.Tensor2D },
        l.mlp,
        l.mlpIn,
        l.fIn,
        l.fOut,
        K,
      );
    const [gDec, gEnc] = tf.grads(lossAt)([l.wIn.wDec, l.wOut.wEnc]);
    const signs = (wDec: tf.Tensor, wEnc: tf.Tensor) =>
      tf.sign(
        jacobians(
          { ...l.wIn, wDec: wDec as tf.Tensor2D },
          { ...l.wOut, wEnc: wEnc as tf.Tensor2D },
          l.mlp,
          l.mlpIn,
          l.fIn,
          l.fOut,
          K,
        ),
      ).dataSync().join();
    const base = signs(l.wIn.wDec, l.wOut.wEnc);
    // J is linear in each weight, so |J| summed is piecewise linear: a central difference is exact
    // (up to float32 rounding) as long as no entry of J changes sign within ±eps, checked below.
    const eps = 1e-3;
    const check = (which: 0 | 1, w: tf.Tensor, grad: tf.Tensor) => {
      const values = w.dataSync() as Float32Array;
      const g = grad.dataSync();
      for (let e = 0; e < values.length; e++) {
        const shifted = (delta: number) => {
          const v = values.slice();
          v[e]! += delta;
          return tf.tensor(v, w.shape);
        };
        const [plus, minus] = [shifted(eps), shifted(-eps)];
        const at = (x: tf.Tensor): [tf.Tensor, tf.Tensor] =>
          which === 0 ? [x, l.wOut.wEnc] : [l.wIn.wDec, x];
        assert.equal(signs(...at(plus)), base, "a sign of J flipped: pick a smaller eps");
        assert.equal(signs(...at(minus)), base, "a sign of J flipped: pick a smaller eps");
        const fd = (lossAt(...at(plus)).dataSync()[0]! - lossAt(...at(minus)).dataSync()[0]!) /
          (2 * eps);
        assertClose(
          g[e]!,
          fd,
          2e-3 * Math.max(1, Math.abs(fd)),
          `${which ? "W_enc_out" : "W_dec_in"}[${e}]`,
        );
      }
    };
    check(0, l.wIn.wDec, gDec!);
    check(1, l.wOut.wEnc, gEnc!);
  });
});

Deno.test("jacobianLoss trains only W_dec of the input SAE and W_enc of the output SAE", () => {
  const l = layer(4, 5);
  // Every tensor that feeds the loss is a variable, and the index sets come from the SAEs'
  // encoders, so any leak of gradient into a constant would show up as a gradient.
  const vars = new Map<string, tf.Variable>();
  const v = (name: string, t: tf.Tensor) => {
    const x = tf.variable(t, true, `jsae_${name}`);
    vars.set(x.name, x);
    return x;
  };
  const wIn = Object.fromEntries(
    Object.entries(l.wIn).map(([k, t]) => [k, v(`in_${k}`, t)]),
  ) as unknown as SaeWeights;
  const wOut = Object.fromEntries(
    Object.entries(l.wOut).map(([k, t]) => [k, v(`out_${k}`, t)]),
  ) as unknown as SaeWeights;
  const mlp = Object.fromEntries(
    Object.entries(l.mlp).map(([k, t]) => [k, v(`mlp_${k}`, t)]),
  ) as unknown as Layer["mlp"];
  const mlpIn = v("mlpIn", l.mlpIn) as tf.Tensor2D;
  const { value, grads } = tf.variableGrads(() => {
    const mlpOut = tf.matMul(geluTanh(tf.matMul(mlpIn, mlp.wFc).add(mlp.bFc)), mlp.wProj)
      .add(mlp.bProj) as tf.Tensor2D;
    const fIn = preActivations(wIn, mlpIn), fOut = preActivations(wOut, mlpOut);
    return jacobianLoss(wIn, wOut, mlp, mlpIn, fIn, fOut, K);
  }, [...vars.values()]);
  assert.deepEqual(Object.keys(grads).sort(), ["jsae_in_wDec", "jsae_out_wEnc"]);
  for (const g of Object.values(grads)) assert.ok(g.abs().sum().dataSync()[0]! > 0);
  tf.dispose([value, ...Object.values(grads), ...vars.values()]);
});

// The reference formula in float64 from plain arrays, for larger N than autodiff per token.
function direct(l: Layer, k: number): Float64Array {
  const a = tf.matMul(l.wIn.wDec, l.mlp.wFc).arraySync() as number[][];
  const bt = tf.matMul(l.wOut.wEnc, l.mlp.wProj, true, true).arraySync() as number[][];
  const g = geluTanhDerivative(tf.matMul(l.mlpIn, l.mlp.wFc).add(l.mlp.bFc))
    .arraySync() as number[][];
  const k1 = activeFeatures(l.fIn, k).arraySync() as number[][];
  const k2 = activeFeatures(l.fOut, k).arraySync() as number[][];
  const out = new Float64Array(g.length * k * k);
  g.forEach((gt, t) => {
    for (let j = 0; j < k; j++) {
      for (let i = 0; i < k; i++) {
        let s = 0;
        for (let m = 0; m < gt.length; m++) s += bt[k2[t]![j]!]![m]! * gt[m]! * a[k1[t]![i]!]![m]!;
        out[(t * k + j) * k + i] = s;
      }
    }
  });
  return out;
}

Deno.test("jacobians over several chunks of tokens equal the formula; gradients equal autodiff", () => {
  tf.tidy(() => {
    // More tokens than one chunk (2,048), and a partial last chunk.
    const n = 2 * 2048 + 37, k = 3;
    const l = layer(5, n, 4, 6, 7);
    const want = direct(l, k);
    const got = jacobians(...args(l, k)).dataSync();
    want.forEach((w, e) =>
      assertClose(got[e]!, w, 1e-5 * Math.max(1, Math.abs(w)), `J entry ${e}`)
    );
    // Autodiff of the same loss written plainly (whole-batch gather, no custom gradient).
    const k1 = activeFeatures(l.fIn, k).reshape([-1]);
    const k2 = activeFeatures(l.fOut, k).reshape([-1]);
    const g = geluTanhDerivative(tf.matMul(l.mlpIn, l.mlp.wFc).add(l.mlp.bFc)).expandDims(1);
    const plain = (wDec: tf.Tensor, wEnc: tf.Tensor) => {
      const ag = tf.gather(tf.matMul(wDec, l.mlp.wFc), k1).reshape([n, k, -1]).mul(g);
      const bg = tf.gather(tf.matMul(wEnc, l.mlp.wProj, true, true), k2).reshape([n, k, -1]);
      return tf.abs(tf.matMul(bg, ag, false, true)).sum().div(k * k) as tf.Scalar;
    };
    const ours = (wDec: tf.Tensor, wEnc: tf.Tensor) =>
      jacobianLoss(
        { ...l.wIn, wDec: wDec as tf.Tensor2D },
        { ...l.wOut, wEnc: wEnc as tf.Tensor2D },
        l.mlp,
        l.mlpIn,
        l.fIn,
        l.fOut,
        k,
      );
    const w = [l.wIn.wDec, l.wOut.wEnc];
    const expected = tf.grads(plain)(w), actual = tf.grads(ours)(w);
    expected.forEach((e, i) => {
      const ev = e.dataSync(), av = actual[i]!.dataSync();
      const scale = Math.max(...Array.from(ev, Math.abs));
      ev.forEach((x, j) => assertClose(av[j]!, x, 1e-5 * scale, `gradient ${i}[${j}]`));
    });
  });
});

Deno.test("jacobianLoss takes index sets directly and rejects mismatched shapes", () => {
  tf.tidy(() => {
    const l = layer(6, 4);
    const ids = { fIn: activeFeatures(l.fIn, K), fOut: activeFeatures(l.fOut, K) };
    const fromIds = jacobianLoss(l.wIn, l.wOut, l.mlp, l.mlpIn, ids.fIn, ids.fOut, K);
    assertClose(fromIds.dataSync()[0]!, jacobianLoss(...args(l)).dataSync()[0]!, 1e-7, "indices");
    assert.throws(
      () => jacobianLoss(l.wIn, l.wOut, l.mlp, l.mlpIn, ids.fIn, ids.fOut, 3),
      RangeError,
    );
    assert.throws(() => jacobianLoss(...args(l, F + 1)), RangeError);
    assert.throws(
      () => jacobianLoss(l.wIn, l.wOut, l.mlp, l.mlpIn, l.fIn.slice(0, 3), l.fOut, K),
      RangeError,
    );
  });
});

Deno.test("jacobianLoss leaves no tensors behind, with or without gradients", () => {
  const l = layer(7, 5);
  const before = tf.memory().numTensors;
  tf.dispose(jacobianLoss(...args(l)));
  tf.dispose(jacobians(...args(l)));
  assert.equal(tf.memory().numTensors, before);
  const wDec = tf.variable(l.wIn.wDec), wEnc = tf.variable(l.wOut.wEnc);
  const before2 = tf.memory().numTensors;
  const out = tf.variableGrads(
    () => jacobianLoss({ ...l.wIn, wDec }, { ...l.wOut, wEnc }, l.mlp, l.mlpIn, l.fIn, l.fOut, K),
    [wDec, wEnc],
  );
  tf.dispose([out.value, ...Object.values(out.grads)]);
  assert.equal(tf.memory().numTensors, before2);
  tf.dispose([wDec, wEnc]);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("jacobianLoss on wasm (with the scatter kernels) equals cpu", async () => {
  const run = () =>
    tf.tidy(() => {
      const l = layer(8, 300, 8, 16, 12);
      const f = (wDec: tf.Tensor, wEnc: tf.Tensor) =>
        jacobianLoss(
          { ...l.wIn, wDec: wDec as tf.Tensor2D },
          { ...l.wOut, wEnc: wEnc as tf.Tensor2D },
          l.mlp,
          l.mlpIn,
          l.fIn,
          l.fOut,
          4,
        );
      const { value, grads } = tf.valueAndGrads(f)([l.wIn.wDec, l.wOut.wEnc]);
      return [value.dataSync()[0]!, ...grads.map((g) => Array.from(g.dataSync()))] as const;
    });
  const cpu = run();
  assert.ok(await tf.setBackend("wasm"));
  const restore = registerScatterKernels("wasm");
  try {
    const wasm = run();
    assertClose(wasm[0], cpu[0], 1e-5 * cpu[0], "loss");
    for (const i of [1, 2] as const) {
      const scale = Math.max(...cpu[i].map(Math.abs));
      cpu[i].forEach((x, j) => assertClose(wasm[i][j]!, x, 1e-5 * scale, `gradient ${i}[${j}]`));
    }
  } finally {
    restore();
    await tf.setBackend("cpu");
  }
});

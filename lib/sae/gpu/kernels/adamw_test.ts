import * as tf from "@tensorflow/tfjs";
import { AdamW, clipGlobalNorm } from "../../../optim/adamw.ts";
import { createRng, normalArray } from "../../../util/rng.ts";
import { storageBuffer, uniformBuffer } from "../device.ts";
import { assertClose, gpuTest, readF32, runKernel, upload } from "../testdata/harness.ts";
import { adamKernels, adamUniform } from "./adamw.ts";

// Two parameters, the decaying one first, each padded to 64 floats as `lib/sae/param_layout.ts` places them.
const shapes = { w: [40, 70], b: [70] } as const;
const [W_AT, B_AT, LENGTH] = [0, 2816, 2816 + 128];
const settings = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

for (const maxNorm of [1e3, 0.5]) {
  gpuTest(
    `adam kernels equal AdamW with clipGlobalNorm (max norm ${maxNorm}, resumed at step 3)`,
    async (g) => {
      const rng = createRng(11);
      const init = { w: normalArray(rng, 2800, 1), b: normalArray(rng, 70, 1) };
      const grads = { w: normalArray(rng, 2800, 0.1), b: normalArray(rng, 70, 0.1) };
      const moments = [0, 1, 2, 3].map(() => normalArray(rng, 2870, 0.01));
      const [m, v] = [moments[0]!, moments[1]!.map((x) => x * x)];
      const params = new Map([
        ["w", tf.variable(tf.tensor(init.w, [...shapes.w]))],
        ["b", tf.variable(tf.tensor(init.b, [...shapes.b]))],
      ]);
      const optimizer = new AdamW(params, { ...settings, decays: (_, s) => s.length === 2 });
      optimizer.load({
        step: 3,
        tensors: new Map([
          ["m.w", { shape: [...shapes.w], data: m.slice(0, 2800) }],
          ["m.b", { shape: [...shapes.b], data: m.slice(2800) }],
          ["v.w", { shape: [...shapes.w], data: v.slice(0, 2800) }],
          ["v.b", { shape: [...shapes.b], data: v.slice(2800) }],
        ]),
      });
      const named = new Map([["w", tf.tensor(grads.w, [...shapes.w])], ["b", tf.tensor(grads.b)]]);
      const lr = 3e-3;
      const { grads: clipped, norm } = clipGlobalNorm(named, maxNorm);
      optimizer.update(clipped, lr);

      const flat = (w: Float32Array, b: Float32Array) => {
        const out = new Float32Array(LENGTH);
        out.set(w, W_AT);
        out.set(b, B_AT);
        return out;
      };
      // Figures: the sum of partials 0, 2, 4 halved, and partials 1..3.
      const figurePartials = Float32Array.of(1, 2, 3, 4, 5, 6);
      const kernels = await adamKernels(g.device, {
        length: LENGTH,
        decayEnd: B_AT,
        maxNorm,
        figures: [
          { offset: 0, count: 3, stride: 2, scale: 0.5 },
          { offset: 1, count: 3, stride: 1, scale: 1 },
        ],
      });
      const gradBuf = upload(g, flat(grads.w, grads.b));
      const partials = storageBuffer(g.device, "norm partials", 2 * 4);
      const figures = storageBuffer(g.device, "figures", 4 * 4);
      const paramBuf = upload(g, flat(init.w, init.b));
      const mBuf = upload(g, flat(m.subarray(0, 2800), m.subarray(2800)));
      const vBuf = upload(g, flat(v.subarray(0, 2800), v.subarray(2800)));
      await runKernel(g, kernels.sumSquares, [gradBuf, partials], LENGTH);
      await runKernel(g, kernels.figures, [partials, upload(g, figurePartials), figures], 1);
      const step = uniformBuffer(g.device, "step", adamUniform(settings, 4, lr));
      await runKernel(g, kernels.update, [paramBuf, gradBuf, mBuf, vBuf, figures, step], LENGTH);

      const factor = Math.min(1, maxNorm / ((await norm.data())[0]! + 1e-6));
      const got = await readF32(g, figures, 4);
      assertClose(got, [factor, (await norm.data())[0]!, 4.5, 9], "clip factor, norm, figures");
      const state = await optimizer.state();
      const ref = (name: string) => state.tensors.get(name)!.data;
      const want = async (name: string) => (await params.get(name)!.data()) as Float32Array;
      for (const [buffer, prefix] of [[mBuf, "m."], [vBuf, "v."]] as const) {
        const values = await readF32(g, buffer, LENGTH);
        assertClose(values.subarray(W_AT, W_AT + 2800), ref(`${prefix}w`), `${prefix}w`);
        assertClose(values.subarray(B_AT, B_AT + 70), ref(`${prefix}b`), `${prefix}b`);
      }
      const values = await readF32(g, paramBuf, LENGTH);
      assertClose(values.subarray(W_AT, W_AT + 2800), await want("w"), "w (decays)");
      assertClose(values.subarray(B_AT, B_AT + 70), await want("b"), "b (does not decay)");
      optimizer.dispose();
      tf.dispose([...params.values(), ...named.values(), ...clipped.values(), norm]);
    },
  );
}

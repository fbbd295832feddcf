import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { loadCheckpoint } from "../../model/checkpoint.ts";
import { buildSaes, type SaeConfig } from "../architectures.ts";
import { jacobianLoss } from "../jacobian.ts";
import { layoutPosition } from "../positions.ts";
import { sparseSource } from "../testdata/sparse_source.ts";
import { SAE_TRAIN_DEFAULTS, trainSaes, type TrainSaesOptions } from "../train.ts";
import { createRng, normalArray } from "../../util/rng.ts";
import { assertClose, gpuTest } from "./testdata/harness.ts";

const D = 8, SEQ = 4;
const layout = layoutPosition("mlp-block", 1);
const sae: SaeConfig = { arch: "staircase", features: 16, k: 3, jsaeLambda: 0 };

function options(outDir: string, extra: Partial<TrainSaesOptions> = {}): TrainSaesOptions {
  return {
    saes: buildSaes(sae, layout, D, 0),
    sae,
    train: { ...SAE_TRAIN_DEFAULTS, steps: 12, batch: 16, warmup: 3, lr: 1e-2, logEvery: 1 },
    seqLen: SEQ,
    d: D,
    data: sparseSource(400, layout.hooks, D),
    outDir,
    provenance: {},
    log: () => {},
    ...extra,
  };
}

gpuTest(
  "trainSaes() on the webgpu backend trains through the engine: same run as on cpu, and resumes bit-exactly",
  async () => {
    const dir = await Deno.makeTempDir();
    const run = async (name: string, extra: Partial<TrainSaesOptions> = {}) => {
      const lines: string[] = [];
      const o = options(`${dir}/${name}`, { log: (l) => lines.push(l), ...extra });
      const result = await trainSaes(o);
      o.saes.dispose();
      return { result, lines };
    };
    const reference = await run("cpu");
    await import("@tensorflow/tfjs-backend-webgpu");
    assert.ok(await tf.setBackend("webgpu"), "tfjs webgpu starts");
    try {
      const gpu = await run("gpu");
      assert.ok(gpu.lines.some((l) => l.startsWith("SAE steps: WebGPU engine on ")), gpu.lines[0]);
      const abort = new AbortController();
      const first = await run("resumed", {
        signal: abort.signal,
        onReport: (step) => step === 5 && abort.abort(),
      });
      assert.equal(first.result.step, 6);
      assert.equal((await run("resumed")).result.step, 12);
      const [cpu, straight, resumed] = await Promise.all(
        ["cpu", "gpu", "resumed"].map((n) => loadCheckpoint(`${dir}/${n}`)),
      );
      for (const [name, p] of Object.entries(cpu!.params)) {
        assertClose(straight!.params[name]!.data, p.data, `${name} after 12 steps`);
        assert.deepEqual(
          resumed!.params[name]!.data,
          straight!.params[name]!.data,
          `${name} resumed`,
        );
      }
      assertClose(
        Object.values(gpu.result.losses),
        Object.values(reference.result.losses),
        "final losses",
      );
    } finally {
      await tf.setBackend("cpu");
      await Deno.remove(dir, { recursive: true });
    }
  },
);

gpuTest(
  "trainSaes() trains JSAEs through the engine when given the MLPs: same run as on cpu",
  async () => {
    const layout = layoutPosition("mlp", 1);
    const config: SaeConfig = { arch: "jsae", features: 16, k: 3, jsaeLambda: 0.02 };
    const rng = createRng(9);
    const mlp = {
      wFc: tf.tensor2d(normalArray(rng, D * 32, 0.3), [D, 32]),
      bFc: tf.tensor1d(normalArray(rng, 32, 0.3)),
      wProj: tf.tensor2d(normalArray(rng, 32 * D, 0.3), [32, D]),
    };
    const dir = await Deno.makeTempDir();
    const run = async (name: string) => {
      const lines: string[] = [];
      const saes = buildSaes(config, layout, D, 0);
      const result = await trainSaes({
        ...options(`${dir}/${name}`, {
          log: (l) => lines.push(l),
          data: sparseSource(400, layout.hooks, D),
        }),
        saes,
        sae: config,
        jacobian: {
          pairs: layout.pairs,
          loss: (p, x, f) =>
            jacobianLoss(
              saes.weights(p.up),
              saes.weights(p.down),
              mlp,
              x.get(p.up)!,
              f.get(p.up)!,
              f.get(p.down)!,
              config.k,
            ),
          mlp: () => mlp,
        },
      });
      saes.dispose();
      return { result, lines, ckpt: (await loadCheckpoint(`${dir}/${name}`))! };
    };
    const cpu = await run("cpu");
    await import("@tensorflow/tfjs-backend-webgpu");
    assert.ok(await tf.setBackend("webgpu"), "tfjs webgpu starts");
    try {
      const gpu = await run("gpu");
      assert.ok(gpu.lines.some((l) => l.startsWith("SAE steps: WebGPU engine on ")), gpu.lines[0]);
      for (const [name, p] of Object.entries(cpu.ckpt.params)) {
        assertClose(gpu.ckpt.params[name]!.data, p.data, `${name} after 12 steps`);
      }
      // The logged totals: both reconstruction losses plus the Jacobian term, printed to 4 decimals.
      const figures = (lines: string[]) =>
        lines.filter((l) => l.startsWith("step")).map((l) => Number(l.match(/loss ([\d.]+)/)![1]));
      assertClose(figures(gpu.lines), figures(cpu.lines), "logged total losses", 1e-3);
    } finally {
      await tf.setBackend("cpu");
      tf.dispose(Object.values(mlp));
      await Deno.remove(dir, { recursive: true });
    }
  },
);

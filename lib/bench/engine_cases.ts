/**
 * The CPU SAE engine's benchmark workloads (`lib/sae/cpu_engine.ts`), each named like its PyTorch
 * peer case in `tests/bench/peer_torch.py`, and the matrix-product ceiling they are measured
 * against: OpenBLAS's own sgemm on the encoder's shape, and the encoder product as the engine
 * runs it (fixed row blocks, one single-threaded call each).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { openBlas } from "../backend/blas.ts";
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import { cpuEngineKernels, CpuSaeEngine, encoderRows } from "../sae/cpu_engine.ts";
import type { PositionLayout } from "../sae/positions.ts";
import { createRng, normalArray } from "../util/rng.ts";
import { type BenchCase, SAE_CASE } from "./cases.ts";

/** The engine's cases, by the peer's names. */
export const ENGINE_CASES = ["sae_topk_step", "sae_staircase_step", "sae_jsae_step"] as const;

/** One of {@link ENGINE_CASES}. */
export type EngineCase = typeof ENGINE_CASES[number];

/** JSAE's MLP width and λ in the JSAE case (the toy model's, and a λ of the paper's sweep). */
const JSAE = { m: 256, lambda: 1e-4 } as const;

const ADAM = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 };

// The SAEs of a case: one TopK SAE; a Staircase chain of two (512 then 1,024 shared features, as
// at mlp-block); or a JSAE pair across one MLP.
function layoutOf(name: EngineCase): { sae: SaeConfig; layout: PositionLayout } {
  const { features, k } = SAE_CASE;
  if (name === "sae_topk_step") {
    return {
      sae: { arch: "topk", features, k, jsaeLambda: 0 },
      layout: { position: "mlp", hooks: ["x"], pairs: [], chains: [["x"]] },
    };
  }
  if (name === "sae_staircase_step") {
    return {
      sae: { arch: "staircase", features, k, jsaeLambda: 0 },
      layout: { position: "mlp-block", hooks: ["a", "b"], pairs: [], chains: [["a", "b"]] },
    };
  }
  return {
    sae: { arch: "jsae", features, k, jsaeLambda: JSAE.lambda },
    layout: {
      position: "mlp",
      hooks: ["in", "out"],
      pairs: [{ up: "in", down: "out", layer: 0 }],
      chains: [["in"], ["out"]],
    },
  };
}

/**
 * One training step of the CPU engine on the paper's toy shapes (16,384 tokens, d 64, k 10): a
 * TopK SAE of 512 features, a Staircase chain of two sharing 1,024 features, or a JSAE pair of
 * 512-feature SAEs across an MLP of 256; gradient clipping and AdamW included, the figures read
 * every step (as a reporting training step does).
 *
 * @param name The case.
 * @param seed Seed of the data and initial weights.
 * @returns The prepared case.
 */
export async function cpuEngineStep(name: EngineCase, seed = 0): Promise<BenchCase> {
  const { tokens, d } = SAE_CASE;
  const { sae, layout } = layoutOf(name);
  const saes = buildSaes(sae, layout, d, seed);
  const rng = createRng(seed + 1);
  const mlp = {
    wFc: tf.tensor2d(normalArray(rng, d * JSAE.m, 0.1), [d, JSAE.m]),
    bFc: tf.tensor1d(new Float32Array(JSAE.m)),
    wProj: tf.tensor2d(normalArray(rng, JSAE.m * d, 0.1), [JSAE.m, d]),
  };
  const engine = await CpuSaeEngine.create({
    saes,
    sae,
    rows: tokens,
    adam: ADAM,
    gradClip: 1,
    jacobian: sae.arch === "jsae"
      ? { pairs: layout.pairs, mlp: () => mlp, lambda: JSAE.lambda }
      : undefined,
  });
  const batch = new Map(layout.hooks.map((h) => [h, normalArray(rng, tokens * d, 1)]));
  const widths = layout.hooks.map((h) => saes.width(h)).join("/");
  return {
    name,
    detail: `${layout.hooks.length} × x[${tokens},${d}] → ${widths} features (${sae.arch}), ` +
      `k=${sae.k}, AdamW; CPU engine`,
    async step() {
      await engine.step(batch, 1e-3, true);
    },
    dispose() {
      engine.dispose();
      saes.dispose();
      tf.dispose(Object.values(mlp));
    },
  };
}

/**
 * The encoder's product (16,384 × 64 by 64 × 512) by OpenBLAS's own sgemm with all its threads:
 * the ceiling the engine's steps are measured against.
 *
 * @returns The prepared case.
 * @throws {Error} If no BLAS library opens.
 */
export function sgemmCeiling(): BenchCase {
  const { tokens, d, features } = SAE_CASE;
  const blas = openBlas();
  if ("error" in blas) throw new Error(blas.error);
  const rng = createRng(3);
  const [a, b] = [normalArray(rng, tokens * d, 1), normalArray(rng, d * features, 1)];
  const c = new Float32Array(tokens * features);
  return {
    name: "sgemm_ceiling",
    detail: `OpenBLAS sgemm [${tokens},${d}]·[${d},${features}] (${blas.threads ?? "?"} threads)`,
    step() {
      blas.sgemm({ transA: false, transB: false, m: tokens, n: features, k: d, a, b, c });
      return Promise.resolve();
    },
    dispose() {
      blas.close();
    },
  };
}

/**
 * The same product as the engine computes its encoder: blocks of {@link encoderRows} rows, one
 * single-threaded OpenBLAS call each, spread over the OpenMP threads (without the selection that
 * follows each block in a step).
 *
 * @returns The prepared case.
 */
export async function engineEncoderProduct(): Promise<BenchCase> {
  const { tokens, d, features } = SAE_CASE;
  const kernels = await cpuEngineKernels();
  const rng = createRng(3);
  const [a, b] = [normalArray(rng, tokens * d, 1), normalArray(rng, d * features, 1)];
  const c = new Float32Array(tokens * features);
  const rows = encoderRows(features);
  return {
    name: "sae_encoder_product",
    detail: `the engine's encoder product, blocks of ${rows} rows`,
    step() {
      kernels.sae_gemm(0, 0, tokens, features, d, 1, a, d, b, features, 0, c, features, rows);
      return Promise.resolve();
    },
    dispose() {},
  };
}

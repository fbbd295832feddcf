/**
 * Which path trains SAEs: the WebGPU engine (`sae_engine.ts`) when tfjs runs on the `webgpu`
 * backend and the engine trains the architecture, else the reference tfjs step (every other
 * backend, and what the engine is tested against). The engine gives the same numbers as the
 * reference up to f32 rounding, so the choice changes speed, not results.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamWState } from "../../optim/adamw.ts";
import { architecture, type SaeConfig, type SaeSet } from "../architectures.ts";
import type { MlpWeights } from "../jacobian.ts";
import type { SaePair } from "../positions.ts";
import type { SaeTrainConfig } from "../train.ts";
import { requestGpu } from "./device.ts";
import { SaeEngine } from "./sae_engine.ts";

/** What {@link chooseSaeEngine} needs to know about a training run. */
export interface EngineChoice {
  /** The SAEs, holding their starting (or restored) parameters. */
  saes: SaeSet;
  /** Their settings. */
  sae: SaeConfig;
  /** Training settings. */
  train: SaeTrainConfig;
  /** Tokens per sequence. */
  seqLen: number;
  /** The optimizer state to continue from (a resumed run), if any. */
  resume?: AdamWState;
  /** JSAE: the pairs, the MLP between each, and λ. */
  jacobian?: { pairs: readonly SaePair[]; mlp: (pair: SaePair) => MlpWeights; lambda: number };
}

/**
 * Builds the engine when this run should use it.
 *
 * @param o The run.
 * @returns The engine (already holding the parameters and optimizer state), or why the reference
 *   path trains instead (undefined when the backend is not `webgpu`: nothing to say).
 */
export async function chooseSaeEngine(
  o: EngineChoice,
): Promise<{ engine: SaeEngine; line: string } | { engine?: undefined; line?: string }> {
  if (tf.getBackend() !== "webgpu") return {};
  if (architecture(o.sae.arch).pairLoss !== undefined && !o.jacobian) {
    return {
      line: `SAE steps: tfjs webgpu ops (the GPU engine does not train "${o.sae.arch}" here)`,
    };
  }
  const gpu = await requestGpu();
  if (typeof gpu === "string") return { line: `SAE steps: tfjs webgpu ops (no engine: ${gpu})` };
  const { train } = o;
  const engine = await SaeEngine.create(gpu, {
    saes: o.saes,
    sae: o.sae,
    rows: train.batch * o.seqLen,
    microRows: train.microBatch === undefined ? undefined : train.microBatch * o.seqLen,
    adam: { beta1: train.beta1, beta2: train.beta2, eps: 1e-8, weightDecay: train.weightDecay },
    gradClip: train.gradClip,
    jacobian: o.jacobian,
  });
  if (o.resume !== undefined) await engine.load(o.resume);
  return { engine, line: `SAE steps: WebGPU engine on ${gpu.adapter}` };
}

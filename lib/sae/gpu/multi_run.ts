/**
 * Several runs' SAEs trained together on one device: at toy shapes a GPU is bound by launches and
 * round trips, not arithmetic, so a grid's runs that share a model and data take each training
 * step together. Every run keeps its own engine (parameters, Adam moments, gradient-norm clip,
 * step count, learning rate, seed), so its numbers are bit-equal to training it alone; what they
 * share is the step's one command buffer, one submission and one wait for the logged figures.
 *
 * Each run's dispatches are still its own: folding the runs into the kernels' grids (one launch
 * per kernel for all runs, as SAELens' multi-SAE runner does on CUDA) is the next step.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import { SaeEngine, type SaeEngineOptions } from "./sae_engine.ts";

/** Runs trained together: one {@link SaeEngine} per run, stepped in one submission. */
export class MultiRunEngine {
  readonly #gpu: Gpu;
  /** Each run's engine, in the order given: its `state`, `load`, `params`, `writeBack`. */
  readonly engines: readonly SaeEngine[];

  private constructor(gpu: Gpu, engines: SaeEngine[]) {
    this.#gpu = gpu;
    this.engines = engines;
  }

  /**
   * Builds one engine per run on the device.
   *
   * @param gpu The device.
   * @param runs Each run's SAEs, sizes and optimizer settings.
   * @returns The engines, each at step 0 (load a run's state through `engines[i].load`).
   * @throws {RangeError} For no runs, or what {@link SaeEngine.create} refuses.
   *
   * @example
   * ```ts
   * import { equal } from "node:assert/strict";
   * import { buildSaes } from "../architectures.ts";
   * import { requestGpu } from "./device.ts";
   * import { MultiRunEngine } from "./multi_run.ts";
   * const gpu = await requestGpu();
   * if (typeof gpu !== "string") {
   *   const layout = { position: "mlp" as const, hooks: ["x"], pairs: [], chains: [["x"]] };
   *   const sae = { arch: "topk" as const, features: 8, k: 2, jsaeLambda: 0 };
   *   const runs = [0, 1].map((seed) => ({
   *     saes: buildSaes(sae, layout, 4, seed),
   *     sae,
   *     rows: 2,
   *     adam: { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0 },
   *     gradClip: 1,
   *   }));
   *   const together = await MultiRunEngine.create(gpu, runs);
   *   const batch = new Map([["x", new Float32Array(8).fill(1)]]);
   *   const figures = await together.step([batch, batch], [1e-3, 1e-3], true);
   *   equal(figures.length, 2);
   *   together.dispose();
   *   for (const r of runs) r.saes.dispose();
   * }
   * ```
   */
  static async create(gpu: Gpu, runs: readonly SaeEngineOptions[]): Promise<MultiRunEngine> {
    if (runs.length === 0) throw new RangeError("Cannot train runs together: no runs given");
    const engines: SaeEngine[] = [];
    try {
      for (const run of runs) engines.push(await SaeEngine.create(gpu, run));
    } catch (e) {
      for (const engine of engines) engine.dispose();
      throw e;
    }
    return new MultiRunEngine(gpu, engines);
  }

  /**
   * One training step of every run, recorded into one command buffer and submitted once.
   *
   * @param batches Each run's batch (per hook `[rows, D]`); undefined keeps that run's last.
   * @param lrs Each run's learning rate.
   * @param report Whether to read the figures back (one wait for all runs).
   * @returns Each run's figures when reporting (as {@link SaeEngine.step}), else undefined each.
   * @throws {RangeError} If the lists do not have one entry per run, or a batch has another size.
   */
  async step(
    batches: readonly (ReadonlyMap<string, Float32Array> | undefined)[],
    lrs: readonly number[],
    report: boolean,
  ): Promise<(Float32Array | undefined)[]> {
    const n = this.engines.length;
    if (batches.length !== n || lrs.length !== n) {
      throw new RangeError(
        `Cannot step ${n} runs together with ${batches.length} batches and ${lrs.length} ` +
          `learning rates: give one of each per run`,
      );
    }
    const device = this.#gpu.device;
    const encoder = device.createCommandEncoder();
    this.engines.forEach((engine, i) => engine.encodeStep(encoder, batches[i], lrs[i]!, report));
    device.queue.submit([encoder.finish()]);
    if (!report) return this.engines.map(() => undefined);
    return await Promise.all(this.engines.map((engine) => engine.figures()));
  }

  /** Frees every run's engine (not the SAEs). */
  dispose(): void {
    for (const engine of this.engines) engine.dispose();
  }
}

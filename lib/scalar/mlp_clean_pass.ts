/**
 * The clean pass of SCALAR's attribution (`attribution.ts`) for a per-token MLP pair, on the host:
 * from the clean activations at the pair's upstream hook, per token the reference's IG step length
 * ‖z0‖₂ / S, and per α the decoded point x̂_α, the segment's saved forward there (`mlp_vjp.ts`)
 * and the downstream SAE's kept and positive features. The encoders run in the CPU SAE engine's
 * kernels (the training step's own product and TopK selection), the segment in OpenBLAS, and the
 * decode once: x̂_α = α·(z0·W_dec) + b_dec is affine in α, so every α is one scaled copy.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { SaeSet } from "../sae/architectures.ts";
import {
  type CpuEngineKernels,
  cpuEngineKernels,
  encodeTopK,
  type HostEncoder,
} from "../sae/cpu_engine.ts";
import type { SaePair } from "../sae/positions.ts";
import type { MlpForward, MlpVjp } from "./mlp_vjp.ts";

/** What the clean pass gives the backward passes of one batch. */
export interface CleanPass {
  /** ‖z0‖₂ / S per token `[N]`. */
  stepLength: Float32Array;
  /** x̂_α per α, `[N][D]` each. */
  xHats: Float32Array[];
  /** Per α the downstream SAE's kept and positive features, `[N][k]`, −1 padded at the end. */
  kept: Int32Array[];
}

/** An SAE's weights as host arrays. */
interface HostSae extends HostEncoder {
  wDec: Float32Array;
}

/**
 * Reads one SAE's weights to the host (through clones: an architecture's view of its weights may
 * be a new tensor, a slice of shared ones).
 */
async function hostSae(saes: SaeSet, hook: string): Promise<HostSae> {
  const ts = tf.tidy(() => {
    const w = saes.weights(hook);
    return [w.wEnc, w.bEnc, w.wDec, w.bDec].map((t) => tf.clone(t));
  });
  try {
    const [wEnc, bEnc, wDec, bDec] = await Promise.all(
      ts.map((t) => t.data() as Promise<Float32Array>),
    );
    return { wEnc: wEnc!, bEnc: bEnc!, wDec: wDec!, bDec: bDec! };
  } finally {
    tf.dispose(ts);
  }
}

/**
 * The clean pass of one per-token MLP pair on the host (see the module documentation).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { GPT } from "../model/gpt.ts";
 * import { TINY } from "../model/testdata/tiny_gpt.ts";
 * import { buildSaes } from "../sae/architectures.ts";
 * import { layoutPosition } from "../sae/positions.ts";
 * import { MlpCleanPass } from "./mlp_clean_pass.ts";
 * import { MlpVjp } from "./mlp_vjp.ts";
 * const model = GPT.init(TINY, 1);
 * const layout = layoutPosition("mlp-block", TINY.nLayer);
 * const sae = { arch: "topk", features: 16, k: 2, jsaeLambda: 0 } as const;
 * const saes = buildSaes(sae, layout, TINY.dModel, 2);
 * const pair = layout.pairs[0]!;
 * const mlp = await MlpVjp.open(model, { layer: 0, norm: true, residual: true });
 * if ("error" in mlp) throw new Error(mlp.error);
 * const clean = await MlpCleanPass.open(saes, pair, mlp);
 * const { kept, forwards } = clean.run(new Float32Array(3 * TINY.dModel).fill(0.5), [0, 1]);
 * equal(kept.length, 2);
 * equal(forwards[1]!.positions, 3);
 * model.dispose();
 * saes.dispose();
 * ```
 */
export class MlpCleanPass {
  readonly #kernels: CpuEngineKernels;
  readonly #up: HostSae;
  readonly #down: HostSae;
  readonly #mlp: MlpVjp;
  readonly #k: number;

  private constructor(
    kernels: CpuEngineKernels,
    up: HostSae,
    down: HostSae,
    mlp: MlpVjp,
    k: number,
  ) {
    this.#kernels = kernels;
    this.#up = up;
    this.#down = down;
    this.#mlp = mlp;
    this.#k = k;
  }

  /**
   * Copies the pair's SAEs to the host and opens the engine's kernels.
   *
   * @param saes The run's SAEs.
   * @param pair The pair (a per-token MLP segment, which `mlp` runs).
   * @param mlp The segment's VJP.
   * @returns The clean pass.
   * @throws {Error} If the engine's kernels cannot start (no compiler or BLAS).
   */
  static async open(saes: SaeSet, pair: SaePair, mlp: MlpVjp): Promise<MlpCleanPass> {
    const kernels = await cpuEngineKernels();
    const [up, down] = [await hostSae(saes, pair.up), await hostSae(saes, pair.down)];
    return new MlpCleanPass(kernels, up, down, mlp, saes.k);
  }

  /**
   * One batch's clean pass.
   *
   * @param x The clean activations at the upstream hook `[N][D]`.
   * @param alphas The IG points α.
   * @returns The step lengths, x̂_α and kept features, and the segment's forward per α.
   */
  run(x: Float32Array, alphas: readonly number[]): CleanPass & { forwards: MlpForward[] } {
    const up = this.#up, k = this.#k, D = up.bDec.length, N = x.length / D;
    const z0 = encodeTopK(this.#kernels, x, up, k);
    const stepLength = new Float32Array(N), decoded = new Float32Array(N * D);
    for (let n = 0; n < N; n++) {
      let sq = 0;
      const row = decoded.subarray(n * D, (n + 1) * D);
      for (let c = n * k; c < (n + 1) * k; c++) {
        const v = z0.val[c]!, from = z0.idx[c]! * D;
        sq += v * v;
        if (v !== 0) { for (let d = 0; d < D; d++) row[d]! += v * up.wDec[from + d]!; }
      }
      stepLength[n] = Math.sqrt(sq) / alphas.length;
    }
    const xHats: Float32Array[] = [], kept: Int32Array[] = [], forwards: MlpForward[] = [];
    for (const a of alphas) {
      const xHat = new Float32Array(N * D);
      for (let i = 0; i < N * D; i++) xHat[i] = a * decoded[i]! + up.bDec[i % D]!;
      const f = this.#mlp.forward(xHat);
      xHats.push(xHat);
      forwards.push(f);
      kept.push(this.#keptIds(f.output));
    }
    return { stepLength, xHats, kept, forwards };
  }

  /** The downstream SAE's kept and positive features per row, ascending, −1 padded at the end. */
  #keptIds(y: Float32Array): Int32Array {
    const k = this.#k, { idx, val } = encodeTopK(this.#kernels, y, this.#down, k);
    const ids = new Int32Array(idx.length).fill(-1);
    for (let n = 0; n < idx.length / k; n++) {
      let c = n * k;
      for (let s = n * k; s < (n + 1) * k; s++) if (val[s]! > 0) ids[c++] = idx[s]!;
    }
    return ids;
  }
}

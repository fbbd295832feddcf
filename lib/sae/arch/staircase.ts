/**
 * `staircase`: one dictionary per chain (`../positions.ts`), `chain<c>/W_enc` `[D, total]` and
 * `chain<c>/W_dec` `[total, D]`; the SAE at the j-th hook of a chain uses its first
 * (j + 1) · features features, with biases of its own (`<hook>/b_enc`, `<hook>/b_dec`, starting at
 * zero), so a feature that passes through keeps its index. Every SAE's loss trains the whole
 * prefix it reads; the detached variant (`staircase_detached.ts`) differs only there.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { SaeWeights } from "../sae.ts";
import { ArchitectureError, type ArchitectureSpec } from "./spec.ts";

/** The identity whose gradient is zero (tfjs has no stop-gradient op). */
const stopGradient = (x: tf.Tensor): tf.Tensor =>
  tf.customGrad((t) => ({
    value: (t as tf.Tensor).clone(),
    gradFunc: (dy) => tf.zerosLike(dy as tf.Tensor),
  }))(x);

/**
 * A Staircase architecture; `detached`: an SAE's loss trains only its own chunk, gradients into
 * earlier chunks are stopped.
 *
 * @param detached Whether earlier chunks are read but not trained.
 * @param summary Its one-line description.
 * @returns The architecture.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layoutPosition } from "../positions.ts";
 * import { staircase } from "./staircase.ts";
 *
 * const groups = staircase(false, "shared").params(layoutPosition("mlp-block", 1), 8, 4);
 * assert.deepEqual(groups[0]!.params.map((p) => [p.name, p.shape]), [
 *   ["chain0/W_enc", [4, 16]],
 *   ["chain0/W_dec", [16, 4]],
 *   ["blocks.0.hook_resid_mid/b_enc", [8]],
 *   ["blocks.0.hook_resid_mid/b_dec", [4]],
 *   ["blocks.0.hook_resid_post/b_enc", [16]],
 *   ["blocks.0.hook_resid_post/b_dec", [4]],
 * ]);
 * ```
 */
export function staircase(detached: boolean, summary: string): ArchitectureSpec {
  return {
    summary,
    baseline: false,
    positionProblem: () => undefined,
    params: (layout, features, d) =>
      layout.chains.map((hooks, c) => {
        const total = hooks.length * features;
        return {
          features: total,
          params: [
            { name: `chain${c}/W_enc`, shape: [d, total], init: "wEnc" },
            { name: `chain${c}/W_dec`, shape: [total, d], init: "wDec" },
            ...hooks.flatMap((hook, j) => [
              { name: `${hook}/b_enc`, shape: [(j + 1) * features], init: "zeros" as const },
              { name: `${hook}/b_dec`, shape: [d], init: "zeros" as const },
            ]),
          ],
        };
      }),
    weights: staircaseWeights(detached),
    matrices: staircaseMatrices(detached),
  };
}

// Each SAE's weights: slices of its chain's dictionary, the earlier chunks behind a stop-gradient
// when detached.
function staircaseWeights(detached: boolean): ArchitectureSpec["weights"] {
  return (params, layout, features, d) => {
    const chainOf = new Map<string, { chain: number; position: number }>();
    layout.chains.forEach((hooks, chain) =>
      hooks.forEach((hook, position) => chainOf.set(hook, { chain, position }))
    );
    return (hook): SaeWeights => {
      const { chain, position } = chainOf.get(hook)!;
      const width = (position + 1) * features;
      const wEnc = params.get(`chain${chain}/W_enc`)!;
      const wDec = params.get(`chain${chain}/W_dec`)!;
      let enc = wEnc.slice([0, 0], [d, width]) as tf.Tensor2D;
      let dec = wDec.slice([0, 0], [width, d]) as tf.Tensor2D;
      if (detached && position > 0) {
        // Earlier chunks are read but not trained by this SAE's loss.
        const own = width - features;
        enc = tf.concat([
          stopGradient(wEnc.slice([0, 0], [d, own])),
          wEnc.slice([0, own], [d, features]),
        ], 1) as tf.Tensor2D;
        dec = tf.concat([
          stopGradient(wDec.slice([0, 0], [own, d])),
          wDec.slice([own, 0], [features, d]),
        ], 0) as tf.Tensor2D;
      }
      return {
        wEnc: enc,
        bEnc: params.get(`${hook}/b_enc`) as tf.Tensor1D,
        wDec: dec,
        bDec: params.get(`${hook}/b_dec`) as tf.Tensor1D,
      };
    };
  };
}

// Which chain's matrices each SAE reads, and from which feature its loss trains them.
function staircaseMatrices(detached: boolean): ArchitectureSpec["matrices"] {
  return (saes, features) => {
    // Chains are laid out in hook order, each growing by one chunk per hook: a hook of width
    // `features` starts the next chain.
    let chain = -1, position = 0;
    return saes.hooks.map((hook) => {
      const width = saes.width(hook);
      if (width === features) [chain, position] = [chain + 1, 0];
      else position++;
      if (chain < 0 || width !== (position + 1) * features) {
        throw new ArchitectureError(
          `Cannot lay out Staircase SAE "${hook}": width ${width} is not ${position + 1} × ` +
            `${features} within chain${chain}`,
        );
      }
      return {
        wEnc: `chain${chain}/W_enc`,
        wDec: `chain${chain}/W_dec`,
        trainFrom: detached ? position * features : 0,
      };
    });
  };
}

/**
 * The Staircase architecture (shared prefixes, trained by every SAE that reads them).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { STAIRCASE } from "./staircase.ts";
 *
 * assert.equal(STAIRCASE.positionProblem("block"), undefined);
 * ```
 */
export const STAIRCASE: ArchitectureSpec = staircase(
  false,
  "one dictionary per chain; the j-th SAE uses its first (j + 1) · features features",
);

/**
 * `topk`: an independent TopK SAE per hook (the paper's baseline), with parameters
 * `<hook>/W_enc`, `<hook>/b_enc`, `<hook>/W_dec`, `<hook>/b_dec`.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs";
import type { ArchitectureSpec } from "./spec.ts";

/**
 * The TopK architecture.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { layoutPosition } from "../positions.ts";
 * import { TOPK } from "./topk.ts";
 *
 * const [group] = TOPK.params(layoutPosition("mlp", 1), 8, 4);
 * assert.deepEqual(group!.params.map((p) => [p.name, p.shape]), [
 *   ["blocks.0.hook_mlp_in/W_enc", [4, 8]],
 *   ["blocks.0.hook_mlp_in/b_enc", [8]],
 *   ["blocks.0.hook_mlp_in/W_dec", [8, 4]],
 *   ["blocks.0.hook_mlp_in/b_dec", [4]],
 * ]);
 * assert.equal(TOPK.baseline, true);
 * ```
 */
export const TOPK: ArchitectureSpec = {
  summary: "an independent TopK SAE per hook",
  baseline: true,
  positionProblem: () => undefined,
  params: (layout, features, d) =>
    layout.hooks.map((hook) => ({
      features,
      params: [
        { name: `${hook}/W_enc`, shape: [d, features], init: "wEnc" },
        { name: `${hook}/b_enc`, shape: [features], init: "bEnc" },
        { name: `${hook}/W_dec`, shape: [features, d], init: "wDec" },
        { name: `${hook}/b_dec`, shape: [d], init: "bDec" },
      ],
    })),
  weights: (params) => (hook) => ({
    wEnc: params.get(`${hook}/W_enc`)! as tf.Tensor2D,
    bEnc: params.get(`${hook}/b_enc`)! as tf.Tensor1D,
    wDec: params.get(`${hook}/W_dec`)! as tf.Tensor2D,
    bDec: params.get(`${hook}/b_dec`)! as tf.Tensor1D,
  }),
  matrices: (saes) =>
    saes.hooks.map((hook) => ({ wEnc: `${hook}/W_enc`, wDec: `${hook}/W_dec`, trainFrom: 0 })),
};

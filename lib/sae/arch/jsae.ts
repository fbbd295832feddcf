/**
 * `jsae`: TopK SAEs (`topk.ts`) whose adjacent pairs add λ times the Jacobian sparsity loss
 * (`../jacobian.ts`). Only across an MLP: the Jacobian needs a tokenwise map between the pair.
 *
 * @module
 */
import { jacobianLoss } from "../jacobian.ts";
import type { ArchitectureSpec } from "./spec.ts";
import { TOPK } from "./topk.ts";

/**
 * The Jacobian SAE architecture.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { JSAE } from "./jsae.ts";
 *
 * assert.equal(JSAE.positionProblem("mlp"), undefined);
 * assert.match(JSAE.positionProblem("block")!, /attention mixes positions/);
 * assert.equal(JSAE.pairLoss!.weight({ arch: "jsae", features: 8, k: 2, jsaeLambda: 0.5 }), 0.5);
 * ```
 */
export const JSAE: ArchitectureSpec = {
  ...TOPK,
  summary: "TopK SAEs whose pairs add λ · the Jacobian sparsity loss (position mlp only)",
  baseline: false,
  positionProblem: (position) =>
    position === "mlp"
      ? undefined
      : position === "block"
      ? `Cannot train "jsae" at position "block": its Jacobian needs an MLP between the pair, and ` +
        `attention mixes positions, so no cheap closed form exists (the paper's finding); use ` +
        `"mlp" or another architecture`
      : `Cannot train "jsae" at position "${position}": only "mlp" is supported (the paper's ` +
        `tables use JSAEs across the MLP alone; the block Jacobian through ln_2 is not implemented)`,
  pairLoss: { weight: (config) => config.jsaeLambda, tfjs: jacobianLoss },
};

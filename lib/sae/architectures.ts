/**
 * The SAE architectures, as one registry: each lives in its own file under `arch/` (what it is
 * told in `arch/spec.ts`: the positions it serves, its parameters, its weights per hook, its flat
 * views for the engines, its extra loss, its role in reports), and one line here adds it. An
 * architecture turns a position's layout into a set of SAEs; training, metrics and SCALAR see
 * only {@link SaeSet}, never the architecture.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { createRng } from "../util/rng.ts";
import { JSAE } from "./arch/jsae.ts";
import {
  ArchitectureError,
  type ArchitectureSpec,
  type SaeConfig,
  type SaeSet,
} from "./arch/spec.ts";
import { STAIRCASE } from "./arch/staircase.ts";
import { STAIRCASE_DETACHED } from "./arch/staircase_detached.ts";
import { TOPK } from "./arch/topk.ts";
import type { Position, PositionLayout } from "./positions.ts";
import { initSaeValues } from "./sae.ts";

export { ArchitectureError, type SaeConfig, type SaeSet };

/** Every architecture by the name manifests use, in the order reports show them. */
const REGISTRY = {
  topk: TOPK,
  staircase: STAIRCASE,
  "staircase-detached": STAIRCASE_DETACHED,
  jsae: JSAE,
} as const satisfies Record<string, ArchitectureSpec>;

/** An SAE architecture. */
export type Architecture = keyof typeof REGISTRY;

/**
 * The architectures a manifest can name, in the order reports show them.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { ARCHITECTURES } from "./architectures.ts";
 *
 * assert.equal(ARCHITECTURES[0], "topk");
 * ```
 */
export const ARCHITECTURES = Object.keys(REGISTRY) as readonly Architecture[];

/**
 * The registry entry of an architecture.
 *
 * @param arch Its name.
 * @returns What it is (`arch/spec.ts`).
 * @throws {ArchitectureError} For a name the registry does not hold, listing those it does.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { architecture } from "./architectures.ts";
 *
 * assert.equal(architecture("jsae").pairLoss !== undefined, true);
 * assert.throws(() => architecture("jsea"), /Unknown SAE architecture "jsea"/);
 * ```
 */
export function architecture(arch: string): ArchitectureSpec {
  // Own keys only: "toString" is no architecture.
  if (!Object.hasOwn(REGISTRY, arch)) {
    throw new ArchitectureError(
      `Unknown SAE architecture "${arch}": use one of ${ARCHITECTURES.join(", ")}`,
    );
  }
  return REGISTRY[arch as Architecture];
}

/**
 * Whether reports measure other architectures' improvement against this one.
 *
 * @param arch An architecture name, as stored with a run.
 * @returns True for the baseline (TopK); false for the others and unknown names.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { isBaseline } from "./architectures.ts";
 *
 * assert.deepEqual([isBaseline("topk"), isBaseline("staircase"), isBaseline("x")], [true, false, false]);
 * ```
 */
export function isBaseline(arch: string): boolean {
  return Object.hasOwn(REGISTRY, arch) && architecture(arch).baseline;
}

/**
 * Refuses combinations that cannot work, before any work starts.
 *
 * @param arch The architecture.
 * @param position The position.
 * @throws {ArchitectureError} When the architecture cannot serve the position (`jsae` outside
 *   `mlp`), with the reason.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkArchitecture } from "./architectures.ts";
 *
 * checkArchitecture("staircase", "block");
 * assert.throws(() => checkArchitecture("jsae", "block"), /Cannot train "jsae" at position "block"/);
 * ```
 */
export function checkArchitecture(arch: Architecture, position: Position): void {
  const problem = architecture(arch).positionProblem(position);
  if (problem !== undefined) throw new ArchitectureError(problem);
}

/**
 * The parameters' shapes of a run's SAEs, without building them (for estimates).
 *
 * @param config Architecture and sizes.
 * @param layout The position's hooks and chains.
 * @param d Activation width.
 * @returns Parameter name → shape, in creation order.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { saeShapes } from "./architectures.ts";
 * import { layoutPosition } from "./positions.ts";
 *
 * const config = { arch: "staircase", features: 8, k: 2, jsaeLambda: 0 } as const;
 * const shapes = saeShapes(config, layoutPosition("mlp-block", 1), 4);
 * assert.deepEqual(shapes.get("blocks.0.hook_resid_post/b_enc"), [16]);
 * ```
 */
export function saeShapes(
  config: SaeConfig,
  layout: PositionLayout,
  d: number,
): Map<string, number[]> {
  const groups = architecture(config.arch).params(layout, config.features, d);
  return new Map(groups.flatMap((g) => g.params.map((p) => [p.name, p.shape])));
}

/**
 * Builds the SAEs of a run with seeded initial weights.
 *
 * @param config Architecture and sizes.
 * @param layout The position's hooks and chains.
 * @param d Activation width (d_model).
 * @param seed Initialisation seed.
 * @returns The SAE set.
 * @throws {ArchitectureError} For an impossible architecture/position combination.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSaes } from "./architectures.ts";
 * import { layoutPosition } from "./positions.ts";
 *
 * const config = { arch: "topk", features: 8, k: 2, jsaeLambda: 0 } as const;
 * const saes = buildSaes(config, layoutPosition("mlp", 1), 4, 0);
 * assert.deepEqual(saes.weights(saes.hooks[0]!).wEnc.shape, [4, 8]);
 * saes.dispose();
 * ```
 */
export function buildSaes(
  config: SaeConfig,
  layout: PositionLayout,
  d: number,
  seed: number,
): SaeSet {
  checkArchitecture(config.arch, layout.position);
  const spec = architecture(config.arch);
  const rng = createRng(seed);
  const params = new Map<string, tf.Variable>();
  // One draw per group, in order, so a seed gives the same weights as before the registry.
  for (const group of spec.params(layout, config.features, d)) {
    const values = initSaeValues(d, group.features, rng);
    for (const p of group.params) {
      const init = p.init === "zeros"
        ? new Float32Array(p.shape.reduce((a, b) => a * b, 1))
        : values[p.init];
      params.set(p.name, tf.variable(tf.tensor(init, p.shape)));
    }
  }
  const weights = spec.weights(params, layout, config.features, d);
  const widths = new Map(layout.hooks.map((h) => [h, params.get(`${h}/b_enc`)!.shape[0]!]));
  return {
    arch: config.arch,
    hooks: layout.hooks,
    k: config.k,
    params,
    width: (hook) => widths.get(hook)!,
    weights,
    dispose: () => params.forEach((v) => v.dispose()),
  };
}

/**
 * Where SAEs sit in a GPT (SPEC §3). A position names the hooks that get an SAE and the adjacent
 * pairs SCALAR connects; every SAE is keyed by its hook name, so one mechanism serves the toy model
 * and GPT-2.
 *
 * | position    | pairs per layer i                                   | between a pair          |
 * | ----------- | --------------------------------------------------- | ----------------------- |
 * | `mlp`       | `blocks.i.hook_mlp_in` → `blocks.i.hook_mlp_out`    | the MLP alone           |
 * | `mlp-block` | `blocks.i.hook_resid_mid` → `blocks.i.hook_resid_post` | ln_2 + MLP + skip    |
 * | `block`     | `blocks.i.hook_resid_pre` → `blocks.(i+1).hook_resid_pre` (last: `hook_resid_post`) | a whole block |
 *
 * @module
 */

/** The SAE positions of the paper. */
export const POSITIONS = ["mlp", "mlp-block", "block"] as const;

/** An SAE position. */
export type Position = typeof POSITIONS[number];

/** One upstream → downstream SAE pair. */
export interface SaePair {
  /** Hook of the upstream SAE. */
  up: string;
  /** Hook of the downstream SAE. */
  down: string;
  /** The layer the pair spans. */
  layer: number;
}

/** The SAEs of one position in one model. */
export interface PositionLayout {
  /** The position. */
  position: Position;
  /** Every hook that gets an SAE, in forward order. */
  hooks: string[];
  /** Adjacent pairs, one per layer. */
  pairs: SaePair[];
  /**
   * Groups of hooks that share one Staircase dictionary, each in forward order: one group per
   * layer's pair at `mlp` and `mlp-block`, one chain of all n_layer + 1 hooks at `block`.
   */
  chains: string[][];
}

/**
 * Checks a choice of layers for a position: distinct, ascending, inside the model, and at `block`
 * contiguous (the SAEs there form one chain through consecutive blocks).
 *
 * @param position Where the SAEs sit.
 * @param nLayer Number of transformer blocks.
 * @param layers The chosen layers.
 * @returns Why the choice cannot be laid out, or undefined when it can.
 *
 * @example
 * ```ts
 * import { layersProblem } from "./positions.ts";
 * if (layersProblem("block", 12, [1, 6]) === undefined) throw new Error("a block chain has gaps");
 * ```
 */
export function layersProblem(
  position: Position,
  nLayer: number,
  layers: readonly number[],
): string | undefined {
  if (layers.length === 0) return "lists no layer";
  const outside = layers.find((l) => !Number.isInteger(l) || l < 0 || l >= nLayer);
  if (outside !== undefined) {
    return `layer ${outside} is not in the model (its layers are 0 … ${nLayer - 1})`;
  }
  if (layers.some((l, i) => i > 0 && l <= layers[i - 1]!)) {
    return `[${layers.join(", ")}] is not strictly ascending`;
  }
  if (position === "block" && layers.at(-1)! - layers[0]! !== layers.length - 1) {
    return `[${layers.join(", ")}] has gaps: at "block" the SAEs form one chain through ` +
      `consecutive blocks`;
  }
  return undefined;
}

/**
 * Lays out the SAEs of a position in a model with `nLayer` blocks.
 *
 * @param position Where the SAEs sit.
 * @param nLayer Number of transformer blocks.
 * @param layers The blocks that get SAEs (default: all); see {@link layersProblem}.
 * @returns Hooks, pairs and Staircase chains.
 * @throws {RangeError} If the layers cannot be laid out at this position.
 *
 * @example
 * ```ts
 * import { layoutPosition } from "./positions.ts";
 * const l = layoutPosition("block", 2);
 * if (l.hooks.join() !== "blocks.0.hook_resid_pre,blocks.1.hook_resid_pre,blocks.1.hook_resid_post") {
 *   throw new Error(l.hooks.join());
 * }
 * ```
 */
export function layoutPosition(
  position: Position,
  nLayer: number,
  layers: readonly number[] = Array.from({ length: nLayer }, (_, i) => i),
): PositionLayout {
  const problem = layersProblem(position, nLayer, layers);
  if (problem) throw new RangeError(`Cannot lay out SAEs at ${position}: layers ${problem}`);
  if (position === "block") {
    const last = layers.at(-1)!;
    const hooks = [
      ...layers.map((i) => `blocks.${i}.hook_resid_pre`),
      last + 1 < nLayer ? `blocks.${last + 1}.hook_resid_pre` : `blocks.${last}.hook_resid_post`,
    ];
    const pairs = layers.map((layer, i) => ({ up: hooks[i]!, down: hooks[i + 1]!, layer }));
    return { position, hooks, pairs, chains: [hooks] };
  }
  const [upHook, downHook] = position === "mlp"
    ? ["hook_mlp_in", "hook_mlp_out"]
    : ["hook_resid_mid", "hook_resid_post"];
  const pairs = layers.map((i) => ({
    up: `blocks.${i}.${upHook}`,
    down: `blocks.${i}.${downHook}`,
    layer: i,
  }));
  return {
    position,
    hooks: pairs.flatMap((p) => [p.up, p.down]),
    pairs,
    chains: pairs.map((p) => [p.up, p.down]),
  };
}

/** Hooks a pair's segment may start at and end at when it acts on each token alone. */
const TOKENWISE_UP = /^blocks\.(\d+)\.(hook_resid_mid|hook_mlp_in|mlp\.hook_post)$/;
const TOKENWISE_DOWN = /^blocks\.(\d+)\.(hook_mlp_in|mlp\.hook_post|hook_mlp_out|hook_resid_post)$/;

/**
 * Whether the segment between a pair's hooks acts on each token alone (no attention in between):
 * true for `mlp` and `mlp-block` pairs, false for `block` pairs.
 *
 * @param pair The SAE pair.
 * @returns True when both hooks lie in the MLP half of one block.
 *
 * @example
 * ```ts
 * import { isTokenwisePair } from "./positions.ts";
 * const mlpBlock = { up: "blocks.0.hook_resid_mid", down: "blocks.0.hook_resid_post", layer: 0 };
 * const block = { up: "blocks.0.hook_resid_pre", down: "blocks.1.hook_resid_pre", layer: 0 };
 * if (!isTokenwisePair(mlpBlock) || isTokenwisePair(block)) throw new Error("wrong");
 * ```
 */
export function isTokenwisePair(pair: SaePair): boolean {
  const up = TOKENWISE_UP.exec(pair.up), down = TOKENWISE_DOWN.exec(pair.down);
  return up !== null && down !== null && up[1] === down[1];
}

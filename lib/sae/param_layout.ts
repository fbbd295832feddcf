/**
 * Where an {@link SaeSet}'s parameters sit in the engines' one flat f32 buffer, and each SAE's view
 * of them. One buffer (and one like it for gradients and each Adam moment) lets AdamW update every
 * parameter in a single pass, and lets kernels address any weight by a compile-time offset.
 *
 * Which parameter holds each SAE's matrices is the architecture's to say (`arch/*.ts`,
 * `matrices`): Staircase SAEs read prefixes of their chain's shared dictionary, W_enc `[D, total]`
 * row-major, so the j-th SAE's encoder is the first (j + 1)·F columns with row stride `total`, and
 * W_dec `[total, D]` is the first (j + 1)·F rows.
 *
 * @module
 */
import { architecture, type SaeConfig, type SaeSet } from "./architectures.ts";

/** One SAE as the kernels see it: sizes and f32 offsets into the flat parameter buffer. */
export interface SaeView {
  /** The hook it reconstructs. */
  hook: string;
  /** Activation width D. */
  d: number;
  /** Features F of this SAE. */
  width: number;
  /** Features kept per token. */
  k: number;
  /** Row stride of W_enc (F, or the chain's total width for Staircase). */
  ld: number;
  /** Offset of W_enc `[D, ld]` (its first `width` columns are this SAE's). */
  wEnc: number;
  /** Offset of b_enc `[width]`. */
  bEnc: number;
  /** Offset of W_dec `[≥ width, D]`. */
  wDec: number;
  /** Offset of b_dec `[D]`. */
  bDec: number;
  /**
   * First feature whose W_enc column and W_dec row this SAE's loss trains: 0, or for detached
   * Staircase the start of its own chunk (earlier chunks are read, not trained).
   */
  trainFrom: number;
}

/** One named parameter's place in the flat buffer. */
export interface ParamSlot {
  /** The name in {@link SaeSet.params}. */
  name: string;
  /** f32 offset. */
  offset: number;
  /** Its shape. */
  shape: number[];
  /** Its element count. */
  size: number;
}

/** The flat layout of a set of SAEs. */
export interface ParamLayout {
  /** Total f32 length (padding included). */
  length: number;
  /** Parameters with weight decay come first: offsets below this decay, the rest do not. */
  decayEnd: number;
  /** Every parameter, in buffer order. */
  slots: ParamSlot[];
  /** One view per hook, in hook order. */
  saes: SaeView[];
}

/** Thrown when a set of SAEs has a shape the engine does not know. */
export class LayoutError extends Error {
  override name = "LayoutError";
}

// Parameters start at multiples of 64 floats (256 bytes, WebGPU's binding offset alignment), so a
// slot could also be bound on its own.
const ALIGN = 64;

/**
 * Lays out an SAE set's parameters: decaying ones first (as `decays` says; all when it is
 * undefined, as SAE training's AdamW has it), each 64-float aligned.
 *
 * @param saes The SAEs (built by `buildSaes`).
 * @param config Their settings (`features` is the Staircase chunk size).
 * @param decays Which parameters get weight decay (AdamW's rule); undefined: all.
 * @returns The layout.
 * @throws {LayoutError} If a parameter is missing or narrower than its SAE.
 * @throws {ArchitectureError} If the architecture does not recognise the set (a Staircase chain's
 *   widths not F, 2F, 3F, …).
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { buildSaes } from "./architectures.ts";
 * import { layoutParams } from "./param_layout.ts";
 * import { layoutPosition } from "./positions.ts";
 *
 * const config = { arch: "staircase", features: 8, k: 2, jsaeLambda: 0 } as const;
 * const saes = buildSaes(config, layoutPosition("mlp-block", 1), 4, 0);
 * const layout = layoutParams(saes, config);
 * assert.deepEqual(layout.saes.map((s) => [s.width, s.ld]), [[8, 16], [16, 16]]);
 * saes.dispose();
 * ```
 */
export function layoutParams(
  saes: SaeSet,
  config: SaeConfig,
  decays?: (name: string, shape: readonly number[]) => boolean,
): ParamLayout {
  const entries = [...saes.params].map(([name, v]) => ({ name, shape: v.shape, decay: true }));
  for (const e of entries) e.decay = decays === undefined || decays(e.name, e.shape);
  const ordered = [...entries.filter((e) => e.decay), ...entries.filter((e) => !e.decay)];
  let length = 0, decayEnd = 0;
  const slots: ParamSlot[] = [];
  for (const e of ordered) {
    const size = e.shape.reduce((a, b) => a * b, 1);
    slots.push({ name: e.name, offset: length, shape: e.shape, size });
    length += Math.ceil(size / ALIGN) * ALIGN;
    if (e.decay) decayEnd = length;
  }
  const slot = (name: string) => {
    const s = slots.find((s) => s.name === name);
    if (s === undefined) throw new LayoutError(`Cannot lay out the SAEs: no parameter "${name}"`);
    return s;
  };
  const d = slot(`${saes.hooks[0]}/b_dec`).size;
  const matrices = architecture(config.arch).matrices(saes, config.features);
  const views = saes.hooks.map((hook, i): SaeView => {
    const width = saes.width(hook);
    const m = matrices[i]!;
    const wEnc = slot(m.wEnc);
    if (wEnc.shape[1]! < width) {
      throw new LayoutError(
        `Cannot lay out SAE "${hook}": its ${width} features overrun "${m.wEnc}" ` +
          `(${wEnc.shape[1]} columns)`,
      );
    }
    return {
      hook,
      d,
      width,
      k: saes.k,
      ld: wEnc.shape[1]!,
      wEnc: wEnc.offset,
      bEnc: slot(`${hook}/b_enc`).offset,
      wDec: slot(m.wDec).offset,
      bDec: slot(`${hook}/b_dec`).offset,
      trainFrom: m.trainFrom,
    };
  });
  return { length, decayEnd, slots, saes: views };
}

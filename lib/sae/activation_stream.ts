/**
 * Activations computed as training asks for them, for models whose activation cache would not fit
 * on disk (GPT-2: 6 hooks × 768 floats is 18 KB per token, 3 TB for the paper's 164M tokens).
 * Each batch runs the frozen model over its windows; memory stays that of one batch.
 *
 * @module
 */
import type { GPT } from "../model/gpt.ts";
import { hookNames } from "../model/gpt.ts";
import { recordWindows } from "./activation_cache.ts";
import type { ActivationSource } from "./train.ts";

/** Inputs of {@link streamActivations}. */
export interface StreamActivationsOptions {
  /** The frozen model. */
  model: Pick<GPT, "config" | "run">;
  /** The split's tokens. */
  tokens: Int32Array;
  /** Tokens per window. */
  seqLen: number;
  /** Windows per model call (bounds memory, not the rows a batch returns). @default 8 */
  batchSequences?: number;
}

/**
 * An activation source that runs the model for every batch: row r is token r of the windows
 * laid end to end, exactly the rows an activation cache of the same tokens holds.
 *
 * @param o The model, the tokens and the window length.
 * @returns The source; its batches must start and end on window boundaries.
 * @throws {RangeError} If the tokens hold no complete window.
 */
export function streamActivations(o: StreamActivationsOptions): ActivationSource {
  const { model, tokens, seqLen } = o;
  const per = o.batchSequences ?? 8;
  const windows = Math.floor(tokens.length / seqLen);
  if (windows === 0) {
    throw new RangeError(
      `Cannot stream activations of ${tokens.length} tokens: one window needs ${seqLen}`,
    );
  }
  const order = hookNames(model.config);
  return {
    tokens: windows * seqLen,
    async batch(hooks, start, count) {
      if (start % seqLen !== 0 || count % seqLen !== 0 || start + count > windows * seqLen) {
        throw new RangeError(
          `Cannot stream rows [${start}, ${start + count}): batches are whole windows of ` +
            `${seqLen} tokens within the ${windows * seqLen} rows`,
        );
      }
      const sorted = [...hooks].sort((a, b) => order.indexOf(a) - order.indexOf(b));
      const out = new Map<string, Float32Array>();
      for (let first = start / seqLen; first < (start + count) / seqLen; first += per) {
        const n = Math.min(per, (start + count) / seqLen - first);
        const values = await recordWindows(model, tokens, seqLen, sorted, first, n);
        sorted.forEach((h, i) => {
          const part = values[i]!;
          const width = part.length / (n * seqLen);
          if (!out.has(h)) out.set(h, new Float32Array(count * width));
          out.get(h)!.set(part, (first * seqLen - start) * width);
        });
      }
      return out;
    },
  };
}

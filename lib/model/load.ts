/**
 * Opens the frozen model of an SAE run: a toy GPT trained by `deno task train-model`, or a Hugging
 * Face GPT-2 folder. Both become the project's {@link GPT}; the model also decides how text is
 * tokenized.
 *
 * @module
 */
import type { GPT } from "./gpt.ts";
import { loadGpt2 } from "./gpt2.ts";
import { loadGpt } from "./gpt_checkpoint.ts";

/** The model families a run can use. */
export const MODEL_KINDS = ["toy", "gpt2"] as const;

/** A model family. */
export type ModelKind = typeof MODEL_KINDS[number];

/** A frozen model, ready to record activations. */
export interface LoadedModel {
  /** The model. */
  model: GPT;
  /** How its text is tokenized: by characters (toy) or GPT-2 BPE. */
  tokenizer: "char" | "gpt2";
  /** Validation loss at the end of its training, where the checkpoint records it. */
  valLoss?: number;
}

/**
 * Loads a run's model.
 *
 * @param kind `toy`: a folder written by `deno task train-model`; `gpt2`: a Hugging Face folder.
 * @param dir The folder.
 * @returns The frozen model and its tokenizer.
 * @throws {CheckpointError} If the folder or a file or tensor in it is missing or wrong.
 */
export async function loadModel(kind: ModelKind, dir: string): Promise<LoadedModel> {
  if (kind === "gpt2") return { model: (await loadGpt2(dir)).model, tokenizer: "gpt2" };
  const { model, config } = await loadGpt(dir);
  const history = config.history as { valLoss: number }[] | undefined;
  return { model, tokenizer: config.tokenizer, valLoss: history?.at(-1)?.valLoss };
}

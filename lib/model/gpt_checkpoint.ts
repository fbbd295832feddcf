/**
 * Saving and loading a GPT as a checkpoint folder: `model.safetensors` with the parameters in the
 * Hugging Face GPT-2 layout, and `config.json` with the model's shape and where it came from.
 *
 * @module
 */
import {
  type Checkpoint,
  CheckpointError,
  type CheckpointTensor,
  loadCheckpoint,
} from "./checkpoint.ts";
import { GPT, type GPTConfig, MLP_NORMS, type MlpNorm, parameterShapes } from "./gpt.ts";

/** What `config.json` of a GPT checkpoint holds. */
export interface GptCheckpointConfig {
  /** Identifies the file's layout, so that other checkpoints are refused with a clear message. */
  format: "scalar-lab/gpt";
  /** The model's shape. */
  model: GPTConfig;
  /** Which tokenizer the model reads: the character tokenizer or GPT-2's BPE. */
  tokenizer: "char" | "gpt2";
  /** Anything else worth keeping with the weights: training settings, corpus checksum, losses. */
  [extra: string]: unknown;
}

const GPT_CONFIG_FIELDS: (keyof GPTConfig)[] = [
  "nLayer",
  "nHead",
  "dModel",
  "dMlp",
  "nCtx",
  "vocabSize",
  "lnEps",
];

/**
 * Converts parameter values to the tensors of a checkpoint.
 *
 * @param c The model shape.
 * @param values Parameter name → values.
 * @returns Name → shaped tensor, ready for `saveCheckpoint`.
 */
export function gptTensors(
  c: GPTConfig,
  values: ReadonlyMap<string, Float32Array>,
): Record<string, CheckpointTensor> {
  const out: Record<string, CheckpointTensor> = {};
  for (const [name, shape] of parameterShapes(c)) out[name] = { shape, data: values.get(name)! };
  return out;
}

/**
 * Checks a checkpoint's `config.json` and parameters against a GPT's layout.
 *
 * @param dir The folder, for messages.
 * @param checkpoint What `loadCheckpoint` returned.
 * @returns The config and the parameter values.
 * @throws {CheckpointError} Naming the field or tensor that is missing or of the wrong shape.
 */
export function readGptCheckpoint(
  dir: string,
  checkpoint: Checkpoint,
): { config: GptCheckpointConfig; values: Map<string, Float32Array> } {
  const fail = (what: string): never => {
    throw new CheckpointError(dir, `Cannot load GPT checkpoint "${dir}": ${what}`);
  };
  const config = checkpoint.config as Partial<GptCheckpointConfig> | null;
  if (config?.format !== "scalar-lab/gpt") {
    fail(
      `config.json has no "format": "scalar-lab/gpt" (is this a GPT checkpoint of this project?)`,
    );
  }
  const model = (config!.model ?? {}) as Record<string, unknown>;
  for (const field of GPT_CONFIG_FIELDS) {
    if (typeof model[field] !== "number" || !(model[field] as number > 0)) {
      fail(`config.json field "model.${field}" must be a positive number, got ${model[field]}`);
    }
  }
  if (model.mlpNorm !== undefined && !MLP_NORMS.includes(model.mlpNorm as MlpNorm)) {
    fail(
      `config.json field "model.mlpNorm" must be one of ${
        MLP_NORMS.join(", ")
      }, got ${model.mlpNorm}`,
    );
  }
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of parameterShapes(model as unknown as GPTConfig)) {
    const t = checkpoint.params[name];
    if (t === undefined) fail(`tensor "${name}" is missing (expected shape [${shape}])`);
    if (t!.shape.join() !== shape.join()) {
      fail(`tensor "${name}" has shape [${t!.shape}], expected [${shape}]`);
    }
    values.set(name, t!.data);
  }
  return { config: config as GptCheckpointConfig, values };
}

/**
 * Loads a GPT from a checkpoint folder.
 *
 * @param dir The folder `saveCheckpoint` wrote.
 * @param trainable Whether the parameters take gradients. @default false
 * @returns The model and its checkpoint config.
 * @throws {CheckpointError} If the folder, a file, a config field or a tensor is missing or wrong.
 */
export async function loadGpt(
  dir: string,
  trainable = false,
): Promise<{ model: GPT; config: GptCheckpointConfig }> {
  const { config, values } = readGptCheckpoint(dir, await loadCheckpoint(dir));
  return { model: new GPT(config.model, values, trainable), config };
}

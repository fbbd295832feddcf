/**
 * The model-training manifest (`deno task train-model experiments/toy-model.yaml`): which GPT to
 * train, on which corpus, with which settings. Defaults are the paper's toy-model recipe.
 *
 * @module
 */
import { BACKEND_CHOICES, type BackendChoice } from "../backend/select.ts";
import { CORPORA } from "../data/corpus.ts";
import { type GPTConfig, MLP_NORMS, type MlpNorm, MODEL_PRESETS } from "../model/gpt.ts";
import {
  FINETUNE_TRAINABLE,
  type FinetuneTrainable,
  LM_TRAIN_DEFAULTS,
  type LmTrainConfig,
} from "../model/train.ts";
import { checkFields, type Rules } from "./fields.ts";
import { ManifestSource } from "./manifest_source.ts";

const d = LM_TRAIN_DEFAULTS;

/** The fields of a model-training manifest. */
export const MODEL_MANIFEST_RULES: Rules = {
  name: {
    type: "string",
    doc: "Run name; the model is saved to results/models/<name>",
    default: "",
  },
  model: {
    type: "object",
    doc: "The model to train",
    fields: {
      kind: { type: "string", doc: "Model family", default: "toy", choices: ["toy"] },
      config: {
        type: "string",
        doc: "Named model shape",
        default: "shakespeare_64x4",
        choices: Object.keys(MODEL_PRESETS),
      },
      mlp_norm: {
        type: "string",
        doc: "ln_2, before each MLP: layernorm, or dyt (DynamicTanh γ·tanh(α·x) + β)",
        default: "layernorm",
        choices: MLP_NORMS,
      },
    },
  },
  finetune: {
    type: "object",
    doc: "Start from a trained checkpoint instead of a fresh model",
    fields: {
      from: {
        type: "string",
        doc: "Checkpoint folder whose weights the model starts from (parameters it lacks, such " +
          "as DynamicTanh's, start fresh); empty: train from scratch",
        default: "",
      },
      trainable: {
        type: "string",
        doc: "Parameters that train: all, or mlp (each block's ln_2 and MLP, the rest frozen, " +
          "as the SCALAR authors' DynamicTanh fine-tune)",
        default: "all",
        choices: Object.keys(FINETUNE_TRAINABLE),
      },
    },
  },
  data: {
    type: "object",
    doc: "Training text",
    fields: {
      corpus: {
        type: "string",
        doc: "Registered corpus",
        default: "tinyshakespeare",
        choices: Object.keys(CORPORA),
      },
    },
  },
  train: {
    type: "object",
    doc: "Optimisation settings",
    fields: {
      steps: { type: "number", doc: "Optimizer steps", default: d.steps, min: 1, integer: true },
      batch: { type: "number", doc: "Sequences per step", default: d.batch, min: 1, integer: true },
      lr: { type: "number", doc: "Peak learning rate", default: d.lr, min: 0, exclusiveMin: true },
      min_lr: { type: "number", doc: "Final learning rate", default: d.minLr, min: 0 },
      warmup: { type: "number", doc: "Warm-up steps", default: d.warmup, min: 0, integer: true },
      weight_decay: { type: "number", doc: "AdamW weight decay", default: d.weightDecay, min: 0 },
      beta1: { type: "number", doc: "AdamW β₁", default: d.beta1, min: 0, max: 0.999999 },
      beta2: { type: "number", doc: "AdamW β₂", default: d.beta2, min: 0, max: 0.999999 },
      grad_clip: {
        type: "number",
        doc: "Global gradient-norm limit",
        default: d.gradClip,
        min: 0,
        exclusiveMin: true,
      },
      micro_batch: {
        type: "number",
        doc: "Sequences per forward/backward pass (memory only; the step is the same)",
        default: d.microBatch,
        min: 1,
        integer: true,
      },
      eval_every: {
        type: "number",
        doc: "Steps between validation losses",
        default: d.evalEvery,
        min: 1,
        integer: true,
      },
      eval_sequences: {
        type: "number",
        doc: "Validation sequences per evaluation (0 = all)",
        default: d.evalSequences,
        min: 0,
        integer: true,
      },
      checkpoint_every: {
        type: "number",
        doc: "Steps between checkpoints",
        default: d.checkpointEvery,
        min: 1,
        integer: true,
      },
      log_every: {
        type: "number",
        doc: "Steps between progress lines",
        default: d.logEvery,
        min: 1,
        integer: true,
      },
    },
  },
  seed: { type: "number", doc: "Initialisation seed", default: 0, integer: true },
  backend: {
    type: "string",
    doc: "Backend (auto picks the fastest present)",
    default: "auto",
    choices: BACKEND_CHOICES,
  },
};

/** A checked model-training manifest. */
export interface ModelManifest {
  /** Run name. */
  name: string;
  /** Model preset name. */
  preset: string;
  /** The model's shape. */
  model: GPTConfig;
  /** Registered corpus name. */
  corpus: string;
  /** The checkpoint to start from and what trains; absent: a fresh model, all of it trained. */
  finetune?: { from: string; trainable: FinetuneTrainable };
  /** Training settings. */
  train: LmTrainConfig;
  /** Backend the manifest asks for. */
  backend: BackendChoice;
}

/**
 * Reads and checks a model-training manifest.
 *
 * @param file Path of the YAML file.
 * @returns The checked manifest with defaults filled in.
 * @throws {ManifestError} With every problem, each at its line and column.
 */
export async function loadModelManifest(file: string): Promise<ModelManifest> {
  const src = await ManifestSource.read(file);
  src.throwIfProblems();
  const v = checkFields(src, src.data, MODEL_MANIFEST_RULES);
  if (!v.name) src.problem("name", "a name is required (it names the output folder)");
  src.throwIfProblems();
  const model = v.model as Record<string, string>;
  const t = v.train as Record<string, number>;
  const finetune = v.finetune as { from: string; trainable: FinetuneTrainable };
  if (!finetune.from && finetune.trainable !== "all") {
    src.problem("finetune.trainable", "freezing parameters needs finetune.from (a trained model)");
    src.throwIfProblems();
  }
  const mlpNorm = model.mlp_norm as MlpNorm;
  return {
    name: v.name as string,
    preset: model.config!,
    // LayerNorm models keep the preset's fields exactly, so their checkpoints stay as they were.
    model: { ...MODEL_PRESETS[model.config!]!, ...(mlpNorm === "layernorm" ? {} : { mlpNorm }) },
    corpus: (v.data as Record<string, string>).corpus!,
    ...(finetune.from ? { finetune } : {}),
    train: {
      steps: t.steps!,
      batch: t.batch!,
      lr: t.lr!,
      minLr: t.min_lr!,
      warmup: t.warmup!,
      weightDecay: t.weight_decay!,
      beta1: t.beta1!,
      beta2: t.beta2!,
      gradClip: t.grad_clip!,
      microBatch: t.micro_batch!,
      evalEvery: t.eval_every!,
      evalSequences: t.eval_sequences!,
      checkpointEvery: t.checkpoint_every!,
      logEvery: t.log_every!,
      seed: v.seed as number,
    },
    backend: v.backend as BackendChoice,
  };
}

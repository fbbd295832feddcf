/**
 * The features of a trained run's SAEs, as a person reads them: each feature's density on the
 * validation split and the contexts where it fires most strongly. `deno task features` prints
 * this; the HTML report's feature browser shows it for every SAE of an experiment.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { CorpusError } from "../data/corpus.ts";
import { type Dataset, loadDataset, TOKENIZERS } from "../data/dataset.ts";
import { CheckpointError } from "../model/checkpoint.ts";
import type { GPT } from "../model/gpt.ts";
import { loadModel } from "../model/load.ts";
import { type FeatureActivation, formatContext, topActivations } from "../sae/features.ts";
import { loadSaes, type SaeCheckpointConfig } from "../sae/sae_checkpoint.ts";
import type { SaeSet } from "../sae/architectures.ts";
import type { SaeWeights } from "../sae/sae.ts";

/** Characters of context shown before and after an activating token. */
export const CONTEXT = { before: 32, after: 16 };

/** Feature activations held at once per forward pass (tokens × features), about 32 MiB. */
const BATCH_ACTIVATIONS = 1 << 23;

/** One top activation with its text. */
export interface FeatureContext extends FeatureActivation {
  /** The token's text. */
  token: string;
  /** Up to {@link CONTEXT}`.before` characters before it (within its sequence). */
  before: string;
  /** Up to {@link CONTEXT}`.after` characters after it. */
  after: string;
  /** The one-line snippet with the token marked `⟦ ⟧` (as `features` prints it). */
  context: string;
}

/** The inspected features of one SAE. */
export interface SaeFeatures {
  /** The hook the SAE reads. */
  hook: string;
  /** Its architecture. */
  arch: string;
  /** Its number of features. */
  width: number;
  /** Its TopK k. */
  k: number;
  /** Validation sequences read. */
  sequences: number;
  /** Tokens per sequence. */
  seqLen: number;
  /** Tokens read. */
  tokens: number;
  /** Per inspected feature: density, count and top contexts, strongest first. */
  features: { feature: number; density: number; count: number; top: FeatureContext[] }[];
}

/** What to inspect of one SAE. */
export interface InspectOptions {
  /** The SAE's hook. */
  hook: string;
  /** Contexts per feature. */
  top: number;
  /** Validation sequences to read. @default all that fit */
  sequences?: number;
  /** Only these features. @default every feature */
  features?: number[];
  /** Called after each batch with the sequences done, for a heartbeat. */
  onBatch?: (done: number, total: number) => void;
}

/**
 * A trained run's SAEs opened for inspection: the hooks and widths are known at once (to check a
 * request), the model and corpus are loaded at the first {@link RunFeatures.inspect} and kept for
 * the next. Call {@link RunFeatures.dispose} when done.
 */
export class RunFeatures {
  #loaded?: { model: GPT; corpus: Dataset };

  private constructor(
    /** The SAE checkpoint folder. */
    readonly dir: string,
    /** The SAEs. */
    readonly saes: SaeSet,
    /** Their checkpoint's config (model folder, corpus, position). */
    readonly config: SaeCheckpointConfig,
  ) {}

  /**
   * Opens a run's SAE folder.
   *
   * @param dir A trained run's SAE checkpoint folder (`results/runs/<id>/saes`).
   * @returns The opened run.
   * @throws {CheckpointError} If the folder holds no SAEs, or its config lacks the model folder
   *   and corpus (written by an older trainer).
   *
   * @example
   * ```ts ignore
   * const run = await RunFeatures.open("results/runs/0123456789ab/saes");
   * try {
   *   const f = await run.inspect({ hook: run.saes.hooks[0]!, top: 5 });
   *   console.log(f.features[0]!.top[0]!.context);
   * } finally {
   *   run.dispose();
   * }
   * ```
   */
  static async open(dir: string): Promise<RunFeatures> {
    const { saes, config } = await loadSaes(dir);
    // loadSaes checks the parameters, not the provenance inspection also needs.
    if (
      typeof config.modelDir !== "string" || typeof config.corpus?.name !== "string" ||
      typeof config.corpus?.sha256 !== "string"
    ) {
      saes.dispose();
      throw new CheckpointError(
        dir,
        `Cannot inspect features of "${dir}": config.json lacks "modelDir" or ` +
          `"corpus": { "name", "sha256" } (was the run written by this project's SAE trainer?)`,
      );
    }
    return new RunFeatures(dir, saes, config);
  }

  /** The model and the corpus, loaded once and checked against what the SAEs were trained on. */
  async #load(): Promise<{ model: GPT; corpus: Dataset }> {
    if (this.#loaded) return this.#loaded;
    const { dir, config } = this;
    const { model, tokenizer } = await loadModel(config.modelKind ?? "toy", config.modelDir);
    try {
      const data = config.data ?? { corpus: config.corpus.name };
      const corpus = await loadDataset(data, TOKENIZERS[tokenizer]);
      if (corpus.sha256 !== config.corpus.sha256) {
        throw new CorpusError(
          `Cannot inspect features of "${dir}": corpus "${corpus.name}" read with the ` +
            `${tokenizer} tokenizer has key ${corpus.sha256}, but the SAEs were trained on ` +
            `${config.corpus.sha256} (its files changed since)`,
        );
      }
      if (model.config.dModel !== config.d || model.config.nLayer !== config.nLayer) {
        throw new CheckpointError(
          config.modelDir,
          `Cannot inspect features of "${dir}": model "${config.modelDir}" has ` +
            `${model.config.nLayer} layers of width ${model.config.dModel}, the SAEs were ` +
            `trained on ${config.nLayer} of width ${config.d}`,
        );
      }
      return (this.#loaded = { model, corpus });
    } catch (e) {
      model.dispose();
      throw e;
    }
  }

  /**
   * The validation sequences available to {@link RunFeatures.inspect}.
   *
   * @returns Whole sequences of the model's context length in the validation split.
   */
  async availableSequences(): Promise<number> {
    const { model, corpus } = await this.#load();
    // The evaluation batches read one token past the windows (the next-token target).
    return Math.floor((corpus.val.length - 1) / model.config.nCtx);
  }

  /**
   * Each requested feature's density and top-activating contexts on the validation split.
   *
   * @param o The hook, the number of contexts, and optionally the sequences and features.
   * @returns The features, in index order.
   * @throws {RangeError} If more sequences are asked for than the split holds.
   */
  async inspect(o: InspectOptions): Promise<SaeFeatures> {
    const { model, corpus } = await this.#load();
    const seqLen = model.config.nCtx, width = this.saes.width(o.hook);
    const available = await this.availableSequences();
    if (o.sequences !== undefined && o.sequences > available) {
      throw new RangeError(
        `Cannot read ${o.sequences} sequences: the validation split holds ${available} ` +
          `sequences of ${seqLen} tokens`,
      );
    }
    const sequences = o.sequences ?? available;
    // The weights of Staircase SAEs are slices made on request: clones taken in one scope free
    // those slices when disposed and leave the variables of plain SAEs untouched.
    const weights = tf.tidy(() => {
      const w = this.saes.weights(o.hook);
      return {
        wEnc: w.wEnc.clone(),
        bEnc: w.bEnc.clone(),
        wDec: w.wDec.clone(),
        bDec: w.bDec.clone(),
      };
    }) as SaeWeights;
    try {
      const result = await topActivations({
        model,
        weights,
        k: this.saes.k,
        hook: o.hook,
        tokens: corpus.val,
        sequences,
        batchSequences: Math.max(1, Math.min(64, Math.floor(BATCH_ACTIVATIONS / (seqLen * width)))),
        top: o.top,
        features: o.features,
        onBatch: o.onBatch && ((done) => o.onBatch!(done, sequences)),
      });
      const context = contextReader(corpus, seqLen);
      return {
        hook: o.hook,
        arch: this.saes.arch,
        width,
        k: this.saes.k,
        sequences,
        seqLen,
        tokens: result.tokens,
        features: result.features.map((f) => ({ ...f, top: f.top.map(context) })),
      };
    } finally {
      for (const t of Object.values(weights)) (t as tf.Tensor).dispose();
    }
  }

  /** Frees the SAEs and, if loaded, the model. */
  dispose(): void {
    this.saes.dispose();
    this.#loaded?.model.dispose();
  }
}

/** Turns an activation into its text; contexts are decoded token by token (a BPE token whole). */
function contextReader(corpus: Dataset, seqLen: number): (a: FeatureActivation) => FeatureContext {
  const val = corpus.val;
  const piece = (id: number) => corpus.tokenizer.decode([id]);
  return (a) => {
    const start = a.sequence * seqLen;
    const ids = val.subarray(start, Math.min(val.length, start + seqLen + CONTEXT.after));
    const pieces = Array.from(ids, piece);
    const at = pieces.slice(0, a.position).join("").length;
    const text = pieces.join("");
    const token = pieces[a.position]!;
    return {
      ...a,
      token,
      before: text.slice(Math.max(0, at - CONTEXT.before), at),
      after: text.slice(at + token.length, at + token.length + CONTEXT.after),
      context: formatContext(text, at, CONTEXT, Math.max(1, token.length)),
    };
  };
}

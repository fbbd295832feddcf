/**
 * `features CHECKPOINT --sae HOOK`: the interpretability check. Prints, for the features of one
 * SAE of a trained run, how often each fires on the validation split and the contexts where it
 * fires most strongly.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { backendChoiceFrom, describeBackend, selectBackend } from "../backend/select.ts";
import { CorpusError } from "../data/corpus.ts";
import { loadDataset, TOKENIZERS } from "../data/dataset.ts";
import { CheckpointError } from "../model/checkpoint.ts";
import { loadModel } from "../model/load.ts";
import { type FeatureActivation, formatContext, topActivations } from "../sae/features.ts";
import { loadSaes } from "../sae/sae_checkpoint.ts";
import type { SaeWeights } from "../sae/sae.ts";
import { Progress } from "../util/progress.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";

/** Characters of context shown before and after an activating character. */
const CONTEXT = { before: 32, after: 16 };

/** Feature activations held at once per forward pass (tokens × features), about 32 MiB. */
const BATCH_ACTIVATIONS = 1 << 23;

/** The `features` command. */
export const featuresCommand: Command = {
  summary: "show an SAE's features: density and top-activating contexts on the validation split",
  help: `Usage: deno task features CHECKPOINT --sae HOOK [--feature N] [--top 20] [--sequences N]
                              [--format text|json] [--backend NAME]

Runs the run's model over the validation split, encodes the activations at HOOK with the run's
SAE there, and prints for each feature (by index, or only those named with --feature) its density
(the fraction of tokens where it is active) and the contexts where it is most active, e.g.

  feature 17: density 1.23% (1374 of 111616 tokens)
      3.214  seq 12 pos 40    …the k⟦i⟧ng's…

The marked text is the token the activation was read at; the context before it stops at the
start of its sequence (all the model read), the context after it is for reading only. Line breaks
show as ⏎. Ties rank the earlier token first.

CHECKPOINT is a trained run's SAE folder; the model is loaded from the folder its config.json
names (modelDir), and the corpus must have the sha256 the SAEs were trained on.

Options:
  --sae HOOK       the SAE to inspect, by hook name (an unknown name lists the run's hooks)
  --feature N      inspect only feature N (repeatable; default: every feature)
  --top N          contexts per feature (default 20)
  --sequences N    validation sequences to read (default: all that fit)
  --format F       text (default) or json: one JSON document for tools
  --backend NAME   auto | tensorflow | webgpu | wasm | cpu (default: $SCALAR_BACKEND, then auto)
  -h, --help       show this help

Environment:
  SCALAR_DATA_DIR  folder holding tinyshakespeare.txt (else the cache, else a download)`,
  async run(args) {
    const { values, positionals } = parseCommandArgs(args, {
      sae: { type: "string" },
      feature: { type: "string", multiple: true },
      top: { type: "string" },
      sequences: { type: "string" },
      format: { type: "string" },
      backend: { type: "string" },
    });
    if (positionals.length !== 1) {
      throw new UsageError("expected exactly one CHECKPOINT folder (a trained run's SAE folder)");
    }
    const dir = positionals[0]!;
    const format = values.format ?? "text";
    if (format !== "text" && format !== "json") {
      throw new UsageError(`Cannot use --format "${format}": expected text or json`);
    }
    const top = positiveInteger(values.top ?? "20", "--top");
    const sequencesWanted = values.sequences === undefined
      ? undefined
      : positiveInteger(values.sequences, "--sequences");

    const backend = await selectBackend(backendChoiceFrom(values.backend, "auto"));
    console.error(describeBackend(backend));
    const { saes, config } = await loadSaes(dir);
    try {
      // Usage mistakes are reported before the corpus and the model are read.
      const hooks = saes.hooks.map((h) => `"${h}"`).join(", ");
      if (values.sae === undefined) {
        throw new UsageError(`missing --sae HOOK; the SAEs of "${dir}" sit at ${hooks}`);
      }
      const hook = values.sae;
      if (!saes.hooks.includes(hook)) {
        throw new UsageError(
          `Cannot inspect SAE "${hook}": run "${dir}" has no SAE there; its hooks: ${hooks}`,
        );
      }
      const width = saes.width(hook);
      const features = values.feature?.map((text) => {
        const n = Number(text);
        if (text.trim() === "" || !Number.isInteger(n) || n < 0 || n >= width) {
          throw new UsageError(
            `Cannot inspect feature "${text}": the SAE at "${hook}" has features 0–${width - 1}`,
          );
        }
        return n;
      });

      // loadSaes checks the parameters, not the provenance this command also needs.
      if (
        typeof config.modelDir !== "string" || typeof config.corpus?.name !== "string" ||
        typeof config.corpus?.sha256 !== "string"
      ) {
        throw new CheckpointError(
          dir,
          `Cannot inspect features of "${dir}": config.json lacks "modelDir" or ` +
            `"corpus": { "name", "sha256" } (was the run written by this project's SAE trainer?)`,
        );
      }
      const { model, tokenizer } = await loadModel(config.modelKind ?? "toy", config.modelDir);
      const data = config.data ?? { corpus: config.corpus.name };
      const corpus = await loadDataset(data, TOKENIZERS[tokenizer]);
      if (corpus.sha256 !== config.corpus.sha256) {
        model.dispose();
        throw new CorpusError(
          `Cannot inspect features of "${dir}": corpus "${corpus.name}" read with the ` +
            `${tokenizer} tokenizer has key ${corpus.sha256}, but the SAEs were trained on ` +
            `${config.corpus.sha256} (its files changed since)`,
        );
      }
      // The weights of Staircase SAEs are slices made on request: clones taken in one scope
      // free those slices when disposed and leave the variables of plain SAEs untouched.
      const weights = tf.tidy(() => {
        const w = saes.weights(hook);
        return {
          wEnc: w.wEnc.clone(),
          bEnc: w.bEnc.clone(),
          wDec: w.wDec.clone(),
          bDec: w.bDec.clone(),
        };
      }) as SaeWeights;
      try {
        const seqLen = model.config.nCtx;
        if (model.config.dModel !== config.d || model.config.nLayer !== config.nLayer) {
          throw new CheckpointError(
            config.modelDir,
            `Cannot inspect features of "${dir}": model "${config.modelDir}" has ` +
              `${model.config.nLayer} layers of width ${model.config.dModel}, the SAEs were ` +
              `trained on ${config.nLayer} of width ${config.d}`,
          );
        }
        const val = corpus.val;
        // evalBatches reads one token past the windows (the next-token target).
        const available = Math.floor((val.length - 1) / seqLen);
        if (sequencesWanted !== undefined && sequencesWanted > available) {
          throw new UsageError(
            `Cannot read --sequences ${sequencesWanted}: the validation split holds ${available} ` +
              `sequences of ${seqLen} tokens`,
          );
        }
        const sequences = sequencesWanted ?? available;
        const batchSequences = Math.max(
          1,
          Math.min(64, Math.floor(BATCH_ACTIVATIONS / (seqLen * width))),
        );
        const progress = new Progress(sequences, 0, seqLen, "tok");
        let lastReport = performance.now();
        const result = await topActivations({
          model,
          weights,
          k: saes.k,
          hook,
          tokens: val,
          sequences,
          batchSequences,
          top,
          features,
          onBatch(done) {
            // A line every 10 s: silent on the toy model, a heartbeat on GPT-2.
            if (done < sequences && performance.now() - lastReport > 10_000) {
              progress.report(done, `${done} of ${sequences} sequences`);
              lastReport = performance.now();
            }
          },
        });

        // Contexts are decoded token by token, so a marked BPE token keeps its whole text.
        const piece = (id: number) => corpus.tokenizer.decode([id]);
        const context = (a: FeatureActivation) => {
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
        const header = {
          checkpoint: dir,
          hook,
          arch: saes.arch,
          width,
          k: saes.k,
          model: config.modelDir,
          corpus: { name: corpus.name, sha256: corpus.sha256 },
          split: "validation",
          sequences,
          seqLen,
          tokens: result.tokens,
        };
        if (format === "json") {
          const features = result.features.map((f) => ({ ...f, top: f.top.map(context) }));
          console.log(JSON.stringify({ ...header, features }));
          return 0;
        }
        console.log(
          `SAE at ${hook} of ${dir}: ${saes.arch}, ${width} features, k ${saes.k}; model ` +
            `${config.modelDir}; ${sequences} validation sequences × ${seqLen} tokens ` +
            `(${result.tokens} tokens) of ${corpus.name}`,
        );
        const seqWidth = String(sequences - 1).length, posWidth = String(seqLen - 1).length;
        for (const f of result.features) {
          console.log(
            `\nfeature ${f.feature}: density ${percent(f.density)} ` +
              `(${f.count} of ${result.tokens} tokens)`,
          );
          if (f.top.length === 0) console.log("  never active");
          for (const a of f.top) {
            console.log(
              `  ${a.value.toFixed(3).padStart(8)}  seq ${String(a.sequence).padStart(seqWidth)} ` +
                `pos ${String(a.position).padStart(posWidth)}  ${context(a).context}`,
            );
          }
        }
        return 0;
      } finally {
        for (const t of Object.values(weights)) (t as tf.Tensor).dispose();
        model.dispose();
      }
    } finally {
      saes.dispose();
    }
  },
};

/** Formats a fraction as a percentage with three significant digits (`0.00896%`). */
function percent(x: number): string {
  return x === 0 ? "0%" : `${(100 * x).toPrecision(3)}%`;
}

/** Parses a flag's value as a positive integer, else a usage error naming the flag. */
function positiveInteger(text: string, flag: string): number {
  const n = Number(text);
  if (text.trim() === "" || !Number.isSafeInteger(n) || n <= 0) {
    throw new UsageError(`Cannot use ${flag} "${text}": expected a positive integer`);
  }
  return n;
}

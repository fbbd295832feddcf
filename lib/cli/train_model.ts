/**
 * `train-model MANIFEST`: trains the GPT a model manifest describes, resuming where an interrupted
 * run stopped.
 *
 * @module
 */
import { backendChoiceFrom, describeBackend, selectBackend } from "../backend/select.ts";
import { encodeChars } from "../data/char_tokenizer.ts";
import { resolveCorpus } from "../data/corpus.ts";
import { splitTrainVal } from "../data/split.ts";
import { loadModelManifest } from "../experiment/model_manifest.ts";
import { countParameters } from "../model/gpt.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";
import { readGptCheckpoint } from "../model/gpt_checkpoint.ts";
import { FINETUNE_TRAINABLE, finetuneValues, trainLm } from "../model/train.ts";
import { formatCount } from "../util/progress.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";

/** The `train-model` command. */
export const trainModelCommand: Command = {
  summary: "train the toy GPT a model manifest describes (resumes when interrupted)",
  help: `Usage: deno task train-model MANIFEST [--backend NAME] [--out DIR]

Trains the model of a model manifest (e.g. experiments/toy-model.yaml) and saves it as a
checkpoint folder (model.safetensors + config.json). With finetune.from it starts from that
checkpoint's weights instead (e.g. experiments/toy-model-dyt.yaml: ln_2 replaced by DynamicTanh,
only ln_2 and the MLPs trained). Checkpoints are written every train.checkpoint_every steps; Ctrl-C finishes the current step and saves one. Running the same
command again resumes from the last checkpoint; a finished model is not trained again.

Options:
  --backend NAME  auto | tensorflow | webgpu | wasm | cpu (default: $SCALAR_BACKEND, then the
                  manifest's backend, then auto)
  --out DIR       checkpoint folder (default: results/models/<name>)
  -h, --help      show this help

Environment:
  SCALAR_DATA_DIR  folder holding tinyshakespeare.txt (else the cache, else a download)`,
  async run(args) {
    const { values, positionals } = parseCommandArgs(args, {
      backend: { type: "string" },
      out: { type: "string" },
    });
    if (positionals.length !== 1) throw new UsageError("expected exactly one MANIFEST path");
    const manifest = await loadModelManifest(positionals[0]!);
    const backend = await selectBackend(backendChoiceFrom(values.backend, manifest.backend));
    console.error(describeBackend(backend));
    const corpus = await resolveCorpus(manifest.corpus);
    const tokens = splitTrainVal(encodeChars(corpus.text));
    console.error(
      `corpus ${corpus.name}: ${corpus.text.length} characters from ${corpus.path} ` +
        `(${tokens.train.length} train / ${tokens.val.length} validation tokens); model ` +
        `${manifest.preset}: ${countParameters(manifest.model)} parameters`,
    );
    const outDir = values.out ?? `results/models/${manifest.name}`;
    const ft = manifest.finetune;
    let start;
    if (ft !== undefined) {
      const base = readGptCheckpoint(ft.from, await loadCheckpoint(ft.from));
      start = {
        values: finetuneValues(
          { config: base.config.model, values: base.values },
          manifest.model,
          manifest.train.seed,
        ),
        trainable: FINETUNE_TRAINABLE[ft.trainable],
      };
      console.error(`fine-tuning ${ft.from} (trained: ${ft.trainable})`);
    }

    const abort = new AbortController();
    const onInterrupt = () => {
      if (abort.signal.aborted) Deno.exit(130);
      console.error(
        "\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to quit)",
      );
      abort.abort();
    };
    Deno.addSignalListener("SIGINT", onInterrupt);
    try {
      const result = await trainLm({
        model: manifest.model,
        train: manifest.train,
        tokens,
        outDir,
        provenance: {
          tokenizer: "char",
          name: manifest.name,
          preset: manifest.preset,
          corpus: { name: corpus.name, sha256: corpus.sha256 },
          backend: backend.detail,
          ...(ft ? { finetune: ft } : {}),
        },
        start,
        signal: abort.signal,
      });
      if (Number.isFinite(result.tokensPerSecond)) {
        console.error(
          `throughput: ${formatCount(result.tokensPerSecond)} tokens/s on ${backend.detail}`,
        );
      }
      return result.interrupted ? 130 : 0;
    } finally {
      Deno.removeSignalListener("SIGINT", onInterrupt);
    }
  },
};

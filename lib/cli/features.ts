/**
 * `features RUN --sae HOOK`: the interpretability check. Prints, for the features of one
 * SAE of a trained run, how often each fires on the validation split and the contexts where it
 * fires most strongly.
 *
 * @module
 */
import { backendChoiceFrom, describeBackend, selectBackend } from "../backend/select.ts";
import { RunFeatures, type SaeFeatures } from "../experiment/inspect_features.ts";
import { Progress } from "../util/progress.ts";
import { type Command, parseCommandArgs, UsageError } from "./args.ts";

/** Where the runner writes run folders (`results/runs/<id>/`). */
const RUNS_ROOT = "results/runs";

/** The `features` command. */
export const featuresCommand: Command = {
  summary: "show an SAE's features: density and top-activating contexts on the validation split",
  help: `Usage: deno task features RUN --sae HOOK [--feature N] [--top 20] [--sequences N]
                       [--format text|json] [--backend NAME]

Runs the run's model over the validation split, encodes the activations at HOOK with the run's
SAE there, and prints for each feature (by index, or only those named with --feature) its density
(the fraction of tokens where it is active) and the contexts where it is most active, e.g.

  feature 17: density 1.23% (1374 of 111616 tokens)
      3.214  seq 12 pos 40    …the k⟦i⟧ng's…

The marked text is the token the activation was read at; the context before it stops at the
start of its sequence (all the model read), the context after it is for reading only. Line breaks
show as ⏎. Ties rank the earlier token first.

RUN is a run id (or a prefix of one that only one run has), a run folder, or a trained run's SAE
folder; the model is loaded from the folder its config.json names (modelDir), and the corpus must
have the sha256 the SAEs were trained on.

Options:
  --sae HOOK       the SAE to inspect, by hook name (an unknown name lists the run's hooks)
  --feature N      inspect only feature N (repeatable; default: every feature)
  --top N          contexts per feature (default 20)
  --sequences N    validation sequences to read (default: all that fit)
  --format F       text (default) or json: one JSON document for tools
  --backend NAME   auto | tensorflow | webgpu | wasm | cpu (default: $SCALAR_BACKEND, then auto)
  -h, --help       show this help

Environment:
  SCALAR_DATA_DIR  folder holding tinyshakespeare.txt (else the copy in data/)`,
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
      throw new UsageError("expected exactly one RUN (a run id, an id prefix or an SAE folder)");
    }
    const format = values.format ?? "text";
    if (format !== "text" && format !== "json") {
      throw new UsageError(`Cannot use --format "${format}": expected text or json`);
    }
    const top = positiveInteger(values.top ?? "20", "--top");
    const sequencesWanted = values.sequences === undefined
      ? undefined
      : positiveInteger(values.sequences, "--sequences");
    const dir = await resolveRunDir(positionals[0]!);

    const backend = await selectBackend(backendChoiceFrom(values.backend, "auto"));
    console.error(describeBackend(backend));
    const run = await RunFeatures.open(dir);
    try {
      const { hook, features } = checkRequest(run, dir, values.sae, values.feature);
      if (sequencesWanted !== undefined && sequencesWanted > await run.availableSequences()) {
        throw new UsageError(
          `Cannot read --sequences ${sequencesWanted}: the validation split holds ` +
            `${await run.availableSequences()} sequences`,
        );
      }
      let progress: Progress | undefined;
      let lastReport = performance.now();
      const result = await run.inspect({
        hook,
        top,
        sequences: sequencesWanted,
        features,
        onBatch(done, total) {
          // A line every 10 s: silent on the toy model, a heartbeat on GPT-2.
          progress ??= new Progress(total, 0, 1, "seq");
          if (done < total && performance.now() - lastReport > 10_000) {
            progress.report(done, `${done} of ${total} sequences`);
            lastReport = performance.now();
          }
        },
      });
      const header = {
        checkpoint: dir,
        hook,
        arch: result.arch,
        width: result.width,
        k: result.k,
        model: run.config.modelDir,
        corpus: run.config.corpus,
        split: "validation",
        sequences: result.sequences,
        seqLen: result.seqLen,
        tokens: result.tokens,
      };
      if (format === "json") {
        console.log(JSON.stringify({ ...header, features: result.features }));
        return 0;
      }
      printFeatures(result, dir, run.config.modelDir, run.config.corpus.name);
      return 0;
    } finally {
      run.dispose();
    }
  },
};

/** Checks `--sae` and `--feature` against the run's SAEs, before the model and corpus are read. */
function checkRequest(
  run: RunFeatures,
  dir: string,
  sae: string | undefined,
  feature: string[] | undefined,
): { hook: string; features?: number[] } {
  const hooks = run.saes.hooks.map((h) => `"${h}"`).join(", ");
  if (sae === undefined) {
    throw new UsageError(`missing --sae HOOK; the SAEs of "${dir}" sit at ${hooks}`);
  }
  if (!run.saes.hooks.includes(sae)) {
    throw new UsageError(
      `Cannot inspect SAE "${sae}": run "${dir}" has no SAE there; its hooks: ${hooks}`,
    );
  }
  const width = run.saes.width(sae);
  const features = feature?.map((text) => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isInteger(n) || n < 0 || n >= width) {
      throw new UsageError(
        `Cannot inspect feature "${text}": the SAE at "${sae}" has features 0–${width - 1}`,
      );
    }
    return n;
  });
  return { hook: sae, features };
}

/** The text form: a header line, then per feature its density and one line per context. */
function printFeatures(r: SaeFeatures, dir: string, modelDir: string, corpus: string): void {
  console.log(
    `SAE at ${r.hook} of ${dir}: ${r.arch}, ${r.width} features, k ${r.k}; model ` +
      `${modelDir}; ${r.sequences} validation sequences × ${r.seqLen} tokens ` +
      `(${r.tokens} tokens) of ${corpus}`,
  );
  const seqWidth = String(r.sequences - 1).length, posWidth = String(r.seqLen - 1).length;
  for (const f of r.features) {
    console.log(
      `\nfeature ${f.feature}: density ${percent(f.density)} (${f.count} of ${r.tokens} tokens)`,
    );
    if (f.top.length === 0) console.log("  never active");
    for (const a of f.top) {
      console.log(
        `  ${a.value.toFixed(3).padStart(8)}  seq ${String(a.sequence).padStart(seqWidth)} ` +
          `pos ${String(a.position).padStart(posWidth)}  ${a.context}`,
      );
    }
  }
}

/**
 * The SAE folder a RUN argument names: a folder holding `config.json` (an SAE folder) as is, a run
 * folder by its `saes/`, else a run id or an unambiguous prefix of one under `results/runs/`.
 *
 * @param arg What the user typed.
 * @param runsRoot Where run folders live. @default "results/runs"
 * @returns The SAE checkpoint folder.
 * @throws {UsageError} If nothing matches, or a prefix matches several runs (listing them).
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { resolveRunDir } from "./features.ts";
 *
 * const root = Deno.makeTempDirSync();
 * Deno.mkdirSync(`${root}/0a1b2c3d4e5f/saes`, { recursive: true });
 * equal(await resolveRunDir("0a1b", root), `${root}/0a1b2c3d4e5f/saes`);
 * Deno.removeSync(root, { recursive: true });
 * ```
 */
export async function resolveRunDir(arg: string, runsRoot = RUNS_ROOT): Promise<string> {
  for (const dir of [arg, `${arg}/saes`]) {
    if (await isFile(`${dir}/config.json`)) return dir;
  }
  let ids: string[] = [];
  try {
    ids = [...Deno.readDirSync(runsRoot)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const matches = arg === "" || arg.includes("/")
    ? []
    : ids.filter((id) => id.startsWith(arg)).sort();
  if (matches.length === 1) return `${runsRoot}/${matches[0]}/saes`;
  if (matches.length > 1) {
    throw new UsageError(
      `Cannot choose a run: "${arg}" begins ${matches.length} run ids (${matches.join(", ")}); ` +
        "type more of the id",
    );
  }
  throw new UsageError(
    `Cannot find run "${arg}": not an SAE folder, nor a run id (or id prefix) under ` +
      `${runsRoot}/ (see: deno task query "select id, experiment, status from runs")`,
  );
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

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

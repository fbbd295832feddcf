/**
 * The experiment manifest (`deno task run experiments/toy-mlp.yaml`): one YAML file that declares a
 * grid of SAE runs. Its fields give one run's settings (defaults are the paper's); its `matrix`
 * varies any of them by dotted path (`matrix.ts`), and every run of the grid gets an id that hashes
 * its fully resolved configuration, so a finished run is recognised when the manifest is run again.
 *
 * Everything is checked before any work starts: each field against its rule (`fields.ts`), each
 * matrix value against the rule of the field it varies, and each expanded run as a whole (e.g. no
 * `jsae` at `block`, a trained model in `model.checkpoint`). All problems of a file are reported
 * together, each with its file, line, column and field.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { basename, normalize } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import { BACKEND_CHOICES, type BackendChoice } from "../backend/select.ts";
import { CORPORA, defaultCacheDir } from "../data/corpus.ts";
import { corpusSourcesSha256 } from "../data/text_corpus.ts";
import { cachedSha256File } from "../util/sha256_file.ts";
import { type GPTConfig, MODEL_PRESETS } from "../model/gpt.ts";
import { GPT2_FILES, gpt2DownloadHint, gptConfigFromHf } from "../model/gpt2.ts";
import { MODEL_KINDS } from "../model/load.ts";
import { shippedModelProblem } from "../model/shipped.ts";
import { ArchitectureError, ARCHITECTURES, checkArchitecture } from "../sae/architectures.ts";
import type { Architecture } from "../sae/architectures.ts";
import { layersProblem, type Position, POSITIONS } from "../sae/positions.ts";
import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
import { checkFields, type NumberRule, type Rules } from "./fields.ts";
import { ManifestSource, readManifestText } from "./manifest_source.ts";
import {
  type Combination,
  expandMatrix,
  type MatrixOrigin,
  type MatrixRule,
  type MatrixValue,
  readMatrix,
} from "./matrix.ts";
import { type SaeRunConfig, SCALAR_DEFAULTS } from "./sae_run.ts";

const t = SAE_TRAIN_DEFAULTS;
const s = SCALAR_DEFAULTS;

/** The paper's toy model as shipped (trained by `experiments/toy-model.yaml`, see models/README.md). */
export const DEFAULT_CHECKPOINT = "models/toy-model";

/** The edge-count grids SCALAR can measure at (the reference's 35 counts, `EDGE_COUNTS`). */
export const EDGE_GRIDS = ["log2-half"] as const;

/** The rule of a seed (`seeds` items and the matrix's `seed`): createRng reads 32-bit integers. */
const SEED_RULE = { type: "number", integer: true, min: 0, max: 2 ** 31 - 1 } as const;

/** The fields of an experiment manifest. */
export const MANIFEST_RULES: Rules = {
  name: {
    type: "string",
    doc: "Experiment name: its runs are stored under it in the results database",
    default: "",
    required: true,
    pattern: "[A-Za-z0-9][A-Za-z0-9._-]*",
  },
  model: {
    type: "object",
    doc: "The trained model whose activations the SAEs learn",
    fields: {
      kind: {
        type: "string",
        doc: "Model family: toy (a model trained by deno task train-model) or gpt2 (a Hugging " +
          "Face GPT-2 folder, any size)",
        default: "toy",
        choices: MODEL_KINDS,
      },
      checkpoint: {
        type: "string",
        doc: "kind toy: folder of a trained model, relative to the working directory (default: " +
          "the paper's model as shipped; deno task train-model writes results/models/<name>)",
        default: DEFAULT_CHECKPOINT,
      },
      config: {
        type: "string",
        doc: "kind toy: named shape the checkpoint must have (unset: any shape)",
        default: "",
        choices: Object.keys(MODEL_PRESETS),
      },
      path: {
        type: "string",
        doc: "kind gpt2: folder with config.json and model.safetensors in the Hugging Face layout",
        default: "",
      },
      layers: {
        type: "list",
        doc: "Blocks that get SAEs, ascending (empty: all; at block, consecutive blocks)",
        default: [],
        items: { type: "number", integer: true, min: 0 },
        unique: true,
      },
    },
  },
  data: {
    type: "object",
    doc: "The text the activations are read from",
    fields: {
      corpus: {
        type: "string",
        doc: "Registered corpus (train split for SAE training, validation for metrics and SCALAR)",
        default: "tinyshakespeare",
        choices: Object.keys(CORPORA),
      },
      path: {
        type: "string",
        doc: "Instead of corpus: a .txt or .jsonl file or a folder of them, tokenized as the " +
          "model reads text and split 90/10",
        default: "",
      },
      text_field: {
        type: "string",
        doc: "The field of each .jsonl line that holds the text",
        default: "text",
      },
    },
  },
  position: {
    type: "string",
    doc: "Where the SAEs sit: mlp (MLP input → output), mlp-block (resid_mid → resid_post), " +
      "block (resid_pre of one block → the next)",
    default: "mlp",
    choices: POSITIONS,
  },
  sae: {
    type: "object",
    doc: "The SAEs",
    fields: {
      arch: {
        type: "string",
        doc: "Architecture (jsae only at position mlp)",
        default: "topk",
        choices: ARCHITECTURES,
      },
      features: {
        type: "number",
        doc: "Features per SAE (Staircase: per chunk; the j-th SAE of a chain has (j + 1) × this)",
        default: 512,
        min: 1,
        integer: true,
      },
      k: {
        type: "number",
        doc: "Features kept per token (TopK)",
        default: 10,
        min: 1,
        integer: true,
      },
      jsae: {
        type: "object",
        doc: "Jacobian SAE settings (arch jsae)",
        fields: {
          lambda: {
            type: "number",
            doc: "Weight of the Jacobian sparsity loss (summed over tokens, divided by k²)",
            default: 0.001,
            min: 0,
          },
        },
      },
    },
  },
  train: {
    type: "object",
    doc: "SAE training (AdamW, warm-up then cosine decay)",
    fields: {
      steps: { type: "number", doc: "Optimizer steps", default: t.steps, min: 1, integer: true },
      batch: {
        type: "number",
        doc: "Sequences per step (each the model's context long)",
        default: t.batch,
        min: 1,
        integer: true,
      },
      lr: { type: "number", doc: "Peak learning rate", default: t.lr, min: 0, exclusiveMin: true },
      min_lr: { type: "number", doc: "Final learning rate", default: t.minLr, min: 0 },
      warmup: {
        type: "number",
        doc: "Linear warm-up steps (at most steps)",
        default: t.warmup,
        min: 0,
        integer: true,
      },
      beta1: { type: "number", doc: "AdamW β₁", default: t.beta1, min: 0, max: 0.999999 },
      beta2: { type: "number", doc: "AdamW β₂", default: t.beta2, min: 0, max: 0.999999 },
      weight_decay: { type: "number", doc: "AdamW weight decay", default: t.weightDecay, min: 0 },
      grad_clip: {
        type: "number",
        doc: "Global gradient-norm limit over all SAE parameters",
        default: t.gradClip,
        min: 0,
        exclusiveMin: true,
      },
      micro_batch: {
        type: "number",
        doc: "Sequences per forward/backward pass; gradients of the passes add up to the " +
          "batch's (0: the whole batch at once). Memory follows this",
        default: 0,
        min: 0,
        integer: true,
      },
      log_every: {
        type: "number",
        doc: "Steps between progress lines",
        default: t.logEvery,
        min: 1,
        integer: true,
      },
      checkpoint_every: {
        type: "number",
        doc: "Steps between checkpoints",
        default: t.checkpointEvery,
        min: 1,
        integer: true,
      },
    },
  },
  eval: {
    type: "object",
    doc: "Metrics on validation data",
    fields: {
      sequences: {
        type: "number",
        doc: "Validation sequences for the metrics (0 = all)",
        default: 0,
        min: 0,
        integer: true,
      },
    },
  },
  scalar: {
    type: "object",
    doc: "SCALAR: edge attribution and ablation curves for every adjacent pair of SAEs",
    fields: {
      enabled: {
        type: "boolean",
        doc: "Whether to measure SCALAR (metrics alone are much faster)",
        default: s.enabled,
      },
      ig_steps: {
        type: "number",
        doc: "Integrated-gradient steps (α = linspace(0, 1, steps))",
        default: s.igSteps,
        min: 1,
        integer: true,
      },
      ig_batches: {
        type: "number",
        doc: "Attribution batches of validation sequences the edge scores sum over",
        default: s.igSequences / s.igBatch,
        min: 1,
        integer: true,
      },
      ig_batch_size: {
        type: "number",
        doc: "Sequences per attribution batch",
        default: s.igBatch,
        min: 1,
        integer: true,
      },
      prompts: {
        type: "number",
        doc: "Validation windows the KL curve averages over",
        default: s.prompts,
        min: 1,
        integer: true,
      },
      bootstrap: {
        type: "number",
        doc: "Bootstrap resamples of each curve point's 95% CI",
        default: s.bootstrap,
        min: 1,
        integer: true,
      },
      edges: {
        type: "string",
        doc:
          "Edge counts the curve is measured at (log2-half: the reference's 35 counts ≈ 2^(m/2))",
        default: "log2-half",
        choices: EDGE_GRIDS,
      },
    },
  },
  seeds: {
    type: "list",
    doc: "Seeds: every combination of the matrix runs once per seed",
    default: [0],
    items: SEED_RULE,
    minItems: 1,
    unique: true,
  },
  backend: {
    type: "string",
    doc: "Backend (auto picks the fastest present); --backend overrides it",
    default: "auto",
    choices: BACKEND_CHOICES,
  },
  matrix: {
    type: "external",
    doc: "Grid of runs: dotted field path → list of values (cartesian product, in file order), " +
      "plus include / exclude entries (as in GitHub Actions) and zip (lists that advance together)",
  },
};

/** The field a matrix uses for the seed of each run (instead of the manifest's `seeds` list). */
export const SEED_PATH = "seed";

/** Fields that exist but cannot be varied by a matrix, with the reason given to the user. */
export const MATRIX_FIXED: Readonly<Record<string, string>> = Object.freeze({
  name: "one manifest is one experiment; write one manifest per name",
  backend: "runs that differ only in backend are the same run (one id); use --backend instead",
  seeds: `vary "seed" instead (a matrix gives each run one value)`,
});

/** Every field a matrix may vary: dotted path → rule, in the order of {@link MANIFEST_RULES}. */
export const MATRIX_FIELDS: ReadonlyMap<string, MatrixRule> = (() => {
  const out = new Map<string, MatrixRule>();
  const walk = (rules: Rules, prefix: string) => {
    for (const [key, rule] of Object.entries(rules)) {
      const path = prefix + key;
      if (rule.type === "object") walk(rule.fields, `${path}.`);
      else if (
        (rule.type === "number" || rule.type === "string" || rule.type === "boolean" ||
          rule.type === "list") && !(path in MATRIX_FIXED)
      ) out.set(path, rule);
    }
  };
  walk(MANIFEST_RULES, "");
  const seed: NumberRule = { ...SEED_RULE, doc: "Seed of the run (replaces seeds)", default: 0 };
  out.set(SEED_PATH, seed);
  return out;
})();

/** A checked experiment manifest, before expansion. */
export interface ExperimentManifest {
  /** The YAML file's path. */
  file: string;
  /** Experiment name. */
  name: string;
  /** Backend the manifest asks for. */
  backend: BackendChoice;
  /** The `seeds` list (unused when the matrix varies `seed`). */
  seeds: number[];
  /** Every field with defaults filled in, in the manifest's own shape (the matrix as written). */
  fields: Record<string, unknown>;
  /** The paths the matrix varies (`seed` aside), in the order they first appear. */
  varied: string[];
}

/** One run of the grid. */
export interface ExpandedRun {
  /** {@link runId} of `config`: stable across key order, files and machines. */
  id: string;
  /** The values the matrix set for this run (path → value, `seed` aside), in matrix order. */
  varied: Record<string, MatrixValue>;
  /** The run's seed (also `config.train.seed`). */
  seed: number;
  /** Backend the manifest asks for; not part of the id, since it does not change what is run. */
  backend: BackendChoice;
  /** Everything that defines the run. */
  config: SaeRunConfig;
}

/** What {@link expandManifest} returns. */
export interface ManifestExpansion {
  /** The manifest itself. */
  manifest: ExperimentManifest;
  /** Every run, in grid order (first matrix axis slowest, seeds slowest of all). */
  runs: ExpandedRun[];
}

/** More runs than this is surely a mistake (a typo in a long list), not a grid to run. */
const MAX_RUNS = 10_000;

/**
 * Reads, checks and expands an experiment manifest.
 *
 * @param file Path of the YAML file.
 * @returns The manifest and every run of its grid.
 * @throws {ManifestError} With every problem of the file, each at its line and column.
 */
export async function expandManifest(file: string): Promise<ManifestExpansion> {
  return await expandManifestText(file, await readManifestText(file));
}

/**
 * Checks and expands an experiment manifest given as text.
 *
 * @param file The path messages name.
 * @param text The YAML text.
 * @returns The manifest and every run of its grid.
 * @throws {ManifestError} With every problem, each at its line and column.
 */
export async function expandManifestText(file: string, text: string): Promise<ManifestExpansion> {
  const src = new ManifestSource(file, text);
  // A file that does not parse has no fields to check: report its syntax errors alone.
  src.throwIfProblems();
  const where = new Locator(text);
  const reported = new Set<string>();
  const report = (origin: MatrixOrigin, message: string) => {
    const { line, column } = where.at(origin.segments);
    // Many runs share a value (every seed of one architecture): say each thing once.
    const key = `${line}:${column}:${origin.field}:${message}`;
    if (reported.has(key)) return;
    reported.add(key);
    src.problems.push({ path: origin.field, line, column, message });
  };

  const fields = checkFields(src, src.data, MANIFEST_RULES);
  // Cross-field checks skip fields that already have a problem (they hold their defaults).
  const flawed = new Set(src.problems.map((p) => p.path));
  const seeds = fields.seeds as number[];
  const ctx: CheckContext = { fields, flawed, where, report };
  const { spec, excludeOrigins } = readMatrix(fields.matrix, {
    fields: MATRIX_FIELDS,
    fixed: MATRIX_FIXED,
    repeatPath: SEED_PATH,
    defaultRepeat: {
      paths: [SEED_PATH],
      rows: seeds.map((value, i) =>
        new Map([[SEED_PATH, { value, origin: { segments: ["seeds", i], field: `seeds[${i}]` } }]])
      ),
    },
    report,
  });
  const matrixAt: MatrixOrigin = { segments: ["matrix"], field: "matrix" };
  const size = spec.axes.reduce((n, a) => n * a.rows.length, 1) +
    spec.include.length * seeds.length;
  const runs: ExpandedRun[] = [];
  const variedPaths = new Set<string>();
  if (size > MAX_RUNS) {
    report(matrixAt, `expands to ${size} runs, more than the ${MAX_RUNS} allowed`);
  } else {
    const { combinations, excluded } = expandMatrix(spec);
    excluded.forEach((n, i) => {
      if (n === 0) report(excludeOrigins[i]!, "matches no combination, so it excludes nothing");
    });
    if (combinations.length === 0) report(matrixAt, "exclude leaves no combination to run");
    // Runs are told apart by their final ids, which name the model and data by their sha256.
    const resolved = combinations.map((combo) => resolveRun(combo, ctx));
    const weights = await checkModels(combinations, ctx);
    const data = await checkData(combinations, ctx);
    const seen = new Map<string, number>();
    for (const [i, run] of resolved.entries()) {
      run.config.modelSha256 = weights.get(modelKey(run.config));
      run.config.dataSha256 = data.get(dataKey(run.config));
      run.id = runId(run.config);
      // A model or data that cannot be read (reported above) is told apart by its folder or path.
      const known = run.config.modelSha256 !== undefined && run.config.dataSha256 !== undefined;
      const key = known ? run.id : `${run.id} ${modelKey(run.config)} ${dataKey(run.config)}`;
      const before = seen.get(key);
      if (before !== undefined) {
        const combo = combinations[i]!;
        const [now, then] = [describe(combo), describe(combinations[before]!)];
        // Blame what made this combination: the keys set last, the seed (shared by many) last of all.
        const keys = [...combo.keys()].filter((k) => k !== SEED_PATH).reverse();
        report(
          blame(combo, [...keys, SEED_PATH], where),
          now === then
            ? `combination ${now} is already in the grid`
            : `combination ${now} is the same run as ${then} (the same resolved config)`,
        );
        continue;
      }
      seen.set(key, i);
      for (const path of Object.keys(run.varied)) variedPaths.add(path);
      runs.push(run);
    }
  }
  src.throwIfProblems();
  return {
    manifest: {
      file,
      name: fields.name as string,
      backend: fields.backend as BackendChoice,
      seeds,
      fields,
      varied: [...variedPaths],
    },
    runs,
  };
}

/**
 * The id of a run: the first 12 hex digits of the sha256 of what it computes, as canonical JSON
 * (keys sorted at every level): its config with the model's and the data's content
 * (`modelSha256`, `dataSha256`) in place of their paths. So neither key order, formatting nor
 * where the files lie changes it (one run serves every manifest that asks for the same work), and
 * any change of a setting, the seed included (`config.train.seed`), or of the weights or data
 * does.
 *
 * @param config The run's fully resolved configuration.
 * @returns 12 lowercase hex digits.
 *
 * @example
 * ```ts
 * import { runId } from "./manifest.ts";
 * if (!/^[0-9a-f]{12}$/.test(runId({ a: 1 } as never))) throw new Error();
 * ```
 */
export function runId(config: SaeRunConfig): string {
  const content = { ...config, modelDir: undefined, dataPath: undefined };
  return createHash("sha256").update(canonicalJson(content)).digest("hex").slice(0, 12);
}

/** What names a run's model: its kind and folder. */
function modelKey(config: { modelKind?: string; modelDir: string }): string {
  return `${config.modelKind ?? "toy"}:${config.modelDir}`;
}

/** What names a run's data: its registered corpus, or its path and text field. */
function dataKey(config: { corpus: string; dataPath?: string; textField?: string }): string {
  return config.dataPath
    ? `path:${config.dataPath}:${config.textField}`
    : `corpus:${config.corpus}`;
}

/**
 * JSON with the keys of every object sorted and no spaces: one text per value, whatever the order
 * its keys were written in. Undefined object fields are left out, as `JSON.stringify` does.
 *
 * @param value Plain data (objects, arrays, strings, finite numbers, booleans, null).
 * @returns The canonical JSON text.
 * @throws {TypeError} For a value JSON cannot hold faithfully (NaN, ±Infinity, a function…).
 *
 * @example
 * ```ts
 * import { canonicalJson } from "./manifest.ts";
 * if (canonicalJson({ b: [2, { d: 1, c: 0 }], a: "x" }) !== '{"a":"x","b":[2,{"c":0,"d":1}]}') {
 *   throw new Error();
 * }
 * ```
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "string" || typeof value === "boolean") {
    return JSON.stringify(value);
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) {
      throw new TypeError(`Cannot write ${value} as canonical JSON: it is not a finite number`);
    }
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  throw new TypeError(`Cannot write a ${typeof value} as canonical JSON`);
}

/** What the checks of a combination need. */
interface CheckContext {
  /** The manifest's checked fields. */
  fields: Record<string, unknown>;
  /** Paths of fields that have a problem of their own (they hold their defaults). */
  flawed: ReadonlySet<string>;
  /** Places in the file. */
  where: Locator;
  /** Records a problem. */
  report: (origin: MatrixOrigin, message: string) => void;
}

/** One combination applied to the manifest's fields, cross-checked, as a run. */
function resolveRun(combo: Combination<MatrixOrigin>, ctx: CheckContext): ExpandedRun {
  const { fields, flawed, where, report } = ctx;
  const v = structuredClone({ ...fields, matrix: undefined }) as Record<string, unknown>;
  const varied: Record<string, MatrixValue> = {};
  for (const [path, cell] of combo) {
    if (path === SEED_PATH) continue;
    setPath(v, path, cell.value);
    varied[path] = cell.value;
  }
  const seed = (combo.get(SEED_PATH)?.value ?? (fields.seeds as number[])[0]) as number;
  const get = <T>(path: string) => getPath(v, path) as T;

  /** Records a problem that involves several fields, at the first of them the matrix set. */
  const problem = (paths: string[], message: string) => {
    if (paths.some((p) => !combo.has(p) && flawed.has(p))) return;
    report(blame(combo, paths, where), message);
  };
  const gpt2 = get("model.kind") === "gpt2";
  if (gpt2 && !get("model.path")) {
    problem(
      ["model.path", "model.kind"],
      `kind "gpt2" needs model.path: the folder with config.json and model.safetensors`,
    );
  } else if (!gpt2 && get("model.path")) {
    problem(["model.path"], `only kind "gpt2" reads a path; a toy model is read from checkpoint`);
  }
  if (get<number>("train.micro_batch") > get<number>("train.batch")) {
    problem(
      ["train.micro_batch", "train.batch"],
      `micro_batch = ${get("train.micro_batch")} is more than the batch of ${get("train.batch")} ` +
        `sequences`,
    );
  }
  try {
    checkArchitecture(get<Architecture>("sae.arch"), get<Position>("position"));
  } catch (e) {
    if (!(e instanceof ArchitectureError)) throw e;
    problem(["sae.arch", "position"], e.message);
  }
  if (get<number>("sae.k") > get<number>("sae.features")) {
    problem(
      ["sae.k", "sae.features"],
      `k = ${get("sae.k")} is more than the ${get("sae.features")} features: TopK keeps k of them`,
    );
  }
  if (get<number>("train.warmup") > get<number>("train.steps")) {
    problem(
      ["train.warmup", "train.steps"],
      `warm-up of ${get("train.warmup")} steps is longer than training (${get("train.steps")} ` +
        `steps): the learning rate would never reach its peak`,
    );
  }
  if (get<number>("train.min_lr") > get<number>("train.lr")) {
    problem(
      ["train.min_lr", "train.lr"],
      `min_lr = ${get("train.min_lr")} is above the peak lr = ${get("train.lr")}`,
    );
  }

  const layers = get<number[]>("model.layers");
  const microBatch = get<number>("train.micro_batch");
  const dataPath = get<string>("data.path");
  // Optional fields are set only when they say something, so runs written before they existed
  // keep their ids.
  const config: SaeRunConfig = {
    modelDir: normalizeDir(get(gpt2 ? "model.path" : "model.checkpoint")),
    ...(gpt2 ? { modelKind: "gpt2" as const } : {}),
    ...(layers.length > 0 ? { layers } : {}),
    corpus: get("data.corpus"),
    ...(dataPath
      ? { dataPath: normalizeDir(dataPath), textField: get<string>("data.text_field") }
      : {}),
    position: get("position"),
    sae: {
      arch: get("sae.arch"),
      features: get("sae.features"),
      k: get("sae.k"),
      jsaeLambda: get("sae.jsae.lambda"),
    },
    train: {
      steps: get("train.steps"),
      batch: get("train.batch"),
      lr: get("train.lr"),
      minLr: get("train.min_lr"),
      warmup: get("train.warmup"),
      beta1: get("train.beta1"),
      beta2: get("train.beta2"),
      weightDecay: get("train.weight_decay"),
      gradClip: get("train.grad_clip"),
      logEvery: get("train.log_every"),
      checkpointEvery: get("train.checkpoint_every"),
      seed,
      ...(microBatch > 0 && microBatch < get<number>("train.batch") ? { microBatch } : {}),
    },
    evalSequences: get("eval.sequences"),
    scalar: {
      enabled: get("scalar.enabled"),
      igSteps: get("scalar.ig_steps"),
      igSequences: get<number>("scalar.ig_batches") * get<number>("scalar.ig_batch_size"),
      igBatch: get("scalar.ig_batch_size"),
      prompts: get("scalar.prompts"),
      bootstrap: get("scalar.bootstrap"),
    },
  };
  return { id: runId(config), varied, seed, backend: get("backend"), config };
}

/**
 * Checks that every model the runs name is there (a finished toy model of the named shape, or a
 * complete GPT-2 folder) and that its layers fit the runs' layer choices, reading each folder once.
 */
async function checkModels(
  combinations: Combination<MatrixOrigin>[],
  ctx: CheckContext,
): Promise<Map<string, string>> {
  const { fields, flawed, where, report } = ctx;
  const checks = new Map<string, Promise<ModelInspection>>();
  const weights = new Map<string, string>();
  for (const combo of combinations) {
    const value = (path: string) => combo.get(path)?.value ?? getPath(fields, path);
    const gpt2 = value("model.kind") === "gpt2";
    const dirField = gpt2 ? "model.path" : "model.checkpoint";
    // A field with a problem of its own holds its default: do not report that too.
    const flawedHere = ["model.kind", dirField].some((p) => !combo.has(p) && flawed.has(p));
    if (flawedHere || (gpt2 && !value("model.path"))) continue;
    const dir = normalizeDir(value(dirField) as string);
    const key = modelKey({ modelKind: gpt2 ? "gpt2" : undefined, modelDir: dir });
    if (!checks.has(key)) checks.set(key, inspectWeights(gpt2 ? inspectGpt2 : inspectModel, dir));
    const { problem, shape, sha256 } = await checks.get(key)!;
    if (sha256) weights.set(key, sha256);
    if (problem) {
      report(blame(combo, [dirField], where), problem);
      continue;
    }
    const preset = value("model.config") as string;
    const want = gpt2 ? undefined : MODEL_PRESETS[preset];
    if (want && shape) {
      const differ = (Object.keys(want) as (keyof GPTConfig)[]).filter((k) => want[k] !== shape[k]);
      if (differ.length > 0) {
        report(
          blame(combo, ["model.config", "model.checkpoint"], where),
          `Cannot use trained model "${dir}" as "${preset}": its ${
            differ.map((k) => `${k} is ${shape[k]}, not ${want[k]}`).join(", ")
          }`,
        );
      }
    }
    const layers = value("model.layers") as readonly number[];
    const layersFlawed = !combo.has("model.layers") && flawed.has("model.layers");
    if (shape && layers.length > 0 && !layersFlawed) {
      const why = layersProblem(value("position") as Position, shape.nLayer, layers);
      if (why) report(blame(combo, ["model.layers"], where), `${why}`);
    }
  }
  return weights;
}

/** A model folder's check: a problem, or its shape and the sha256 of its weights. */
interface ModelInspection {
  problem?: string;
  shape?: GPTConfig;
  sha256?: string;
}

/**
 * Inspects a model folder and, when it is usable, hashes its weights (part of the run ids); a
 * shipped model must hold the shipped weights.
 */
async function inspectWeights(
  inspect: (dir: string) => Promise<ModelInspection>,
  dir: string,
): Promise<ModelInspection> {
  const found = await inspect(dir);
  if (found.problem) return found;
  const file = `${dir}/${GPT2_FILES.weights}`;
  let sha256: string;
  try {
    sha256 = await cachedSha256File(file, hashCache());
  } catch (e) {
    return {
      problem: `Cannot read model weights "${file}": ${e instanceof Error ? e.message : e}`,
    };
  }
  return { ...found, sha256, problem: shippedModelProblem(dir, sha256) };
}

/** Where manifest checking keeps the sha256 of model and data files between commands. */
function hashCache(): string {
  return `${defaultCacheDir()}/sha256`;
}

/**
 * Reads the data of every run once, up front: a registered corpus by its known sha256, a
 * `data.path` by hashing its files, so a missing or unreadable file is a problem of the manifest
 * (naming the file) rather than of each run later.
 *
 * @returns Data key → sha256 of the data.
 */
async function checkData(
  combinations: Combination<MatrixOrigin>[],
  ctx: CheckContext,
): Promise<Map<string, string>> {
  const { fields, flawed, where, report } = ctx;
  const hashes = new Map<string, Promise<{ sha256?: string; problem?: string }>>();
  const out = new Map<string, string>();
  for (const combo of combinations) {
    const value = (path: string) => combo.get(path)?.value ?? getPath(fields, path);
    if (["data.path", "data.corpus"].some((p) => !combo.has(p) && flawed.has(p))) continue;
    const path = value("data.path") as string;
    const corpus = value("data.corpus") as string;
    const textField = value("data.text_field") as string;
    const config = path
      ? { corpus, dataPath: normalizeDir(path), textField }
      : { corpus, textField };
    const key = dataKey(config);
    if (!hashes.has(key)) {
      hashes.set(
        key,
        path
          ? corpusSourcesSha256(config.dataPath!, textField, hashCache()).then(
            (sha256) => ({ sha256 }),
            (e) => ({ problem: e instanceof Error ? e.message : String(e) }),
          )
          : Promise.resolve({ sha256: CORPORA[corpus]?.sha256 }),
      );
    }
    const { sha256, problem } = await hashes.get(key)!;
    if (problem) report(blame(combo, ["data.path"], where), problem);
    else if (sha256) out.set(key, sha256);
  }
  return out;
}

/** Whether a folder holds a Hugging Face GPT-2 the loader reads, and its shape. */
async function inspectGpt2(dir: string): Promise<ModelInspection> {
  const missing = [];
  for (const name of [GPT2_FILES.config, GPT2_FILES.weights]) {
    if (!(await Deno.stat(`${dir}/${name}`).then(() => true, () => false))) missing.push(name);
  }
  if (missing.length > 0) {
    return {
      problem: `Cannot find GPT-2 in "${dir}": ${missing.join(" and ")} ` +
        `${missing.length === 1 ? "is" : "are"} missing; with internet access: ` +
        gpt2DownloadHint(dir),
    };
  }
  try {
    const json = JSON.parse(await Deno.readTextFile(`${dir}/${GPT2_FILES.config}`));
    return { shape: gptConfigFromHf(json, `${dir}/${GPT2_FILES.config}`) };
  } catch (e) {
    return { problem: `Cannot use GPT-2 in "${dir}": ${e instanceof Error ? e.message : e}` };
  }
}

/** Whether a folder holds a finished model checkpoint, and its shape. */
async function inspectModel(dir: string): Promise<ModelInspection> {
  const manifest = await trainingManifest(dir);
  // models/ holds the shipped models (the toy manifests' default): say how to get them back first.
  const train = dir.startsWith("models/")
    ? `it ships with the project (restore it with \`git checkout -- ${dir}\`), or train it with ` +
      `\`deno task train-model ${manifest}\` and copy ` +
      `results/models/${basename(manifest, ".yaml")}-best to ${dir}`
    : `train it with \`deno task train-model ${manifest}\``;
  const exists = async (name: string) => {
    try {
      await Deno.stat(`${dir}/${name}`);
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  };
  try {
    if (!(await Deno.stat(dir)).isDirectory) {
      return { problem: `Cannot use trained model "${dir}": it is a file, not a model folder` };
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    return { problem: `Cannot find trained model "${dir}": the folder does not exist; ${train}` };
  }
  if (await exists("state.json")) {
    return {
      problem: `Cannot use trained model "${dir}": its training is unfinished (state.json is ` +
        `there); finish it: ${train.replace("train it with ", "")}`,
    };
  }
  const missing = [];
  for (const name of ["config.json", "model.safetensors"]) {
    if (!(await exists(name))) missing.push(name);
  }
  if (missing.length > 0) {
    return {
      problem: `Cannot use trained model "${dir}": the folder has no ${
        missing.join(" or ")
      }; ${train}`,
    };
  }
  let config: { format?: unknown; model?: unknown } | null = null;
  try {
    config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  } catch {
    // Unreadable or not JSON: reported below as not being a model checkpoint.
  }
  if (config?.format !== "scalar-lab/gpt" || typeof config.model !== "object") {
    return {
      problem:
        `Cannot use trained model "${dir}": its config.json is not that of a GPT checkpoint ` +
        `of this project`,
    };
  }
  return { shape: config.model as GPTConfig };
}

/**
 * The manifest that trains the model of a folder: `experiments/<folder name>.yaml` if present, else
 * the one in `experiments/reduced/` whose `name` is the folder's (`toy-model-2k` is trained by
 * `experiments/reduced/toy-model.yaml`; a `-best` folder, by the manifest that wrote it), else
 * the paper's model.
 */
async function trainingManifest(dir: string): Promise<string> {
  // train-model writes a run's best-validation weights beside it, as <name>-best.
  const name = basename(dir).replace(/-best$/, "");
  const own = `experiments/${name}.yaml`;
  try {
    await Deno.stat(own);
    return own;
  } catch {
    // Not at the top level: look for it by name below.
  }
  const reduced: string[] = [];
  try {
    for await (const e of Deno.readDir("experiments/reduced")) {
      if (e.isFile && e.name.endsWith(".yaml")) reduced.push(`experiments/reduced/${e.name}`);
    }
  } catch {
    // No reduced manifests here (run from another folder): the paper's model below.
  }
  for (const file of reduced.sort()) {
    const text = await Deno.readTextFile(file).catch(() => "");
    if (/^name:\s*(\S+)\s*$/m.exec(text)?.[1] === name) return file;
  }
  return "experiments/toy-model.yaml";
}

/** A folder path as written, without `./` or a trailing slash, so ids do not depend on either. */
function normalizeDir(dir: string): string {
  const n = normalize(dir);
  return n.length > 1 ? n.replace(/\/+$/, "") : n;
}

/**
 * Where a problem about some fields of a combination belongs: the first of them the matrix set,
 * else the first written in the file, else the first.
 */
function blame(combo: Combination<MatrixOrigin>, paths: string[], where: Locator): MatrixOrigin {
  for (const path of paths) {
    const cell = combo.get(path);
    if (cell) return cell.origin;
  }
  const path = paths.find((p) => where.has(p.split("."))) ?? paths[0]!;
  return { segments: path.split("."), field: path };
}

/** A combination for messages, without its seed (the same for every seed). */
function describe(combo: Combination<MatrixOrigin>): string {
  const cells = [...combo].filter(([k]) => k !== SEED_PATH);
  return `{${cells.map(([k, c]) => `${k}: ${JSON.stringify(c.value)}`).join(", ")}}`;
}

function getPath(v: Record<string, unknown>, path: string): unknown {
  let node: unknown = v;
  for (const key of path.split(".")) node = (node as Record<string, unknown>)?.[key];
  return node;
}

function setPath(v: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split(".");
  let node = v;
  for (const key of keys.slice(0, -1)) node = node[key] as Record<string, unknown>;
  node[keys.at(-1)!] = value;
}

/**
 * Finds the line and column of a place in the YAML text. Matrix keys are dotted paths
 * (`sae.arch`), so the document is walked key by key rather than by splitting a path on dots.
 */
class Locator {
  readonly #lines = new LineCounter();
  readonly #contents: unknown;

  constructor(text: string) {
    this.#contents = parseDocument(text, { lineCounter: this.#lines }).contents;
  }

  /** Whether the file holds this key or list item. */
  has(segments: readonly (string | number)[]): boolean {
    return this.#find(segments).found;
  }

  /** The place of a key or list item; the deepest one found when the path goes further. */
  at(segments: readonly (string | number)[]): { line: number; column: number } {
    const { line, col } = this.#lines.linePos(this.#find(segments).offset);
    return { line, column: col };
  }

  #find(segments: readonly (string | number)[]): { offset: number; found: boolean } {
    let node = this.#contents, offset = 0;
    for (const segment of segments) {
      if (typeof segment === "number") {
        const item = isSeq(node) ? node.items[segment] : undefined;
        const range = (item as { range?: [number, number, number] } | undefined)?.range;
        if (!range) return { offset, found: false };
        [offset, node] = [range[0], item];
      } else {
        const pair = isMap(node)
          ? node.items.find((p) => isScalar(p.key) && String(p.key.value) === segment)
          : undefined;
        const range = (pair?.key as { range?: [number, number, number] } | undefined)?.range;
        if (!pair || !range) return { offset, found: false };
        [offset, node] = [range[0], pair.value];
      }
    }
    return { offset, found: true };
  }
}

/**
 * One SAE run end to end: the frozen model and its activation caches, the SAEs trained together,
 * their metrics on validation data, and SCALAR for every adjacent pair. Every stage writes its
 * result into the run's folder, so an interrupted run resumes at the stage it stopped in.
 *
 * @module
 */
import { type Dataset, loadDataset, TOKENIZERS } from "../data/dataset.ts";
import type { GPT, GPTConfig } from "../model/gpt.ts";
import { loadModel } from "../model/load.ts";
import { buildSaes, type SaeConfig } from "../sae/architectures.ts";
import {
  DEFAULT_MEMORY_BUDGET_BYTES,
  ensureActivationCache,
  modelFingerprint,
} from "../sae/activation_cache.ts";
import { streamActivations } from "../sae/activation_stream.ts";
import { evaluateSaes, type SaeEvaluation } from "../sae/metrics.ts";
import { layoutPosition, type Position } from "../sae/positions.ts";
import type { StepperKind } from "../sae/stepper.ts";
import { type ActivationSource, type SaeTrainConfig, trainSaes } from "../sae/train.ts";
import { ablationCurve } from "../scalar/ablation.ts";
import { activeLatentCounts, pairDiagnostics } from "../scalar/diagnostics.ts";
import { attributePair } from "../scalar/attribution.ts";
import { edgeCounts, rankEdges } from "../scalar/ranking.ts";
import { type CurvePoint, type ScalarScores, scalarScores } from "../scalar/score.ts";
import type * as tf from "@tensorflow/tfjs";
import { CheckpointError } from "../model/checkpoint.ts";
import { GPT2_FILES } from "../model/gpt2.ts";
import { sha256File } from "../util/sha256_file.ts";

/** SCALAR settings of a run (the manifest's `scalar` section); defaults are the paper's. */
export interface ScalarConfig {
  /** Whether to measure SCALAR at all (metrics alone are much faster). @default true */
  enabled: boolean;
  /** Integrated-gradient steps (α = linspace(0, 1, steps)). @default 5 */
  igSteps: number;
  /** Validation sequences the edge scores sum over (24 batches × 24). @default 576 */
  igSequences: number;
  /** Sequences per attribution batch. @default 24 */
  igBatch: number;
  /** Validation windows the KL curve averages over. @default 50 */
  prompts: number;
  /** Bootstrap resamples of each curve point's CI. @default 1000 */
  bootstrap: number;
}

/** The paper's SCALAR settings. */
export const SCALAR_DEFAULTS: Readonly<ScalarConfig> = Object.freeze({
  enabled: true,
  igSteps: 5,
  igSequences: 576,
  igBatch: 24,
  prompts: 50,
  bootstrap: 1000,
});

/** Everything that defines one run (its id is a hash of this). */
export interface SaeRunConfig {
  /** The model's folder: a toy checkpoint, or a Hugging Face folder when `modelKind` is gpt2. */
  modelDir: string;
  /** Set for GPT-2; unset means a toy model. */
  modelKind?: "gpt2";
  /**
   * The sha256 of the model's weights file when the run was planned: part of the run id, and
   * checked when the model is loaded (unset: not checked).
   */
  modelSha256?: string;
  /** The sha256 of the run's data (see `corpusSourcesSha256`): part of the run id. */
  dataSha256?: string;
  /** Blocks that get SAEs, ascending; unset means all. */
  layers?: number[];
  /** Registered corpus, read when `dataPath` is unset. */
  corpus: string;
  /** A local `.txt`/`.jsonl` file or folder instead of the registered corpus. */
  dataPath?: string;
  /** The `.jsonl` text field of `dataPath`. */
  textField?: string;
  /** Where the SAEs sit. */
  position: Position;
  /** The SAEs. */
  sae: SaeConfig;
  /** Their training. */
  train: SaeTrainConfig;
  /** Validation sequences for the metrics (0 = all). */
  evalSequences: number;
  /** SCALAR settings. */
  scalar: ScalarConfig;
}

/** SCALAR of one pair. */
export interface PairResult {
  /** Upstream hook. */
  up: string;
  /** Downstream hook. */
  down: string;
  /** The pair's layer. */
  layer: number;
  /** F_up · F_down. */
  eTot: number;
  /** Attribution statistics. */
  attribution: { tokens: number; zeroFraction: number; seconds: number };
  /** The ablation curve. */
  curve: CurvePoint[];
  /** Areas under it. */
  scores: ScalarScores;
  /**
   * Staircase diagnostics (`lib/scalar/diagnostics.ts`): metric name → value; absent in runs
   * measured before they existed.
   */
  diagnostics?: Record<string, number>;
}

/** One SAE's training loss and L0 at one progress line. */
export interface TrainLogEntry {
  /** The step. */
  step: number;
  /** The SAE's hook. */
  sae: string;
  /** Its reconstruction loss on that step's batch. */
  loss: number;
  /** Its mean number of active features on that batch. */
  l0: number;
}

/** What a finished run produced. */
export interface SaeRunResult {
  /** Training: steps, throughput, final losses. */
  training: {
    steps: number;
    seconds: number;
    tokensPerSecond: number;
    losses: Record<string, number>;
    /** The stepper that trained the SAEs (`lib/sae/stepper.ts`); unknown for older runs. */
    stepper?: StepperKind;
  };
  /** Metrics on validation data. */
  metrics: SaeEvaluation;
  /** SCALAR per pair (empty when disabled). */
  pairs: PairResult[];
  /** Per-SAE loss and L0 at every progress line of training (resumed runs included). */
  trainLog: TrainLogEntry[];
}

/** Options of {@link runSaeExperiment}. */
export interface RunSaeOptions {
  /** The run's folder (SAE checkpoint under `saes/`, stage results as JSON). */
  runDir: string;
  /** Shared activation caches live under this folder. */
  cacheRoot: string;
  /** Seed of the SAE initialisation and every random choice of the run. */
  seed: number;
  /**
   * Stops the run at the next safe point when it fires: training at its next step (checkpointed),
   * else before evaluation or the next SCALAR pair; every finished stage stays saved.
   */
  signal?: AbortSignal;
  /** Progress lines. */
  log: (line: string) => void;
}

/**
 * Reads a stage's saved JSON; one that does not parse (torn by a full disk or a crash) is ignored
 * with a warning naming it, and its stage runs again.
 */
async function readJson<T>(path: string, log: (line: string) => void): Promise<T | undefined> {
  let text;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    log(
      `warning: ignoring ${path}, which is incomplete (${(e as Error).message}); redoing its stage`,
    );
    return undefined;
  }
}

/**
 * Cuts a torn last line off the training log (a write cut short by a full disk or a kill), with
 * a warning naming the file, so that the lines appended next start on a line of their own.
 */
async function repairTornTail(path: string, log: (line: string) => void): Promise<void> {
  let text;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  if (text === "" || text.endsWith("\n")) return;
  const keep = text.lastIndexOf("\n") + 1;
  log(`warning: ${path} ends in an incomplete line (${text.length - keep} bytes); dropping it`);
  await Deno.truncate(path, new TextEncoder().encode(text.slice(0, keep)).length);
}

/**
 * Reads the training log; entries repeated by a resume (same step and SAE) keep the last. A line
 * that does not parse is skipped with a warning naming the file and line.
 */
async function readTrainLog(path: string, log: (line: string) => void): Promise<TrainLogEntry[]> {
  let text = "";
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const byKey = new Map<string, TrainLogEntry>();
  for (const [i, line] of text.split("\n").entries()) {
    if (!line) continue;
    let e: TrainLogEntry;
    try {
      e = JSON.parse(line) as TrainLogEntry;
    } catch (error) {
      log(`warning: ignoring line ${i + 1} of ${path}: ${(error as Error).message}`);
      continue;
    }
    byKey.set(`${e.step} ${e.sae}`, e);
  }
  return [...byKey.values()].sort((a, b) => a.step - b.step || a.sae.localeCompare(b.sae));
}

/**
 * Refuses a model whose clean loss on validation data is far above the validation loss its
 * training recorded: its weights file is damaged (flipped bytes load as numbers all the same) or
 * not the trained one, and every result of the run would be meaningless.
 */
function checkCleanLoss(modelDir: string, clean: number, recorded: number | undefined): void {
  if (recorded === undefined || !(clean > recorded + Math.max(1, recorded))) return;
  throw new CheckpointError(
    modelDir,
    `Cannot use trained model "${modelDir}": its clean loss on validation data is ` +
      `${clean.toFixed(2)}, but its training recorded ${recorded.toFixed(2)}; its weights file ` +
      `is damaged or not the one trained: restore it, or train the model again`,
  );
}

/**
 * Checks that the model's weights are those the run was planned with (its id records their
 * sha256): weights replaced after planning would give results under the wrong id.
 */
async function checkWeights(config: SaeRunConfig): Promise<void> {
  if (config.modelSha256 === undefined) return;
  const file = `${config.modelDir}/${GPT2_FILES.weights}`;
  const sha256 = await sha256File(file);
  if (sha256 !== config.modelSha256) {
    throw new CheckpointError(
      file,
      `Cannot use model weights "${file}": they changed since the grid was planned (sha256 ` +
        `${sha256.slice(0, 12)}…, planned ${config.modelSha256.slice(0, 12)}…); run the ` +
        `command again: the new weights get runs of their own`,
    );
  }
}

async function writeJson(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(value, null, 1));
  await Deno.rename(tmp, path);
}

/**
 * Runs one configuration: train (or resume) the SAEs, evaluate them, and measure SCALAR on every
 * pair. Finished stages found in `runDir` are not redone.
 *
 * @param config The run's configuration.
 * @param o Folders, seed and logging.
 * @returns The run's results, or undefined when training was interrupted.
 * @throws {ArchitectureError | CheckpointError | CorpusError | DivergenceError} As the stages do.
 */
export async function runSaeExperiment(
  config: SaeRunConfig,
  o: RunSaeOptions,
): Promise<SaeRunResult | undefined> {
  const { runDir, log } = o;
  await checkWeights(config);
  const { model, tokenizer, valLoss } = await loadModel(config.modelKind ?? "toy", config.modelDir);
  try {
    const split = await loadDataset(
      { corpus: config.corpus, path: config.dataPath, textField: config.textField },
      TOKENIZERS[tokenizer],
      log,
    );
    const { nLayer, dModel: d, nCtx } = model.config;
    const positions = layoutPosition(config.position, nLayer, config.layers);
    const saes = buildSaes(config.sae, positions, d, o.seed);
    const passSequences = sequencesPerPass(model.config);
    try {
      await Deno.mkdir(runDir, { recursive: true });
      await repairTornTail(`${runDir}/train_log.jsonl`, log);
      const fingerprint = modelFingerprint(await model.parameterValues());
      const data = await trainingActivations(model, split, positions.hooks, {
        cacheRoot: o.cacheRoot,
        fingerprint,
        log,
      });
      const mlp = (layer: number) => ({
        wFc: model.params.get(`h.${layer}.mlp.c_fc.weight`)! as tf.Tensor2D,
        bFc: model.params.get(`h.${layer}.mlp.c_fc.bias`)! as tf.Tensor1D,
        wProj: model.params.get(`h.${layer}.mlp.c_proj.weight`)! as tf.Tensor2D,
      });
      const trained = await trainSaes({
        saes,
        sae: config.sae,
        train: config.train,
        seqLen: nCtx,
        d,
        data,
        // For an architecture with a pair loss (JSAE's Jacobian term across the MLP).
        mlps: { pairs: positions.pairs, mlp: (pair) => mlp(pair.layer) },
        outDir: `${runDir}/saes`,
        // Appended as training goes, so a resumed run keeps the log of its earlier part.
        onReport: (step, entries) =>
          Deno.writeTextFileSync(
            `${runDir}/train_log.jsonl`,
            entries.map((e) => JSON.stringify({ step, ...e }) + "\n").join(""),
            { append: true },
          ),
        provenance: {
          modelDir: config.modelDir,
          position: config.position,
          nLayer,
          d,
          modelKind: config.modelKind ?? "toy",
          layers: config.layers,
          corpus: { name: split.name, sha256: split.sha256 },
          data: { corpus: config.corpus, path: config.dataPath, textField: config.textField },
          tokenizer,
          modelFingerprint: fingerprint,
          modelValLoss: valLoss,
        },
        signal: o.signal,
        log,
      });
      if (trained.interrupted) return undefined;

      const evalSequences = config.evalSequences || Math.floor(split.val.length / nCtx) - 1;
      let metrics = await readJson<SaeEvaluation>(`${runDir}/metrics.json`, log);
      if (metrics === undefined) {
        if (o.signal?.aborted) return undefined;
        log("evaluating SAEs on validation data");
        metrics = await evaluateSaes({
          model,
          saes,
          tokens: split.val,
          sequences: evalSequences,
          batchSequences: passSequences,
          log,
        });
        await writeJson(`${runDir}/metrics.json`, metrics);
      }
      checkCleanLoss(config.modelDir, metrics.run.ce_loss_clean, valLoss);

      const pairs: PairResult[] = (await readJson<PairResult[]>(`${runDir}/scalar.json`, log)) ??
        [];
      if (config.scalar.enabled) {
        for (const pair of positions.pairs.slice(pairs.length)) {
          if (o.signal?.aborted) return undefined;
          log(`SCALAR ${pair.up} → ${pair.down}: attribution`);
          const attribution = await attributePair({
            model,
            saes,
            pair,
            tokens: split.val,
            sequences: config.scalar.igSequences,
            batchSequences: config.scalar.igBatch,
            steps: config.scalar.igSteps,
            log,
          });
          const fUp = saes.width(pair.up), fDown = saes.width(pair.down), eTot = fUp * fDown;
          const order = rankEdges(attribution.scores, fUp, fDown, o.seed);
          const diagnostics = pairDiagnostics({
            order,
            fUp,
            fDown,
            activeCounts: await activeLatentCounts({
              model,
              saes,
              hook: pair.down,
              tokens: split.val,
              sequences: evalSequences,
              batchSequences: passSequences,
            }),
          });
          log(`SCALAR ${pair.up} → ${pair.down}: ablation curve`);
          const curve = await ablationCurve({
            model,
            saes,
            pair,
            order,
            counts: edgeCounts(eTot),
            tokens: split.val,
            prompts: config.scalar.prompts,
            batchSequences: Math.min(10, passSequences),
            bootstrap: { resamples: config.scalar.bootstrap, seed: o.seed },
            log,
          });
          pairs.push({
            up: pair.up,
            down: pair.down,
            layer: pair.layer,
            eTot,
            attribution: {
              tokens: attribution.tokens,
              zeroFraction: attribution.zeroFraction,
              seconds: attribution.seconds,
            },
            curve,
            scores: scalarScores(curve, eTot),
            diagnostics,
          });
          // Each pair is saved as it finishes: an interrupted run resumes at the next pair.
          await writeJson(`${runDir}/scalar.json`, pairs);
        }
      }
      return {
        trainLog: await readTrainLog(`${runDir}/train_log.jsonl`, log),
        training: {
          steps: trained.step,
          seconds: trained.seconds,
          tokensPerSecond: trained.tokensPerSecond,
          losses: trained.losses,
          stepper: trained.stepper,
        },
        metrics,
        pairs,
      };
    } finally {
      saes.dispose();
    }
  } finally {
    model.dispose();
  }
}

/**
 * The activations a run's SAEs train on: the model's shared activation cache of the training
 * split (filled first when missing), or, where a cache would exceed the memory budget and so be
 * read from disk at every step anyway, the model recomputing each batch.
 */
async function trainingActivations(
  model: GPT,
  split: Dataset,
  hooks: readonly string[],
  o: { cacheRoot: string; fingerprint: string; log: (line: string) => void },
): Promise<ActivationSource> {
  const { nCtx, dModel } = model.config;
  const cacheBytes = Math.floor(split.train.length / nCtx) * nCtx * hooks.length * dModel * 4;
  if (cacheBytes <= DEFAULT_MEMORY_BUDGET_BYTES) {
    return await ensureActivationCache({
      model,
      tokens: split.train,
      seqLen: nCtx,
      hooks,
      root: o.cacheRoot,
      key: { modelSha256: o.fingerprint, corpusSha256: split.sha256, split: "train" },
      log: o.log,
    });
  }
  o.log(`activations: computed per batch (a cache would take ${(cacheBytes / 1e9).toFixed(1)} GB)`);
  return streamActivations({
    model,
    tokens: split.train,
    seqLen: nCtx,
    batchSequences: sequencesPerPass(model.config),
  });
}

/**
 * The work runs share, done ahead of them (a Slurm grid's first job): tokenizes the run's data
 * (cached for BPE) and fills the activation cache its SAEs will train on, without training.
 * Runs that share a model, data and hooks share this work; doing it again reuses what is there.
 *
 * @param config The run's configuration.
 * @param o Where the shared caches live, and progress lines.
 * @throws {CheckpointError | CorpusError | ActivationCacheError} As loading and filling do.
 */
export async function prepareSaeRun(
  config: SaeRunConfig,
  o: { cacheRoot: string; log: (line: string) => void },
): Promise<void> {
  const { model, tokenizer } = await loadModel(config.modelKind ?? "toy", config.modelDir);
  try {
    const split = await loadDataset(
      { corpus: config.corpus, path: config.dataPath, textField: config.textField },
      TOKENIZERS[tokenizer],
      o.log,
    );
    const positions = layoutPosition(config.position, model.config.nLayer, config.layers);
    const fingerprint = modelFingerprint(await model.parameterValues());
    await trainingActivations(model, split, positions.hooks, { ...o, fingerprint });
  } finally {
    model.dispose();
  }
}

/** Bytes of logits one evaluation pass may hold: GPT-2's 50,257-way logits dominate its passes. */
const LOGITS_BUDGET_BYTES = 256 * 1024 ** 2;

/**
 * Sequences per evaluation pass: as many as keep the logits within {@link LOGITS_BUDGET_BYTES},
 * at most 32 (the toy model's 128-way logits would allow thousands).
 *
 * @param c The model shape.
 * @returns At least 1.
 */
export function sequencesPerPass(c: GPTConfig): number {
  return Math.max(1, Math.min(32, Math.floor(LOGITS_BUDGET_BYTES / (c.nCtx * c.vocabSize * 4))));
}

/**
 * `run MANIFEST --slurm`: puts a grid's pending runs on a Slurm cluster as one job array, behind a
 * job that does the work they share, and says how to follow it; and the Slurm state of runs that
 * `plan` shows and `run` steps around.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { join } from "node:path";
import type { ExpandedRun, ExperimentManifest } from "../experiment/manifest.ts";
import { sbatch, scancel, SlurmError } from "../slurm/queue.ts";
import { gridScripts, type SlurmResources, SUBMISSION_FILES } from "../slurm/script.ts";
import {
  createSubmissionFolder,
  queuedRuns,
  type RunInSlurm,
  saveSubmission,
} from "../slurm/submission.ts";
import { UsageError } from "./args.ts";

/** The options of `run` that submit to Slurm. */
export const SLURM_RUN_OPTIONS = {
  slurm: { type: "boolean" },
  partition: { type: "string" },
  time: { type: "string" },
  "gpus-per-task": { type: "string" },
  "cpus-per-task": { type: "string" },
  mem: { type: "string" },
  "max-parallel": { type: "string" },
  "sbatch-arg": { type: "string", multiple: true },
} as const;

/** Their help lines. */
export const SLURM_RUN_HELP =
  `  --slurm          submit the pending and failed runs to Slurm as one job array (one task per
                   run, each writing its own shard results/shards/<run id>.duckdb), behind a
                   job that prepares what they share; writes the batch scripts beside the
                   results (results/slurm/<experiment>/) and prints the job ids
  --partition P, --time T, --gpus-per-task N, --cpus-per-task N, --mem M
                   with --slurm: sbatch's options of those names, for every job
  --max-parallel N with --slurm: at most N runs at a time (--array=…%N)
  --sbatch-arg ARG with --slurm: any other sbatch option, e.g. --sbatch-arg=--account=lab;
                   repeatable`;

/** Values of the Slurm options, as parsed. */
export interface SlurmRunValues {
  slurm?: boolean;
  partition?: string;
  time?: string;
  "gpus-per-task"?: string;
  "cpus-per-task"?: string;
  mem?: string;
  "max-parallel"?: string;
  "sbatch-arg"?: string[];
}

/** The program's `main.ts`, which every job runs. */
const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));

/**
 * Refuses Slurm options given without `--slurm`, where they would silently do nothing.
 *
 * @param values The parsed options.
 * @throws {UsageError} Naming the first such option.
 */
export function checkSlurmOptions(values: SlurmRunValues): void {
  if (values.slurm) return;
  for (const name of Object.keys(SLURM_RUN_OPTIONS)) {
    if (name !== "slurm" && values[name as keyof SlurmRunValues] !== undefined) {
      throw new UsageError(`--${name} only applies with --slurm`);
    }
  }
}

/**
 * The runs of an experiment that Slurm still holds, for showing and stepping around: when Slurm
 * cannot be asked, one line says so and none are.
 *
 * @param db The results database.
 * @param experiment The experiment's name.
 * @returns Run id → its array task's state.
 */
export async function runsInSlurm(
  db: string,
  experiment: string,
): Promise<Map<string, RunInSlurm>> {
  try {
    return await queuedRuns(db, experiment);
  } catch (e) {
    if (!(e instanceof SlurmError)) throw e;
    console.error(`Slurm state unknown: ${e.message}`);
    return new Map();
  }
}

/**
 * A run's Slurm state as `plan` shows it.
 *
 * @param s The state.
 * @returns E.g. `running 41_3` or `queued 41_0 (Dependency)`.
 */
export function describeSlurmState(s: RunInSlurm): string {
  return `${s.state} ${s.job}_${s.index}${s.reason ? ` (${s.reason})` : ""}`;
}

/** What {@link submitGrid} submits. */
export interface SubmitGridInput {
  /** The parsed options of `run`. */
  values: SlurmRunValues;
  /** The experiment. */
  manifest: ExperimentManifest;
  /** The runs to submit (pending and failed ones, or all with `--force`). */
  runs: readonly ExpandedRun[];
  /** The results database (the shards go beside it). */
  db: string;
  /** `--backend`, if given, for every job. */
  backend?: string;
}

/**
 * Submits runs as one job array, one array task per run, behind a job that does their shared
 * work (the array starts only if that job succeeds). Runs that Slurm already holds are left out,
 * so that no two tasks ever write one shard. Prints the job ids and how to follow them.
 *
 * @param input The runs, the experiment and the options.
 * @returns The exit code.
 * @throws {UsageError} For a bad `--max-parallel`.
 * @throws {SlurmError} If Slurm cannot be asked or refuses a job (nothing stays submitted).
 */
export async function submitGrid(input: SubmitGridInput): Promise<number> {
  const { values, manifest, db } = input;
  const maxParallel = values["max-parallel"] === undefined
    ? undefined
    : Number(values["max-parallel"]);
  if (maxParallel !== undefined && !(Number.isInteger(maxParallel) && maxParallel >= 1)) {
    throw new UsageError(
      `--max-parallel must be a positive integer, got "${values["max-parallel"]}"`,
    );
  }
  const held = await queuedRuns(db, manifest.name);
  const runs = input.runs.filter((r) => !held.has(r.id));
  if (runs.length < input.runs.length) {
    console.error(
      `${input.runs.length - runs.length} of them Slurm already holds (queued or running): not ` +
        `submitted again (see deno task plan ${manifest.file})`,
    );
  }
  if (runs.length === 0) return 0;
  const resources: SlurmResources = {
    partition: values.partition,
    time: values.time,
    gpusPerTask: values["gpus-per-task"],
    cpusPerTask: values["cpus-per-task"],
    mem: values.mem,
    extra: values["sbatch-arg"],
  };
  const ids = runs.map((r) => r.id);
  const folder = await createSubmissionFolder(db, manifest.name, ids);
  const scripts = gridScripts({
    experiment: manifest.name,
    manifest: manifest.file,
    workDir: Deno.cwd(),
    deno: Deno.execPath(),
    main: MAIN,
    folder,
    runs: ids,
    db,
    maxParallel,
    backend: input.backend,
    resources,
  });
  const prepareScript = join(folder, SUBMISSION_FILES.prepare);
  const arrayScript = join(folder, SUBMISSION_FILES.array);
  await Deno.writeTextFile(prepareScript, scripts.prepare);
  await Deno.writeTextFile(arrayScript, scripts.array);
  const prepareJob = await sbatch(prepareScript);
  let arrayJob;
  try {
    arrayJob = await sbatch(arrayScript, { args: [`--dependency=afterok:${prepareJob}`] });
  } catch (e) {
    // The prepare job alone would only fill caches: withdraw it, so nothing stays submitted.
    await scancel(prepareJob).catch(() => {});
    throw e;
  }
  await saveSubmission({
    experiment: manifest.name,
    manifest: manifest.file,
    submittedAt: new Date().toISOString(),
    folder,
    prepareJob,
    arrayJob,
    runs: ids,
  });
  const last = runs.length - 1;
  console.log(
    [
      `submitted ${manifest.name}: job ${prepareJob} prepares what the runs share, then job array ` +
      `${arrayJob} runs ${runs.length} run${runs.length === 1 ? "" : "s"} ` +
      `(tasks ${arrayJob}_0${last > 0 ? `…${arrayJob}_${last}` : ""}` +
      `${maxParallel === undefined ? "" : `, at most ${maxParallel} at a time`})`,
      `  batch scripts and run list: ${folder}/`,
      `  follow:  squeue -j ${prepareJob},${arrayJob}    or    deno task plan ${manifest.file}`,
      `  logs:    ${folder}/${SUBMISSION_FILES.logs}/`,
      `  cancel:  scancel ${prepareJob} ${arrayJob}`,
      `  results: deno task report ${manifest.file} (merges finished tasks' shards first)`,
    ].join("\n"),
  );
  return 0;
}

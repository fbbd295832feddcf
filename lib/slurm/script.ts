/**
 * The batch scripts that put a grid on Slurm: one job that does the work the runs share, and one
 * job array with an index per run, each task running exactly one run into its own DuckDB shard.
 * They are written beside the results and kept, readable, so a user can see what was submitted and
 * submit it again by hand.
 *
 * @module
 */
import { shardPath } from "../store/shards.ts";

/** Resources every job of a grid asks Slurm for; unset ones take the cluster's defaults. */
export interface SlurmResources {
  /** `--partition`. */
  partition?: string;
  /** `--time` (e.g. `2:00:00`). */
  time?: string;
  /** `--gpus-per-task`. */
  gpusPerTask?: string;
  /** `--cpus-per-task`. */
  cpusPerTask?: string;
  /** `--mem` (e.g. `16G`). */
  mem?: string;
  /** Further sbatch options, each written as its own `#SBATCH` line as given. */
  extra?: readonly string[];
}

/** What the scripts of one submission need to know. */
export interface GridScriptsPlan {
  /** The experiment's name (job names). */
  experiment: string;
  /** The manifest, as the user named it (relative to `workDir` or absolute). */
  manifest: string;
  /** The folder the jobs run in (the submitter's working directory), absolute. */
  workDir: string;
  /** The `deno` executable, absolute. */
  deno: string;
  /** The program's `main.ts`, absolute. */
  main: string;
  /** The submission's folder (scripts, run list, logs), absolute. */
  folder: string;
  /** The run ids, index i of the array running line i + 1 of `runs.txt`. */
  runs: readonly string[];
  /** The results database, as the user named it (its shards go beside it). */
  db: string;
  /** At most this many array tasks at a time (`--array=…%N`). */
  maxParallel?: number;
  /** `--backend` for every job, when the user chose one. */
  backend?: string;
  /** Resources of every job. */
  resources: SlurmResources;
}

/** The submission folder's files. */
export const SUBMISSION_FILES = Object.freeze({
  prepare: "prepare.sbatch",
  array: "array.sbatch",
  runs: "runs.txt",
  logs: "logs",
});

/**
 * The `--array` value of a grid: one index per run, optionally a limit on tasks at once.
 *
 * @param count Runs in the array (at least 1).
 * @param maxParallel At most this many at a time.
 * @returns E.g. `0-3` or `0-3%2`.
 * @throws {RangeError} If `count` or `maxParallel` is not a positive integer.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { arraySpec } from "./script.ts";
 * equal(arraySpec(4, 2), "0-3%2");
 * ```
 */
export function arraySpec(count: number, maxParallel?: number): string {
  if (!Number.isInteger(count) || count < 1) {
    throw new RangeError(`Cannot make a job array of ${count} runs`);
  }
  if (maxParallel !== undefined && !(Number.isInteger(maxParallel) && maxParallel >= 1)) {
    throw new RangeError(`Cannot run ${maxParallel} array tasks at a time: not a positive integer`);
  }
  return `0-${count - 1}${maxParallel === undefined ? "" : `%${maxParallel}`}`;
}

/**
 * A word as the shell reads it back unchanged: as is when plain, else single-quoted.
 *
 * @param word Any text.
 * @returns The quoted word.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { shellQuote } from "./script.ts";
 * equal(shellQuote("results/x.yaml"), "results/x.yaml");
 * equal(shellQuote("it's here"), `'it'\\''s here'`);
 * ```
 */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_\/.:=@%+,-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** The `#SBATCH` lines of the resources. */
function resourceLines(r: SlurmResources): string[] {
  const lines = [];
  if (r.partition) lines.push(`#SBATCH --partition=${r.partition}`);
  if (r.time) lines.push(`#SBATCH --time=${r.time}`);
  if (r.cpusPerTask) lines.push(`#SBATCH --cpus-per-task=${r.cpusPerTask}`);
  if (r.gpusPerTask) lines.push(`#SBATCH --gpus-per-task=${r.gpusPerTask}`);
  if (r.mem) lines.push(`#SBATCH --mem=${r.mem}`);
  for (const arg of r.extra ?? []) lines.push(`#SBATCH ${arg}`);
  return lines;
}

/** The command line of the program, up to its subcommand's arguments. */
// --verbose: a batch job's log is a file read afterwards, so it keeps every progress line (the
// status line redrawn in place is for terminals).
function program(p: GridScriptsPlan): string {
  return `${shellQuote(p.deno)} run --allow-all ${shellQuote(p.main)} run ${
    shellQuote(p.manifest)
  } --verbose`;
}

/**
 * The two batch scripts of a submission: `prepare` (the shared work; submit it first) and `array`
 * (the runs; submit it with `--dependency=afterok:<prepare's job id>`).
 *
 * @param p The grid, folders, program and resources.
 * @returns The scripts' text.
 * @throws {RangeError} If there are no runs or `maxParallel` is not a positive integer.
 */
export function gridScripts(p: GridScriptsPlan): { prepare: string; array: string } {
  const runsFile = shellQuote(`${p.folder}/${SUBMISSION_FILES.runs}`);
  const logs = `${p.folder}/${SUBMISSION_FILES.logs}`;
  const backend = p.backend ? ` --backend ${shellQuote(p.backend)}` : "";
  // The shard path of run "$id", the shell filling in the id.
  const [before, after] = shardPath(p.db, "\n").split("\n");
  const shard = `${shellQuote(before!)}"$id"${shellQuote(after!)}`;
  const head = (name: string, output: string, about: string[]) => [
    "#!/bin/bash",
    `# SCALAR lab, experiment "${p.experiment}" (${p.manifest}):`,
    ...about.map((line) => `# ${line}`),
    `#SBATCH --job-name=${name}`,
    `#SBATCH --output=${output}`,
    ...resourceLines(p.resources),
  ];
  const prepare = [
    ...head(`scalar-${p.experiment}-prepare`, `${logs}/prepare_%j.out`, [
      `the work its ${p.runs.length} runs share (tokens, activation caches), done once before them.`,
      `Submit it first: sbatch ${SUBMISSION_FILES.prepare}`,
    ]),
    "set -euo pipefail",
    `cd ${shellQuote(p.workDir)}`,
    `mapfile -t runs < ${runsFile}`,
    'args=(); for id in "${runs[@]}"; do args+=(--run-id "$id"); done',
    `exec ${program(p)} --prepare${backend} "\${args[@]}"`,
    "",
  ];
  const array = [
    ...head(`scalar-${p.experiment}`, `${logs}/%A_%a.out`, [
      `its ${p.runs.length} runs as one job array. Task i runs the run on line i + 1 of ` +
      `${SUBMISSION_FILES.runs}`,
      `and writes its results to its own DuckDB shard ${shardPath(p.db, "<run id>")}, which`,
      "`deno task merge` (and plan, report, query) imports into the results database.",
      `Submit it after ${SUBMISSION_FILES.prepare}: ` +
      `sbatch --dependency=afterok:<its job id> ${SUBMISSION_FILES.array}`,
    ]),
    `#SBATCH --array=${arraySpec(p.runs.length, p.maxParallel)}`,
    "set -euo pipefail",
    `cd ${shellQuote(p.workDir)}`,
    `id=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" ${runsFile})`,
    `echo "array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID: run $id"`,
    `exec ${program(p)} --run-id "$id" --db ${shard} --yes${backend}`,
    "",
  ];
  return { prepare: prepare.join("\n"), array: array.join("\n") };
}

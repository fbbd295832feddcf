/**
 * Talking to Slurm through its command-line clients: `sbatch` submits a batch script, `squeue`
 * says which jobs and array tasks are queued or running, `scancel` withdraws a job. They find the
 * cluster as they always do (`SLURM_CONF`, the cluster's configuration), and jobs inherit the
 * submitting environment.
 *
 * @module
 */

/** A Slurm command failed or is missing: the message says which and why. */
export class SlurmError extends Error {
  override name = "SlurmError";
}

/** A job, or one task of a job array, that Slurm still holds. */
export interface QueuedJob {
  /** The job id; for an array task, the array's job id. */
  job: string;
  /** The array index; undefined for a plain job. */
  index?: number;
  /**
   * `queued` (pending: waiting for a dependency or a free node), `running`, or Slurm's own state
   * in lower case (`suspended`…).
   */
  state: string;
  /** Why Slurm keeps it waiting (`Dependency`, `DependencyNeverSatisfied`…), if it says. */
  reason?: string;
}

/** The squeue fields {@link parseQueue} reads: job id (`123` or `123_4`), state and reason. */
const QUEUE_FORMAT = "%i|%T|%r";

/** Slurm's states as this program names them. */
const STATES: Readonly<Record<string, string>> = {
  PENDING: "queued",
  CONFIGURING: "running",
  RUNNING: "running",
  COMPLETING: "running",
};

/**
 * Reads the output of `squeue -h -r -o "%i|%T|%r"`: one line per job or (with `-r`) per array
 * task.
 *
 * @param text squeue's output.
 * @returns The jobs and tasks.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { parseQueue } from "./queue.ts";
 * deepEqual(parseQueue("41|RUNNING|None\n42_3|PENDING|Dependency\n"), [
 *   { job: "41", state: "running" },
 *   { job: "42", index: 3, state: "queued", reason: "Dependency" },
 * ]);
 * ```
 */
export function parseQueue(text: string): QueuedJob[] {
  const jobs: QueuedJob[] = [];
  for (const line of text.split("\n")) {
    const m = /^(\d+)(?:_(\d+))?\|(\w+)\|(.*)$/.exec(line.trim());
    if (!m) continue;
    const job: QueuedJob = { job: m[1]!, state: STATES[m[3]!] ?? m[3]!.toLowerCase() };
    if (m[2] !== undefined) job.index = Number(m[2]);
    if (m[4] && m[4] !== "None") job.reason = m[4];
    jobs.push(job);
  }
  return jobs;
}

/**
 * Reads the job id from `sbatch --parsable` output (`123`, or `123;cluster` on a federation).
 *
 * @param text sbatch's output.
 * @returns The job id.
 * @throws {SlurmError} If there is none.
 */
export function parseJobId(text: string): string {
  const m = /^(\d+)(;\S+)?$/.exec(text.trim());
  if (!m) throw new SlurmError(`Cannot read the job id sbatch printed: "${text.trim()}"`);
  return m[1]!;
}

/** Runs a Slurm client; its stdout, or a {@link SlurmError} with its stderr. */
async function slurm(program: string, args: string[], cwd?: string): Promise<string> {
  let out;
  try {
    out = await new Deno.Command(program, { args, cwd, stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new SlurmError(
        `Cannot run ${program}: it is not installed here (or not on PATH); run this on a ` +
          `machine that submits to your Slurm cluster (a login node)`,
      );
    }
    throw e;
  }
  const d = new TextDecoder();
  if (!out.success) {
    throw new SlurmError(
      `${program} ${args.join(" ")} failed (exit ${out.code}): ${d.decode(out.stderr).trim()}`,
    );
  }
  return d.decode(out.stdout);
}

/**
 * Submits a batch script.
 *
 * @param script The script's path.
 * @param options sbatch options before the script (e.g. `--dependency=afterok:12`), and the
 * folder to submit from.
 * @returns The new job's id.
 * @throws {SlurmError} If sbatch is missing or refuses the job.
 */
export async function sbatch(
  script: string,
  options: { args?: string[]; cwd?: string } = {},
): Promise<string> {
  return parseJobId(
    await slurm("sbatch", ["--parsable", ...(options.args ?? []), script], options.cwd),
  );
}

/**
 * The jobs and array tasks, among some jobs, that Slurm still holds (queued or running); jobs
 * that ended are not listed.
 *
 * @param jobs Job ids.
 * @returns One entry per job or array task still held.
 * @throws {SlurmError} If squeue is missing or fails.
 */
export async function squeue(jobs: readonly string[]): Promise<QueuedJob[]> {
  if (jobs.length === 0) return [];
  try {
    return parseQueue(
      await slurm("squeue", ["-h", "-r", "-o", QUEUE_FORMAT, "-j", jobs.join(",")]),
    );
  } catch (e) {
    // squeue refuses a list of which it knows no job: they all ended long enough ago to be purged.
    if (e instanceof SlurmError && e.message.includes("Invalid job id specified")) return [];
    throw e;
  }
}

/**
 * Cancels a job (all of an array's tasks), or one array task as `JOB_INDEX`.
 *
 * @param job The job id.
 * @throws {SlurmError} If scancel is missing or fails.
 */
export async function scancel(job: string): Promise<void> {
  await slurm("scancel", [job]);
}

/**
 * The record of each grid put on Slurm: a folder `<results>/slurm/<experiment>/<time>/` holding
 * the batch scripts, `runs.txt` (array index i runs line i + 1), the jobs' logs, and
 * `submission.json` (job ids and run ids), from which the runs Slurm still holds are told apart
 * from pending ones.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { type QueuedJob, squeue } from "./queue.ts";
import { SUBMISSION_FILES } from "./script.ts";

/** One submission of a grid. */
export interface Submission {
  /** The experiment's name. */
  experiment: string;
  /** The manifest, as the user named it. */
  manifest: string;
  /** When it was submitted (ISO 8601). */
  submittedAt: string;
  /** Its folder. */
  folder: string;
  /** The job that does the shared work. */
  prepareJob: string;
  /** The job array of the runs. */
  arrayJob: string;
  /** Run ids by array index. */
  runs: string[];
}

/** What Slurm is doing with a run. */
export interface RunInSlurm {
  /** `queued`, `running`, or Slurm's own state in lower case. */
  state: string;
  /** Why Slurm keeps it waiting, if it says. */
  reason?: string;
  /** The array's job id. */
  job: string;
  /** The run's array index. */
  index: number;
}

const RECORD = "submission.json";

/**
 * The folder of an experiment's submissions, beside its results database.
 *
 * @param db The results database.
 * @param experiment The experiment's name.
 * @returns `<its folder>/slurm/<experiment>`.
 */
export function submissionsDir(db: string, experiment: string): string {
  return join(dirname(db), "slurm", experiment);
}

/**
 * Makes a new submission's folder (with its `logs/`), named after the time, and writes its run
 * list.
 *
 * @param db The results database.
 * @param experiment The experiment's name.
 * @param runs The run ids, in array order.
 * @param now The time it is named after.
 * @returns The folder, absolute.
 */
export async function createSubmissionFolder(
  db: string,
  experiment: string,
  runs: readonly string[],
  now = new Date(),
): Promise<string> {
  const stamp = now.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const root = submissionsDir(db, experiment);
  await Deno.mkdir(root, { recursive: true });
  // Two submissions within a second get their own folders.
  for (let n = 0;; n++) {
    const folder = join(root, n === 0 ? stamp : `${stamp}-${n}`);
    try {
      await Deno.mkdir(folder);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) continue;
      throw e;
    }
    await Deno.mkdir(join(folder, SUBMISSION_FILES.logs));
    await Deno.writeTextFile(join(folder, SUBMISSION_FILES.runs), runs.join("\n") + "\n");
    return await Deno.realPath(folder);
  }
}

/**
 * Records a submission in its folder.
 *
 * @param s The submission.
 */
export async function saveSubmission(s: Submission): Promise<void> {
  await Deno.writeTextFile(join(s.folder, RECORD), JSON.stringify(s, null, 2) + "\n");
}

/**
 * Every recorded submission of an experiment, oldest first.
 *
 * @param db The results database.
 * @param experiment The experiment's name.
 * @returns The submissions (none when nothing was submitted).
 */
export async function readSubmissions(db: string, experiment: string): Promise<Submission[]> {
  const root = submissionsDir(db, experiment);
  const found: Submission[] = [];
  try {
    for await (const entry of Deno.readDir(root)) {
      if (!entry.isDirectory) continue;
      try {
        found.push(JSON.parse(await Deno.readTextFile(join(root, entry.name, RECORD))));
      } catch (e) {
        // A folder whose submission failed part-way has no record: nothing of it runs.
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return found.sort((a, b) => a.submittedAt.localeCompare(b.submittedAt));
}

/**
 * Which runs Slurm holds, from the submissions and the queue (a run held by several submissions
 * shows the latest).
 *
 * @param submissions The experiment's submissions, oldest first.
 * @param queue The jobs and array tasks Slurm holds.
 * @returns Run id → its array task's state, for the runs still queued or running.
 *
 * @example
 * ```ts
 * import { deepEqual } from "node:assert/strict";
 * import { runsInQueue } from "./submission.ts";
 * const s = { experiment: "e", manifest: "e.yaml", submittedAt: "", folder: "",
 *   prepareJob: "7", arrayJob: "8", runs: ["r0", "r1"] };
 * deepEqual(runsInQueue([s], [{ job: "8", index: 1, state: "running" }]),
 *   new Map([["r1", { state: "running", job: "8", index: 1 }]]));
 * ```
 */
export function runsInQueue(
  submissions: readonly Submission[],
  queue: readonly QueuedJob[],
): Map<string, RunInSlurm> {
  const held = new Map(queue.map((q) => [`${q.job}_${q.index}`, q]));
  const runs = new Map<string, RunInSlurm>();
  for (const s of submissions) {
    s.runs.forEach((id, index) => {
      const q = held.get(`${s.arrayJob}_${index}`);
      if (q === undefined) return;
      runs.set(id, {
        state: q.state,
        job: s.arrayJob,
        index,
        ...(q.reason ? { reason: q.reason } : {}),
      });
    });
  }
  return runs;
}

/**
 * Asks Slurm which runs of an experiment it holds (no Slurm command runs when nothing was ever
 * submitted).
 *
 * @param db The results database.
 * @param experiment The experiment's name.
 * @returns Run id → its array task's state, for the runs still queued or running.
 * @throws {SlurmError} If submissions exist and squeue fails.
 */
export async function queuedRuns(db: string, experiment: string): Promise<Map<string, RunInSlurm>> {
  const submissions = await readSubmissions(db, experiment);
  if (submissions.length === 0) return new Map();
  return runsInQueue(submissions, await squeue(submissions.map((s) => s.arrayJob)));
}

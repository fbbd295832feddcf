import { deepEqual, equal, notEqual } from "node:assert/strict";
import {
  createSubmissionFolder,
  queuedRuns,
  readSubmissions,
  runsInQueue,
  saveSubmission,
  type Submission,
  submissionsDir,
} from "./submission.ts";

function submission(folder: string, arrayJob: string, runs: string[], at: string): Submission {
  return {
    experiment: "smoke",
    manifest: "experiments/smoke.yaml",
    submittedAt: at,
    folder,
    prepareJob: String(Number(arrayJob) - 1),
    arrayJob,
    runs,
  };
}

Deno.test("submission folders: named by time, one each, with the run list and a logs folder", async () => {
  const dir = await Deno.makeTempDir({ prefix: "scalar-submission-" });
  try {
    const db = `${dir}/results/scalar.duckdb`;
    const now = new Date("2026-11-26T19:05:07.123Z");
    const a = await createSubmissionFolder(db, "smoke", ["r0", "r1"], now);
    const b = await createSubmissionFolder(db, "smoke", ["r2"], now);
    equal(a, await Deno.realPath(`${dir}/results/slurm/smoke/20261126-190507`));
    notEqual(a, b);
    equal(await Deno.readTextFile(`${a}/runs.txt`), "r0\nr1\n");
    equal(await Deno.readTextFile(`${b}/runs.txt`), "r2\n");
    equal((await Deno.stat(`${a}/logs`)).isDirectory, true);
    equal(submissionsDir(db, "smoke"), `${dir}/results/slurm/smoke`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readSubmissions() returns the recorded submissions oldest first, skipping unrecorded folders", async () => {
  const dir = await Deno.makeTempDir({ prefix: "scalar-submission-" });
  try {
    const db = `${dir}/scalar.duckdb`;
    deepEqual(await readSubmissions(db, "smoke"), []);
    const newer = submission(
      await createSubmissionFolder(db, "smoke", ["r0"]),
      "21",
      ["r0"],
      "2026-02-01T00:00:00Z",
    );
    const older = submission(await createSubmissionFolder(db, "smoke", ["r0", "r1"]), "11", [
      "r0",
      "r1",
    ], "2026-01-01T00:00:00Z");
    await saveSubmission(newer);
    await saveSubmission(older);
    await createSubmissionFolder(db, "smoke", ["r9"]); // its sbatch failed: no record
    deepEqual(await readSubmissions(db, "smoke"), [older, newer]);
    deepEqual(await readSubmissions(db, "other"), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runsInQueue() maps held array tasks to their runs; ended tasks and other jobs are not", () => {
  const older = submission("", "11", ["r0", "r1", "r2"], "1");
  const newer = submission("", "21", ["r1"], "2");
  const held = runsInQueue([older, newer], [
    { job: "10", state: "running" }, // a prepare job
    { job: "11", index: 2, state: "queued", reason: "Dependency" },
    { job: "21", index: 0, state: "running" },
    { job: "99", index: 0, state: "running" }, // not this experiment's
  ]);
  deepEqual(
    held,
    new Map([
      ["r2", { state: "queued", job: "11", index: 2, reason: "Dependency" }],
      ["r1", { state: "running", job: "21", index: 0 }],
    ]),
  );
});

Deno.test("queuedRuns() asks nothing of Slurm when nothing was submitted", async () => {
  const path = Deno.env.get("PATH")!;
  Deno.env.set("PATH", "/nonexistent");
  try {
    deepEqual(await queuedRuns("/nonexistent/scalar.duckdb", "smoke"), new Map());
  } finally {
    Deno.env.set("PATH", path);
  }
});

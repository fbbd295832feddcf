import { deepEqual, equal, rejects, throws } from "node:assert/strict";
import { parseJobId, parseQueue, sbatch, scancel, SlurmError, squeue } from "./queue.ts";

/** Runs `body` with PATH holding only fake Slurm clients (shell scripts) in a temporary folder. */
async function withFakeSlurm(
  programs: Record<string, string>,
  body: (dir: string) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "scalar-fake-slurm-" });
  const path = Deno.env.get("PATH")!;
  try {
    for (const [name, script] of Object.entries(programs)) {
      await Deno.writeTextFile(`${dir}/${name}`, `#!/bin/bash\n${script}\n`);
      await Deno.chmod(`${dir}/${name}`, 0o755);
    }
    // Only the fakes: a real client on this machine must not answer.
    Deno.env.set("PATH", dir);
    await body(dir);
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("parseQueue() reads jobs and array tasks, their state and reason", () => {
  deepEqual(
    parseQueue(
      "7|RUNNING|None\n8_0|PENDING|Dependency\n8_12|COMPLETING|None\n9_1|SUSPENDED|None\n" +
        "squeue: warning: something\n\n",
    ),
    [
      { job: "7", state: "running" },
      { job: "8", index: 0, state: "queued", reason: "Dependency" },
      { job: "8", index: 12, state: "running" },
      { job: "9", index: 1, state: "suspended" },
    ],
  );
});

Deno.test("parseJobId() reads sbatch --parsable output, on a federation too", () => {
  equal(parseJobId("1234\n"), "1234");
  equal(parseJobId("1234;cluster2\n"), "1234");
  throws(() => parseJobId("sbatch: error: Batch job submission failed"), SlurmError);
});

Deno.test("sbatch() submits with --parsable and the options, from the folder given", async () => {
  await withFakeSlurm(
    { sbatch: 'printf "%s\\n" "$PWD" "$@" > args.txt; echo "41;c"' },
    async (dir) => {
      equal(await sbatch("/x/array.sbatch", { args: ["--dependency=afterok:40"], cwd: dir }), "41");
      deepEqual((await Deno.readTextFile(`${dir}/args.txt`)).trimEnd().split("\n"), [
        await Deno.realPath(dir),
        "--parsable",
        "--dependency=afterok:40",
        "/x/array.sbatch",
      ]);
    },
  );
});

Deno.test("squeue() asks for the jobs given, one line per array task; purged jobs are none", async () => {
  await withFakeSlurm({
    squeue: `if [[ "$*" == *"-j 1,2"* && "$*" == *"-r"* ]]; then echo "2_1|RUNNING|None"; ` +
      `else echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi`,
  }, async () => {
    deepEqual(await squeue(["1", "2"]), [{ job: "2", index: 1, state: "running" }]);
    deepEqual(await squeue(["3"]), []);
    deepEqual(await squeue([]), []);
  });
});

Deno.test("a failing or missing Slurm client is a SlurmError saying why", async () => {
  await withFakeSlurm({
    scancel: 'echo "scancel: error: Kill job error on job id 5: Invalid job id" >&2; exit 1',
  }, async () => {
    await rejects(scancel("5"), /scancel 5 failed \(exit 1\): scancel: error: Kill job error/);
    await rejects(sbatch("x.sbatch"), /Cannot run sbatch: it is not installed here/);
  });
});

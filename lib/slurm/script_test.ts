import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import {
  arraySpec,
  gridScripts,
  type GridScriptsPlan,
  shellQuote,
  SUBMISSION_FILES,
} from "./script.ts";

/** A plan whose "deno" is a script that prints its arguments one per line. */
async function fakePlan(overrides: Partial<GridScriptsPlan> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "scalar-script-" });
  const deno = `${dir}/fake deno`;
  await Deno.writeTextFile(deno, '#!/bin/bash\nprintf "%s\\n" "$PWD" "$@"\n');
  await Deno.chmod(deno, 0o755);
  const folder = `${dir}/results/slurm/smoke/1`;
  await Deno.mkdir(folder, { recursive: true });
  const runs = ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"];
  await Deno.writeTextFile(`${folder}/${SUBMISSION_FILES.runs}`, runs.join("\n") + "\n");
  const plan: GridScriptsPlan = {
    experiment: "smoke",
    manifest: "experiments/smoke.yaml",
    workDir: dir,
    deno,
    main: "/opt/scalar lab/main.ts",
    folder,
    runs,
    db: "results/scalar.duckdb",
    resources: {},
    ...overrides,
  };
  return { dir, plan };
}

/** Runs a script's commands (bash ignores the #SBATCH lines) with the given environment. */
async function execute(script: string, env: Record<string, string> = {}): Promise<string[]> {
  const out = await new Deno.Command("bash", { args: ["-c", script], env, stdout: "piped" })
    .output();
  equal(out.code, 0);
  return new TextDecoder().decode(out.stdout).trimEnd().split("\n");
}

Deno.test("arraySpec() gives one index per run and the parallel limit", () => {
  equal(arraySpec(1), "0-0");
  equal(arraySpec(12, 4), "0-11%4");
  throws(() => arraySpec(0), RangeError);
  throws(() => arraySpec(3, 0), /Cannot run 0 array tasks at a time/);
});

Deno.test("shellQuote() words survive the shell unchanged", async () => {
  const words = ["plain/path.yaml", "with space", "it's", "$HOME", 'a"b', "*"];
  deepEqual(await execute(`printf "%s\\n" ${words.map(shellQuote).join(" ")}`), words);
});

Deno.test("the array task i runs the run on line i + 1 into its own shard", async () => {
  const { dir, plan } = await fakePlan({ backend: "wasm" });
  try {
    const { array } = gridScripts(plan);
    const lines = await execute(array, { SLURM_ARRAY_TASK_ID: "1", SLURM_ARRAY_JOB_ID: "77" });
    deepEqual(lines, [
      "array task 1 of job 77: run bbbbbbbbbbbb",
      dir,
      "run",
      "--allow-all",
      "/opt/scalar lab/main.ts",
      "run",
      "experiments/smoke.yaml",
      "--verbose",
      "--run-id",
      "bbbbbbbbbbbb",
      "--db",
      "results/shards/bbbbbbbbbbbb.duckdb",
      "--yes",
      "--backend",
      "wasm",
    ]);
    // A results folder with a space in its name still gives one --db argument.
    const spaced = gridScripts({ ...plan, db: "my results/scalar.duckdb" }).array;
    const args = await execute(spaced, { SLURM_ARRAY_TASK_ID: "2", SLURM_ARRAY_JOB_ID: "77" });
    equal(args[args.indexOf("--db") + 1], "my results/shards/cccccccccccc.duckdb");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the prepare job prepares exactly the submitted runs", async () => {
  const { dir, plan } = await fakePlan();
  try {
    const lines = await execute(gridScripts(plan).prepare);
    equal(lines[0], dir);
    deepEqual(lines.slice(6), [
      "--verbose",
      "--prepare",
      "--run-id",
      "aaaaaaaaaaaa",
      "--run-id",
      "bbbbbbbbbbbb",
      "--run-id",
      "cccccccccccc",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the scripts ask Slurm for the resources, the array size and limit, and pass extra options", async () => {
  const { dir, plan } = await fakePlan({
    maxParallel: 2,
    resources: {
      partition: "gpu",
      time: "1:00:00",
      gpusPerTask: "1",
      cpusPerTask: "8",
      mem: "32G",
      extra: ["--account=lab", "--constraint=a100"],
    },
  });
  try {
    const { prepare, array } = gridScripts(plan);
    const directives = (s: string) =>
      s.split("\n").filter((l) => l.startsWith("#SBATCH ")).map((l) => l.slice(8));
    const common = [
      "--partition=gpu",
      "--time=1:00:00",
      "--cpus-per-task=8",
      "--gpus-per-task=1",
      "--mem=32G",
      "--account=lab",
      "--constraint=a100",
    ];
    deepEqual(directives(array), [
      "--job-name=scalar-smoke",
      `--output=${plan.folder}/logs/%A_%a.out`,
      ...common,
      "--array=0-2%2",
    ]);
    deepEqual(directives(prepare), [
      "--job-name=scalar-smoke-prepare",
      `--output=${plan.folder}/logs/prepare_%j.out`,
      ...common,
    ]);
    // Readable: says what it is and how to submit it by hand.
    match(array, /^#!\/bin\/bash\n# SCALAR lab, experiment "smoke" \(experiments\/smoke\.yaml\)/);
    match(array, /sbatch --dependency=afterok:<its job id> array\.sbatch/);
    ok(prepare.includes("Submit it first: sbatch prepare.sbatch"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

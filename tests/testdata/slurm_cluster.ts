/**
 * A real single-node Slurm cluster in a temporary folder, for tests: Debian's `slurmctld` and
 * `slurmd` with their own `munged`, ports and state, reached through `SLURM_CONF` (the recipe of
 * `../shared/reference/slurm-notes.md`). Every daemon is stopped by the pid in its pid file.
 *
 * @module
 */
import { join } from "node:path";

/** The programs a cluster needs (Debian: slurmctld, slurmd, slurm-client, munge). */
const PROGRAMS = [
  "slurmctld",
  "slurmd",
  "sbatch",
  "squeue",
  "scancel",
  "sinfo",
  "munged",
  "mungekey",
];

/** Daemons live in sbin, which a non-login PATH may lack. */
const SEARCH = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];

async function findProgram(name: string): Promise<string | undefined> {
  for (const dir of SEARCH) {
    const path = join(dir, name);
    if (await Deno.stat(path).then((s) => s.isFile, () => false)) return path;
  }
  return undefined;
}

/**
 * Why no cluster can be started here, or undefined when one can.
 *
 * @returns The reason, naming the missing programs and what installs them.
 */
export async function slurmUnavailable(): Promise<string | undefined> {
  if (Deno.build.os !== "linux") return "Slurm runs on Linux only";
  const missing = [];
  for (const name of PROGRAMS) if (!(await findProgram(name))) missing.push(name);
  if (missing.length > 0) {
    return `${missing.join(", ")} not installed (apt-get install -y slurmctld slurmd ` +
      `slurm-client munge; .ci/run does)`;
  }
  if (Deno.uid() !== 0) return "the test cluster runs its daemons as root";
  return undefined;
}

/** A running test cluster. */
export interface SlurmCluster {
  /** Its folder (slurm.conf, state, logs). */
  dir: string;
  /** The environment Slurm commands need (`SLURM_CONF`, and sbin on `PATH`). */
  env: Record<string, string>;
  /** Runs a Slurm command against it and returns its stdout; throws with stderr on failure. */
  command(name: string, ...args: string[]): Promise<string>;
  /** Cancels every job, stops every daemon by its pid, and removes the folder. */
  stop(): Promise<void>;
}

async function run(name: string, args: string[], env: Record<string, string>): Promise<string> {
  const out = await new Deno.Command((await findProgram(name)) ?? name, {
    args,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  if (!out.success) {
    throw new Error(`${name} ${args.join(" ")} failed (${out.code}): ${d.decode(out.stderr)}`);
  }
  return d.decode(out.stdout);
}

/** A TCP port that is free, with the next one free too (slurmctld's and slurmd's). */
function freePortPair(): number {
  for (;;) {
    const first = Deno.listen({ port: 0 });
    const port = (first.addr as Deno.NetAddr).port;
    try {
      Deno.listen({ port: port + 1 }).close();
      return port;
    } catch {
      // Taken: try another.
    } finally {
      first.close();
    }
  }
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`Slurm test cluster: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Whether a process is gone (a zombie counts: it has stopped, only its parent has not reaped it). */
async function gone(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z");
  } catch {
    return true;
  }
}

async function stopDaemon(pidFile: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await Deno.readTextFile(pidFile)).trim());
  } catch {
    return; // never started
  }
  if (!(pid > 1)) return;
  try {
    Deno.kill(pid, "SIGTERM");
  } catch {
    return; // already gone
  }
  try {
    await until(`pid ${pid} (${pidFile}) to stop`, 10_000, () => gone(pid));
  } catch {
    Deno.kill(pid, "SIGKILL");
  }
}

/**
 * Starts a one-node cluster with a partition `debug` holding this machine's cores, and waits until
 * its node is idle.
 *
 * @returns The cluster; stop it in a `finally`.
 * @throws If a daemon does not start; whatever did start is stopped first.
 */
export async function startSlurmCluster(): Promise<SlurmCluster> {
  const dir = await Deno.makeTempDir({ prefix: "scalar-slurm-" });
  // An unreadable slurm.conf makes sbatch retry for a minute before it fails.
  await Deno.chmod(dir, 0o755);
  for (const sub of ["munge", "log", "state", "spool"]) await Deno.mkdir(join(dir, sub));
  const conf = join(dir, "slurm.conf");
  const env = {
    SLURM_CONF: conf,
    PATH: [...new Set(SEARCH)].join(":"),
  };
  const pidFiles = ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"].map((f) => join(dir, f));
  const cluster: SlurmCluster = {
    dir,
    env,
    command: (name, ...args) => run(name, args, env),
    async stop() {
      try {
        // Jobs first, so no task outlives the cluster.
        await run("scancel", ["--full", "--partition=debug"], env);
        await until(
          "the cancelled jobs to end",
          20_000,
          async () => (await run("squeue", ["-h"], env)).trim() === "",
        );
      } catch {
        // A cluster that did not come up has no jobs; a stuck one is stopped below anyway.
      }
      for (const f of pidFiles) await stopDaemon(f);
      await Deno.remove(dir, { recursive: true });
    },
  };
  try {
    const munge = join(dir, "munge");
    await run("mungekey", ["--create", `--keyfile=${munge}/munge.key`], env);
    await run("munged", [
      "--force",
      `--socket=${munge}/sock`,
      `--key-file=${munge}/munge.key`,
      `--pid-file=${munge}/munged.pid`,
      `--log-file=${dir}/log/munged.log`,
      `--seed-file=${munge}/seed`,
    ], env);
    const host = Deno.hostname().split(".")[0]!;
    const port = freePortPair();
    // `slurmd -C` prints this node's line: "NodeName=host CPUs=2 … RealMemory=…".
    const node = (await run("slurmd", ["-C"], env)).split("\n")[0]!.replace(/^NodeName=\S+\s*/, "");
    await Deno.writeTextFile(
      conf,
      `ClusterName=scalartest
SlurmctldHost=${host}
SlurmUser=root
SlurmctldPort=${port}
SlurmdPort=${port + 1}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${munge}/sock
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/log/slurmctld.log
SlurmdLogFile=${dir}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=${host} ${node} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
`,
    );
    await Deno.chmod(conf, 0o644);
    await run("slurmctld", [], env);
    await run("slurmd", [], env);
    await until("the node to be idle", 30_000, async () => {
      try {
        return (await run("sinfo", ["-h", "-N", "-o", "%t"], env)).trim() === "idle";
      } catch {
        return false;
      }
    });
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

/**
 * The PyTorch peer of the benchmark (`tests/bench/peer_torch.py`): finds a Python that has torch
 * and runs the script, which prints one JSON object per case.
 *
 * @module
 */

/**
 * Finds a Python with PyTorch: `python3` on PATH, then Debian's.
 *
 * @returns Its command, or undefined.
 */
export async function peerPython(): Promise<string | undefined> {
  for (const python of ["python3", "/usr/bin/python3"]) {
    try {
      const probe = await new Deno.Command(python, { args: ["-c", "import torch"], stderr: "null" })
        .output();
      if (probe.success) return python;
    } catch {
      // Not installed under this name.
    }
  }
  return undefined;
}

/**
 * Runs the peer script with `--json` and the given arguments.
 *
 * @param script Path of `peer_torch.py`.
 * @param args More arguments (`--reps`, `--device`, `--case`…).
 * @param python The Python to run it with. @default {@link peerPython}'s
 * @returns Case name → median milliseconds, or why the peer did not run.
 */
export async function torchPeer(
  script: string,
  args: string[],
  python?: string,
): Promise<Map<string, number> | string> {
  python ??= await peerPython();
  if (python === undefined) {
    return "no python3 with PyTorch (Debian: apt-get install python3-torch)";
  }
  const out = await new Deno.Command(python, {
    args: [script, "--json", ...args],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) return `${script} exited with ${out.code}`;
  const rows = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) => JSON.parse(l));
  return new Map(rows.map((r: { name: string; peer_ms: number }) => [r.name, r.peer_ms]));
}

/** A running peer that times one step per request (`peer_torch.py --serve`). */
export interface PeerServer {
  /**
   * Times one step of a case (built and warmed up at its first request).
   *
   * @param name The peer's case name.
   * @returns Milliseconds.
   */
  step(name: string): Promise<number>;
  /** Ends the peer process. */
  close(): Promise<void>;
}

/**
 * Starts the peer script in `--serve` mode, for timings interleaved with ours (A B A B), so both
 * sides see the same load on a shared machine.
 *
 * @param script Path of `peer_torch.py`.
 * @param args More arguments (`--threads N`).
 * @param python The Python to run it with. @default {@link peerPython}'s
 * @returns The server, or why the peer cannot run.
 */
export async function servePeer(
  script: string,
  args: string[] = [],
  python?: string,
): Promise<PeerServer | string> {
  python ??= await peerPython();
  if (python === undefined) {
    return "no python3 with PyTorch (Debian: apt-get install python3-torch)";
  }
  const child = new Deno.Command(python, {
    args: [script, "--serve", ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  const nextLine = async (): Promise<string> => {
    while (!pending.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) {
        throw new Error(`${script} --serve ended early (exit ${(await child.status).code})`);
      }
      pending += value;
    }
    const at = pending.indexOf("\n");
    const line = pending.slice(0, at);
    pending = pending.slice(at + 1);
    return line;
  };
  return {
    async step(name) {
      await writer.write(new TextEncoder().encode(`${name}\n`));
      return (JSON.parse(await nextLine()) as { ms: number }).ms;
    },
    async close() {
      // End of input ends the peer; its output is read to the end so that the process can exit.
      await writer.close();
      while (!(await lines.read()).done);
      await child.status;
    },
  };
}

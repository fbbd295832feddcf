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

/**
 * Finding where a training run stands from its output folder: nothing yet, unfinished (resume
 * from its checkpoint), or finished. A folder written with other settings is refused rather than
 * silently mixed with this run.
 *
 * @module
 */
import {
  type Checkpoint,
  CheckpointError,
  hasCheckpoint,
  loadCheckpoint,
} from "../model/checkpoint.ts";

/** Where a run stands. */
export type RunState =
  | { kind: "new" }
  | { kind: "resume"; checkpoint: Checkpoint & { state: NonNullable<Checkpoint["state"]> } }
  | { kind: "finished"; checkpoint: Checkpoint };

/**
 * Reads a run's folder. Its checkpoint's `config.json` must hold the run's settings under
 * `settingsKey`, exactly as given now.
 *
 * @param outDir The run's checkpoint folder.
 * @param settingsKey The config field holding the settings (e.g. `train`).
 * @param settings This invocation's settings.
 * @returns `new`, `resume` (with the checkpoint and its state) or `finished`.
 * @throws {CheckpointError} If the folder holds a run with other settings.
 */
export async function runState(
  outDir: string,
  settingsKey: string,
  settings: unknown,
): Promise<RunState> {
  if (!(await hasCheckpoint(outDir))) return { kind: "new" };
  const checkpoint = await loadCheckpoint(outDir);
  const saved = (checkpoint.config as Record<string, unknown> | null)?.[settingsKey];
  if (JSON.stringify(saved) !== JSON.stringify(settings)) {
    throw new CheckpointError(
      outDir,
      `Cannot resume "${outDir}": it holds a run with other settings; ` +
        `choose another output folder or delete it`,
    );
  }
  return checkpoint.state === undefined ? { kind: "finished", checkpoint } : {
    kind: "resume",
    checkpoint: checkpoint as Checkpoint & { state: NonNullable<Checkpoint["state"]> },
  };
}

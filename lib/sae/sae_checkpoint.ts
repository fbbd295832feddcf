/**
 * Loading the SAEs of a trained run from its checkpoint folder (written by `trainSaes`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { CheckpointError, type CheckpointTensor, loadCheckpoint } from "../model/checkpoint.ts";
import { buildSaes, type SaeConfig, type SaeSet } from "./architectures.ts";
import { layoutPosition, type Position } from "./positions.ts";

/** What an SAE run's `config.json` holds (the fields the project reads back). */
export interface SaeCheckpointConfig {
  /** Identifies the layout. */
  format: "scalar-lab/saes";
  /** The SAEs' and training settings. */
  settings: { sae: SaeConfig; train: Record<string, unknown> };
  /** Hooks with an SAE. */
  hooks: string[];
  /** Features per hook. */
  widths: Record<string, number>;
  /** The model folder the SAEs were trained on. */
  modelDir: string;
  /** The model's family (absent in runs written before GPT-2 support: toy). */
  modelKind?: "toy" | "gpt2";
  /** The blocks with SAEs (absent: all). */
  layers?: number[];
  /** Where the text came from (absent: the registered corpus named in `corpus`). */
  data?: { corpus: string; path?: string; textField?: string };
  /** The SAE position. */
  position: Position;
  /** Layers of the model. */
  nLayer: number;
  /** Activation width. */
  d: number;
  /** Corpus name and checksum. */
  corpus: { name: string; sha256: string };
}

/**
 * Loads a run's SAEs.
 *
 * @param dir The run's SAE checkpoint folder.
 * @returns The SAE set (parameters frozen by the caller's choice of use) and its config.
 * @throws {CheckpointError} If the folder is not an SAE checkpoint or a parameter is missing.
 */
export async function loadSaes(
  dir: string,
): Promise<{ saes: SaeSet; config: SaeCheckpointConfig }> {
  const checkpoint = await loadCheckpoint(dir);
  const config = checkpoint.config as SaeCheckpointConfig;
  if (config?.format !== "scalar-lab/saes") {
    throw new CheckpointError(
      dir,
      `Cannot load SAEs from "${dir}": config.json has no "format": "scalar-lab/saes" ` +
        `(is this a trained SAE run's folder?)`,
    );
  }
  const layout = layoutPosition(config.position, config.nLayer, config.layers);
  const saes = buildSaes(config.settings.sae, layout, config.d, 0);
  try {
    restoreParams(saes.params, checkpoint.params, dir);
  } catch (e) {
    saes.dispose();
    throw e;
  }
  return { saes, config };
}

/**
 * Copies saved values into variables, checking that each is present with the right size.
 *
 * @param params Name → variable to fill.
 * @param saved Name → saved tensor.
 * @param dir The checkpoint folder, for messages.
 * @throws {CheckpointError} Naming a missing or wrongly sized parameter.
 */
export function restoreParams(
  params: ReadonlyMap<string, tf.Variable>,
  saved: Record<string, CheckpointTensor>,
  dir: string,
): void {
  for (const [name, v] of params) {
    const t = saved[name];
    if (t === undefined || t.data.length !== v.size) {
      throw new CheckpointError(
        dir,
        `Cannot load SAEs from "${dir}": parameter "${name}" is missing or has the wrong size ` +
          `(expected shape [${v.shape}])`,
      );
    }
    v.assign(tf.tensor(t.data, v.shape));
  }
}

/**
 * A tiny model and a two-run grid in the smoke manifest's shape (TopK vs Staircase at the
 * feed-forward block), small enough that the runner's end-to-end tests train, evaluate and measure
 * it in seconds; and the command line those tests drive it through.
 *
 * @module
 */
import { resolve } from "node:path";
import { SHIPPED_DATA_DIR } from "../../lib/data/corpus.ts";
import { CHAR_TINY, saveRandomToyModel } from "../../lib/model/testdata/tiny_gpt.ts";

/** The program's entry point. */
export const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** The folder holding `tinyshakespeare.txt`: `$SCALAR_DATA_DIR`, else the copy the repository ships. */
export const dataDir: string | undefined = Deno.env.get("SCALAR_DATA_DIR") || SHIPPED_DATA_DIR;

/** The environment of the children; they run in a temporary folder, so the data folder is absolute. */
export const CHILD_ENV = {
  NO_COLOR: "1",
  SCALAR_BACKEND: "wasm",
  ...(dataDir ? { SCALAR_DATA_DIR: resolve(dataDir) } : {}),
};

/**
 * Runs the command line in a folder.
 *
 * @param cwd The folder.
 * @param args The command and its arguments.
 * @returns Exit code, stdout and stderr.
 */
export async function cli(cwd: string, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env: CHILD_ENV,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

/**
 * Makes a temporary folder with a tiny trained-model checkpoint (`model/`) and the manifest
 * `grid.yaml` (experiment `tiny-grid`: TopK and Staircase, seed 0, 6 training steps unless said).
 *
 * @param o Training steps of each run.
 * @returns The folder; remove it when done.
 */
export async function setUpTinyGrid(o: { steps?: number } = {}): Promise<string> {
  const dir = await Deno.makeTempDir();
  await saveRandomToyModel(`${dir}/model`, CHAR_TINY, 3);
  await Deno.writeTextFile(
    `${dir}/grid.yaml`,
    `name: tiny-grid
model: { kind: toy, checkpoint: model }
position: mlp-block
sae: { arch: topk, features: 16, k: 2 }
train: { steps: ${o.steps ?? 6}, batch: 4, warmup: 1, log_every: 2, checkpoint_every: 3 }
eval: { sequences: 8 }
scalar: { ig_steps: 2, ig_batches: 1, ig_batch_size: 2, prompts: 2, bootstrap: 50 }
seeds: [0]
matrix:
  sae.arch: [topk, staircase]
`,
  );
  return dir;
}

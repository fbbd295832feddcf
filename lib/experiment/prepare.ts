/**
 * The work a grid's runs share, done once before any of them (a Slurm grid's first job, which its
 * array of runs waits for): each distinct model, data and SAE position of the grid gets its data
 * tokenized and its activation cache filled, so that runs started side by side read one cache
 * instead of each filling its own.
 *
 * @module
 */
import { canonicalJson } from "./manifest.ts";
import { prepareSaeRun, type SaeRunConfig } from "./sae_run.ts";

/**
 * What a run shares with others: runs with the same key read the same model, tokens and
 * activation cache, whatever their SAEs, training or seed, and wherever their files lie.
 *
 * @param config A run's configuration.
 * @returns A text equal for exactly the runs that share their preparation.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { sharedWorkKey } from "./prepare.ts";
 * const run = { modelDir: "m", corpus: "tinyshakespeare", position: "mlp-block" } as const;
 * equal(
 *   sharedWorkKey({ ...run, sae: { arch: "topk" } } as never),
 *   sharedWorkKey({ ...run, sae: { arch: "staircase" } } as never),
 * );
 * ```
 */
export function sharedWorkKey(config: SaeRunConfig): string {
  // By content where the manifest hashed it (one model under two paths is one piece of work).
  return canonicalJson({
    model: [config.modelKind ?? "toy", config.modelSha256 ?? config.modelDir],
    data: config.dataSha256 ?? [config.corpus, config.dataPath ?? null, config.textField ?? null],
    position: config.position,
    layers: config.layers ?? null,
  });
}

/**
 * Prepares every distinct piece of shared work of some runs, once each (see
 * {@link prepareSaeRun}); what is already there is reused.
 *
 * @param configs The runs.
 * @param o Where the shared activation caches live, and progress lines.
 * @returns How many distinct pieces of work there were.
 * @throws As {@link prepareSaeRun} does.
 */
export async function prepareRuns(
  configs: readonly SaeRunConfig[],
  o: { cacheRoot: string; log: (line: string) => void },
): Promise<number> {
  const distinct = new Map<string, SaeRunConfig>();
  for (const config of configs) {
    const key = sharedWorkKey(config);
    if (!distinct.has(key)) distinct.set(key, config);
  }
  for (const [i, config] of [...distinct.values()].entries()) {
    o.log(
      `preparing ${i + 1}/${distinct.size}: ${config.modelDir} at ${config.position} ` +
        `(${config.dataPath ?? config.corpus})`,
    );
    await prepareSaeRun(config, o);
  }
  return distinct.size;
}

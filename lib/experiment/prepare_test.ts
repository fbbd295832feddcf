import { deepEqual, equal, match, notEqual } from "node:assert/strict";
import { CHAR_TINY, saveRandomToyModel } from "../model/testdata/tiny_gpt.ts";
import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
import { prepareRuns, sharedWorkKey } from "./prepare.ts";
import { type SaeRunConfig, SCALAR_DEFAULTS } from "./sae_run.ts";

function config(dir: string, overrides: Partial<SaeRunConfig>): SaeRunConfig {
  return {
    modelDir: `${dir}/model`,
    corpus: "tinyshakespeare",
    dataPath: `${dir}/text.txt`,
    position: "mlp-block",
    sae: { arch: "topk", features: 16, k: 2, jsaeLambda: 0 },
    train: { ...SAE_TRAIN_DEFAULTS },
    evalSequences: 0,
    scalar: { ...SCALAR_DEFAULTS },
    ...overrides,
  };
}

async function cacheFolders(root: string): Promise<string[]> {
  const names = [];
  for await (const e of Deno.readDir(root)) names.push(e.name);
  return names.sort();
}

Deno.test("sharedWorkKey() tells apart exactly what changes the model, data or hooks", () => {
  const base = config("d", {});
  equal(
    sharedWorkKey(base),
    sharedWorkKey(config("d", { sae: { ...base.sae, arch: "staircase" } })),
  );
  equal(sharedWorkKey(base), sharedWorkKey(config("d", { train: { ...base.train, seed: 4 } })));
  notEqual(sharedWorkKey(base), sharedWorkKey(config("d", { position: "mlp" })));
  notEqual(sharedWorkKey(base), sharedWorkKey(config("d", { modelDir: "other" })));
  notEqual(sharedWorkKey(base), sharedWorkKey(config("d", { dataPath: "other.txt" })));
});

Deno.test("prepareRuns() fills one activation cache per distinct position, and reuses them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "scalar-prepare-" });
  const cacheDir = Deno.env.get("SCALAR_CACHE_DIR");
  Deno.env.set("SCALAR_CACHE_DIR", `${dir}/tokens`);
  try {
    await saveRandomToyModel(`${dir}/model`, CHAR_TINY, 3);
    await Deno.writeTextFile(
      `${dir}/text.txt`,
      "To be, or not to be: that is the question.\n".repeat(40),
    );
    const topk = config(dir, {});
    const runs = [
      topk,
      config(dir, { sae: { ...topk.sae, arch: "staircase" } }),
      config(dir, { position: "mlp" }),
    ];
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    equal(await prepareRuns(runs, { cacheRoot: `${dir}/cache`, log }), 2);
    const folders = await cacheFolders(`${dir}/cache`);
    equal(folders.length, 2);
    for (const f of folders) {
      const meta = JSON.parse(await Deno.readTextFile(`${dir}/cache/${f}/meta.json`));
      equal(meta.complete, true);
    }
    lines.length = 0;
    equal(await prepareRuns(runs, { cacheRoot: `${dir}/cache`, log }), 2);
    deepEqual(await cacheFolders(`${dir}/cache`), folders);
    equal(lines.filter((l) => /activation cache: reusing/.test(l)).length, 2);
    match(lines[0]!, /^preparing 1\/2: .*model at mlp-block/);
  } finally {
    if (cacheDir === undefined) Deno.env.delete("SCALAR_CACHE_DIR");
    else Deno.env.set("SCALAR_CACHE_DIR", cacheDir);
    await Deno.remove(dir, { recursive: true });
  }
});

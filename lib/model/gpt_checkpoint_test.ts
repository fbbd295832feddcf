import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { GPT, type GPTConfig } from "./gpt.ts";
import { gptTensors, loadGpt } from "./gpt_checkpoint.ts";
import { saveCheckpoint } from "./checkpoint.ts";

const TINY: GPTConfig = {
  nLayer: 2,
  nHead: 2,
  dModel: 8,
  dMlp: 16,
  nCtx: 6,
  vocabSize: 7,
  lnEps: 1e-5,
};

async function saveTiny(dir: string, seed = 1) {
  const model = GPT.init(TINY, seed);
  const values = await model.parameterValues();
  await saveCheckpoint(dir, {
    config: { format: "scalar-lab/gpt", model: TINY, tokenizer: "char" },
    params: gptTensors(TINY, values),
  });
  return { model, values };
}

Deno.test("loadGpt() round-trips parameters bit-exactly and gives the same logits", async () => {
  const dir = await Deno.makeTempDir();
  const { model, values } = await saveTiny(`${dir}/m`);
  const loaded = await loadGpt(`${dir}/m`);
  const back = await loaded.model.parameterValues();
  for (const [name, v] of values) assert.deepEqual(back.get(name), v, name);
  const tokens = tf.tensor2d([[1, 2, 3, 4, 5, 6]], [1, 6], "int32");
  assert.deepEqual(await loaded.model.forward(tokens).data(), await model.forward(tokens).data());
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadGpt() gives clear errors for truncated files, missing tensors and wrong shapes", async () => {
  const dir = await Deno.makeTempDir();
  await saveTiny(`${dir}/m`);
  const file = `${dir}/m/model.safetensors`;
  const bytes = await Deno.readFile(file);
  await Deno.writeFile(file, bytes.slice(0, bytes.length - 100));
  await assert.rejects(loadGpt(`${dir}/m`), (e: Error) => {
    assert.match(e.message, /model\.safetensors/);
    assert.doesNotMatch(e.message, /undefined|RangeError/);
    return e.name === "SafetensorsError";
  });
  await Deno.writeFile(file, bytes.slice(0, 5));
  await assert.rejects(loadGpt(`${dir}/m`), /model\.safetensors/);

  // A checkpoint of another shape: its tensors do not fit the config it claims.
  const other = GPT.init({ ...TINY, dModel: 4 }, 1);
  await saveCheckpoint(`${dir}/bad`, {
    config: { format: "scalar-lab/gpt", model: TINY, tokenizer: "char" },
    params: gptTensors({ ...TINY, dModel: 4 }, await other.parameterValues()),
  });
  await assert.rejects(
    loadGpt(`${dir}/bad`),
    /tensor "wte\.weight" has shape \[7,4\], expected \[7,8\]/,
  );
  await saveCheckpoint(`${dir}/missing`, {
    config: { format: "scalar-lab/gpt", model: TINY, tokenizer: "char" },
    params: {},
  });
  await assert.rejects(
    loadGpt(`${dir}/missing`),
    /tensor "wte\.weight" is missing \(expected shape \[7,8\]\)/,
  );
  await saveCheckpoint(`${dir}/foreign`, { config: { hello: 1 }, params: {} });
  await assert.rejects(loadGpt(`${dir}/foreign`), /no "format": "scalar-lab\/gpt"/);
  await Deno.remove(dir, { recursive: true });
});

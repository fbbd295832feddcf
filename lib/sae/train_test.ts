import assert from "node:assert/strict";
import { buildSaes, type SaeConfig } from "./architectures.ts";
import { layoutPosition } from "./positions.ts";
import { SAE_TRAIN_DEFAULTS, trainSaes, type TrainSaesOptions } from "./train.ts";
import { sparseSource } from "./testdata/sparse_source.ts";
import { loadCheckpoint } from "../model/checkpoint.ts";

const D = 6, SEQ = 4;
const layout = layoutPosition("mlp-block", 1); // two hooks, one pair

const sae: SaeConfig = { arch: "staircase", features: 12, k: 2, jsaeLambda: 0 };

function options(outDir: string, extra: Partial<TrainSaesOptions> = {}): TrainSaesOptions {
  return {
    saes: buildSaes(sae, layout, D, 0),
    sae,
    train: {
      ...SAE_TRAIN_DEFAULTS,
      steps: 60,
      batch: 8,
      warmup: 5,
      lr: 1e-2,
      logEvery: 1,
      checkpointEvery: 100,
    },
    seqLen: SEQ,
    d: D,
    data: sparseSource(400, layout.hooks, D),
    outDir,
    provenance: {},
    log: () => {},
    ...extra,
  };
}

Deno.test("trainSaes() lowers every SAE's reconstruction loss", async () => {
  const dir = await Deno.makeTempDir();
  const lines: string[] = [];
  const o = options(`${dir}/run`, { log: (l) => lines.push(l) });
  const result = await trainSaes(o);
  const first = lines.find((l) => l.startsWith("step  1/"))!;
  const initial = Number(first.match(/loss ([\d.]+)/)![1]);
  const final = Object.values(result.losses).reduce((a, b) => a + b, 0);
  assert.ok(final < 0.5 * initial, `loss ${initial} → ${final}`);
  assert.match(lines.at(-2)!, /L0 2\.0\/2\.0/);
  o.saes.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("trainSaes() fails with the step and the SAE named when a NaN enters training", async () => {
  const dir = await Deno.makeTempDir();
  const o = options(`${dir}/run`, {
    data: sparseSource(400, layout.hooks, D, { hook: "blocks.0.hook_resid_post", row: 40 }),
  });
  // Row 40 is in the 2nd batch (32 rows each); the loss is checked at every step here.
  await assert.rejects(
    trainSaes(o),
    /Cannot train: the loss of blocks\.0\.hook_resid_post became NaN at step 2$/,
  );
  o.saes.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("trainSaes() with micro-batches takes the same steps as with the whole batch", async () => {
  const dir = await Deno.makeTempDir();
  const run = async (name: string, microBatch?: number) => {
    const lines: string[] = [];
    const o = options(`${dir}/${name}`, { log: (l) => lines.push(l) });
    o.train = { ...o.train, steps: 6, microBatch };
    // The reference itself (the engines are held to it in steppers_test.ts).
    o.stepper = "tfjs";
    await trainSaes(o);
    o.saes.dispose();
    return { ckpt: (await loadCheckpoint(`${dir}/${name}`))!, lines };
  };
  const whole = await run("whole");
  // 8 sequences in passes of 3, 3 and 2: unequal shares of the batch.
  const micro = await run("micro", 3);
  for (const [name, p] of Object.entries(whole.ckpt.params)) {
    const q = micro.ckpt.params[name]!.data;
    const err = p.data.reduce((m, v, i) => Math.max(m, Math.abs(v - q[i]!)), 0);
    assert.ok(err < 1e-5, `${name}: max difference ${err}`);
  }
  // The progress lines show the same losses and L0s: the batch's, not the last pass's.
  const figures = (lines: string[]) =>
    lines.filter((l) => l.startsWith("step")).flatMap((l) =>
      l.replace(/\|[^|]*tok\/s.*$/, "").match(/\d+\.\d+/g)!.map(Number)
    );
  const [a, b] = [figures(micro.lines), figures(whole.lines)];
  assert.equal(a.length, 6 * 6);
  a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) <= 2e-4 * Math.abs(b[i]!), `${v} vs ${b[i]}`));
  await Deno.remove(dir, { recursive: true });
});

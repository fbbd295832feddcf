import assert from "node:assert/strict";
import { GPT2_SMALL, parameterShapes, SHAKESPEARE_64X4 } from "../model/gpt.ts";
import type { Architecture } from "../sae/architectures.ts";
import type { Position } from "../sae/positions.ts";
import { SAE_TRAIN_DEFAULTS } from "../sae/train.ts";
import {
  estimateRun,
  formatEstimate,
  measureThroughput,
  saeParameterCount,
  saeWidths,
  stepFlops,
} from "./estimate.ts";
import { type SaeRunConfig, SCALAR_DEFAULTS } from "./sae_run.ts";

function run(
  position: Position,
  arch: Architecture,
  extra: Partial<SaeRunConfig> = {},
): SaeRunConfig {
  return {
    modelDir: "m",
    corpus: "tinyshakespeare",
    position,
    sae: { arch, features: 512, k: 10, jsaeLambda: 0 },
    train: { ...SAE_TRAIN_DEFAULTS },
    evalSequences: 0,
    scalar: { ...SCALAR_DEFAULTS },
    ...extra,
  };
}

Deno.test("saeParameterCount() gives the paper's toy parameter counts", () => {
  const count = (p: Position, a: Architecture) => saeParameterCount(run(p, a), 64, 4);
  assert.equal(count("block", "topk"), 330_560);
  assert.equal(count("block", "staircase"), 335_680);
  assert.equal(count("mlp-block", "topk"), 528_896);
  assert.equal(count("mlp-block", "staircase"), 530_944);
});

Deno.test("saeWidths() grows Staircase chains and follows the chosen layers", () => {
  const gpt2 = run("block", "staircase", {
    sae: { arch: "staircase", features: 24_576, k: 32, jsaeLambda: 0 },
  });
  assert.equal([...saeWidths(gpt2, 12).values()].at(-1), 319_488);
  const layers = saeWidths(run("mlp-block", "topk", { layers: [1, 6, 11] }), 12);
  assert.deepEqual(
    [...layers.keys()],
    [1, 6, 11].flatMap((l) => [
      `blocks.${l}.hook_resid_mid`,
      `blocks.${l}.hook_resid_post`,
    ]),
  );
});

Deno.test("estimateRun() counts the toy run's memory and arithmetic from its parts", () => {
  const corpus = { train: 1_003_776, val: 111_618 };
  const e = estimateRun(run("mlp-block", "topk"), SHAKESPEARE_64X4, corpus);
  const part = (label: RegExp) => e.memory.find((p) => label.test(p.label))!.amount;
  assert.equal(part(/^model$/), 4 * 216_448);
  assert.equal(part(/Adam/), 16 * 528_896);
  // 8 hooks × 64 floats of the 1,003,776 training tokens fit the 4 GiB budget: cached.
  assert.equal(part(/activation cache/), 1_003_776 * 8 * 64 * 4);
  // Training: 7,500 steps × 16,384 tokens × 6 · 64 · (8 × 512) FLOPs.
  assert.equal(e.work[0]!.amount, 7500 * 16_384 * 6 * 64 * 8 * 512);
  assert.equal(e.peakBytes, e.memory.reduce((n, p) => n + p.amount, 0));
});

Deno.test("estimateRun() counts the CPU engine's training at the quickstart's shape by hand", () => {
  // experiments/quickstart.yaml: mlp-block of the 4-layer toy (d 64, MLP 256), 512 features,
  // k 10, 400 steps of 32 sequences × 128 tokens = 4,096 tokens.
  const train = { ...SAE_TRAIN_DEFAULTS, steps: 400, batch: 32 };
  const corpus = { train: 1_003_776, val: 111_618 };
  const training = (arch: Architecture, stepper: "cpu" | "tfjs") =>
    estimateRun(
      run("mlp-block", arch, { sae: { arch, features: 512, k: 10, jsaeLambda: 1 }, train }),
      SHAKESPEARE_64X4,
      corpus,
      stepper,
    ).work[0]!.amount;
  // Per token and SAE: the encoder product 2 · 64 · 512 = 65,536, and over the 10 kept features
  // decode, ∂L/∂pre, ∂W_dec and ∂W_enc at 2 · 64 each: 5,120. Eight SAEs: 565,248 per token.
  assert.equal(training("topk", "cpu"), 400 * 4096 * 565_248);
  // Staircase: the resid_post SAE of each layer encodes 1,024 shared features:
  // 4 · 65,536 + 4 · 131,072 + 8 · 5,120 = 827,392 per token.
  assert.equal(training("staircase", "cpu"), 400 * 4096 * 827_392);
  // The reference stays dense: 6 · 64 per feature, 4,096 features.
  assert.equal(training("topk", "tfjs"), 400 * 4096 * 6 * 64 * 4096);
  // JSAE adds per pair (4) and token GELU′'s product 2 · 64 · 256 = 32,768 and J with both of its
  // gradients over 10 × 10 pairs, 6 · 100 · 256 = 153,600; per step the factors and their
  // gradients, 4 · 64 · 256 · (512 + 512) = 67,108,864.
  const jsae = run("mlp-block", "jsae", {
    sae: { arch: "jsae", features: 512, k: 10, jsaeLambda: 1 },
    train,
  });
  const perToken = 565_248 + 4 * (32_768 + 153_600);
  assert.equal(stepFlops(jsae, SHAKESPEARE_64X4, "cpu"), 4096 * perToken + 4 * 67_108_864);
});

Deno.test("estimateRun() streams GPT-2 activations and micro-batches shrink the pass", () => {
  const sae = { arch: "topk" as const, features: 24_576, k: 32, jsaeLambda: 0 };
  const train = { ...SAE_TRAIN_DEFAULTS, batch: 32 };
  const corpus = { train: 100_000_000, val: 1_000_000 };
  const scalar = { ...SCALAR_DEFAULTS, enabled: false };
  const whole = estimateRun(
    run("mlp-block", "topk", { sae, train, scalar, layers: [1, 6, 11] }),
    GPT2_SMALL,
    corpus,
  );
  const micro = estimateRun(
    run("mlp-block", "topk", {
      sae,
      train: { ...train, microBatch: 1 },
      scalar,
      layers: [1, 6, 11],
    }),
    GPT2_SMALL,
    corpus,
  );
  const pass = (e: typeof whole) => e.memory.at(-1)!.amount;
  assert.equal(pass(whole), 32 * pass(micro));
  assert.ok(whole.memory.some((p) => /streamed/.test(p.label)));
  const params = [...parameterShapes(GPT2_SMALL).values()].reduce(
    (n, s) => n + s[0]! * (s[1] ?? 1),
    0,
  );
  assert.equal(whole.memory[0]!.amount, 4 * params);
  const lines = formatEstimate([micro], { saeSteps: 1e12, model: 1e12 }, 1e9);
  assert.match(lines[1]!, /memory at the peak of the largest run: [\d.]+ GB of 1\.0 GB available/);
  assert.match(lines[2]!, /^ {2}time: \d+h\d\dm for 1 run/);
});

Deno.test("formatEstimate() times SAE steps and the model's passes each at its own rate", () => {
  // The block grid's Staircase run on the CPU engine trains at ~90 GFLOP/s where tfjs's products
  // reach ~11: rating its 124 TFLOP of SAE steps at the model's rate said 3 h for a 22-min stage.
  const e = estimateRun(run("block", "staircase"), SHAKESPEARE_64X4, {
    train: 1_003_776,
    val: 111_618,
  }, "cpu");
  const [training, evaluation, scalar] = e.work.map((p) => p.amount);
  const rates = { saeSteps: training! / 1200, model: (evaluation! + scalar!) / 300 };
  const lines = formatEstimate([e], rates, undefined);
  assert.match(lines[0]!, /SAE steps [\d.]+ GFLOP\/s, the model's passes [\d.]+ GFLOP\/s/);
  // 1,200 s of steps and 300 s of the rest: 25 minutes, not either rate's figure for the whole.
  assert.match(lines[2]!, /^ {2}time: 25m00s for 1 run; the longest 25m00s \(training 20m00s, /);
});

Deno.test("measureThroughput() rates the CPU engine's steps apart from tfjs's products", async () => {
  const cpu = await measureThroughput(64, "cpu");
  const tfjs = await measureThroughput(64, "tfjs");
  for (const rate of [cpu.saeSteps, cpu.model, tfjs.saeSteps, tfjs.model]) {
    assert.ok(Number.isFinite(rate) && rate > 0, `rate ${rate}`);
  }
  // Without the engine the SAE steps are tfjs's own products: one measurement serves both.
  assert.equal(tfjs.saeSteps, tfjs.model);
  assert.notEqual(cpu.saeSteps, cpu.model);
});

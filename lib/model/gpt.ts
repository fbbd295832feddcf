/**
 * The project's GPT: a GPT-2-style pre-LayerNorm decoder (the paper's toy model and, with Hugging
 * Face weights, GPT-2 itself), written in TensorFlow.js ops so that every backend runs it.
 *
 * Activations can be read and replaced at TransformerLens-style hook points, and a forward pass can
 * start at any hook and stop at any later one — the SAEs and SCALAR splice themselves in this way.
 *
 * Dimensions: B batch, T positions, D d_model, H heads, S head size (D / H), M MLP width, V vocab.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL } from "../backend/attention_kernel.ts";
import { LAYER_NORM_GRAD_KERNEL, LAYER_NORM_KERNEL } from "../backend/layer_norm_kernel.ts";
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from "../backend/gelu_kernel.ts";
import { createRng, normalArray } from "../util/rng.ts";

/** Shape of a GPT (the fields of a Hugging Face GPT-2 `config.json`, in our names). */
export interface GPTConfig {
  /** Transformer blocks. */
  nLayer: number;
  /** Attention heads per block. */
  nHead: number;
  /** Residual stream width. */
  dModel: number;
  /** MLP hidden width (4 · dModel in GPT-2). */
  dMlp: number;
  /** Context length: the number of learned positions. */
  nCtx: number;
  /** Vocabulary size (128 for the character tokenizer). */
  vocabSize: number;
  /** LayerNorm epsilon. */
  lnEps: number;
  /**
   * What normalises the MLP's input (`ln_2`): LayerNorm, or DynamicTanh γ·tanh(α·x) + β (Zhu et
   * al. 2025; the SCALAR authors' fine-tune of the toy model, {@link dynamicTanh}). Absent in
   * GPT-2 and older checkpoints, which means LayerNorm. @default "layernorm"
   */
  mlpNorm?: MlpNorm;
}

/** The MLP input's normalisation: `layernorm` (GPT-2) or `dyt` (DynamicTanh). */
export type MlpNorm = "layernorm" | "dyt";

/** The choices of {@link GPTConfig.mlpNorm}. */
export const MLP_NORMS: readonly MlpNorm[] = ["layernorm", "dyt"];

/**
 * DynamicTanh's initial α: 2, as the SCALAR authors' fine-tune builds it (their GPTConfig's
 * `alpha_mlp` default; the fine-tune rebuilds the config from the base model's JSON, which does
 * not carry the 10 of their `ascii_64x4_dyt` preset). γ starts at 1 and β at 0.
 */
export const DYT_ALPHA_INIT = 2;

/** The paper's toy model: 4 layers, 4 heads, d_model 64, context 128, character vocabulary. */
export const SHAKESPEARE_64X4: Readonly<GPTConfig> = Object.freeze({
  nLayer: 4,
  nHead: 4,
  dModel: 64,
  dMlp: 256,
  nCtx: 128,
  vocabSize: 128,
  lnEps: 1e-5,
});

/** GPT-2 Small (124M), the shape of the Hugging Face `gpt2` checkpoint. */
export const GPT2_SMALL: Readonly<GPTConfig> = Object.freeze({
  nLayer: 12,
  nHead: 12,
  dModel: 768,
  dMlp: 3072,
  nCtx: 1024,
  vocabSize: 50257,
  lnEps: 1e-5,
});

/** Named model configurations a manifest can refer to. */
export const MODEL_PRESETS: Readonly<Record<string, Readonly<GPTConfig>>> = Object.freeze({
  shakespeare_64x4: SHAKESPEARE_64X4,
});

/**
 * Lists the parameter names and shapes of a GPT in the Hugging Face GPT-2 layout (linear weights
 * stored input-major, `[in, out]`, as GPT-2's Conv1D does), so that GPT-2 checkpoints load as they are.
 * The LM head has no tensor of its own: it is tied to `wte.weight`.
 *
 * @param c The model shape.
 * @returns Parameter name → shape, in a fixed order.
 */
export function parameterShapes(c: GPTConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>([
    ["wte.weight", [c.vocabSize, c.dModel]],
    ["wpe.weight", [c.nCtx, c.dModel]],
  ]);
  for (let i = 0; i < c.nLayer; i++) {
    const p = `h.${i}`;
    shapes.set(`${p}.ln_1.weight`, [c.dModel]);
    shapes.set(`${p}.ln_1.bias`, [c.dModel]);
    shapes.set(`${p}.attn.c_attn.weight`, [c.dModel, 3 * c.dModel]);
    shapes.set(`${p}.attn.c_attn.bias`, [3 * c.dModel]);
    shapes.set(`${p}.attn.c_proj.weight`, [c.dModel, c.dModel]);
    shapes.set(`${p}.attn.c_proj.bias`, [c.dModel]);
    if (c.mlpNorm === "dyt") {
      // The authors' names (alpha, gamma, beta): a LayerNorm checkpoint's ln_2 gain and bias then
      // do not carry over into a DynamicTanh model, as in their fine-tune.
      shapes.set(`${p}.ln_2.alpha`, [1]);
      shapes.set(`${p}.ln_2.gamma`, [c.dModel]);
      shapes.set(`${p}.ln_2.beta`, [c.dModel]);
    } else {
      shapes.set(`${p}.ln_2.weight`, [c.dModel]);
      shapes.set(`${p}.ln_2.bias`, [c.dModel]);
    }
    shapes.set(`${p}.mlp.c_fc.weight`, [c.dModel, c.dMlp]);
    shapes.set(`${p}.mlp.c_fc.bias`, [c.dMlp]);
    shapes.set(`${p}.mlp.c_proj.weight`, [c.dMlp, c.dModel]);
    shapes.set(`${p}.mlp.c_proj.bias`, [c.dModel]);
  }
  shapes.set("ln_f.weight", [c.dModel]);
  shapes.set("ln_f.bias", [c.dModel]);
  return shapes;
}

/**
 * Counts a GPT's parameters (the tied LM head counted once).
 *
 * @param c The model shape.
 * @returns The number of scalar parameters.
 *
 * @example
 * ```ts
 * import { countParameters, SHAKESPEARE_64X4 } from "./gpt.ts";
 * if (countParameters(SHAKESPEARE_64X4) !== 216_448) throw new Error("wrong count");
 * ```
 */
export function countParameters(c: GPTConfig): number {
  let n = 0;
  for (const shape of parameterShapes(c).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * Draws GPT-2's initialisation from a seed: weights N(0, 0.02), biases 0, LayerNorm gains 1, and the
 * two residual output projections (`c_proj`) scaled by (2 · nLayer)^-½ so that the residual stream's
 * variance does not grow with depth (GPT-2 paper, §2.3). DynamicTanh starts at α = 2 ({@link
 * DYT_ALPHA_INIT}), γ = 1, β = 0; it draws nothing, so the other values do not depend on it.
 *
 * @param c The model shape.
 * @param seed Initialisation seed.
 * @returns Parameter name → values, shaped as {@link parameterShapes} says.
 */
export function initParameters(c: GPTConfig, seed: number): Map<string, Float32Array> {
  const rng = createRng(seed);
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of parameterShapes(c)) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (name.endsWith(".bias") || name.endsWith(".beta")) values.set(name, new Float32Array(size));
    else if (name.endsWith(".alpha")) values.set(name, new Float32Array(size).fill(DYT_ALPHA_INIT));
    else if (name.includes("ln_")) values.set(name, new Float32Array(size).fill(1));
    else {
      const std = name.endsWith("c_proj.weight") ? 0.02 / Math.sqrt(2 * c.nLayer) : 0.02;
      values.set(name, normalArray(rng, size, std));
    }
  }
  return values;
}

/**
 * Lists the hook points of a GPT in the order a forward pass reaches them. Names follow
 * TransformerLens, with one deliberate difference taken from the SCALAR paper: `hook_mlp_in` is the
 * MLP's input *after* ln_2 (TransformerLens places it before ln_2).
 *
 * @param c The model shape.
 * @returns Hook names, earliest first; the last is `ln_final.hook_normalized`.
 */
export function hookNames(c: GPTConfig): string[] {
  const names = ["hook_embed", "hook_pos_embed"];
  for (let i = 0; i < c.nLayer; i++) {
    const b = `blocks.${i}`;
    names.push(
      `${b}.hook_resid_pre`,
      `${b}.hook_attn_out`,
      `${b}.hook_resid_mid`,
      `${b}.hook_mlp_in`,
      `${b}.mlp.hook_post`,
      `${b}.hook_mlp_out`,
      `${b}.hook_resid_post`,
    );
  }
  names.push("ln_final.hook_normalized");
  return names;
}

/**
 * The activations a run starting at `hook` needs in `start.context`: the sources of the skip
 * connections that jump over it (e.g. `hook_resid_mid` when starting at `hook_mlp_out`).
 *
 * @param hook The start hook.
 * @returns Earlier hook names (empty for hooks on the residual stream).
 *
 * @example
 * ```ts
 * import { skipInputs } from "./gpt.ts";
 * if (skipInputs("blocks.2.hook_mlp_out")[0] !== "blocks.2.hook_resid_mid") throw new Error();
 * ```
 */
export function skipInputs(hook: string): string[] {
  if (hook === "hook_pos_embed") return ["hook_embed"];
  const m = /^blocks\.(\d+)\.(hook_attn_out|hook_mlp_in|mlp\.hook_post|hook_mlp_out)$/.exec(hook);
  if (m === null) return [];
  return [`blocks.${m[1]}.${m[2] === "hook_attn_out" ? "hook_resid_pre" : "hook_resid_mid"}`];
}

/** Where a forward pass ends: a hook point or the logits. */
export type StopPoint = string;

/** The name of the model's output, usable wherever a hook name is accepted as an end point. */
export const LOGITS = "logits";

/** Options of {@link GPT.run}. */
export interface RunOptions {
  /** Token ids `[B, T]` (int32); needed when the run starts at the embedding. */
  tokens?: tf.Tensor2D;
  /**
   * Start at this hook with this activation instead of at the tokens. A skip connection that
   * jumps over the start point (e.g. `hook_resid_mid` when starting at `hook_mlp_in`) must be given
   * in `context` — usually from a clean run's cache.
   */
  start?: { hook: string; value: tf.Tensor; context?: ReadonlyMap<string, tf.Tensor> };
  /** Stop once this hook is computed and return its value. @default "logits" */
  stopAt?: StopPoint;
  /** Replace the activation at a hook by the function's result (given the computed value). */
  patches?: ReadonlyMap<string, (value: tf.Tensor) => tf.Tensor>;
  /** Record these hooks' activations (after patching) in the result's cache. */
  cache?: Iterable<string>;
}

/** Result of {@link GPT.run}. */
export interface RunResult {
  /** The activation at `stopAt`: `[B, T, D]` at a hook, `[B, T, V]` logits. */
  output: tf.Tensor;
  /** Activations of the hooks named in `RunOptions.cache`. */
  cache: Map<string, tf.Tensor>;
}

/** Checks that a hook or stop name exists and returns its position in the forward order. */
function hookIndex(order: ReadonlyMap<string, number>, name: string, role: string): number {
  const index = order.get(name);
  if (index === undefined) {
    const known = [...order.keys()].filter((k) => k !== LOGITS);
    throw new RangeError(
      `Cannot use "${name}" as ${role}: no such hook (known: "${known[0]}" … "${known.at(-1)}")`,
    );
  }
  return index;
}

/** A GPT whose parameters are TensorFlow.js variables (trainable or frozen). */
export class GPT {
  /** The model shape. */
  readonly config: Readonly<GPTConfig>;
  /** Parameters by Hugging Face GPT-2 name. */
  readonly params: Map<string, tf.Variable>;
  readonly #order: Map<string, number>;

  /**
   * Wraps parameter values in variables.
   *
   * @param config The model shape.
   * @param values Parameter name → values, as {@link initParameters} or a checkpoint gives them.
   * @param trainable Whether gradients are taken for the parameters (false for a frozen model), or
   *   which ones (a fine-tune that trains some and freezes the rest).
   * @throws {RangeError} If a parameter is missing or has the wrong number of values, or the
   *   MLP's normalisation is unknown.
   */
  constructor(
    config: GPTConfig,
    values: ReadonlyMap<string, Float32Array>,
    trainable: boolean | ((name: string) => boolean) = true,
  ) {
    if (config.mlpNorm !== undefined && !MLP_NORMS.includes(config.mlpNorm)) {
      throw new RangeError(
        `Cannot build GPT: mlpNorm "${config.mlpNorm}" is not one of ${MLP_NORMS.join(", ")}`,
      );
    }
    if (config.dModel % config.nHead !== 0) {
      throw new RangeError(
        `Cannot build GPT: d_model ${config.dModel} is not divisible by ${config.nHead} heads`,
      );
    }
    this.config = Object.freeze({ ...config });
    this.params = new Map();
    for (const [name, shape] of parameterShapes(config)) {
      const data = values.get(name);
      const size = shape.reduce((a, b) => a * b, 1);
      if (data === undefined || data.length !== size) {
        throw new RangeError(
          `Cannot build GPT: parameter "${name}" ${
            data === undefined ? "is missing" : `has ${data.length} values`
          }, expected shape [${shape}] (${size} values)`,
        );
      }
      const train = typeof trainable === "boolean" ? trainable : trainable(name);
      this.params.set(name, tf.variable(tf.tensor(data, shape), train));
    }
    this.#order = new Map([...hookNames(config), LOGITS].map((n, i) => [n, i]));
  }

  /**
   * Creates a freshly initialised model.
   *
   * @param config The model shape.
   * @param seed Initialisation seed.
   * @returns The model.
   */
  static init(config: GPTConfig, seed: number): GPT {
    return new GPT(config, initParameters(config, seed));
  }

  /** Frees the model's tensors. */
  dispose(): void {
    for (const v of this.params.values()) v.dispose();
  }

  /**
   * Copies the parameters out of the backend (asynchronously, as WebGPU requires).
   *
   * @returns Parameter name → values.
   */
  async parameterValues(): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    for (const [name, v] of this.params) out.set(name, (await v.data()) as Float32Array);
    return out;
  }

  /**
   * Runs the model from the tokens to the logits.
   *
   * @param tokens Token ids `[B, T]` (int32), T ≤ nCtx.
   * @returns Logits `[B, T, V]`.
   */
  forward(tokens: tf.Tensor2D): tf.Tensor3D {
    return this.run({ tokens }).output as tf.Tensor3D;
  }

  /**
   * Runs part or all of the forward pass, reading and patching activations at hook points.
   *
   * @param opts Where to start and stop, which hooks to patch and which to record.
   * @returns The activation at the stop point and the recorded activations.
   * @throws {RangeError} For unknown hooks, a stop point before the start, or a missing input.
   */
  run(opts: RunOptions): RunResult {
    const c = this.config;
    const p = (name: string) => this.params.get(name)!;
    const startIndex = opts.start ? hookIndex(this.#order, opts.start.hook, "a start point") : -1;
    const stopAt = opts.stopAt ?? LOGITS;
    const stopIndex = hookIndex(this.#order, stopAt, "a stop point");
    if (stopIndex < startIndex) {
      throw new RangeError(
        `Cannot run from "${opts.start!.hook}" to "${stopAt}": it comes earlier`,
      );
    }
    const record = new Set(opts.cache ?? []);
    for (const name of record) hookIndex(this.#order, name, "a cached hook");
    const cache = new Map<string, tf.Tensor>();
    const acts = new Map<string, tf.Tensor>(opts.start?.context ?? []);
    const get = (name: string): tf.Tensor => {
      const value = acts.get(name);
      if (value === undefined) {
        throw new RangeError(
          `Cannot run from "${opts.start?.hook ?? "tokens"}": it needs "${name}" in start.context`,
        );
      }
      return value;
    };
    const T = opts.start ? opts.start.value.shape[1] : opts.tokens?.shape[1];
    if (T === undefined) {
      throw new RangeError("Cannot run GPT: give either tokens or a start activation");
    }
    if (T > c.nCtx) throw new RangeError(`Cannot run GPT on ${T} positions: context is ${c.nCtx}`);

    // Each step computes one hook from earlier ones; steps before the start are skipped, the step
    // at the start takes the given value, and nothing is computed past the stop point.
    let output: tf.Tensor | undefined;
    const step = (name: string, compute: () => tf.Tensor): void => {
      const index = this.#order.get(name)!;
      if (output !== undefined || index < startIndex) return;
      let value = index === startIndex ? opts.start!.value : compute();
      const patch = opts.patches?.get(name);
      if (patch) value = patch(value);
      acts.set(name, value);
      if (record.has(name)) cache.set(name, value);
      if (index === stopIndex) output = value;
    };
    const linear = (x: tf.Tensor, w: string, width: number): tf.Tensor => {
      // Weights are [in, out]; flatten B·T so every backend sees one plain GEMM.
      const y = tf.matMul(x.reshape([-1, x.shape.at(-1)!]), p(`${w}.weight`)).add(p(`${w}.bias`));
      return y.reshape([-1, T, width]);
    };
    const ln = (x: tf.Tensor, w: string) => layerNorm(x, p(`${w}.weight`), p(`${w}.bias`), c.lnEps);

    step("hook_embed", () => embed(p("wte.weight"), opts.tokens!));
    step("hook_pos_embed", () => p("wpe.weight").slice([0, 0], [T, c.dModel]).expandDims(0));
    for (let i = 0; i < c.nLayer; i++) {
      const b = `blocks.${i}`, h = `h.${i}`;
      step(
        `${b}.hook_resid_pre`,
        () =>
          i === 0
            ? tf.add(get("hook_embed"), get("hook_pos_embed"))
            : get(`blocks.${i - 1}.hook_resid_post`),
      );
      step(
        `${b}.hook_attn_out`,
        () => this.#attention(ln(get(`${b}.hook_resid_pre`), `${h}.ln_1`), h),
      );
      step(
        `${b}.hook_resid_mid`,
        () => tf.add(get(`${b}.hook_resid_pre`), get(`${b}.hook_attn_out`)),
      );
      step(
        `${b}.hook_mlp_in`,
        () =>
          c.mlpNorm === "dyt"
            ? dynamicTanh(
              get(`${b}.hook_resid_mid`),
              p(`${h}.ln_2.alpha`),
              p(`${h}.ln_2.gamma`),
              p(`${h}.ln_2.beta`),
            )
            : ln(get(`${b}.hook_resid_mid`), `${h}.ln_2`),
      );
      step(
        `${b}.mlp.hook_post`,
        () => geluTanh(linear(get(`${b}.hook_mlp_in`), `${h}.mlp.c_fc`, c.dMlp)),
      );
      step(
        `${b}.hook_mlp_out`,
        () => linear(get(`${b}.mlp.hook_post`), `${h}.mlp.c_proj`, c.dModel),
      );
      step(
        `${b}.hook_resid_post`,
        () => tf.add(get(`${b}.hook_resid_mid`), get(`${b}.hook_mlp_out`)),
      );
    }
    step(
      "ln_final.hook_normalized",
      () => ln(get(`blocks.${c.nLayer - 1}.hook_resid_post`), "ln_f"),
    );
    // The LM head is tied to the token embedding (GPT-2): logits = x · wteᵀ.
    step(LOGITS, () => {
      const x = get("ln_final.hook_normalized").reshape([-1, c.dModel]);
      return tf.matMul(x, p("wte.weight"), false, true).reshape([-1, T, c.vocabSize]);
    });
    return { output: output!, cache };
  }

  /** Causal multi-head self-attention of `x` `[B, T, D]` with the weights of block `h`. */
  #attention(x: tf.Tensor, h: string): tf.Tensor {
    const { nHead: H, dModel: D } = this.config;
    const [B, T] = x.shape as [number, number, number];
    const p = (name: string) => this.params.get(`${h}.attn.${name}`)!;
    const qkv = tf.matMul(x.reshape([B * T, D]), p("c_attn.weight")).add(p("c_attn.bias"));
    const merged = causalAttention(qkv as tf.Tensor2D, T, H);
    return tf.matMul(merged, p("c_proj.weight")).add(p("c_proj.bias")).reshape([B, T, D]);
  }
}

/**
 * Causal multi-head self-attention from the c_attn output: softmax(q·kᵀ/√S + causal mask)·v per
 * sequence and head, the heads merged back. Runs as one fused kernel each way where the backend
 * has it (`lib/backend/attention_kernel.ts`), else as stock ops (the reference the kernel is
 * tested against).
 *
 * @param qkv `[B·T, 3·D]`: q, k and v side by side, head h at columns h·S … h·S + S − 1 of each.
 * @param T Positions per sequence.
 * @param H Heads.
 * @returns The attention output `[B·T, D]`, heads merged (head h at columns h·S …).
 *
 * @example
 * ```ts
 * import * as tf from "@tensorflow/tfjs";
 * import { causalAttention } from "./gpt.ts";
 * // One head, S = 1: position 0 attends only to itself, so its output is its own value.
 * const qkv = tf.tensor2d([[1, 2, 3], [4, 5, 6]]); // [B·T = 2, 3·D = 3]
 * const y = await causalAttention(qkv, 2, 1).data();
 * if (y[0] !== 3) throw new Error(`${y[0]}`);
 * ```
 */
export function causalAttention(qkv: tf.Tensor2D, T: number, H: number): tf.Tensor2D {
  const attrs = { heads: H, positions: T };
  const backend = tf.getBackend();
  if (
    qkv.dtype !== "float32" || !tf.getKernel(ATTENTION_KERNEL, backend) ||
    !tf.getKernel(ATTENTION_GRAD_KERNEL, backend)
  ) {
    return attentionReference(qkv, T, H);
  }
  // Saved for the gradient: qkv, the output and each query's log-sum-exp ([B, H, T]); the
  // backward recomputes the probabilities instead of keeping B·H·T·T of them.
  const fused = tf.customGrad((input, save) => {
    const [y, lse] = tf.engine().runKernel(
      ATTENTION_KERNEL,
      { qkv: input as tf.Tensor },
      attrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    (save as tf.GradSaveFunc)([input as tf.Tensor, y!, lse!]);
    return {
      value: y!,
      gradFunc: (dy, saved) =>
        tf.engine().runKernel(
          ATTENTION_GRAD_KERNEL,
          { qkv: saved[0]!, y: saved[1]!, lse: saved[2]!, dy: dy as tf.Tensor },
          attrs as unknown as tf.NamedAttrMap,
        ) as tf.Tensor,
    };
  });
  return fused(qkv) as tf.Tensor2D;
}

/** {@link causalAttention} in stock ops: per (sequence, head) products, additive mask, softmax. */
function attentionReference(qkv: tf.Tensor2D, T: number, H: number): tf.Tensor2D {
  const D = qkv.shape[1] / 3, S = D / H, B = qkv.shape[0] / T;
  // (B·T, 3D) → three (B, H, T, S)
  const heads = tf.split(qkv, 3, 1).map((m) => m.reshape([B, T, H, S]).transpose([0, 2, 1, 3]));
  const [q, k, v] = heads as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D];
  // Additive mask: -1e9 rather than -Infinity keeps softmax's gradient free of NaNs.
  const mask = tf.sub(1, tf.linalg.bandPart(tf.ones([T, T]), -1, 0)).mul(-1e9);
  // Scaling q (B·H·T·S values) rather than the scores (B·H·T·T) is the same product, cheaper.
  const scores = tf.matMul(q.mul(1 / Math.sqrt(S)), k, false, true).add(mask); // (B, H, T, T)
  const y = tf.matMul(tf.softmax(scores), v); // (B, H, T, S)
  return y.transpose([0, 2, 1, 3]).reshape([B * T, D]);
}

/**
 * LayerNorm over the last axis with the biased variance (as PyTorch computes it). Runs as one
 * fused kernel each way where the backend has it (`lib/backend/layer_norm_kernel.ts`), else as
 * stock ops with a closed-form gradient (the reference the kernel is tested against).
 *
 * @param x Input `[..., D]`.
 * @param weight Gain `[D]`.
 * @param bias Offset `[D]`.
 * @param eps Added to the variance. @default 1e-5
 * @returns The normalised, scaled and shifted input.
 */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps = 1e-5): tf.Tensor {
  const backend = tf.getBackend();
  const fused = [x, weight, bias].every((t) => t.dtype === "float32") &&
    tf.getKernel(LAYER_NORM_KERNEL, backend) && tf.getKernel(LAYER_NORM_GRAD_KERNEL, backend);
  return (fused ? layerNormFused(eps) : layerNormWithGrad(eps))(x, weight, bias);
}

// One kernel each way (`lib/backend/layer_norm_kernel.ts`); saved for the gradient: x, the gain
// and each row's mean and 1/σ.
const layerNormFused = (eps: number) =>
  tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, weight, bias, save] = inputs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const [y, mean, rstd] = tf.engine().runKernel(LAYER_NORM_KERNEL, { x, weight, bias }, {
      eps,
    }) as tf.Tensor[];
    save([x, weight, mean!, rstd!]);
    return {
      value: y!,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, w, m, r] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
        return tf.engine().runKernel(
          LAYER_NORM_GRAD_KERNEL,
          { dy, x: xs, weight: w, mean: m, rstd: r },
          {},
        ) as tf.Tensor[];
      },
    };
  });

// LayerNorm's backward in closed form, with x̂ = (x − μ)·r, r = 1/√(σ² + ε) and g = ∂L/∂y · w:
// ∂L/∂x = r·(g − mean(g) − x̂·mean(g·x̂)), ∂L/∂w = Σ ∂L/∂y·x̂, ∂L/∂b = Σ ∂L/∂y over all rows.
// Autodiff through tf.moments spends a quarter of LayerNorm's backward building tensors of ones
// (Mean's and Sum's gradients) and runs about twice the ops.
const layerNormWithGrad = (eps: number) =>
  tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, weight, bias, save] = inputs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const { mean, variance } = tf.moments(x, -1, true);
    const r = tf.rsqrt(variance.add(eps));
    const xHat = x.sub(mean).mul(r);
    save([xHat, r, weight]);
    return {
      value: xHat.mul(weight).add(bias),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, rs, w] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        const g = dy.mul(w);
        const dx = g.sub(g.mean(-1, true)).sub(xh.mul(g.mul(xh).mean(-1, true))).mul(rs);
        const rows = dy.reshape([-1, w.size]);
        return [dx, rows.mul(xh.reshape([-1, w.size])).sum(0), rows.sum(0)];
      },
    };
  });

/**
 * DynamicTanh (Zhu et al. 2025, "Transformers without Normalization"): γ·tanh(α·x) + β, a
 * LayerNorm replacement with a learned scalar α; elementwise, so each token is mapped on its own.
 *
 * @param x Input `[..., D]`.
 * @param alpha The scalar α, shape `[1]`.
 * @param gamma Gain `[D]`.
 * @param beta Offset `[D]`.
 * @returns γ·tanh(α·x) + β.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import * as tf from "@tensorflow/tfjs";
 * import { dynamicTanh } from "./gpt.ts";
 * const y = dynamicTanh(tf.tensor1d([0, 100]), tf.tensor1d([2]), tf.tensor1d([3, 3]), tf.tensor1d([1, 1]));
 * equal((await y.data()).join(), "1,4");
 * ```
 */
export function dynamicTanh(
  x: tf.Tensor,
  alpha: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
): tf.Tensor {
  return tf.tanh(x.mul(alpha)).mul(gamma).add(beta);
}

/**
 * GELU with GPT-2's tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))). Runs as one fused
 * kernel each way where the backend has it (`lib/backend/gelu_kernel.ts`), else as stock ops (the
 * reference the kernel is tested against).
 *
 * @param x Input.
 * @returns GELU(x), elementwise.
 */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  const backend = tf.getBackend();
  if (
    x.dtype !== "float32" || !tf.getKernel(GELU_TANH_KERNEL, backend) ||
    !tf.getKernel(GELU_TANH_GRAD_KERNEL, backend)
  ) {
    // The reference, on backends without the fused kernels (and what those are tested against).
    const inner = x.add(x.mul(x).mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
    return x.mul(0.5).mul(tf.tanh(inner).add(1));
  }
  // One pass each way instead of ~10 elementwise kernels forward and ~20 backward; only x is
  // saved for the gradient, which recomputes the rest more cheaply than storing it.
  const fused = tf.customGrad((input, save) => {
    const t = input as tf.Tensor;
    (save as tf.GradSaveFunc)([t]);
    return {
      value: tf.engine().runKernel(GELU_TANH_KERNEL, { x: t }) as tf.Tensor,
      gradFunc: (dy, saved) =>
        tf.engine().runKernel(GELU_TANH_GRAD_KERNEL, { dy: dy as tf.Tensor, x: saved[0]! }),
    };
  });
  return fused(x);
}

/**
 * Looks up token embeddings. Its gradient is a one-hot matrix product instead of tfjs's scatter
 * (`UnsortedSegmentSum`), which wasm lacks and the cpu backend runs very slowly; the one-hot matrix
 * is only built when a gradient is taken, so frozen large-vocabulary models never pay for it.
 *
 * @param table Embedding table `[V, D]`.
 * @param ids Token ids `[B, T]` (int32).
 * @returns Embeddings `[B, T, D]`.
 */
export function embed(table: tf.Tensor, ids: tf.Tensor): tf.Tensor {
  const lookup = tf.customGrad((t) => ({
    value: tf.gather(t as tf.Tensor, ids),
    gradFunc: (dy) => {
      const [V, D] = table.shape as [number, number];
      const oneHot = tf.oneHot(ids.reshape([-1]), V);
      return tf.matMul(oneHot, (dy as tf.Tensor).reshape([-1, D]), true, false);
    },
  }));
  return lookup(table);
}

/**
 * Mean next-token cross-entropy (natural log) of logits against target ids.
 *
 * @param logits `[B, T, V]`.
 * @param targets `[B, T]` int32 ids.
 * @returns A scalar: the mean over all B·T positions.
 */
export function crossEntropy(logits: tf.Tensor, targets: tf.Tensor): tf.Scalar {
  const V = logits.shape.at(-1)!;
  const logProbs = tf.logSoftmax(logits.reshape([-1, V]));
  // A one-hot product instead of a gather: its gradient needs no scatter kernel, which some
  // backends (wasm) lack.
  const picked = logProbs.mul(tf.oneHot(targets.reshape([-1]), V)).sum(1);
  return picked.mean().neg() as tf.Scalar;
}

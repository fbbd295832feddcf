/**
 * Loads Hugging Face GPT-2 checkpoints (`config.json` + `model.safetensors`, any size the config
 * describes) into the project's {@link GPT}, whose parameters already carry GPT-2's names and
 * Conv1D layout, so loading is a matter of checking names, shapes and dtypes.
 *
 * Both key styles Hugging Face writes are read: `wte.weight`… (a `GPT2Model`, as in the
 * `openai-community/gpt2` repository) and `transformer.wte.weight`… (a `GPT2LMHeadModel` saved by
 * `save_pretrained`). The attention-mask buffers (`h.{i}.attn.bias`, `h.{i}.attn.masked_bias`) are
 * ignored, and an `lm_head.weight` is accepted only when it equals `wte.weight` (the head is tied).
 *
 * @module
 */
import { join } from "node:path";
import { CheckpointError } from "./checkpoint.ts";
import { GPT, type GPTConfig, parameterShapes } from "./gpt.ts";
import { type DecodedTensor, readSafetensors, writeSafetensors } from "./safetensors.ts";

/** The file names of a Hugging Face model folder that this module reads and writes. */
export const GPT2_FILES = Object.freeze({ config: "config.json", weights: "model.safetensors" });

/**
 * The command that fetches GPT-2 Small into a folder on a machine with internet access.
 *
 * @param dir The folder the files should land in.
 * @returns A shell command line.
 */
export function gpt2DownloadHint(dir: string): string {
  return `huggingface-cli download openai-community/gpt2 config.json model.safetensors ` +
    `--local-dir ${dir}`;
}

/** The fields of a Hugging Face GPT-2 `config.json` that decide the model's computation. */
export interface HfGpt2Config {
  /** Transformer blocks. */
  n_layer: number;
  /** Attention heads per block. */
  n_head: number;
  /** Residual stream width. */
  n_embd: number;
  /** Learned positions (older files call it `n_ctx`). */
  n_positions: number;
  /** Vocabulary size (50,257 for GPT-2). */
  vocab_size: number;
  /** LayerNorm epsilon. @default 1e-5 */
  layer_norm_epsilon?: number;
  /** MLP activation; only GPT-2's tanh GELU is supported. @default "gelu_new" */
  activation_function?: string;
  /** MLP hidden width; null or absent means 4 · n_embd. */
  n_inner?: number | null;
  /** Anything else the file holds (`architectures`, `task_specific_params`, …). */
  [field: string]: unknown;
}

/** Options of {@link loadGpt2}. */
export interface LoadGpt2Options {
  /** Whether the parameters take gradients. @default false */
  trainable?: boolean;
}

/** What {@link loadGpt2} returns. */
export interface LoadedGpt2 {
  /** The model, its parameters on the current backend. */
  model: GPT;
  /** Its shape in the project's names. */
  config: GPTConfig;
  /** The `config.json` as read. */
  hfConfig: HfGpt2Config;
}

// tanh-approximated GELU under both of the names Hugging Face gives it; they compute the same
// function, which is the one GPT.run applies.
const TANH_GELU = new Set(["gelu_new", "gelu_pytorch_tanh"]);

// Buffers of the attention module, not parameters: the causal mask and the value it writes.
const BUFFER_KEY = /^h\.\d+\.attn\.(bias|masked_bias)$/;

const PREFIX = "transformer.";
const LM_HEAD = "lm_head.weight";

function isPositiveInteger(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) > 0;
}

/**
 * Converts a Hugging Face GPT-2 `config.json` to the project's model shape, refusing settings
 * the project's GPT does not compute (another activation, cross-attention, unscaled or
 * layer-scaled attention).
 *
 * @param json The parsed `config.json`.
 * @param source The file, for messages.
 * @returns The model shape.
 * @throws {CheckpointError} Naming the field that is missing or unsupported.
 */
export function gptConfigFromHf(json: unknown, source: string = GPT2_FILES.config): GPTConfig {
  const fail = (what: string): never => {
    throw new CheckpointError(source, `Cannot load GPT-2 config "${source}": ${what}`);
  };
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    fail(`it holds ${JSON.stringify(json)?.slice(0, 40)}, not a JSON object`);
  }
  const c = json as Record<string, unknown>;
  if (c.model_type !== undefined && c.model_type !== "gpt2") {
    fail(`"model_type" is ${JSON.stringify(c.model_type)}, not "gpt2"`);
  }
  const positions = c.n_positions ?? c.n_ctx;
  const fields: [string, unknown][] = [
    ["n_layer", c.n_layer],
    ["n_head", c.n_head],
    ["n_embd", c.n_embd],
    ["n_positions", positions],
    ["vocab_size", c.vocab_size],
  ];
  for (const [name, value] of fields) {
    if (!isPositiveInteger(value)) {
      fail(
        value === undefined
          ? `field "${name}" is missing`
          : `field "${name}" is ${JSON.stringify(value)}, not a positive integer`,
      );
    }
  }
  const activation = c.activation_function ?? "gelu_new";
  if (typeof activation !== "string" || !TANH_GELU.has(activation)) {
    fail(
      `"activation_function" is ${JSON.stringify(activation)}; only "gelu_new" (GPT-2's tanh ` +
        `GELU) is supported`,
    );
  }
  const eps = c.layer_norm_epsilon ?? 1e-5;
  if (typeof eps !== "number" || !(eps > 0)) {
    fail(`"layer_norm_epsilon" is ${JSON.stringify(eps)}, not a positive number`);
  }
  const inner = c.n_inner ?? 4 * (c.n_embd as number);
  if (!isPositiveInteger(inner)) {
    fail(`"n_inner" is ${JSON.stringify(inner)}, not a positive integer or null`);
  }
  // Settings that change what the blocks compute; the project's GPT has none of them.
  if (c.add_cross_attention === true) fail(`"add_cross_attention" is true (an encoder-decoder)`);
  if (c.scale_attn_weights === false) fail(`"scale_attn_weights" is false`);
  if (c.scale_attn_by_inverse_layer_idx === true) {
    fail(`"scale_attn_by_inverse_layer_idx" is true`);
  }
  const config: GPTConfig = {
    nLayer: c.n_layer as number,
    nHead: c.n_head as number,
    dModel: c.n_embd as number,
    dMlp: inner as number,
    nCtx: positions as number,
    vocabSize: c.vocab_size as number,
    lnEps: eps as number,
  };
  if (config.dModel % config.nHead !== 0) {
    fail(`"n_embd" ${config.dModel} is not divisible by "n_head" ${config.nHead}`);
  }
  return config;
}

/**
 * The project's model shape as a Hugging Face GPT-2 `config.json`.
 *
 * @param c The model shape.
 * @returns The JSON object, with the fields `transformers` writes for GPT-2.
 */
export function hfConfigFromGpt(c: GPTConfig): HfGpt2Config {
  return {
    architectures: ["GPT2LMHeadModel"],
    model_type: "gpt2",
    activation_function: "gelu_new",
    n_layer: c.nLayer,
    n_head: c.nHead,
    n_embd: c.dModel,
    n_inner: c.dMlp === 4 * c.dModel ? null : c.dMlp,
    n_positions: c.nCtx,
    n_ctx: c.nCtx,
    vocab_size: c.vocabSize,
    layer_norm_epsilon: c.lnEps,
    bos_token_id: 50256,
    eos_token_id: 50256,
  };
}

function describeShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

function toFloat32(tensor: DecodedTensor): Float32Array | undefined {
  switch (tensor.dtype) {
    case "F32":
    case "F16":
    case "BF16":
      return tensor.data; // F16 and BF16 were widened by the reader
    case "F64":
      return Float32Array.from(tensor.data);
    default:
      return undefined;
  }
}

/**
 * Picks a GPT's parameters out of the tensors of a Hugging Face GPT-2 `model.safetensors`.
 *
 * @param config The model shape (from {@link gptConfigFromHf}).
 * @param tensors The file's tensors by key.
 * @param source The file, for messages.
 * @returns Parameter name → float32 values, as the {@link GPT} constructor takes them.
 * @throws {CheckpointError} Listing every missing, misshapen, non-float or unexpected tensor, or
 *   an `lm_head.weight` that differs from `wte.weight`.
 */
export function gpt2ParametersFromTensors(
  config: GPTConfig,
  tensors: ReadonlyMap<string, DecodedTensor>,
  source: string = GPT2_FILES.weights,
): Map<string, Float32Array> {
  const fail = (what: string): never => {
    throw new CheckpointError(source, `Cannot load GPT-2 weights "${source}": ${what}`);
  };
  const prefix = [...tensors.keys()].some((k) => k.startsWith(PREFIX)) ? PREFIX : "";
  const expected = parameterShapes(config);
  const problems: string[] = [];
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of expected) {
    const key = prefix + name;
    const tensor = tensors.get(key);
    if (tensor === undefined) {
      problems.push(`tensor "${key}" is missing (expected shape ${describeShape(shape)})`);
      continue;
    }
    if (tensor.shape.join() !== shape.join()) {
      // A [out, in] matrix means a Linear-layout export, which stores these weights transposed.
      const transposed = shape.length === 2 && shape[0] !== shape[1] &&
          tensor.shape.join() === [shape[1], shape[0]].join()
        ? " (transposed: this loader reads GPT-2's Conv1D layout, [in, out])"
        : "";
      problems.push(
        `tensor "${key}" has shape ${describeShape(tensor.shape)}, expected ` +
          `${describeShape(shape)}${transposed}`,
      );
      continue;
    }
    const data = toFloat32(tensor);
    if (data === undefined) {
      problems.push(`tensor "${key}" is ${tensor.dtype}, expected F32, F16 or BF16`);
      continue;
    }
    values.set(name, data);
  }
  const unexpected = [...tensors.keys()].filter((key) => {
    if (key === LM_HEAD) return false;
    if (!key.startsWith(prefix)) return true;
    const name = key.slice(prefix.length);
    return !expected.has(name) && !BUFFER_KEY.test(name);
  });
  if (unexpected.length > 0) {
    const shown = unexpected.slice(0, 5).map((k) => `"${k}"`).join(", ");
    const more = unexpected.length > 5 ? ` and ${unexpected.length - 5} more` : "";
    problems.push(`unexpected tensors ${shown}${more} (is this a GPT-2 checkpoint?)`);
  }
  if (problems.length > 0) {
    const more = problems.length > 8 ? `; and ${problems.length - 8} more problems` : "";
    fail(`${problems.slice(0, 8).join("; ")}${more}`);
  }
  const head = tensors.get(LM_HEAD);
  if (head !== undefined) {
    const wte = values.get("wte.weight")!;
    const data = toFloat32(head);
    const tied = data !== undefined && data.length === wte.length &&
      data.every((v, i) => Object.is(v, wte[i]));
    if (!tied) {
      fail(
        `"${LM_HEAD}" differs from "${prefix}wte.weight"; only GPT-2's tied LM head is supported`,
      );
    }
  }
  return values;
}

async function readConfigJson(dir: string, path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      const folder = await Deno.stat(dir).then((i) => i.isDirectory, () => false);
      throw new CheckpointError(
        path,
        `Cannot load GPT-2 from "${dir}": ${
          folder ? `"${GPT2_FILES.config}" is missing` : "the folder does not exist"
        }. It needs "${GPT2_FILES.config}" and "${GPT2_FILES.weights}" from a Hugging Face GPT-2 ` +
          `repository; with internet access: ${gpt2DownloadHint(dir)}`,
        { cause: error },
      );
    }
    throw new CheckpointError(
      path,
      `Cannot load GPT-2 config "${path}": ${(error as Error).message}`,
      { cause: error },
    );
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(
      path,
      `Cannot load GPT-2 config "${path}": not valid JSON (${(error as Error).message})`,
      { cause: error },
    );
  }
}

/**
 * Loads a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`) into the project's GPT.
 * Any GPT-2 size works (Small to XL); F32, F16 and BF16 weights are read, the last two widened.
 *
 * @param dir The folder, e.g. what `huggingface-cli download openai-community/gpt2 config.json
 *   model.safetensors --local-dir DIR` fills.
 * @param options Whether the parameters take gradients (default: frozen).
 * @returns The model, its shape, and the `config.json` as read.
 * @throws {CheckpointError} When a file is missing (the message says how to download it), the
 *   config is not a supported GPT-2, or a tensor is missing or has the wrong shape (the message
 *   names the tensor and the expected shape).
 * @throws {SafetensorsError} When `model.safetensors` is malformed.
 *
 * @example
 * ```ts ignore
 * import { loadGpt2 } from "./gpt2.ts";
 * const { model, config } = await loadGpt2("models/gpt2");
 * console.log(config.nLayer); // 12
 * ```
 */
export async function loadGpt2(dir: string, options: LoadGpt2Options = {}): Promise<LoadedGpt2> {
  const configPath = join(dir, GPT2_FILES.config);
  const weightsPath = join(dir, GPT2_FILES.weights);
  const hfConfig = await readConfigJson(dir, configPath);
  const config = gptConfigFromHf(hfConfig, configPath);
  const exists = await Deno.stat(weightsPath).then(() => true, () => false);
  if (!exists) {
    const bin = await Deno.stat(join(dir, "pytorch_model.bin")).then(() => true, () => false);
    throw new CheckpointError(
      weightsPath,
      `Cannot load GPT-2 from "${dir}": "${GPT2_FILES.weights}" is missing` +
        (bin ? ` (only "pytorch_model.bin" is there, which this loader does not read)` : "") +
        `; with internet access: ${gpt2DownloadHint(dir)}`,
    );
  }
  const { tensors } = await readSafetensors(weightsPath);
  const values = gpt2ParametersFromTensors(config, tensors, weightsPath);
  const model = new GPT(config, values, options.trainable ?? false);
  return { model, config, hfConfig: hfConfig as HfGpt2Config };
}

/**
 * Writes a GPT as a Hugging Face GPT-2 folder (`config.json` + `model.safetensors`, `GPT2Model`
 * key names, tied head omitted), which {@link loadGpt2} and `transformers` both read.
 *
 * @param dir The folder; created if needed, the two files replaced.
 * @param config The model shape.
 * @param values Parameter name → values (e.g. from `GPT.parameterValues()`).
 * @param options `prefix: true` writes `transformer.`-prefixed keys, as `GPT2LMHeadModel` does.
 * @throws {CheckpointError} When a parameter is missing.
 * @throws {SafetensorsError} When a parameter's length does not fit its shape, or the file
 *   cannot be written.
 */
export async function saveGpt2(
  dir: string,
  config: GPTConfig,
  values: ReadonlyMap<string, Float32Array>,
  options: { prefix?: boolean } = {},
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, shape] of parameterShapes(config)) {
    const data = values.get(name);
    if (data === undefined) {
      throw new CheckpointError(dir, `Cannot save GPT-2 "${dir}": parameter "${name}" is missing`);
    }
    tensors[(options.prefix ? PREFIX : "") + name] = { shape, data };
  }
  await writeSafetensors(join(dir, GPT2_FILES.weights), tensors, { format: "pt" });
  const json = JSON.stringify(hfConfigFromGpt(config), null, 2);
  await Deno.writeTextFile(join(dir, GPT2_FILES.config), `${json}\n`);
}

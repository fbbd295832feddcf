import assert from "node:assert/strict";
import { join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { GPT, type GPTConfig } from "./gpt.ts";
import { gptConfigFromHf, loadGpt2, saveGpt2 } from "./gpt2.ts";
import { createRng } from "../util/rng.ts";

// A GPT-2-shaped model small enough to write by hand: 2 layers, 2 heads, width 8.
const HF_CONFIG = {
  activation_function: "gelu_new",
  architectures: ["GPT2LMHeadModel"],
  attn_pdrop: 0.1,
  bos_token_id: 50256,
  embd_pdrop: 0.1,
  eos_token_id: 50256,
  initializer_range: 0.02,
  layer_norm_epsilon: 1e-5,
  model_type: "gpt2",
  n_ctx: 16,
  n_embd: 8,
  n_head: 2,
  n_inner: null,
  n_layer: 2,
  n_positions: 16,
  reorder_and_upcast_attn: false,
  resid_pdrop: 0.1,
  scale_attn_by_inverse_layer_idx: false,
  scale_attn_weights: true,
  summary_activation: null,
  summary_first_dropout: 0.1,
  summary_proj_to_labels: true,
  summary_type: "cls_index",
  summary_use_proj: true,
  torch_dtype: "float32",
  transformers_version: "4.44.2",
  use_cache: true,
  vocab_size: 50,
};

// The same shape in the project's names, written out independently of the loader's conversion.
const OURS: GPTConfig = {
  nLayer: 2,
  nHead: 2,
  dModel: 8,
  dMlp: 32,
  nCtx: 16,
  vocabSize: 50,
  lnEps: 1e-5,
};

/** GPT2Model's state_dict keys and shapes, in its order, buffers included. */
function hfKeys(): [string, number[]][] {
  const keys: [string, number[]][] = [["wte.weight", [50, 8]], ["wpe.weight", [16, 8]]];
  for (let i = 0; i < 2; i++) {
    keys.push(
      [`h.${i}.ln_1.weight`, [8]],
      [`h.${i}.ln_1.bias`, [8]],
      [`h.${i}.attn.bias`, [1, 1, 16, 16]],
      [`h.${i}.attn.masked_bias`, []],
      [`h.${i}.attn.c_attn.weight`, [8, 24]],
      [`h.${i}.attn.c_attn.bias`, [24]],
      [`h.${i}.attn.c_proj.weight`, [8, 8]],
      [`h.${i}.attn.c_proj.bias`, [8]],
      [`h.${i}.ln_2.weight`, [8]],
      [`h.${i}.ln_2.bias`, [8]],
      [`h.${i}.mlp.c_fc.weight`, [8, 32]],
      [`h.${i}.mlp.c_fc.bias`, [32]],
      [`h.${i}.mlp.c_proj.weight`, [32, 8]],
      [`h.${i}.mlp.c_proj.bias`, [8]],
    );
  }
  keys.push(["ln_f.weight", [8]], ["ln_f.bias", [8]]);
  return keys;
}

/**
 * Random parameter values, cut to bfloat16 precision so that the BF16 variant stores them
 * exactly. Scales are large enough that every parameter visibly moves the logits.
 */
function randomValues(seed: number): Map<string, Float32Array> {
  const rng = createRng(seed);
  const values = new Map<string, Float32Array>();
  for (const [name, shape] of hfKeys()) {
    if (name.includes(".attn.bias") || name.includes("masked_bias")) continue;
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    const centre = /ln_\d\.weight|ln_f\.weight/.test(name) ? 1 : 0;
    for (let i = 0; i < data.length; i++) data[i] = centre + (rng.uniform() - 0.5) * 0.6;
    const bits = new Uint32Array(data.buffer);
    for (let i = 0; i < bits.length; i++) bits[i] &= 0xffff0000;
    values.set(name, data);
  }
  return values;
}

type RawTensor =
  | { dtype: "F32" | "BF16"; shape: number[]; data: Float32Array }
  | { dtype: "BOOL"; shape: number[]; data: Uint8Array };

/** Lays out a safetensors file by hand, as the `safetensors` Python package does. */
function rawSafetensors(entries: [string, RawTensor][]): Uint8Array {
  const chunks: Uint8Array[] = [];
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const [name, t] of entries) {
    let bytes: Uint8Array;
    if (t.dtype === "F32") bytes = new Uint8Array(t.data.slice().buffer);
    else if (t.dtype === "BF16") {
      const bits = new Uint32Array(t.data.slice().buffer);
      bytes = new Uint8Array(Uint16Array.from(bits, (b) => b >>> 16).buffer);
    } else bytes = t.data as Uint8Array;
    header[name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + bytes.length],
    };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + text.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  let at = 8 + text.length;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

interface Variant {
  prefix?: string;
  dtype?: "F32" | "BF16";
  boolMask?: boolean;
  lmHead?: Float32Array;
  config?: Record<string, unknown>;
  edit?: (entries: [string, RawTensor][]) => [string, RawTensor][];
}

/** Writes `config.json` and `model.safetensors` in Hugging Face's layout. */
async function writeHfFolder(dir: string, values: Map<string, Float32Array>, v: Variant = {}) {
  await Deno.mkdir(dir, { recursive: true });
  const prefix = v.prefix ?? "";
  let entries: [string, RawTensor][] = [];
  for (const [name, shape] of hfKeys()) {
    if (name.endsWith(".attn.bias")) {
      const mask = new Float32Array(16 * 16).map((_, i) => (i % 16 <= Math.floor(i / 16) ? 1 : 0));
      entries.push([
        prefix + name,
        v.boolMask
          ? { dtype: "BOOL", shape, data: Uint8Array.from(mask) }
          : { dtype: "F32", shape, data: mask },
      ]);
    } else if (name.endsWith("masked_bias")) {
      entries.push([prefix + name, { dtype: "F32", shape, data: new Float32Array([-1e4]) }]);
    } else {
      entries.push([prefix + name, { dtype: v.dtype ?? "F32", shape, data: values.get(name)! }]);
    }
  }
  if (v.lmHead) entries.push(["lm_head.weight", { dtype: "F32", shape: [50, 8], data: v.lmHead }]);
  if (v.edit) entries = v.edit(entries);
  await Deno.writeFile(join(dir, "model.safetensors"), rawSafetensors(entries));
  await Deno.writeTextFile(
    join(dir, "config.json"),
    JSON.stringify({ ...HF_CONFIG, ...v.config }, null, 2),
  );
}

/**
 * GPT-2's forward pass as Hugging Face's `GPT2LMHeadModel` computes it, written out in plain
 * float64 loops from the HF parameters (Conv1D: y = x·W + b with W `[in, out]`; q, k, v are the
 * three column thirds of c_attn; head j owns columns j·S…(j+1)·S of each), independent of the
 * project's GPT.
 */
function hfReferenceLogits(v: Map<string, Float32Array>, ids: number[]): Float64Array {
  const D = 8, H = 2, S = D / H, M = 32, V = 50, T = ids.length;
  const p = (name: string) => v.get(name)!;
  const conv1d = (x: Float64Array[], w: string, nIn: number, nOut: number) =>
    x.map((row) => {
      const W = p(`${w}.weight`), b = p(`${w}.bias`);
      const y = new Float64Array(nOut);
      for (let o = 0; o < nOut; o++) {
        let s = b[o];
        for (let i = 0; i < nIn; i++) s += row[i] * W[i * nOut + o];
        y[o] = s;
      }
      return y;
    });
  const ln = (x: Float64Array[], w: string) =>
    x.map((row) => {
      const mean = row.reduce((a, b) => a + b, 0) / D;
      const variance = row.reduce((a, b) => a + (b - mean) ** 2, 0) / D;
      return row.map((e, i) =>
        (e - mean) / Math.sqrt(variance + 1e-5) * p(`${w}.weight`)[i] + p(`${w}.bias`)[i]
      );
    });
  const gelu = (x: number) =>
    0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  let h = ids.map((id, t) =>
    Float64Array.from(
      { length: D },
      (_, i) => p("wte.weight")[id * D + i] + p("wpe.weight")[t * D + i],
    )
  );
  for (let l = 0; l < 2; l++) {
    const qkv = conv1d(ln(h, `h.${l}.ln_1`), `h.${l}.attn.c_attn`, D, 3 * D);
    const merged = h.map(() => new Float64Array(D));
    for (let head = 0; head < H; head++) {
      for (let t = 0; t < T; t++) {
        const scores = [];
        for (let u = 0; u <= t; u++) {
          let s = 0;
          for (let i = 0; i < S; i++) s += qkv[t][head * S + i] * qkv[u][D + head * S + i];
          scores.push(s / Math.sqrt(S));
        }
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const z = e.reduce((a, b) => a + b, 0);
        for (let u = 0; u <= t; u++) {
          for (let i = 0; i < S; i++) {
            merged[t][head * S + i] += e[u] / z * qkv[u][2 * D + head * S + i];
          }
        }
      }
    }
    const attn = conv1d(merged, `h.${l}.attn.c_proj`, D, D);
    h = h.map((row, t) => row.map((e, i) => e + attn[t][i]));
    const fc = conv1d(ln(h, `h.${l}.ln_2`), `h.${l}.mlp.c_fc`, D, M).map((r) => r.map(gelu));
    const mlp = conv1d(fc, `h.${l}.mlp.c_proj`, M, D);
    h = h.map((row, t) => row.map((e, i) => e + mlp[t][i]));
  }
  const out = new Float64Array(T * V);
  ln(h, "ln_f").forEach((row, t) => {
    for (let w = 0; w < V; w++) {
      let s = 0;
      for (let i = 0; i < D; i++) s += row[i] * p("wte.weight")[w * D + i];
      out[t * V + w] = s;
    }
  });
  return out;
}

function tokens(seed: number): tf.Tensor2D {
  const rng = createRng(seed);
  return tf.tensor2d(Array.from({ length: 32 }, () => rng.int(50)), [2, 16], "int32");
}

Deno.test("loadGpt2() reads both Hugging Face key styles and matches the project's GPT", async () => {
  const dir = await Deno.makeTempDir();
  const values = randomValues(7);
  const reference = new GPT(OURS, values, false);
  const x = tokens(3);
  const expected = await reference.forward(x).data();
  // The project's GPT computes what Hugging Face's GPT-2 computes with these tensors.
  const ids = Array.from(await x.data());
  for (const row of [0, 1]) {
    const want = hfReferenceLogits(values, ids.slice(row * 16, row * 16 + 16));
    const got = expected.subarray(row * 16 * 50, (row + 1) * 16 * 50);
    const worst = want.reduce((m, w, i) => Math.max(m, Math.abs(w - got[i])), 0);
    assert.ok(worst < 1e-4, `row ${row}: logits differ from the HF computation by ${worst}`);
  }
  const variants: [string, Variant][] = [
    ["GPT2Model, F32, float mask buffers", {}],
    ["GPT2LMHeadModel, BF16, bool masks, tied lm_head", {
      prefix: "transformer.",
      dtype: "BF16",
      boolMask: true,
      lmHead: values.get("wte.weight"),
    }],
  ];
  for (const [label, variant] of variants) {
    await writeHfFolder(join(dir, label), values, variant);
    const { model, config, hfConfig } = await loadGpt2(join(dir, label));
    assert.deepEqual(config, OURS, label);
    assert.equal(hfConfig.n_layer, 2);
    assert.equal(model.params.get("wte.weight")!.trainable, false);
    const got = await model.forward(x).data();
    assert.deepEqual(got, expected, label);
    assert.ok(Math.max(...got) - Math.min(...got) > 0.5, "logits are not degenerate");
    model.dispose();
  }
  // The writer gives a folder the loader reads back to the same model.
  await saveGpt2(join(dir, "saved"), OURS, values, { prefix: true });
  const saved = await loadGpt2(join(dir, "saved"), { trainable: true });
  assert.equal(saved.model.params.get("wte.weight")!.trainable, true);
  assert.deepEqual(await saved.model.forward(x).data(), expected);
  saved.model.dispose();
  reference.dispose();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadGpt2() names the tensor and the expected shape when one is wrong or missing", async () => {
  const dir = await Deno.makeTempDir();
  const values = randomValues(1);
  await writeHfFolder(join(dir, "transposed"), values, {
    edit: (entries) =>
      entries.map(([k, t]) =>
        k === "h.1.mlp.c_fc.weight" ? [k, { ...t, shape: [32, 8] } as RawTensor] : [k, t]
      ),
  });
  await assert.rejects(
    loadGpt2(join(dir, "transposed")),
    /tensor "h\.1\.mlp\.c_fc\.weight" has shape \[32, 8\], expected \[8, 32\] \(transposed/,
  );
  await writeHfFolder(join(dir, "missing"), values, {
    prefix: "transformer.",
    edit: (entries) => entries.filter(([k]) => k !== "transformer.h.0.ln_2.bias"),
  });
  await assert.rejects(loadGpt2(join(dir, "missing")), (e: Error) => {
    assert.equal(e.name, "CheckpointError");
    assert.match(e.message, /^Cannot load GPT-2 weights ".*model\.safetensors": /);
    assert.match(
      e.message,
      /tensor "transformer\.h\.0\.ln_2\.bias" is missing \(expected shape \[8\]\)/,
    );
    return true;
  });
  // A config that disagrees with the weights: every misfit is named.
  await writeHfFolder(join(dir, "wide"), values, { config: { n_embd: 16 } });
  await assert.rejects(
    loadGpt2(join(dir, "wide")),
    /"wte\.weight" has shape \[50, 8\], expected \[50, 16\]/,
  );
  await writeHfFolder(join(dir, "untied"), values, { lmHead: new Float32Array(400) });
  await assert.rejects(
    loadGpt2(join(dir, "untied")),
    /"lm_head\.weight" differs from "wte\.weight"/,
  );
  await writeHfFolder(join(dir, "extra"), values, {
    edit: (
      entries,
    ) => [...entries, ["score.weight", { dtype: "F32", shape: [1], data: new Float32Array(1) }]],
  });
  await assert.rejects(loadGpt2(join(dir, "extra")), /unexpected tensors "score\.weight"/);
  await writeHfFolder(join(dir, "int"), values, {
    edit: (entries) =>
      entries.map(([k, t]) =>
        k === "ln_f.bias" ? [k, { dtype: "BOOL", shape: [8], data: new Uint8Array(8) }] : [k, t]
      ),
  });
  await assert.rejects(
    loadGpt2(join(dir, "int")),
    /tensor "ln_f\.bias" is BOOL, expected F32, F16 or BF16/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("loadGpt2() says how to get missing files, and refuses configs it does not compute", async () => {
  const dir = await Deno.makeTempDir();
  await assert.rejects(
    loadGpt2(join(dir, "nowhere")),
    /"[^"]*nowhere": the folder does not exist\. .*huggingface-cli download openai-community\/gpt2 config\.json model\.safetensors --local-dir [^ ]*nowhere/,
  );
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(HF_CONFIG));
  await assert.rejects(
    loadGpt2(dir),
    /"model\.safetensors" is missing; with internet access: huggingface-cli download/,
  );
  await Deno.remove(join(dir, "config.json"));
  await assert.rejects(loadGpt2(dir), /"config\.json" is missing/);
  const refuse = (patch: Record<string, unknown>) => () =>
    gptConfigFromHf({ ...HF_CONFIG, ...patch }, "c.json");
  assert.throws(
    refuse({ activation_function: "relu" }),
    /"activation_function" is "relu"; only "gelu_new"/,
  );
  assert.throws(refuse({ n_layer: undefined }), /field "n_layer" is missing/);
  assert.throws(refuse({ n_head: 3 }), /"n_embd" 8 is not divisible by "n_head" 3/);
  assert.throws(
    refuse({ scale_attn_by_inverse_layer_idx: true }),
    /scale_attn_by_inverse_layer_idx/,
  );
  assert.throws(refuse({ model_type: "gpt_neo" }), /"model_type" is "gpt_neo", not "gpt2"/);
  // Older files name the context n_ctx only; n_inner gives a non-default MLP width.
  const old = gptConfigFromHf({ ...HF_CONFIG, n_positions: undefined, n_ctx: 32, n_inner: 20 });
  assert.equal(old.nCtx, 32);
  assert.equal(old.dMlp, 20);
  await Deno.remove(dir, { recursive: true });
});

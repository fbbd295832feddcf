/**
 * The WebGPU engine for SAE training: the same step as `lib/sae/train.ts` computes through tfjs
 * (TopK encode, decode, squared-error loss, backward, global-norm clipping, AdamW), as a few fused
 * WGSL passes recorded into one command buffer per step:
 *
 * per micro-batch and SAE: encoder → TopK select → sparse decode (+ ∂L/∂x̂, loss partials) →
 * kept-pair gradient → feature lists (count, scan, fill) → feature-gathered weight gradients;
 * then per SAE the b_dec gradient, and for all SAEs at once the gradient norm, the logged figures
 * and AdamW.
 *
 * Parameters, gradients and both moments live in one flat buffer each (`lib/sae/param_layout.ts`); every
 * buffer is allocated once. A step uploads the batch with `queue.writeBuffer` (queued behind the
 * previous step, so the upload streams in while it runs) and reads nothing back, except the
 * figures on a reporting step. Architectures: every one the registry holds (`../architectures.ts`
 * lays out their matrices); JSAE's pairs add the Jacobian term (`kernels/jacobian.ts`).
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import type { AdamWState } from "../../optim/adamw.ts";
import { architecture } from "../architectures.ts";
import type { MlpWeights } from "../jacobian.ts";
import type { StepperOptions } from "../stepper.ts";
import {
  bindBuffers,
  dispatch,
  type Gpu,
  type Kernel,
  readBuffer,
  rowsUniform,
  storageBuffer,
  throwGpuError,
  uniformBuffer,
  writeArray,
} from "./device.ts";
import { adamKernels, adamUniform, type FigureSum, SQUARES_PER_GROUP } from "./kernels/adamw.ts";
import { biasGradKernel } from "./kernels/bias_grad.ts";
import { encoderKernel } from "./kernels/encoder.ts";
import { featureGradsKernel } from "./kernels/feature_grads.ts";
import { featureListKernels } from "./kernels/feature_lists.ts";
import { JACOBIAN_PER_GROUP, jacobianKernels } from "./kernels/jacobian.ts";
import { DECODE_ROWS, sparseDecodeKernel } from "./kernels/sparse_decode.ts";
import { sparseBackwardKernel } from "./kernels/sparse_backward.ts";
import { type MatmulShape, stridedMatmulKernel } from "./kernels/strided_matmul.ts";
import { topkSelectKernel } from "./kernels/topk_select.ts";
import { layoutParams, type ParamLayout, type SaeView } from "../param_layout.ts";

/** What the engine trains, and how: the options of every stepper. */
export type SaeEngineOptions = StepperOptions;

/** A recorded dispatch: kernel, bindings and how many units of work. */
interface Dispatch {
  kernel: Kernel;
  group: GPUBindGroup;
  count: (rows: number) => number;
}

/** One SAE's kernels and scratch buffers. */
interface HookState {
  view: SaeView;
  x: GPUBuffer;
  idx: GPUBuffer;
  val: GPUBuffer;
  dpre: GPUBuffer;
  dxhat: GPUBuffer;
  mask: GPUBuffer;
  lists: GPUBuffer;
  starts: GPUBuffer;
  /** Per micro-batch: the row kernels, in dispatch order. */
  passes: Dispatch[][];
  bias: Dispatch;
}

/** One JSAE pair's dispatches: before, during (per micro-batch) and after the micro-batches. */
interface PairState {
  /** Gradient scratch to zero at each step's start. */
  scratch: GPUBuffer[];
  /** The factors A and Bᵀ from the current weights. */
  before: Dispatch[];
  /** Per micro-batch: GELU′, J, and the two gathered gradients. */
  passes: Dispatch[][];
  /** The weight gradients from ∂A and ∂Bᵀ. */
  after: Dispatch[];
}

/** The engine; create with {@link SaeEngine.create}. */
export class SaeEngine {
  readonly #gpu: Gpu;
  readonly #o: SaeEngineOptions;
  readonly #layout: ParamLayout;
  readonly #micros: { offset: number; count: number; rows: GPUBuffer }[];
  readonly #hooks: HookState[];
  readonly #pairs: PairState[];
  readonly #buffers: GPUBuffer[];
  readonly #params: GPUBuffer;
  readonly #m: GPUBuffer;
  readonly #v: GPUBuffer;
  readonly #grads: GPUBuffer;
  readonly #figures: GPUBuffer;
  readonly #figureCount: number;
  readonly #readback: GPUBuffer;
  readonly #adamStep: GPUBuffer;
  readonly #optimizer: Dispatch[];
  #step = 0;

  private constructor(
    gpu: Gpu,
    o: SaeEngineOptions,
    parts: {
      layout: ParamLayout;
      micros: { offset: number; count: number; rows: GPUBuffer }[];
      hooks: HookState[];
      pairs: PairState[];
      buffers: GPUBuffer[];
      flat: { params: GPUBuffer; m: GPUBuffer; v: GPUBuffer; grads: GPUBuffer };
      figures: GPUBuffer;
      figureCount: number;
      adamStep: GPUBuffer;
      optimizer: Dispatch[];
    },
  ) {
    this.#gpu = gpu;
    this.#o = o;
    this.#layout = parts.layout;
    this.#micros = parts.micros;
    this.#hooks = parts.hooks;
    this.#pairs = parts.pairs;
    this.#buffers = parts.buffers;
    ({ params: this.#params, m: this.#m, v: this.#v, grads: this.#grads } = parts.flat);
    this.#figures = parts.figures;
    this.#figureCount = parts.figureCount;
    this.#adamStep = parts.adamStep;
    this.#optimizer = parts.optimizer;
    this.#readback = gpu.device.createBuffer({
      label: "figures readback",
      size: parts.figures.size,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * Builds the engine: lays out and uploads the SAEs' parameters (from their variables), zeroes
   * the moments, allocates every buffer and compiles every kernel.
   *
   * @param gpu The device.
   * @param o SAEs, batch sizes and optimizer settings.
   * @returns The engine, at step 0 (see {@link SaeEngine.load} to resume).
   * @throws {RangeError} For a Jacobian term given to an architecture without one (or missing), or
   *   impossible sizes.
   */
  static async create(gpu: Gpu, o: SaeEngineOptions): Promise<SaeEngine> {
    // Every registered architecture trains here (its flat views come from the registry); the
    // pair term the engine computes is the Jacobian one, given exactly when the architecture has it.
    if ((architecture(o.sae.arch).pairLoss !== undefined) !== !!o.jacobian) {
      throw new RangeError(
        `Cannot train "${o.sae.arch}" SAEs on the GPU engine ` +
          (o.jacobian ? "with a Jacobian term" : "without the MLPs of the Jacobian term"),
      );
    }
    const device = gpu.device;
    // Invalid sizes or bindings surface here, not as a silently skipped dispatch later.
    device.pushErrorScope("validation");
    const asked = o.microRows ?? o.rows;
    if (!(Number.isInteger(o.rows) && o.rows > 0 && Number.isInteger(asked) && asked > 0)) {
      throw new RangeError(`Cannot train on ${o.rows} rows per step in passes of ${asked}`);
    }
    const layout = layoutParams(o.saes, o.sae, o.adam.decays);
    // A pass's pre-activations must fit one storage binding; passes are sums over their rows, so
    // smaller ones give the same step.
    const maxWidth = Math.max(...layout.saes.map((s) => s.width));
    const fits = Math.floor(device.limits.maxStorageBufferBindingSize / (4 * maxWidth) / 64) * 64;
    const micro = Math.min(asked, fits);
    const buffers: GPUBuffer[] = [];
    const buffer = (label: string, contents: number | Float32Array | Uint32Array) => {
      const b = storageBuffer(device, label, contents);
      buffers.push(b);
      return b;
    };
    const flatValues = new Float32Array(layout.length);
    for (const s of layout.slots) {
      flatValues.set((await o.saes.params.get(s.name)!.data()) as Float32Array, s.offset);
    }
    const flat = {
      params: buffer("params", flatValues),
      m: buffer("adam m", layout.length * 4),
      v: buffer("adam v", layout.length * 4),
      grads: buffer("grads", layout.length * 4),
    };
    const micros = [];
    for (let offset = 0, index = 0; offset < o.rows; offset += micro, index++) {
      const count = Math.min(micro, o.rows - offset);
      const rows = uniformBuffer(device, `rows ${index}`, rowsUniform(offset, count, index));
      micros.push({ offset, count, rows });
    }
    const blocksPerMicro = Math.ceil(micro / DECODE_ROWS);
    const blocks = blocksPerMicro * micros.length;
    const pre = buffer("pre-activations", micro * maxWidth * 4);
    const pairs = o.jacobian?.pairs ?? [];
    const k = o.sae.k;
    const jacobianBlocks = Math.ceil((micro * k * k) / JACOBIAN_PER_GROUP);
    const pairBase = layout.saes.length * 2 * blocks;
    const figurePartials = buffer(
      "figure partials",
      (pairBase + pairs.length * jacobianBlocks * micros.length) * 4,
    );
    // Each SAE's loss, each pair's Jacobian term, each SAE's L0.
    const figures: FigureSum[] = [];
    const hooks: HookState[] = [];
    for (const [h, view] of layout.saes.entries()) {
      const { d, k, width } = view;
      const chunks = Math.ceil(micro / 64);
      const state = {
        view,
        x: buffer(`x ${view.hook}`, o.rows * d * 4),
        idx: buffer("indices", micro * k * 4),
        val: buffer("values", micro * k * 4),
        dpre: buffer("kept gradients", micro * k * 4),
        dxhat: buffer("dxhat", micro * d * 4),
        mask: buffer("mask", chunks * width * 2 * 4),
      };
      const offsets = buffer("chunk offsets", chunks * width * 4);
      const totals = buffer("totals", width * 4);
      const starts = buffer("starts", (width + 1) * 4);
      const lists = buffer("lists", micro * k * 4);
      const withLists = { ...state, lists, starts };
      const cols = buffer("column partials", blocks * d * 4);
      const kernels = {
        encoder: await encoderKernel(device, view),
        select: await topkSelectKernel(device, width, k),
        decode: await sparseDecodeKernel(device, view, {
          scale: 2 / o.rows,
          blocksPerMicro,
          figures: h * 2 * blocks,
        }),
        backward: await sparseBackwardKernel(device, view),
        lists: await featureListKernels(device, width, k),
        grads: await featureGradsKernel(device, view),
      };
      const rowsOf = (n: number) => n, pairsOf = (n: number) => n * k, features = () => width;
      const passes = micros.map(({ rows }) => {
        const bind = (kernel: Kernel, list: GPUBuffer[], count: (rows: number) => number) => ({
          kernel,
          group: bindBuffers(device, kernel, list),
          count,
        });
        const s = state;
        return [
          bind(kernels.encoder, [s.x, flat.params, pre, rows], rowsOf),
          bind(kernels.select, [pre, s.idx, s.val, s.mask, rows], rowsOf),
          bind(
            kernels.decode,
            [s.x, flat.params, s.idx, s.val, s.dxhat, figurePartials, cols, rows],
            rowsOf,
          ),
          bind(kernels.backward, [flat.params, s.idx, s.val, s.dxhat, s.dpre, rows], pairsOf),
          bind(kernels.lists.count, [s.mask, offsets, totals, rows], features),
          bind(kernels.lists.scan, [totals, starts], () => 1),
          bind(kernels.lists.fill, [s.idx, s.mask, offsets, starts, lists, rows], pairsOf),
          bind(
            kernels.grads,
            [lists, starts, s.val, s.dpre, s.dxhat, s.x, flat.params, flat.grads, rows],
            features,
          ),
        ];
      });
      const biasKernel = await biasGradKernel(device, view, blocks);
      hooks.push({
        ...withLists,
        passes,
        bias: {
          kernel: biasKernel,
          group: bindBuffers(device, biasKernel, [cols, flat.params, flat.grads]),
          count: () => d,
        },
      });
      const base = h * 2 * blocks;
      figures[h] = { offset: base, count: blocks, stride: 2, scale: 1 / o.rows };
      figures[layout.saes.length + pairs.length + h] = {
        offset: base + 1,
        count: blocks,
        stride: 2,
        scale: 1 / o.rows,
      };
    }
    const pairStates: PairState[] = [];
    for (const [p, pair] of pairs.entries()) {
      const [up, down] = [pair.up, pair.down].map((hook) => {
        const h = hooks.find((s) => s.view.hook === hook);
        if (h === undefined) throw new RangeError(`Cannot train pair ${hook}: no SAE there`);
        return h;
      });
      const offset = pairBase + p * jacobianBlocks * micros.length;
      figures[layout.saes.length + p] = {
        offset,
        count: jacobianBlocks * micros.length,
        stride: 1,
        scale: o.jacobian!.lambda / (k * k),
      };
      pairStates.push(
        await jacobianPair(device, buffer, {
          up: up!,
          down: down!,
          mlp: o.jacobian!.mlp(pair),
          lambda: o.jacobian!.lambda,
          micro,
          micros,
          params: flat.params,
          grads: flat.grads,
          figurePartials,
          figures: offset,
          blocksPerMicro: jacobianBlocks,
        }),
      );
    }
    const adam = await adamKernels(device, {
      length: layout.length,
      decayEnd: layout.decayEnd,
      maxNorm: o.gradClip,
      figures,
    });
    const normPartials = buffer("norm partials", Math.ceil(layout.length / SQUARES_PER_GROUP) * 4);
    const figureValues = buffer("figures", (2 + figures.length) * 4);
    const adamStep = uniformBuffer(device, "adam step", adamUniform(o.adam, 1, 0));
    const optimizer = [
      {
        kernel: adam.sumSquares,
        group: bindBuffers(device, adam.sumSquares, [flat.grads, normPartials]),
        count: () => layout.length,
      },
      {
        kernel: adam.figures,
        group: bindBuffers(device, adam.figures, [normPartials, figurePartials, figureValues]),
        count: () => 1,
      },
      {
        kernel: adam.update,
        group: bindBuffers(device, adam.update, [
          flat.params,
          flat.grads,
          flat.m,
          flat.v,
          figureValues,
          adamStep,
        ]),
        count: () => layout.length,
      },
    ];
    buffers.push(adamStep, ...micros.map((m) => m.rows));
    const error = await device.popErrorScope();
    if (error !== null) throw new Error(`Cannot set up the GPU SAE engine: ${error.message}`);
    return new SaeEngine(gpu, o, {
      layout,
      micros,
      hooks,
      pairs: pairStates,
      buffers,
      flat,
      figures: figureValues,
      figureCount: figures.length,
      adamStep,
      optimizer,
    });
  }

  /** Optimizer steps taken. */
  get stepsDone(): number {
    return this.#step;
  }

  /**
   * One training step: uploads the batch (unless none is given: the previous batch is reused,
   * as a benchmark does), records and submits every pass, and on a reporting step waits for the
   * figures.
   *
   * @param batch Per hook, the step's activations `[rows, D]` row-major; undefined keeps the last.
   * @param lr The step's learning rate.
   * @param report Whether to read the figures back.
   * @returns On a reporting step: each SAE's loss, each JSAE pair's λ-weighted Jacobian term, then
   *   each SAE's L0 (mean positive features per token); else undefined.
   * @throws {RangeError} If a hook's batch is missing or has another size.
   */
  async step(
    batch: ReadonlyMap<string, Float32Array> | undefined,
    lr: number,
    report: boolean,
  ): Promise<Float32Array | undefined> {
    const device = this.#gpu.device;
    const encoder = device.createCommandEncoder();
    this.encodeStep(encoder, batch, lr, report);
    device.queue.submit([encoder.finish()]);
    return report ? await this.figures() : undefined;
  }

  /**
   * Records one training step into a command encoder the caller submits, queueing its batch and
   * learning rate: how several engines' steps go to the GPU in one submission (`multi_run.ts`).
   * {@link SaeEngine.step} is this plus the submission and {@link SaeEngine.figures}.
   *
   * @param encoder The encoder.
   * @param batch Per hook, the step's activations; undefined keeps the last.
   * @param lr The step's learning rate.
   * @param report Whether to copy the figures out for {@link SaeEngine.figures}.
   * @throws {RangeError} If a hook's batch is missing or has another size.
   */
  encodeStep(
    encoder: GPUCommandEncoder,
    batch: ReadonlyMap<string, Float32Array> | undefined,
    lr: number,
    report: boolean,
  ): void {
    this.#begin(batch, lr);
    this.#record(encoder);
    if (report) encoder.copyBufferToBuffer(this.#figures, 0, this.#readback, 0, this.#figures.size);
  }

  /**
   * The figures of the last step recorded with `report`, once it was submitted.
   *
   * @returns As {@link SaeEngine.step} returns them.
   * @throws {Error} With WebGPU's message, if the device reported an error.
   */
  async figures(): Promise<Float32Array> {
    const device = this.#gpu.device;
    await this.#readback.mapAsync(GPUMapMode.READ);
    throwGpuError(device, `take SAE training step ${this.#step} on the GPU`);
    const figures = new Float32Array(
      this.#readback.getMappedRange().slice(8, 8 + 4 * this.#figureCount),
    );
    this.#readback.unmap();
    return figures;
  }

  /**
   * Takes one training step (on the batch already uploaded) with every dispatch in its own pass,
   * timed by the GPU: where a step's time goes. Needs the `timestamp-query` feature.
   *
   * @param lr The step's learning rate.
   * @returns Milliseconds per kernel (summed over micro-batches), in dispatch order; undefined
   *   when the device cannot time passes.
   */
  async profile(lr: number): Promise<{ kernel: string; ms: number }[] | undefined> {
    const device = this.#gpu.device;
    if (!device.features.has("timestamp-query")) return undefined;
    this.#begin(undefined, lr);
    const labels: string[] = [];
    const [micros, hooks, pairs] = [this.#micros, this.#hooks, this.#pairs].map((a) => a.length);
    const count = 2 * (micros * (hooks * 8 + pairs * 4) + pairs * 4 + hooks + 3);
    const set = device.createQuerySet({ type: "timestamp", count });
    const resolved = device.createBuffer({
      size: count * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const encoder = device.createCommandEncoder();
    this.#record(encoder, { set, labels });
    encoder.resolveQuerySet(set, 0, count, resolved, 0);
    device.queue.submit([encoder.finish()]);
    const ticks = new BigInt64Array(await readBuffer(device, resolved, count * 8));
    set.destroy();
    resolved.destroy();
    const ms = new Map<string, number>();
    labels.forEach((label, i) => {
      const t = Number(ticks[2 * i + 1]! - ticks[2 * i]!) / 1e6;
      ms.set(label, (ms.get(label) ?? 0) + t);
    });
    return [...ms].map(([kernel, t]) => ({ kernel, ms: t }));
  }

  // Counts the step and uploads its learning rate and batch (queued behind earlier steps).
  #begin(batch: ReadonlyMap<string, Float32Array> | undefined, lr: number): void {
    const device = this.#gpu.device;
    this.#step++;
    writeArray(device, this.#adamStep, 0, adamUniform(this.#o.adam, this.#step, lr));
    if (batch !== undefined) {
      for (const h of this.#hooks) {
        const data = batch.get(h.view.hook);
        if (data === undefined || data.length !== this.#o.rows * h.view.d) {
          throw new RangeError(
            `Cannot train "${h.view.hook}": its batch has ${data?.length ?? "no"} values, ` +
              `not ${this.#o.rows} × ${h.view.d}`,
          );
        }
        writeArray(device, h.x, 0, data);
      }
    }
  }

  // Records a step's passes: one compute pass per micro-batch and one for the optimizer, or, when
  // timed, one pass per dispatch with timestamps around it.
  #record(encoder: GPUCommandEncoder, timed?: { set: GPUQuerySet; labels: string[] }): void {
    let pass: GPUComputePassEncoder | undefined;
    const open = () => (pass = timed === undefined ? encoder.beginComputePass() : undefined);
    const run = (kernel: Kernel, group: GPUBindGroup, count: number) => {
      if (timed === undefined) return dispatch(pass!, kernel, group, count);
      const i = timed.labels.push(kernel.label) - 1;
      const one = encoder.beginComputePass({
        timestampWrites: {
          querySet: timed.set,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      dispatch(one, kernel, group, count);
      one.end();
    };
    for (const b of [this.#grads, ...this.#pairs.flatMap((p) => p.scratch)]) encoder.clearBuffer(b);
    for (const [m, micro] of this.#micros.entries()) {
      for (const h of this.#hooks) encoder.clearBuffer(h.mask);
      open();
      const steps = [
        ...(m === 0 ? this.#pairs.flatMap((p) => p.before) : []),
        ...this.#hooks.flatMap((h) => h.passes[m]!),
        ...this.#pairs.flatMap((p) => p.passes[m]!),
      ];
      for (const s of steps) run(s.kernel, s.group, s.count(micro.count));
      pass?.end();
    }
    open();
    const last = [
      ...this.#pairs.flatMap((p) => p.after),
      ...this.#hooks.map((h) => h.bias),
      ...this.#optimizer,
    ];
    for (const s of last) run(s.kernel, s.group, s.count(0));
    pass?.end();
  }

  /**
   * The current parameters, by name (waits for submitted steps).
   *
   * @returns Name → shape and values.
   */
  params(): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    return this.#unflatten(this.#params, "");
  }

  /**
   * Copies the current parameters into the SAE set's variables (for evaluation and checkpoints
   * written by the reference code).
   */
  async writeBack(): Promise<void> {
    for (const [name, p] of await this.params()) {
      const v = this.#o.saes.params.get(name)!;
      tf.tidy(() => v.assign(tf.tensor(p.data, p.shape)));
    }
  }

  /**
   * The optimizer state in `AdamW.state()`'s form (`m.<name>`, `v.<name>`), for checkpoints.
   *
   * @returns Step count and moments.
   */
  async state(): Promise<AdamWState> {
    const tensors = new Map([
      ...await this.#unflatten(this.#m, "m."),
      ...await this.#unflatten(this.#v, "v."),
    ]);
    return { step: this.#step, tensors };
  }

  /**
   * Restores an optimizer state saved by {@link SaeEngine.state} or `AdamW.state()`; the
   * parameters come from the SAE set's variables, which must already hold the checkpoint's.
   *
   * @param state The saved state.
   * @throws {RangeError} If a moment is missing or has another size.
   */
  async load(state: AdamWState): Promise<void> {
    const device = this.#gpu.device;
    for (const [prefix, buffer] of [["m.", this.#m], ["v.", this.#v]] as const) {
      const flat = new Float32Array(this.#layout.length);
      for (const s of this.#layout.slots) {
        const saved = state.tensors.get(prefix + s.name);
        if (saved === undefined || saved.data.length !== s.size) {
          throw new RangeError(`Cannot restore optimizer: moment "${prefix}${s.name}" is missing`);
        }
        flat.set(saved.data, s.offset);
      }
      writeArray(device, buffer, 0, flat);
    }
    const flat = new Float32Array(this.#layout.length);
    for (const s of this.#layout.slots) {
      flat.set((await this.#o.saes.params.get(s.name)!.data()) as Float32Array, s.offset);
    }
    writeArray(device, this.#params, 0, flat);
    this.#step = state.step;
  }

  /** Frees every buffer. */
  dispose(): void {
    for (const b of [...this.#buffers, this.#readback]) b.destroy();
  }

  async #unflatten(
    buffer: GPUBuffer,
    prefix: string,
  ): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
    const flat = new Float32Array(
      await readBuffer(this.#gpu.device, buffer, this.#layout.length * 4),
    );
    return new Map(
      this.#layout.slots.map((s) => [
        prefix + s.name,
        { shape: s.shape, data: flat.slice(s.offset, s.offset + s.size) },
      ]),
    );
  }
}

/** What one JSAE pair's dispatches bind to. */
interface PairInputs {
  up: HookState;
  down: HookState;
  mlp: MlpWeights;
  lambda: number;
  micro: number;
  micros: { rows: GPUBuffer }[];
  params: GPUBuffer;
  grads: GPUBuffer;
  figurePartials: GPUBuffer;
  figures: number;
  blocksPerMicro: number;
}

// The Jacobian term's buffers and dispatches for one pair (see `kernels/jacobian.ts`): the MLP's
// weights are uploaded once (the model is frozen), the factors are formed once per step.
async function jacobianPair(
  device: GPUDevice,
  buffer: (label: string, contents: number | Float32Array) => GPUBuffer,
  p: PairInputs,
): Promise<PairState> {
  const { up, down } = p;
  const [d, m, k] = [up.view.d, p.mlp.wFc.shape[1], up.view.k];
  const [fIn, fOut] = [up.view.width, down.view.width];
  const weights = new Float32Array(2 * d * m + m);
  weights.set((await p.mlp.wFc.data()) as Float32Array, 0);
  weights.set((await p.mlp.bFc.data()) as Float32Array, d * m);
  weights.set((await p.mlp.wProj.data()) as Float32Array, d * m + m);
  const proj = d * m + m;
  const mlp = buffer("mlp", weights);
  const [a, bt, da, dbt] = [fIn, fOut, fIn, fOut].map((f) => buffer("jacobian factor", f * m * 4));
  const g = buffer("gelu'", p.micro * m * 4);
  const dj = buffer("dJ", p.micro * k * k * 4);
  const kernels = await jacobianKernels(device, {
    d,
    m,
    k,
    fIn,
    fOut,
    lambda: p.lambda,
    blocksPerMicro: p.blocksPerMicro,
    figures: p.figures,
  });
  const rowMajor = (offset: number, cols: number) => ({ offset, rowStride: cols, colStride: 1 });
  const product = async (
    label: string,
    shape: MatmulShape,
    inputs: [GPUBuffer, GPUBuffer, GPUBuffer],
  ): Promise<Dispatch> => {
    const kernel = await stridedMatmulKernel(device, label, shape);
    return {
      kernel,
      group: bindBuffers(device, kernel, inputs),
      count: () => shape.rows * shape.cols,
    };
  };
  const before = [
    // A = W_dec_in · W_fc
    await product("jacobian A", {
      rows: fIn,
      cols: m,
      inner: d,
      a: rowMajor(up.view.wDec, d),
      b: rowMajor(0, m),
      c: rowMajor(0, m),
      accumulate: false,
    }, [p.params, mlp, a]),
    // Bᵀ[f, ·] = Σ_d W_enc_out[d, f] · W_proj[·, d]
    await product("jacobian Bt", {
      rows: fOut,
      cols: m,
      inner: d,
      a: { offset: down.view.wEnc, rowStride: 1, colStride: down.view.ld },
      b: { offset: proj, rowStride: 1, colStride: d },
      c: rowMajor(0, m),
      accumulate: false,
    }, [p.params, mlp, bt]),
  ];
  const after = [
    // ∂W_dec_in += ∂A · W_fcᵀ
    await product("jacobian dW_dec", {
      rows: fIn,
      cols: d,
      inner: m,
      a: rowMajor(0, m),
      b: { offset: 0, rowStride: 1, colStride: m },
      c: rowMajor(up.view.wDec, d),
      accumulate: true,
    }, [da, mlp, p.grads]),
    // ∂W_enc_out += W_projᵀ · ∂Bᵀᵀ
    await product("jacobian dW_enc", {
      rows: d,
      cols: fOut,
      inner: m,
      a: { offset: proj, rowStride: 1, colStride: d },
      b: { offset: 0, rowStride: 1, colStride: m },
      c: rowMajor(down.view.wEnc, down.view.ld),
      accumulate: true,
    }, [mlp, dbt, p.grads]),
  ];
  const passes = p.micros.map(({ rows }) => [
    {
      kernel: kernels.gelu,
      group: bindBuffers(device, kernels.gelu, [up.x, mlp, g, rows]),
      count: (n: number) => n * m,
    },
    {
      kernel: kernels.forward,
      group: bindBuffers(device, kernels.forward, [
        up.idx,
        down.idx,
        a,
        bt,
        g,
        dj,
        p.figurePartials,
        rows,
      ]),
      count: (n: number) => n * k * k,
    },
    {
      kernel: kernels.backIn,
      group: bindBuffers(device, kernels.backIn, [
        up.lists,
        up.starts,
        dj,
        down.idx,
        bt,
        g,
        da,
      ]),
      count: () => fIn,
    },
    {
      kernel: kernels.backOut,
      group: bindBuffers(device, kernels.backOut, [
        down.lists,
        down.starts,
        dj,
        up.idx,
        a,
        g,
        dbt,
      ]),
      count: () => fOut,
    },
  ]);
  return { scratch: [da!, dbt!], before, passes, after };
}

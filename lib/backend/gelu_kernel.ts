/**
 * GPT-2's tanh-approximated GELU, ½x(1 + tanh(√(2/π)(x + 0.044715x³))), and its derivative as
 * tfjs kernels for the CPU backends, reading and writing the backend's memory directly.
 *
 * The stock-op formula (`geluTanh` in `lib/model/gpt.ts`, which dispatches here) runs about ten
 * elementwise kernels forward and twice that backward, each a full pass over the MLP activations,
 * and on `wasm` every one of them that the gradient needs also copies its inputs for the tape
 * (tfjs clones saved tensors through the `Identity` kernel, which copies on wasm). Its `Tanh` alone
 * costs about 10 ns per element on wasm. The fused pair makes one pass each way and saves only x.
 *
 * Both directions use ½(1 + tanh(u)) = σ(2u) = 1 / (1 + e^(−2u)): unlike 1 + tanh(u), which
 * cancels to nothing for negative inputs, σ(2u) keeps full relative accuracy in both tails.
 *
 * Three implementations of the loops: float64 JavaScript ({@link geluTanhValues},
 * {@link geluTanhGradValues}; the exponential is {@link expFast}, a third of `Math.exp`'s cost),
 * which round to float32 once per output; on `wasm`, a small wasm SIMD module over the tfjs
 * module's own memory ({@link wasmSimdGeluLoops}), about three times faster again, computing in
 * float32; and native loops (`gelu_kernel.c`, {@link loadNativeGeluLoops}) on every thread, ten
 * times faster than those, wherever a C compiler builds them. The kernels run the native loops
 * when they were registered with them, else the fastest of the other two for their arrays.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";
import { type CpuKernelBackend, STORAGE } from "./kernel_storage.ts";
import { EXP_VEC_SOURCE, GELU_TANH_SOURCE, loadNative, type NativeOptions } from "./native.ts";

/** The tfjs kernel name of the fused GELU forward pass: inputs `{x}`, float32, any shape. */
export const GELU_TANH_KERNEL = "ScalarGeluTanh";

/** The tfjs kernel name of its gradient: inputs `{dy, x}`, float32, one shape; returns dL/dx. */
export const GELU_TANH_GRAD_KERNEL = "ScalarGeluTanhGrad";

/** √(2/π), GPT-2's constant. */
const C = Math.sqrt(2 / Math.PI);
/** The cubic coefficient of GPT-2's approximation. */
const A = 0.044715;
// y = −2u = x·(K1 + K3·x²), the exponent of σ(2u) = 1 / (1 + e^y).
const K1 = -2 * C, K3 = -2 * C * A;
// 2·du/dx = D0 + D2·x².
const D0 = 2 * C, D2 = 6 * C * A;

/**
 * Beyond |y| = 80, e^y is below 1.8e-35 or above 5.5e34, so σ is 0 or 1 to far more digits than
 * float32 holds; the kernels take those limits explicitly instead of evaluating e^y. Doing so also
 * keeps the derivative's x³·e^y term from turning into inf · 0 for huge |x|.
 */
const Y_LIMIT = 80;

// e^y = 2^(j/32) · e^r with j = round(32·y/ln2) and |r| ≤ ln2/64; 2^(j/32) is two exact-enough
// table entries, 2^⌊j/32⌋ · 2^((j mod 32)/32). j is offset by 4096 so that it is never negative
// for |y| ≤ 88: then `| 0` rounds, `>> 5` and `& 31` split it, and the tables stay tiny (L1).
const J_OFFSET = 4096;
const POW2_HIGH = Float64Array.from({ length: 256 }, (_, i) => 2 ** (i - J_OFFSET / 32));
const POW2_LOW = Float64Array.from({ length: 32 }, (_, i) => 2 ** (i / 32));
const TO_J = 32 / Math.LN2, FROM_J = Math.LN2 / 32;

/**
 * e^y for |y| ≤ 88 with a relative error below 6e-10 (float32's half-ulp is 3e-8): a two-entry
 * table lookup for 2^(j/32) times a cubic Taylor polynomial of e^r for the remainder |r| ≤ ln2/64
 * (the omitted r⁴/24 is below 6e-10). About 2 ns against `Math.exp`'s 6.5 ns on V8, which calls
 * out to C for every element; a 2^k table with a degree-8 polynomial measured twice as slow.
 *
 * @param y Exponent, |y| ≤ 88 (beyond that the index leaves the table and the result is NaN).
 * @returns e^y.
 *
 * @example
 * ```ts
 * import { expFast } from "./gelu_kernel.ts";
 * if (Math.abs(expFast(1) / Math.E - 1) > 1e-9) throw new Error();
 * ```
 */
export function expFast(y: number): number {
  // y·TO_J + 4096 is positive, so truncation after adding ½ rounds to nearest.
  const j = (y * TO_J + (J_OFFSET + 0.5)) | 0;
  const r = y - (j - J_OFFSET) * FROM_J;
  return (1 + r * (1 + r * (1 / 2 + r * (1 / 6)))) * POW2_HIGH[j >> 5]! * POW2_LOW[j & 31]!;
}

/**
 * tanh(u) from one {@link expFast}: (1 − e)/(1 + e) with e = e^(−2|u|), the sign restored. The
 * absolute error stays below 1e-9 over the whole float range (the test checks ≤ 2e-7, float32's
 * spacing near 1 being 6e-8), in 6 ns against `Math.tanh`'s 13.5 ns. The GELU kernels do not call
 * it: they need ½(1 + tanh) and take it as σ(2u), which does not cancel.
 *
 * @param u Any number.
 * @returns tanh(u); ±1 beyond |u| = 20, NaN for NaN.
 *
 * @example
 * ```ts
 * import { tanhFast } from "./gelu_kernel.ts";
 * if (Math.abs(tanhFast(0.5) - Math.tanh(0.5)) > 2e-7) throw new Error();
 * ```
 */
export function tanhFast(u: number): number {
  // tanh(20) = 1 − 8e-18 is 1 in float64 already; the clamp keeps e^(−2a) in expFast's range and
  // lets NaN through (Math.min of NaN is NaN).
  const a = Math.min(Math.abs(u), 20);
  const e = expFast(-2 * a);
  const t = (1 - e) / (1 + e);
  return u < 0 ? -t : t;
}

/**
 * GELU (GPT-2's tanh approximation) of every element, as x·σ(2u) with u = √(2/π)(x + 0.044715x³),
 * in float64 (about 3.5 ns per element; stock wasm's `Tanh` alone takes 10–15).
 *
 * @param x Input values.
 * @param out Output, same length as `x`; fully overwritten (may be `x` itself).
 *
 * @example
 * ```ts
 * import { geluTanhValues } from "./gelu_kernel.ts";
 * const out = new Float32Array(3);
 * geluTanhValues(Float32Array.of(-20, 0, 20), out);
 * if (out.join() !== "0,0,20") throw new Error(out.join());
 * ```
 */
export function geluTanhValues(x: Float32Array, out: Float32Array): void {
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const v = x[i]!;
    const y = v * (K1 + K3 * v * v);
    if (y < -Y_LIMIT) out[i] = v;
    else if (y <= Y_LIMIT) out[i] = v / (1 + expFast(y));
    // σ = 0 (keeping x's sign, as ½x(1 + tanh) does), or NaN in, NaN out.
    else out[i] = v * 0;
  }
}

/**
 * The gradient of {@link geluTanhValues}: dx = dy · (σ + 2x·u′·σ(1 − σ)) with σ = σ(2u) and
 * u′ = √(2/π)(1 + 3·0.044715x²), using 1 − σ = e^y·σ so that neither tail cancels.
 *
 * @param dy Gradient of the loss with respect to the GELU's output.
 * @param x The GELU's input.
 * @param dx Output, same length; fully overwritten (may alias `dy` or `x`).
 *
 * @example
 * ```ts
 * import { geluTanhGradValues } from "./gelu_kernel.ts";
 * const dx = new Float32Array(3);
 * geluTanhGradValues(Float32Array.of(2, 2, 2), Float32Array.of(-20, 0, 20), dx);
 * if (dx.join() !== "0,1,2") throw new Error(dx.join());
 * ```
 */
export function geluTanhGradValues(dy: Float32Array, x: Float32Array, dx: Float32Array): void {
  const n = x.length;
  for (let i = 0; i < n; i++) {
    const v = x[i]!, v2 = v * v;
    const y = v * (K1 + K3 * v2);
    if (y < -Y_LIMIT) {
      dx[i] = dy[i]!;
    } else if (y <= Y_LIMIT) {
      const e = expFast(y);
      const s = 1 / (1 + e);
      dx[i] = dy[i]! * s * (1 + v * e * s * (D0 + D2 * v2));
    } else {
      // The derivative is 0 here; v·0 carries a NaN input through.
      dx[i] = dy[i]! * (v * 0);
    }
  }
}

/** One implementation of the GELU loops: {@link geluTanhValues} and {@link geluTanhGradValues}. */
export interface GeluLoops {
  /** GELU of every element of `x` into `out` (same length, may be `x`). */
  values(x: Float32Array, out: Float32Array): void;
  /** The gradient `dx` for `dy` at `x` (all one length; `dx` may alias either). */
  gradValues(dy: Float32Array, x: Float32Array, dx: Float32Array): void;
}

// ---- The wasm SIMD loops ----
//
// On `wasm` the tensors live in the tfjs module's memory, so a small module of our own that
// imports that memory can run the GELU four lanes at a time with 128-bit SIMD: 2.7× faster forward
// and 3× backward than the float64 JavaScript loops above (1.3 and 1.75 ns per element on the
// 2-core bench machine). It computes in float32, like the stock kernels, so it agrees with the
// float64 loops to about 1.3e-7·(1 + |result|) rather than to the last bit: σ(2u) rounds the
// exponent y = −2u (up to |y| = 80) to float32 first, which costs relative accuracy only where the
// result is tiny. There is no toolchain in the build, so the module is assembled below from a
// few dozen opcodes. The formulas are those of the JavaScript loops, except:
// - e^y: y = k·ln2 + r by adding and subtracting 1.5·2²³ (which rounds to an integer without the
//   multi-instruction wasm `nearest`/`trunc_sat`), then 2^k from k's bits shifted into the float
//   exponent, times a degree-7 Taylor polynomial of e^r in Estrin's form (a shorter dependency
//   chain than Horner's, which measured 12% slower);
// - the clamp to ±80 uses `pmin`/`pmax` (one instruction each; `min`/`max` take several on x64
//   to order NaNs, and measured 1.5× slower overall), and the two tails are chosen by bit masks.

// Opcodes used (WebAssembly core, and the SIMD ones that follow the 0xfd prefix).
const OP = {
  block: 0x02,
  loop: 0x03,
  end: 0x0b,
  br: 0x0c,
  brIf: 0x0d,
  localGet: 0x20,
  localSet: 0x21,
  i32Const: 0x41,
  i32GeU: 0x4f,
  i32Add: 0x6a,
  i32Shl: 0x74,
} as const;
const SIMD = {
  load: 0x00,
  store: 0x0b,
  const: 0x0c,
  f32x4Lt: 0x43,
  f32x4Gt: 0x44,
  bitselect: 0x52,
  i32x4Shl: 0xab,
  i32x4Add: 0xae,
  f32x4Add: 0xe4,
  f32x4Sub: 0xe5,
  f32x4Mul: 0xe6,
  f32x4Div: 0xe7,
  f32x4Pmin: 0xea,
  f32x4Pmax: 0xeb,
} as const;
const I32 = 0x7f, V128 = 0x7b;
// 1.5·2²³: adding it to |t| < 2²² rounds t to an integer k and leaves k in the low mantissa bits.
const ROUNDER = 12582912;
// Split of ln 2 for float32 range reduction: LN2_HIGH has 9 significant bits, so k·LN2_HIGH is
// exact for |k| < 2^15.
const LN2_HIGH = 0.693359375, LN2_LOW = Math.LN2 - 0.693359375;

// The float32 whose bits are the integer `n` (lane constants are stored as floats).
function asFloat(n: number): number {
  return new Float32Array(Int32Array.of(n).buffer)[0]!;
}

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    const low = n & 0x7f;
    n >>>= 7;
    out.push(n ? low | 0x80 : low);
  } while (n);
  return out;
}

// A length-prefixed vector of already encoded items.
function vector(items: number[][]): number[] {
  return [...uleb(items.length), ...items.flat()];
}

function name(text: string): number[] {
  return vector([...text].map((ch) => [ch.charCodeAt(0)]));
}

/**
 * One function over `count` float32 elements (a multiple of 4) at byte offsets given as i32
 * parameters: straight-line code for one 4-lane step, looped. v128 locals are named; every
 * constant gets a local set once before the loop, as re-materialising v128 constants in the loop
 * measured slower.
 */
class SimdFunction {
  readonly #params: string[];
  readonly #v128 = new Map<string, number>();
  readonly #constants = new Map<number, number>();
  readonly #step: number[] = [];

  constructor(params: string[]) {
    this.#params = params;
  }

  // Locals: the i32 parameters, then the byte index and the end, then the v128 ones.
  #index(local: string): number {
    const p = this.#params.indexOf(local);
    if (p >= 0) return p;
    if (local === "i") return this.#params.length;
    if (local === "end") return this.#params.length + 1;
    if (!this.#v128.has(local)) this.#v128.set(local, this.#params.length + 2 + this.#v128.size);
    return this.#v128.get(local)!;
  }

  /** Pushes a local. */
  get(local: string): this {
    this.#step.push(OP.localGet, ...uleb(this.#index(local)));
    return this;
  }

  /** Pops into a local. */
  set(local: string): this {
    this.#step.push(OP.localSet, ...uleb(this.#index(local)));
    return this;
  }

  /** Pushes four copies of a float32 constant. */
  splat(value: number): this {
    if (!this.#constants.has(value)) this.#constants.set(value, this.#index(`const ${value}`));
    this.#step.push(OP.localGet, ...uleb(this.#constants.get(value)!));
    return this;
  }

  /** Pushes a small non-negative i32 constant (a shift count). */
  i32(value: number): this {
    // One-byte signed LEB128 covers 0…63.
    if (!(Number.isInteger(value) && value >= 0 && value < 64)) throw new RangeError(`${value}`);
    this.#step.push(OP.i32Const, value);
    return this;
  }

  /** Runs SIMD instructions. */
  op(...codes: number[]): this {
    for (const code of codes) this.#step.push(0xfd, ...uleb(code));
    return this;
  }

  /** Pushes the 4 floats at `pointer + i`. */
  load(pointer: string): this {
    this.get(pointer).get("i").#step.push(OP.i32Add);
    // memarg: alignment 2^2 (float32 data), offset 0.
    return this.op(SIMD.load).#raw(2, 0);
  }

  /** Stores what `compute` pushes at `pointer + i`. */
  store(pointer: string, compute: (f: this) => void): this {
    this.get(pointer).get("i").#step.push(OP.i32Add);
    compute(this);
    return this.op(SIMD.store).#raw(2, 0);
  }

  #raw(...bytes: number[]): this {
    this.#step.push(...bytes);
    return this;
  }

  /** The function body: locals, constants, then `for (i = 0; i < 4·count; i += 16) step`. */
  encode(): number[] {
    const constants = [...this.#constants].flatMap(([value, local]) => {
      const lanes = new Uint8Array(new Float32Array([value, value, value, value]).buffer);
      return [0xfd, ...uleb(SIMD.const), ...lanes, OP.localSet, ...uleb(local)];
    });
    const count = this.#params.indexOf("count");
    const i = this.#params.length, end = i + 1;
    const body = [
      ...vector([[...uleb(2), I32], [...uleb(this.#v128.size), V128]]),
      ...constants,
      ...[OP.localGet, count, OP.i32Const, 2, OP.i32Shl, OP.localSet, end],
      ...[OP.block, 0x40, OP.loop, 0x40],
      ...[OP.localGet, i, OP.localGet, end, OP.i32GeU, OP.brIf, 1],
      ...this.#step,
      ...[OP.localGet, i, OP.i32Const, 16, OP.i32Add, OP.localSet, i, OP.br, 0],
      ...[OP.end, OP.end, OP.end],
    ];
    return [...uleb(body.length), ...body];
  }
}

// Leaves v, v2 = v², y = −2u, e = e^clamp(y) and s = σ(2u) = 1/(1 + e) for the lanes at x + i.
function sigmoidStep(f: SimdFunction, x: string): void {
  f.load(x).set("v");
  f.get("v").get("v").op(SIMD.f32x4Mul).set("v2");
  f.get("v").splat(K3).get("v2").op(SIMD.f32x4Mul).splat(K1).op(SIMD.f32x4Add, SIMD.f32x4Mul)
    .set("y");
  f.get("y").splat(-Y_LIMIT).op(SIMD.f32x4Pmax).splat(Y_LIMIT).op(SIMD.f32x4Pmin).set("t");
  // kBits = t·log2(e) + 1.5·2²³ holds k = round(t·log2 e) in its low bits; k as a float follows.
  f.get("t").splat(Math.LOG2E).op(SIMD.f32x4Mul).splat(ROUNDER).op(SIMD.f32x4Add).set("kBits");
  f.get("kBits").splat(ROUNDER).op(SIMD.f32x4Sub).set("k");
  // r = t − k·ln2 with ln2 split in two so that k·LN2_HIGH is exact.
  f.get("t").get("k").splat(LN2_HIGH).op(SIMD.f32x4Mul, SIMD.f32x4Sub)
    .get("k").splat(LN2_LOW).op(SIMD.f32x4Mul, SIMD.f32x4Sub).set("r");
  // e^r = (1 + r) + r²(1/2 + r/6) + r⁴((1/24 + r/120) + r²(1/720 + r/5040))
  f.get("r").get("r").op(SIMD.f32x4Mul).set("r2");
  f.splat(1).get("r").op(SIMD.f32x4Add);
  f.get("r2").splat(1 / 2).splat(1 / 6).get("r").op(SIMD.f32x4Mul, SIMD.f32x4Add, SIMD.f32x4Mul);
  f.op(SIMD.f32x4Add);
  f.get("r2").get("r2").op(SIMD.f32x4Mul);
  f.splat(1 / 24).splat(1 / 120).get("r").op(SIMD.f32x4Mul, SIMD.f32x4Add);
  f.get("r2").splat(1 / 720).splat(1 / 5040).get("r").op(SIMD.f32x4Mul, SIMD.f32x4Add);
  f.op(SIMD.f32x4Mul, SIMD.f32x4Add, SIMD.f32x4Mul, SIMD.f32x4Add);
  // · 2^k: (k + 127) << 23 is 2^k's bit pattern; kBits' bits are k plus a multiple of 2⁹ that the
  // shift pushes out. |k| ≤ 116 keeps the exponent normal.
  f.get("kBits").splat(asFloat(127)).op(SIMD.i32x4Add).i32(23).op(SIMD.i32x4Shl);
  f.op(SIMD.f32x4Mul).set("e");
  f.splat(1).splat(1).get("e").op(SIMD.f32x4Add, SIMD.f32x4Div).set("s");
}

function simdModuleBytes(): Uint8Array<ArrayBuffer> {
  const forward = new SimdFunction(["x", "out", "count"]);
  sigmoidStep(forward, "x");
  // x·σ, or x·0 beyond y = 80 (which also passes a NaN through).
  forward.store(
    "out",
    (f) =>
      f.get("v").splat(0).op(SIMD.f32x4Mul).get("v").get("s").op(SIMD.f32x4Mul)
        .get("y").splat(Y_LIMIT).op(SIMD.f32x4Gt, SIMD.bitselect),
  );

  const gradient = new SimdFunction(["dy", "x", "dx", "count"]);
  sigmoidStep(gradient, "x");
  gradient.load("dy").set("g");
  gradient.store("dx", (f) => {
    // g = dy: y < −80: g;  y > 80: g·(x·0);  else g·s·(1 + x·e·s·(D0 + D2·x²)).
    f.get("g");
    f.get("g").get("v").splat(0).op(SIMD.f32x4Mul, SIMD.f32x4Mul);
    f.get("g").get("s").op(SIMD.f32x4Mul);
    f.splat(1).get("v").get("e").op(SIMD.f32x4Mul).get("s").op(SIMD.f32x4Mul);
    f.splat(D0).splat(D2).get("v2").op(SIMD.f32x4Mul, SIMD.f32x4Add);
    f.op(SIMD.f32x4Mul, SIMD.f32x4Add, SIMD.f32x4Mul);
    f.get("y").splat(Y_LIMIT).op(SIMD.f32x4Gt, SIMD.bitselect);
    f.get("y").splat(-Y_LIMIT).op(SIMD.f32x4Lt, SIMD.bitselect);
  });

  const i32s = (n: number) => [0x60, ...vector(Array.from({ length: n }, () => [I32])), 0];
  const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
  return Uint8Array.from([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vector([i32s(3), i32s(4)])), // types: (i32 ×3) → (), (i32 ×4) → ()
    ...section(2, vector([[...name("env"), ...name("memory"), 0x02, 0x00, 0x00]])), // memory, min 0
    ...section(3, vector([[0], [1]])),
    ...section(7, vector([[...name("values"), 0x00, 0], [...name("grad"), 0x00, 1]])),
    ...section(10, vector([forward.encode(), gradient.encode()])),
  ]);
}

const JS_LOOPS: GeluLoops = { values: geluTanhValues, gradValues: geluTanhGradValues };

// One instance per memory; null where the SIMD module cannot run on it.
const simdLoops = new WeakMap<WebAssembly.Memory, GeluLoops | null>();

/**
 * The GELU loops in wasm SIMD over a WebAssembly memory (the notes at "The wasm SIMD loops" in
 * this file say how): for arrays that are views of `memory`, the results of {@link geluTanhValues}
 * and {@link geluTanhGradValues} to within float32 rounding of the intermediate steps (about
 * 1.3e-7·(1 + |result|)), about three times faster. The kernels use them on `wasm` when no
 * native loops were registered.
 *
 * @param memory The memory the arrays will view (the tfjs wasm module's, for the kernels).
 * @returns The loops, or `undefined` where this engine has no wasm SIMD or the memory is shared
 *   (a threaded tfjs build), which the module's plain memory import cannot take.
 */
export function wasmSimdGeluLoops(memory: WebAssembly.Memory): GeluLoops | undefined {
  let loops = simdLoops.get(memory);
  if (loops === undefined) {
    loops = instantiateSimdLoops(memory);
    simdLoops.set(memory, loops);
  }
  return loops ?? undefined;
}

function instantiateSimdLoops(memory: WebAssembly.Memory): GeluLoops | null {
  if (typeof SharedArrayBuffer !== "undefined" && memory.buffer instanceof SharedArrayBuffer) {
    return null;
  }
  const bytes = simdModuleBytes();
  if (!WebAssembly.validate(bytes)) return null;
  // Synchronous compilation is fine for a module this small (under 2 KB).
  const exports = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } })
    .exports as {
      values(x: number, out: number, count: number): void;
      grad(dy: number, x: number, dx: number, count: number): void;
    };
  // The wasm code trusts its offsets, so check here that they describe arrays in `memory`: an
  // access past the end would trap, but one into a neighbouring tensor would not.
  const check = (length: number, ...arrays: Float32Array[]) => {
    for (const a of arrays) {
      if (a.buffer !== memory.buffer || a.length !== length) {
        throw new RangeError(
          "Cannot run the SIMD GELU: every array must view the module's memory and be one length",
        );
      }
    }
  };
  return {
    values(x, out) {
      check(x.length, x, out);
      // Whole 4-lane steps in wasm, the last 0–3 elements in JavaScript.
      const n = x.length & ~3;
      exports.values(x.byteOffset, out.byteOffset, n);
      if (n < x.length) geluTanhValues(x.subarray(n), out.subarray(n));
    },
    gradValues(dy, x, dx) {
      check(x.length, dy, x, dx);
      const n = x.length & ~3;
      exports.grad(dy.byteOffset, x.byteOffset, dx.byteOffset, n);
      if (n < x.length) geluTanhGradValues(dy.subarray(n), x.subarray(n), dx.subarray(n));
    },
  };
}

// The fastest loops for a kernel's arrays: SIMD when they live in the tfjs wasm module's memory.
// `wasm.asm.memory` is the Emscripten module's exported memory, internal to tfjs like the rest of
// what kernel_storage.ts reads; without it the kernels stay correct, only slower.
function loopsFor(backend: unknown, heap: ArrayBufferLike): GeluLoops {
  const memory = (backend as { wasm?: { asm?: { memory?: unknown } } }).wasm?.asm?.memory;
  if (memory instanceof WebAssembly.Memory && memory.buffer === heap) {
    return wasmSimdGeluLoops(memory) ?? JS_LOOPS;
  }
  return JS_LOOPS;
}

/** The native GELU loops (`gelu_kernel.c`), as `Deno.dlopen` symbols. */
const GELU_SYMBOLS = {
  scalar_gelu_values: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  scalar_gelu_grad: { parameters: ["buffer", "buffer", "buffer", "i64"], result: "void" },
} as const;

/**
 * Compiles (once, into the cache) and opens the native GELU loops: float32, every thread, within
 * about 3e-7·(1 + |result|) of the float64 GELU (`exp_vec`'s 1.5 ulp and float32 steps).
 *
 * @param options Compiler and cache directory (`lib/backend/native.ts`).
 * @returns The loops, for any float32 arrays (tfjs tensors' memory included).
 * @throws {NativeError} If there is no C compiler or the build fails.
 *
 * @example
 * ```ts
 * import { equal } from "node:assert/strict";
 * import { loadNativeGeluLoops } from "./gelu_kernel.ts";
 * const loops = await loadNativeGeluLoops();
 * const out = new Float32Array(3);
 * loops.values(Float32Array.of(-20, 0, 20), out);
 * equal(out.join(), "0,0,20");
 * ```
 */
export async function loadNativeGeluLoops(options: NativeOptions = {}): Promise<GeluLoops> {
  const prelude = [EXP_VEC_SOURCE, GELU_TANH_SOURCE, ...options.prelude ?? []];
  const source = new URL("./gelu_kernel.c", import.meta.url);
  const lib = (await loadNative(source, GELU_SYMBOLS, { ...options, prelude })).symbols;
  const check = (...arrays: Float32Array[]) => {
    if (arrays.some((a) => a.length !== arrays[0]!.length)) {
      throw new RangeError("Cannot run the native GELU: the arrays differ in length");
    }
  };
  return {
    values(x, out) {
      check(x, out);
      lib.scalar_gelu_values(x, out, BigInt(x.length));
    },
    gradValues(dy, x, dx) {
      check(dy, x, dx);
      lib.scalar_gelu_grad(dy, x, dx, BigInt(x.length));
    },
  };
}

/**
 * Registers {@link GELU_TANH_KERNEL} and {@link GELU_TANH_GRAD_KERNEL} for a CPU backend,
 * replacing any registered before. The op that uses them is `geluTanh` in `lib/model/gpt.ts`,
 * which falls back to stock ops on backends without them.
 *
 * @param backendName The backend to serve; for `wasm`, `@tensorflow/tfjs-backend-wasm` must be
 *   imported before the kernels run.
 * @param native The native loops ({@link loadNativeGeluLoops}), when they built: the kernels then
 *   run them; without, the fastest of the JavaScript and wasm SIMD loops for the arrays.
 * @throws {Error} If `backendName` is not `cpu` or `wasm`.
 */
export function registerGeluKernels(backendName: CpuKernelBackend, native?: GeluLoops): void {
  // The type stops TypeScript callers; this stops JavaScript ones and casts.
  if (!Object.hasOwn(STORAGE, backendName)) {
    throw new Error(
      `Cannot register GELU kernels for "${backendName}": not a supported backend ` +
        `(${Object.keys(STORAGE).join(", ")})`,
    );
  }
  const storageOf = STORAGE[backendName];
  const loops = (backend: unknown, heap: ArrayBufferLike) => native ?? loopsFor(backend, heap);
  for (const name of [GELU_TANH_KERNEL, GELU_TANH_GRAD_KERNEL]) {
    if (tf.getKernel(name, backendName)) tf.unregisterKernel(name, backendName);
  }
  tf.registerKernel({
    kernelName: GELU_TANH_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend }) => {
      const storage = storageOf(backend);
      const x = inputs.x;
      if (!storage.isFloat32(x)) throw new Error(notFloat32(GELU_TANH_KERNEL, "x", x));
      const out = storage.allocate(x.shape);
      loops(backend, out.values.buffer).values(out.read(x), out.values);
      return out.info;
    },
  });
  tf.registerKernel({
    kernelName: GELU_TANH_GRAD_KERNEL,
    backendName,
    kernelFunc: ({ inputs, backend }) => {
      const storage = storageOf(backend);
      const { dy, x } = inputs;
      if (!storage.isFloat32(x)) throw new Error(notFloat32(GELU_TANH_GRAD_KERNEL, "x", x));
      if (!storage.isFloat32(dy)) throw new Error(notFloat32(GELU_TANH_GRAD_KERNEL, "dy", dy));
      if (!tf.util.arraysEqual(dy.shape, x.shape)) {
        throw new Error(
          `Cannot run ${GELU_TANH_GRAD_KERNEL}: dy [${dy.shape}] and x [${x.shape}] differ in shape`,
        );
      }
      const out = storage.allocate(x.shape);
      loops(backend, out.values.buffer).gradValues(out.read(dy), out.read(x), out.values);
      return out.info;
    },
  });
}

function notFloat32(kernel: string, name: string, t: tf.TensorInfo | undefined): string {
  return t === undefined
    ? `Cannot run ${kernel}: input "${name}" is missing`
    : `Cannot run ${kernel}: input "${name}" is ${t.dtype}[${t.shape}], expected float32 in memory`;
}

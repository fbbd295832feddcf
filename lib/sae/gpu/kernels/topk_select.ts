/**
 * Per-row TopK selection of ReLU'd pre-activations by radix select, no sort: exactly k kept per
 * row, among equal values the lower feature index wins (as `topkReluReference` and `tf.topk`
 * decide), written as (index, value) pairs in ascending feature order.
 *
 * One workgroup per row. Non-negative f32 values order like their bit patterns as u32, so the
 * k-th largest value is found 8 bits at a time: four rounds of a 256-bin histogram of the
 * candidates (atomic counts, so the result does not depend on thread timing) and a scan to find
 * the bin holding the k-th. Then every value above it is kept, plus the first `need` values equal
 * to it in feature order. Each thread owns a contiguous run of features, so a prefix sum over
 * threads gives both the tie order and each kept pair's output slot. The cost does not depend on k.
 *
 * The kernel also marks each kept (row, feature) in a bitmask, 64 rows per word pair, from which
 * `feature_lists.ts` builds the per-feature lists the backward pass gathers over; the mask must
 * be zero beforehand.
 *
 * Bindings: 0 P `[rows, width]` (read), 1 indices `[rows, k]` u32, 2 values `[rows, k]` f32,
 * 3 mask `[⌈rows/64⌉, width, 2]` u32, 4 {@link ROWS_STRUCT} uniform. Work unit: rows.
 *
 * @module
 */
import { compileKernel, type Kernel, ROWS_STRUCT } from "../device.ts";

/**
 * Compiles the selection for one width and k.
 *
 * @param device The device.
 * @param width Features per row.
 * @param k Features kept per row, 1 ≤ k ≤ width.
 * @returns The kernel (work unit: rows).
 * @throws {RangeError} If k is out of range.
 */
export function topkSelectKernel(device: GPUDevice, width: number, k: number): Promise<Kernel> {
  if (!(Number.isInteger(k) && k >= 1 && k <= width)) {
    throw new RangeError(`Cannot select top ${k} of ${width} features: need 1 ≤ k ≤ width`);
  }
  // Wider rows get more threads so that each holds few values in registers.
  const wg = width <= 4096 ? 64 : 256;
  const code = /* wgsl */ `
const W = ${width}u;
const K = ${k}u;
const WG = ${wg}u;
const C = ${Math.ceil(width / wg)}u;
const BINS_PER_THREAD = ${256 / wg}u;
${ROWS_STRUCT}
@group(0) @binding(0) var<storage, read> pre: array<f32>;
@group(0) @binding(1) var<storage, read_write> idx: array<u32>;
@group(0) @binding(2) var<storage, read_write> val: array<f32>;
@group(0) @binding(3) var<storage, read_write> mask: array<atomic<u32>>;
@group(0) @binding(4) var<uniform> rows: Rows;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> sums: array<u32, WG>;
var<workgroup> found: vec2u;

// Inclusive prefix sum of v over the threads, in thread order (Hillis–Steele).
fn inclusiveScan(t: u32, v: u32) -> u32 {
  sums[t] = v;
  workgroupBarrier();
  for (var off = 1u; off < WG; off <<= 1u) {
    var add = 0u;
    if (t >= off) { add = sums[t - off]; }
    workgroupBarrier();
    sums[t] += add;
    workgroupBarrier();
  }
  return sums[t];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u) {
  let row = wg.y * nwg.x + wg.x;
  if (row >= rows.count) { return; }
  let t = lid.x;
  let first = t * C;
  // ReLU'd values as ordered keys; everything ≤ 0 (−0 included) is key 0.
  var keys: array<u32, C>;
  for (var i = 0u; i < C; i++) {
    var key = 0u;
    if (first + i < W) {
      let v = pre[row * W + first + i];
      if (v > 0.0) { key = bitcast<u32>(v); }
    }
    keys[i] = key;
  }
  // After round r the top 8(r + 1) bits of the k-th largest key are known (prefix, under
  // decided); need = how many of the keys sharing that prefix still belong to the top k.
  var prefix = 0u;
  var decided = 0u;
  var need = K;
  for (var round = 0u; round < 4u; round++) {
    let shift = 24u - 8u * round;
    for (var b = t; b < 256u; b += WG) { atomicStore(&hist[b], 0u); }
    workgroupBarrier();
    for (var i = 0u; i < C; i++) {
      if (first + i < W && (keys[i] & decided) == prefix) {
        atomicAdd(&hist[(keys[i] >> shift) & 255u], 1u);
      }
    }
    workgroupBarrier();
    // Thread t covers bins 255 − t·B … downwards, so the scan counts keys from the top.
    var mine = 0u;
    for (var q = 0u; q < BINS_PER_THREAD; q++) {
      mine += atomicLoad(&hist[255u - t * BINS_PER_THREAD - q]);
    }
    let upTo = inclusiveScan(t, mine);
    var seen = upTo - mine;
    if (seen < need && need <= upTo) {
      for (var q = 0u; q < BINS_PER_THREAD; q++) {
        let b = 255u - t * BINS_PER_THREAD - q;
        let h = atomicLoad(&hist[b]);
        if (seen + h >= need) {
          found = vec2u(b, need - seen);
          break;
        }
        seen += h;
      }
    }
    workgroupBarrier();
    let f = found;
    prefix |= f.x << shift;
    decided |= 255u << shift;
    need = f.y;
  }
  // Keep keys above the k-th, and the first need keys equal to it in feature order.
  var above = 0u;
  var equal = 0u;
  for (var i = 0u; i < C; i++) {
    if (first + i < W) {
      if (keys[i] > prefix) { above++; } else if (keys[i] == prefix) { equal++; }
    }
  }
  let equalBefore = inclusiveScan(t, equal) - equal;
  var take = 0u;
  if (need > equalBefore) { take = min(need - equalBefore, equal); }
  let kept = above + take;
  var slot = row * K + inclusiveScan(t, kept) - kept;
  let word = (row / 64u) * W * 2u + (row % 64u) / 32u;
  let bit = 1u << (row % 32u);
  for (var i = 0u; i < C; i++) {
    let j = first + i;
    var keep = j < W && keys[i] > prefix;
    if (j < W && keys[i] == prefix && take > 0u) {
      keep = true;
      take--;
    }
    if (keep) {
      idx[slot] = j;
      val[slot] = bitcast<f32>(keys[i]);
      atomicOr(&mask[word + j * 2u], bit);
      slot++;
    }
  }
}`;
  return compileKernel(device, `topk select ${width}/${k}`, code);
}

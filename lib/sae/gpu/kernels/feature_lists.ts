/**
 * Per-feature lists of the kept pairs (a CSR transpose of the TopK result), so that the weight
 * gradients can be gathered feature by feature instead of scattered with float atomics (which
 * WGSL lacks, and which would make the sums depend on timing).
 *
 * From the selection's bitmask (bit r % 64 of word pair (⌊r/64⌋, feature) set when row r kept the
 * feature), three passes:
 *
 * 1. `count`, one thread per feature: popcounts over the 64-row chunks give each chunk's offset
 *    within the feature's list and the feature's total;
 * 2. `scan`, one workgroup: the exclusive prefix sum of the totals gives each list's start;
 * 3. `fill`, one thread per kept pair: its slot is start + chunk offset + the set bits below its
 *    row in the chunk's word pair.
 *
 * Every slot is thus fixed by the data alone, and each list is in row order: the same lists on
 * every run. A list entry is the pair's flat index n · k + s.
 *
 * Bindings — count: 0 mask (read), 1 chunk offsets `[⌈rows/64⌉, width]`, 2 totals `[width]`,
 * 3 {@link ROWS_STRUCT} uniform (work unit: features); scan: 0 totals (read), 1 starts
 * `[width + 1]` (one workgroup); fill: 0 indices `[rows, k]`, 1 mask, 2 chunk offsets, 3 starts
 * (all read), 4 lists `[rows · k]`, 5 uniform (work unit: kept pairs).
 *
 * @module
 */
import { compileKernel, type Kernel, ROWS_STRUCT } from "../device.ts";

/** The three passes that build the lists. */
export interface FeatureListKernels {
  /** Chunk offsets and totals per feature. */
  count: Kernel;
  /** List starts (dispatch one unit). */
  scan: Kernel;
  /** Each kept pair into its slot. */
  fill: Kernel;
}

/**
 * Compiles the list-building passes for one width and k.
 *
 * @param device The device.
 * @param width Features.
 * @param k Pairs kept per row.
 * @returns The kernels.
 */
export async function featureListKernels(
  device: GPUDevice,
  width: number,
  k: number,
): Promise<FeatureListKernels> {
  const head = `const W = ${width}u;\nconst K = ${k}u;\n${ROWS_STRUCT}\n`;
  const flat = "let i = (wg.y * nwg.x + wg.x) * 256u + lid.x;";
  const args = `@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u,
        @builtin(local_invocation_id) lid: vec3u`;
  const count = /* wgsl */ `${head}
@group(0) @binding(0) var<storage, read> mask: array<u32>;
@group(0) @binding(1) var<storage, read_write> offsets: array<u32>;
@group(0) @binding(2) var<storage, read_write> totals: array<u32>;
@group(0) @binding(3) var<uniform> rows: Rows;

@compute @workgroup_size(256)
fn main(${args}) {
  ${flat}
  if (i >= W) { return; }
  var run = 0u;
  for (var c = 0u; c < (rows.count + 63u) / 64u; c++) {
    offsets[c * W + i] = run;
    run += countOneBits(mask[(c * W + i) * 2u]) + countOneBits(mask[(c * W + i) * 2u + 1u]);
  }
  totals[i] = run;
}`;
  const scan = /* wgsl */ `${head}
const PER = ${Math.ceil(width / 256)}u;
@group(0) @binding(0) var<storage, read> totals: array<u32>;
@group(0) @binding(1) var<storage, read_write> starts: array<u32>;
var<workgroup> sums: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3u) {
  let t = lid.x;
  let first = t * PER;
  let last = min(first + PER, W);
  var mine = 0u;
  for (var j = first; j < last; j++) { mine += totals[j]; }
  sums[t] = mine;
  workgroupBarrier();
  for (var off = 1u; off < 256u; off <<= 1u) {
    var add = 0u;
    if (t >= off) { add = sums[t - off]; }
    workgroupBarrier();
    sums[t] += add;
    workgroupBarrier();
  }
  var run = sums[t] - mine;
  for (var j = first; j < last; j++) {
    starts[j] = run;
    run += totals[j];
  }
  if (t == 255u) { starts[W] = sums[255]; }
}`;
  const fill = /* wgsl */ `${head}
@group(0) @binding(0) var<storage, read> idx: array<u32>;
@group(0) @binding(1) var<storage, read> mask: array<u32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read> starts: array<u32>;
@group(0) @binding(4) var<storage, read_write> lists: array<u32>;
@group(0) @binding(5) var<uniform> rows: Rows;

@compute @workgroup_size(256)
fn main(${args}) {
  ${flat}
  if (i >= rows.count * K) { return; }
  let r = i / K;
  let j = idx[i];
  let c = r / 64u;
  let word = (c * W + j) * 2u;
  let high = (r % 64u) / 32u;
  var rank = countOneBits(mask[word + high] & ((1u << (r % 32u)) - 1u));
  if (high == 1u) { rank += countOneBits(mask[word]); }
  lists[starts[j] + offsets[c * W + j] + rank] = i;
}`;
  const per256 = (n: number) => Math.ceil(n / 256);
  return {
    count: await compileKernel(device, `feature list count ${width}`, count, per256),
    scan: await compileKernel(device, `feature list scan ${width}`, scan, () => 1),
    fill: await compileKernel(device, `feature list fill ${width}/${k}`, fill, per256),
  };
}

import assert from "node:assert/strict";
import { createRng } from "../../../util/rng.ts";
import { rowsUniform, storageBuffer, uniformBuffer } from "../device.ts";
import { gpuTest, readU32, runKernel, upload } from "../testdata/harness.ts";
import { featureListKernels } from "./feature_lists.ts";

/** k distinct random features per row, ascending, feature 0 in every row (a dense feature). */
function keptPairs(rows: number, width: number, k: number, seed: number): Uint32Array {
  const rng = createRng(seed);
  const idx = new Uint32Array(rows * k);
  for (let r = 0; r < rows; r++) {
    const set = new Set([0]);
    while (set.size < k) set.add(rng.int(width));
    idx.set([...set].sort((a, b) => a - b), r * k);
  }
  return idx;
}

for (const [rows, width, k] of [[130, 300, 4], [64, 1000, 16], [5, 3, 3]] as const) {
  gpuTest(
    `feature list kernels give each feature its pairs in row order (${rows} rows, ${width} features, k ${k})`,
    async (g) => {
      const idx = keptPairs(rows, width, k, rows);
      const chunks = Math.ceil(rows / 64);
      const mask = new Uint32Array(chunks * width * 2);
      for (let e = 0; e < rows * k; e++) {
        const r = Math.floor(e / k);
        mask[(Math.floor(r / 64) * width + idx[e]!) * 2 + Math.floor((r % 64) / 32)]! |= 1 <<
          r % 32;
      }
      const kernels = await featureListKernels(g.device, width, k);
      const uniform = uniformBuffer(g.device, "rows", rowsUniform(0, rows, 0));
      const [idxBuf, maskBuf] = [upload(g, idx), upload(g, mask)];
      const offsets = storageBuffer(g.device, "offsets", chunks * width * 4);
      const totals = storageBuffer(g.device, "totals", width * 4);
      const starts = storageBuffer(g.device, "starts", (width + 1) * 4);
      const lists = storageBuffer(g.device, "lists", rows * k * 4);
      await runKernel(g, kernels.count, [maskBuf, offsets, totals, uniform], width);
      await runKernel(g, kernels.scan, [totals, starts], 1);
      await runKernel(
        g,
        kernels.fill,
        [idxBuf, maskBuf, offsets, starts, lists, uniform],
        rows * k,
      );
      const want: number[][] = Array.from({ length: width }, () => []);
      for (let e = 0; e < rows * k; e++) want[idx[e]!]!.push(e);
      const wantStarts = [0];
      for (const l of want) wantStarts.push(wantStarts.at(-1)! + l.length);
      assert.deepEqual([...await readU32(g, starts, width + 1)], wantStarts);
      assert.deepEqual([...await readU32(g, lists, rows * k)], want.flat());
    },
  );
}

import assert from "node:assert/strict";
import {
  compileKernel,
  f32Literal,
  MAX_GROUPS,
  readBuffer,
  SOFTWARE_ADAPTER,
  spreadGroups,
  storageBuffer,
} from "./device.ts";
import { gpuTest, readU32, runKernel } from "./testdata/harness.ts";

Deno.test("f32Literal() writes the f32 value WGSL reads back exactly", () => {
  assert.equal(f32Literal(2), "2.00000000f");
  // Nine significant digits round-trip any f32, once read as an f32.
  const read = (literal: string) => Math.fround(Number(literal.slice(0, -1)));
  assert.equal(read(f32Literal(1 / 3)), Math.fround(1 / 3));
  assert.equal(read(f32Literal(-1.5e-9)), Math.fround(-1.5e-9));
  assert.throws(() => f32Literal(NaN), RangeError);
});

Deno.test("spreadGroups() keeps one dimension within WebGPU's limit", () => {
  assert.deepEqual(spreadGroups(0), [1, 1]);
  assert.deepEqual(spreadGroups(MAX_GROUPS), [MAX_GROUPS, 1]);
  assert.deepEqual(spreadGroups(MAX_GROUPS + 1), [MAX_GROUPS, 2]);
});

Deno.test("SOFTWARE_ADAPTER knows the CPU renderers", () => {
  assert.ok(SOFTWARE_ADAPTER.test("llvmpipe (LLVM 15.0.6, 256 bits)"));
  assert.ok(!SOFTWARE_ADAPTER.test("NVIDIA H200"));
});

gpuTest("a kernel spread over two grid dimensions reaches every unit exactly once", async (g) => {
  const count = MAX_GROUPS + 3;
  const kernel = await compileKernel(
    g.device,
    "count units",
    `@group(0) @binding(0) var<storage, read_write> hits: array<u32>;
@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = wg.y * nwg.x + wg.x;
  if (i < ${count}u) { hits[i] += 1u; }
}`,
  );
  const hits = storageBuffer(g.device, "hits", count * 4);
  await runKernel(g, kernel, [hits], count);
  assert.ok((await readU32(g, hits, count)).every((h) => h === 1));
  assert.equal(new Uint32Array(await readBuffer(g.device, hits, 8)).length, 2);
});

gpuTest("compileKernel() reports WGSL errors with the kernel's name", async (g) => {
  await assert.rejects(
    compileKernel(g.device, "broken", "fn main( {"),
    /Cannot compile WGSL kernel "broken"/,
  );
});

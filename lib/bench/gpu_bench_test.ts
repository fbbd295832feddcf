import assert from "node:assert/strict";
import { gpuRows, type GpuTiming } from "./gpu_bench.ts";

Deno.test("gpuRows() sets each timing against the PyTorch CUDA peer, training runs against none", () => {
  const timings: GpuTiming[] = [
    { name: "sae_topk_step", config: "engine", ms: 0.5, detail: "engine" },
    { name: "sae_topk_step", config: "stock-webgpu", ms: 227, detail: "tfjs" },
    { name: "gpt_train_step", config: "stock-webgpu", ms: 40, detail: "tfjs" },
    { name: "sae_train_run mlp", config: "runs", ms: 60_000, detail: "run" },
  ];
  const peer = new Map([["sae_topk_step", 1.65], ["gpt_train_step", 8]]);
  assert.deepEqual(gpuRows(timings, peer).map((r) => [r.name, r.ours_ms, r.peer_ms, r.ratio]), [
    ["sae_topk_step", 0.5, 1.65, 3.3],
    ["sae_topk_step (stock tfjs webgpu)", 227, 1.65, 0.007],
    ["gpt_train_step (stock tfjs webgpu)", 40, 8, 0.2],
    ["sae_train_run mlp", 60_000, null, null],
  ]);
  assert.deepEqual(gpuRows(timings.slice(0, 1), new Map())[0]!.peer_ms, null);
});

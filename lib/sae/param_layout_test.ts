import assert from "node:assert/strict";
import { buildSaes, type SaeConfig } from "./architectures.ts";
import { layoutPosition } from "./positions.ts";
import { layoutParams } from "./param_layout.ts";

Deno.test("layoutParams() aligns every parameter and puts decaying ones first", () => {
  const config: SaeConfig = { arch: "topk", features: 10, k: 2, jsaeLambda: 0 };
  const saes = buildSaes(config, layoutPosition("mlp", 1), 6, 0);
  const layout = layoutParams(saes, config, (_, shape) => shape.length === 2);
  assert.deepEqual(
    layout.slots.map((s) => [s.name.split("/")[1], s.offset, s.size]),
    [
      ["W_enc", 0, 60],
      ["W_dec", 64, 60],
      ["W_enc", 128, 60],
      ["W_dec", 192, 60],
      ["b_enc", 256, 10],
      ["b_dec", 320, 6],
      ["b_enc", 384, 10],
      ["b_dec", 448, 6],
    ],
  );
  assert.equal(layout.decayEnd, 256);
  assert.equal(layout.length, 512);
  const [up] = layout.saes;
  assert.deepEqual(
    { ...up },
    {
      hook: "blocks.0.hook_mlp_in",
      d: 6,
      width: 10,
      k: 2,
      ld: 10,
      wEnc: 0,
      bEnc: 256,
      wDec: 64,
      bDec: 320,
      trainFrom: 0,
    },
  );
  saes.dispose();
});

Deno.test("layoutParams() gives Staircase SAEs prefixes of their chain, detached ones train their own chunk", () => {
  for (const arch of ["staircase", "staircase-detached"] as const) {
    const config: SaeConfig = { arch, features: 8, k: 2, jsaeLambda: 0 };
    const saes = buildSaes(config, layoutPosition("mlp-block", 2), 4, 0);
    const layout = layoutParams(saes, config);
    const chain1 = layout.slots.find((s) => s.name === "chain1/W_enc")!.offset;
    assert.deepEqual(
      layout.saes.map((s) => [s.width, s.ld, s.trainFrom, s.wEnc === chain1]),
      [[8, 16, 0, false], [16, 16, arch === "staircase" ? 0 : 8, false], [8, 16, 0, true], [
        16,
        16,
        arch === "staircase" ? 0 : 8,
        true,
      ]],
    );
    saes.dispose();
  }
});

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import {
  buildCharts,
  findPngConverter,
  loadChartData,
  type PngConverter,
  renderSvg,
  writePlots,
} from "./charts.ts";
import { openStore, type Store } from "./db.ts";
import { storeRun } from "./write.ts";
import { fakeResult, fakeRun, tempDb } from "./testdata/fixtures.ts";

const LAYERS = 2;
const EDGES = [1, 16, 256, 4096, 65536, 2 ** 18];

/**
 * A curve per seed: KL falls from `start` as edges are kept; seeds differ by a factor, so that the
 * band has width.
 */
function klAt(i: number, start: number, seed: number): number {
  return start * (1 + 0.1 * seed) / (1 + i * i);
}

/**
 * 3 seeds each of topk, staircase and two JSAE λ, at `mlp` over 2 layers; one extra failed run
 * (no results), which must not draw anything.
 */
async function seedStore(store: Store, experiment = "demo"): Promise<void> {
  const cells: { arch: string; varied: Record<string, number>; start: number; relative: number }[] =
    [
      { arch: "topk", varied: {}, start: 4, relative: 12 },
      { arch: "staircase", varied: {}, start: 2, relative: 5 },
      { arch: "jsae", varied: { "sae.jsae.lambda": 0.001 }, start: 3, relative: 8 },
      { arch: "jsae", varied: { "sae.jsae.lambda": 0.01 }, start: 2.5, relative: 7 },
    ];
  for (const c of cells) {
    for (let seed = 0; seed < 3; seed++) {
      const result = fakeResult({
        layers: Array.from({ length: LAYERS }, (_, l) => ({
          absolute: 1000 * (c.relative + l + seed),
          relative: c.relative + l + seed,
        })),
      });
      for (const pair of result.pairs) {
        pair.curve = EDGES.map((n, i) => {
          const kl = klAt(i, c.start + pair.layer, seed);
          return {
            n,
            klModel: kl,
            klModelLow: kl * 0.9,
            klModelHigh: kl * 1.1,
            klFull: kl / 2,
            klFullLow: kl / 2,
            klFullHigh: kl / 2,
          };
        });
      }
      const lambda = c.varied["sae.jsae.lambda"];
      await storeRun(
        store,
        fakeRun({
          id: `${experiment}-${c.arch}-${lambda ?? ""}-${seed}`,
          experiment,
          seed,
          config: { position: "mlp", sae: { arch: c.arch } },
          varied: { "sae.arch": c.arch, ...c.varied, seed },
        }),
        result,
      );
    }
  }
  await storeRun(
    store,
    fakeRun({
      id: `${experiment}-topk-failed`,
      experiment,
      seed: 3,
      config: { position: "mlp", sae: { arch: "topk" } },
      varied: { "sae.arch": "topk", seed: 3 },
    }),
    { error: "boom" },
  );
}

const quiet = () => {};

Deno.test("buildCharts() makes a curve chart per layer (seed mean and min–max band), SCALAR and SAE metric bars", async () => {
  const store = await openStore(":memory:");
  try {
    await seedStore(store);
    const charts = buildCharts(await loadChartData(store, { experiment: "demo" }));
    deepEqual(charts.map((c) => c.name), [
      "demo-mlp-curves-layer0",
      "demo-mlp-curves-layer1",
      "demo-mlp-scalar",
      "demo-mlp-sae-metrics",
    ]);
    const values = (charts[0]!.spec as { data: { values: Record<string, unknown>[] } }).data.values;
    // TopK at layer 0 starts at 4 · (1 + 0.1 seed) over seeds 0, 1, 2: mean 4.4, band 4 – 4.8.
    const first = values.find((v) => v.series === "topk" && v.n === 1)!;
    // The failed fourth TopK run flags the cell, as the report does.
    equal(first.seeds, "n=3/4 ⚠");
    ok(Math.abs((first.mean as number) - 4.4) < 1e-12);
    ok(
      Math.abs((first.low as number) - 4) < 1e-12 && Math.abs((first.high as number) - 4.8) < 1e-12,
    );
    // Four cells × six edge counts; the failed run draws nothing.
    equal(values.length, 24);
    deepEqual([...new Set(values.map((v) => v.series))].sort(), [
      "jsae λ=0.001",
      "jsae λ=0.01",
      "staircase",
      "topk",
    ]);
    const bars = (charts[2]!.spec as { data: { values: Record<string, unknown>[] } }).data.values;
    // Relative SCALAR of staircase at layer 1: 5 + 1 + seed over seeds 0–2 = 7 ± 1.
    const s = bars.find((v) =>
      v.series === "staircase" && v.layer === 1 && v.measure === "relative SCALAR"
    )!;
    deepEqual([s.mean, s.low, s.high], [7, 6, 8]);
    // Where it shows both SCALARs, the caption states the identity between them.
    const { subtitle } = (charts[2]!.spec as { title: { subtitle: string[] } }).title;
    ok(subtitle.join(" ").includes("relative = absolute × 2^18 / E_tot"), String(subtitle));
  } finally {
    store.close();
  }
});

Deno.test("renderSvg() draws a curve chart headlessly: one line per cell and the log₂ axis title", async () => {
  const store = await openStore(":memory:");
  try {
    await seedStore(store);
    const charts = buildCharts(await loadChartData(store, { experiment: "demo", curve: "full" }));
    const svg = await renderSvg(charts[0]!.spec);
    match(svg, /^<svg /);
    ok(svg.includes("KL(full circuit ‖ ablated), nats"));
    ok(svg.includes("edges kept (log₂ axis)"));
    equal(svg.match(/class="mark-line role-mark/g)?.length, 4);
    for (const label of ["topk", "staircase", "jsae λ=0.001", "jsae λ=0.01"]) {
      ok(svg.includes(`>${label}<`), label);
    }
  } finally {
    store.close();
  }
});

Deno.test("writePlots() reports an unknown experiment and keeps SVGs when PNG fails", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    await seedStore(store);
    await rejects(
      writePlots(store, { experiment: "nope", outDir: `${db.dir}/x`, log: quiet }),
      /Cannot report experiment "nope"/,
    );
    const failing: PngConverter = { name: "false", command: "false", args: () => [] };
    const notices: string[] = [];
    const files = await writePlots(store, {
      experiment: "demo",
      outDir: `${db.dir}/p`,
      converter: failing,
      log: (l) => notices.push(l),
    });
    equal(files.length, 4);
    ok(files.every((f) => f.endsWith(".svg")));
    equal(notices.length, 1);
    ok(/^Cannot convert .*demo-mlp-curves-layer0\.svg to PNG: false exited/.test(notices[0]!));
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("findPngConverter() finds nothing on an empty PATH and skips a convert that is not ImageMagick", async () => {
  equal(await findPngConverter(""), null);
  const dir = await Deno.makeTempDir({ prefix: "scalar-path-" });
  try {
    await Deno.writeTextFile(`${dir}/convert`, "#!/bin/sh\necho 'not that convert' >&2\nexit 1\n");
    await Deno.chmod(`${dir}/convert`, 0o755);
    equal(await findPngConverter(dir), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const converter = await findPngConverter();

Deno.test({
  name: "writePlots() writes a PNG beside each SVG when a converter is on PATH",
  ignore: converter === null,
  async fn() {
    const db = await tempDb();
    const store = await openStore(db.path);
    try {
      await seedStore(store);
      const files = await writePlots(store, {
        experiment: "demo",
        outDir: `${db.dir}/plots`,
        converter,
        log: quiet,
      });
      equal(files.length, 8);
      for (const png of files.filter((f) => f.endsWith(".png"))) {
        const head = (await Deno.readFile(png)).slice(0, 8);
        deepEqual([...head], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      }
    } finally {
      store.close();
      await db.cleanup();
    }
  },
});

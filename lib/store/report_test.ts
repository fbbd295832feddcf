import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { openStore, type Store, StoreError } from "./db.ts";
import {
  buildReport,
  formatMeanStd,
  formatNumber,
  formatPercent,
  formatReport,
  formatSeedCount,
  loadReport,
  report,
  type ReportData,
  type ReportFormat,
  type ReportRun,
  summarize,
} from "./report.ts";
import { storeRun } from "./write.ts";
import { fakeResult, fakeRun, mlpHooks } from "./testdata/fixtures.ts";

Deno.test("summarize() gives the mean and the sample std; one value has no std", () => {
  deepEqual(summarize([10, 12, 14]), { mean: 12, std: 2, n: 3 });
  deepEqual(summarize([4]), { mean: 4, std: null, n: 1 });
  equal(summarize([]), null);
  ok(Number.isNaN(summarize([1, NaN])!.mean));
  // Equal values: exactly that mean, std 0 (no rounding noise).
  deepEqual(summarize([0.1, 0.1, 0.1]), { mean: 0.1, std: 0, n: 3 });
});

Deno.test("formatNumber(), formatMeanStd(), formatSeedCount(), formatPercent() print cells", () => {
  deepEqual(
    [12, 2, 0.5, 0.0123456, 1234.4, 24000, 0.0001234, 0, -3.5, NaN, Infinity].map(formatNumber),
    ["12.0", "2.00", "0.500", "0.0123", "1234", "2.40e4", "1.23e-4", "0", "-3.50", "NaN", "∞"],
  );
  equal(formatMeanStd({ mean: 12, std: 2, n: 3 }), "12.0 ± 2.00");
  equal(formatMeanStd({ mean: 5, std: null, n: 1 }), "5.00 ±—");
  equal(formatMeanStd({ mean: 12000, std: 2000, n: 3 }), "1.20e4 ± 2.00e3");
  equal(formatSeedCount(3, 5), "n=3/5 ⚠");
  equal(formatSeedCount(3, 3), "n=3");
  equal(formatPercent(58.3333), "58.33%");
  equal(formatPercent(58.3333, true), "58.33% ⚠");
  equal(formatPercent(null), "—");
});

/**
 * The seeded database: 3 seeds × {topk, staircase} at `mlp`, 2 layers.
 * Relative SCALAR (absolute = 1000 × relative):
 *   topk      layer 0: 10, 12, 14 → 12 ± 2   layer 1: 20, 22, 24 → 22 ± 2   Σ: 30, 34, 38 → 34 ± 4
 *   staircase layer 0:  4,  5,  6 →  5 ± 1   layer 1:  8, 10, 12 → 10 ± 2   Σ: 12, 15, 18 → 15 ± 3
 * Improvement from the seed means: layer 0 (12 − 5)/12 = 58.33%, layer 1 (22 − 10)/22 = 54.55%,
 * Σ (34 − 15)/34 = 55.88%.
 * Metrics of blocks.0.hook_mlp_in: topk mse 1, 2, 3 → 2.00 ± 1.00, l0 8, 10, 12 → 10.0 ± 2.00;
 * staircase mse 0.5 each → 0.500 ± 0, fvu 0.25, 0.5, 0.75 → 0.500 ± 0.250.
 */
const SEEDED = {
  topk: {
    l0: [10, 12, 14],
    l1: [20, 22, 24],
    mse: [1, 2, 3],
    l0s: [8, 10, 12],
    fvu: [0.1, 0.1, 0.1],
  },
  staircase: {
    l0: [4, 5, 6],
    l1: [8, 10, 12],
    mse: [0.5, 0.5, 0.5],
    l0s: [9, 9, 9],
    fvu: [0.25, 0.5, 0.75],
  },
} as const;

async function seed(store: Store, experiment = "demo"): Promise<void> {
  for (const arch of ["topk", "staircase"] as const) {
    const v = SEEDED[arch];
    for (let s = 0; s < 3; s++) {
      await storeRun(
        store,
        fakeRun({
          id: `${experiment}-${arch}-${s}`,
          experiment,
          seed: s,
          config: { position: "mlp", sae: { arch } },
          varied: { "sae.arch": arch, seed: s },
        }),
        fakeResult({
          layers: [v.l0[s]!, v.l1[s]!].map((r) => ({ absolute: 1000 * r, relative: r })),
          saes: {
            [mlpHooks(0)[0]]: {
              mse: v.mse[s]!,
              l0: v.l0s[s]!,
              fvu: v.fvu[s]!,
              ce_loss_increase: 0.1,
            },
          },
        }),
      );
    }
  }
}

/** The markdown table row that starts with `| first |`, split into its cells. */
function mdRows(md: string, section: string): string[][] {
  const start = md.indexOf(section);
  ok(start >= 0, `no section "${section}"`);
  const lines = md.slice(start).split("\n").slice(1);
  const table = lines.slice(lines.findIndex((l) => l.startsWith("|")));
  return table.slice(0, table.findIndex((l) => !l.startsWith("|")) >>> 0)
    .map((l) => l.slice(2, -2).split(" | "));
}

Deno.test("report() prints hand-computed mean ± std and improvement over TopK (md)", async () => {
  const store = await openStore(":memory:");
  try {
    await seed(store);
    const md = await report(store, { experiment: "demo" });
    deepEqual(mdRows(md, "### SCALAR, absolute and relative"), [
      ["arch", "seeds", "SCALAR", "layer 0", "layer 1", "Σ layers"],
      ["---", "---", "---", "--:", "--:", "--:"],
      ["topk", "n=3", "absolute", "1.20e4 ± 2.00e3", "2.20e4 ± 2.00e3", "3.40e4 ± 4.00e3"],
      ["topk", "n=3", "relative", "12.0 ± 2.00", "22.0 ± 2.00", "34.0 ± 4.00"],
      ["staircase", "n=3", "absolute", "5000 ± 1000", "1.00e4 ± 2.00e3", "1.50e4 ± 3.00e3"],
      ["staircase", "n=3", "relative", "5.00 ± 1.00", "10.0 ± 2.00", "15.0 ± 3.00"],
    ]);
    // absolute = 1000 × relative in both cells, so both improvements agree.
    deepEqual(mdRows(md, "### Improvement over TopK").slice(2), [
      ["topk", "n=3", "both", "baseline", "baseline", "baseline"],
      ["staircase", "n=3", "relative", "58.33%", "54.55%", "55.88%"],
      ["staircase", "n=3", "absolute", "58.33%", "54.55%", "55.88%"],
    ]);
    // Paired by seed: layer 0 4/10, 5/12, 6/14; layer 1 8/20, 10/22, 12/24; Σ 12/30, 15/34, 18/38.
    deepEqual(mdRows(md, "### Absolute SCALAR ratio").slice(2), [
      ["staircase", "3", "0.415 ± 0.0144", "0.452 ± 0.0501", "0.438 ± 0.0369"],
    ]);
    const metrics = mdRows(md, "### SAE metrics");
    deepEqual(metrics[0], ["arch", "sae", "seeds", "mse", "fvu", "l0", "ce_loss_increase"]);
    deepEqual(metrics.find((r) => r[0] === "topk" && r[1] === mlpHooks(0)[0]), [
      "topk",
      mlpHooks(0)[0],
      "n=3",
      "2.00 ± 1.00",
      "0.100 ± 0",
      "10.0 ± 2.00",
      "0.100 ± 0",
    ]);
    deepEqual(metrics.find((r) => r[0] === "staircase" && r[1] === mlpHooks(0)[0]), [
      "staircase",
      mlpHooks(0)[0],
      "n=3",
      "0.500 ± 0",
      "0.500 ± 0.250",
      "9.00 ± 0",
      "0.100 ± 0",
    ]);
    // Hooks in forward order, each architecture's four SAEs.
    deepEqual(metrics.slice(2, 6).map((r) => r[1]), [...mlpHooks(0), ...mlpHooks(1)]);
    ok(md.split("\n").every((line) => !line.startsWith("|") || !line.includes("⚠")));
  } finally {
    store.close();
  }
});

Deno.test("report() flags cells with fewer finished seeds than expected", async () => {
  const store = await openStore(":memory:");
  try {
    await seed(store);
    // Expected 5: every cell has 3 of 5.
    let md = await report(store, { experiment: "demo", expectedSeeds: 5 });
    deepEqual(
      mdRows(md, "### SCALAR, absolute and relative").slice(2).map((r) => r[1]),
      new Array(4).fill("n=3/5 ⚠"),
    );
    deepEqual(mdRows(md, "### Improvement over TopK").slice(2)[1], [
      "staircase",
      "n=3/5 ⚠",
      "relative",
      "58.33% ⚠",
      "54.55% ⚠",
      "55.88% ⚠",
    ]);

    // By default a failed run counts as expected: staircase seed 2 fails → 2 of 3, averaged over
    // the two that finished, and flagged.
    await storeRun(
      store,
      fakeRun({
        id: "demo-staircase-2",
        seed: 2,
        config: { position: "mlp", sae: { arch: "staircase" } },
        varied: { "sae.arch": "staircase" },
      }),
      { error: "diverged" },
    );
    md = await report(store, { experiment: "demo" });
    deepEqual(
      mdRows(md, "### SCALAR, absolute and relative").slice(2).filter((r) => r[2] === "relative"),
      [
        ["topk", "n=3", "relative", "12.0 ± 2.00", "22.0 ± 2.00", "34.0 ± 4.00"],
        ["staircase", "n=2/3 ⚠", "relative", "4.50 ± 0.707", "9.00 ± 1.41", "13.5 ± 2.12"],
      ],
    );
    // (12 − 4.5)/12 = 62.50%, (22 − 9)/22 = 59.09%, (34 − 13.5)/34 = 60.29%.
    deepEqual(mdRows(md, "### Improvement over TopK").slice(2)[1], [
      "staircase",
      "n=2/3 ⚠",
      "relative",
      "62.50% ⚠",
      "59.09% ⚠",
      "60.29% ⚠",
    ]);

    // One seed left: ±—.
    const r = await loadReport(store, {
      experiment: "demo",
      expectedSeeds: (c) => (c.arch === "topk" ? 3 : 4),
    });
    const stair = r.positions[0]!.cells[1]!;
    equal(stair.expected, 4);
    equal(stair.failed, 1);
    deepEqual(stair.seeds, [0, 1]);
  } finally {
    store.close();
  }
});

Deno.test("report() of one seed prints ±—", async () => {
  const store = await openStore(":memory:");
  try {
    await storeRun(store, fakeRun(), fakeResult({ layers: [{ absolute: 5, relative: 5 }] }));
    const md = await report(store, { experiment: "demo" });
    deepEqual(mdRows(md, "### SCALAR, absolute and relative").slice(2), [
      ["topk", "n=1", "absolute", "5.00 ±—", "5.00 ±—"],
      ["topk", "n=1", "relative", "5.00 ±—", "5.00 ±—"],
    ]);
  } finally {
    store.close();
  }
});

function run(
  id: string,
  seed: number,
  arch: string,
  params: Record<string, string> = {},
): ReportRun {
  return {
    id,
    seed,
    status: "done",
    position: "block",
    arch,
    params: { "sae.arch": arch, ...params },
  };
}

Deno.test("buildReport() improvement over TopK: per layer, summed and in the paper's units (Tables 7/8 → Table 2)", () => {
  // FF block, relative SCALAR, one seed each (paper Tables 7/8).
  const topk = [10.8e4, 13.1e4, 2.43e5, 1.84e5], stair = [2.40e4, 6.65e4, 1.30e5, 1.01e5];
  const data: ReportData = {
    experiment: "paper",
    runs: [run("t", 0, "topk"), run("s", 0, "staircase")],
    scores: [
      ...topk.map((v, layer) => ({ runId: "t", layer, absolute: v, relative: v })),
      ...stair.map((v, layer) => ({ runId: "s", layer, absolute: v, relative: v })),
    ],
    metrics: [],
  };
  const r = buildReport(data);
  const i = r.positions[0]!.cells[1]!.improvement!;
  equal(i.baseline, "topk");
  deepEqual(i.relative.perLayer.map((l) => l.percent!.toFixed(2)), [
    "77.78",
    "49.24",
    "46.50",
    "45.11",
  ]);
  equal(i.relative.sum!.toFixed(2), "51.73"); // Σ stair / Σ topk, unit-consistent
  equal(i.relative.paperUnits!.toFixed(2), "59.67"); // the paper's printed aggregate
  const md = formatReport(r, "md");
  deepEqual(mdRows(md, "### Improvement over TopK").slice(2)[1], [
    "staircase",
    "n=1",
    "relative",
    "77.78%",
    "49.24%",
    "46.50%",
    "45.11%",
    "51.73%",
    "59.67%",
  ]);
});

Deno.test("buildReport() matches each cell to the TopK cell of the same other parameters", () => {
  const rel = (runId: string, v: number) => ({ runId, layer: 0, absolute: v, relative: v });
  const data: ReportData = {
    experiment: "sweep",
    runs: [
      run("t10", 0, "topk", { "sae.k": "10" }),
      run("t20", 0, "topk", { "sae.k": "20" }),
      run("j1", 0, "jsae", { "sae.k": "10", "sae.jsae.lambda": "0.001" }),
      run("j2", 0, "jsae", { "sae.k": "10", "sae.jsae.lambda": "0.01" }),
      run("s20", 0, "staircase", { "sae.k": "20" }),
      run("s30", 0, "staircase", { "sae.k": "30" }),
    ],
    scores: [
      rel("t10", 10),
      rel("t20", 20),
      rel("j1", 5),
      rel("j2", 2),
      rel("s20", 15),
      rel("s30", 1),
    ],
    metrics: [],
  };
  const cells = buildReport(data).positions[0]!.cells;
  deepEqual(
    cells.map((
      c,
    ) => [
      c.arch,
      c.label,
      c.improvement?.baseline ?? null,
      c.improvement?.relative.perLayer[0]?.percent ?? null,
    ]),
    [
      ["topk", "sae.k=10", null, null],
      ["topk", "sae.k=20", null, null],
      ["staircase", "sae.k=20", "topk (sae.k=20)", 25],
      ["staircase", "sae.k=30", null, null],
      ["jsae", "sae.jsae.lambda=0.001, sae.k=10", "topk (sae.k=10)", 50],
      ["jsae", "sae.jsae.lambda=0.01, sae.k=10", "topk (sae.k=10)", 80],
    ],
  );
  const md = formatReport(buildReport(data), "md");
  ok(md.includes("| arch | params | seeds | SCALAR | layer 0 | Σ layers |"));
  ok(md.includes("| staircase | sae.k=30 | n=1 | relative | — | — |"));
});

Deno.test("buildReport() compares a run restricted to some layers with the baseline of all", () => {
  // toy-mlp.yaml: one TopK run over layers 0–1, one JSAE run per layer at that layer's λ.
  const score = (runId: string, layer: number, v: number) => ({
    runId,
    layer,
    absolute: v,
    relative: v,
  });
  const data: ReportData = {
    experiment: "mlp",
    runs: [
      run("t", 0, "topk"),
      run("j0", 0, "jsae", { "sae.jsae.lambda": "0.0018", "model.layers": "[0]" }),
      run("j1", 0, "jsae", { "sae.jsae.lambda": "0.0012", "model.layers": "[1]" }),
    ],
    scores: [score("t", 0, 10), score("t", 1, 40), score("j0", 0, 5), score("j1", 1, 30)],
    metrics: [],
  };
  const cells = buildReport(data).positions[0]!.cells;
  const percent = (label: string, layer: number) =>
    cells.find((c) => c.label.includes(label))!.improvement!.relative.perLayer
      .find((l) => l.layer === layer)?.percent;
  // 1 − 5/10 at layer 0; 1 − 30/40 at layer 1; neither run has the other's layer.
  deepEqual([percent("0.0018", 0), percent("0.0012", 1)], [50, 25]);
  deepEqual([percent("0.0018", 1), percent("0.0012", 0)], [undefined, undefined]);
});

/**
 * A Staircase `mlp-block` pair has twice TopK's edges (512 × 1,024), so its relative SCALAR is half
 * its absolute. Two seeds, two layers, absolute SCALAR:
 *   topk      layer 0: 100, 200   layer 1: 400, 400
 *   staircase layer 0: 100, 100   layer 1: 200, 600   (relative: half of these)
 * Ratios paired by seed: layer 0 1, 0.5 → 0.75 ± 0.354; layer 1 0.5, 1.5 → 1.00 ± 0.707;
 * Σ 300/500 = 0.6, 700/600 = 7/6 → 0.883 ± 0.401.
 * From the seed means: layer 0 absolute 1 − 100/150 = 33.33 %, relative 1 − 50/150 = 66.67 %
 * (= 1 − abs(S) / (2 · abs(T))); layer 1 absolute 1 − 400/400 = 0 %, relative 50 %.
 * Diagnostics of the layer-0 pair: shared_chunk_fraction 0.6, 0.8 → 0.700 ± 0.141.
 */
async function seedStaircase(store: Store): Promise<void> {
  const abs = { topk: [[100, 400], [200, 400]], staircase: [[100, 200], [100, 600]] };
  for (const arch of ["topk", "staircase"] as const) {
    for (const s of [0, 1]) {
      const half = arch === "staircase" ? 2 : 1;
      const result = fakeResult({
        layers: abs[arch][s]!.map((a) => ({ absolute: a, relative: a / half })),
      });
      if (arch === "staircase") {
        result.pairs[0]!.diagnostics = {
          shared_chunk_fraction: [0.6, 0.8][s]!,
          diagonal_share_top512: 0.25,
        };
      }
      await storeRun(
        store,
        fakeRun({
          id: `st-${arch}-${s}`,
          experiment: "st",
          seed: s,
          config: { position: "mlp-block", sae: { arch } },
          varied: { "sae.arch": arch, seed: s },
        }),
        result,
      );
    }
  }
}

Deno.test("report() puts absolute beside relative: a Staircase pair with twice the edges, ratio paired by seed, diagnostics", async () => {
  const store = await openStore(":memory:");
  try {
    await seedStaircase(store);
    const md = await report(store, { experiment: "st" });
    deepEqual(mdRows(md, "### SCALAR, absolute and relative").slice(2), [
      ["topk", "n=2", "absolute", "150 ± 70.7", "400 ± 0", "550 ± 70.7"],
      ["topk", "n=2", "relative", "150 ± 70.7", "400 ± 0", "550 ± 70.7"],
      ["staircase", "n=2", "absolute", "100 ± 0", "400 ± 283", "500 ± 283"],
      ["staircase", "n=2", "relative", "50.0 ± 0", "200 ± 141", "250 ± 141"],
    ]);
    deepEqual(mdRows(md, "### Improvement over TopK").slice(3), [
      ["staircase", "n=2", "relative", "66.67%", "50.00%", "54.55%"],
      ["staircase", "n=2", "absolute", "33.33%", "0.00%", "9.09%"],
    ]);
    deepEqual(mdRows(md, "### Absolute SCALAR ratio").slice(2), [
      ["staircase", "2", "0.750 ± 0.354", "1.00 ± 0.707", "0.883 ± 0.401"],
    ]);
    deepEqual(mdRows(md, "### Staircase diagnostics"), [
      ["arch", "pair", "seeds", "shared_chunk_fraction", "diagonal_share_top512"],
      ["---", "---", "---", "--:", "--:"],
      ["topk", "—", "n=2", "—", "—"],
      ["staircase", `${mlpHooks(0).join("→")}`, "n=2", "0.700 ± 0.141", "0.250 ± 0"],
    ]);

    const csv = parseCsv(await report(store, { experiment: "st", format: "csv" }));
    const ratio = csv.filter((r) => r.table === "ratio");
    deepEqual(ratio.map((r) => [r.arch, r.layer, r.measure, r.n]), [
      ["staircase", "0", "absolute_ratio", "2"],
      ["staircase", "1", "absolute_ratio", "2"],
      ["staircase", "sum", "absolute_ratio", "2"],
    ]);
    const expected = [
      [0.75, Math.SQRT1_2 / 2],
      [1, Math.SQRT1_2],
      [(0.6 + 7 / 6) / 2, (7 / 6 - 0.6) / Math.SQRT2],
    ];
    ratio.forEach((r, i) => {
      ok(Math.abs(Number(r.mean) - expected[i]![0]!) < 1e-12, r.mean);
      ok(Math.abs(Number(r.std) - expected[i]![1]!) < 1e-12, r.std);
    });
    const diag = csv.find((r) =>
      r.table === "diagnostics" && r.measure === "shared_chunk_fraction"
    )!;
    deepEqual([diag.sae, Number(diag.mean)], [mlpHooks(0).join("→"), 0.7]);

    const json = JSON.parse(await report(store, { experiment: "st", format: "json" }));
    const stair = json.positions[0].cells[1];
    deepEqual(stair.improvement.absoluteRatio.seeds, [0, 1]);
    equal(stair.improvement.absoluteRatio.perLayer[0].mean, 0.75);
    equal(stair.improvement.relative.perLayer[0].percent, 100 * ((150 - 50) / 150));
    equal(stair.improvement.absolute.perLayer[0].percent, 100 * ((150 - 100) / 150));
    deepEqual(json.diagnosticNames, ["shared_chunk_fraction", "diagonal_share_top512"]);
  } finally {
    store.close();
  }
});

function parseCsv(text: string): Record<string, string>[] {
  const [header, ...lines] = text.trimEnd().split("\n").map((l) => {
    const fields: string[] = [];
    for (const m of l.matchAll(/("(?:[^"]|"")*"|[^,]*)(,|$)/g)) {
      fields.push(m[1]!.startsWith('"') ? m[1]!.slice(1, -1).replaceAll('""', '"') : m[1]!);
      if (m[2] === "") break;
    }
    return fields;
  });
  return lines.map((l) => Object.fromEntries(header!.map((h, i) => [h, l[i]!])));
}

Deno.test("report() as csv and json carries the same numbers", async () => {
  const store = await openStore(":memory:");
  try {
    await seed(store);
    const csv = parseCsv(
      await report(store, { experiment: "demo", format: "csv", expectedSeeds: 4 }),
    );
    const find = (o: Record<string, string>) =>
      csv.filter((r) => Object.entries(o).every(([k, v]) => r[k] === v));
    deepEqual(find({ arch: "topk", table: "scalar", layer: "sum", measure: "relative" }), [{
      position: "mlp",
      arch: "topk",
      params: "",
      table: "scalar",
      sae: "",
      layer: "sum",
      measure: "relative",
      mean: "34",
      std: "4",
      n: "3",
      expected: "4",
      flag: "incomplete",
    }]);
    equal(
      find({ arch: "staircase", table: "improvement", layer: "0", measure: "relative_percent" })[0]!
        .mean,
      String(100 * 7 / 12),
    );
    equal(
      find({ arch: "topk", table: "metrics", sae: mlpHooks(0)[0], measure: "mse" })[0]!.std,
      "1",
    );

    const json = JSON.parse(await report(store, { experiment: "demo", format: "json" }));
    const stair = json.positions[0].cells[1];
    equal(stair.arch, "staircase");
    deepEqual(stair.relative.perLayer[0], { layer: 0, mean: 5, std: 1, n: 3 });
    deepEqual(stair.relative.sum, { mean: 15, std: 3, n: 3 });
    equal(stair.improvement.relative.sum, 100 * 19 / 34);
  } finally {
    store.close();
  }
});

Deno.test("report() names the experiments it holds when asked for another; formatReport() rejects a bad format", async () => {
  const store = await openStore(":memory:");
  try {
    await rejects(
      report(store, { experiment: "demo" }),
      (e) =>
        e instanceof StoreError &&
        e.message ===
          `Cannot report experiment "demo": the results database ":memory:" holds no runs of it (it holds no runs)`,
    );
    await seed(store, "toy-mlp");
    await rejects(
      report(store, { experiment: "demo" }),
      (e) => e instanceof StoreError && /\(it holds "toy-mlp"\)$/.test(e.message),
    );
    const r = await loadReport(store, { experiment: "toy-mlp" });
    throws(
      () => formatReport(r, "xlsx" as ReportFormat),
      /Cannot format the report as "xlsx": the formats are md, csv and json/,
    );
  } finally {
    store.close();
  }
});

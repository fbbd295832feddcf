import { deepEqual, equal, ok, rejects, throws } from "node:assert/strict";
import { openStore, type Store } from "./db.ts";
import {
  buildPlots,
  CURVE_AXIS_EDGES,
  curveChartSvg,
  findPngConverter,
  linearScale,
  loadPlotData,
  log2Scale,
  niceTicks,
  type PngConverter,
  writePlots,
} from "./plots.ts";
import { storeRun } from "./write.ts";
import { fakeResult, fakeRun, tempDb } from "./testdata/fixtures.ts";

/**
 * A minimal well-formedness check of an XML document (Deno has no DOMParser): every `<` opens a
 * well-formed tag, comment or declaration, tags nest and close in order, there is one root element,
 * and `&` only starts an entity. Returns the element names in document order.
 */
function checkXml(xml: string): string[] {
  const names: string[] = [];
  const stack: string[] = [];
  let roots = 0;
  let at = 0;
  const body = xml.replace(/^<\?xml[^?]*\?>\s*/, "");
  const tag = /<(\/?)([A-Za-z_][\w:.-]*)((?:\s+[A-Za-z_][\w:.-]*="[^"<]*")*)\s*(\/?)>/y;
  const text = (s: string) => {
    ok(!s.includes(">"), `stray ">" in text "${s}"`);
    ok(!/&(?!(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);)/.test(s), `bare "&" in "${s}"`);
  };
  while (at < body.length) {
    const next = body.indexOf("<", at);
    if (next < 0) {
      ok(body.slice(at).trim() === "", "text after the root element");
      break;
    }
    text(body.slice(at, next));
    if (stack.length === 0) ok(body.slice(at, next).trim() === "", "text outside the root");
    if (body.startsWith("<!--", next)) {
      const end = body.indexOf("-->", next);
      ok(end > 0, "unclosed comment");
      at = end + 3;
      continue;
    }
    tag.lastIndex = next;
    const m = tag.exec(body);
    ok(m !== null, `malformed tag at ${next}: ${body.slice(next, next + 40)}`);
    const [whole, close, name, attrs, selfClose] = m;
    const attrNames = [...attrs!.matchAll(/([A-Za-z_][\w:.-]*)=/g)].map((a) => a[1]);
    equal(new Set(attrNames).size, attrNames.length, `repeated attribute in ${whole}`);
    for (const v of attrs!.matchAll(/="([^"]*)"/g)) text(v[1]!);
    if (close) {
      ok(!selfClose && attrs === "", `bad closing tag ${whole}`);
      equal(stack.pop(), name, `</${name}> closes the wrong element`);
    } else {
      if (stack.length === 0) roots++;
      names.push(name!);
      if (!selfClose) stack.push(name!);
    }
    at = next + whole.length;
  }
  deepEqual(stack, [], "unclosed elements");
  equal(roots, 1, "not exactly one root element");
  return names;
}

/** The text content of elements with `class="legend-entry"`, tags stripped. */
function legendEntries(svg: string): string[] {
  return [...svg.matchAll(/<text class="legend-entry"[^>]*>(.*?)<\/text>/g)]
    .map((m) => m[1]!.replace(/<tspan[^>]*>/g, "  ").replace(/<[^>]+>/g, ""));
}

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
  const cells = [
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
      const lambda = c.varied["sae.jsae.lambda" as keyof typeof c.varied];
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

Deno.test("log2Scale() maps 1 to the left edge, 2^18 to the right, evenly per octave", () => {
  const x = log2Scale([1, CURVE_AXIS_EDGES], [72, 592]);
  equal(x(1), 72);
  equal(x(2 ** 18), 592);
  equal(x(2 ** 9), 332);
  ok(Math.abs((x(4) - x(2)) - (x(2 ** 17) - x(2 ** 16))) < 1e-9);
  throws(() => log2Scale([0, 8], [0, 1]), /Cannot make a log scale/);
  const y = linearScale([0, 10], [300, 0]);
  equal(y(0), 300);
  equal(y(10), 0);
  equal(y(2.5), 225);
});

Deno.test("niceTicks() covers the maximum in round steps", () => {
  deepEqual(niceTicks(4.3), [0, 1, 2, 3, 4, 5]);
  deepEqual(niceTicks(10), [0, 2, 4, 6, 8, 10]);
  deepEqual(niceTicks(0.3), [0, 0.1, 0.2, 0.3]);
  deepEqual(niceTicks(0.07), [0, 0.02, 0.04, 0.06, 0.08]);
  deepEqual(niceTicks(34000), [0, 10000, 20000, 30000, 40000]);
  deepEqual(niceTicks(0), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  deepEqual(niceTicks(NaN), [0, 0.2, 0.4, 0.6, 0.8, 1]);
});

Deno.test("curveChartSvg() puts n = 1 at the left edge and n = 2^18 at the right", () => {
  const svg = curveChartSvg({
    title: "t",
    subtitle: "s",
    yLabel: "KL",
    lines: [{
      style: { label: "a & b", note: "", color: "#000000", dash: "" },
      points: [
        { n: 0, mean: 9, low: 9, high: 9 }, // not on a log axis: left out
        { n: 1, mean: 1, low: 1, high: 1 },
        { n: 2 ** 18, mean: 0, low: 0, high: 0 },
      ],
    }],
  });
  checkXml(svg);
  // The plot area spans x 72..592 and y 58..358; the y axis tops out at 1.
  ok(svg.includes('d="M72 58 L592 358"'), svg);
  ok(svg.includes("a &amp; b"));
  equal(svg.match(/<polygon/g), null, "no band for equal low and high");
});

Deno.test("writePlots() writes the curves per layer and the relative SCALAR bars", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    await seedStore(store);
    const notices: string[] = [];
    const outDir = `${db.dir}/plots`;
    const files = await writePlots(store, {
      experiment: "demo",
      outDir,
      converter: null,
      log: (l) => notices.push(l),
    });
    deepEqual(files, [
      `${outDir}/demo-mlp-curves-layer0.svg`,
      `${outDir}/demo-mlp-curves-layer1.svg`,
      `${outDir}/demo-mlp-relative-scalar.svg`,
    ]);
    equal(notices.length, 1);
    ok(notices[0]!.includes("writing SVG only"));

    for (const file of files.slice(0, 2)) {
      const svg = await Deno.readTextFile(file);
      const names = checkXml(svg);
      equal(names[0], "svg");
      // One line per cell, one band per cell with more than one seed.
      equal(svg.match(/<path class="curve"/g)?.length, 4);
      equal(names.filter((n) => n === "path").length, 4);
      equal(svg.match(/<polygon class="band"/g)?.length, 4);
      deepEqual(legendEntries(svg), [
        "topk  n=3/4 ⚠", // the failed fourth run flags the cell
        "staircase  n=3",
        "jsae λ=0.001  n=3",
        "jsae λ=0.01  n=3",
      ]);
      ok(svg.includes("2¹⁸") && svg.includes("2⁰"));
    }
    // The mean line of topk at layer 0 starts at the mean of 4, 4.4 and 4.8 over seeds (4.4)…
    const layer0 = await Deno.readTextFile(files[0]!);
    ok(layer0.includes("KL(model ‖ ablated)"));
    ok(layer0.includes("blocks.0.hook_mlp_in → blocks.0.hook_mlp_out"));
    // …on a y axis to 5 (the band's top, 4.8) over 300 px: 58 + 300 (1 − 4.4 / 5) = 94.
    ok(/<path class="curve" d="M72 94 L/.test(layer0));

    const bars = await Deno.readTextFile(files[2]!);
    const names = checkXml(bars);
    equal(names.filter((n) => n === "rect").length, 1 + 4 * LAYERS + 4); // background, bars, swatches
    equal(bars.match(/<path class="whisker"/g)?.length, 4 * LAYERS);
    ok(bars.includes(">layer 0<") && bars.includes(">layer 1<"));
    deepEqual(legendEntries(bars).map((e) => e.split("  ")[0]), [
      "topk",
      "staircase",
      "jsae λ=0.001",
      "jsae λ=0.01",
    ]);
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("buildPlots() is deterministic: the same data give byte-identical SVG", async () => {
  const db = await tempDb();
  const store = await openStore(db.path);
  try {
    await seedStore(store);
    const a = await writePlots(store, {
      experiment: "demo",
      outDir: `${db.dir}/a`,
      converter: null,
      log: quiet,
    });
    const b = await writePlots(store, {
      experiment: "demo",
      outDir: `${db.dir}/b`,
      converter: null,
      log: quiet,
    });
    equal(a.length, b.length);
    for (let i = 0; i < a.length; i++) {
      deepEqual(await Deno.readFile(a[i]!), await Deno.readFile(b[i]!));
    }
    // The same rows in another order (another store) draw the same charts too.
    const data = await loadPlotData(store, { experiment: "demo" });
    const shuffled = { ...data, runs: data.runs.toReversed() };
    deepEqual(buildPlots(shuffled), buildPlots(data));
  } finally {
    store.close();
    await db.cleanup();
  }
});

Deno.test("writePlots() draws the full-circuit curve when asked", async () => {
  const store = await openStore(":memory:");
  try {
    await seedStore(store);
    const plots = buildPlots(await loadPlotData(store, { experiment: "demo", curve: "full" }));
    ok(plots[0]!.svg.includes("KL(full circuit ‖ ablated)"));
    // Equal low and high per seed, but seeds differ: still a band per cell.
    equal(plots[0]!.svg.match(/<polygon class="band"/g)?.length, 4);
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
    equal(files.length, 3);
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
      equal(files.length, 6);
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

/**
 * The default job end to end in its manifest's shape on a tiny model: `experiments/quickstart.yaml`
 * with only the model and the budgets shrunk runs piped, prints a short summary (one line per run,
 * the improvement table, the HTML report's path) without probe noise or curve points, and its
 * HTML report renders in headless Chromium.
 */
import assert from "node:assert/strict";
import { parse, stringify } from "yaml";
import { CHAR_TINY, saveRandomToyModel } from "../lib/model/testdata/tiny_gpt.ts";
import { chromiumMissing, visit } from "./testdata/chromium.ts";
import { MAIN } from "./testdata/tiny_grid.ts";

const QUICKSTART = new URL("../experiments/quickstart.yaml", import.meta.url);

/** The quickstart manifest with a tiny model and budgets: everything else as shipped. */
async function tinyQuickstart(dir: string): Promise<string> {
  const m = parse(await Deno.readTextFile(QUICKSTART));
  await saveRandomToyModel(`${dir}/model`, { ...CHAR_TINY, nLayer: 2 }, 3);
  m.model.checkpoint = "model";
  m.sae = { ...m.sae, features: 16, k: 2 };
  m.train = { ...m.train, steps: 6, batch: 4, warmup: 1, log_every: 2, checkpoint_every: 3 };
  m.eval = { sequences: 8 };
  m.scalar = { ...m.scalar, ig_batches: 1, ig_batch_size: 2, prompts: 2, bootstrap: 50 };
  await Deno.writeTextFile(`${dir}/quickstart.yaml`, stringify(m));
  return `${dir}/quickstart.yaml`;
}

/** Runs the program piped, as a user's `| tee` would, without XDG_RUNTIME_DIR. */
async function runPiped(cwd: string, ...args: string[]) {
  const env = { ...Deno.env.toObject(), NO_COLOR: "1", SCALAR_BACKEND: "wasm" };
  delete (env as Record<string, string>).XDG_RUNTIME_DIR;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env,
    clearEnv: true,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

Deno.test("the quickstart's shape on a tiny model: a short summary, the improvement table, an HTML report that renders", async () => {
  const dir = await Deno.makeTempDir({ prefix: "scalar-quickstart-" });
  try {
    const manifest = await tinyQuickstart(dir);
    const { code, stdout, stderr } = await runPiped(dir, "run", manifest);
    assert.equal(code, 0, stderr);
    const lines = (stdout + stderr).trimEnd().split("\n");
    assert.ok(lines.length <= 40, `${lines.length} lines:\n${stdout}${stderr}`);
    assert.doesNotMatch(stderr, /XDG_RUNTIME_DIR/);
    // Curve points are details: only --verbose prints them.
    assert.doesNotMatch(stderr, /^\s+n=\d+:/m);
    for (const arch of ["topk", "staircase"]) {
      assert.match(
        stdout,
        new RegExp(
          `^[0-9a-f]{12}  done    sae\\.arch=${arch} seed=0  \\d+s, fvu \\d+\\.\\d{3}–\\d+\\.\\d{3} ` +
            `\\(worst blocks\\.\\d\\.hook_resid_(mid|post)\\), CE [+-]\\d+\\.\\d{3} with all SAEs, ` +
            `relative SCALAR Σ \\d\\.\\d\\de[+-]\\d+$`,
          "m",
        ),
      );
    }
    assert.match(stdout, /^## Position `mlp-block`$/m);
    assert.match(stdout, /^#+ Improvement over TopK/m);
    // Relative and absolute SCALAR, per layer and summed.
    for (const measure of ["relative", "absolute"]) {
      assert.match(
        stdout,
        new RegExp(`^\\| staircase \\| n=1 \\| ${measure} \\|( -?\\d+\\.\\d+% \\|){3}$`, "m"),
      );
    }
    const html = /^HTML report: (results\/reports\/quickstart\.html)$/m.exec(stderr)?.[1];
    assert.ok(html, stderr);

    const missing = chromiumMissing();
    if (missing !== null) {
      console.warn(`skipping the browser check: ${missing}`);
      return;
    }
    const shot = `${dir}/report.png`;
    const page = await visit(`${dir}/${html}`, shot);
    assert.deepEqual(page.console, []);
    // Four charts (two layers of curves, SCALAR, SAE metrics), each drawn as an SVG with marks.
    assert.equal(page.dom.match(/<svg[^>]*class="marks"/g)?.length, 4, page.dom.slice(0, 2000));
    assert.ok((page.dom.match(/class="mark-line role-mark/g)?.length ?? 0) >= 4);
    // The feature browser shows the first SAE's first features with their contexts.
    assert.match(page.dom, /<b>feature 0<\/b> · density \d/);
    assert.match(page.dom, /<div class="ctx">\s*\d+\.\d{3} {2}.*<mark>/);
    const png = await Deno.readFile(shot);
    assert.deepEqual([...png.slice(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
    assert.ok(png.length > 20_000, `screenshot of ${png.length} bytes`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

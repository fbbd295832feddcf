import assert from "node:assert/strict";
import { COMMANDS } from "../lib/cli/main.ts";

const cli = async (...args: string[]) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
};

Deno.test("main.ts --help lists every command, and each command has --help", async () => {
  const top = await cli("--help");
  assert.equal(top.code, 0);
  for (const name of Object.keys(COMMANDS)) {
    assert.match(top.stdout, new RegExp(`^  ${name} `, "m"));
    const sub = await cli(name, "--help");
    assert.equal(sub.code, 0, name);
    assert.ok(sub.stdout.length > 20, name);
  }
});

Deno.test("main.ts reports bad usage and bad manifests with exit code 2 and no stack trace", async () => {
  const unknown = await cli("trian-model");
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /Cannot run command "trian-model": unknown/);
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/m.yaml`, "name: x\ntrain:\n  stpes: 3\n");
  const bad = await cli("train-model", `${dir}/m.yaml`, "--backend", "cpu");
  assert.equal(bad.code, 2);
  assert.match(
    bad.stderr,
    /m\.yaml:3:3: train\.stpes: unknown field "stpes" \(did you mean "steps"\?\)/,
  );
  assert.doesNotMatch(bad.stderr, /\bat .*\.ts:\d+/);
  await Deno.remove(dir, { recursive: true });
});

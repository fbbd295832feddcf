import assert from "node:assert/strict";
import { torchPeer } from "./peer.ts";

Deno.test("torchPeer() reads the peer's JSON lines, or says why it did not run", async () => {
  const dir = await Deno.makeTempDir();
  const script = `${dir}/peer.py`;
  await Deno.writeTextFile(
    script,
    `import json, sys
if "--fail" in sys.argv: sys.exit(3)
print(json.dumps({"name": "sae_topk_step", "peer_ms": 1.5, "args": sys.argv[1:]}))
`,
  );
  // Any Python runs this stand-in; finding one with torch is slow (importing torch).
  const peer = (args: string[]) => torchPeer(script, args, "python3");
  assert.deepEqual(await peer(["--reps", "2"]), new Map([["sae_topk_step", 1.5]]));
  assert.match(await peer(["--fail"]) as string, /exited with 3$/);
  await Deno.remove(dir, { recursive: true });
});

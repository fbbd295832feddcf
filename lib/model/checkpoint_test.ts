import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type Checkpoint,
  CheckpointError,
  hasCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
} from "./checkpoint.ts";
import { SafetensorsError } from "./safetensors.ts";

async function withTempDir(body: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir();
  try {
    await body(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

function sample(step: number): Checkpoint {
  return {
    config: { layers: 2, width: 8, name: "tiny" },
    params: {
      "h.0.w": { shape: [2, 3], data: new Float32Array([1, -0, NaN, 1e-45, -Infinity, step]) },
      bias: { shape: [], data: new Float32Array([step]) },
      empty: { shape: [0, 8], data: new Float32Array() },
    },
    state: {
      json: { step, cursor: [3, 17], rng: "a1b2" },
      tensors: { "m.h.0.w": { shape: [6], data: new Float32Array(6).fill(step / 2) } },
    },
  };
}

function assertSameCheckpoint(actual: Checkpoint, expected: Checkpoint): void {
  const plain = (tensors: Checkpoint["params"]) =>
    Object.fromEntries(
      Object.entries(tensors).map(([name, { shape, data }]) => [name, {
        shape,
        bits: Array.from(new Uint32Array(data.slice().buffer)),
      }]),
    );
  assert.deepEqual(actual.config, expected.config);
  assert.deepEqual(plain(actual.params), plain(expected.params));
  assert.deepEqual(actual.state?.json, expected.state?.json);
  assert.deepEqual(
    actual.state && plain(actual.state.tensors),
    expected.state && plain(expected.state.tensors),
  );
}

async function siblings(root: string): Promise<string[]> {
  const names = [];
  for await (const entry of Deno.readDir(root)) names.push(entry.name);
  return names.sort();
}

async function assertCheckpointError(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof CheckpointError, `expected CheckpointError, got ${error}`);
    assert.match(error.message, /^Cannot (load|save) checkpoint "[^"]+": /);
    assert.match(error.message, pattern);
    assert.doesNotMatch(error.message, /\.$/);
    return true;
  });
}

Deno.test("save and load round trip bit-exact, with and without resume state", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    assert.equal(await hasCheckpoint(dir), false);
    await saveCheckpoint(dir, sample(5));
    assert.equal(await hasCheckpoint(dir), true);
    assertSameCheckpoint(await loadCheckpoint(dir), sample(5));
    assert.deepEqual(await siblings(dir), [
      "config.json",
      "model.safetensors",
      "state.json",
      "state.safetensors",
    ]);

    const { config, params } = sample(6);
    const nested = join(root, "a", "b", "weights-only");
    await saveCheckpoint(nested, { config, params });
    const loaded = await loadCheckpoint(nested);
    assert.equal(loaded.state, undefined);
    assertSameCheckpoint(loaded, { config, params });
  });
});

Deno.test("saving again replaces the checkpoint and leaves no temporary folders", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await saveCheckpoint(dir, sample(1));
    await saveCheckpoint(`${dir}/`, { config: sample(2).config, params: sample(2).params });
    const loaded = await loadCheckpoint(dir);
    assertSameCheckpoint(loaded, { config: sample(2).config, params: sample(2).params });
    assert.deepEqual(await siblings(root), ["ckpt"]);
    assert.deepEqual(await siblings(dir), ["config.json", "model.safetensors"]);
  });
});

Deno.test("a save interrupted between the two renames still loads the last checkpoint", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await saveCheckpoint(dir, sample(1));
    // The crash came after moving the old checkpoint aside, with the new one partly written.
    await Deno.rename(dir, `${dir}.old`);
    await Deno.mkdir(`${dir}.tmp-999999`);
    await Deno.writeTextFile(join(`${dir}.tmp-999999`, "config.json"), "{");

    assert.equal(await hasCheckpoint(dir), true);
    assertSameCheckpoint(await loadCheckpoint(dir), sample(1));

    await saveCheckpoint(dir, sample(2));
    assertSameCheckpoint(await loadCheckpoint(dir), sample(2));
    assert.deepEqual(await siblings(root), ["ckpt", "ckpt.tmp-999999"]);
  });
});

Deno.test("a save interrupted before removing .old loads the new checkpoint", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await saveCheckpoint(dir, sample(1));
    await Deno.rename(dir, `${dir}.old`);
    await saveCheckpoint(dir, sample(2));
    // Recreate the state after "rename new in" but before "remove old".
    await saveCheckpoint(`${dir}-copy`, sample(1));
    await Deno.rename(`${dir}-copy`, `${dir}.old`);

    assertSameCheckpoint(await loadCheckpoint(dir), sample(2));
    await saveCheckpoint(dir, sample(3));
    assertSameCheckpoint(await loadCheckpoint(dir), sample(3));
    assert.deepEqual(await siblings(root), ["ckpt"]);
  });
});

Deno.test("a save interrupted while writing the new folder loads the old checkpoint", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await saveCheckpoint(dir, sample(1));
    await Deno.mkdir(`${dir}.tmp-${Deno.pid}`);
    await Deno.writeFile(join(`${dir}.tmp-${Deno.pid}`, "model.safetensors"), new Uint8Array(9));
    assertSameCheckpoint(await loadCheckpoint(dir), sample(1));
    // Our own stale temporary folder is reused by the next save.
    await saveCheckpoint(dir, sample(2));
    assertSameCheckpoint(await loadCheckpoint(dir), sample(2));
    assert.deepEqual(await siblings(root), ["ckpt"]);
  });
});

Deno.test("load errors name the file and say what to do", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await assertCheckpointError(loadCheckpoint(dir), /the folder does not exist; check the path/);

    await saveCheckpoint(dir, sample(1));
    await Deno.remove(join(dir, "config.json"));
    assert.equal(await hasCheckpoint(dir), false);
    await assertCheckpointError(
      loadCheckpoint(dir),
      /"[^"]*ckpt[/\\]config\.json" is missing; save the checkpoint again$/,
    );

    await Deno.writeTextFile(join(dir, "config.json"), "{layers: 2}");
    await assertCheckpointError(
      loadCheckpoint(dir),
      /"[^"]*config\.json" is not valid JSON \(.*\); fix the file or save the checkpoint again$/,
    );

    await saveCheckpoint(dir, sample(1));
    await Deno.remove(join(dir, "state.safetensors"));
    await assertCheckpointError(
      loadCheckpoint(dir),
      /"[^"]*state\.json" is present but "[^"]*state\.safetensors" is missing; delete "state\.json"/,
    );

    await saveCheckpoint(dir, sample(1));
    await Deno.remove(join(dir, "model.safetensors"));
    await assertCheckpointError(loadCheckpoint(dir), /model\.safetensors" is missing/);

    await Deno.writeFile(join(dir, "model.safetensors"), new Uint8Array(5));
    await assert.rejects(loadCheckpoint(dir), (error: unknown) => {
      assert.ok(error instanceof SafetensorsError);
      assert.match(error.message, /model\.safetensors": truncated: file is 5 bytes/);
      return true;
    });
  });
});

Deno.test("load rejects integer tensors in a checkpoint", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await saveCheckpoint(dir, { config: {}, params: {} });
    const header = new TextEncoder().encode(
      '{"ids":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}',
    );
    const bytes = new Uint8Array(8 + header.length + 4);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
    bytes.set(header, 8);
    await Deno.writeFile(join(dir, "model.safetensors"), bytes);
    await assertCheckpointError(
      loadCheckpoint(dir),
      /tensor "ids" in "[^"]*model\.safetensors" is I32, but checkpoint tensors must be floating/,
    );
  });
});

Deno.test("save refuses bad input and foreign folders without touching the disk", async () => {
  await withTempDir(async (root) => {
    const dir = join(root, "ckpt");
    await assertCheckpointError(
      saveCheckpoint(dir, { config: { big: 1n }, params: {} }),
      /config is not JSON-serializable/,
    );
    await assertCheckpointError(
      saveCheckpoint(dir, { config: undefined, params: {} }),
      /config is undefined, which JSON cannot hold/,
    );
    await assertCheckpointError(
      saveCheckpoint(dir, { config: {}, params: {}, state: { json: () => 1, tensors: {} } }),
      /state\.json is .*, which JSON cannot hold/,
    );
    await assert.rejects(
      saveCheckpoint(dir, { config: {}, params: { w: { shape: [2], data: new Float32Array(3) } } }),
      /Cannot write checkpoint "[^"]*model\.safetensors": "w" has shape \[2\]/,
    );
    assert.deepEqual(await siblings(root), []);

    await Deno.mkdir(dir);
    await Deno.writeTextFile(join(dir, "notes.txt"), "keep me");
    await assertCheckpointError(
      saveCheckpoint(dir, sample(1)),
      /the folder holds "notes\.txt", which is not a checkpoint file; choose another folder/,
    );
    assert.equal(await Deno.readTextFile(join(dir, "notes.txt")), "keep me");
    assert.deepEqual(await siblings(root), ["ckpt"]);

    const file = join(root, "file");
    await Deno.writeTextFile(file, "");
    await assertCheckpointError(saveCheckpoint(file, sample(1)), /is a file, not a folder/);
    await assertCheckpointError(loadCheckpoint(file), /is a file, not a checkpoint folder/);
  });
});

/**
 * The `scalar` command line: a table of subcommands, each with `--help`, and one place that turns
 * the project's expected errors into a message and an exit code instead of a stack trace.
 *
 * @module
 */
import { BackendError } from "../backend/select.ts";
import { CorpusError } from "../data/corpus.ts";
import { ManifestError } from "../experiment/manifest_source.ts";
import { CheckpointError } from "../model/checkpoint.ts";
import { SafetensorsError } from "../model/safetensors.ts";
import { ArchitectureError } from "../sae/architectures.ts";
import { StoreError, storeFailure } from "../store/db.ts";
import { SlurmError } from "../slurm/queue.ts";
import { DivergenceError } from "../optim/training_loop.ts";
import { type Command, UsageError } from "./args.ts";
import { trainModelCommand } from "./train_model.ts";
import { benchCommand } from "./bench.ts";
import { featuresCommand } from "./features.ts";
import { mergeCommand } from "./merge.ts";
import { queryCommand, reportCommand } from "./results.ts";
import { planCommand, runCommand } from "./run.ts";

/** Every subcommand, by name. */
export const COMMANDS: Readonly<Record<string, Command>> = {
  "train-model": trainModelCommand,
  run: runCommand,
  plan: planCommand,
  report: reportCommand,
  query: queryCommand,
  merge: mergeCommand,
  bench: benchCommand,
  features: featuresCommand,
};

const USAGE =
  `SCALAR lab: train SAEs across a language model's layers and measure how sparsely their
features connect (SCALAR).

Usage: deno task <command> [arguments]   (or: deno run -A main.ts <command> ...)

Commands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`).join("\n")}

Run a command with --help for its options.`;

/** Errors whose message says everything a user needs: printed without a stack trace. */
const EXPECTED_ERRORS = [
  BackendError,
  CorpusError,
  CheckpointError,
  SafetensorsError,
  DivergenceError,
  ArchitectureError,
  StoreError,
  SlurmError,
];

/**
 * Runs a subcommand.
 *
 * @param args The command line after the program name.
 * @returns The exit code: 0 success, 1 failure, 2 bad usage or input, 130 interrupted.
 */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    console.error(
      `Cannot run command "${name}": unknown; commands: ${Object.keys(COMMANDS).join(", ")}`,
    );
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(command.help);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${name}: ${e.message}\nRun "deno task ${name} --help" for usage.`);
      return 2;
    }
    if (e instanceof ManifestError) {
      console.error(e.message);
      return 2;
    }
    if (EXPECTED_ERRORS.some((cls) => e instanceof cls)) {
      console.error((e as Error).message);
      return 1;
    }
    // A damaged database (or a full disk) can surface in any read or write of any command:
    // DuckDB's message names the file.
    const file = e instanceof Error ? /file "([^"]+)"/.exec(e.message)?.[1] : undefined;
    const failure = storeFailure(file ?? "the results database", e);
    if (failure instanceof StoreError) {
      console.error(failure.message);
      return 1;
    }
    throw e;
  }
}

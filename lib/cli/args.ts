/**
 * Shared command-line plumbing: argument parsing with `--help`, and the errors a command reports
 * as a message rather than a stack trace.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** A usage mistake: printed with the command's help hint, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A subcommand of `main.ts`. */
export interface Command {
  /** One line for the command list. */
  summary: string;
  /** Full help text, printed by `--help`. */
  help: string;
  /** Runs the command and returns its exit code. */
  run(args: string[]): Promise<number>;
}

/**
 * Parses a command's arguments strictly; unknown flags become a {@link UsageError}.
 *
 * @param args The arguments after the command name.
 * @param options The flags the command takes (`help` is added).
 * @returns Parsed values and positionals.
 * @throws {UsageError} For unknown flags or missing flag values.
 */
export function parseCommandArgs<O extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: O,
) {
  try {
    return parseArgs({
      args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

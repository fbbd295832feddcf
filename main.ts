/**
 * SCALAR lab's command line. The commands live in `lib/cli/`; run `deno task <command> --help`.
 *
 * @module
 */
import { main } from "./lib/cli/main.ts";

if (import.meta.main) Deno.exit(await main(Deno.args));

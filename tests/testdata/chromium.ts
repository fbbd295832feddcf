/**
 * Opens a local HTML file in headless Chromium (Debian's `chromium`, which `.ci/run` installs):
 * the DOM after the page's scripts ran, what they logged to the console, and a screenshot.
 *
 * @module
 */

/** Where Debian puts the browser. */
export const CHROMIUM = "/usr/bin/chromium";

/** Why a browser test cannot run here, or null when it can. */
export function chromiumMissing(): string | null {
  try {
    return Deno.statSync(CHROMIUM).isFile ? null : `${CHROMIUM} is not a file`;
  } catch {
    return `${CHROMIUM} is not installed (apt-get install chromium)`;
  }
}

/** What a page looked like once its scripts ran. */
export interface PageVisit {
  /** The serialized DOM. */
  dom: string;
  /**
   * Every console message and uncaught exception (Chromium's log does not tell the levels apart;
   * the report's page logs nothing unless something failed).
   */
  console: string[];
}

/** No network, no sandbox (root in a container), no GPU, no first-run chores, a throwaway profile. */
function flags(profile: string): string[] {
  return [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--user-data-dir=${profile}`,
    // Time for the charts' asynchronous rendering before the DOM is read or the picture taken.
    "--virtual-time-budget=10000",
    "--enable-logging=stderr",
    "--v=0",
  ];
}

/**
 * Loads a file, returns its DOM and console messages, and saves a screenshot.
 *
 * @param file The HTML file.
 * @param screenshot Where the PNG goes.
 * @param size Window size, `width,height`. @default "1200,1800"
 * @returns The DOM and the console messages.
 */
export async function visit(
  file: string,
  screenshot: string,
  size = "1200,1800",
): Promise<PageVisit> {
  const profile = await Deno.makeTempDir({ prefix: "scalar-chromium-" });
  try {
    const url = new URL(`file://${await Deno.realPath(file)}`).href;
    const run = async (extra: string[]) => {
      const out = await new Deno.Command(CHROMIUM, {
        args: [...flags(profile), ...extra, url],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
    };
    const page = await run(["--dump-dom"]);
    if (page.code !== 0) throw new Error(`chromium exited with ${page.code}: ${page.stderr}`);
    const shot = await run([`--screenshot=${screenshot}`, `--window-size=${size}`]);
    if (shot.code !== 0) throw new Error(`chromium exited with ${shot.code}: ${shot.stderr}`);
    // Console output is logged as `…:INFO:CONSOLE:line] "message", source: url (line)`.
    const console = [...page.stderr.split("\n"), ...shot.stderr.split("\n")].filter((l) =>
      /:CONSOLE[:(]\d+\)?\]/.test(l)
    );
    return { dom: page.stdout, console };
  } finally {
    await Deno.remove(profile, { recursive: true });
  }
}

/**
 * `staircase-detached`: Staircase's prefixes (`staircase.ts`), but an SAE's loss trains only its
 * own chunk: gradients into the earlier chunks it reads are stopped.
 *
 * @module
 */
import type { ArchitectureSpec } from "./spec.ts";
import { staircase } from "./staircase.ts";

/**
 * The detached Staircase architecture.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { STAIRCASE_DETACHED } from "./staircase_detached.ts";
 *
 * assert.equal(STAIRCASE_DETACHED.baseline, false);
 * ```
 */
export const STAIRCASE_DETACHED: ArchitectureSpec = staircase(
  true,
  "Staircase prefixes; each SAE's loss trains only its own chunk",
);

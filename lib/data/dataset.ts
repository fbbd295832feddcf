/**
 * The tokens a run reads: a registered corpus (`data.corpus`) or a local file or folder
 * (`data.path`), tokenized the way the model was trained (characters for the toy model, GPT-2 BPE
 * for GPT-2), cached, and split into training and validation tokens.
 *
 * @module
 */
import { GPT2_TOKENIZER } from "./bpe_tokenizer.ts";
import { CHAR_TOKENIZER } from "./char_tokenizer.ts";
import { resolveCorpus } from "./corpus.ts";
import { type CorpusTokenizer, loadTextCorpus } from "./text_corpus.ts";

/** The tokenizers a model can name. */
export const TOKENIZERS: Readonly<Record<"char" | "gpt2", Readonly<CorpusTokenizer>>> = Object
  .freeze({ char: CHAR_TOKENIZER, gpt2: GPT2_TOKENIZER });

/** Where a run's text comes from. */
export interface DatasetSpec {
  /** A registered corpus, used when `path` is unset. */
  corpus: string;
  /** A `.txt`/`.jsonl` file or a folder of them. */
  path?: string;
  /** Field of each `.jsonl` line that holds the text. @default "text" */
  textField?: string;
}

/** A run's tokens. */
export interface Dataset {
  /** The corpus name or the path. */
  name: string;
  /** Identifies tokenizer and source bytes together (64 hex digits): keys activation caches. */
  sha256: string;
  /** Training tokens (SAE training). */
  train: Int32Array;
  /** Validation tokens (metrics and SCALAR). */
  val: Int32Array;
  /** The tokenizer, for showing contexts. */
  tokenizer: Readonly<CorpusTokenizer>;
}

/**
 * Loads a run's tokens, tokenizing once per source and tokenizer (later calls read the cache).
 *
 * @param spec The corpus or path.
 * @param tokenizer How the model reads text.
 * @param log Progress lines of a large corpus.
 * @returns The split tokens and their identity.
 * @throws {CorpusError} If the corpus cannot be found, fetched, verified or read.
 */
export async function loadDataset(
  spec: DatasetSpec,
  tokenizer: Readonly<CorpusTokenizer>,
  log?: (line: string) => void,
): Promise<Dataset> {
  // A registered corpus is resolved (found, fetched and checked) first; its file is then read
  // like any local path, so both share the token cache.
  const path = spec.path ?? (await resolveCorpus(spec.corpus, { log })).path;
  const corpus = await loadTextCorpus(path, { tokenizer, textField: spec.textField, log });
  return {
    name: spec.path ?? spec.corpus,
    sha256: corpus.key,
    train: corpus.train,
    val: corpus.val,
    tokenizer,
  };
}

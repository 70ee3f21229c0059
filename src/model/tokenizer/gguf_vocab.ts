import type { GGUFParseOutput } from '@huggingface/gguf';
import type { Vocab } from './vocab.ts';

type Metadata = GGUFParseOutput['metadata'];

function optionalNumber(m: Metadata, key: string): number | null {
  const v = (m as Record<string, unknown>)[key];
  return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : null;
}

function optionalBool(m: Metadata, key: string, fallback: boolean): boolean {
  const v = (m as Record<string, unknown>)[key];
  return typeof v === 'boolean' ? v : fallback;
}

/** The vocabulary a GGUF file's `tokenizer.ggml.*` metadata describes. */
export function vocabFromGguf(m: Metadata, file: string): Vocab {
  const md = m as Record<string, unknown>;
  const tokens = md['tokenizer.ggml.tokens'];
  if (!Array.isArray(tokens)) throw new Error(`${file}: no tokenizer.ggml.tokens in the GGUF metadata`);
  const scores = md['tokenizer.ggml.scores'];
  const types = md['tokenizer.ggml.token_type'];
  const model = md['tokenizer.ggml.model'];
  return {
    tokens: tokens as string[],
    scores: Float32Array.from(Array.isArray(scores) ? (scores as number[]) : tokens.map(() => 0)),
    types: Uint8Array.from(Array.isArray(types) ? (types as number[]) : tokens.map(() => 1)),
    bos: optionalNumber(m, 'tokenizer.ggml.bos_token_id'),
    eos: optionalNumber(m, 'tokenizer.ggml.eos_token_id'),
    unk: optionalNumber(m, 'tokenizer.ggml.unknown_token_id'),
    addBos: optionalBool(m, 'tokenizer.ggml.add_bos_token', model === 'llama'),
    addEos: optionalBool(m, 'tokenizer.ggml.add_eos_token', false),
    addSpacePrefix: optionalBool(m, 'tokenizer.ggml.add_space_prefix', model === 'llama'),
  };
}

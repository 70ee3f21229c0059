/** llama.cpp's token types (GGUF `tokenizer.ggml.token_type`). */
export const TokenType = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

export interface Vocab {
  tokens: string[];
  scores: Float32Array;
  types: Uint8Array;
  bos: number | null;
  eos: number | null;
  unk: number | null;
  addBos: boolean;
  addEos: boolean;
  /** SentencePiece's dummy prefix: a space before the text (and after special tokens). */
  addSpacePrefix: boolean;
}

/**
 * Splits text at special tokens (user-defined ones always, control ones when parseSpecial), like
 * llama.cpp's partition step: special tokens become ids, the pieces between them go to the model's
 * tokenizer. Longest tokens are tried first so "<|im_start|>" wins over "<".
 */
export function partitionSpecial(text: string, vocab: Vocab, parseSpecial: boolean): (string | number)[] {
  const specials: { text: string; id: number }[] = [];
  vocab.tokens.forEach((t, id) => {
    const type = vocab.types[id];
    if (t.length > 0 && (type === TokenType.USER_DEFINED || (parseSpecial && type === TokenType.CONTROL))) specials.push({ text: t, id });
  });
  if (specials.length === 0) return text.length ? [text] : [];
  specials.sort((a, b) => b.text.length - a.text.length);
  const out: (string | number)[] = [];
  let start = 0;
  let i = 0;
  while (i < text.length) {
    const hit = specials.find((s) => text.startsWith(s.text, i));
    if (hit) {
      if (i > start) out.push(text.slice(start, i));
      out.push(hit.id);
      i += hit.text.length;
      start = i;
    } else {
      i++;
    }
  }
  if (start < text.length) out.push(text.slice(start));
  return out;
}

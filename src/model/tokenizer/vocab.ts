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

/** Special tokens by their first UTF-16 unit, longest first ("<|im_start|>" before "<"). */
type SpecialIndex = Map<number, { text: string; id: number }[]>;
const specialIndexes = new WeakMap<Vocab, [SpecialIndex, SpecialIndex]>();

function specialIndex(vocab: Vocab, parseSpecial: boolean): SpecialIndex {
  let pair = specialIndexes.get(vocab);
  if (!pair) {
    const [plain, parsing]: [SpecialIndex, SpecialIndex] = [new Map(), new Map()];
    vocab.tokens.forEach((text, id) => {
      const type = vocab.types[id];
      if (text.length === 0 || (type !== TokenType.USER_DEFINED && type !== TokenType.CONTROL)) return;
      // user-defined tokens are matched either way, control tokens only when parsing them
      for (const index of type === TokenType.USER_DEFINED ? [plain, parsing] : [parsing]) {
        const c = text.charCodeAt(0);
        const list = index.get(c) ?? [];
        list.push({ text, id });
        index.set(c, list);
      }
    });
    // longest first; a stable sort keeps equal lengths in id order, as the scan of the vocabulary did
    for (const index of [plain, parsing]) for (const list of index.values()) list.sort((a, b) => b.text.length - a.text.length);
    pair = [plain, parsing];
    specialIndexes.set(vocab, pair);
  }
  return pair[parseSpecial ? 1 : 0];
}

/**
 * Splits text at special tokens (user-defined ones always, control ones when parseSpecial), like
 * llama.cpp's partition step: special tokens become ids, the pieces between them go to the model's
 * tokenizer. Longest tokens are tried first so "<|im_start|>" wins over "<". Candidates are looked
 * up by their first character, so a long text costs one map lookup per character.
 */
export function partitionSpecial(text: string, vocab: Vocab, parseSpecial: boolean): (string | number)[] {
  const index = specialIndex(vocab, parseSpecial);
  if (index.size === 0) return text.length ? [text] : [];
  const out: (string | number)[] = [];
  let start = 0;
  let i = 0;
  while (i < text.length) {
    const hit = index.get(text.charCodeAt(i))?.find((s) => text.startsWith(s.text, i));
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

/**
 * The most input bytes one token of `vocab` stands for when each token covers, of the input, the
 * bytes it stands for in output (tokenBytes: a byte token 1, "▁the" 4) or, for tokens matched by
 * their text (control, user-defined, unknown), that text. Valid for tokenizers that never drop or
 * shrink input text and emit an unknown token per byte at most (SentencePiece with byte fallback,
 * byte-level BPE).
 */
export function maxTokenInputBytes(vocab: Vocab, tokenBytes: (id: number) => Uint8Array): number {
  let max = 1; // an unknown or byte token stands for one byte
  for (let id = 0; id < vocab.tokens.length; id++) {
    const type = vocab.types[id];
    const bytes = tokenBytes(id).length;
    max = Math.max(max, type === TokenType.NORMAL || type === TokenType.BYTE ? bytes : Math.max(bytes, Buffer.byteLength(vocab.tokens[id] ?? '')));
  }
  return max;
}

import type { EncodeOptions } from './index.ts';
import { TokenType, type Vocab, maxTokenInputBytes, partitionSpecial } from './vocab.ts';

/**
 * Pre-tokenizer regexes by GGUF `tokenizer.ggml.pre` (the splits the model's training tokenizer
 * made before BPE). Case-insensitive contractions are spelled out: Node 20 has no (?i:) groups.
 */
const CONTRACTIONS_CI = `'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]`;
const PRE_TOKENIZERS: Record<string, RegExp> = {
  'gpt-2': /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu,
  'llama-bpe': new RegExp(`${CONTRACTIONS_CI}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`, 'gu'),
  qwen2: new RegExp(`${CONTRACTIONS_CI}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`, 'gu'),
};
PRE_TOKENIZERS.default = PRE_TOKENIZERS['gpt-2'];
PRE_TOKENIZERS.llama3 = PRE_TOKENIZERS['llama-bpe'];

export const SUPPORTED_PRE_TOKENIZERS = Object.keys(PRE_TOKENIZERS);

/** GPT-2's reversible byte -> printable character map (bytes that print as themselves keep their code). */
function byteEncoder(): string[] {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCodePoint(printable ? b : 256 + extra++);
  }
  return table;
}
export const BYTE_TO_CHAR: readonly string[] = byteEncoder();
/** The inverse of BYTE_TO_CHAR: a byte-level BPE token's characters back to its bytes. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/**
 * Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`): split with the model's pre-tokenizer, map
 * each piece's UTF-8 bytes to printable characters, then apply merges by rank (lowest first,
 * leftmost on ties).
 */
export class BpeTokenizer {
  private readonly ids = new Map<string, number>();
  private readonly ranks = new Map<string, number>();
  private readonly pre: RegExp;
  private readonly cache = new Map<string, number[]>();

  constructor(
    readonly vocab: Vocab,
    merges: string[],
    preTokenizer: string,
    file = '',
  ) {
    const pre = PRE_TOKENIZERS[preTokenizer];
    if (!pre) {
      throw new Error(`${file}: unsupported BPE pre-tokenizer "${preTokenizer}" (supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')})`);
    }
    this.pre = pre;
    vocab.tokens.forEach((t, id) => {
      if (!this.ids.has(t)) this.ids.set(t, id);
    });
    merges.forEach((m, rank) => this.ranks.set(m, rank));
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return [...this.encodeSlices(text, options, Infinity)].flat();
  }

  /** encode's ids in slices of about `sliceChars` characters, cut between pre-tokenizer words (which BPE encodes one by one). */
  *encodeSlices(text: string, options: EncodeOptions = {}, sliceChars = Infinity): Generator<number[], void, undefined> {
    const addSpecial = options.addSpecial ?? true;
    let out: number[] = [];
    let pending = 0;
    if (addSpecial && this.vocab.addBos && this.vocab.bos !== null) out.push(this.vocab.bos);
    for (const part of partitionSpecial(text, this.vocab, options.parseSpecial ?? false)) {
      if (typeof part === 'number') {
        out.push(part);
        continue;
      }
      // the pre-tokenizer runs over the whole part, lazily: a word is what it would be in one pass
      for (const m of part.matchAll(this.pre)) {
        for (const id of this.encodeWord(m[0])) out.push(id);
        pending += m[0].length;
        if (pending >= sliceChars) {
          yield out;
          out = [];
          pending = 0;
        }
      }
    }
    if (addSpecial && this.vocab.addEos && this.vocab.eos !== null) out.push(this.vocab.eos);
    yield out;
  }

  private maxBytes: number | undefined;
  /** Byte-level BPE covers every input byte, at most maxTokenInputBytes of it per token. */
  minTokens(text: string): number {
    this.maxBytes ??= maxTokenInputBytes(this.vocab, (id) => this.tokenBytes(id));
    return Math.ceil(Buffer.byteLength(text) / this.maxBytes);
  }

  private encodeWord(word: string): number[] {
    const cached = this.cache.get(word);
    if (cached) return cached;
    let parts = Array.from(Buffer.from(word, 'utf8'), (b) => BYTE_TO_CHAR[b]);
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < parts.length; i++) {
        const rank = this.ranks.get(`${parts[i]} ${parts[i + 1]}`);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      // merge every occurrence of the best pair, left to right, as one pass
      const a = parts[best];
      const b = parts[best + 1];
      const merged: string[] = [];
      for (let i = 0; i < parts.length; i++) {
        if (i + 1 < parts.length && parts[i] === a && parts[i + 1] === b) {
          merged.push(a + b);
          i++;
        } else {
          merged.push(parts[i]);
        }
      }
      parts = merged;
    }
    const ids: number[] = [];
    for (const p of parts) {
      const id = this.ids.get(p);
      if (id !== undefined) ids.push(id);
      else for (const ch of p) ids.push(this.ids.get(ch) ?? this.vocab.unk ?? 0);
    }
    if (this.cache.size < 50_000) this.cache.set(word, ids);
    return ids;
  }

  tokenBytes(id: number): Uint8Array {
    const type = this.vocab.types[id];
    const text = this.vocab.tokens[id] ?? '';
    if (type === TokenType.CONTROL || type === TokenType.UNUSED) return new Uint8Array(0);
    if (type === TokenType.USER_DEFINED) return Buffer.from(text, 'utf8');
    return Uint8Array.from(Array.from(text, (ch) => CHAR_TO_BYTE.get(ch) ?? 0x3f));
  }
}

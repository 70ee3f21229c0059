import { Heap } from '../../util/heap.ts';
import type { EncodeOptions } from './index.ts';
import { TokenType, type Vocab, maxTokenInputBytes, partitionSpecial } from './vocab.ts';

const SPACE = '\u2581'; // ▁, SentencePiece's visible space

interface Symbol {
  start: number; // offset in code units of the (escaped) text
  len: number; // 0 once merged into its left neighbour
  prev: number;
  next: number;
}

interface Bigram {
  left: number;
  right: number;
  score: number;
  len: number;
}

/** Max-heap order by score; equal scores pop the leftmost pair first (SentencePiece's order). */
const bigramBefore = (a: Bigram, b: Bigram) => a.score > b.score || (a.score === b.score && a.left < b.left);

/**
 * SentencePiece-style tokenizer (GGUF `tokenizer.ggml.model = llama`, llama2.c tokenizer.bin):
 * spaces become ▁, a dummy space prefix is added, UTF-8 characters are merged pairwise by the
 * highest vocabulary score, and pieces not in the vocabulary fall back to <0xXX> byte tokens.
 */
export class SpmTokenizer {
  private readonly ids = new Map<string, number>();
  private readonly byteTokens: number[] = [];

  constructor(readonly vocab: Vocab) {
    vocab.tokens.forEach((t, id) => {
      if (!this.ids.has(t)) this.ids.set(t, id);
    });
    for (let b = 0; b < 256; b++) {
      const id = this.ids.get(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
      this.byteTokens.push(id ?? -1);
    }
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return [...this.encodeSlices(text, options, Infinity)].flat();
  }

  /**
   * encode's ids in slices of about `sliceChars` characters. A piece of text is cut only between
   * two characters that no vocabulary entry holds side by side: merges only ever build vocabulary
   * entries, so no symbol spans such a cut, and the merges on either side happen in the same
   * order as in the whole piece (they never meet). The dummy prefix stays with the first slice.
   */
  *encodeSlices(text: string, options: EncodeOptions = {}, sliceChars = Infinity): Generator<number[], void, undefined> {
    const addSpecial = options.addSpecial ?? true;
    let out: number[] = [];
    let pending = 0; // characters encoded into `out` since the last slice
    if (addSpecial && this.vocab.addBos && this.vocab.bos !== null) out.push(this.vocab.bos);
    let afterSpecial = true; // the dummy prefix goes at the start and after each special token
    for (const part of partitionSpecial(text, this.vocab, options.parseSpecial ?? false)) {
      if (typeof part === 'number') {
        out.push(part);
        afterSpecial = true;
        continue;
      }
      const prefixed = this.vocab.addSpacePrefix && afterSpecial ? ` ${part}` : part;
      const escaped = prefixed.replaceAll(' ', SPACE);
      for (let start = 0; start < escaped.length; ) {
        const end = this.cutAtOrAfter(escaped, start + sliceChars - pending);
        this.encodePiece(escaped.slice(start, end), out);
        pending += end - start;
        start = end;
        if (pending >= sliceChars) {
          yield out;
          out = [];
          pending = 0;
        }
      }
      afterSpecial = false;
    }
    if (addSpecial && this.vocab.addEos && this.vocab.eos !== null) out.push(this.vocab.eos);
    yield out;
  }

  /** Adjacent character pairs (as two-code-point strings) inside vocabulary entries. */
  private pairs: Set<string> | undefined;

  /** The first position >= `at` where `text` may be cut (see encodeSlices), or its length. */
  private cutAtOrAfter(text: string, at: number): number {
    if (at >= text.length) return text.length;
    if (!this.pairs) {
      this.pairs = new Set();
      for (const t of this.ids.keys()) {
        const cps = Array.from(t);
        for (let i = 1; i < cps.length; i++) this.pairs.add(cps[i - 1] + cps[i]);
      }
    }
    for (let p = Math.max(at, 1); p < text.length; p++) {
      const c = text.charCodeAt(p);
      if (c >= 0xdc00 && c <= 0xdfff) continue; // inside a surrogate pair
      const low = text.charCodeAt(p - 1);
      const before = low >= 0xdc00 && low <= 0xdfff && p >= 2 ? text.slice(p - 2, p) : text[p - 1];
      const after = String.fromCodePoint(text.codePointAt(p)!);
      if (!this.pairs.has(before + after)) return p;
    }
    return text.length;
  }

  private maxBytes: number | undefined;
  /** Every input byte is covered (a byte token, or an unknown token per byte), at most maxTokenInputBytes of it per token. */
  minTokens(text: string): number {
    this.maxBytes ??= maxTokenInputBytes(this.vocab, (id) => this.tokenBytes(id));
    return Math.ceil(Buffer.byteLength(text) / this.maxBytes);
  }

  private encodePiece(text: string, out: number[]): void {
    if (!text) return;
    const symbols: Symbol[] = [];
    for (let i = 0; i < text.length; ) {
      const len = text.codePointAt(i)! > 0xffff ? 2 : 1;
      symbols.push({ start: i, len, prev: symbols.length - 1, next: i + len < text.length ? symbols.length + 1 : -1 });
      i += len;
    }
    const queue = new Heap<Bigram>(bigramBefore);
    const merges = new Map<string, [number, number]>();
    const tryAdd = (left: number, right: number) => {
      if (left < 0 || right < 0) return;
      const piece = text.slice(symbols[left].start, symbols[left].start + symbols[left].len + symbols[right].len);
      const id = this.ids.get(piece);
      if (id === undefined) return;
      queue.push({ left, right, score: this.vocab.scores[id], len: piece.length });
      merges.set(piece, [left, right]);
    };
    for (let i = 1; i < symbols.length; i++) tryAdd(i - 1, i);
    while (queue.size > 0) {
      const b = queue.pop()!;
      const left = symbols[b.left];
      const right = symbols[b.right];
      if (left.len === 0 || right.len === 0 || left.len + right.len !== b.len) continue; // stale
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = b.left;
      tryAdd(left.prev, b.left);
      tryAdd(b.left, left.next);
    }
    const resegment = (s: Symbol) => {
      const piece = text.slice(s.start, s.start + s.len);
      const id = this.ids.get(piece);
      if (id !== undefined) {
        out.push(id);
        return;
      }
      const split = merges.get(piece);
      if (split) {
        resegment(symbols[split[0]]);
        resegment(symbols[split[1]]);
        return;
      }
      for (const byte of Buffer.from(piece, 'utf8')) {
        const t = this.byteTokens[byte];
        out.push(t >= 0 ? t : (this.vocab.unk ?? 0));
      }
    };
    for (let i = 0; i !== -1; i = symbols[i].next) resegment(symbols[i]);
  }

  /** The bytes a token stands for in output text (control tokens: none). */
  tokenBytes(id: number): Uint8Array {
    const type = this.vocab.types[id];
    const text = this.vocab.tokens[id] ?? '';
    if (type === TokenType.BYTE) return new Uint8Array([parseInt(text.slice(3, 5), 16)]);
    if (type === TokenType.CONTROL || type === TokenType.UNKNOWN || type === TokenType.UNUSED) return new Uint8Array(0);
    return Buffer.from(text.replaceAll(SPACE, ' '), 'utf8');
  }
}

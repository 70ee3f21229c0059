import { readFileSync } from 'node:fs';
import { ModelFileError } from '../gguf.ts';
import { BpeTokenizer } from './bpe.ts';
import { vocabFromGguf } from './gguf_vocab.ts';
import { SpmTokenizer } from './spm.ts';
import { TokenType, type Vocab } from './vocab.ts';

export interface EncodeOptions {
  /** add BOS/EOS as the model's metadata says (default true) */
  addSpecial?: boolean;
  /** turn control-token text such as "<|im_start|>" into its id (default false) */
  parseSpecial?: boolean;
}

export interface Tokenizer {
  readonly vocab: Vocab;
  encode(text: string, options?: EncodeOptions): number[];
  /** The bytes a token contributes to output text (control tokens contribute none). */
  tokenBytes(id: number): Uint8Array;
  /**
   * encode(text, options)'s ids in slices, each from about `sliceChars` characters of the text
   * (cut only where the tokenizer provably treats both sides independently, so the slices joined
   * are exactly encode's ids): a caller can hand the event loop back between slices. Absent: one
   * slice.
   */
  encodeSlices?(text: string, options?: EncodeOptions, sliceChars?: number): Generator<number[], void, undefined>;
  /**
   * A lower bound on the number of ids encode(text) gives, found without tokenizing (from the
   * text's UTF-8 size and the most bytes one token can stand for); absent, or 0, where the
   * tokenizer gives no such guarantee (normalizers that shrink text, an unknown token that
   * swallows a run of characters).
   */
  minTokens?(text: string): number;
}

/** Characters of text per slice when a long prompt is tokenized in slices (about 1-3 ms of work each). */
export const SLICE_CHARS = 2048;

/** The tokenizer's encodeSlices, or encode as one slice. */
export function* encodeSlices(tokenizer: Tokenizer, text: string, options?: EncodeOptions, sliceChars = SLICE_CHARS): Generator<number[], void, undefined> {
  if (tokenizer.encodeSlices) yield* tokenizer.encodeSlices(text, options, sliceChars);
  else yield tokenizer.encode(text, options);
}

/**
 * Turns a stream of token ids into text without ever emitting half a UTF-8 character: bytes of an
 * incomplete character wait for the next token. With SentencePiece's dummy prefix, the space that
 * the prefix put before the first word of a text is dropped, as llama.cpp and llama2.c do; a
 * continuation keeps its space (" was" after "The little dog"), so prompt + completion reads right.
 */
export class StreamDecoder {
  private readonly utf8 = new TextDecoder('utf-8');
  private atTextStart: boolean;

  /** `previous`: the token before the first one pushed; a text starts when there is none or it is BOS. */
  constructor(
    private readonly tokenizer: Tokenizer,
    previous?: number,
  ) {
    this.atTextStart = previous === undefined || previous === tokenizer.vocab.bos;
  }

  push(id: number): string {
    let bytes = this.tokenizer.tokenBytes(id);
    if (this.atTextStart && bytes.length > 0) {
      this.atTextStart = false;
      if (this.tokenizer.vocab.addSpacePrefix && bytes[0] === 0x20) bytes = bytes.subarray(1);
    }
    return this.utf8.decode(bytes, { stream: true });
  }

  /** Whatever is still buffered (an incomplete character at the very end becomes U+FFFD). */
  flush(): string {
    return this.utf8.decode();
  }
}

/** The text of `ids`; with `previous`, as the continuation of a text that ended with that token. */
export function decode(tokenizer: Tokenizer, ids: number[], previous?: number): string {
  const d = new StreamDecoder(tokenizer, previous);
  return ids.map((id) => d.push(id)).join('') + d.flush();
}

/** The tokenizer a GGUF file's metadata describes (`llama` = SentencePiece, `gpt2` = byte-level BPE). */
export function tokenizerFromGgufMetadata(md: Record<string, unknown>, file: string): Tokenizer {
  const model = md['tokenizer.ggml.model'];
  const vocab = vocabFromGguf(md as never, file);
  if (model === 'llama') return new SpmTokenizer(vocab);
  if (model === 'gpt2') {
    const merges = md['tokenizer.ggml.merges'];
    if (!Array.isArray(merges)) throw new Error(`${file}: BPE tokenizer without tokenizer.ggml.merges`);
    return new BpeTokenizer(vocab, merges as string[], String(md['tokenizer.ggml.pre'] ?? 'default'), file);
  }
  throw new Error(`${file}: unsupported tokenizer.ggml.model "${String(model)}" (supported: llama, gpt2)`);
}

/**
 * llama2.c's tokenizer.bin: int32 max_token_length, then per token: f32 score, int32 byte length,
 * the bytes. Ids 0/1/2 are <unk>/<s>/</s>; "<0xXX>" pieces are byte-fallback tokens.
 */
export function tokenizerFromLlama2c(file: string, vocabSize: number): Tokenizer {
  const buf = readFileSync(file);
  const tokens: string[] = [];
  const scores = new Float32Array(vocabSize);
  const types = new Uint8Array(vocabSize);
  let off = 4;
  for (let i = 0; i < vocabSize; i++) {
    if (off + 8 > buf.length) throw new ModelFileError(`${file}: truncated after ${i} of ${vocabSize} tokens (vocab_size in the checkpoint header)`);
    scores[i] = buf.readFloatLE(off);
    const len = buf.readInt32LE(off + 4);
    if (len < 0 || off + 8 + len > buf.length) throw new ModelFileError(`${file}: token ${i}: bad length ${len} (truncated or corrupt)`);
    const text = buf.toString('utf8', off + 8, off + 8 + len);
    off += 8 + len;
    tokens.push(text);
    types[i] = i === 0 ? TokenType.UNKNOWN : i <= 2 ? TokenType.CONTROL : /^<0x[0-9A-F]{2}>$/.test(text) ? TokenType.BYTE : TokenType.NORMAL;
  }
  if (off !== buf.length) {
    throw new ModelFileError(`${file}: more than the checkpoint's ${vocabSize} tokens (vocab_size in its header): expected the file to end at byte ${off}, got ${buf.length} bytes; pass the checkpoint's own tokenizer with --tokenizer`);
  }
  // llama2.c stores pieces with real spaces; SentencePiece's vocabulary uses ▁.
  const vocab: Vocab = {
    tokens: tokens.map((t) => t.replaceAll(' ', '\u2581')),
    scores,
    types,
    bos: 1,
    eos: 2,
    unk: 0,
    addBos: true,
    addEos: false,
    addSpacePrefix: true,
  };
  return new SpmTokenizer(vocab);
}

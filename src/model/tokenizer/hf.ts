import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfLibTokenizer } from '@huggingface/tokenizers';
import { ModelFileError } from '../gguf.ts';
import { BYTE_TO_CHAR, CHAR_TO_BYTE } from './bpe.ts';
import type { EncodeOptions, Tokenizer } from './index.ts';
import { TokenType, type Vocab, maxTokenInputBytes } from './vocab.ts';

const SPACE = '\u2581'; // ▁, SentencePiece's visible space
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/**
 * How a token's text maps back to bytes, read from tokenizer.json: 'byte-level' (GPT-2's printable
 * byte map, ByteLevel decoder/pre-tokenizer), 'sentencepiece' (▁ for space, <0xXX> byte-fallback
 * tokens: Metaspace, or Replace ▁ -> space), 'text' (the token text as UTF-8).
 */
export type HfTokenStyle = 'byte-level' | 'sentencepiece' | 'text';

type Json = Record<string, unknown>;

/** A component of tokenizer.json and, for Sequence components, everything inside it. */
function components(c: unknown): Json[] {
  if (typeof c !== 'object' || c === null) return [];
  const j = c as Json;
  const inner = [j.decoders, j.pretokenizers, j.normalizers, j.processors].find(Array.isArray) as unknown[] | undefined;
  return [j, ...(inner ?? []).flatMap(components)];
}

function patternString(c: Json): string | undefined {
  const p = c.pattern as Json | undefined;
  return typeof p?.String === 'string' ? p.String : undefined;
}

/** A special token as tokenizer_config.json writes it: a string or an AddedToken object. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && v !== null && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

function readJson(file: string): Json {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ModelFileError(`${file}: ${err instanceof SyntaxError ? `malformed JSON (${err.message})` : `cannot read (${String(err)})`}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ModelFileError(`${file}: expected a JSON object`);
  return parsed as Json;
}

/** Reads a JSON file of the model directory, or undefined when the directory has none. */
export function readOptionalJson(dir: string, name: string): Json | undefined {
  const file = join(dir, name);
  return existsSync(file) ? readJson(file) : undefined;
}

/**
 * The tokenizer of a Hugging Face model directory: `tokenizer.json` through @huggingface/tokenizers,
 * with `tokenizer_config.json` (special tokens, add_bos_token / add_eos_token) and `config.json`
 * (bos/eos ids, vocab_size: the vocabulary is padded with unused ids up to the model's rows).
 */
export function tokenizerFromHfDir(dir: string): HfTokenizer {
  const file = join(dir, 'tokenizer.json');
  if (!existsSync(file)) throw new ModelFileError(`${file}: tokenizer.json not found (a Hugging Face model directory needs one)`);
  return new HfTokenizer(readJson(file), readOptionalJson(dir, 'tokenizer_config.json') ?? {}, readOptionalJson(dir, 'config.json') ?? {}, file);
}

/**
 * A Tokenizer over a Hugging Face `tokenizer.json`. Encoding is the library's (normalizer,
 * pre-tokenizer, model, added tokens); BOS/EOS are added here from the vocabulary's flags so they
 * follow tokenizer_config.json's add_bos_token / add_eos_token where it sets them and the
 * post-processor otherwise. With parseSpecial off, special added tokens are not matched in the
 * text (a second instance without them encodes it as plain text, like llama.cpp and Hugging Face's
 * split_special_tokens); non-special added tokens are always matched. tokenBytes inverts the
 * token text to the exact bytes it stands for, so streaming never splits a character wrongly.
 */
export class HfTokenizer implements Tokenizer {
  readonly vocab: Vocab;
  readonly style: HfTokenStyle;
  private readonly lib: HfLibTokenizer;
  private plain: HfLibTokenizer | undefined;
  private readonly libConfig: Json;

  constructor(
    private readonly json: Json,
    tokenizerConfig: Json,
    modelConfig: Json,
    file = 'tokenizer.json',
  ) {
    const model = json.model as Json | undefined;
    if (typeof model !== 'object' || model === null) throw new ModelFileError(`${file}: no "model" section`);
    if (!Array.isArray(json.added_tokens)) json.added_tokens = [];
    // the library reads special tokens from its config as plain strings
    this.libConfig = { ...tokenizerConfig };
    for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
      const text = tokenText(tokenizerConfig[key]);
      if (text === undefined) delete this.libConfig[key];
      else this.libConfig[key] = text;
    }
    try {
      this.lib = new HfLibTokenizer(json, this.libConfig);
    } catch (err) {
      throw new ModelFileError(`${file}: unsupported or malformed tokenizer: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.style = tokenStyle(json);
    this.vocab = this.buildVocab(model, tokenizerConfig, modelConfig);
  }

  private buildVocab(model: Json, tokenizerConfig: Json, modelConfig: Json): Vocab {
    const ids = this.lib.get_vocab(true);
    let size = 0;
    for (const id of ids.values()) size = Math.max(size, id + 1);
    const rows = modelConfig.vocab_size;
    if (typeof rows === 'number' && Number.isInteger(rows) && rows > size) size = rows;
    const tokens = new Array<string>(size).fill('');
    const types = new Uint8Array(size).fill(TokenType.UNUSED);
    const scores = new Float32Array(size);
    const byteFallback = model.byte_fallback === true || components(this.json.decoder).some((c) => c.type === 'ByteFallback');
    for (const [text, id] of ids) {
      tokens[id] = text;
      types[id] = byteFallback && BYTE_TOKEN.test(text) ? TokenType.BYTE : TokenType.NORMAL;
    }
    if (model.type === 'Unigram' && Array.isArray(model.vocab)) {
      (model.vocab as [string, number][]).forEach((entry, id) => {
        if (id < size && typeof entry?.[1] === 'number') scores[id] = entry[1];
      });
    }
    for (const [id, t] of this.lib.get_added_tokens_decoder()) {
      if (id >= size) continue;
      tokens[id] = t.content;
      types[id] = t.special ? TokenType.CONTROL : TokenType.USER_DEFINED;
    }
    const idOf = (text: string | undefined) => (text === undefined ? undefined : this.lib.token_to_id(text));
    const configId = (key: string) => {
      const v = modelConfig[key];
      const id = Array.isArray(v) ? v[0] : v;
      return typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < size ? id : undefined;
    };

    let unk: number | undefined;
    if (model.type === 'Unigram' && typeof model.unk_id === 'number') unk = model.unk_id;
    else unk = idOf(tokenText(model.unk_token) ?? tokenText(tokenizerConfig.unk_token));
    if (unk !== undefined && types[unk] === TokenType.NORMAL) types[unk] = TokenType.UNKNOWN;

    // what the post-processor adds around a text: one token before (BOS), one after (EOS)
    const bare: number[] = this.lib.encode('a', { add_special_tokens: false }).ids;
    const full: number[] = this.lib.encode('a', { add_special_tokens: true }).ids;
    const at = full.findIndex((_, i) => full.slice(i, i + bare.length).every((id, j) => id === bare[j]));
    const before = at >= 0 ? full.slice(0, at) : [];
    const after = at >= 0 ? full.slice(at + bare.length) : [];

    const bos = idOf(tokenText(tokenizerConfig.bos_token)) ?? configId('bos_token_id') ?? (before.length === 1 ? before[0] : undefined);
    const eos = idOf(tokenText(tokenizerConfig.eos_token)) ?? configId('eos_token_id') ?? (after.length === 1 ? after[0] : undefined);
    const addBos = typeof tokenizerConfig.add_bos_token === 'boolean' ? tokenizerConfig.add_bos_token : before.length === 1 && before[0] === bos;
    const addEos = typeof tokenizerConfig.add_eos_token === 'boolean' ? tokenizerConfig.add_eos_token : after.length === 1 && after[0] === eos;
    for (const id of [bos, eos]) if (id !== undefined && (types[id] === TokenType.NORMAL || types[id] === TokenType.UNUSED)) types[id] = TokenType.CONTROL;

    return {
      tokens,
      scores,
      types,
      bos: bos ?? null,
      eos: eos ?? null,
      unk: unk ?? null,
      addBos,
      addEos,
      addSpacePrefix: this.style === 'sentencepiece' && prependsSpace(this.json),
    };
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const addSpecial = options.addSpecial ?? true;
    const out: number[] = [];
    if (addSpecial && this.vocab.addBos && this.vocab.bos !== null) out.push(this.vocab.bos);
    this.encodeInto(options.parseSpecial ? this.lib : this.plainLib(), text, out);
    if (addSpecial && this.vocab.addEos && this.vocab.eos !== null) out.push(this.vocab.eos);
    return out;
  }

  private encodeInto(lib: HfLibTokenizer, text: string, out: number[]): void {
    if (text.length === 0) return;
    for (const id of lib.encode(text, { add_special_tokens: false }).ids) {
      if (typeof id === 'number') out.push(id);
      else if (this.vocab.unk !== null) out.push(this.vocab.unk);
    }
  }

  /**
   * encode's ids in slices of about `sliceChars` characters, where the pipeline is one whose cuts
   * are provably neutral (see sliceCuts); otherwise in one slice.
   */
  *encodeSlices(text: string, options: EncodeOptions = {}, sliceChars = Infinity): Generator<number[], void, undefined> {
    const addSpecial = options.addSpecial ?? true;
    const lib = options.parseSpecial ? this.lib : this.plainLib();
    let out: number[] = [];
    if (addSpecial && this.vocab.addBos && this.vocab.bos !== null) out.push(this.vocab.bos);
    for (let start = 0; start < text.length; ) {
      const end = this.cuts ? this.cuts(text, start + sliceChars) : text.length;
      this.encodeInto(lib, text.slice(start, end), out);
      start = end;
      if (start < text.length) {
        yield out;
        out = [];
      }
    }
    if (addSpecial && this.vocab.addEos && this.vocab.eos !== null) out.push(this.vocab.eos);
    yield out;
  }

  private cutsFn: ((text: string, at: number) => number) | null | undefined;
  private get cuts(): ((text: string, at: number) => number) | null {
    if (this.cutsFn === undefined) this.cutsFn = sliceCuts(this.json, this.libConfig);
    return this.cutsFn;
  }

  private bound: { maxBytes: number; dropped: Uint8Array | null } | null | undefined;
  /**
   * Where the pipeline keeps every input byte (see keepsEveryByte): at most maxTokenInputBytes of
   * it per token, not counting the bytes a byte-level vocabulary lacks (the library drops them, or
   * makes them unknown tokens). 0 for other pipelines.
   */
  minTokens(text: string): number {
    if (this.bound === undefined) {
      const vocab = this.lib.get_vocab(true);
      const dropped = keepsEveryByte(this.json, this.libConfig, vocab);
      this.bound = dropped ? { maxBytes: maxTokenInputBytes(this.vocab, (id) => this.tokenBytes(id)), dropped: dropped.some((d) => d) ? dropped : null } : null;
    }
    if (!this.bound) return 0;
    const bytes = Buffer.from(text, 'utf8');
    let counted = bytes.length;
    if (this.bound.dropped) for (const b of bytes) counted -= this.bound.dropped[b];
    return Math.ceil(counted / this.bound.maxBytes);
  }

  /** The library instance without special added tokens, built on first use. */
  private plainLib(): HfLibTokenizer {
    if (!this.plain) {
      const added = this.json.added_tokens as Json[];
      const kept = added.filter((t) => t.special !== true);
      this.plain = kept.length === added.length ? this.lib : new HfLibTokenizer({ ...this.json, added_tokens: kept }, this.libConfig);
    }
    return this.plain;
  }

  tokenBytes(id: number): Uint8Array {
    const type = this.vocab.types[id];
    const text = this.vocab.tokens[id];
    if (text === undefined || type === TokenType.CONTROL || type === TokenType.UNUSED || type === TokenType.UNKNOWN) return new Uint8Array(0);
    if (type === TokenType.USER_DEFINED) return Buffer.from(text, 'utf8');
    if (type === TokenType.BYTE) return new Uint8Array([parseInt(BYTE_TOKEN.exec(text)![1], 16)]);
    if (this.style === 'byte-level') {
      const out: number[] = [];
      for (const ch of text) {
        const b = CHAR_TO_BYTE.get(ch);
        if (b !== undefined) out.push(b);
        else out.push(...Buffer.from(ch, 'utf8')); // not from the byte map: the character itself
      }
      return Uint8Array.from(out);
    }
    if (this.style === 'sentencepiece') return Buffer.from(text.replaceAll(SPACE, ' '), 'utf8');
    return Buffer.from(text, 'utf8');
  }
}

function tokenStyle(json: Json): HfTokenStyle {
  const decoder = components(json.decoder);
  const pre = components(json.pre_tokenizer);
  if (decoder.some((c) => c.type === 'ByteLevel')) return 'byte-level';
  const spmDecoder = decoder.some((c) => c.type === 'Metaspace' || (c.type === 'Replace' && patternString(c) === SPACE));
  if (spmDecoder || pre.some((c) => c.type === 'Metaspace')) return 'sentencepiece';
  if (components(json.normalizer).some((c) => c.type === 'Replace' && patternString(c) === ' ' && c.content === SPACE)) return 'sentencepiece';
  if (pre.some((c) => c.type === 'ByteLevel')) return 'byte-level';
  return 'text';
}

/** SentencePiece's dummy prefix: a Prepend ▁ normalizer or a Metaspace pre-tokenizer that prepends. */
function prependsSpace(json: Json): boolean {
  if (components(json.normalizer).some((c) => c.type === 'Prepend' && c.prepend === SPACE)) return true;
  return components(json.pre_tokenizer).some(
    (c) => c.type === 'Metaspace' && (c.prepend_scheme === undefined ? c.add_prefix_space !== false : c.prepend_scheme !== 'never'),
  );
}

const LETTER = /^\p{L}$/u;
const letterAt = (text: string, i: number): boolean => i < text.length && LETTER.test(String.fromCodePoint(text.codePointAt(i)!));

/**
 * Where the library's pipeline treats the two sides of a cut independently, a function giving the
 * first such cut at or after a position (or the text's length); null for pipelines not known to
 * allow it. Known: no normalizer, a BPE model (words encoded one by one), and GPT-2's ByteLevel
 * pre-tokenizer (regex on, no prefix space), alone or after Digits. The cut goes before a space
 * followed by a letter. The regex's scan has a match boundary there: only its whitespace
 * alternatives hold a space other than at their start, and a run of whitespace before " letter"
 * ends short of its last space (`\s+(?!\S)` gives it back to ` ?\p{L}+`); the regex has no
 * lookbehind, so the scan from the cut sees the right side alone, and what ends at the cut ends
 * there in the left side too. No digit run spans a space. The added tokens are kept out of reach
 * (none within their longest length of the cut), so neither their matching nor their
 * lstrip/rstrip crosses it.
 */
function sliceCuts(json: Json, libConfig: Json): ((text: string, at: number) => number) | null {
  if (json.normalizer != null || libConfig.remove_space === true || libConfig.do_lowercase_and_remove_accent === true) return null;
  if ((json.model as Json).type !== 'BPE') return null;
  const pre = json.pre_tokenizer as Json | null | undefined;
  const steps = pre?.type === 'Sequence' && Array.isArray(pre.pretokenizers) ? (pre.pretokenizers as Json[]) : pre ? [pre] : [];
  const byteLevel = steps.filter((c) => c.type === 'ByteLevel');
  if (byteLevel.length !== 1 || byteLevel[0] !== steps.at(-1) || byteLevel[0].use_regex === false || byteLevel[0].add_prefix_space === true) return null;
  if (!steps.every((c) => c.type === 'ByteLevel' || c.type === 'Digits')) return null;
  const added = (json.added_tokens as Json[]).map((t) => String(t.content ?? '')).filter((t) => t.length > 0);
  const reach = Math.max(0, ...added.map((t) => t.length));
  return (text, at) => {
    for (let p = text.indexOf(' ', Math.max(at, 1)); p >= 0; p = text.indexOf(' ', p + 1)) {
      if (!letterAt(text, p + 1)) continue;
      const near = text.slice(Math.max(0, p - reach), p + reach);
      if (!added.some((t) => near.includes(t))) return p;
    }
    return text.length;
  };
}

/**
 * Whether each token of the pipeline stands for at most its own bytes of input (see
 * maxTokenInputBytes): no normalizer, no config or added-token stripping that drops whitespace,
 * pre-tokenizers that keep all text, and a BPE model that reaches every byte (byte-level, or byte
 * fallback with all 256 byte tokens), so no unknown token swallows a run of characters. Returns
 * the bytes (1 at their value) that may produce no token of their own, or null when there is no
 * such guarantee.
 */
function keepsEveryByte(json: Json, libConfig: Json, vocab: Map<string, number>): Uint8Array | null {
  if (json.normalizer != null || libConfig.remove_space === true || libConfig.do_lowercase_and_remove_accent === true) return null;
  if ((json.added_tokens as Json[]).some((t) => t.lstrip === true || t.rstrip === true)) return null;
  const keepsText = (c: Json) => c.type === 'Sequence' || c.type === 'ByteLevel' || c.type === 'Digits' || c.type === 'Metaspace' || (c.type === 'Split' && c.invert === false && String(c.behavior ?? '').toLowerCase() !== 'removed');
  if (!components(json.pre_tokenizer).every(keepsText)) return null;
  const model = json.model as Json;
  if (model.type !== 'BPE') return null;
  // byte-level: a byte whose character the vocabulary lacks is dropped or becomes an unknown token
  // (fused with its neighbours, maybe), so only the other bytes count
  if (components(json.pre_tokenizer).some((c) => c.type === 'ByteLevel')) return Uint8Array.from(BYTE_TO_CHAR, (c) => (vocab.has(c) ? 0 : 1));
  const byteTokens = Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  return model.byte_fallback === true && byteTokens.every((t) => vocab.has(t)) ? new Uint8Array(256) : null;
}

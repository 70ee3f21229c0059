import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { openTokenizer } from '../src/model/source.ts';
import { StreamDecoder, decode, tokenizerFromLlama2c } from '../src/model/tokenizer/index.ts';
import { VOCAB_DIR, loadVectors } from './helpers/vocab_vectors.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');

describe("llama.cpp's tokenizer test vectors", () => {
  for (const name of ['ggml-vocab-llama-spm.gguf', 'ggml-vocab-gpt-2.gguf']) {
    it(name, async () => {
      const tok = await openTokenizer(join(VOCAB_DIR, name));
      const vectors = loadVectors(name);
      expect(vectors.length).toBeGreaterThan(40);
      for (const { text, ids } of vectors) expect(tok.encode(text, { addSpecial: false }), JSON.stringify(text)).toEqual(ids);
    });
  }
});

describe('stories260K tokenizer', () => {
  it('GGUF and llama2.c tok512.bin agree, with BOS', async () => {
    const fromGguf = await openTokenizer(join(STORIES, 'stories260K.gguf'));
    const fromBin = tokenizerFromLlama2c(join(STORIES, 'tok512.bin'), 512);
    for (const text of ['Once upon a time', 'Lily saw a big, red ball!', '  two  spaces', 'émoji 🦙 and ünïcode', '']) {
      const ids = fromGguf.encode(text);
      expect(ids[0]).toBe(1);
      expect(fromBin.encode(text)).toEqual(ids);
      expect(decode(fromGguf, ids.slice(1))).toBe(text);
    }
  });

  it('incremental decoding never emits half a UTF-8 character', async () => {
    const tok = await openTokenizer(join(STORIES, 'stories260K.gguf'));
    const text = 'a 🦙 b ü';
    const ids = tok.encode(text, { addSpecial: false });
    // the 512-token vocabulary has no 🦙: it must come out as four byte tokens
    expect(ids.length).toBeGreaterThan(6);
    const d = new StreamDecoder(tok);
    const pieces = ids.map((id) => d.push(id));
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    expect(pieces.join('') + d.flush()).toBe(text);
  });
});

describe('continuations keep their leading space', () => {
  it('drops the dummy-prefix space only at the start of a text (no previous token, or BOS)', async () => {
    const tok = await openTokenizer(join(STORIES, 'stories260K.gguf'));
    const prompt = tok.encode('The little dog');
    const was = tok.encode('was', { addSpecial: false }); // the dummy prefix makes it "▁was"
    expect(tok.vocab.tokens[was[0]].startsWith('\u2581')).toBe(true); // a word piece, as SentencePiece writes it
    // llama2.c and llama.cpp print "The little dog was": the continuation starts with its space
    expect(decode(tok, was, prompt[prompt.length - 1])).toBe(' was');
    expect(decode(tok, prompt.slice(1)) + decode(tok, was, prompt[prompt.length - 1])).toBe('The little dog was');
    // a text of its own starts without the space, after BOS too
    expect(decode(tok, was)).toBe('was');
    expect(decode(tok, was, tok.vocab.bos!)).toBe('was');
  });
});

describe('tokenizer errors', () => {
  it('names the file and the unsupported tokenizer', async () => {
    const { tokenizerFromGgufMetadata } = await import('../src/model/tokenizer/index.ts');
    expect(() => tokenizerFromGgufMetadata({ 'tokenizer.ggml.model': 'rwkv', 'tokenizer.ggml.tokens': ['a'] }, 'x.gguf')).toThrow(/x\.gguf.*rwkv.*llama, gpt2/);
    expect(() =>
      tokenizerFromGgufMetadata({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a'], 'tokenizer.ggml.merges': [], 'tokenizer.ggml.pre': 'mystery' }, 'y.gguf'),
    ).toThrow(/y\.gguf.*pre-tokenizer "mystery"/);
  });
});

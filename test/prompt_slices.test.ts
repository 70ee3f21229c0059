import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { collectSlicesUnblocking } from '../src/model/prompt.ts';
import { openTokenizer } from '../src/model/source.ts';
import { HfTokenizer } from '../src/model/tokenizer/hf.ts';
import { SLICE_CHARS, type Tokenizer } from '../src/model/tokenizer/index.ts';
import { STORIES_REFERENCE } from './helpers/stories.ts';
import { VOCAB_DIR, loadVectors } from './helpers/vocab_vectors.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const SMOL = join(repoRoot, '..', 'shared', 'models', 'smollm2-135m-instruct');
const LLAMA_SPM = join(VOCAB_DIR, 'ggml-vocab-llama-spm.gguf');
const GPT2 = join(VOCAB_DIR, 'ggml-vocab-gpt-2.gguf');

/**
 * Real texts: llama.cpp's tokenizer test strings (runs of spaces and newlines, emoji, CJK, code,
 * digits) joined three ways, control-token text among them, the stories reference, and this
 * project's API documentation (29 k characters of prose, tables and code).
 */
function realTexts(): string[] {
  const strings = loadVectors('ggml-vocab-llama-spm.gguf').map((v) => v.text);
  return [strings.join(' '), strings.join(''), strings.join('\n<|im_start|>user <s> '), STORIES_REFERENCE.repeat(4), readFileSync(join(repoRoot, 'docs', 'api.md'), 'utf8')];
}

const slicesOf = (tok: Tokenizer, text: string, parseSpecial: boolean, sliceChars: number) => [...tok.encodeSlices!(text, { parseSpecial }, sliceChars)];

describe('tokenizing a prompt in slices', () => {
  // SentencePiece (stories260K, and Llama's 32000 pieces with their runs of ▁), byte-level BPE
  // (GPT-2 in GGUF), and the Hugging Face library (SmolLM2's tokenizer.json)
  for (const [name, path] of [['stories260K', STORIES], ['llama-spm', LLAMA_SPM], ['gpt-2', GPT2], ['smollm2 (tokenizer.json)', SMOL]]) {
    it(`${name}: the slices joined are exactly the ids of one pass`, async () => {
      const tok = await openTokenizer(path);
      for (const text of realTexts()) {
        for (const parseSpecial of [false, true]) {
          const whole = tok.encode(text, { parseSpecial });
          for (const sliceChars of [1, 7, 64]) {
            const slices = slicesOf(tok, text, parseSpecial, sliceChars);
            expect(slices.flat(), `${JSON.stringify(text.slice(0, 40))}… parseSpecial ${parseSpecial}, slices of ${sliceChars}`).toEqual(whole);
            // the cuts happen: every text here has a usable cut within 256 characters of any
            // position (spaces between words), so it comes in at least length / (64 + 256) slices
            if (sliceChars === 64) expect(slices.length).toBeGreaterThanOrEqual(Math.floor(text.length / 320));
          }
        }
      }
    });
  }

  it('no cut separates an added token from its text, or from the whitespace it strips', () => {
    // SmolLM2's tokenizer.json with two added tokens of the kind other models have: one whose text
    // holds a space between letters (where a cut would otherwise go), one that strips the
    // whitespace after it (rstrip), which a cut after it would keep from it
    const json = JSON.parse(readFileSync(join(SMOL, 'tokenizer.json'), 'utf8')) as { added_tokens: Record<string, unknown>[] };
    const token = (id: number, content: string, rstrip: boolean) => ({ id, content, single_word: false, lstrip: false, rstrip, normalized: false, special: false });
    json.added_tokens.push(token(49152, 'named Lily', false), token(49153, 'park.', true));
    const tok = new HfTokenizer(json, {}, { vocab_size: 49154 });
    const text = STORIES_REFERENCE.repeat(3);
    const whole = tok.encode(text);
    expect(whole.filter((id) => id >= 49152)).toEqual([49152, 49153, 49152, 49153, 49152, 49153]);
    expect(slicesOf(tok, text, false, 1).flat()).toEqual(whole);
  });

  it("the slices of each of llama.cpp's test strings are llama.cpp's ids", async () => {
    // an oracle outside this code: cut as finely as the tokenizers allow (1 character per slice)
    for (const name of ['ggml-vocab-llama-spm.gguf', 'ggml-vocab-gpt-2.gguf']) {
      const tok = await openTokenizer(join(VOCAB_DIR, name));
      for (const { text, ids } of loadVectors(name)) expect([...tok.encodeSlices!(text, { addSpecial: false }, 1)].flat(), JSON.stringify(text)).toEqual(ids);
    }
  });
});

describe("a prompt's least token count from its size", () => {
  it('never exceeds the ids a text really has, and is reached by the longest token', async () => {
    const smol = await openTokenizer(SMOL);
    // SmolLM2's longest token is a newline and 80 spaces (81 bytes): 50 of them are 50 tokens, and
    // 4050 bytes / 81 = 50 is the bound
    const longest = ('\n' + ' '.repeat(80)).repeat(50);
    expect(smol.encode(longest, { addSpecial: false })).toHaveLength(50);
    expect(smol.minTokens!(longest)).toBe(50);
    // control characters whose byte SmolLM2's vocabulary lacks produce no token: left out of the count
    const unseen = '\x04\x06\x13\x14\x16\x1d'.repeat(100) + 'abc';
    expect(smol.minTokens!(unseen)).toBeLessThanOrEqual(smol.encode(unseen, { addSpecial: false }).length);
    for (const path of [STORIES, LLAMA_SPM, GPT2, SMOL]) {
      const tok = await openTokenizer(path);
      for (const text of [...realTexts(), longest, unseen, '<|im_start|>'.repeat(30), '<s></s>'.repeat(30)]) {
        for (const parseSpecial of [false, true]) expect(tok.minTokens!(text), `${path}: ${JSON.stringify(text.slice(0, 30))}`).toBeLessThanOrEqual(tok.encode(text, { addSpecial: false, parseSpecial }).length);
      }
    }
  });

  it('rules out a 1 MB prompt for contexts up to 8192 tokens without tokenizing it', async () => {
    const prose = STORIES_REFERENCE.repeat(Math.ceil(1e6 / STORIES_REFERENCE.length)).slice(0, 1e6);
    // the longest tokens: 7 bytes (stories260K), 81 (SmolLM2): 1e6 / 81 = 12346 > 8192
    expect((await openTokenizer(STORIES)).minTokens!(prose)).toBe(Math.ceil(1e6 / 7));
    expect((await openTokenizer(SMOL)).minTokens!(prose)).toBe(Math.ceil(1e6 / 81));
  });
});

describe('collectSlicesUnblocking', () => {
  /** Counts the turns of the event loop that other work gets while `run` goes. */
  async function turnsDuring<T>(run: () => Promise<T>): Promise<{ result: T; turns: number }> {
    let turns = 0;
    let done = false;
    const tick = () => {
      if (done) return;
      turns++;
      setImmediate(tick);
    };
    setImmediate(tick);
    const result = await run();
    done = true;
    return { result, turns };
  }

  it('hands the event loop back between slices, with the same ids', async () => {
    const tok = await openTokenizer(STORIES);
    const text = STORIES_REFERENCE.repeat(100); // 20 k characters
    let slices = 0;
    const counted = function* () {
      for (const s of tok.encodeSlices!(text, { parseSpecial: true }, SLICE_CHARS)) {
        slices++;
        yield s;
      }
    };
    const { result, turns } = await turnsDuring(() => collectSlicesUnblocking(counted()));
    expect(result).toEqual(tok.encode(text, { parseSpecial: true }));
    // one slice per SLICE_CHARS characters (cut at the next space): at least 20 k / (2048 + 16)
    expect(slices).toBeGreaterThanOrEqual(Math.floor(text.length / (SLICE_CHARS + 16)));
    // other work ran between every two slices (a loop that never yields gives it no turn at all)
    expect(turns).toBeGreaterThanOrEqual(slices - 1);
  });

  it('stops once the ids pass the limit, without tokenizing the rest', async () => {
    const tok = await openTokenizer(STORIES);
    let slices = 0;
    const counted = function* () {
      for (const s of tok.encodeSlices!(STORIES_REFERENCE.repeat(100), { parseSpecial: true }, SLICE_CHARS)) {
        slices++;
        yield s;
      }
    };
    // a first slice of 2048 characters holds at least 2048 / 7 = 293 ids (7 bytes per token at most)
    expect(await collectSlicesUnblocking(counted(), 100)).toBeNull();
    expect(slices).toBe(1);
  });
});

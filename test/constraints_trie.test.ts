import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConstraintError, type TokenAutomaton, allowedTokens, checkAutomaton, edgesOf, nextState, tokensToAccept } from '../src/constraints/automaton.ts';
import { type PackedSequences, buildTrie, packSequences, tokenizeSet } from '../src/constraints/trie.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { openTokenizer } from '../src/model/source.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { VOCAB_DIR } from './helpers/vocab_vectors.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');

/**
 * A random set with what a trie has to get right: lengths 1..maxLen, members that extend a few
 * shared stems (so prefixes are shared and some members are prefixes of others), duplicates.
 */
function randomSet(seed: number, n: number, vocab: number, maxLen = 12): number[][] {
  const rng = mulberry32(seed);
  const int = (k: number) => Math.floor(rng() * k);
  const word = (len: number) => Array.from({ length: len }, () => int(vocab));
  const stems = Array.from({ length: 1 + int(4) }, () => word(1 + int(maxLen - 1)));
  const set: number[][] = [];
  for (let i = 0; i < n; i++) {
    const r = rng();
    if (r < 0.15 && set.length > 0) set.push([...set[int(set.length)]]); // duplicate
    else if (r < 0.6) {
      const stem = stems[int(stems.length)];
      const keep = int(stem.length + 1);
      const seq = [...stem.slice(0, keep), ...word(int(maxLen - keep + 1))];
      set.push(seq.length > 0 ? seq : word(1));
    } else set.push(word(1 + int(maxLen)));
  }
  return set;
}

/** Per distinct prefix (as a string key): its next tokens, and whether a member ends there. */
function prefixTable(set: readonly (readonly number[])[]) {
  const table = new Map<string, { depth: number; next: Set<number>; ends: boolean; shortest: number }>();
  for (const seq of set) {
    for (let d = 0; d <= seq.length; d++) {
      const k = seq.slice(0, d).join(',');
      const row = table.get(k) ?? { depth: d, next: new Set<number>(), ends: false, shortest: Infinity };
      if (d < seq.length) row.next.add(seq[d]);
      else row.ends = true;
      row.shortest = Math.min(row.shortest, seq.length - d);
      table.set(k, row);
    }
  }
  return table;
}

function walk(a: TokenAutomaton, seq: readonly number[]): number {
  let s = 0;
  for (const t of seq) {
    s = nextState(a, s, t);
    if (s < 0) return -1;
  }
  return s;
}

/** Every token sequence spelled by a path from the start to an accepting state (the trie has no cycles). */
function members(a: TokenAutomaton): string[] {
  const out: string[] = [];
  const visit = (s: number, path: number[]) => {
    if (a.accepting[s]) out.push(path.join(','));
    for (let e = a.indptr[s]; e < a.indptr[s + 1]; e++) visit(a.pairs[2 * e + 1], [...path, a.pairs[2 * e]]);
  };
  visit(0, []);
  return out;
}

/** The trie of `set` against the brute-force prefix table, exactly. */
function expectTrieOf(set: number[][], vocab: number, enumerate = true): void {
  const trie = buildTrie(set, { vocab });
  const a = trie.automaton;
  checkAutomaton(a, vocab);
  const table = prefixTable(set);
  const distinct = new Set(set.map((s) => s.join(',')));
  const longest = Math.max(...set.map((s) => s.length));
  expect(a.states).toBe(table.size); // one state per distinct prefix, no more
  expect(edgesOf(a)).toBe(a.states - 1);
  expect(trie.sequences).toBe(distinct.size);
  const dist = tokensToAccept(a);
  const fanout = new Uint32Array(longest + 1);
  for (const [k, row] of table) {
    const prefix = k === '' ? [] : k.split(',').map(Number);
    const s = walk(a, prefix);
    expect(s, `prefix [${k}]`).toBeGreaterThanOrEqual(0);
    expect(allowedTokens(a, s), `prefix [${k}]`).toEqual([...row.next].sort((x, y) => x - y));
    expect(a.accepting[s], `prefix [${k}]`).toBe(row.ends ? 1 : 0);
    expect(dist[s], `prefix [${k}]`).toBe(row.shortest);
    expect(s).toBeGreaterThanOrEqual(trie.depthStart[row.depth]);
    expect(s).toBeLessThan(trie.depthStart[row.depth + 1]);
    fanout[row.depth] = Math.max(fanout[row.depth], row.next.size);
  }
  expect(trie.fanout).toEqual(fanout);
  expect(trie.depthStart.length).toBe(longest + 2);
  expect(trie.depthStart[longest + 1]).toBe(a.states);
  if (enumerate) expect(members(a).sort()).toEqual([...distinct].sort());
  // the packed form builds the same arrays
  const packed = buildTrie(packSequences(set), { vocab });
  expect(packed.automaton).toEqual(a);
  expect(packed.fanout).toEqual(trie.fanout);
  expect(packed.depthStart).toEqual(trie.depthStart);
}

describe('buildTrie against a brute-force prefix table', () => {
  it('a small set by hand: shared prefixes, a member that is a prefix of another, a duplicate', () => {
    const trie = buildTrie([[1, 2, 3], [1, 2], [1, 4], [5], [1, 2, 3]], { vocab: 8 });
    // level order: 0 = [], 1 = [1], 2 = [5], 3 = [1,2], 4 = [1,4], 5 = [1,2,3]
    expect(trie.automaton).toEqual({
      states: 6,
      indptr: Uint32Array.from([0, 2, 4, 4, 5, 5, 5]),
      pairs: Uint32Array.from([1, 1, 5, 2, 2, 3, 4, 4, 3, 5]),
      accepting: Uint8Array.from([0, 0, 1, 1, 1, 1]),
    });
    expect([...trie.fanout]).toEqual([2, 2, 1, 0]);
    expect([...trie.depthStart]).toEqual([0, 1, 3, 5, 6]);
    expect(trie.sequences).toBe(4);
  });

  for (const [vocab, n, seed] of [
    [2, 40, 1],
    [3, 200, 2],
    [17, 300, 3],
    [2048, 500, 4],
    [151_936, 400, 5],
  ] as const) {
    it(`random sets, vocab ${vocab}, ${n} sequences`, () => {
      for (let r = 0; r < 5; r++) expectTrieOf(randomSet(seed * 100 + r, n, vocab), vocab);
    });
  }

  it('single-token members, one very long member among short ones, all duplicates, the empty member', () => {
    expectTrieOf([[7], [3], [7], [0], [9]], 10);
    const rng = mulberry32(9);
    const long = Array.from({ length: 1000 }, () => Math.floor(rng() * 50_000));
    expectTrieOf([long, long.slice(0, 1), [...long.slice(0, 500), 1], ...randomSet(10, 100, 50_000, 6)], 50_000, true);
    expectTrieOf(Array.from({ length: 20 }, () => [4, 4, 4]), 5);
    // an empty member: the start state accepts (the output may be empty)
    const withEmpty = buildTrie([[], [2, 1]], { vocab: 3 });
    expect(withEmpty.automaton.accepting[0]).toBe(1);
    expect(withEmpty.sequences).toBe(2);
    expectTrieOf([[], [2, 1], [2], []], 3);
    const onlyEmpty = buildTrie([[]]);
    expect(onlyEmpty.automaton).toEqual({ states: 1, indptr: Uint32Array.from([0, 0]), pairs: new Uint32Array(0), accepting: Uint8Array.from([1]) });
    expect([...onlyEmpty.fanout]).toEqual([0]);
  });

  it('refuses an empty set and tokens outside the vocabulary, naming the sequence', () => {
    expect(() => buildTrie([])).toThrow(ConstraintError);
    expect(() => buildTrie({ flat: new Uint32Array(0), offsets: Uint32Array.from([0]) })).toThrow(/empty set/);
    expect(() => buildTrie([[1], [2, 3], [0, 8]], { vocab: 8 })).toThrow(/sequence 2: token 8 at position 1 .*vocabulary size 8/);
    expect(() => buildTrie([[1], [-1]], { vocab: 8 })).toThrow(/sequence 1: token -1/);
    expect(() => buildTrie([[1.5]])).toThrow(/sequence 0: token 1.5/);
    expect(() => buildTrie({ flat: Uint32Array.from([1, 2, 9]), offsets: Uint32Array.from([0, 2, 3]) }, { vocab: 8 })).toThrow(/sequence 1: token 9 at position 0/);
    expect(() => buildTrie({ flat: Uint32Array.from([1, 2]), offsets: Uint32Array.from([0, 2, 1]) })).toThrow(/sequence 1: offsets decrease/);
    expect(() => buildTrie({ flat: Uint32Array.from([1, 2]), offsets: Uint32Array.from([0, 3]) })).toThrow(ConstraintError);
  });
});

describe('buildTrie at scale', () => {
  it('300k random 8-token sequences over 2048 tokens (with duplicates): level widths, fan-out, depth to accept', () => {
    const n = 300_000;
    const L = 8;
    const vocab = 2048;
    const rng = mulberry32(12);
    const flat = new Uint32Array(n * L);
    for (let i = 0; i < flat.length; i++) flat[i] = Math.floor(rng() * vocab);
    flat.copyWithin((n - 1000) * L, 0, 1000 * L); // the last 1000 repeat the first 1000
    const offsets = Uint32Array.from({ length: n + 1 }, (_, i) => i * L);
    const trie = buildTrie({ flat, offsets }, { vocab });
    const a = trie.automaton;
    checkAutomaton(a, vocab);
    // the number of distinct prefixes of each length, counted independently (tokens < 2^16: one char each)
    const words = Array.from({ length: n }, (_, i) => String.fromCharCode(...flat.subarray(i * L, (i + 1) * L)));
    for (let d = 0; d <= L; d++) {
      const prefixes = new Set(words.map((word) => word.slice(0, d)));
      expect(trie.depthStart[d + 1] - trie.depthStart[d], `depth ${d}`).toBe(prefixes.size);
    }
    expect(trie.sequences).toBe(new Set(words).size);
    expect(trie.sequences).toBe(n - 1000); // 88 random bits each: no other collisions at this size
    // per depth: every state's distance to accepting is L - d (all members have length L), only depth L accepts, the widest row is the fan-out
    const dist = tokensToAccept(a);
    for (let d = 0; d <= L; d++) {
      let fan = 0;
      let wrong = 0;
      for (let s = trie.depthStart[d]; s < trie.depthStart[d + 1]; s++) {
        if (dist[s] !== L - d || a.accepting[s] !== (d === L ? 1 : 0)) wrong++;
        fan = Math.max(fan, a.indptr[s + 1] - a.indptr[s]);
      }
      expect(wrong, `depth ${d}`).toBe(0);
      expect(trie.fanout[d]).toBe(fan);
    }
    expect(trie.fanout[0]).toBe(vocab); // 300k draws hit every first token
    for (let i = 0; i < n; i += 997) expect(a.accepting[walk(a, [...flat.subarray(i * L, (i + 1) * L)])]).toBe(1);
  });
});

describe('tokenizeSet', () => {
  const strings = ['red', 'blue ball', 'Lily', 'Once upon a time', '  two  spaces', 'émoji 🦙', 'a', 'x\ny'];

  it('SentencePiece (stories260K): each string as a text of its own, dummy prefix included; round trips', async () => {
    const tok = await openTokenizer(STORIES);
    expect(tok.vocab.addSpacePrefix).toBe(true);
    const packed: PackedSequences = await tokenizeSet(strings, tok);
    const trie = buildTrie(packed, { vocab: tok.vocab.tokens.length });
    const prompt = tok.encode('The ball is');
    strings.forEach((s, i) => {
      const ids = [...packed.flat.subarray(packed.offsets[i], packed.offsets[i + 1])];
      expect(ids).toEqual(tok.encode(s, { addSpecial: false }));
      expect(decode(tok, ids)).toBe(s); // a completion that starts the text (no prompt, or BOS)
      expect(decode(tok, ids, tok.vocab.bos!)).toBe(s);
      expect(decode(tok, ids, prompt[prompt.length - 1])).toBe(` ${s}`); // after a prompt it keeps its space
      expect(trie.automaton.accepting[walk(trie.automaton, ids)]).toBe(1);
    });
    expect(trie.sequences).toBe(strings.length);
  });

  it('byte-level BPE (gpt-2 vocabulary): round trips with or without a previous token', async () => {
    const tok = await openTokenizer(join(VOCAB_DIR, 'ggml-vocab-gpt-2.gguf'));
    const packed = await tokenizeSet(strings, tok);
    strings.forEach((s, i) => {
      const ids = [...packed.flat.subarray(packed.offsets[i], packed.offsets[i + 1])];
      expect(decode(tok, ids)).toBe(s);
      expect(decode(tok, ids, 13)).toBe(s);
    });
  });

  it('names a string that encodes to nothing', async () => {
    const tok = await openTokenizer(STORIES);
    await expect(tokenizeSet(['red', ''], tok)).rejects.toThrow(/string 1 \(""\) encodes to no tokens/);
  });
});

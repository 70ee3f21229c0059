/**
 * Sets of token sequences to the STATIC trie (REFERENCE.md section 3): every distinct prefix of a
 * member is a state, a state accepts when a whole member ends there. Built level by level (a
 * most-significant-digit radix sort that is also the trie): the sequences reaching the states of
 * depth d are grouped by state, sorted by their token at d within each group, and each run of one
 * token becomes a child. Only typed arrays, so ten million sequences build in seconds.
 *
 * States are numbered in level order (depth by depth, and within a depth in the sorted order of
 * their prefixes), so the states of one depth are contiguous (`depthStart`) and the edge into
 * state c is edge c - 1.
 */
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { ConstraintError, type TokenAutomaton } from './automaton.ts';

/** Sequences end to end: sequence i is flat[offsets[i] .. offsets[i + 1]] (no JS array per sequence). */
export interface PackedSequences {
  readonly flat: Uint32Array;
  /** [sequences + 1], non-decreasing */
  readonly offsets: Uint32Array;
}

export type SequenceSet = readonly (readonly number[])[] | PackedSequences;

export interface TrieOptions {
  /** token ids must be below this (the model's vocabulary size); default: any u32 */
  vocab?: number;
}

export interface Trie {
  automaton: TokenAutomaton;
  /** [longest + 1]: the most edges out of one state at each depth (0 at the deepest) */
  fanout: Uint32Array;
  /** [longest + 2]: the states of depth d are depthStart[d] .. depthStart[d + 1] */
  depthStart: Uint32Array;
  /** distinct members (duplicates dropped); an empty member makes the start state accepting */
  sequences: number;
}

const U32 = 2 ** 32;

/** The packed form of a set, every token checked against `vocab` (errors name the sequence). */
export function packSequences(set: SequenceSet, vocab = U32): PackedSequences {
  if (!(Number.isInteger(vocab) && vocab >= 1 && vocab <= U32)) throw new ConstraintError(`vocab must be an integer in 1 .. 2^32, got ${vocab}`);
  const bad = (i: number, j: number, t: number) => new ConstraintError(`sequence ${i}: token ${t} at position ${j} is not a token id below the vocabulary size ${vocab}`);
  if (!Array.isArray(set)) {
    const { flat, offsets } = set as PackedSequences;
    if (offsets.length < 1 || offsets[offsets.length - 1] > flat.length) throw new ConstraintError(`offsets (${offsets.length}) do not index the ${flat.length} tokens`);
    for (let i = 0; i + 1 < offsets.length; i++) {
      if (offsets[i + 1] < offsets[i]) throw new ConstraintError(`sequence ${i}: offsets decrease`);
      if (vocab < U32) for (let p = offsets[i]; p < offsets[i + 1]; p++) if (flat[p] >= vocab) throw bad(i, p - offsets[i], flat[p]);
    }
    return { flat, offsets };
  }
  const seqs = set as readonly (readonly number[])[];
  let total = 0;
  for (const s of seqs) total += s.length;
  const flat = new Uint32Array(total);
  const offsets = new Uint32Array(seqs.length + 1);
  let at = 0;
  seqs.forEach((s, i) => {
    for (let j = 0; j < s.length; j++) {
      const t = s[j];
      if (!(Number.isInteger(t) && t >= 0 && t < vocab)) throw bad(i, j, t);
      flat[at++] = t;
    }
    offsets[i + 1] = at;
  });
  return { flat, offsets };
}

/**
 * The working arrays of the level-by-level build. At depth d, entry j (of m) is a sequence longer
 * than d: its token at d is flat[pos[j]] (read into key[j]), it ends at flat[end[j]], and grp[j]
 * is the state of depth d its prefix reaches (the index within the depth; non-decreasing in j).
 * The entries move with the sort, so reading the tokens is a random access into `flat` per entry
 * and depth: the build's main cost at scale.
 */
interface Work {
  readonly flat: Uint32Array;
  pos: Uint32Array;
  end: Uint32Array;
  grp: Uint32Array;
  nextPos: Uint32Array;
  nextEnd: Uint32Array;
  nextGrp: Uint32Array;
  readonly key: Uint32Array;
  readonly sortedKey: Uint32Array;
  readonly perm: Uint32Array;
}

/**
 * Drops the sequences that end at this depth (marking their states accepting) and counts each
 * group's size into groupStart[g + 1]; then reads the others' tokens into `key`. The random reads
 * of `flat` get a loop of their own: mixed into the first, they run at half the speed.
 * Returns the number left and their largest token.
 */
function compact(w: Work, m: number, accept: Uint8Array, groupStart: Uint32Array): { left: number; maxKey: number } {
  const { flat, pos, end, grp, key } = w;
  let k = 0;
  for (let j = 0; j < m; j++) {
    const g = grp[j];
    const at = pos[j];
    if (at === end[j]) {
      accept[g] = 1;
      continue;
    }
    pos[k] = at;
    end[k] = end[j];
    grp[k++] = g;
    groupStart[g + 1]++;
  }
  let maxKey = 0;
  for (let j = 0; j < k; j++) {
    const t = flat[pos[j]];
    key[j] = t;
    maxKey = t > maxKey ? t : maxKey;
  }
  return { left: k, maxKey };
}

/**
 * Sorts the entries by key within each group (group g holds entries groupStart[g] ..
 * groupStart[g + 1]), writing them, advanced one token, to the next* arrays and sortedKey. Each
 * group on its own, so the work stays within its range of the arrays: insertion for small groups
 * (deep in a large set most hold one sequence), a counting sort that scatters the entries where
 * the group is not much smaller than the key range, else a comparison sort of indices.
 */
function sortWithinGroups(w: Work, maxKey: number, groupStart: Uint32Array): void {
  const { pos, end, key, perm, nextPos, nextEnd, sortedKey } = w;
  const byKey = (a: number, b: number) => key[a] - key[b];
  let count: Uint32Array | undefined;
  for (let g = 0; g + 1 < groupStart.length; g++) {
    const lo = groupStart[g];
    const hi = groupStart[g + 1];
    if (hi - lo > 16 && 32 * (hi - lo) > maxKey) {
      count ??= new Uint32Array(maxKey + 2);
      count.fill(0);
      for (let k = lo; k < hi; k++) count[key[k] + 1]++;
      for (let t = 0; t <= maxKey; t++) count[t + 1] += count[t];
      for (let k = lo; k < hi; k++) {
        const p = lo + count[key[k]]++;
        nextPos[p] = pos[k] + 1;
        nextEnd[p] = end[k];
        sortedKey[p] = key[k];
      }
      continue;
    }
    for (let k = lo; k < hi; k++) perm[k] = k;
    if (hi - lo > 16) perm.subarray(lo, hi).sort(byKey);
    else {
      for (let p = lo + 1; p < hi; p++) {
        const k = perm[p];
        let q = p;
        for (; q > lo && key[perm[q - 1]] > key[k]; q--) perm[q] = perm[q - 1];
        perm[q] = k;
      }
    }
    for (let p = lo; p < hi; p++) {
      const k = perm[p];
      nextPos[p] = pos[k] + 1;
      nextEnd[p] = end[k];
      sortedKey[p] = key[k];
    }
  }
}

/**
 * Makes each run of one token within a group a child state (numbered in order: the next depth's
 * group index), writing its token to `tokens` and each group's child count to `edgeCount`, and
 * the next depth's groups to nextGrp. Returns the number of children.
 */
function branch(w: Work, groupStart: Uint32Array, tokens: Uint32Array, edgeCount: Uint32Array): number {
  const { sortedKey, nextGrp } = w;
  let c = 0;
  for (let g = 0; g + 1 < groupStart.length; g++) {
    let prev = -1;
    const first = c;
    for (let p = groupStart[g]; p < groupStart[g + 1]; p++) {
      if (sortedKey[p] !== prev) {
        prev = sortedKey[p];
        tokens[c++] = prev;
      }
      nextGrp[p] = c - 1;
    }
    edgeCount[g] = c - first;
  }
  return c;
}

/** The CSR arrays from the per-depth results (level order: the edge into state c is edge c - 1). */
function assemble(tokens: Uint32Array[], edgeCounts: Uint32Array[], accepts: Uint8Array[], states: number): TokenAutomaton {
  const indptr = new Uint32Array(states + 1);
  const accepting = new Uint8Array(states);
  let s = 0;
  for (let d = 0; d < edgeCounts.length; d++) {
    accepting.set(accepts[d], s);
    const counts = edgeCounts[d];
    for (let g = 0; g < counts.length; g++, s++) indptr[s + 1] = indptr[s] + counts[g];
  }
  const pairs = new Uint32Array(2 * (states - 1));
  let e = 0;
  for (const level of tokens) {
    for (let j = 0; j < level.length; j++, e++) {
      pairs[2 * e] = level[j];
      pairs[2 * e + 1] = e + 1;
    }
  }
  return { states, indptr, pairs, accepting };
}

/** Per depth: its states' accepting flags and edge counts, and the tokens of the edges out of it in edge order. */
interface Levels {
  accepts: Uint8Array[];
  edgeCounts: Uint32Array[];
  tokens: Uint32Array[];
}

/** The trie depth by depth (its working arrays are garbage once it returns, before the CSR arrays are made). */
function buildLevels(flat: Uint32Array, offsets: Uint32Array): Levels {
  const n = offsets.length - 1;
  const w: Work = {
    flat,
    pos: offsets.slice(0, n),
    end: offsets.slice(1),
    grp: new Uint32Array(n),
    nextPos: new Uint32Array(n),
    nextEnd: new Uint32Array(n),
    nextGrp: new Uint32Array(n),
    key: new Uint32Array(n),
    sortedKey: new Uint32Array(n),
    perm: new Uint32Array(n),
  };
  const out: Levels = { accepts: [], edgeCounts: [], tokens: [] };
  let m = n;
  let width = 1; // states at this depth
  for (;;) {
    const accept = new Uint8Array(width);
    const edgeCount = new Uint32Array(width);
    out.accepts.push(accept);
    out.edgeCounts.push(edgeCount);
    const groupStart = new Uint32Array(width + 1);
    const { left, maxKey } = compact(w, m, accept, groupStart);
    m = left;
    if (m === 0) return out;
    for (let g = 0; g < width; g++) groupStart[g + 1] += groupStart[g];
    sortWithinGroups(w, maxKey, groupStart);
    const levelTokens = new Uint32Array(m); // at most one edge per sequence
    width = branch(w, groupStart, levelTokens, edgeCount);
    out.tokens.push(levelTokens.slice(0, width));
    [w.pos, w.nextPos] = [w.nextPos, w.pos];
    [w.end, w.nextEnd] = [w.nextEnd, w.end];
    [w.grp, w.nextGrp] = [w.nextGrp, w.grp];
  }
}

/**
 * The trie of a set of token sequences as a TokenAutomaton (duplicates dropped; an empty member
 * makes the start state accepting), with the per-depth maximum fan-out the device's gathers are
 * sized by. Throws ConstraintError on an empty set or a token outside `opts.vocab`.
 */
export function buildTrie(set: SequenceSet, opts: TrieOptions = {}): Trie {
  const { flat, offsets } = packSequences(set, opts.vocab);
  if (offsets.length === 1) throw new ConstraintError('cannot build a trie from an empty set of sequences');
  const { accepts, edgeCounts, tokens } = buildLevels(flat, offsets);
  const depthStart = [0];
  for (const a of accepts) depthStart.push(depthStart[depthStart.length - 1] + a.length);
  const states = depthStart[depthStart.length - 1];
  const fanout = Uint32Array.from(edgeCounts, (c) => c.reduce((a, b) => Math.max(a, b), 0));
  let sequences = 0;
  for (const a of accepts) for (let g = 0; g < a.length; g++) sequences += a[g];
  return { automaton: assemble(tokens, edgeCounts, accepts, states), fanout, depthStart: Uint32Array.from(depthStart), sequences };
}

/** Strings tokenized between yields to the event loop (~15 ms of SentencePiece work on short strings). */
const STRINGS_PER_SLICE = 2048;

/**
 * Strings to the token sequences that generate them, with the model's tokenizer (no BOS/EOS), in
 * slices that hand the event loop back (a server keeps streaming while a million strings are
 * tokenized). With SentencePiece's dummy prefix each string is encoded as a text of its own
 * ("▁red"), the way the model writes a new word: the StreamDecoder prints it as "red" when the
 * completion starts a text (no prompt, or just BOS) and as " red" after a prompt (a continuation
 * keeps its space). Throws ConstraintError naming a string that encodes to no tokens.
 */
export async function tokenizeSet(strings: readonly string[], tokenizer: Tokenizer): Promise<PackedSequences> {
  const ids: number[][] = [];
  for (let i = 0; i < strings.length; i++) {
    if (i > 0 && i % STRINGS_PER_SLICE === 0) await new Promise((r) => setImmediate(r));
    const t = tokenizer.encode(strings[i], { addSpecial: false });
    if (t.length === 0) throw new ConstraintError(`string ${i} (${JSON.stringify(strings[i])}) encodes to no tokens`);
    ids.push(t);
  }
  return packSequences(ids, tokenizer.vocab.tokens.length);
}

/**
 * Regular expressions to token automata (issue 12), the Outlines construction (REFERENCE.md
 * section 3): refa compiles the pattern to a minimal character DFA; then, from every DFA state the
 * output can reach, each vocabulary token's text is walked through the DFA, and the token is an
 * edge when the whole text keeps the DFA alive. The result matches the whole output (EOS is
 * allowed in accepting states by the kernel, it is never an edge).
 *
 * Syntax: JavaScript regular expressions as refa's JS parser reads them (classes, escapes such as
 * \d \w \s, groups, alternation, all quantifiers, Unicode property escapes with `u`). Not
 * supported: assertions (^ $ \b \B and lookarounds; the whole output is matched anyway) and
 * backreferences, except those refa can resolve into at most 100 words (`(a|b)\1`). Flags: none
 * by default; `i`, `s`, `u` on request.
 *
 * Characters are UTF-16 code units, as JavaScript's RegExp reads a string without `u`, and code
 * points with `u`. A token takes part with its text as UTF-8 decodes it on its own; tokens whose
 * bytes are not complete UTF-8 (byte-fallback pieces of a multi-byte character, byte-level BPE
 * pieces that split one) are never allowed, nor are tokens without text (control tokens).
 */
import { DFA, JS, NFA, TooManyNodesError } from 'refa';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { ConstraintError, type TokenAutomaton } from './automaton.ts';


export interface RegexOptions {
  /** RegExp flags, any of `i`, `s`, `u` (default none) */
  flags?: string;
  /**
   * The output starts a text (default true): the prompt is empty or ends with BOS, so with
   * SentencePiece's dummy prefix the detokenizer drops the first generated token's leading space
   * (StreamDecoder), and the constraint applies to the text without it.
   */
  textStart?: boolean;
}

/** The most character-DFA states a pattern may compile to (minimized). */
export const MAX_DFA_STATES = 20_000;
/** The most automaton nodes compiling a pattern may create (the NFA, and the DFA before minimizing). */
export const MAX_BUILD_NODES = 200_000;
/**
 * The longest the subset construction may take: its cost grows with the NFA states each DFA state
 * stands for, which no node count bounds (`(?:a|b){0,100}` repeated 30 times: 3,001 nodes, 12 s).
 */
export const MAX_DETERMINIZE_MS = 5_000;
/** The most syntax-tree nodes a pattern may parse to (generated JSON regexes repeat sub-patterns). */
export const MAX_REGEX_NODES = 500_000;
/** The most edges a token automaton may have (8 bytes each, on the device too). */
export const MAX_EDGES = 1 << 23;
/** Compiled automata kept per tokenizer (least recently used dropped first). */
export const CACHE_SIZE = 64;

const cache = new WeakMap<Tokenizer, Map<string, TokenAutomaton>>();

/** `text` as a regex that matches exactly it. */
export const escapeRegex = (text: string) => text.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');

/** What compiling a pattern over a vocabulary needs besides the vocabulary's texts, and its cache key. */
export interface RegexJob {
  pattern: string;
  flags: string;
  stripFirstSpace: boolean;
  key: string;
}

export function regexJob(pattern: string, tokenizer: Tokenizer, opts: RegexOptions = {}): RegexJob {
  const flags = opts.flags ?? '';
  const stripFirstSpace = (opts.textStart ?? true) && tokenizer.vocab.addSpacePrefix;
  return { pattern, flags, stripFirstSpace, key: `${flags}\u0000${stripFirstSpace ? 1 : 0}\u0000${pattern}` };
}

/** A compiled automaton from the cache (now the most recently used), or undefined. */
export function cachedRegex(tokenizer: Tokenizer, job: RegexJob): TokenAutomaton | undefined {
  const perTokenizer = cache.get(tokenizer);
  const hit = perTokenizer?.get(job.key);
  if (hit) {
    perTokenizer!.delete(job.key);
    perTokenizer!.set(job.key, hit);
  }
  return hit;
}

/** Keeps a compiled automaton in the cache; returns it. */
export function rememberRegex(tokenizer: Tokenizer, job: RegexJob, automaton: TokenAutomaton): TokenAutomaton {
  let perTokenizer = cache.get(tokenizer);
  if (!perTokenizer) cache.set(tokenizer, (perTokenizer = new Map()));
  perTokenizer.set(job.key, automaton);
  if (perTokenizer.size > CACHE_SIZE) perTokenizer.delete(perTokenizer.keys().next().value!);
  return automaton;
}

/** Compiles a job over the vocabulary's texts (tokenTexts): the part that may run on another thread. */
export const compileRegexJob = (job: RegexJob, texts: readonly (string | null)[]): TokenAutomaton => tokenAutomaton(charDfa(job.pattern, job.flags), texts, job.stripFirstSpace);

/** The token automaton of `pattern` (full match) over `tokenizer`'s vocabulary, on this thread; cached. */
export function compileRegex(pattern: string, tokenizer: Tokenizer, opts: RegexOptions = {}): TokenAutomaton {
  const job = regexJob(pattern, tokenizer, opts);
  return cachedRegex(tokenizer, job) ?? rememberRegex(tokenizer, job, compileRegexJob(job, tokenTexts(tokenizer)));
}

/** A pattern as error messages show it: generated ones can be long. */
const shown = (pattern: string) => (pattern.length > 80 ? `${pattern.slice(0, 77)}...` : pattern);

/** refa's parse of `pattern`, or a ConstraintError saying what is wrong with it. */
export function parseRegex(pattern: string, flags = ''): JS.ParseResult {
  if (/[^isu]/.test(flags) || new Set(flags).size !== flags.length) throw new ConstraintError(`regex flags '${flags}' are not supported (any of i, s, u)`);
  try {
    return JS.Parser.fromLiteral({ source: pattern, flags }).parse({ assertions: 'throw', backreferences: 'throw', maxNodes: MAX_REGEX_NODES });
  } catch (e) {
    const why = (e as Error).message;
    if (/Assertions/.test(why)) throw new ConstraintError(`regex /${shown(pattern)}/: assertions (^, $, \\b, lookarounds) are not supported; the whole output is matched`);
    if (/more than \d+ nodes/.test(why)) throw new ConstraintError(`regex is too long (over ${MAX_REGEX_NODES} syntax nodes)`);
    if (/Backreferences/.test(why)) throw new ConstraintError(`regex /${shown(pattern)}/: backreferences are not supported`);
    throw new ConstraintError(`invalid regex: ${why}`);
  }
}

/**
 * A character DFA as tables: `classOf` maps a character to its class (characters no state tells
 * apart share one), `next[state * classes + class]` is the next state or -1 (dead: no accepting
 * state can be reached). State 0 is the initial one.
 */
export interface CharDfa {
  states: number;
  classes: number;
  unicode: boolean;
  classOf: (char: number) => number;
  next: Int32Array;
  accepting: Uint8Array;
}

export function charDfa(pattern: string, flags = ''): CharDfa {
  const { expression, maxCharacter } = parseRegex(pattern, flags);
  const tooComplex = (why: string) => new ConstraintError(`regex /${shown(pattern)}/ is too complex (${why})`);
  let dfa: DFA;
  try {
    const nfa = NFA.fromRegex(expression, { maxCharacter }, {}, new NFA.LimitedNodeFactory(MAX_BUILD_NODES));
    const deadline = performance.now() + MAX_DETERMINIZE_MS;
    let created = 0;
    dfa = DFA.fromFA(nfa, {
      createNode: () => {
        if (++created > MAX_BUILD_NODES) throw tooComplex(`over ${MAX_BUILD_NODES} automaton nodes while compiling`);
        if (performance.now() > deadline) throw tooComplex(`compiling took over ${MAX_DETERMINIZE_MS} ms`);
        return DFA.nodeFactory.createNode();
      },
    });
    dfa.minimize();
  } catch (e) {
    if (e instanceof TooManyNodesError) throw tooComplex(`over ${MAX_BUILD_NODES} automaton nodes while compiling`);
    throw e;
  }
  if (dfa.isEmpty) throw new ConstraintError(`regex /${shown(pattern)}/ matches no text`);
  // states that cannot reach an accepting one go, so a missing transition is the only dead end
  dfa.removeUnreachable();
  const nodes = [dfa.initial, ...[...dfa.nodes()].filter((n) => n !== dfa.initial)];
  if (nodes.length > MAX_DFA_STATES) throw tooComplex(`${nodes.length} automaton states, at most ${MAX_DFA_STATES}`);
  const index = new Map(nodes.map((n, i) => [n, i]));
  // character classes: the cuts between the ranges of every transition
  const cuts = new Set<number>([0, maxCharacter + 1]);
  for (const n of nodes) n.out.forEach((_, r) => (cuts.add(r.min), cuts.add(r.max + 1)));
  const starts = Int32Array.from([...cuts].sort((a, b) => a - b));
  const classes = starts.length - 1;
  const dense = new Int32Array(Math.min(maxCharacter + 1, 0x10000));
  for (let c = 0; c < classes; c++) dense.fill(c, starts[c], Math.min(starts[c + 1], dense.length));
  const classOf = (char: number) => {
    if (char < dense.length) return dense[char];
    let lo = 0;
    let hi = classes - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (starts[mid] <= char) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const states = nodes.length;
  const next = new Int32Array(states * classes).fill(-1);
  nodes.forEach((n, s) => n.out.forEach((to, r) => next.fill(index.get(to)!, s * classes + classOf(r.min), s * classes + classOf(r.max) + 1)));
  const accepting = new Uint8Array(states);
  for (const f of dfa.finals) accepting[index.get(f)!] = 1;
  return { states, classes, unicode: maxCharacter > 0xffff, classOf, next, accepting };
}

/**
 * The vocabulary as a trie over character classes: tokens whose texts fall in the same classes
 * share a path, so a DFA state walks each distinct class prefix once. Node 0 is the root; a node's
 * children are childStart[n] .. childStart[n + 1] of (childClass, childNode); its tokens are
 * tokStart[n] .. tokStart[n + 1] of `tokens`.
 */
interface ClassTrie {
  childStart: Uint32Array;
  childClass: Uint32Array;
  childNode: Uint32Array;
  tokStart: Uint32Array;
  tokens: Uint32Array;
}

function classTrie(texts: readonly (string | null)[], dfa: CharDfa): ClassTrie {
  const edges = new Map<number, number>(); // parent * classes + class -> child
  const parent: number[] = [0];
  const cls: number[] = [0];
  const endsAt = new Int32Array(texts.length).fill(-1);
  texts.forEach((text, id) => {
    if (text === null) return;
    let node = 0;
    for (const ch of dfa.unicode ? codePoints(text) : codeUnits(text)) {
      const c = dfa.classOf(ch);
      const key = node * dfa.classes + c;
      let child = edges.get(key);
      if (child === undefined) {
        child = parent.length;
        parent.push(node);
        cls.push(c);
        edges.set(key, child);
      }
      node = child;
    }
    endsAt[id] = node;
  });
  const n = parent.length;
  const childStart = new Uint32Array(n + 1);
  for (let v = 1; v < n; v++) childStart[parent[v] + 1]++;
  for (let v = 0; v < n; v++) childStart[v + 1] += childStart[v];
  const fill = childStart.slice(0, n);
  const childClass = new Uint32Array(n - 1);
  const childNode = new Uint32Array(n - 1);
  for (let v = 1; v < n; v++) {
    const e = fill[parent[v]]++;
    childClass[e] = cls[v];
    childNode[e] = v;
  }
  const tokStart = new Uint32Array(n + 1);
  for (const v of endsAt) if (v >= 0) tokStart[v + 1]++;
  for (let v = 0; v < n; v++) tokStart[v + 1] += tokStart[v];
  const tfill = tokStart.slice(0, n);
  const tokens = new Uint32Array(tokStart[n]);
  endsAt.forEach((v, id) => v >= 0 && (tokens[tfill[v]++] = id));
  return { childStart, childClass, childNode, tokStart, tokens };
}

function* codeUnits(text: string) {
  for (let i = 0; i < text.length; i++) yield text.charCodeAt(i);
}

function* codePoints(text: string) {
  for (const ch of text) yield ch.codePointAt(0)!;
}

const textsOf = new WeakMap<Tokenizer, (string | null)[]>();

/** Each token's text as the detokenizer writes it, or null for tokens never allowed; cached. */
export function tokenTexts(tokenizer: Tokenizer): (string | null)[] {
  const hit = textsOf.get(tokenizer);
  if (hit) return hit;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const texts = tokenizer.vocab.tokens.map((_, id) => {
    const bytes = tokenizer.tokenBytes(id);
    if (bytes.length === 0) return null;
    try {
      return utf8.decode(bytes);
    } catch {
      return null; // not complete UTF-8 on its own
    }
  });
  textsOf.set(tokenizer, texts);
  return texts;
}

/**
 * Walks the vocabulary through `dfa` from every state the output reaches. With `stripFirstSpace`
 * the start state is its own state (the DFA's initial one may be re-entered later, where tokens
 * keep their leading space), whose tokens are walked without one leading space.
 */
function tokenAutomaton(dfa: CharDfa, texts: readonly (string | null)[], stripFirstSpace: boolean): TokenAutomaton {
  const trie = classTrie(texts, dfa);
  const startTrie = stripFirstSpace ? classTrie(texts.map((t) => (t !== null && t.startsWith(' ') ? t.slice(1) : t)), dfa) : trie;
  const vocab = texts.length;
  // token-automaton states are DFA states, plus dfa.states for a separate start
  const start = stripFirstSpace ? dfa.states : 0;
  const number = new Int32Array(dfa.states + 1).fill(-1);
  const order: number[] = [start];
  number[start] = 0;
  const rows: Uint32Array[] = []; // per state: token, DFA state pairs, by token
  let edges = 0;
  const target = new Int32Array(vocab).fill(-1);
  const touched = new Uint32Array(vocab);
  const stackNode: number[] = [];
  const stackState: number[] = [];
  for (let k = 0; k < order.length; k++) {
    const key = order[k];
    const from = key === dfa.states ? 0 : key;
    const t = key === dfa.states ? startTrie : trie;
    let count = 0;
    stackNode.push(0);
    stackState.push(from);
    while (stackNode.length) {
      const node = stackNode.pop()!;
      const s = stackState.pop()!;
      for (let i = t.tokStart[node]; i < t.tokStart[node + 1]; i++) {
        target[t.tokens[i]] = s;
        touched[count++] = t.tokens[i];
      }
      const base = s * dfa.classes;
      for (let e = t.childStart[node]; e < t.childStart[node + 1]; e++) {
        const ns = dfa.next[base + t.childClass[e]];
        if (ns >= 0) {
          stackNode.push(t.childNode[e]);
          stackState.push(ns);
        }
      }
    }
    edges += count;
    if (edges > MAX_EDGES) throw new ConstraintError(`the constraint's token automaton is too large (over ${MAX_EDGES} edges)`);
    const ids = touched.slice(0, count).sort();
    const row = new Uint32Array(2 * count);
    for (let i = 0; i < count; i++) {
      const s = target[ids[i]];
      target[ids[i]] = -1;
      row[2 * i] = ids[i];
      row[2 * i + 1] = s;
      if (number[s] < 0) {
        number[s] = order.length;
        order.push(s);
      }
    }
    rows.push(row);
  }
  const accepting = Uint8Array.from(order, (key) => dfa.accepting[key === dfa.states ? 0 : key]);
  return prune(rows, accepting, (dfaState) => number[dfaState]);
}

/**
 * Keeps the states that are reachable from state 0 and can reach an accepting state, numbered
 * anew in breadth-first order, and only the edges between them. `rows[s]` holds (token, key)
 * pairs; `stateOf(key)` numbers a key as `rows` does.
 */
function prune(rows: Uint32Array[], accepting: Uint8Array, stateOf: (key: number) => number): TokenAutomaton {
  const n = rows.length;
  const into: number[][] = Array.from({ length: n }, () => []);
  rows.forEach((row, s) => {
    for (let i = 1; i < row.length; i += 2) into[stateOf(row[i])].push(s);
  });
  const alive = accepting.slice();
  const queue = [...alive.keys()].filter((s) => alive[s]);
  while (queue.length) for (const p of into[queue.pop()!]) if (!alive[p]) (alive[p] = 1), queue.push(p);
  if (!alive[0]) throw new ConstraintError('no sequence of tokens of this vocabulary matches the constraint');
  const renumber = new Int32Array(n).fill(-1);
  const order = [0];
  renumber[0] = 0;
  const kept: number[][] = [];
  for (let k = 0; k < order.length; k++) {
    const row = rows[order[k]];
    const edges: number[] = [];
    for (let i = 0; i < row.length; i += 2) {
      const to = stateOf(row[i + 1]);
      if (!alive[to]) continue;
      if (renumber[to] < 0) {
        renumber[to] = order.length;
        order.push(to);
      }
      edges.push(row[i], renumber[to]);
    }
    kept.push(edges);
  }
  const indptr = new Uint32Array(order.length + 1);
  kept.forEach((e, s) => (indptr[s + 1] = indptr[s] + e.length / 2));
  const pairs = new Uint32Array(2 * indptr[order.length]);
  kept.forEach((e, s) => pairs.set(e, 2 * indptr[s]));
  return { states: order.length, indptr, pairs, accepting: Uint8Array.from(order, (s) => accepting[s]) };
}

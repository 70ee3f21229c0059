/**
 * The device form of every constraint (issue 12): a deterministic automaton over token ids stored
 * as CSR, the layout of STATIC ("Vectorizing the Trie", REFERENCE.md section 3). State 0 is the
 * start. Row `s` holds the edges indptr[s] .. indptr[s + 1] of `pairs`, each (token, next state),
 * sorted by token. A state is accepting when the output may end there (EOS is allowed there, and
 * only there); a state without edges ends the sequence. Builders: trie.ts (sets of sequences),
 * regex.ts (regular expressions, via a character DFA), json_schema.ts (schemas, via a regex).
 */
export interface TokenAutomaton {
  readonly states: number;
  /** [states + 1] offsets into the edges */
  readonly indptr: Uint32Array;
  /** [2 x edges]: token, next state; tokens ascending within a row, each at most once */
  readonly pairs: Uint32Array;
  /** [states]: 1 when the output may end in this state */
  readonly accepting: Uint8Array;
}

/** A constraint that cannot be built or met: the message is fit for an HTTP 400. */
export class ConstraintError extends Error {
  override name = 'ConstraintError';
}

export const edgesOf = (a: TokenAutomaton) => a.pairs.length / 2;

/** Bytes the automaton takes (what the device copy takes too). */
export const automatonBytes = (a: TokenAutomaton) => a.indptr.byteLength + a.pairs.byteLength + a.accepting.byteLength;

/** The state `token` leads to from `state`, or -1 when the token is not allowed there (binary search). */
export function nextState(a: TokenAutomaton, state: number, token: number): number {
  let lo = a.indptr[state];
  let hi = a.indptr[state + 1];
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const t = a.pairs[2 * mid];
    if (t === token) return a.pairs[2 * mid + 1];
    if (t < token) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

/** The tokens allowed in `state` (EOS not included: it is allowed when the state is accepting). */
export function allowedTokens(a: TokenAutomaton, state: number): number[] {
  const out: number[] = [];
  for (let e = a.indptr[state]; e < a.indptr[state + 1]; e++) out.push(a.pairs[2 * e]);
  return out;
}

/**
 * Per state, the fewest tokens that reach an accepting state (0 for an accepting one; -1 when none
 * can: a dead state). Breadth-first over the reversed edges.
 */
export function tokensToAccept(a: TokenAutomaton): Int32Array {
  const dist = new Int32Array(a.states).fill(-1);
  // reversed edges in CSR: for each state, the states with an edge into it
  const inCount = new Uint32Array(a.states + 1);
  for (let e = 0; e < edgesOf(a); e++) inCount[a.pairs[2 * e + 1] + 1]++;
  for (let s = 0; s < a.states; s++) inCount[s + 1] += inCount[s];
  const from = new Uint32Array(edgesOf(a));
  const fill = inCount.slice(0, a.states);
  for (let s = 0; s < a.states; s++) for (let e = a.indptr[s]; e < a.indptr[s + 1]; e++) from[fill[a.pairs[2 * e + 1]]++] = s;
  const queue = new Uint32Array(a.states);
  let head = 0;
  let tail = 0;
  for (let s = 0; s < a.states; s++) {
    if (a.accepting[s]) {
      dist[s] = 0;
      queue[tail++] = s;
    }
  }
  while (head < tail) {
    const s = queue[head++];
    for (let i = inCount[s]; i < inCount[s + 1]; i++) {
      const p = from[i];
      if (dist[p] < 0) {
        dist[p] = dist[s] + 1;
        queue[tail++] = p;
      }
    }
  }
  return dist;
}

/** Throws ConstraintError unless the arrays form a well-shaped automaton over a vocabulary of `vocab` tokens. */
export function checkAutomaton(a: TokenAutomaton, vocab: number): void {
  if (!(a.states >= 1) || a.indptr.length !== a.states + 1 || a.accepting.length !== a.states) throw new ConstraintError(`automaton arrays do not match its ${a.states} states`);
  if (a.indptr[0] !== 0 || a.indptr[a.states] !== edgesOf(a)) throw new ConstraintError('indptr does not span the edges');
  for (let s = 0; s < a.states; s++) {
    if (a.indptr[s + 1] < a.indptr[s]) throw new ConstraintError(`indptr decreases at state ${s}`);
    for (let e = a.indptr[s]; e < a.indptr[s + 1]; e++) {
      const token = a.pairs[2 * e];
      if (token >= vocab) throw new ConstraintError(`state ${s}: token ${token} is outside the vocabulary (${vocab})`);
      if (e > a.indptr[s] && token <= a.pairs[2 * e - 2]) throw new ConstraintError(`state ${s}: tokens not strictly ascending`);
      if (a.pairs[2 * e + 1] >= a.states) throw new ConstraintError(`state ${s}: edge to state ${a.pairs[2 * e + 1]} of ${a.states}`);
    }
  }
}

/** The state after `tokens` from the start, walked on the CPU (once per sequence placed, never per token). */
export function stateAfter(a: TokenAutomaton, tokens: readonly number[]): number {
  let state = 0;
  for (const t of tokens) {
    state = nextState(a, state, t);
    if (state < 0) throw new ConstraintError(`token ${t} is not allowed by the constraint at that point`);
  }
  return state;
}

const distances = new WeakMap<TokenAutomaton, Int32Array>();

/**
 * Throws ConstraintError when no output that the automaton accepts fits: none at all, or none within
 * the `maxTokens - generated` tokens left (a request the server answers with 400).
 */
export function checkSatisfiable(a: TokenAutomaton, generated: readonly number[], maxTokens: number): void {
  let dist = distances.get(a);
  if (!dist) distances.set(a, (dist = tokensToAccept(a)));
  const need = dist[stateAfter(a, generated)];
  if (need < 0) throw new ConstraintError('the constraint accepts no output from here');
  if (need > maxTokens - generated.length) throw new ConstraintError(`the constraint needs at least ${need} more tokens, but max_tokens leaves ${maxTokens - generated.length}`);
}

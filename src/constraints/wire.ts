import { type TokenAutomaton, checkAutomaton } from './automaton.ts';

/**
 * A token automaton as it travels to disaggregated workers with a request (control plane and KV
 * hand-over messages): the arrays as raw bytes (msgpack bin; typed arrays other than bytes do not
 * survive msgpackr), under a key the front gives each compiled automaton, so a worker rebuilds and
 * uploads each one once. The automaton state does not travel: a worker places a sequence from its
 * generated tokens (automaton.ts stateAfter), once per hand-over.
 */
export interface WireAutomaton {
  key: string;
  states: number;
  indptr: Uint8Array;
  pairs: Uint8Array;
  accepting: Uint8Array;
}

const keys = new WeakMap<TokenAutomaton, string>();
let nextKey = 0;
const bytes = (a: Uint32Array | Uint8Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

export function toWire(a: TokenAutomaton): WireAutomaton {
  let key = keys.get(a);
  if (!key) keys.set(a, (key = `${process.pid}-${nextKey++}`));
  return { key, states: a.states, indptr: bytes(a.indptr), pairs: bytes(a.pairs), accepting: bytes(a.accepting) };
}

/** The shape check of an untrusted message field (the arrays are checked when rebuilt). */
export function isWireAutomaton(v: unknown): v is WireAutomaton {
  const w = v as Record<string, unknown>;
  return typeof w === 'object' && w !== null && typeof w.key === 'string' && Number.isInteger(w.states) && w.indptr instanceof Uint8Array && w.pairs instanceof Uint8Array && w.accepting instanceof Uint8Array;
}

/** Rebuilt automata, by key, most recently used last. */
const received = new Map<string, TokenAutomaton>();
const KEPT = 64;

/** The automaton a message carried (the same object for the same key; checked against the vocabulary). */
export function fromWire(w: WireAutomaton, vocab: number): TokenAutomaton {
  const hit = received.get(w.key);
  if (hit) {
    received.delete(w.key);
    received.set(w.key, hit);
    return hit;
  }
  const u32 = (b: Uint8Array) => {
    if (b.byteLength % 4 !== 0) throw new RangeError('automaton arrays must hold whole 32-bit words');
    // a copy (new Uint8Array, not slice: a Buffer's slice is a view): aligned, and not into the message
    return new Uint32Array(new Uint8Array(b).buffer);
  };
  const a: TokenAutomaton = { states: w.states, indptr: u32(w.indptr), pairs: u32(w.pairs), accepting: new Uint8Array(w.accepting) };
  checkAutomaton(a, vocab);
  received.set(w.key, a);
  if (received.size > KEPT) received.delete(received.keys().next().value!);
  return a;
}

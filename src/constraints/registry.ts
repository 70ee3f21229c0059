/**
 * Registered constraint sets (POST /v1/constraints, issue 12): a large set of sequences is built
 * once into a STATIC trie and then used by id (`constraint: "<id>"`) for the life of the server,
 * instead of being sent and compiled with every request. The automata's bytes count against a
 * memory limit (the host copies; the engine uploads a device copy while requests use a set).
 */
import { randomBytes } from 'node:crypto';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { automatonBytes, checkSatisfiable, edgesOf, type TokenAutomaton } from './automaton.ts';
import { buildTrie, type SequenceSet, tokenizeSet } from './trie.ts';

export interface RegisteredSet {
  id: string;
  automaton: TokenAutomaton;
  /** distinct members */
  sequences: number;
  states: number;
  edges: number;
  bytes: number;
  /** milliseconds to build it: tokenizing (string sets), the trie, its distances to acceptance */
  buildMs: number;
  /** unix seconds */
  created: number;
}

/** A set that does not fit in what the memory limit leaves (the server answers 413). */
export class ConstraintMemoryError extends Error {
  override name = 'ConstraintMemoryError';
}

export class ConstraintRegistry {
  private readonly sets = new Map<string, RegisteredSet>();
  private used = 0;

  /** `memoryLimit`: bytes all registered automata may take together */
  constructor(readonly memoryLimit: number) {}

  /**
   * Builds the trie of `set` (token ids below `vocab`) and registers it. Throws ConstraintError on
   * an empty set or a bad token, ConstraintMemoryError when the automaton does not fit beside the
   * sets already registered (its size is known only once it is built). `t0`: when the build began.
   */
  register(set: SequenceSet, vocab: number, t0 = performance.now()): RegisteredSet {
    const trie = buildTrie(set, { vocab });
    const a = trie.automaton;
    // the engine's max_tokens check computes each automaton's distances to acceptance on first use:
    // done here, so the first request does not wait for a pass over a large set
    checkSatisfiable(a, [], Number.MAX_SAFE_INTEGER);
    const buildMs = performance.now() - t0;
    const bytes = automatonBytes(a);
    if (this.used + bytes > this.memoryLimit) {
      throw new ConstraintMemoryError(`the set's automaton takes ${bytes} bytes, and the registered sets hold ${this.used} of the ${this.memoryLimit} bytes allowed (--constraint-memory); delete sets or raise the limit`);
    }
    const entry: RegisteredSet = { id: `cset-${randomBytes(12).toString('hex')}`, automaton: a, sequences: trie.sequences, states: a.states, edges: edgesOf(a), bytes, buildMs, created: Math.floor(Date.now() / 1000) };
    this.sets.set(entry.id, entry);
    this.used += bytes;
    return entry;
  }

  /** Strings tokenized with the model's tokenizer (trie.ts tokenizeSet), then registered as token sequences. */
  async registerStrings(strings: readonly string[], tokenizer: Tokenizer): Promise<RegisteredSet> {
    const t0 = performance.now();
    const packed = await tokenizeSet(strings, tokenizer);
    return this.register(packed, tokenizer.vocab.tokens.length, t0);
  }

  get(id: string): RegisteredSet | undefined {
    return this.sets.get(id);
  }

  /** Drops the set (requests already using it keep it until they finish); false when unknown. */
  delete(id: string): boolean {
    const entry = this.sets.get(id);
    if (!entry) return false;
    this.sets.delete(id);
    this.used -= entry.bytes;
    return true;
  }

  get count(): number {
    return this.sets.size;
  }

  /** bytes the registered automata take */
  get bytes(): number {
    return this.used;
  }
}

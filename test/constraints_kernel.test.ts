import { describe, expect, it } from 'vitest';
import { type TokenAutomaton, checkAutomaton } from '../src/constraints/automaton.ts';
import {
  type ConstrainedRow,
  STATUS_COMPLETE,
  STATUS_GOES_ON,
  STATUS_NO_EDGE,
  advanceRef,
  advanceRows,
  maskRef,
  maskRows,
  packAutomaton,
  packRows,
  setStates,
  shapeOf,
} from '../kernels/constraints.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';

/**
 * A random automaton over `vocab` tokens: every state gets a fan-out drawn from `fanouts` (distinct
 * tokens, ascending; 0 makes a state without edges), edges to random states, about a third of the
 * states accepting.
 */
function randomAutomaton(seed: number, states: number, vocab: number, fanouts: readonly number[]): TokenAutomaton {
  const next = mulberry32(seed);
  const indptr = new Uint32Array(states + 1);
  const pairs: number[] = [];
  const accepting = new Uint8Array(states);
  for (let s = 0; s < states; s++) {
    const k = Math.min(vocab, fanouts[Math.floor(next() * fanouts.length)]);
    const tokens = new Set<number>();
    while (tokens.size < k) tokens.add(Math.floor(next() * vocab));
    for (const t of [...tokens].sort((a, b) => a - b)) pairs.push(t, Math.floor(next() * states));
    indptr[s + 1] = pairs.length / 2;
    accepting[s] = next() < 0.35 ? 1 : 0;
  }
  const a = { states, indptr, pairs: Uint32Array.from(pairs), accepting };
  checkAutomaton(a, vocab);
  return a;
}

describe('constraint kernels against their CPU references', () => {
  const getGpu = useGpu();

  // vocabularies not multiples of the 32-bit bitmap words nor of the 256-wide workgroup; one with a
  // state allowing every token (fan-out = vocab); one row alone; rows scattered over the logits
  const cases = [
    { vocab: 1000, states: 40, fanouts: [0, 1, 3, 17, 300], rows: 7, eos: 2 },
    { vocab: 50_021, states: 12, fanouts: [1, 2, 50_021, 4000], rows: 5, eos: 50_020 },
    { vocab: 33, states: 9, fanouts: [0, 1, 33], rows: 1, eos: null },
  ];

  for (const c of cases) {
    it(`mask and advance: vocab ${c.vocab}, ${c.rows} row(s), fan-outs ${c.fanouts.join('/')}`, async () => {
      const gpu = getGpu();
      const a = randomAutomaton(c.vocab, c.states, c.vocab, c.fanouts);
      const logitRows = c.rows + 2; // two rows in the batch are not constrained
      const next = mulberry32(c.states);
      const logits = normalArray(logitRows * c.vocab, c.vocab + 1, 3);
      // the constrained rows: every other logits row, slots in another order, states at random
      const rows: ConstrainedRow[] = Array.from({ length: c.rows }, (_, i) => ({ logitRow: Math.min(logitRows - 1, 2 * i), slot: c.rows - 1 - i, keep: i % 3 !== 2 }));
      const unique = new Map(rows.map((r) => [r.logitRow, r]));
      const constrained = [...unique.values()];
      const state = new Map(constrained.map((r) => [r.slot, Math.floor(next() * c.states)]));
      const automaton = gpu.upload(packAutomaton(a));
      const states = gpu.createBuffer(c.rows * 4);
      const logitsBuf = gpu.upload(logits);
      let step = gpu.step();
      setStates(step, states, [...state].map(([slot, s]) => [slot, s] as const));
      maskRows(step, { logits: logitsBuf, automaton, states, rows: step.upload(packRows(constrained)), count: constrained.length, cols: c.vocab, a: shapeOf(a), eos: c.eos });
      await step.submit();
      const got = await gpu.readF32(logitsBuf, logitRows * c.vocab);
      for (let r = 0; r < logitRows; r++) {
        const input = logits.subarray(r * c.vocab, (r + 1) * c.vocab);
        const row = unique.get(r);
        // exact: the kernel writes -inf or leaves the logit's bits alone
        const want = row ? maskRef(input, a, state.get(row.slot)!, c.eos) : input;
        expect(Array.from(got.subarray(r * c.vocab, (r + 1) * c.vocab)), `row ${r}`).toEqual(Array.from(want));
      }

      // advance: for each constrained row a sampled token that is allowed, EOS or not allowed
      const sampled = new Uint32Array(logitRows);
      for (const r of constrained) {
        const s = state.get(r.slot)!;
        const allowed = a.indptr[s + 1] - a.indptr[s];
        const pick = next();
        sampled[r.logitRow] = allowed > 0 && pick < 0.7 ? a.pairs[2 * (a.indptr[s] + Math.floor(next() * allowed))] : pick < 0.85 ? (c.eos ?? 0) : Math.floor(next() * c.vocab);
      }
      const status = gpu.upload(new Uint32Array(logitRows).fill(7));
      step = gpu.step();
      advanceRows(step, { automaton, states, rows: step.upload(packRows(constrained)), count: constrained.length, sampled: step.upload(sampled), status, cols: c.vocab, a: shapeOf(a) });
      await step.submit();
      const gotStatus = await gpu.readU32(status, logitRows);
      const gotStates = await gpu.readU32(states, c.rows);
      const seen = new Set<number>();
      for (const r of constrained) {
        const ref = r.keep ? advanceRef(a, state.get(r.slot)!, sampled[r.logitRow]) : { state: state.get(r.slot)!, status: 7 };
        expect(gotStates[r.slot], `slot ${r.slot}`).toBe(ref.state);
        expect(gotStatus[r.logitRow], `row ${r.logitRow}`).toBe(ref.status);
        seen.add(ref.status);
      }
      for (let r = 0; r < logitRows; r++) if (!unique.has(r)) expect(gotStatus[r]).toBe(7); // untouched
      if (c.rows >= 5) expect(seen.size).toBeGreaterThan(1); // not vacuous: more than one outcome exercised
      for (const b of [automaton, states, logitsBuf, status]) b.destroy();
    });
  }

  it('statuses: an edge into a state without edges completes; a token without an edge leaves the state', () => {
    // 0 -(5)-> 1 -(6)-> 2 (no edges, accepting)
    const a: TokenAutomaton = { states: 3, indptr: Uint32Array.from([0, 1, 2, 2]), pairs: Uint32Array.from([5, 1, 6, 2]), accepting: Uint8Array.from([0, 0, 1]) };
    expect(advanceRef(a, 0, 5)).toEqual({ state: 1, status: STATUS_GOES_ON });
    expect(advanceRef(a, 1, 6)).toEqual({ state: 2, status: STATUS_COMPLETE });
    expect(advanceRef(a, 1, 5)).toEqual({ state: 1, status: STATUS_NO_EDGE });
  });
});

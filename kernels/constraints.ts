import { type TokenAutomaton, edgesOf, nextState } from '../src/constraints/automaton.ts';
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';

/**
 * Constrained decoding inside the step (shaders/constraints.wgsl): `maskRows` before sampling,
 * `advanceRows` after it, `setStates` to place sequences at a state. One dispatch of each covers
 * the rows that share an automaton.
 */

const WG = 256;
export const NO_EOS = 0xffffffff;

/** advance's status per row: the output goes on; it is complete (no edges left); the token had no edge. */
export const STATUS_GOES_ON = 0;
export const STATUS_COMPLETE = 1;
export const STATUS_NO_EDGE = 2;

/** The automaton as the kernels read it: indptr, pairs, accepting (as u32), in one array. */
export function packAutomaton(a: TokenAutomaton): Uint32Array {
  const out = new Uint32Array(a.states + 1 + a.pairs.length + a.states);
  out.set(a.indptr, 0);
  out.set(a.pairs, a.states + 1);
  out.set(a.accepting, a.states + 1 + a.pairs.length);
  return out;
}

/** A constrained row of the step: its logits row, its state slot, and whether its sampled token is kept. */
export interface ConstrainedRow {
  logitRow: number;
  slot: number;
  keep: boolean;
}

export const packRows = (rows: readonly ConstrainedRow[]) => Uint32Array.from(rows.flatMap((r) => [r.logitRow, r.slot, r.keep ? 1 : 0]));

export interface MaskArgs {
  /** [logit rows, cols] f32, changed in place */
  logits: Binding;
  /** packAutomaton of the rows' automaton */
  automaton: Binding;
  states: Binding;
  /** packRows */
  rows: Binding;
  count: number;
  cols: number;
  a: Pick<TokenAutomaton, 'states'> & { edges: number };
  eos: number | null;
}

/** Sets every logit the row's state does not allow to -inf (EOS is allowed in accepting states). */
export function maskRows(step: Step, m: MaskArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('constraints', 'mask', { WG }),
    params: params(m.count, m.cols, m.a, m.eos),
    buffers: [m.logits, m.automaton, m.states, m.rows],
    workgroups: [Math.ceil(m.cols / WG), m.count],
  });
}

export interface AdvanceArgs {
  automaton: Binding;
  states: Binding;
  rows: Binding;
  count: number;
  /** [logit rows] u32 sampled tokens */
  sampled: Binding;
  /** [logit rows] u32 status, written for the kept rows */
  status: Binding;
  cols: number;
  a: Pick<TokenAutomaton, 'states'> & { edges: number };
}

/** Moves each kept row's sequence along its sampled token's edge; writes its status. */
export function advanceRows(step: Step, m: AdvanceArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('constraints', 'advance', {}),
    params: params(m.count, m.cols, m.a, null),
    buffers: [m.states, m.automaton, m.rows, m.sampled, m.status],
    workgroups: [Math.ceil(m.count / 64)],
  });
}

/** Writes states[slot] = state for each pair. */
export function setStates(step: Step, states: Binding, pairs: readonly (readonly [slot: number, state: number])[]): void {
  if (pairs.length === 0) return;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('constraints', 'set_state', {}),
    params: new Params().u32(pairs.length).u32(0).u32(0).u32(0).u32(0),
    buffers: [states, step.upload(Uint32Array.from(pairs.flat()), 'constraint states')],
    workgroups: [Math.ceil(pairs.length / 64)],
  });
}

function params(rows: number, cols: number, a: { states: number; edges: number }, eos: number | null): Params {
  return new Params()
    .u32(rows)
    .u32(cols)
    .u32(a.states)
    .u32(a.edges)
    .u32(eos ?? NO_EOS);
}

export const shapeOf = (a: TokenAutomaton) => ({ states: a.states, edges: edgesOf(a) });

// ---------------------------------------------------------------------------------------------
// CPU references

/** The row masked as the kernel does: -inf wherever the state allows neither the token nor (accepting) EOS. */
export function maskRef(row: ArrayLike<number>, a: TokenAutomaton, state: number, eos: number | null): Float32Array {
  const out = Float32Array.from(row);
  const keep = new Uint8Array(out.length);
  for (let e = a.indptr[state]; e < a.indptr[state + 1]; e++) keep[a.pairs[2 * e]] = 1;
  if (a.accepting[state] && eos !== null) keep[eos] = 1;
  for (let c = 0; c < out.length; c++) if (!keep[c]) out[c] = -Infinity;
  return out;
}

/** advance for one row: the next state and the status the kernel writes. */
export function advanceRef(a: TokenAutomaton, state: number, token: number): { state: number; status: number } {
  const next = nextState(a, state, token);
  if (next < 0) return { state, status: STATUS_NO_EDGE };
  return { state: next, status: a.indptr[next] === a.indptr[next + 1] ? STATUS_COMPLETE : STATUS_GOES_ON };
}

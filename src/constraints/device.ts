import { type ConstrainedRow, advanceRows, maskRows, packAutomaton, packRows, setStates, shapeOf } from '../../kernels/constraints.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { Step } from '../gpu/step.ts';
import { type TokenAutomaton, stateAfter } from './automaton.ts';

/** One logits row of a step whose sequence is constrained. */
export interface ConstraintRowInput {
  seq: number;
  automaton: TokenAutomaton;
  /** the sequence's generated tokens so far (asked only to place a sequence the GPU has no state for yet) */
  generated: () => readonly number[];
  /** the row's sampled token is kept (it completes the sequence's context this step) */
  accepts: boolean;
}

/**
 * The engine's side of shaders/constraints.wgsl: each automaton in use is uploaded once (and freed
 * when no sequence uses it); each constrained sequence has a state slot on the GPU from its first
 * step until it finishes (kept through preemption: its generated tokens, hence its state, do not
 * change). Per step, one mask dispatch per automaton in the batch before sampling, one advance
 * after it, and a status word per row read back with the sampled ids.
 */
export class ConstraintMasks {
  private states: GPUBuffer | null = null;
  private capacity = 0;
  private readonly slots = new Map<number, { slot: number; automaton: TokenAutomaton }>();
  private readonly free: number[] = [];
  private readonly uploaded = new Map<TokenAutomaton, { buffer: GPUBuffer; users: number }>();

  constructor(
    private readonly gpu: Gpu,
    private readonly vocab: number,
    private readonly eos: number | null,
  ) {}

  /**
   * Records the masks of `rows` (row i of `logits`; null rows are unconstrained and untouched) into
   * the step; returns what to record after sampling: it returns the buffer of each row's status
   * (kernels/constraints.ts STATUS_*, u32 per row), for the caller to read back with the sampled ids
   * (one read-back per step: a second one costs a mapping round trip). Null when no row is constrained.
   */
  record(step: Step, logits: GPUBuffer, rows: readonly (ConstraintRowInput | null)[]): ((sampled: GPUBuffer) => GPUBuffer) | null {
    const groups = new Map<TokenAutomaton, ConstrainedRow[]>();
    const placed: [number, number][] = [];
    rows.forEach((r, logitRow) => {
      if (!r) return;
      let held = this.slots.get(r.seq);
      if (!held) {
        held = { slot: this.take(), automaton: this.use(r.automaton) };
        this.slots.set(r.seq, held);
        placed.push([held.slot, stateAfter(r.automaton, r.generated())]);
      }
      const list = groups.get(r.automaton) ?? [];
      list.push({ logitRow, slot: held.slot, keep: r.accepts });
      groups.set(r.automaton, list);
    });
    if (groups.size === 0) return null;
    const states = this.states!;
    setStates(step, states, placed);
    const packed = [...groups].map(([a, list]) => ({ a, list, rows: step.upload(packRows(list), 'constrained rows'), automaton: this.uploaded.get(a)!.buffer }));
    for (const g of packed) maskRows(step, { logits, automaton: g.automaton, states, rows: g.rows, count: g.list.length, cols: this.vocab, a: shapeOf(g.a), eos: this.eos });
    return (sampled) => {
      const status = step.scratch(rows.length * 4, 'constraint status');
      for (const g of packed) advanceRows(step, { automaton: g.automaton, states, rows: g.rows, count: g.list.length, sampled, status, cols: this.vocab, a: shapeOf(g.a) });
      return status;
    };
  }

  /** The sequence finished: its slot, and its automaton's upload if nobody else uses it, are freed. */
  release(seq: number): void {
    const held = this.slots.get(seq);
    if (!held) return;
    this.slots.delete(seq);
    this.free.push(held.slot);
    const u = this.uploaded.get(held.automaton)!;
    if (--u.users === 0) {
      u.buffer.destroy();
      this.uploaded.delete(held.automaton);
    }
  }

  /** GPU bytes held: automata and state slots. */
  get bytes(): number {
    let n = this.capacity * 4;
    for (const u of this.uploaded.values()) n += u.buffer.size;
    return n;
  }

  private use(a: TokenAutomaton): TokenAutomaton {
    const u = this.uploaded.get(a);
    if (u) u.users++;
    else this.uploaded.set(a, { buffer: this.gpu.upload(packAutomaton(a), 'token automaton'), users: 1 });
    return a;
  }

  private take(): number {
    if (this.free.length === 0) this.grow();
    return this.free.pop()!;
  }

  /** Doubles the state slots; the old ones are copied in a submit of their own, queued before the step being recorded. */
  private grow(): void {
    const capacity = Math.max(16, this.capacity * 2);
    const states = this.gpu.createBuffer(capacity * 4, 'constraint states');
    if (this.states) {
      const encoder = this.gpu.device.createCommandEncoder({ label: 'constraint states grow' });
      encoder.copyBufferToBuffer(this.states, 0, states, 0, this.capacity * 4);
      this.gpu.device.queue.submit([encoder.finish()]);
      this.states.destroy();
    }
    for (let s = capacity - 1; s >= this.capacity; s--) this.free.push(s);
    this.states = states;
    this.capacity = capacity;
  }
}

import { describe, expect, it } from 'vitest';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import type { Scheduler, SeqView } from '../src/scheduler/scheduler.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { expectValidPlan, kvOf, mustProgress } from './helpers/kv_view.ts';


const seq = (id: number, total: number, computed: number, state: SeqView['state']): SeqView => ({
  id,
  arrival: id,
  arrivalTime: id,
  totalTokens: total,
  computed,
  state,
  promptTokens: total,
  generated: 0,
  maxTokens: 16,
});

describe('FCFS scheduler', () => {
  const fcfs: Scheduler = new FcfsScheduler();

  it('decodes running sequences first, then chunks prompts into the remaining budget, in arrival order', () => {
    const seqs = [seq(1, 11, 10, 'running'), seq(2, 9, 8, 'running'), seq(3, 100, 0, 'waiting'), seq(4, 5, 0, 'waiting')];
    const plan = fcfs.plan(seqs, kvOf(seqs, 1000), { tokenBudget: 32, maxBatch: 8 }, 0);
    expect(plan).toEqual({ items: [{ seq: 1, tokens: 1 }, { seq: 2, tokens: 1 }, { seq: 3, tokens: 30 }], preempt: [] });
  });

  it('preempts the newest running sequences when KV is short, and admits nobody that step', () => {
    // pool of 6 blocks: seq 1 holds 2 (8 tokens) and needs a 3rd; seqs 2 and 3 hold 2 each
    const seqs = [seq(1, 9, 8, 'running'), seq(2, 9, 8, 'running'), seq(3, 9, 8, 'running'), seq(4, 4, 0, 'waiting')];
    const plan = fcfs.plan(seqs, kvOf(seqs, 6), { tokenBudget: 32, maxBatch: 8 }, 0);
    expect(plan.preempt).toEqual([3]);
    expect(plan.items).toEqual([{ seq: 1, tokens: 1 }, { seq: 2, tokens: 1 }]);
  });

  it('random states: never over the budget, the batch size or the free KV; no sequence twice; never idle while the head of the line fits', () => {
    const rand = mulberry32(3);
    let progressChecked = 0;
    for (let trial = 0; trial < 300; trial++) {
      const seqs: SeqView[] = [];
      for (let id = 0; id < 1 + Math.floor(rand() * 12); id++) {
        const total = 1 + Math.floor(rand() * 60);
        const running = rand() < 0.5;
        seqs.push(seq(id, total, running ? Math.floor(rand() * total) : 0, running ? 'running' : 'waiting'));
      }
      const kv = kvOf(seqs, Math.max(0, seqs.reduce((n, s) => n + Math.ceil(s.computed / 4), 0)) + Math.floor(rand() * 20));
      const limits = { tokenBudget: 1 + Math.floor(rand() * 64), maxBatch: 1 + Math.floor(rand() * 6) };
      const plan = fcfs.plan(seqs, kv, limits, 0);
      expectValidPlan(plan, seqs, kv, limits);
      // strict arrival order (ids are arrival order here): a running sequence always goes on; with none, only the first arrival may be admitted
      const firstWaiting = seqs.find((s) => s.state === 'waiting');
      if (mustProgress(seqs, kv, limits, (s) => s.state === 'running' || s === firstWaiting)) {
        progressChecked++;
        expect(plan.items.length, JSON.stringify({ seqs, limits })).toBeGreaterThan(0);
      }
    }
    expect(progressChecked).toBeGreaterThan(150); // not vacuous: 261 of these 300 states must progress
  });
});

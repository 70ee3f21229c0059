import { expect } from 'vitest';
import type { KvView, SchedulerLimits, SeqView, StepPlan } from '../../src/scheduler/scheduler.ts';

/** A scheduler's KV view for tests: one block per 4 tokens per sequence (one KV head), a fixed pool. */
export function kvOf(seqs: SeqView[], total: number): KvView {
  const held = (s: SeqView) => (s.state === 'running' ? Math.ceil(s.computed / 4) : 0);
  const used = seqs.reduce((n, s) => n + held(s), 0);
  return {
    freeBlocks: total - used,
    blocksNeeded: (id, t) => {
      const s = seqs.find((x) => x.id === id);
      const have = s && s.state === 'running' ? s.computed : 0;
      return Math.ceil((have + t) / 4) - Math.ceil(have / 4);
    },
    blocksHeld: (id) => held(seqs.find((x) => x.id === id)!),
  };
}

/**
 * What every scheduler plan must respect: no sequence twice, the batch size, the token budget, the
 * KV free after preemption, at most each sequence's unfed tokens, nobody both planned and preempted
 * or rejected, only running sequences preempted.
 */
export function expectValidPlan(plan: StepPlan, seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits): void {
  const ids = plan.items.map((i) => i.seq);
  const rejected = (plan.reject ?? []).map((r) => r.seq);
  expect(new Set(rejected).size).toBe(rejected.length);
  expect(new Set(ids).size).toBe(ids.length);
  expect(plan.items.length).toBeLessThanOrEqual(limits.maxBatch);
  expect(plan.items.reduce((n, i) => n + i.tokens, 0)).toBeLessThanOrEqual(limits.tokenBudget);
  const freed = plan.preempt.reduce((n, id) => n + kv.blocksHeld(id), 0);
  expect(plan.items.reduce((n, i) => n + kv.blocksNeeded(i.seq, i.tokens), 0)).toBeLessThanOrEqual(kv.freeBlocks + freed);
  expect(new Set(plan.preempt).size).toBe(plan.preempt.length);
  for (const i of plan.items) {
    const s = seqs.find((x) => x.id === i.seq)!;
    expect(i.tokens).toBeGreaterThan(0);
    expect(i.tokens).toBeLessThanOrEqual(s.totalTokens - s.computed);
    expect(plan.preempt).not.toContain(i.seq);
    expect(rejected).not.toContain(i.seq);
  }
  for (const id of plan.preempt) {
    expect(seqs.find((x) => x.id === id)!.state).toBe('running');
    expect(rejected).not.toContain(id);
  }
}

/**
 * Whether a plan must feed at least one sequence: every running sequence of `seqs` (those the policy
 * may serve) fits its next chunk (its unfed tokens, up to the token budget) once the other running
 * ones are preempted, as the engine guarantees by refusing requests larger than the pool (random
 * states that break this may end with everyone preempted); and some sequence that `feedable` allows
 * is running, or waiting with a next chunk that fits in the KV free now.
 */
export function mustProgress(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits, feedable: (s: SeqView) => boolean = () => true): boolean {
  if (limits.maxBatch < 1 || limits.tokenBudget < 1) return false;
  const chunk = (s: SeqView) => Math.min(s.totalTokens - s.computed, limits.tokenBudget);
  const running = seqs.filter((s) => s.state === 'running');
  const held = running.reduce((n, s) => n + kv.blocksHeld(s.id), 0);
  if (!running.every((s) => kv.blocksNeeded(s.id, chunk(s)) <= kv.freeBlocks + held - kv.blocksHeld(s.id))) return false;
  return seqs.some((s) => feedable(s) && (s.state === 'running' || kv.blocksNeeded(s.id, chunk(s)) <= kv.freeBlocks));
}

import type { BatchShape, CostModel } from './cost_model.ts';
import type { KvView, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

/** Limits on the predicted time of the step being packed (see packInOrder). */
export interface StepCap {
  cost: CostModel;
  /** the longest step a running sequence can absorb (Infinity: no limit) */
  allowance(s: SeqView): number;
}

/**
 * The batch-filling rules FCFS, EDF and the SLO policy share, for sequences already put in the
 * policy's order (most urgent first): each sequence in turn takes its next tokens (a decode token,
 * or the next prompt chunk) while the token budget, the batch size and the free KV allow. When a
 * running sequence cannot get KV, running sequences from the far end of the order (least urgent,
 * not yet planned) are preempted until it fits; if it does not fit even then, it is preempted
 * itself. Waiting sequences never cause preemption: one that does not fit is skipped, and with
 * `stopAtFirstMiss` (FCFS's strict order) admission stops there.
 *
 * `order` may mix running and waiting sequences (FCFS and EDF put all running ones first, the SLO
 * policy interleaves them by slack); a waiting one is admitted only while the step has preempted
 * nobody (KV is tight then: admitting would only cause more preemption).
 *
 * With a `cap`, running sequences protect their time per token from prompt work: a prompt chunk
 * (or admission) is trimmed so that the step's predicted time stays within the smallest allowance
 * of the running sequences (a running sequence whose chunk is trimmed to nothing keeps its KV and
 * waits: the cap never preempts), and leaves a batch slot and a budget token for each running
 * decode later in the order, so decode tokens of running sequences are always taken.
 */
export function packInOrder(order: readonly SeqView[], kv: KvView, limits: SchedulerLimits, stopAtFirstMiss = false, cap?: StepCap): StepPlan {
  const items: StepPlan['items'] = [];
  const preempt: number[] = [];
  let free = kv.freeBlocks;
  let budget = limits.tokenBudget;
  const full = () => items.length >= limits.maxBatch || budget <= 0;

  const shape: BatchShape = { prefillTokens: 0, prefillAttention: 0, decodeSeqs: 0, decodeContext: 0 };
  const isDecode = (s: SeqView, tokens: number) => tokens === 1 && s.computed >= s.promptTokens;
  const withItem = (s: SeqView, tokens: number): BatchShape =>
    isDecode(s, tokens)
      ? { ...shape, decodeSeqs: shape.decodeSeqs + 1, decodeContext: shape.decodeContext + s.computed }
      : { ...shape, prefillTokens: shape.prefillTokens + tokens, prefillAttention: shape.prefillAttention + tokens * (s.computed + tokens) };
  /** the smallest allowance of the running sequences: prompt work may not stretch the step past it */
  let maxSeconds = Infinity;
  // running decodes not packed yet: they will run, so prompt work must leave room for them
  const pending = { seqs: 0, context: 0 };
  const pendingDecode = (s: SeqView) => s.state === 'running' && isDecode(s, s.totalTokens - s.computed);
  if (cap) {
    for (const s of order) {
      if (s.state !== 'running') continue;
      maxSeconds = Math.min(maxSeconds, cap.allowance(s));
      if (pendingDecode(s)) {
        pending.seqs++;
        pending.context += s.computed;
      }
    }
  }
  const settle = (s: SeqView) => {
    if (cap && pendingDecode(s)) {
      pending.seqs--;
      pending.context -= s.computed;
    }
  };
  const predicted = (b: BatchShape) => cap!.cost.stepSeconds({ ...b, decodeSeqs: b.decodeSeqs + pending.seqs, decodeContext: b.decodeContext + pending.context });
  /** The most of `tokens` this sequence may feed within the step-time cap (0: none). */
  const underCap = (s: SeqView, tokens: number): number => {
    if (!cap || maxSeconds === Infinity || (s.state === 'running' && isDecode(s, tokens))) return tokens;
    if (predicted(withItem(s, tokens)) <= maxSeconds) return tokens;
    let lo = 0;
    let hi = tokens - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (predicted(withItem(s, mid)) <= maxSeconds) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };

  // under a cap, prompt work leaves a slot and a budget token for every running decode still to pack
  const reserved = (s: SeqView) => (cap && !pendingDecode(s) ? pending.seqs : 0);
  /** the tokens `s` may feed this step, before KV: within the budget, the reservation and the cap */
  const allowed = (s: SeqView) => (items.length + reserved(s) >= limits.maxBatch ? 0 : underCap(s, Math.min(s.totalTokens - s.computed, budget - reserved(s))));

  const take = (s: SeqView): boolean => {
    if (full()) return false;
    const tokens = allowed(s);
    if (tokens <= 0) return false;
    const blocks = kv.blocksNeeded(s.id, tokens);
    if (blocks > free) return false;
    Object.assign(shape, withItem(s, tokens));
    free -= blocks;
    budget -= tokens;
    items.push({ seq: s.id, tokens });
    return true;
  };

  const queue = [...order];
  let admitting = true;
  for (let next = 0; next < queue.length; next++) {
    const s = queue[next];
    if (s.state === 'waiting') {
      // no admissions in a step that preempts: KV is tight, admitting would only preempt more
      if (!admitting || preempt.length > 0) continue;
      if (!take(s) && (stopAtFirstMiss || full())) admitting = false;
      continue;
    }
    settle(s); // taken or preempted below: either way no longer pending
    if (take(s)) continue;
    if (full()) break;
    // held back by the step-time cap or the decodes' reservation, not by KV: it keeps its KV for a later step
    if (allowed(s) <= 0) continue;
    // KV short: preempt the least urgent running sequences not yet planned until this one fits
    while (kv.blocksNeeded(s.id, Math.min(s.totalTokens - s.computed, budget)) > free) {
      let v = queue.length - 1;
      while (v > next && queue[v].state !== 'running') v--;
      if (v <= next) break;
      const victim = queue.splice(v, 1)[0];
      settle(victim);
      preempt.push(victim.id);
      free += kv.blocksHeld(victim.id);
    }
    if (!take(s)) {
      preempt.push(s.id); // even so it does not fit now: it waits, and recomputes later
      free += kv.blocksHeld(s.id);
    }
  }
  return { items, preempt };
}

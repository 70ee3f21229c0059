import type { KvView, Scheduler, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

/**
 * First come, first served continuous batching with chunked prefill (vLLM's default behaviour,
 * Sarathi-style budget): running sequences first in arrival order — decodes take one token,
 * unfinished prompts the next chunk — then waiting sequences are admitted in arrival order while
 * the token budget, the batch size and the KV pool allow. When KV is short for a running
 * sequence, the most recently arrived running sequences are preempted (recomputed later).
 */
export class FcfsScheduler implements Scheduler {
  readonly name = 'fcfs';

  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits): StepPlan {
    const byArrival = [...seqs].sort((a, b) => a.arrival - b.arrival);
    const running = byArrival.filter((s) => s.state === 'running');
    const waiting = byArrival.filter((s) => s.state === 'waiting');
    const items: StepPlan['items'] = [];
    const preempt: number[] = [];
    let free = kv.freeBlocks;
    let budget = limits.tokenBudget;

    const take = (s: SeqView): boolean => {
      if (items.length >= limits.maxBatch || budget <= 0) return false;
      const tokens = Math.min(s.totalTokens - s.computed, budget);
      if (tokens <= 0) return false;
      const blocks = kv.blocksNeeded(s.id, tokens);
      if (blocks > free) return false;
      free -= blocks;
      budget -= tokens;
      items.push({ seq: s.id, tokens });
      return true;
    };

    // running sequences keep their place; if one cannot get KV, preempt from the newest end
    const queue = [...running];
    while (queue.length > 0) {
      const s = queue.shift()!;
      if (take(s)) continue;
      if (items.length >= limits.maxBatch || budget <= 0) break;
      // KV short: free the newest running sequences (not yet planned) until this one fits
      while (queue.length > 0 && kv.blocksNeeded(s.id, Math.min(s.totalTokens - s.computed, budget)) > free) {
        const victim = queue.pop()!;
        preempt.push(victim.id);
        free += kv.blocksHeld(victim.id);
      }
      if (!take(s)) {
        preempt.push(s.id); // even alone it does not fit now: it waits, and recomputes later
        free += kv.blocksHeld(s.id);
      }
    }
    // preempted sequences rejoin the waiting line at their arrival position
    if (preempt.length === 0) for (const s of waiting) if (!take(s)) break;
    return { items, preempt };
  }
}

import { packInOrder } from './pack.ts';
import type { KvView, Scheduler, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

/**
 * First come, first served continuous batching with chunked prefill (vLLM's default behaviour,
 * Sarathi-style budget): running sequences first in arrival order — decodes take one token,
 * unfinished prompts the next chunk — then waiting sequences are admitted in arrival order while
 * the token budget, the batch size and the KV pool allow (strictly: admission stops at the first
 * that does not fit). When KV is short for a running sequence, the most recently arrived running
 * sequences are preempted (recomputed later).
 */
export class FcfsScheduler implements Scheduler {
  readonly name = 'fcfs';

  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits): StepPlan {
    const byArrival = [...seqs].sort((a, b) => a.arrival - b.arrival);
    const order = [...byArrival.filter((s) => s.state === 'running'), ...byArrival.filter((s) => s.state === 'waiting')];
    return packInOrder(order, kv, limits, true);
  }
}

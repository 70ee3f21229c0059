import type { CostModel } from './cost_model.ts';
import { packInOrder } from './pack.ts';
import type { KvView, Scheduler, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

/**
 * Earliest deadline first. Each sequence's effective deadline (seconds, the plan clock) is the
 * next thing its SLO asks of it:
 *  - no first token yet: arrival + ttft (or, without a ttft, the request deadline);
 *  - generating: the next token's deadline under the tpot, firstTokenTime + tpot x generated
 *    (token k is due tpot x (k - 1) after the first), or the request deadline;
 *  the earlier of those that apply (a tpot-only request waiting for its first token has none yet:
 *  it ranks after every dated sequence and before those without an SLO). Sequences without any SLO have no deadline: they come after
 *  all others, first come first served among themselves. Ties go to the higher priority, then to
 *  the earlier arrival.
 *
 * Batch filling is FCFS's (src/scheduler/pack.ts): running sequences first, in deadline order,
 * each takes a decode token or its next prompt chunk while the token budget, batch size and KV
 * allow; when KV is short the running sequences with the latest deadlines are preempted; then
 * waiting sequences are admitted in deadline order (one that does not fit is skipped, so a small
 * urgent request is not held behind a large one). EDF rejects nobody. The cost model is optional
 * and unused by the ordering; it is accepted so that every SLO policy is built the same way.
 */
export class EdfScheduler implements Scheduler {
  readonly name = 'edf';

  constructor(readonly cost?: CostModel) {}

  /** `now` is not needed: deadlines are absolute times on the same clock. */
  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits, _now?: number): StepPlan {
    const keyed = seqs.map((s) => ({ s, d: effectiveDeadline(s) }));
    keyed.sort((a, b) => a.d - b.d || Number(!a.s.slo) - Number(!b.s.slo) || (b.s.priority ?? 0) - (a.s.priority ?? 0) || a.s.arrival - b.s.arrival);
    const order = keyed.map((k) => k.s);
    return packInOrder([...order.filter((s) => s.state === 'running'), ...order.filter((s) => s.state === 'waiting')], kv, limits);
  }
}

/** The sequence's next deadline in seconds on the plan clock; Infinity when it has no SLO. */
export function effectiveDeadline(s: SeqView): number {
  const slo = s.slo;
  if (!slo) return Infinity;
  let d = Infinity;
  if (slo.deadlineMs !== undefined) d = s.arrivalTime + slo.deadlineMs / 1e3;
  if (s.firstTokenTime === undefined) {
    if (slo.ttftMs !== undefined) d = Math.min(d, s.arrivalTime + slo.ttftMs / 1e3);
  } else if (slo.tpotMs !== undefined) {
    d = Math.min(d, s.firstTokenTime + (slo.tpotMs / 1e3) * s.generated);
  }
  return d;
}

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
  return new Packer(kv, limits, cap).pack(order, stopAtFirstMiss);
}

const isDecode = (s: SeqView, tokens: number) => tokens === 1 && s.computed >= s.promptTokens;
const pendingDecode = (s: SeqView) => s.state === 'running' && isDecode(s, s.totalTokens - s.computed);

/** One step being packed (a class rather than closures: a step is packed on every engine iteration). */
class Packer {
  readonly items: StepPlan['items'] = [];
  readonly preempt: number[] = [];
  private free: number;
  private budget: number;
  private readonly shape: BatchShape = { prefillTokens: 0, prefillAttention: 0, decodeSeqs: 0, decodeContext: 0 };
  /** the smallest allowance of the running sequences: prompt work may not stretch the step past it */
  private maxSeconds = Infinity;
  /** running decodes not packed yet: they will run, so prompt work must leave room for them */
  private pendingSeqs = 0;
  private pendingContext = 0;

  constructor(
    private readonly kv: KvView,
    private readonly limits: SchedulerLimits,
    private readonly cap?: StepCap,
  ) {
    this.free = kv.freeBlocks;
    this.budget = limits.tokenBudget;
  }

  pack(order: readonly SeqView[], stopAtFirstMiss: boolean): StepPlan {
    if (this.cap) {
      for (const s of order) {
        if (s.state !== 'running') continue;
        this.maxSeconds = Math.min(this.maxSeconds, this.cap.allowance(s));
        if (pendingDecode(s)) {
          this.pendingSeqs++;
          this.pendingContext += s.computed;
        }
      }
    }
    const queue = [...order];
    let admitting = true;
    for (let next = 0; next < queue.length; next++) {
      const s = queue[next];
      if (s.state === 'waiting') {
        // no admissions in a step that preempts: KV is tight, admitting would only preempt more
        if (!admitting || this.preempt.length > 0) continue;
        if (!this.take(s) && (stopAtFirstMiss || this.full())) admitting = false;
        continue;
      }
      this.settle(s); // taken or preempted below: either way no longer pending
      if (this.take(s)) continue;
      if (this.full()) break;
      // held back by the step-time cap or the decodes' reservation, not by KV: it keeps its KV for a later step
      if (this.allowed(s) <= 0) continue;
      // KV short: preempt the least urgent running sequences not yet planned until this one fits
      while (this.kv.blocksNeeded(s.id, Math.min(s.totalTokens - s.computed, this.budget)) > this.free) {
        let v = queue.length - 1;
        while (v > next && queue[v].state !== 'running') v--;
        if (v <= next) break;
        const victim = queue.splice(v, 1)[0];
        this.settle(victim);
        this.preempt.push(victim.id);
        this.free += this.kv.blocksHeld(victim.id);
      }
      if (!this.take(s)) {
        this.preempt.push(s.id); // even so it does not fit now: it waits, and recomputes later
        this.free += this.kv.blocksHeld(s.id);
      }
    }
    return { items: this.items, preempt: this.preempt };
  }

  private full(): boolean {
    return this.items.length >= this.limits.maxBatch || this.budget <= 0;
  }

  private settle(s: SeqView): void {
    if (this.cap && pendingDecode(s)) {
      this.pendingSeqs--;
      this.pendingContext -= s.computed;
    }
  }

  private withItem(s: SeqView, tokens: number): BatchShape {
    const b = this.shape;
    return isDecode(s, tokens)
      ? { ...b, decodeSeqs: b.decodeSeqs + 1, decodeContext: b.decodeContext + s.computed }
      : { ...b, prefillTokens: b.prefillTokens + tokens, prefillAttention: b.prefillAttention + tokens * (s.computed + tokens) };
  }

  private predicted(b: BatchShape): number {
    return this.cap!.cost.stepSeconds({ ...b, decodeSeqs: b.decodeSeqs + this.pendingSeqs, decodeContext: b.decodeContext + this.pendingContext });
  }

  /** The most of `tokens` this sequence may feed within the step-time cap (0: none). */
  private underCap(s: SeqView, tokens: number): number {
    if (!this.cap || this.maxSeconds === Infinity || (s.state === 'running' && isDecode(s, tokens))) return tokens;
    if (this.predicted(this.withItem(s, tokens)) <= this.maxSeconds) return tokens;
    let lo = 0;
    let hi = tokens - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.predicted(this.withItem(s, mid)) <= this.maxSeconds) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** The tokens `s` may feed this step, before KV: within the budget, the decodes' reservation and the cap. */
  private allowed(s: SeqView): number {
    // under a cap, prompt work leaves a slot and a budget token for every running decode still to pack
    const reserved = this.cap && !pendingDecode(s) ? this.pendingSeqs : 0;
    if (this.items.length + reserved >= this.limits.maxBatch) return 0;
    return this.underCap(s, Math.min(s.totalTokens - s.computed, this.budget - reserved));
  }

  private take(s: SeqView): boolean {
    if (this.full()) return false;
    const tokens = this.allowed(s);
    if (tokens <= 0) return false;
    const blocks = this.kv.blocksNeeded(s.id, tokens);
    if (blocks > this.free) return false;
    Object.assign(this.shape, this.withItem(s, tokens));
    this.free -= blocks;
    this.budget -= tokens;
    this.items.push({ seq: s.id, tokens });
    return true;
  }
}

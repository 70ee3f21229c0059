/**
 * A goodput-maximising, SLO-aware policy (in the spirit of JITServe): serve each request just
 * enough to meet its SLO just in time, give the slack to others, and refuse early what cannot be
 * met, so that capacity goes to requests that still count.
 *
 * Each step, for every sequence with an SLO (times in seconds on the plan clock):
 *  1. Output length. The estimate L is a high quantile (p90 by default) of the output lengths of
 *     finished sequences (`observeFinished`, fed by the engine), conditioned on being longer than
 *     what the sequence has generated so far (so it is refined as the sequence generates), capped
 *     by max_tokens and at least one more token. With too few samples (fewer than `minSamples`
 *     overall, or beyond that many longer than the sequence already is) L = max_tokens.
 *  2. Remaining service, served alone, from the CostModel: `next` = the steps that feed its
 *     unfed tokens (the prompt in budget-sized chunks, a recompute after preemption, or one decode
 *     token) and produce its next token; `rest` = the (L - generated - 1) decode steps after it,
 *     at the context length halfway through them.
 *  3. Slack = min over its objectives of (due time - now - service still needed by then):
 *       ttft (no first token yet): arrival + ttft        - now - next
 *       deadline:                  arrival + deadline    - now - next - rest
 *       tpot:                      first + tpot x (L - 1) - now - next - rest
 *     where `first` is the first token's time, or now + next while it has none.
 *  4. Reject (plan.reject) a sequence that cannot meet its SLO even if served alone from now on,
 *     judged on what is certain rather than on the length estimate: no first token and
 *     now + next > arrival + ttft; now + next > arrival + deadline (not even one more token in
 *     time); or no first token, tpot set, L > 1, and one solo decode step already longer than the
 *     tpot (no schedule can meet it). A sequence already streaming is never cut for its tpot.
 *  5. Order: least slack first (ties: higher priority, then earlier arrival); sequences without an
 *     SLO after all others, by priority then arrival: they fill what capacity is left. Running and
 *     waiting sequences are interleaved in that order, so an urgent new request takes budget and
 *     batch slots ahead of a running one that is ahead of its schedule; the ones at the end of
 *     the order are deferred when the step is full, and their slack shrinks until they come first.
 *     The batch is filled by src/scheduler/pack.ts: when KV is short for a running sequence, the
 *     running sequences with the most slack (no-SLO ones first) are preempted.
 *  6. Just in time: streaming sequences with a tpot protect their pace from prompt work. Prompt
 *     chunks and admissions are trimmed so that the step's predicted time stays within every
 *     stream's allowance (until its next token is due, first + tpot x generated, and at least
 *     paceFloor tpot). Decode tokens always run. Without this, admitting more work under load
 *     stretches every running stream past its tpot at once and all miss together; with it, excess
 *     arrivals wait, and those that can no longer make their TTFT are rejected (step 4).
 *
 * Service estimates are solo step times, a lower bound under batching: rejection errs towards
 * serving, and the slack order is relative. With the online cost model (src/scheduler/online_cost.ts)
 * predicting 0 until it has measured enough steps, the policy starts as earliest-deadline-first
 * and rejects only requests whose deadline has already passed.
 */
import type { BatchShape, CostModel } from './cost_model.ts';
import { packInOrder } from './pack.ts';
import type { KvView, Scheduler, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

export interface SloSchedulerOptions {
  /** the quantile of observed output lengths used as the estimate; default 0.9 */
  quantile?: number;
  /** finished sequences remembered (the most recent); default 2000 */
  window?: number;
  /** samples needed before the estimate replaces max_tokens; default 8 */
  minSamples?: number;
  /**
   * the shortest step (in tpot) a stream always tolerates, however young; default 2. With 1, prompt
   * work is squeezed hardest. The default was chosen before a pack.ts fix (a running prompt trimmed
   * to nothing keeps its KV); since then 1 measures better at every rate on the Azure conv trace
   * (docs/simulator.md), and the choice is revisited with the burst workloads of issue 11.
   */
  paceFloor?: number;
}

/** What the policy worked out for one sequence (exported for tests and tools). */
export interface SloAssessment {
  /** estimated final output length */
  outputTokens: number;
  /** seconds, served alone, until its next token */
  nextSeconds: number;
  /** seconds, served alone, of the decode steps after that */
  restSeconds: number;
  /** seconds to spare (Infinity without an SLO) */
  slack: number;
  hopeless: boolean;
}

export class SloScheduler implements Scheduler {
  readonly name = 'slo';
  private readonly quantile: number;
  private readonly window: number;
  private readonly minSamples: number;
  private readonly paceFloor: number;
  /** recent finished output lengths, in arrival order (for eviction) and sorted (for quantiles) */
  private readonly recent: number[] = [];
  private readonly sorted: number[] = [];

  constructor(
    readonly cost: CostModel,
    options: SloSchedulerOptions = {},
  ) {
    this.quantile = options.quantile ?? 0.9;
    this.window = options.window ?? 2000;
    this.minSamples = options.minSamples ?? 8;
    this.paceFloor = options.paceFloor ?? 2;
    if (!(this.quantile > 0 && this.quantile <= 1)) throw new Error(`quantile must be in (0, 1], got ${this.quantile}`);
  }

  observeFinished(outputTokens: number): void {
    if (!(outputTokens >= 0)) return;
    this.recent.push(outputTokens);
    this.sorted.splice(upperBound(this.sorted, outputTokens), 0, outputTokens);
    if (this.recent.length > this.window) {
      const old = this.recent.shift()!;
      this.sorted.splice(upperBound(this.sorted, old) - 1, 1);
    }
  }

  /** The conservative final output length of `s` (see the file header, step 1). */
  estimateOutput(s: SeqView): number {
    const floor = Math.min(s.maxTokens, s.generated + 1);
    if (this.sorted.length < this.minSamples) return Math.max(floor, s.maxTokens);
    const from = upperBound(this.sorted, s.generated); // samples longer than what it has
    const n = this.sorted.length - from;
    if (n < this.minSamples) return Math.max(floor, s.maxTokens);
    const q = this.sorted[from + Math.max(0, Math.ceil(this.quantile * n) - 1)];
    return Math.max(floor, Math.min(q, s.maxTokens));
  }

  assess(s: SeqView, now: number, limits: SchedulerLimits): SloAssessment {
    const L = this.estimateOutput(s);
    const nextSeconds = this.feedSeconds(s, limits);
    const more = Math.max(0, L - s.generated - 1);
    const restSeconds = more > 0 ? more * this.step({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: s.totalTokens + 1 + more / 2 }) : 0;
    const slo = s.slo;
    if (!slo || (slo.ttftMs === undefined && slo.tpotMs === undefined && slo.deadlineMs === undefined)) {
      return { outputTokens: L, nextSeconds, restSeconds, slack: Infinity, hopeless: false };
    }
    const next = now + nextSeconds;
    const end = next + restSeconds;
    let slack = Infinity;
    let hopeless = false;
    const started = s.firstTokenTime !== undefined;
    if (slo.ttftMs !== undefined && !started) {
      const due = s.arrivalTime + slo.ttftMs / 1e3;
      slack = Math.min(slack, due - next);
      if (next > due) hopeless = true;
    }
    if (slo.deadlineMs !== undefined) {
      const due = s.arrivalTime + slo.deadlineMs / 1e3;
      slack = Math.min(slack, due - end);
      if (next > due) hopeless = true;
    }
    if (slo.tpotMs !== undefined) {
      const tpot = slo.tpotMs / 1e3;
      const first = s.firstTokenTime ?? next;
      slack = Math.min(slack, first + tpot * (L - 1) - end);
      if (!started && L > 1 && this.step({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: s.totalTokens + 1 }) > tpot) hopeless = true;
    }
    return { outputTokens: L, nextSeconds, restSeconds, slack, hopeless };
  }

  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits, now: number): StepPlan {
    const reject: number[] = [];
    const keyed: { s: SeqView; slack: number }[] = [];
    for (const s of seqs) {
      const a = this.assess(s, now, limits);
      if (a.hopeless) reject.push(s.id);
      else keyed.push({ s, slack: a.slack });
    }
    keyed.sort(
      (a, b) =>
        Number(a.slack === Infinity) - Number(b.slack === Infinity) ||
        (a.slack === Infinity ? 0 : a.slack - b.slack) ||
        (b.s.priority ?? 0) - (a.s.priority ?? 0) ||
        a.s.arrival - b.s.arrival,
    );
    const plan = packInOrder(
      keyed.map((k) => k.s),
      kv,
      limits,
      false,
      { cost: this.cost, allowance: (s) => this.allowance(s, now) },
    );
    return reject.length > 0 ? { ...plan, reject } : plan;
  }

  /**
   * The longest step a streaming sequence can absorb and stay on its time-per-token pace: until its
   * next token is due (first + tpot x generated; a stream ahead of schedule lends its banked time),
   * never less than paceFloor tpot. Infinity for sequences without a tpot or not yet streaming.
   */
  private allowance(s: SeqView, now: number): number {
    if (s.firstTokenTime === undefined || s.slo?.tpotMs === undefined) return Infinity;
    const tpot = s.slo.tpotMs / 1e3;
    return Math.max(this.paceFloor * tpot, s.firstTokenTime + tpot * s.generated - now);
  }

  /** Solo seconds to feed the sequence's unfed tokens (prompt chunks, a recompute, or one decode). */
  private feedSeconds(s: SeqView, limits: SchedulerLimits): number {
    let left = s.totalTokens - s.computed;
    let ctx = s.computed;
    if (left <= 0) return 0;
    if (left === 1 && ctx >= s.promptTokens) return this.step({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: ctx });
    let t = 0;
    const chunk = Math.max(1, limits.tokenBudget);
    const chunks = Math.ceil(left / chunk);
    if (chunks > 32) {
      // many chunks: each at the mean chunk length and the context halfway through
      const c = left / chunks;
      const mid = ctx + left / 2;
      return chunks * this.step({ prefillTokens: c, prefillAttention: c * (mid + c / 2), decodeSeqs: 0, decodeContext: 0 });
    }
    while (left > 0) {
      const c = Math.min(chunk, left);
      t += this.step({ prefillTokens: c, prefillAttention: c * (ctx + c), decodeSeqs: 0, decodeContext: 0 });
      ctx += c;
      left -= c;
    }
    return t;
  }

  private step(b: BatchShape): number {
    const t = this.cost.stepSeconds(b);
    return Number.isFinite(t) && t > 0 ? t : 0;
  }
}

/** The first index whose value is greater than x (sorted ascending). */
function upperBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

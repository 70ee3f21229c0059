/**
 * A goodput-maximising, SLO-aware policy (in the spirit of JITServe): serve each request just
 * enough to meet its SLO just in time, give the slack to others, order prompts so that as many as
 * possible make their first token in time, and refuse only what cannot be met.
 *
 * Sequences fall in four groups each step (times in seconds on the plan clock):
 *  - streams (a first token emitted; decoding, or recomputing after preemption) with an SLO;
 *  - prompts (no first token yet) with a due time: arrival + ttft, or for a deadline alone the
 *    deadline less the estimated decode time after the first token;
 *  - prompts with a tpot only (no due time for their first token);
 *  - sequences without an SLO, which fill what capacity is left (by priority, then arrival).
 *
 * 1. Output length: a conservative quantile of the output lengths seen so far, refined as a
 *    sequence generates (src/scheduler/output_estimate.ts). It affects only the slack of streams
 *    and of deadline requests, never a rejection.
 * 2. Service times come from the CostModel. `feed` = the steps, served alone, that feed a
 *    sequence's unfed tokens (the prompt in budget-sized chunks, a recompute, or one decode) and
 *    produce its next token; `rest` = the decode steps after it, at the context halfway through them.
 * 3. Prompt order (the burst-robust part). A prompt's prefill `work` is its `feed` plus what the
 *    running decodes add to each of its chunks. The prompts being prefilled and the first `horizon`
 *    waiting ones (in due order) are ordered by src/scheduler/prompt_order.ts: the most that can be
 *    on time together (Moore-Hodgson), and among them, at the front, the shortest remaining work
 *    first wherever that keeps the others on time; the prompts that cannot all be on time beside
 *    the others come after. A burst is thus prefilled shortest first, a long prompt with little
 *    slack still goes first when the short ones can wait for it, and with chunked prefill a long
 *    prompt progresses between short ones.
 * 4. Order of the step: streams (least slack first; slack = due time of the SLO less the service
 *    still needed by then) merged with the on-time prompts (slack = due less predicted finish),
 *    then tpot-only prompts (shortest first), then the late prompts (shortest first: they may still
 *    make it, as estimates err long), then sequences without an SLO. The batch is filled by
 *    src/scheduler/pack.ts, which always leaves room for the running streams' decode tokens; when
 *    KV is short it preempts from the end of the order.
 * 5. Just in time: streams with a tpot protect their pace from prompt work. Prompt chunks are
 *    trimmed so that the step's predicted time stays within every stream's allowance (until its
 *    next token is due, first + tpot x generated, and at least `paceFloor` tpot).
 * 6. Rejection (plan.reject, with the objective and estimate, src/scheduler/scheduler.ts), only
 *    on lower bounds, never on the output-length estimate:
 *      - a prompt whose first token, served alone from now after the prompt work committed ahead
 *        of it (the prompts being prefilled, on time, due no later), cannot come before its ttft
 *        (or its deadline);
 *      - a stream that cannot produce even its next token before its deadline;
 *      - a prompt with a tpot that one solo decode step already exceeds (no schedule meets it).
 *    A stream already going is never cut for its tpot. A prompt that is late but not hopeless is
 *    not rejected: it waits, and is re-ordered every step, so it is served if estimates were
 *    pessimistic.
 *
 * Cost per step: the waiting prompts are kept in an index sorted by due time (inserted once, on
 * arrival) and a heap of the times at which each becomes hopeless alone; a step reads the first
 * `horizon` of the index, pops the heap's expired entries, and evaluates the cost model only for
 * streams, prompts being prefilled and that window, never for the whole queue. Per-sequence
 * estimates are cached until the sequence's state changes.
 *
 * Service estimates are solo step times, a lower bound under batching. With the online cost model
 * (src/scheduler/online_cost.ts) predicting 0 until it has measured enough steps, the policy starts
 * with every prompt's work 0: shortest prompt (in tokens) first, and rejects only requests
 * already past due.
 */
import { Heap } from '../util/heap.ts';
import type { BatchShape, CostModel } from './cost_model.ts';
import { OutputLengthEstimator } from './output_estimate.ts';
import { packInOrder, type StepCap } from './pack.ts';
import { decodeRunSeconds, decodeSeconds, prefillSeconds, stepSeconds } from './service_time.ts';
import { orderPrompts } from './prompt_order.ts';
import type { KvView, Rejection, Scheduler, SchedulerLimits, SeqView, StepPlan } from './scheduler.ts';

export interface SloSchedulerOptions {
  /** the quantile of observed output lengths used as the estimate; default 0.9 */
  quantile?: number;
  /** finished sequences remembered (the most recent); default 2000 */
  window?: number;
  /** samples needed before the estimate replaces max_tokens; default 8 */
  minSamples?: number;
  /** the shortest step (in tpot) a stream always tolerates, however young; default 1 */
  paceFloor?: number;
  /** waiting prompts ordered per step (the rest wait in the index, in due order); default 256 */
  horizon?: number;
}

/** What the policy worked out for one sequence served alone (exported for tests and tools). */
export interface SloAssessment {
  /** estimated final output length */
  outputTokens: number;
  /** seconds, served alone, until its next token */
  nextSeconds: number;
  /** seconds, served alone, of the decode steps after that */
  restSeconds: number;
  /** seconds to spare (Infinity without an SLO) */
  slack: number;
  /** the objective it cannot meet even served alone from now, if any */
  hopeless?: Rejection;
}

/** Cached per live sequence, keyed by its id. */
interface Entry {
  view: SeqView;
  /** the last plan that saw it live, and the plan that rejected it */
  seen: number;
  rejected: number;
  /** the state `feed` was computed for */
  computed: number;
  totalTokens: number;
  /** solo seconds to its next token, and the prefill chunks (steps) that takes */
  feed: number;
  chunks: number;
  /** prompts: when the first token is due (ordering), and the hard limits (rejection) */
  due: number;
  ttftDue: number;
  deadline: number;
  /** in the waiting index (and the hopeless heap) */
  indexed: boolean;
}

/** The on-time prompts being prefilled, by due time: their dues and the prefix sums of their unfed tokens. */
interface Committed {
  dues: number[];
  tokens: number[];
}

interface Prompt {
  e: Entry;
  due: number;
  work: number;
  tokens: number;
  pinned: boolean;
}

/** A Scheduler, and the step cap (StepCap) that keeps streams on pace in the batches it packs. */
export class SloScheduler implements Scheduler, StepCap {
  readonly name = 'slo';
  private readonly lengths: OutputLengthEstimator;
  private readonly paceFloor: number;
  private readonly horizon: number;
  private readonly entries = new Map<number, Entry>();
  /** waiting dated prompts by (due, feed, prompt length, arrival); stale entries are dropped as they are met */
  private index: Entry[] = [];
  /** waiting prompts by the time they become hopeless served alone (min of ttftDue, deadline, less feed) */
  private readonly expiry = new Heap<{ at: number; e: Entry }>((a, b) => a.at < b.at);
  private stamp = 0;
  /** the plan's clock, for allowance() */
  private now = 0;
  private tokenBudget = 1;

  constructor(
    readonly cost: CostModel,
    options: SloSchedulerOptions = {},
  ) {
    this.lengths = new OutputLengthEstimator(options.quantile ?? 0.9, options.window ?? 2000, options.minSamples ?? 8);
    this.paceFloor = options.paceFloor ?? 1;
    this.horizon = options.horizon ?? 256;
    if (!(this.horizon >= 1)) throw new Error(`horizon must be >= 1, got ${this.horizon}`);
  }

  observeFinished(outputTokens: number): void {
    this.lengths.observe(outputTokens);
  }

  /** The conservative final output length of `s` (src/scheduler/output_estimate.ts). */
  estimateOutput(s: SeqView): number {
    return this.lengths.estimate(s);
  }

  /** The sequence served alone from now: its service times, slack, and whether that already misses. */
  assess(s: SeqView, now: number, limits: SchedulerLimits): SloAssessment {
    this.tokenBudget = Math.max(1, limits.tokenBudget);
    const { seconds: nextSeconds } = this.feed(s.computed, s.totalTokens - s.computed, s.computed >= s.promptTokens);
    const L = this.estimateOutput(s);
    const more = Math.max(0, L - s.generated - 1);
    const restSeconds = decodeRunSeconds(this.cost, s.totalTokens + 1, more);
    const slo = s.slo;
    if (!slo || (slo.ttftMs === undefined && slo.tpotMs === undefined && slo.deadlineMs === undefined)) {
      return { outputTokens: L, nextSeconds, restSeconds, slack: Infinity };
    }
    if (s.firstTokenTime !== undefined) {
      const slack = this.streamSlack(s, now);
      if (slack !== null) return { outputTokens: L, nextSeconds, restSeconds, slack };
      const due = s.arrivalTime + slo.deadlineMs! / 1e3;
      return { outputTokens: L, nextSeconds, restSeconds, slack: due - now - nextSeconds - restSeconds, hopeless: { seq: s.id, objective: 'deadline', neededSeconds: nextSeconds, aheadSeconds: 0, leftSeconds: due - now } };
    }
    // a prompt: its first token is `next`
    const next = now + nextSeconds;
    const end = next + restSeconds;
    let slack = Infinity;
    let hopeless: Rejection | undefined;
    if (slo.ttftMs !== undefined) {
      const due = s.arrivalTime + slo.ttftMs / 1e3;
      slack = Math.min(slack, due - next);
      if (next > due) hopeless = { seq: s.id, objective: 'ttft', neededSeconds: nextSeconds, aheadSeconds: 0, leftSeconds: due - now };
    }
    if (slo.deadlineMs !== undefined) {
      const due = s.arrivalTime + slo.deadlineMs / 1e3;
      slack = Math.min(slack, due - end);
      if (next > due) hopeless ??= { seq: s.id, objective: 'deadline', neededSeconds: nextSeconds, aheadSeconds: 0, leftSeconds: due - now };
    }
    if (slo.tpotMs !== undefined) {
      const tpot = slo.tpotMs / 1e3;
      slack = Math.min(slack, next + tpot * (L - 1) - end);
      const solo = L <= 1 ? 0 : decodeSeconds(this.cost, s.totalTokens + 1);
      if (solo > tpot) hopeless ??= { seq: s.id, objective: 'tpot', neededSeconds: solo, aheadSeconds: 0, leftSeconds: tpot };
    }
    return { outputTokens: L, nextSeconds, restSeconds, slack, hopeless };
  }

  /**
   * Whether the streams all fit this step beside each other (batch, budget) and the KV holds the
   * next tokens of every running sequence (so the plan preempts nobody): the streams' order then
   * changes nothing.
   */
  private streamsFit(started: readonly SeqView[], seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits): boolean {
    if (started.length > limits.maxBatch || started.length > limits.tokenBudget) return false;
    let blocks = 0;
    for (const s of seqs) if (s.state === 'running') blocks += kv.blocksNeeded(s.id, Math.min(s.totalTokens - s.computed, limits.tokenBudget));
    return blocks <= kv.freeBlocks;
  }

  /** Whether every sequence is a running decode and all of them fit one step (batch, budget, KV). */
  private allDecodeAtOnce(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits): boolean {
    if (seqs.length > limits.maxBatch || seqs.length > limits.tokenBudget) return false;
    let blocks = 0;
    for (const s of seqs) {
      if (s.state !== 'running' || s.totalTokens - s.computed !== 1 || s.computed < s.promptTokens) return false;
      blocks += kv.blocksNeeded(s.id, 1);
    }
    return blocks <= kv.freeBlocks;
  }

  /**
   * assess()'s slack for a sequence that has its first token, without the allocation (this runs for
   * every stream on every step); null when it cannot make even its next token by its deadline.
   */
  private streamSlack(s: SeqView, now: number): number | null {
    const slo = s.slo!;
    const left = s.totalTokens - s.computed;
    const next = now + (left === 1 && s.computed >= s.promptTokens ? decodeSeconds(this.cost, s.computed) : this.feed(s.computed, left, false).seconds);
    const L = this.lengths.estimate(s);
    const end = next + decodeRunSeconds(this.cost, s.totalTokens + 1, Math.max(0, L - s.generated - 1));
    let slack = Infinity;
    if (slo.deadlineMs !== undefined) {
      const due = s.arrivalTime + slo.deadlineMs / 1e3;
      if (next > due) return null;
      slack = due - end;
    }
    if (slo.tpotMs !== undefined) slack = Math.min(slack, s.firstTokenTime! + (slo.tpotMs / 1e3) * (L - 1) - end);
    return slack;
  }

  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits, now: number): StepPlan {
    this.tokenBudget = Math.max(1, limits.tokenBudget);
    const stamp = ++this.stamp;
    const reject: Rejection[] = [];
    const streams: { s: SeqView; slack: number }[] = [];
    const prefilling: Entry[] = [];
    const tpotOnly: Entry[] = [];
    const free: SeqView[] = [];

    const started: SeqView[] = [];
    for (const s of seqs) {
      const slo = s.slo;
      if (!slo || (slo.ttftMs === undefined && slo.tpotMs === undefined && slo.deadlineMs === undefined)) {
        free.push(s);
        continue;
      }
      if (s.firstTokenTime !== undefined) {
        started.push(s);
        continue;
      }
      let e = this.entries.get(s.id);
      if (e && (e.view.arrival !== s.arrival || e.view.arrivalTime !== s.arrivalTime)) {
        e.indexed = false; // another sequence under a reused id: start afresh
        e = undefined;
      }
      const fresh = !e;
      if (!e) {
        e = { view: s, seen: stamp, rejected: 0, computed: -1, totalTokens: -1, feed: 0, chunks: 0, due: Infinity, ttftDue: Infinity, deadline: Infinity, indexed: false };
        this.entries.set(s.id, e);
      }
      e.view = s;
      e.seen = stamp;
      this.refresh(e, s);
      if (fresh && s.slo!.tpotMs !== undefined) {
        // the one check that does not depend on time: a tpot no solo decode step can meet
        const hopeless = this.assess(s, now, limits).hopeless;
        if (hopeless?.objective === 'tpot') {
          this.refuse(e, hopeless, reject);
          continue;
        }
      }
      if (s.state === 'running') prefilling.push(e);
      else if (e.due === Infinity) tpotOnly.push(e);
      else if (!e.indexed) this.enqueue(e);
    }
    this.sweep(seqs.length);
    if (this.entries.size === 0 && this.allDecodeAtOnce(seqs, kv, limits)) {
      // only decodes, and they all fit: the order cannot matter, so no slack is worked out
      for (const s of started) if (s.slo!.deadlineMs !== undefined && this.streamSlack(s, now) === null) reject.push(this.assess(s, now, limits).hopeless!);
      if (reject.length === 0) return { items: seqs.map((s) => ({ seq: s.id, tokens: 1 })), preempt: [] };
      // the others still all fit
      const gone = new Set(reject.map((r) => r.seq));
      return { items: seqs.filter((s) => !gone.has(s.id)).map((s) => ({ seq: s.id, tokens: 1 })), preempt: [], reject };
    }
    // when every stream's next tokens fit beside everything running and nothing can be preempted,
    // streams go first in any order (their decodes are reserved anyway): only deadlines need slack
    const unordered = this.streamsFit(started, seqs, kv, limits);
    for (const s of started) {
      const slack = unordered && s.slo!.deadlineMs === undefined ? -Infinity : this.streamSlack(s, now);
      if (slack === null) reject.push(this.assess(s, now, limits).hopeless!);
      else streams.push({ s, slack });
    }

    // waiting prompts that served alone from now would miss: their expiry has passed
    for (let top = this.expiry.peek(); top && top.at < now; top = this.expiry.peek()) {
      this.expiry.pop();
      const e = top.e;
      // (prompts admitted since are checked below, with the others being prefilled)
      if (e.seen !== stamp || !e.indexed || e.view.state !== 'waiting' || e.rejected === stamp || top.at !== expiryOf(e)) continue;
      this.refuse(e, this.rejection(e, now, e.feed, 0), reject);
    }

    // the prompts being prefilled and the first `horizon` waiting ones, in (due, work) order
    const decodeExtra = this.decodeLoad(streams);
    const active: Prompt[] = [];
    for (const e of prefilling) {
      if (e.rejected === stamp) continue;
      if (now + e.feed > Math.min(e.ttftDue, e.deadline)) this.refuse(e, this.rejection(e, now, e.feed, 0), reject);
      else if (e.due === Infinity) tpotOnly.push(e);
      else active.push(promptOf(e, decodeExtra));
    }
    const window: Prompt[] = [];
    for (const e of this.window(stamp)) window.push(promptOf(e, decodeExtra));
    const jobs = mergeSorted(active.sort(byDueThenWork), window, byDueThenWork);
    const { onTime, late } = orderPrompts(jobs, now, this.tokenBudget);

    // committed work: the prompts being prefilled that are on time. A waiting prompt needs at least
    // its own prefill after those due no later than it (served together, as one prompt would be).
    const committed: Committed = { dues: [], tokens: [0] };
    for (const { job } of onTime) {
      if (job.e.view.state !== 'running') continue;
      committed.dues.push(job.due);
      committed.tokens.push(committed.tokens[committed.tokens.length - 1] + job.tokens);
    }

    const order: SeqView[] = [];
    streams.sort(byStreamSlack);
    let i = 0;
    for (const o of onTime) {
      if (!this.keep(o.job, committed, now, reject)) continue;
      const slack = o.job.due - o.finish;
      while (i < streams.length && streams[i].slack <= slack) order.push(streams[i++].s);
      order.push(o.job.e.view);
    }
    while (i < streams.length) order.push(streams[i++].s);
    for (const e of tpotOnly.sort(byFeed)) order.push(e.view);
    for (const p of late) if (this.keep(p, committed, now, reject)) order.push(p.e.view);
    free.sort(byPriorityThenArrival);
    for (const s of free) order.push(s);

    this.now = now;
    const plan = packInOrder(order, kv, limits, false, this);
    for (const r of reject) this.forget(r.seq);
    return reject.length > 0 ? { ...plan, reject } : plan;
  }

  /**
   * False (and rejected) for a waiting prompt that cannot make its first token in time after the
   * committed prompts due no later than it: it needs at least their tokens and its own prefilled
   * (served together, as one prompt would be).
   */
  private keep(p: Prompt, committed: Committed, now: number, reject: Rejection[]): boolean {
    if (p.e.view.state === 'running') return true;
    let lo = 0;
    let hi = committed.dues.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (committed.dues[mid] <= p.due) lo = mid + 1;
      else hi = mid;
    }
    const aheadTokens = committed.tokens[lo];
    if (aheadTokens === 0) return true;
    const needed = this.feed(p.e.view.computed, aheadTokens + p.tokens, false).seconds;
    if (now + needed <= Math.min(p.e.ttftDue, p.e.deadline)) return true;
    this.refuse(p.e, this.rejection(p.e, now, needed, needed - p.e.feed), reject);
    return false;
  }

  private refuse(e: Entry, r: Rejection, reject: Rejection[]): void {
    e.rejected = this.stamp;
    reject.push(r);
  }

  /** Recomputes a prompt's cached estimates when its state changed (a chunk fed, a preemption). */
  private refresh(e: Entry, s: SeqView): void {
    if (e.computed === s.computed && e.totalTokens === s.totalTokens) return;
    e.computed = s.computed;
    e.totalTokens = s.totalTokens;
    const f = this.feed(s.computed, s.totalTokens - s.computed, false);
    e.feed = f.seconds;
    e.chunks = f.chunks;
    const slo = s.slo!;
    e.ttftDue = slo.ttftMs !== undefined ? s.arrivalTime + slo.ttftMs / 1e3 : Infinity;
    e.deadline = slo.deadlineMs !== undefined ? s.arrivalTime + slo.deadlineMs / 1e3 : Infinity;
    // a deadline alone dates the first token by the decode time estimated after it
    let due = e.ttftDue;
    if (e.deadline < Infinity) {
      const more = Math.max(0, this.estimateOutput(s) - 1);
      due = Math.min(due, e.deadline - decodeRunSeconds(this.cost, s.totalTokens + 1, more));
    }
    e.due = due;
  }

  /** Puts a waiting dated prompt in the index (sorted insert) and the expiry heap. */
  private enqueue(e: Entry): void {
    let lo = 0;
    let hi = this.index.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (entryBefore(this.index[mid], e)) lo = mid + 1;
      else hi = mid;
    }
    this.index.splice(lo, 0, e);
    e.indexed = true;
    this.expiry.push({ at: expiryOf(e), e });
  }

  /** The first `horizon` live waiting prompts of the index; the entries met that left it are dropped. */
  private window(stamp: number): Entry[] {
    const out: Entry[] = [];
    let read = 0;
    let dropped = 0;
    for (; read < this.index.length && out.length < this.horizon; read++) {
      const e = this.index[read];
      if (e.seen === stamp && e.view.state === 'waiting' && e.view.firstTokenTime === undefined && e.rejected !== stamp) out.push(e);
      else {
        e.indexed = false;
        dropped++;
      }
    }
    if (dropped > 0) this.index.splice(0, read, ...out);
    return out;
  }

  /** Drops the cache of sequences gone since the last plans, once they outnumber the live ones. */
  private sweep(live: number): void {
    if (this.entries.size <= 2 * live + 64) return;
    for (const [id, e] of this.entries) if (e.seen !== this.stamp) this.forget(id, e);
    this.index = this.index.filter((e) => e.indexed);
  }

  private forget(id: number, e = this.entries.get(id)): void {
    if (e) e.indexed = false;
    this.entries.delete(id);
  }

  private rejection(e: Entry, now: number, neededSeconds: number, aheadSeconds: number): Rejection {
    const ttft = now + neededSeconds > e.ttftDue;
    return { seq: e.view.id, objective: ttft ? 'ttft' : 'deadline', neededSeconds, aheadSeconds, leftSeconds: (ttft ? e.ttftDue : e.deadline) - now };
  }

  /** What the running decodes add to a full prefill chunk's step. */
  private decodeLoad(streams: readonly { s: SeqView }[]): number {
    let seqs = 0;
    let context = 0;
    for (const { s } of streams) {
      if (s.state !== 'running' || s.totalTokens - s.computed !== 1) continue;
      seqs++;
      context += s.computed;
    }
    if (seqs === 0) return 0;
    const B = this.tokenBudget;
    const chunk: BatchShape = { prefillTokens: B, prefillAttention: B * B, decodeSeqs: 0, decodeContext: 0 };
    return Math.max(0, stepSeconds(this.cost, { ...chunk, decodeSeqs: seqs, decodeContext: context }) - stepSeconds(this.cost, chunk));
  }

  /**
   * The longest step a streaming sequence can absorb and stay on its time-per-token pace: until its
   * next token is due (first + tpot x generated; a stream ahead of schedule lends its banked time),
   * never less than paceFloor tpot. Infinity for sequences without a tpot or not yet streaming.
   */
  allowance(s: SeqView): number {
    if (s.firstTokenTime === undefined || s.slo?.tpotMs === undefined) return Infinity;
    const tpot = s.slo.tpotMs / 1e3;
    return Math.max(this.paceFloor * tpot, s.firstTokenTime + tpot * s.generated - this.now);
  }

  /** Solo seconds to feed `tokens` after `context`: one decode when `decode`, else prompt chunks (and the steps). */
  private feed(context: number, tokens: number, decode: boolean): { seconds: number; chunks: number } {
    if (decode && tokens === 1) return { seconds: decodeSeconds(this.cost, context), chunks: 0 };
    return prefillSeconds(this.cost, context, tokens, this.tokenBudget);
  }
}

const promptOf = (e: Entry, decodeExtra: number): Prompt => ({
  e,
  due: e.due,
  work: e.feed + e.chunks * decodeExtra,
  tokens: e.view.totalTokens - e.view.computed,
  pinned: e.view.state === 'running',
});

/** When a waiting prompt becomes hopeless served alone. */
const expiryOf = (e: Entry) => Math.min(e.ttftDue, e.deadline) - e.feed;

/** Index order: due, then less work, then the shorter prompt (the tie when the cost model knows nothing yet), then arrival. */
const entryBefore = (a: Entry, b: Entry) =>
  a.due < b.due ||
  (a.due === b.due && (a.feed < b.feed || (a.feed === b.feed && (a.view.totalTokens < b.view.totalTokens || (a.view.totalTokens === b.view.totalTokens && a.view.arrival < b.view.arrival)))));

const byStreamSlack = (a: { s: SeqView; slack: number }, b: { s: SeqView; slack: number }) => a.slack - b.slack || (b.s.priority ?? 0) - (a.s.priority ?? 0) || a.s.arrival - b.s.arrival;
const byFeed = (a: Entry, b: Entry) => a.feed - b.feed || a.view.arrival - b.view.arrival;
const byPriorityThenArrival = (a: SeqView, b: SeqView) => (b.priority ?? 0) - (a.priority ?? 0) || a.arrival - b.arrival;
const byDueThenWork = (a: Prompt, b: Prompt) => a.due - b.due || a.work - b.work || a.tokens - b.tokens || a.e.view.arrival - b.e.view.arrival;

function mergeSorted<T>(a: readonly T[], b: readonly T[], cmp: (x: T, y: T) => number): T[] {
  const out: T[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(cmp(a[i], b[j]) <= 0 ? a[i++] : b[j++]);
  while (i < a.length) out.push(a[i++]);
  while (j < b.length) out.push(b[j++]);
  return out;
}

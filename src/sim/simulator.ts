import { pickDecode } from '../scheduler/placement.ts';
import { ONE_GPU, type Parallelism, degreeLabel, gpusOfDegree, pipelineFill } from './cost/parallel.ts';
import { PagedKvTables } from '../kv/paged_kv.ts';
import type { BatchShape, CostModel } from '../scheduler/cost_model.ts';
import type { KvView, Rejection, Scheduler, SchedulerLimits, SeqView, Slo, StepPlan } from '../scheduler/scheduler.ts';
import { prefillSeconds } from '../scheduler/service_time.ts';
import { type Ceilings, idleFeasible, sloCeilings } from './ceilings.ts';
import { type HeadwiseLayout, kvTokensOf, prefillPairsOf } from './headwise.ts';
import { Heap } from '../util/heap.ts';
import { quantile } from './trace.ts';
import type { SimRequest } from './workload.ts';

/**
 * A discrete-event simulator of serving clusters, driven by the same Scheduler objects as the
 * live engine (src/engine/engine.ts), under a simulated clock.
 *
 * Each instance (one GPU, or tp x pp GPUs timed by its role's cost model) runs the engine's iteration loop: plan a step from its live sequences
 * and KV state, apply rejections and preemptions (KV freed, recomputed later), take the step's
 * time from the cost model for the batch's shape, advance the clock, and emit one token for every
 * sequence whose fed tokens reached its end. The simulator knows each response's real length from
 * the workload; the scheduler sees only maxTokens. KV is block bookkeeping in PagedKvTables (one
 * head row per sequence) with the capacity the cost model gives.
 *
 * Placements: N colocated instances (each arrival goes to the instance with the fewest live
 * sequences), or P prefill + D decode instances (DistServe): a request prefills on a prefill
 * instance, which emits its first token; its KV then moves to the decode instance with the most
 * free KV (fewest live sequences among equals) in kvTransferSeconds(tokens), the prefill instance
 * holding it until the transfer ends, and the decode instance generates the rest. A transfer that
 * finds the decode instance's KV short lands as a waiting sequence that recomputes its context
 * there, as a preempted one does.
 */

/** Instances and their degrees (default one GPU each; the cost models of SimOptions time them). */
export type Placement =
  | { kind: 'colocated'; instances: number; degree?: Parallelism }
  | { kind: 'disaggregated'; prefill: number; decode: number; prefillDegree?: Parallelism; decodeDegree?: Parallelism };

export const gpusOf = (p: Placement) =>
  p.kind === 'colocated' ? p.instances * gpusOfDegree(p.degree ?? ONE_GPU) : p.prefill * gpusOfDegree(p.prefillDegree ?? ONE_GPU) + p.decode * gpusOfDegree(p.decodeDegree ?? ONE_GPU);

/** `colocated x4`, `2P+2D`; with degrees `colocated x2 tp4`, `1P(tp2)+2D` */
export function placementLabel(p: Placement): string {
  const of = (d?: Parallelism) => degreeLabel(d ?? ONE_GPU);
  if (p.kind === 'colocated') return `colocated x${p.instances}${of(p.degree) ? ` ${of(p.degree)}` : ''}`;
  const part = (n: number, role: string, d?: Parallelism) => `${n}${role}${of(d) ? `(${of(d)})` : ''}`;
  return `${part(p.prefill, 'P', p.prefillDegree)}+${part(p.decode, 'D', p.decodeDegree)}`;
}

export type Outcome = 'finished' | 'rejected' | 'refused' | 'unfinished';

/**
 * Why a request did not meet its SLO. Finished ones: `infeasible` (not even on an idle GPU, see
 * ceilings.ts), `preemption` (its KV was freed and recomputed), `queueing` (its TTFT went mostly to
 * waiting for its first chunk), `prefill-interference` (mostly to its prefill taking longer than
 * alone: steps shared with other work, chunks trimmed), `decode-pace` (TPOT), `deadline`. The others
 * by outcome: `rejected` (with the scheduler's estimate), `refused-queue-full`, `refused-too-large`,
 * `unfinished`.
 */
export type MissReason =
  | 'infeasible'
  | 'preemption'
  | 'queueing'
  | 'prefill-interference'
  | 'decode-pace'
  | 'deadline'
  | 'rejected'
  | 'refused-queue-full'
  | 'refused-too-large'
  | 'unfinished';

export interface RequestResult {
  /** index in the workload */
  id: number;
  arrival: number;
  inputTokens: number;
  /** tokens generated */
  generated: number;
  /** finished: all its tokens; rejected: ended by the scheduler (plan.reject); refused: never queued (queue full, or larger than the KV pool); unfinished: still live when nothing was left to run */
  outcome: Outcome;
  /** seconds; null without a first token */
  ttft: number | null;
  /** mean seconds per output token after the first; null with fewer than two tokens */
  tpot: number | null;
  /** seconds from arrival to the last token; null unless finished */
  e2e: number | null;
  sloMet: boolean;
  preemptions: number;
  /** seconds from arrival to its first scheduled step (null if it never had one) */
  queueSeconds: number | null;
  /** seconds its prompt takes to prefill alone (the cost model, chunked by the token budget) */
  soloPrefillSeconds: number;
  /** null when it met its SLO */
  miss: MissReason | null;
  /** rejected requests: the objective and the estimate the scheduler decided on */
  rejection?: Omit<Rejection, 'seq'>;
}

export interface Quantiles {
  p50: number;
  p90: number;
  p99: number;
}

export interface SimSummary {
  policy: string;
  placement: string;
  gpus: number;
  /** the workload's mean arrival rate, requests/s (whole cluster) */
  rate: number;
  requests: number;
  finished: number;
  rejected: number;
  refused: number;
  unfinished: number;
  /** fraction of all requests that finished within their SLO */
  attainment: number;
  /** requests that met their SLO, per second of the run and per GPU */
  goodputRps: number;
  /** output tokens of requests that met their SLO, per second and per GPU */
  goodputTokensPerSecond: number;
  /** seconds (over requests that have the value) */
  ttft: Quantiles;
  tpot: Quantiles;
  e2e: Quantiles;
  /** first arrival to the last event, seconds of simulated time */
  makespan: number;
  steps: number;
  preemptions: number;
  /** wall-clock seconds the simulation took */
  wallSeconds: number;
  /**
   * The run stopped once attainment could no longer reach `stopBelow`: attainment is then the
   * most it could have reached (all requests not yet missed counted as met), the other figures
   * cover what ran
   */
  stoppedEarly: boolean;
  /** requests per miss reason (requests that met their SLO are not counted) */
  misses: Partial<Record<MissReason, number>>;
  /** fractions of all requests that could meet their SLO: on an idle GPU, and with each burst's prefills shortest first (ceilings.ts) */
  ceilings: Ceilings;
}

export interface SimResult {
  summary: SimSummary;
  requests: RequestResult[];
}

/** One simulated step, for observers (tests check invariants with it). */
export interface StepRecord {
  instance: number;
  role: 'colocated' | 'prefill' | 'decode';
  start: number;
  /** when the instance can start its next step (a pipeline's tokens come later, see pipelineStep) */
  end: number;
  plan: StepPlan;
  shape: BatchShape;
  /** KV blocks in use after the step's appends, and the pool's size */
  kvUsedBlocks: number;
  kvBlocks: number;
  /** sequences the plan saw */
  live: number;
}

export interface SimOptions {
  cost: CostModel;
  /** per role (step times, KV capacity, what its schedulers estimate with); default `cost` */
  costs?: { prefill?: CostModel; decode?: CostModel };
  /** seconds to move `tokens` tokens of KV from prefill instance `from` to decode instance `to` (indices within each role); default the prefill cost model's kvTransferSeconds */
  kvTransferSeconds?: (tokens: number, from: number, to: number) => number;
  /** one scheduler per instance (a factory, given the instance's cost model), or one shared object (schedulers are pure) */
  scheduler: Scheduler | ((cost: CostModel) => Scheduler);
  placement: Placement;
  /** default: tokenBudget 2048, maxBatch 128 */
  limits?: Partial<SchedulerLimits>;
  /** tokens per KV block (default 16) */
  blockSize?: number;
  /**
   * Head-wise KV (docs/headwise.md): the model's KV heads per layer, of which `fullColumns` keep
   * full history and the rest sink + recent rings. The capacity (kvCapacityTokens of full cache)
   * becomes blocks per head row, and a sequence takes the blocks the engine's tables give it. Step
   * shapes count the attention the rings read (kvTokensOf, prefillPairsOf), not the whole context.
   */
  headwise?: HeadwiseLayout;
  /** the maxTokens a request that states none is given (default 1024; never below its real length) */
  maxTokens?: number;
  /** requests waiting for admission per instance at most; beyond, arrivals are refused (the engine's 429); default 1024 */
  maxWaiting?: number;
  /** SLO of requests that state none (fields a request states override these), milliseconds */
  slo?: Slo;
  onStep?: (s: StepRecord) => void;
  /** stop as soon as SLO attainment is certain to end below this (a goodput probe that failed) */
  stopBelow?: number;
}

interface SimSeq extends SeqView {
  /** tokens it will generate in all */
  target: number;
  lastTokenTime: number;
  preemptions: number;
  req: SimRequest;
  /** the step that last planned it (to catch a sequence planned twice in one step) */
  planned: number;
  /** when a step first planned it */
  admittedAt?: number;
  /** preemptions before its first token */
  preemptedEarly: number;
  rejection?: Rejection;
  /** its miss is already counted (a late first token) */
  missCounted?: boolean;
}

type Role = StepRecord['role'];

interface Instance {
  index: number;
  role: Role;
  cost: CostModel;
  numBlocks: number;
  scheduler: Scheduler;
  kv: PagedKvTables;
  kvView: KvView;
  /** live sequences in admission order */
  live: Map<number, SimSeq>;
  busy: boolean;
}

 /** `fill`: a pipeline's tokens come that long after its next step can start (see pipelineStep) */
type EventBody = { time: number; kind: 'step'; inst: Instance; plan: StepPlan; fill: number } | { time: number; kind: 'transfer'; seq: SimSeq; from: Instance; to: Instance };
type Event = EventBody & { order: number };


/** Thrown when a scheduler's plan breaks a rule the engine relies on (a policy bug). */
export class PlanError extends Error {
  override name = 'PlanError';
}

function emptyQuantiles(): Quantiles {
  return { p50: NaN, p90: NaN, p99: NaN };
}

function quantilesOf(values: number[]): Quantiles {
  if (values.length === 0) return emptyQuantiles();
  const s = values.sort((a, b) => a - b);
  return { p50: quantile(s, 0.5), p90: quantile(s, 0.9), p99: quantile(s, 0.99) };
}

/** Runs the workload (sorted by arrival) through the cluster and returns per-request results and the summary. */
export function simulate(workload: readonly SimRequest[], o: SimOptions): SimResult {
  const wall0 = performance.now();
  const limits: SchedulerLimits = { tokenBudget: o.limits?.tokenBudget ?? 2048, maxBatch: o.limits?.maxBatch ?? 128 };
  const blockSize = o.blockSize ?? 16;
  const p = o.placement;
  const frontCost = p.kind === 'colocated' ? o.cost : (o.costs?.prefill ?? o.cost);
  const backCost = p.kind === 'colocated' ? o.cost : (o.costs?.decode ?? o.cost);
  const blocksOf = (cost: CostModel) => {
    const n = Math.floor(cost.kvCapacityTokens / blockSize);
    if (!(n >= 1)) throw new RangeError(`the cost model's KV capacity (${cost.kvCapacityTokens} tokens) holds no ${blockSize}-token block`);
    // with head-wise KV a block is one head row's: the full cache's n blocks per row, every row
    return n * (o.headwise?.nKvHeads ?? 1);
  };
  // a request must fit every pool it will live in
  const admitBlocks = Math.min(blocksOf(frontCost), blocksOf(backCost));
  const defaultMax = o.maxTokens ?? 1024;
  const maxWaiting = o.maxWaiting ?? 1024;
  const makeScheduler = typeof o.scheduler === 'function' ? o.scheduler : () => o.scheduler as Scheduler;
  const counts = p.kind === 'colocated' ? [p.instances] : [p.prefill, p.decode];
  for (const c of counts) if (!(Number.isInteger(c) && c >= 1)) throw new RangeError(`placement ${placementLabel(p)}: instance counts must be integers >= 1`);
  for (let i = 1; i < workload.length; i++) if (workload[i].arrival < workload[i - 1].arrival) throw new RangeError(`the workload is not sorted by arrival (request ${i})`);

  const newInstance = (index: number, role: Role): Instance => {
    const cost = role === 'decode' ? backCost : frontCost;
    const numBlocks = blocksOf(cost);
    const hw = o.headwise;
    const kv = new PagedKvTables({ nLayers: 1, nKvHeads: hw?.nKvHeads ?? 1, headDim: 1, blockSize, bytesPerElement: 1 }, numBlocks, hw && { fullColumns: hw.fullColumns, sink: hw.sink, recent: hw.recent });
    return {
      index,
      role,
      cost,
      numBlocks,
      scheduler: makeScheduler(cost),
      kv,
      kvView: {
        get freeBlocks() {
          return kv.pool.free;
        },
        blocksNeeded: (id, n) => kv.blocksNeeded(id, n),
        blocksHeld: (id) => kv.blocksHeld(id),
      },
      live: new Map(),
      busy: false,
    };
  };
  const front: Instance[] = [];
  const back: Instance[] = [];
  if (p.kind === 'colocated') for (let i = 0; i < p.instances; i++) front.push(newInstance(i, 'colocated'));
  else {
    for (let i = 0; i < p.prefill; i++) front.push(newInstance(i, 'prefill'));
    for (let i = 0; i < p.decode; i++) back.push(newInstance(p.prefill + i, 'decode'));
  }

  const results: RequestResult[] = new Array(workload.length);
  // events by time; simultaneous ones in the order they were scheduled
  const events = new Heap<Event>((a, b) => a.time < b.time || (a.time === b.time && a.order < b.order));
  let eventOrder = 0;
  const schedule = (e: EventBody) => events.push({ ...e, order: eventOrder++ });
  let steps = 0;
  let preemptions = 0;
  // requests certain to miss their SLO, and whether that already decides a failed probe
  let missed = 0;
  const failed = () => o.stopBelow !== undefined && (workload.length - missed) / workload.length < o.stopBelow;
  let now = workload.length ? workload[0].arrival : 0;
  const t0 = now;

  const sloOf = (r: SimRequest): Slo => ({ ...o.slo, ...r.slo });
  const record = (s: SimSeq, outcome: Outcome, t: number, refusal?: 'refused-queue-full' | 'refused-too-large') => {
    const r = s.req;
    const ttft = s.firstTokenTime !== undefined ? s.firstTokenTime - s.arrivalTime : null;
    const tpot = s.generated >= 2 && s.firstTokenTime !== undefined ? (s.lastTokenTime - s.firstTokenTime) / (s.generated - 1) : null;
    const e2e = outcome === 'finished' ? t - s.arrivalTime : null;
    const slo = sloOf(r);
    const met =
      outcome === 'finished' &&
      (slo.ttftMs === undefined || (ttft !== null && ttft * 1e3 <= slo.ttftMs)) &&
      (slo.tpotMs === undefined || tpot === null || tpot * 1e3 <= slo.tpotMs) &&
      (slo.deadlineMs === undefined || (e2e !== null && e2e * 1e3 <= slo.deadlineMs));
    if (results[s.id] !== undefined) throw new Error(`request ${s.id} ended twice`);
    if (!met && !s.missCounted) missed++;
    const soloPrefillSeconds = prefillSeconds(frontCost, 0, s.promptTokens, limits.tokenBudget).seconds;
    const queueSeconds = s.admittedAt !== undefined ? s.admittedAt - s.arrivalTime : null;
    let miss: MissReason | null = null;
    if (outcome === 'refused') miss = refusal ?? 'refused-queue-full';
    else if (outcome !== 'finished') miss = outcome;
    else if (!met) {
      if (!idleFeasible(frontCost, limits.tokenBudget, s.promptTokens, s.generated, slo, backCost)) miss = 'infeasible';
      else if (slo.ttftMs !== undefined && ttft! * 1e3 > slo.ttftMs) {
        // the TTFT splits into waiting for the first chunk, the solo prefill, and the prefill's stretch beyond it
        miss = s.preemptedEarly > 0 ? 'preemption' : queueSeconds! >= ttft! - queueSeconds! - soloPrefillSeconds ? 'queueing' : 'prefill-interference';
      } else if (slo.tpotMs !== undefined && tpot !== null && tpot * 1e3 > slo.tpotMs) miss = s.preemptions > s.preemptedEarly ? 'preemption' : 'decode-pace';
      else miss = 'deadline';
    }
    const rejection = s.rejection ? { objective: s.rejection.objective, neededSeconds: s.rejection.neededSeconds, aheadSeconds: s.rejection.aheadSeconds, leftSeconds: s.rejection.leftSeconds } : undefined;
    results[s.id] = { id: s.id, arrival: s.arrivalTime, inputTokens: r.inputTokens, generated: s.generated, outcome, ttft, tpot, e2e, sloMet: met, preemptions: s.preemptions, queueSeconds, soloPrefillSeconds, miss, ...(rejection ? { rejection } : {}) };
  };
  const finish = (inst: Instance, s: SimSeq, outcome: Outcome, t: number) => {
    inst.live.delete(s.id);
    inst.kv.free(s.id);
    // as the engine does: policies that learn output lengths hear of sequences that ended on their own
    if (outcome === 'finished') inst.scheduler.observeFinished?.(s.generated);
    record(s, outcome, t);
  };

  /** Plans and starts the instance's next step at time t (or leaves it idle when there is nothing to run). */
  const runStep = (inst: Instance, t: number) => {
    for (let attempt = 0; ; attempt++) {
      if (inst.live.size === 0) {
        inst.busy = false;
        return;
      }
      const views = Array.from(inst.live.values());
      const plan = inst.scheduler.plan(views, inst.kvView, limits, t);
      for (const r of plan.reject ?? []) {
        const s = inst.live.get(r.seq);
        if (!s) throw new PlanError(`${inst.scheduler.name}: rejected sequence ${r.seq} is not live on instance ${inst.index}`);
        s.rejection = r;
        finish(inst, s, 'rejected', t);
      }
      for (const id of plan.preempt) {
        const s = inst.live.get(id);
        if (!s) throw new PlanError(`${inst.scheduler.name}: preempted sequence ${id} is not live on instance ${inst.index}`);
        inst.kv.free(id);
        s.computed = 0;
        s.state = 'waiting';
        s.preemptions++;
        if (s.firstTokenTime === undefined) s.preemptedEarly++;
        preemptions++;
      }
      if (plan.items.length === 0) {
        // the engine plans again at once after rejections or preemptions; otherwise nothing can run
        // until something arrives (a plan that depends on time alone is re-asked at the next event)
        if ((plan.reject?.length || plan.preempt.length) && attempt < 8) continue;
        inst.busy = false;
        return;
      }
      if (plan.items.length > limits.maxBatch) throw new PlanError(`${inst.scheduler.name}: ${plan.items.length} sequences in a step, the limit is ${limits.maxBatch}`);
      const shape: BatchShape = { prefillTokens: 0, prefillAttention: 0, decodeSeqs: 0, decodeContext: 0 };
      let tokens = 0;
      const stamp = steps + 1;
      for (const { seq, tokens: n } of plan.items) {
        const s = inst.live.get(seq);
        if (!s) throw new PlanError(`${inst.scheduler.name}: planned sequence ${seq} is not live on instance ${inst.index}`);
        if (s.planned === stamp) throw new PlanError(`${inst.scheduler.name}: sequence ${seq} planned twice in one step`);
        s.planned = stamp;
        s.admittedAt ??= t;
        if (!(Number.isInteger(n) && n >= 1 && n <= s.totalTokens - s.computed)) throw new PlanError(`${inst.scheduler.name}: sequence ${seq} planned ${n} tokens with ${s.totalTokens - s.computed} to feed`);
        tokens += n;
        if (n === 1 && s.computed === s.totalTokens - 1 && s.generated > 0) {
          shape.decodeSeqs++;
          // attention as head-wise KV reads it: streaming heads only their sink + recent slots
          shape.decodeContext += kvTokensOf(s.computed + 1, o.headwise);
        } else {
          shape.prefillTokens += n;
          shape.prefillAttention += prefillPairsOf(n, s.computed, o.headwise);
        }
        inst.kv.reserve(seq, n); // throws KvPoolExhausted when the plan over-commits the pool
      }
      if (tokens > limits.tokenBudget) throw new PlanError(`${inst.scheduler.name}: ${tokens} tokens in a step, the budget is ${limits.tokenBudget}`);
      const dt = inst.cost.stepSeconds(shape);
      if (!(dt > 0 && Number.isFinite(dt))) throw new RangeError(`cost model gave a step time of ${dt} s for ${JSON.stringify(shape)}`);
      steps++;
      inst.busy = true;
      const fill = pipelineFill(inst.cost, shape);
      o.onStep?.({ instance: inst.index, role: inst.role, start: t, end: t + dt - fill, plan, shape, kvUsedBlocks: inst.kv.pool.used, kvBlocks: inst.numBlocks, live: views.length });
      schedule({ time: t + dt - fill, kind: 'step', inst, plan, fill });
      return;
    }
  };

  const leastLoaded = (insts: Instance[]) => {
    let best = insts[0];
    for (const i of insts) if (i.live.size < best.live.size) best = i;
    return best;
  };
  const mostFreeKv = (insts: Instance[]) => pickDecode(insts.map((inst) => ({ inst, freeBlocks: inst.kv.pool.free, sequences: inst.live.size })))!.inst;
  const waitingOn = (inst: Instance) => {
    let n = 0;
    for (const s of inst.live.values()) if (s.state === 'waiting') n++;
    return n;
  };

  const arrive = (id: number, r: SimRequest, t: number) => {
    const target = Math.max(1, Math.min(r.outputTokens, r.maxTokens ?? Infinity));
    const maxTokens = r.maxTokens ?? Math.max(defaultMax, target);
    const s: SimSeq = {
      id,
      arrival: id,
      arrivalTime: r.arrival,
      promptTokens: Math.max(1, r.inputTokens),
      generated: 0,
      maxTokens,
      slo: r.slo || o.slo ? sloOf(r) : undefined,
      priority: r.priority,
      totalTokens: Math.max(1, r.inputTokens),
      computed: 0,
      state: 'waiting',
      target,
      lastTokenTime: NaN,
      preemptions: 0,
      req: r,
      planned: 0,
      preemptedEarly: 0,
    };
    const inst = leastLoaded(front);
    // the engine's admission checks: the request must fit the KV pool, and the waiting line must have room
    if (inst.kv.blocksNeeded(-1, s.promptTokens + maxTokens) > admitBlocks) record(s, 'refused', t, 'refused-too-large');
    else if (waitingOn(inst) >= maxWaiting) record(s, 'refused', t, 'refused-queue-full');
    else inst.live.set(id, s);
  };

  const stepDone = (inst: Instance, plan: StepPlan, t: number, fill: number) => {
    const tokenTime = t + fill;
    for (const { seq, tokens } of plan.items) {
      const s = inst.live.get(seq)!;
      s.state = 'running';
      s.computed += tokens;
      if (s.computed < s.totalTokens) continue; // a prompt chunk (or recompute) with more to come
      s.totalTokens++;
      s.generated++;
      if (s.firstTokenTime === undefined) {
        s.firstTokenTime = tokenTime;
        const ttftMs = sloOf(s.req).ttftMs;
        if (ttftMs !== undefined && (tokenTime - s.arrivalTime) * 1e3 > ttftMs) {
          s.missCounted = true;
          missed++;
        }
      }
      s.lastTokenTime = tokenTime;
      if (s.generated >= s.target) finish(inst, s, 'finished', tokenTime);
      else if (inst.role === 'prefill') {
        // hand over to a decode instance: the prefill instance holds the KV until the transfer ends
        inst.live.delete(s.id);
        const to = mostFreeKv(back);
        // a handover ships only the rows each head keeps (docs/headwise.md)
        const shipped = kvTokensOf(s.computed, o.headwise);
        const move = o.kvTransferSeconds ? o.kvTransferSeconds(shipped, inst.index, to.index - front.length) : frontCost.kvTransferSeconds(shipped);
        schedule({ time: tokenTime + move, kind: 'transfer', seq: s, from: inst, to });
      }
    }
    runStep(inst, t);
  };

  const transferDone = (s: SimSeq, from: Instance, to: Instance, t: number) => {
    from.kv.free(s.id);
    if (!from.busy && from.live.size > 0) runStep(from, t);
    if (to.kv.blocksNeeded(s.id, s.computed) <= to.kv.pool.free) to.kv.reserve(s.id, s.computed);
    else {
      s.computed = 0;
      s.state = 'waiting';
      s.preemptions++;
      preemptions++;
    }
    to.live.set(s.id, s);
    if (!to.busy) runStep(to, t);
  };

  let next = 0;
  let stoppedEarly = false;
  for (;;) {
    if (failed()) {
      stoppedEarly = true;
      break;
    }
    const ev = events.peek();
    if (next < workload.length && (!ev || workload[next].arrival <= ev.time)) {
      now = workload[next].arrival;
      // every request of this instant is queued before an idle instance plans: a burst is seen whole
      while (next < workload.length && workload[next].arrival === now) arrive(next, workload[next], now), next++;
      for (const inst of front) if (!inst.busy && inst.live.size > 0) runStep(inst, now);
      continue;
    }
    if (!ev) break;
    events.pop();
    if (ev.time < now) throw new Error(`simulated time went backwards: ${ev.time} < ${now}`);
    now = ev.time;
    if (ev.kind === 'step') stepDone(ev.inst, ev.plan, now, ev.fill);
    else transferDone(ev.seq, ev.from, ev.to, now);
  }
  if (!stoppedEarly) for (const inst of [...front, ...back]) for (const s of [...inst.live.values()]) finish(inst, s, 'unfinished', now);

  const requests = stoppedEarly ? results.filter((r) => r !== undefined) : results;
  const ttfts: number[] = [];
  const tpots: number[] = [];
  const e2es: number[] = [];
  let met = 0;
  let metTokens = 0;
  const count = { finished: 0, rejected: 0, refused: 0, unfinished: 0 };
  const misses: Partial<Record<MissReason, number>> = {};
  for (const r of requests) {
    count[r.outcome]++;
    if (r.miss) misses[r.miss] = (misses[r.miss] ?? 0) + 1;
    if (r.ttft !== null) ttfts.push(r.ttft);
    if (r.tpot !== null) tpots.push(r.tpot);
    if (r.e2e !== null) e2es.push(r.e2e);
    if (r.sloMet) {
      met++;
      metTokens += r.generated;
    }
  }
  const n = workload.length;
  const span = n > 1 ? workload[n - 1].arrival - workload[0].arrival : 0;
  const makespan = now - t0;
  const gpus = gpusOf(p);
  const name = makeScheduler(frontCost).name;
  return {
    requests,
    summary: {
      policy: name,
      placement: placementLabel(p),
      gpus,
      rate: span > 0 ? (n - 1) / span : 0,
      requests: n,
      ...count,
      attainment: n ? (stoppedEarly ? (n - missed) / n : met / n) : NaN,
      goodputRps: makespan > 0 ? met / makespan / gpus : 0,
      goodputTokensPerSecond: makespan > 0 ? metTokens / makespan / gpus : 0,
      ttft: quantilesOf(ttfts),
      tpot: quantilesOf(tpots),
      e2e: quantilesOf(e2es),
      makespan,
      steps,
      preemptions,
      wallSeconds: (performance.now() - wall0) / 1e3,
      stoppedEarly,
      misses,
      ceilings: sloCeilings(workload, frontCost, limits.tokenBudget, sloOf, backCost),
    },
  };
}

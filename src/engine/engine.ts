import { STATUS_COMPLETE } from '../../kernels/constraints.ts';
import { NO_TOKEN, packSampleParams, sample } from '../../kernels/sampling.ts';
import { checkSatisfiable, type TokenAutomaton } from '../constraints/automaton.ts';
import { ConstraintMasks } from '../constraints/device.ts';
import { SidePool } from '../gpu/side_pool.ts';
import type { ModelConfig } from '../model/config.ts';
import { NO_SLOT, blockBytes } from '../kv/paged_kv.ts';
import type { GpuModel, KvExporter, KvLayer, SeqChunk } from '../model/gpu_model.ts';
import { StreamDecoder, type Tokenizer } from '../model/tokenizer/index.ts';
import { FcfsScheduler } from '../scheduler/fcfs.ts';
import type { BatchShape } from '../scheduler/cost_model.ts';
import { describeRejection, type Scheduler, type SchedulerLimits, type SeqView, type Slo, type StepPlan } from '../scheduler/scheduler.ts';
import type { ServingEngine } from './serving.ts';
import { LogitPenalties, samplingProblem } from './logit_penalties.ts';
import { StopMatcher } from './stop.ts';

export interface SamplingOptions {
  /** new tokens at most */
  maxTokens: number;
  /** 0 = greedy */
  temperature: number;
  /** 0 = off */
  topK: number;
  /** 1 = off */
  topP: number;
  /** same seed, same output (also across preemption: the RNG is keyed by the token's index); any safe integer, all 64 bits of its two's complement key the RNG */
  seed: number;
  /** strings that end generation; never emitted */
  stop: string[];
  /** log-probabilities of the chosen token and this many alternatives (0 = none) */
  logprobs?: number;
  /** OpenAI's logit_bias: [token id, bias in [-100, 100]] pairs added to the logits (ids unique, at most 300) */
  logitBias?: [number, number][];
  /** in [-2, 2]: subtracted from the logit of every token the output holds (0 = off) */
  presencePenalty?: number;
  /** in [-2, 2]: subtracted from a token's logit per occurrence in the output (0 = off) */
  frequencyPenalty?: number;
  /** in [0.01, 100] (vLLM's): logits of tokens in the prompt or output divided by it when positive, multiplied when not (1 = off) */
  repetitionPenalty?: number;
  /** end-of-sequence cannot be sampled before this many tokens are generated (0 = off; at most maxTokens) */
  minTokens?: number;
  /** in [0, 1]: drop tokens less likely than minP times the most likely one, after temperature (0 = off) */
  minP?: number;
}

/** `rejected`: the scheduler ended it because it can no longer meet its SLO. */
export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error' | 'rejected';

export interface TokenEvent {
  token: number;
  /** text this token made safe to emit (may be empty: a partial character or a possible stop string) */
  text: string;
  logprob?: number;
  topLogprobs?: { token: number; logprob: number }[];
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

export interface SequenceEvents {
  onToken?(e: TokenEvent): void;
  onFinish?(reason: FinishReason, usage: Usage, error?: Error): void;
}

export interface EngineRequest {
  prompt: number[];
  sampling: SamplingOptions;
  events?: SequenceEvents;
  /**
   * Several choices from one prompt (OpenAI's `n`), choice i reporting to choices[i] (instead of
   * `events`) and sampled with the seed choiceSeed(sampling.seed, i). The prompt is prefilled
   * once; then each choice is a sequence of its own over the prompt's KV blocks (shared, see
   * Engine.fork). The handle cancels them all. Not with `generated` or `handoff`.
   */
  choices?: SequenceEvents[];
  /** latency objectives, for SLO-aware schedulers */
  slo?: Slo;
  /** larger first among otherwise equal requests (default 0) */
  priority?: number;
  /**
   * Tokens this request already generated elsewhere (a sequence resumed after its worker died, or
   * handed over after prefill): they are context, count toward max_tokens, and are replayed into
   * the text decoder and stop matcher without being emitted again.
   */
  generated?: number[];
  /** prefill only (a disaggregated prefill worker): the sequence leaves after its next token */
  handoff?: KvHandoff;
  /**
   * Constrained decoding: only outputs this token automaton accepts (src/constraints/). Applied on
   * the GPU inside the step; EOS only where the automaton accepts; the output ends ("stop") when it
   * reaches a state with no way forward.
   */
  constraint?: TokenAutomaton;
}

/**
 * Prefill-only sequences: the step that computes the last of the sequence's context also records
 * a copy of its KV, layer by layer, each flushed to the GPU so the copy of layer l can travel while
 * layers after it compute. If the sampled token does not end the sequence, it leaves the engine.
 */
export interface KvHandoff {
  /** that step is recorded: KV of `tokens` tokens, `rows` rows of headDim per layer (KvLayer), layer l resolving when the GPU has computed it */
  onKv(tokens: number, rows: number, layers: Promise<KvLayer>[]): void;
  /** the token was sampled (and emitted) without ending the sequence: it left this engine with these generated tokens */
  onHandoff(generated: number[]): void;
}

/** KV received for a sequence before it is adopted (see Engine.importKv / adopt). */
export interface KvImport {
  readonly seq: number;
  readonly tokens: number;
  /** rows of headDim per layer (KvLayer's order: tokens x KV heads, less what rings do not keep) */
  readonly rows: number;
  /** writes rows [start, start + rows) of one layer into the reserved blocks (one small GPU submit); rows follow from the byte size */
  writeLayer(layer: number, kv: { k: ArrayBufferView; v: ArrayBufferView }, start?: number): Promise<void>;
  /** gives the blocks back (the transfer failed) */
  release(): void;
}

export interface EngineHandle {
  id: number;
  /** stops the sequence (every choice of the request); its KV is freed at the next step */
  cancel(): void;
}

/**
 * The seed of choice `index` of a request seeded with `seed`: seed + index, as vLLM derives it,
 * so choice 0 is the request's own output and choice i what a request with seed + i gives
 * (beyond 2^53 - 1 it wraps around to -(2^53 - 1), staying a safe integer).
 */
export function choiceSeed(seed: number, index: number): number {
  // seed - MAX and index - MAX - 1 are exact; so is their sum, which is >= -MAX
  return seed > Number.MAX_SAFE_INTEGER - index ? seed - Number.MAX_SAFE_INTEGER + (index - Number.MAX_SAFE_INTEGER - 1) : seed + index;
}

/** A request's choices as requests of one choice each (for a front that runs them as separate sequences). */
export function choiceRequests(req: EngineRequest): EngineRequest[] {
  if (!req.choices) return [req];
  const { choices, ...rest } = req;
  return choices.map((events, i) => ({ ...rest, sampling: { ...rest.sampling, seed: choiceSeed(rest.sampling.seed, i) }, events }));
}

export interface EngineOptions {
  scheduler?: Scheduler;
  /** tokens per forward pass (decode tokens + prompt chunks); default 512 */
  tokenBudget?: number;
  /** sequences per forward pass; default 64 */
  maxBatch?: number;
  /** requests waiting for admission at most (QueueFullError beyond); default 1024 */
  maxWaiting?: number;
  /**
   * record the next decode step while the GPU runs the current one, its input ids taken from the
   * current step's sampled ids on the GPU and read back one step behind (default true; outputs
   * are the same either way; see Engine.follow for the rollback rule and what waits)
   */
  pipeline?: boolean;
}

export interface StepStats {
  sequences: number;
  promptTokens: number;
  decodeTokens: number;
  /** the step's batch as a cost model sees it */
  shape: BatchShape;
  /** forward pass, sampling and read-back */
  seconds: number;
  /**
   * from this step's start to the next one's (the engine staying busy): `seconds` plus the host
   * work between steps (emitting tokens, HTTP). What a simulated clock must advance per step.
   */
  periodSeconds: number;
}

/** The request cannot be queued now; the server answers 429 with Retry-After. */
export class QueueFullError extends Error {
  override name = 'QueueFullError';
}

/** The request can never run (too long for the context or the KV pool); the server answers 400. */
export class RequestTooLargeError extends Error {
  override name = 'RequestTooLargeError';
}

interface Sequence {
  id: number;
  arrival: number;
  /** seconds, engine clock */
  arrivalTime: number;
  firstTokenTime?: number;
  slo?: Slo;
  priority?: number;
  tokens: number[]; // prompt, then generated tokens
  promptLength: number;
  computed: number;
  state: 'waiting' | 'running';
  sampling: SamplingOptions;
  events: SequenceEvents;
  decoder: StreamDecoder;
  stops: StopMatcher;
  cancelled: boolean;
  handoff?: KvHandoff;
  /** the request's other choices, until this sequence's prompt is computed and they fork from it */
  forks?: PendingFork[];
  constraint?: TokenAutomaton;
}

/** A sequence's row in a step: `n` tokens fed. */
interface Row {
  s: Sequence;
  n: number;
}

/** What a step's read-back brings: sampled ids, the constrained rows' status, the logits when log-probabilities are asked for. */
interface StepOutput {
  sampled: Uint32Array;
  status: Uint32Array | null;
  logitRows: Float32Array | null;
}

/** A submitted step whose ids the host has not taken yet. */
interface InFlight {
  batch: Row[];
  /** row i's sampled id on the GPU (u32), held until the step is resolved: the next step may read it */
  sampled: GPUBuffer;
  result: Promise<StepOutput>;
  /** Step.submit(), never rejecting (the read-backs carry its errors): settles once the work submitted before it looked has run */
  submitted: Promise<void>;
  /** performance.now() when recording began */
  t0: number;
  /** every row a decode row a next step may follow before this one is read back (Engine.follow) */
  followable: boolean;
}

/** A choice that starts once its request's first choice has computed the prompt. */
interface PendingFork {
  id: number;
  arrival: number;
  sampling: SamplingOptions;
  events: SequenceEvents;
}

let nextId = 1;

/** The engine's clock for scheduling, in seconds (the simulator drives the same policies with its own). */
const clock = () => performance.now() / 1e3;

/**
 * The iteration-level serving loop. Each step asks the scheduler for a batch (decode tokens and
 * prompt chunks up to the token budget), preempts whom it says (KV freed, recomputed later: the
 * sequence keeps its tokens), runs one forward pass and one GPU sampling dispatch, and emits each
 * sequence's new token. Sequences join and leave between steps.
 */
export class Engine implements ServingEngine {
  private readonly seqs = new Map<number, Sequence>();
  private readonly scheduler: Scheduler;
  private readonly limits: SchedulerLimits;
  private readonly maxWaiting: number;
  private readonly pipeline: boolean;
  private loop: Promise<void> | null = null;
  /** the last resolved step's submit(), awaited before the loop ends */
  private lastSubmit: Promise<void> | null = null;
  private arrivals = 0;
  /** token counts, bias and penalties on the GPU */
  private readonly penalties: LogitPenalties;
  /** constrained sequences' automata and states on the GPU */
  private readonly constraints: ConstraintMasks;
  /** each step's sampled ids, held until the step is resolved (a following step reads them) */
  private readonly sampledIds: SidePool;
  /** counters for metrics; pipelinedSteps: recorded before the previous step was read back; rolledBack: rows dropped by the rollback rule (Engine.follow) */
  readonly counters = { steps: 0, preemptions: 0, promptTokens: 0, generatedTokens: 0, pipelinedSteps: 0, rolledBack: 0 };
  onStep?: (s: StepStats) => void;

  constructor(
    readonly model: GpuModel,
    readonly tokenizer: Tokenizer,
    options: EngineOptions = {},
  ) {
    this.scheduler = options.scheduler ?? new FcfsScheduler();
    this.limits = { tokenBudget: options.tokenBudget ?? 512, maxBatch: options.maxBatch ?? 64 };
    this.maxWaiting = options.maxWaiting ?? 1024;
    this.pipeline = options.pipeline ?? true;
    const eos = tokenizer.vocab.eos;
    this.penalties = new LogitPenalties(model.gpu, model.config.vocabSize, eos === null ? [] : [eos]);
    this.constraints = new ConstraintMasks(model.gpu, model.config.vocabSize, eos);
    this.sampledIds = new SidePool(model.gpu, 'sampled');
  }

  get config(): ModelConfig {
    return this.model.config;
  }

  get maxSequenceTokens(): number {
    return Math.min(this.model.config.contextLength, this.model.kv.maxSequenceTokens);
  }

  kvBlocks(): { used: number; total: number } {
    return { used: this.model.kv.pool.used, total: this.model.kv.pool.numBlocks };
  }

  kvBytesByKind(): { retrieval: number; streaming: number } | null {
    const kv = this.model.kv;
    if (!kv.headwise) return null;
    const { retrieval, streaming } = kv.blocksByKind();
    const bytes = blockBytes(kv.layout);
    return { retrieval: retrieval * bytes, streaming: streaming * bytes };
  }

  /** Key indexes and their query samples (--ann; GPU memory outside the KV pool), bytes; null without --ann. */
  annBytes(): number | null {
    return this.model.ann ? this.model.ann.bytes() : null;
  }

  get waiting(): number {
    let n = 0;
    for (const s of this.seqs.values()) if (s.state === 'waiting') n++;
    return n;
  }

  get running(): number {
    return this.seqs.size - this.waiting;
  }

  /** Queues a request; throws RequestTooLargeError or QueueFullError when it cannot be taken. */
  submit(req: EngineRequest): EngineHandle {
    if (!req.choices) return this.enqueue(req, null, nextId++);
    const { choices, ...first } = req;
    if (choices.length === 0) throw new RangeError('submit: a request needs at least one choice');
    if (choices.length > 1 && (req.generated?.length || req.handoff)) throw new Error('submit: several choices cannot resume or hand over a sequence');
    const handle = this.enqueue({ ...first, events: choices[0] }, null, nextId++);
    const forks = choiceRequests(req)
      .slice(1)
      .map((r): PendingFork => ({ id: nextId++, arrival: this.arrivals++, sampling: r.sampling, events: r.events ?? {} }));
    if (forks.length) this.seqs.get(handle.id)!.forks = forks;
    const ids = [handle.id, ...forks.map((f) => f.id)];
    return { id: handle.id, cancel: () => ids.forEach((id) => this.cancel(id)) };
  }

  /**
   * Reserves KV blocks for a sequence arriving with the KV of `tokens` tokens computed elsewhere
   * (the decode side of a handover); null when the pool cannot hold them now (adopt it without:
   * it recomputes its context).
   */
  importKv(tokens: number): KvImport | null {
    const seq = nextId++;
    let slots: Uint32Array;
    try {
      // the rows a ring does not keep are not shipped (GpuModel.exportSlots): their slots are left out alike
      slots = this.model.kv.append(seq, tokens).filter((s) => s !== NO_SLOT);
    } catch {
      return null;
    }
    const model = this.model;
    let released = false;
    return {
      seq,
      tokens,
      rows: slots.length,
      async writeLayer(layer, kv, start = 0) {
        if (released) throw new Error(`KV import of sequence ${seq} was released`);
        const rows = kv.k.byteLength / (model.config.headDim * 4);
        if (!(Number.isInteger(rows) && start >= 0 && start + rows <= slots.length)) throw new RangeError(`KV import of sequence ${seq}: rows ${start}..${start + rows} outside its ${slots.length}`);
        const step = model.gpu.step({ label: 'kv import' });
        try {
          model.importLayer(step, slots.subarray(start, start + rows), layer, kv);
        } catch (err) {
          await step.discard();
          throw err;
        }
        await step.submit();
      },
      release: () => {
        released = true;
        if (!this.seqs.has(seq)) model.release(seq);
      },
    };
  }

  /**
   * Takes over a sequence whose KV was imported (every token but the last generated one), or,
   * with `kv` null, one that recomputes its context here. `req.generated` must hold at least the
   * token sampled where it was prefilled.
   */
  adopt(req: EngineRequest, kv: KvImport | null): EngineHandle {
    const context = req.prompt.length + (req.generated?.length ?? 0) - 1;
    const wrong = !req.generated?.length ? 'the sequence has no generated token' : kv && kv.tokens !== context ? `imported KV holds ${kv.tokens} tokens, the sequence's context is ${context}` : null;
    if (wrong) {
      kv?.release();
      throw new Error(`adopt: ${wrong}`);
    }
    return this.enqueue(req, kv, kv?.seq ?? nextId++);
  }

  private enqueue(req: EngineRequest, kv: KvImport | null, id: number): EngineHandle {
    const { prompt, sampling } = req;
    const generated = req.generated ?? [];
    try {
      checkRequest(prompt, generated, sampling, this.config, this.maxSequenceTokens);
      if (req.constraint) checkSatisfiable(req.constraint, generated, sampling.maxTokens);
      if (!kv && this.waiting >= this.maxWaiting) throw new QueueFullError(`${this.waiting} requests are already waiting`);
    } catch (err) {
      kv?.release();
      throw err;
    }
    const now = clock();
    const seq: Sequence = {
      id,
      arrival: this.arrivals++,
      arrivalTime: now,
      firstTokenTime: generated.length ? now : undefined,
      slo: req.slo,
      priority: req.priority,
      tokens: [...prompt, ...generated],
      promptLength: prompt.length,
      computed: kv ? kv.tokens : 0,
      state: kv ? 'running' : 'waiting',
      sampling,
      events: req.events ?? {},
      decoder: new StreamDecoder(this.tokenizer, prompt[prompt.length - 1]),
      stops: new StopMatcher(sampling.stop),
      cancelled: false,
      handoff: req.handoff,
      constraint: req.constraint,
    };
    // what was emitted before is not emitted again, but shapes what follows (partial characters, stop strings)
    for (const t of generated) seq.stops.push(seq.decoder.push(t));
    this.seqs.set(seq.id, seq);
    if (generated.length >= sampling.maxTokens) this.finish(seq, 'length');
    else this.kick();
    return { id: seq.id, cancel: () => this.cancel(seq.id) };
  }

  /** Resolves when no sequence is left (after finishing or cancelling them all). */
  async idle(): Promise<void> {
    while (this.loop) await this.loop;
  }

  /** Cancels every sequence (shutdown after the drain deadline). */
  cancelAll(): void {
    for (const s of this.seqs.values()) s.cancelled = true;
    this.kick();
  }

  private cancel(id: number): void {
    const s = this.seqs.get(id);
    if (s) s.cancelled = true;
  }

  private kick(): void {
    // with nothing to run the loop would end before `this.loop` is assigned, and stay assigned
    if (this.loop || this.seqs.size === 0) return;
    this.loop = (async () => {
      let current: InFlight | null = null;
      try {
        // (a request that arrives while the last submit settles is run by this loop: kick() sees it running)
        while (this.seqs.size > 0 || current || (await this.settled())) {
          const start = performance.now();
          current ??= await this.launch();
          let stats: Omit<StepStats, 'periodSeconds'> | null = null;
          if (current) {
            // the next step goes to the GPU before this one's ids come back (null: it waits for them)
            const next: InFlight | null = this.pipeline ? await this.follow(current) : null;
            stats = await this.resolve(current, start);
            this.lastSubmit = current.submitted;
            current = next;
          }
          await new Promise((r) => setImmediate(r)); // let I/O (new requests, disconnects) in
          if (stats) this.onStep?.({ ...stats, periodSeconds: (performance.now() - start) / 1e3 });
        }
      } finally {
        this.loop = null;
      }
      // a request that arrived after the loop's last look (settled() returned, the loop not yet
      // cleared) saw it running and did not kick: it starts the next loop
      this.kick();
    })();
  }

  /**
   * Waits for the last step's submit() (it settles once the work submitted before it has run), so
   * nothing is pending on the device when the loop ends; whether sequences arrived meanwhile.
   */
  private async settled(): Promise<boolean> {
    await this.lastSubmit;
    this.lastSubmit = null;
    return this.seqs.size > 0;
  }

  /** The scheduler's view of a sequence. */
  private view(s: Sequence): SeqView {
    return {
      id: s.id,
      arrival: s.arrival,
      arrivalTime: s.arrivalTime,
      totalTokens: s.tokens.length,
      computed: s.computed,
      state: s.state,
      promptTokens: s.promptLength,
      generated: s.tokens.length - s.promptLength,
      maxTokens: s.sampling.maxTokens,
      firstTokenTime: s.firstTokenTime,
      slo: s.slo,
      priority: s.priority,
    };
  }

  private plan(views: SeqView[]): StepPlan {
    const kv = this.model.kv;
    return this.scheduler.plan(
      views,
      { freeBlocks: kv.pool.free, blocksNeeded: (id, n) => kv.blocksNeeded(id, n), blocksHeld: (id) => kv.blocksHeld(id) },
      this.limits,
      clock(),
    );
  }

  /** The serial path: plans a step from the sequences' state on the host and submits it; null when no step runs. */
  private async launch(): Promise<InFlight | null> {
    for (const s of [...this.seqs.values()]) if (s.cancelled) this.finish(s, 'cancelled');
    if (this.seqs.size === 0) return null;
    const plan = this.plan([...this.seqs.values()].map((s) => this.view(s)));
    for (const r of plan.reject ?? []) this.finish(this.seqs.get(r.seq)!, 'rejected', new Error(describeRejection(r)));
    for (const id of plan.preempt) {
      const s = this.seqs.get(id)!;
      this.model.release(id);
      this.penalties.release(id); // its counts are rebuilt from its tokens when it runs again
      s.computed = 0;
      s.state = 'waiting';
      this.counters.preemptions++;
    }
    if (plan.items.length === 0) return null;
    const batch = plan.items.map(({ seq, tokens }) => ({ s: this.seqs.get(seq)!, n: tokens }));
    try {
      return await this.record(batch, null);
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      for (const { s } of batch) this.finish(s, 'error', error);
      return null;
    }
  }

  /**
   * Pipelining (EngineOptions.pipeline): records and submits the step after `prev` before `prev`'s
   * ids are read back. Each of its rows takes its input id from `prev`'s sampled ids on the GPU,
   * and is sampled with the counter (seed, token index) the serial path would use. It is planned
   * by the scheduler over the sequences as they will be once `prev`'s tokens are accepted (those
   * that reach max_tokens with them left out), and runs only when that plan is the steady state:
   * decode rows of sequences `prev` decoded, nothing preempted or rejected, and every row
   * `followable`. Otherwise (null) the loop waits for `prev` and plans serially: prompt chunks or
   * recomputes joining, preemption, rejections, cancelled sequences, and rows that need the host
   * between steps (prefill-only handoff, pending choices to fork). Constrained rows and rows with
   * penalties follow: their automaton states and token counts live on the GPU and were advanced by
   * `prev`'s sampled ids before this step runs (queue order); min_tokens masks EOS by the host's
   * count plus the token in flight; log-probabilities are read back with each step's own logits.
   *
   * The rollback rule: a row whose sequence finished while this step was in flight (EOS, a stop
   * string or an error found when `prev` was read back) is dropped when this step resolves: its
   * token is never emitted nor counted, and the KV slot it wrote went back to the pool with the
   * rest of the sequence's KV when it finished (the queue runs this step's write before any later
   * step's use of the block). A row of a sequence cancelled meanwhile gives no token either (as
   * serially, the in-flight step's token of a cancelled sequence is not taken).
   */
  private async follow(prev: InFlight): Promise<InFlight | null> {
    if (!prev.followable) return null;
    const decoded = new Set(prev.batch.map(({ s }) => s.id));
    const views: SeqView[] = [];
    for (const s of this.seqs.values()) {
      if (s.cancelled) return null;
      const v = this.view(s);
      if (decoded.has(s.id)) {
        // as it will be with prev's token accepted; with it, one at max_tokens ends
        v.totalTokens++;
        v.computed++;
        v.generated++;
        if (v.generated >= s.sampling.maxTokens) continue;
      }
      views.push(v);
    }
    if (views.length === 0) return null;
    const plan = this.plan(views);
    if (plan.preempt.length || plan.reject?.length || plan.items.length === 0) return null;
    if (!plan.items.every(({ seq, tokens }) => tokens === 1 && decoded.has(seq))) return null;
    const batch = plan.items.map(({ seq }) => ({ s: this.seqs.get(seq)!, n: 1 }));
    if (!batch.every(({ s }) => this.followable(s))) return null;
    const before = batch.map(({ s }) => this.model.kv.tokens(s.id));
    try {
      const next = await this.record(batch, prev);
      this.counters.pipelinedSteps++;
      return next;
    } catch {
      // undone, KV appends included: the serial path records the step again (and reports what fails)
      batch.forEach(({ s }, i) => this.model.kv.truncate(s.id, before[i]));
      return null;
    }
  }

  /**
   * Whether a step may be recorded with `s`'s input id still on the GPU and its host state one
   * token behind: nothing of its row needs the host between the steps (see follow).
   */
  private followable(s: Sequence): boolean {
    return !s.handoff && !s.forks;
  }

  /**
   * Records one step (forward pass, constraints, penalties, sampling, read-back of the ids) and
   * submits it. With `prev` (a step recorded before prev's ids are read back: follow) every row is
   * a decode row whose input id is read from `prev`'s sampled ids on the GPU, and whose host state
   * is one token behind (the token index keying its RNG is one more than its host count).
   */
  private async record(batch: Row[], prev: InFlight | null): Promise<InFlight> {
    const t0 = performance.now();
    const vocab = this.model.config.vocabSize;
    const step = this.model.gpu.step({ label: prev ? 'engine step (pipelined)' : 'engine step' });
    // prefill-only sequences whose context this step completes: their KV is copied out layer by layer
    const exports = batch
      .filter(({ s, n }) => s.handoff && s.computed + n === s.tokens.length)
      .map(({ s }) => ({ s, layers: [] as Promise<KvLayer>[], copy: null as KvExporter | null }));
    const afterLayer = exports.length
      ? (layer: number) => {
          // the exporter is made at the first layer, after forward() appended the step's tokens
          for (const e of exports) e.layers.push((e.copy ??= this.model.kvExporter(step, e.s.id)).layer(layer));
          step.flush();
        }
      : undefined;
    let out: GPUBuffer | null = null;
    try {
      const prevRow = new Map(prev?.batch.map(({ s }, i) => [s.id, i]));
      const chunks: SeqChunk[] = batch.map(({ s, n }) =>
        prev ? { seq: s.id, tokens: [0], gpuToken: { buffer: prev.sampled, offset: prevRow.get(s.id)! * 4 } } : { seq: s.id, tokens: s.tokens.slice(s.computed, s.computed + n) },
      );
      const ahead = prev ? 1 : 0;
      const { logits, rows } = this.model.forward(step, chunks, { afterLayer });
      for (const e of exports) e.s.handoff!.onKv(e.s.tokens.length, e.copy!.rows, e.layers);
      // constrained rows masked first: their log-probabilities are of the masked distribution
      const advance = this.constraints.record(
        step,
        logits,
        batch.map(({ s, n }) => (s.constraint ? { seq: s.id, automaton: s.constraint, generated: () => s.tokens.slice(s.promptLength), accepts: s.computed + n === s.tokens.length } : null)),
      );
      // log-probabilities are of the model's distribution: read before bias and penalties
      const wantLogits = batch.some(({ s }) => (s.sampling.logprobs ?? 0) > 0);
      const readLogits = wantLogits ? step.readback(logits, 0, rows * vocab * 4) : null;
      const countSampled = this.penalties.record(
        step,
        logits,
        batch.map(({ s, n }) => ({ seq: s.id, sampling: s.sampling, tokens: s.tokens, promptLength: s.promptLength, ahead, accepts: s.computed + n === s.tokens.length })),
      );
      const params = packSampleParams(
        batch.map(({ s }) => ({ temperature: s.sampling.temperature, topK: s.sampling.topK, topP: s.sampling.topP, minP: s.sampling.minP, seed: s.sampling.seed, counter: s.tokens.length - s.promptLength + ahead })),
      );
      // outside the step's scratch: a following step reads it after this one is submitted
      out = this.sampledIds.take(rows * 4);
      sample(step, { logits, params: step.upload(params, 'sample params'), out, rows, cols: vocab });
      countSampled?.(out);
      const statusBuf = advance?.(out);
      // the sampled ids, and the constrained rows' status after them: one read-back
      let read = out;
      if (statusBuf) {
        read = step.scratch(rows * 8, 'sampled and status');
        step.copy(out, 0, read, 0, rows * 4);
        step.copy(statusBuf, 0, read, rows * 4, rows * 4);
      }
      const words = step.readback(read, 0, rows * (statusBuf ? 8 : 4));
      // its errors reject the read-backs too
      const submitted = step.submit().then(
        () => {},
        () => {},
      );
      // the read-backs resolve when this step has run; submit() also waits for whatever was submitted before it looked (a following step)
      const result = (async (): Promise<StepOutput> => {
        const all = new Uint32Array(await words);
        return { sampled: all.subarray(0, rows), status: statusBuf ? all.subarray(rows) : null, logitRows: readLogits ? new Float32Array(await readLogits) : null };
      })();
      result.catch(() => {}); // awaited in resolve()
      const decodes = batch.every(({ s, n }) => n === 1 && s.computed >= s.promptLength && s.computed + n === s.tokens.length);
      return { batch, sampled: out, result, submitted, t0, followable: decodes && batch.every(({ s }) => this.followable(s)) };
    } catch (err) {
      if (out) this.sampledIds.release(out);
      await step.discard();
      throw err;
    }
  }

  /**
   * Waits for a step's ids and takes them: a prompt chunk advances its sequence, a row that
   * completes its sequence's context accepts its token. A row whose sequence finished while the
   * step was in flight is dropped (the rollback rule: see follow).
   */
  private async resolve(cur: InFlight, since: number): Promise<Omit<StepStats, 'periodSeconds'> | null> {
    let out: StepOutput;
    try {
      out = await cur.result;
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      for (const { s } of cur.batch) this.finish(s, 'error', error);
      return null;
    } finally {
      // a step that reads them (follow) was submitted before this one was resolved
      this.sampledIds.release(cur.sampled);
    }
    const { sampled, status, logitRows } = out;
    const vocab = this.model.config.vocabSize;
    // a pipelined step was recorded before the last one was resolved: its time starts when the GPU could take it
    const seconds = (performance.now() - Math.max(cur.t0, since)) / 1e3;
    let promptTokens = 0;
    let decodeTokens = 0;
    const shape: BatchShape = { prefillTokens: 0, prefillAttention: 0, decodeSeqs: 0, decodeContext: 0 };
    cur.batch.forEach(({ s, n }, i) => {
      if (s.computed < s.promptLength) promptTokens += n;
      else decodeTokens += n;
      if (n === 1 && s.computed >= s.promptLength) {
        shape.decodeSeqs++;
        shape.decodeContext += s.computed;
      } else {
        shape.prefillTokens += n;
        shape.prefillAttention += n * (s.computed + n);
      }
      // computed, but its sequence finished while the step was in flight: dropped
      if (this.seqs.get(s.id) !== s) {
        this.counters.rolledBack++;
        return;
      }
      s.state = 'running';
      s.computed += n;
      if (s.computed < s.tokens.length) return; // a prompt chunk (or recompute) with more to come
      if (s.cancelled) return;
      if (s.forks) this.fork(s);
      this.accept(s, sampled[i], logitRows ? logitRows.subarray(i * vocab, (i + 1) * vocab) : null, s.constraint ? status![i] === STATUS_COMPLETE : false);
      if (s.handoff && this.seqs.has(s.id)) this.handOff(s);
    });
    this.counters.steps++;
    this.counters.promptTokens += promptTokens;
    return { sequences: cur.batch.length, promptTokens, decodeTokens, shape, seconds };
  }

  /** Appends a sampled token and emits what it makes safe to emit; finishes on EOS, stop, a complete constrained output or length. */
  private accept(s: Sequence, token: number, logits: Float32Array | null, complete: boolean): void {
    if (token === NO_TOKEN) {
      this.finish(s, 'error', new Error('sampling found no valid token (every logit masked or not finite)'));
      return;
    }
    s.tokens.push(token);
    s.firstTokenTime ??= clock();
    this.counters.generatedTokens++;
    const generated = s.tokens.length - s.promptLength;
    const event: TokenEvent = { token, text: '', ...(logits && s.sampling.logprobs ? logprobsOf(logits, token, s.sampling.logprobs) : {}) };
    if (token === this.tokenizer.vocab.eos) {
      s.events.onToken?.({ ...event, text: this.flushText(s) });
      this.finish(s, 'stop');
      return;
    }
    const r = s.stops.push(s.decoder.push(token));
    if (r.stopped) {
      s.events.onToken?.({ ...event, text: r.emit });
      this.finish(s, 'stop');
      return;
    }
    if (complete) {
      s.events.onToken?.({ ...event, text: r.emit + this.flushText(s) });
      this.finish(s, 'stop');
      return;
    }
    if (generated >= s.sampling.maxTokens) {
      s.events.onToken?.({ ...event, text: r.emit + this.flushText(s) });
      this.finish(s, 'length');
      return;
    }
    s.events.onToken?.({ ...event, text: r.emit });
  }

  /**
   * The request's other choices start from the prompt `s` has just computed. Each shares the
   * prompt's whole blocks short of its last token (never written again: every sequence writes
   * past them) and computes the rest, 1 to blockSize tokens, into a block of its own; from that
   * step's logits it samples its first token with its own seed, as a request of its own would.
   */
  private fork(s: Sequence): void {
    const forks = s.forks!;
    s.forks = undefined;
    const { blockSize } = this.model.kv.layout;
    const shared = Math.floor((s.promptLength - 1) / blockSize) * blockSize;
    const prompt = s.tokens.slice(0, s.promptLength);
    for (const f of forks) {
      // with head-wise KV, rings that have moved past the shared tokens cannot be shared: the choice computes its prompt itself
      const computed = shared > 0 && this.model.fork(s.id, f.id, shared) ? shared : 0;
      this.seqs.set(f.id, {
        ...s,
        id: f.id,
        arrival: f.arrival,
        firstTokenTime: undefined,
        tokens: [...prompt],
        computed,
        state: computed > 0 ? 'running' : 'waiting',
        sampling: f.sampling,
        events: f.events,
        decoder: new StreamDecoder(this.tokenizer, prompt[prompt.length - 1]),
        stops: new StopMatcher(f.sampling.stop),
      });
    }
  }

  /** A prefill-only sequence that did not end with its token leaves: its KV is freed here, the receiver has a copy. */
  private handOff(s: Sequence): void {
    this.seqs.delete(s.id);
    this.model.release(s.id);
    this.penalties.release(s.id);
    s.handoff!.onHandoff(s.tokens.slice(s.promptLength));
  }

  /** The end of a sequence's text: bytes of an unfinished character, text held back for a stop string. */
  private flushText(s: Sequence): string {
    const r = s.stops.push(s.decoder.flush());
    return r.emit + (r.stopped ? '' : s.stops.flush());
  }

  private finish(s: Sequence, reason: FinishReason, error?: Error): void {
    if (!this.seqs.delete(s.id)) return;
    if (this.model.kv.has(s.id)) this.model.release(s.id);
    this.penalties.release(s.id);
    this.constraints.release(s.id);
    if (reason === 'stop' || reason === 'length') this.scheduler.observeFinished?.(s.tokens.length - s.promptLength);
    const eos = this.tokenizer.vocab.eos;
    const completion = s.tokens.slice(s.promptLength).filter((t) => t !== eos).length;
    s.events.onFinish?.(reason, { promptTokens: s.promptLength, completionTokens: completion }, error);
    // choices that never started end as their prompt did (cancelled, rejected, failed)
    for (const f of s.forks ?? []) f.events.onFinish?.(reason, { promptTokens: s.promptLength, completionTokens: 0 }, error);
  }
}

/**
 * Why a request can never run (RequestTooLargeError): an empty prompt, token ids outside the
 * vocabulary, sampling options out of range, more tokens than the context or one sequence's share
 * of the KV pool.
 */
export function checkRequest(prompt: readonly number[], generated: readonly number[], sampling: SamplingOptions, config: ModelConfig, maxSequenceTokens: number): void {
  if (prompt.length === 0) throw new RequestTooLargeError('the prompt is empty (it needs at least one token)');
  for (const t of [...prompt, ...generated]) if (!(Number.isInteger(t) && t >= 0 && t < config.vocabSize)) throw new RequestTooLargeError(`token id ${t} is outside the vocabulary (0..${config.vocabSize - 1})`);
  const bad = samplingProblem(sampling, config.vocabSize);
  if (bad) throw new RequestTooLargeError(bad);
  const total = prompt.length + sampling.maxTokens;
  if (total > config.contextLength) {
    throw new RequestTooLargeError(`the prompt (${prompt.length} tokens) plus max_tokens (${sampling.maxTokens}) exceeds the context length of ${config.contextLength} tokens`);
  }
  if (total > maxSequenceTokens) {
    throw new RequestTooLargeError(`the prompt plus max_tokens (${total} tokens) needs more KV cache than the server has; lower max_tokens or raise --kv-memory`);
  }
}

/** Log-probabilities (natural log, of the model's distribution before temperature; for a constrained row, of the masked one) of the token and the top n; masked tokens are no alternatives. */
function logprobsOf(logits: Float32Array, token: number, n: number): Pick<TokenEvent, 'logprob' | 'topLogprobs'> {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  const top: { token: number; logprob: number }[] = [];
  for (let i = 0; i < logits.length; i++) {
    if (!(logits[i] > -Infinity)) continue; // masked (constrained decoding): not an alternative
    if (top.length < n || logits[i] > top[top.length - 1].logprob + logZ) {
      top.push({ token: i, logprob: logits[i] - logZ });
      top.sort((a, b) => b.logprob - a.logprob);
      if (top.length > n) top.pop();
    }
  }
  return { logprob: logits[token] - logZ, topLogprobs: top };
}

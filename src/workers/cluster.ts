import { toWire } from '../constraints/wire.ts';
import { type EngineHandle, type EngineRequest, type FinishReason, QueueFullError, type SequenceEvents, type StepStats, type TokenEvent, type Usage, checkRequest, choiceRequests } from '../engine/engine.ts';
import type { ServingEngine, WorkerStatus } from '../engine/serving.ts';
import type { ModelConfig } from '../model/config.ts';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { pickDecode, pickPrefill } from '../scheduler/placement.ts';
import { type ControlPlane, type FromWorker, LIVENESS_TIMEOUT_MS, STATUS_INTERVAL_MS, type WorkerInfo, type WorkerLoad } from './control.ts';
import type { TransferResult } from './kv_transfer.ts';
import type { RequestSpec, WorkerRole } from './protocol.ts';

export interface ClusterOptions {
  plane: ControlPlane;
  tokenizer: Tokenizer;
  config: ModelConfig;
  /** modelFingerprint() of the front's model: workers of another model are refused */
  fingerprint: string;
  /** prompt tokens a prefill worker may have queued before requests wait at the front (default 2048) */
  prefillBacklog?: number;
  /** requests waiting at the front at most (QueueFullError beyond; default 1024) */
  maxWaiting?: number;
  /** dispatches of one request at most (a worker dying mid-request costs one; default 3) */
  maxAttempts?: number;
  log?: (line: string) => void;
}

interface Worker {
  info: WorkerInfo;
  load: WorkerLoad;
  lastSeen: number;
  state: 'up' | 'lost';
  /** its control-link reconnections, as its last status said */
  link: number;
  /** heard from since the front's own link last came back: what is sent to it arrives */
  synced: boolean;
}

type Phase = 'queued' | 'prefill' | 'transfer' | 'decode';

interface Request {
  rid: number;
  attempt: number;
  /** dispatches caused by a control-link outage: they do not count against maxAttempts */
  resyncs: number;
  arrival: number;
  prompt: number[];
  generated: number[];
  req: EngineRequest;
  events: SequenceEvents;
  phase: Phase;
  prefillWorker?: string;
  decodeWorker?: string;
  cancelled: boolean;
  /** tokens that arrived ahead of one still in flight (prefill and decode workers send on different links) */
  early: Map<number, TokenEvent>;
  finish?: { generated: number; reason: FinishReason; usage: Usage; error?: string };
}

/**
 * The front of disaggregated serving: the HTTP server's engine (ServingEngine) when prefill and
 * decode run in worker processes. It keeps the requests (their tokens so far, their events) and
 * places them: a waiting request goes to the prefill worker with the shortest queue once one has
 * room (pickPrefill), with the decode worker that has the most free KV (pickDecode) named as the
 * KV's destination. Workers report status every STATUS_INTERVAL_MS; one that exits or is silent
 * for LIVENESS_TIMEOUT_MS is lost, and its requests are dispatched again with the tokens
 * generated so far (recomputed on a prefill worker, then decoded elsewhere), or end with an
 * error when no worker of a role is left or the attempts are spent. A control link that was down
 * (the front's, or a worker's) may have lost messages: the requests it carried are dispatched
 * again the same way.
 */
export class Cluster implements ServingEngine {
  readonly tokenizer: Tokenizer;
  readonly config: ModelConfig;
  readonly counters = { preemptions: 0, redispatches: 0, workersLost: 0, workersRefused: 0 };
  onStep?: (s: StepStats) => void;
  /** each acknowledged KV handover, from the prefill worker to the decode worker */
  onTransfer?: (t: { from: string; to: string } & TransferResult) => void;
  private readonly workersById = new Map<string, Worker>();
  private readonly requests = new Map<number, Request>();
  private queue: Request[] = [];
  private nextRid = 1;
  private arrivals = 0;
  private idleWaiters: (() => void)[] = [];
  private readyWaiters: (() => void)[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly log: (line: string) => void;
  /** the front's own control link is down: no worker can be heard, so none is declared lost */
  private linkDown = false;

  constructor(private readonly o: ClusterOptions) {
    this.tokenizer = o.tokenizer;
    this.config = o.config;
    this.log = o.log ?? ((line) => console.log(`wgserve: ${line}`));
    o.plane.onMessage((id, m) => this.onMessage(id, m));
    o.plane.onGone((id, reason) => this.lost(id, reason));
    o.plane.onLink((up) => this.onLink(up));
    this.timer = setInterval(() => {
      if (this.linkDown) return;
      const now = performance.now();
      for (const [id, w] of this.workersById) if (w.state === 'up' && now - w.lastSeen > LIVENESS_TIMEOUT_MS) this.lost(id, `no status for ${LIVENESS_TIMEOUT_MS / 1000} s`);
    }, STATUS_INTERVAL_MS);
  }

  /** Resolves once `prefill` prefill and `decode` decode workers are up; throws after `timeoutMs`. */
  async ready(want: { prefill: number; decode: number }, timeoutMs: number): Promise<void> {
    const enough = () => this.up('prefill').length >= want.prefill && this.up('decode').length >= want.decode;
    const deadline = performance.now() + timeoutMs;
    while (!enough()) {
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`workers not up after ${timeoutMs / 1000} s: ${this.up('prefill').length}/${want.prefill} prefill, ${this.up('decode').length}/${want.decode} decode`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.readyWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  get maxSequenceTokens(): number {
    const up = [...this.workersById.values()].filter((w) => w.state === 'up');
    return Math.min(this.config.contextLength, ...up.map((w) => w.info.maxSequenceTokens));
  }

  get waiting(): number {
    return this.queue.length;
  }

  get running(): number {
    return this.requests.size - this.queue.length;
  }

  kvBlocks(): { used: number; total: number } {
    let used = 0;
    let total = 0;
    for (const w of this.workersById.values()) {
      if (w.state !== 'up') continue;
      used += w.load.kvBlocksUsed;
      total += w.load.kvBlocksTotal;
    }
    return { used, total };
  }

  /** Head-wise KV bytes by head kind over the workers that are up (null when none reports them: no head pattern). */
  kvBytesByKind(): { retrieval: number; streaming: number } | null {
    const up = [...this.workersById.values()].flatMap((w) => (w.state === 'up' && w.load.kvBytesByKind ? [w.load.kvBytesByKind] : []));
    if (up.length === 0) return null;
    return { retrieval: up.reduce((s, b) => s + b.retrieval, 0), streaming: up.reduce((s, b) => s + b.streaming, 0) };
  }

  /** Key-index bytes (--ann) over the workers that are up (null when none reports them: --ann off). */
  annBytes(): number | null {
    const up = [...this.workersById.values()].flatMap((w) => (w.state === 'up' && w.load.annBytes !== undefined ? [w.load.annBytes] : []));
    return up.length === 0 ? null : up.reduce((s, b) => s + b, 0);
  }

  workers(): WorkerStatus[] {
    return [...this.workersById.values()].map((w) => ({
      id: w.info.id,
      role: w.info.role,
      state: w.state,
      waiting: w.load.waiting,
      running: w.load.running,
      kvBlocksUsed: w.load.kvBlocksUsed,
      kvBlocksTotal: w.load.kvBlocksTotal,
      kvBytesSent: w.load.kvBytesSent,
      kvTransferSeconds: w.load.kvTransferSeconds,
      kvTransfers: w.load.kvTransfers,
      ...(w.info.data ? { kvAddress: `${w.info.data.host}:${w.info.data.port}` } : {}),
    }));
  }

  /**
   * A request's choices (`n`) are requests of their own here, each with its choice's seed: each is
   * prefilled on a prefill worker (prompt KV is not shared across workers), so they are admitted
   * all or none.
   */
  submit(req: EngineRequest): EngineHandle {
    const parts = choiceRequests(req);
    checkRequest(req.prompt, [], req.sampling, this.config, this.maxSequenceTokens);
    if (this.up('prefill').length === 0 || this.up('decode').length === 0) throw new QueueFullError('no prefill or no decode worker is up');
    if (this.queue.length + parts.length > (this.o.maxWaiting ?? 1024)) throw new QueueFullError(`${this.queue.length} requests are already waiting`);
    const handles = parts.map((p) => this.start(p));
    return handles.length === 1 ? handles[0] : { id: handles[0].id, cancel: () => handles.forEach((h) => h.cancel()) };
  }

  private start(req: EngineRequest): EngineHandle {
    const r: Request = {
      rid: this.nextRid++,
      attempt: 0,
      resyncs: 0,
      arrival: this.arrivals++,
      prompt: [...req.prompt],
      generated: [],
      req,
      events: req.events ?? {},
      phase: 'queued',
      cancelled: false,
      early: new Map(),
    };
    this.requests.set(r.rid, r);
    if (req.sampling.maxTokens <= 0) {
      this.end(r, 'length', { promptTokens: r.prompt.length, completionTokens: 0 });
    } else {
      this.queue.push(r);
      this.pump();
    }
    return { id: r.rid, cancel: () => this.cancel(r.rid) };
  }

  async idle(): Promise<void> {
    while (this.requests.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  cancelAll(): void {
    for (const rid of [...this.requests.keys()]) this.cancel(rid);
  }

  /** Stops the liveness timer and closes the control plane (child workers exit). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.o.plane.close();
  }

  private up(role: WorkerRole): Worker[] {
    return [...this.workersById.values()].filter((w) => w.state === 'up' && w.info.role === role);
  }

  /** Whether worker `id` holds `r`, or `r` waits for a message from it. */
  private holds(id: string, r: Request): boolean {
    if (r.phase === 'queued') return false;
    // a decoding request whose stream waits for a token from its prefill worker waits on that worker too
    const waitsOnPrefill = r.phase === 'decode' && r.prefillWorker === id && r.early.size > 0;
    return r.decodeWorker === id || ((r.phase === 'prefill' || r.phase === 'transfer') && r.prefillWorker === id) || waitsOnPrefill;
  }

  private cancel(rid: number): void {
    const r = this.requests.get(rid);
    if (!r || r.cancelled) return;
    r.cancelled = true;
    if (r.phase === 'queued') {
      this.queue = this.queue.filter((q) => q !== r);
      this.end(r, 'cancelled', this.usage(r));
      return;
    }
    // in transfer the request is between workers: the cancel goes out when the decode worker adopts it
    const holder = r.phase === 'prefill' ? r.prefillWorker : r.phase === 'decode' ? r.decodeWorker : undefined;
    if (holder) this.o.plane.send(holder, { type: 'cancel', rid, attempt: r.attempt });
  }

  /** Dispatches waiting requests (highest priority, then oldest) while a prefill worker has room. */
  private pump(): void {
    if (this.queue.length === 0) return;
    this.queue.sort((a, b) => (b.req.priority ?? 0) - (a.req.priority ?? 0) || a.arrival - b.arrival);
    const backlog = this.o.prefillBacklog ?? 2048;
    // prompt tokens queued on each prefill worker; KV blocks and sequences headed to each decode worker
    const queued = new Map<string, number>();
    const incoming = new Map<string, { blocks: number; seqs: number }>();
    const count = (r: Request) => {
      if (r.phase === 'prefill' && r.prefillWorker) queued.set(r.prefillWorker, (queued.get(r.prefillWorker) ?? 0) + r.prompt.length + r.generated.length);
      if ((r.phase === 'prefill' || r.phase === 'transfer') && r.decodeWorker) {
        const w = this.workersById.get(r.decodeWorker);
        const inc = incoming.get(r.decodeWorker) ?? { blocks: 0, seqs: 0 };
        if (w) inc.blocks += this.blocksFor(w, r);
        inc.seqs++;
        incoming.set(r.decodeWorker, inc);
      }
    };
    for (const r of this.requests.values()) count(r);
    // only to workers heard since the front's link last came back: to others a dispatch may be lost
    const placeable = (role: WorkerRole) => this.up(role).filter((w) => w.synced);
    while (this.queue.length > 0) {
      const r = this.queue[0];
      const p = pickPrefill(placeable('prefill').map((w) => ({ w, queuedTokens: queued.get(w.info.id) ?? 0 })), backlog);
      const d = pickDecode(
        placeable('decode').map((w) => {
          const inc = incoming.get(w.info.id) ?? { blocks: 0, seqs: 0 };
          return {
            w,
            freeBlocks: w.load.kvBlocksTotal - w.load.kvBlocksUsed - inc.blocks,
            sequences: w.load.running + w.load.waiting + inc.seqs,
            needBlocks: this.blocksFor(w, r),
          };
        }),
      );
      // no prefill room, or no decode worker with KV for the whole request: wait for a status or an end
      if (!p || !d || !d.w.info.data) return;
      this.queue.shift();
      r.attempt++;
      r.phase = 'prefill';
      r.prefillWorker = p.w.info.id;
      r.decodeWorker = d.w.info.id;
      count(r);
      const spec: RequestSpec = { rid: r.rid, attempt: r.attempt, prompt: r.prompt, generated: [...r.generated], sampling: r.req.sampling, slo: r.req.slo, priority: r.req.priority, ...(r.req.constraint ? { constraint: toWire(r.req.constraint) } : {}) };
      this.o.plane.send(p.w.info.id, { type: 'prefill', req: spec, decode: { id: d.w.info.id, address: d.w.info.data } });
    }
  }

  /** KV blocks a request can come to hold on a worker (prompt plus max_tokens) */
  private blocksFor(w: Worker, r: Request): number {
    const { nKvHeads, blockSize, headwise } = w.load;
    const tokens = r.prompt.length + r.req.sampling.maxTokens;
    const blocks = (n: number) => Math.ceil(n / blockSize);
    // head-wise: a ring stops growing at sink + recent (PagedKvTables.blocksNeeded)
    if (headwise) return headwise.fullColumns * blocks(tokens) + (nKvHeads - headwise.fullColumns) * blocks(Math.min(tokens, headwise.sink + headwise.recent));
    return nKvHeads * blocks(tokens);
  }

  private onMessage(id: string, m: FromWorker): void {
    if (m.type === 'status') return this.onStatus(id, m);
    const w = this.workersById.get(id);
    if (!w) return; // never registered (or refused)
    // a lost worker's late messages still count for the current attempt: a token it sent before
    // it was declared lost may be the one the rest of the stream waits for
    if (w.state === 'up') w.lastSeen = performance.now();
    const r = this.requests.get(m.rid);
    if (!r || r.attempt !== m.attempt || r.phase === 'queued') {
      // an earlier attempt (or one being dispatched again): stop whatever still runs it there
      if (m.type === 'token' || m.type === 'adopted') this.o.plane.send(id, { type: 'cancel', rid: m.rid, attempt: m.attempt });
      return;
    }
    switch (m.type) {
      case 'token':
        if (r.phase === 'prefill') r.phase = 'transfer';
        this.deliver(r, m.index, m.event);
        return;
      case 'finish':
        r.finish = { generated: m.generated, reason: m.reason, usage: m.usage, error: m.error };
        this.tryEnd(r);
        return;
      case 'handed-over':
        this.onTransfer?.({ from: id, to: m.to, bytes: m.bytes, seconds: m.seconds, exposedSeconds: m.exposedSeconds });
        if (r.phase === 'prefill') r.phase = 'transfer';
        this.pump();
        return;
      case 'adopted':
        r.phase = 'decode';
        r.decodeWorker = id;
        if (r.cancelled) this.o.plane.send(id, { type: 'cancel', rid: r.rid, attempt: r.attempt });
        return;
      case 'handover-failed':
        this.redispatch(r, `handover from ${id} failed: ${m.reason}`);
        return;
    }
  }

  private onStatus(id: string, m: Extract<FromWorker, { type: 'status' }>): void {
    let w = this.workersById.get(id);
    if (!w) {
      if (m.worker.fingerprint !== this.o.fingerprint) {
        this.counters.workersRefused++;
        const reason = `model fingerprint ${m.worker.fingerprint.slice(0, 12)} differs from the front's ${this.o.fingerprint.slice(0, 12)}: the worker serves another model`;
        this.log(`refused worker ${id} (${m.worker.role} on ${m.worker.host}, pid ${m.worker.pid}): ${reason}`);
        this.o.plane.send(id, { type: 'refuse', reason });
        return;
      }
      w = { info: m.worker, load: m.load, lastSeen: performance.now(), state: 'up', link: m.link, synced: true };
      this.workersById.set(id, w);
      this.log(`worker ${id} up: ${m.worker.role} on ${m.worker.host} (${m.worker.device})${m.worker.data ? `, KV on ${m.worker.data.host}:${m.worker.data.port}` : ''}`);
      this.o.plane.send(id, { type: 'welcome' });
      for (const f of this.readyWaiters.splice(0)) f();
    } else if (w.state === 'lost') {
      // it was only slow (its requests went elsewhere and were cancelled there): take it back
      w.state = 'up';
      this.log(`worker ${id} is answering again: back in service`);
    }
    const relinked = m.link !== w.link;
    w.info = m.worker;
    w.load = m.load;
    w.lastSeen = performance.now();
    w.link = m.link;
    w.synced = true;
    for (const s of m.steps) this.onStep?.(s);
    if (relinked) {
      // its link was down: its tokens, finishes and acknowledgements of that time may be lost
      this.log(`worker ${id}'s control link reconnected`);
      for (const r of [...this.requests.values()]) if (this.holds(id, r)) this.redispatch(r, `worker ${id}'s control link was down`, false);
    }
    this.pump();
  }

  /** The front's control link went down or came back. */
  private onLink(up: boolean): void {
    this.linkDown = !up;
    if (!up) {
      this.log('control link down');
      for (const w of this.workersById.values()) w.synced = false;
      return;
    }
    this.log('control link back: dispatching the requests in flight again');
    const now = performance.now();
    for (const w of this.workersById.values()) w.lastSeen = now; // their silence was ours
    for (const r of [...this.requests.values()]) this.redispatch(r, 'the control link was down', false);
  }

  /** Emits tokens in order: one that arrives before an earlier one waits for it. */
  private deliver(r: Request, index: number, event: TokenEvent): void {
    if (index < r.generated.length) return;
    r.early.set(index, event);
    for (let e = r.early.get(r.generated.length); e; e = r.early.get(r.generated.length)) {
      r.early.delete(r.generated.length);
      r.generated.push(e.token);
      r.events.onToken?.(e);
    }
    this.tryEnd(r);
  }

  private tryEnd(r: Request): void {
    const f = r.finish;
    if (f && r.generated.length >= f.generated) this.end(r, f.reason, f.usage, f.error !== undefined ? new Error(f.error) : undefined);
  }

  private end(r: Request, reason: FinishReason, usage: Usage, error?: Error): void {
    if (!this.requests.delete(r.rid)) return;
    this.queue = this.queue.filter((q) => q !== r);
    r.events.onFinish?.(reason, usage, error);
    if (this.requests.size === 0) for (const f of this.idleWaiters.splice(0)) f();
    this.pump();
  }

  private usage(r: Request): Usage {
    const eos = this.tokenizer.vocab.eos;
    return { promptTokens: r.prompt.length, completionTokens: r.generated.filter((t) => t !== eos).length };
  }

  /**
   * Sends a request back to the queue with what it generated so far (or ends it when that cannot
   * help). `counts`: whether the attempt failed (false: its messages may have been lost).
   */
  private redispatch(r: Request, why: string, counts = true): void {
    if (r.phase === 'queued') return; // already waiting to go out again
    // stop this attempt wherever it may still run (a worker lost by timeout may be alive)
    for (const id of new Set([r.prefillWorker, r.decodeWorker])) if (id) this.o.plane.send(id, { type: 'cancel', rid: r.rid, attempt: r.attempt });
    if (r.cancelled) return this.end(r, 'cancelled', this.usage(r));
    const failed = r.attempt - r.resyncs;
    if (counts && failed >= (this.o.maxAttempts ?? 3)) return this.end(r, 'error', this.usage(r), new Error(`request failed after ${failed} attempts: ${why}`));
    if (!counts) r.resyncs++;
    if (this.up('prefill').length === 0 || this.up('decode').length === 0) return this.end(r, 'error', this.usage(r), new Error(`${why}; no ${this.up('prefill').length === 0 ? 'prefill' : 'decode'} worker is left`));
    this.counters.redispatches++;
    this.log(`request ${r.rid}: ${why}; dispatching it again after ${r.generated.length} generated tokens`);
    r.phase = 'queued';
    r.early.clear();
    r.finish = undefined;
    this.queue.push(r);
    this.pump();
  }

  private lost(id: string, reason: string): void {
    const w = this.workersById.get(id);
    if (!w || w.state === 'lost') return;
    w.state = 'lost';
    this.counters.workersLost++;
    this.log(`worker ${id} (${w.info.role}) lost: ${reason}`);
    for (const r of [...this.requests.values()]) if (this.holds(id, r)) this.redispatch(r, `worker ${id} lost (${reason})`);
    // nothing can place what waits when a role has no worker left: say so rather than hang
    if (this.up(w.info.role).length === 0) for (const r of [...this.queue]) this.end(r, 'error', this.usage(r), new Error(`no ${w.info.role} worker is left (${id}: ${reason})`));
  }
}

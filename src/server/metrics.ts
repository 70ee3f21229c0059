/**
 * Prometheus metrics of one server (its own prom-client registry, so several servers can live in
 * one process): request latencies observed by the routes, engine state read at scrape time.
 * docs/api.md lists every metric.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { FinishReason, StepStats } from '../engine/engine.ts';
import type { ServingEngine, WorkerStatus } from '../engine/serving.ts';

export class ServerMetrics {
  readonly registry = new Registry();
  readonly ttft: Histogram;
  readonly interToken: Histogram;
  readonly e2e: Histogram;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly finished: Counter<'finish_reason'>;
  readonly http: Counter<'method' | 'route' | 'status'>;
  readonly stepSequences: Histogram;
  readonly stepTokens: Histogram;
  readonly stepSeconds: Histogram;
  readonly sloRequests: Counter<'slo_class' | 'result' | 'reason'>;
  readonly goodputTokens: Counter<'slo_class'>;
  readonly goodputRequests: Counter<'slo_class'>;
  readonly rejected: Counter<'slo_class'>;
  readonly tokenizePauses: Counter;

  /** `constraints`: the registered constraint sets (their count and bytes, read at scrape time) */
  constructor(engine: ServingEngine, options: { processMetrics?: boolean; constraints?: { readonly count: number; readonly bytes: number } } = {}) {
    const registers = [this.registry];
    const p = 'wgserve_';
    this.ttft = new Histogram({
      name: `${p}time_to_first_token_seconds`,
      help: 'Time from the request arriving to its first generated token',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80],
      registers,
    });
    this.interToken = new Histogram({
      name: `${p}inter_token_latency_seconds`,
      help: 'Time between consecutive generated tokens of a request',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4],
      registers,
    });
    this.e2e = new Histogram({
      name: `${p}e2e_request_latency_seconds`,
      help: 'Time from the request arriving to its last token (generation requests)',
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320],
      registers,
    });
    this.promptTokens = new Counter({ name: `${p}prompt_tokens_total`, help: 'Prompt tokens of admitted requests', registers });
    this.generationTokens = new Counter({ name: `${p}generation_tokens_total`, help: 'Generated tokens (EOS included)', registers });
    this.finished = new Counter({ name: `${p}requests_finished_total`, help: 'Generation requests finished, by reason (stop, length, cancelled, error, rejected)', labelNames: ['finish_reason'], registers });
    this.http = new Counter({ name: `${p}http_requests_total`, help: 'HTTP requests answered, by route and status', labelNames: ['method', 'route', 'status'], registers });
    this.stepSequences = new Histogram({
      name: `${p}step_sequences`,
      help: 'Sequences batched into one engine step',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    });
    this.stepTokens = new Histogram({
      name: `${p}step_tokens`,
      help: 'Tokens (prompt chunks and decodes) in one engine step',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
      registers,
    });
    this.stepSeconds = new Histogram({
      name: `${p}step_duration_seconds`,
      help: 'Duration of one engine step (forward pass and sampling)',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.sloRequests = new Counter({
      name: `${p}slo_requests_total`,
      help: 'Requests with an SLO, finished: result met or missed; reason none, or the first objective missed (ttft, tpot, deadline), rejected or error',
      labelNames: ['slo_class', 'result', 'reason'],
      registers,
    });
    this.goodputTokens = new Counter({ name: `${p}goodput_tokens_total`, help: 'Completion tokens of requests that met their SLO', labelNames: ['slo_class'], registers });
    this.goodputRequests = new Counter({ name: `${p}goodput_requests_total`, help: 'Requests that met their SLO', labelNames: ['slo_class'], registers });
    this.rejected = new Counter({ name: `${p}requests_rejected_total`, help: 'Requests the scheduler rejected because they could no longer meet their SLO', labelNames: ['slo_class'], registers });
    this.tokenizePauses = new Counter({ name: `${p}prompt_tokenize_pauses_total`, help: 'Times the tokenization of a long prompt handed the event loop back to other requests (once per slice of 2048 characters)', registers });
    new Gauge({
      name: `${p}requests_waiting`,
      help: 'Requests queued for admission (new or preempted)',
      registers,
      collect() {
        this.set(engine.waiting);
      },
    });
    new Gauge({
      name: `${p}requests_running`,
      help: 'Sequences admitted and holding KV cache',
      registers,
      collect() {
        this.set(engine.running);
      },
    });
    new Gauge({
      name: `${p}kv_blocks_used`,
      help: 'KV cache blocks in use (all workers)',
      registers,
      collect() {
        this.set(engine.kvBlocks().used);
      },
    });
    new Gauge({
      name: `${p}kv_blocks_total`,
      help: 'KV cache blocks in the pool (all workers)',
      registers,
      collect() {
        this.set(engine.kvBlocks().total);
      },
    });
    if (engine.kvBytesByKind?.()) {
      new Gauge({
        name: `${p}kv_bytes`,
        help: 'Head-wise KV: bytes of KV cache in use by retrieval heads (full history) and streaming heads (sink + recent rings)',
        labelNames: ['kind'],
        registers,
        collect() {
          const bytes = engine.kvBytesByKind?.();
          if (bytes) for (const kind of ['retrieval', 'streaming'] as const) this.set({ kind }, bytes[kind]);
        },
      });
    }
    if (engine.annBytes?.() != null) {
      new Gauge({
        name: `${p}ann_bytes`,
        help: 'Key indexes and their query samples (--ann), bytes of GPU memory outside the KV pool',
        registers,
        collect() {
          this.set(engine.annBytes?.() ?? 0);
        },
      });
    }
    let seenPreemptions = engine.counters.preemptions;
    new Counter({
      name: `${p}preemptions_total`,
      help: 'Sequences preempted (KV freed, recomputed later) for lack of KV cache',
      registers,
      collect() {
        const n = engine.counters.preemptions;
        if (n > seenPreemptions) this.inc(n - seenPreemptions);
        seenPreemptions = n;
      },
    });
    const sets = options.constraints;
    if (sets) {
      new Gauge({
        name: `${p}constraint_sets`,
        help: 'Constraint sets registered with POST /v1/constraints',
        registers,
        collect() {
          this.set(sets.count);
        },
      });
      new Gauge({
        name: `${p}constraint_bytes`,
        help: "Bytes the registered constraint sets' automata take (against --constraint-memory)",
        registers,
        collect() {
          this.set(sets.bytes);
        },
      });
    }
    if (engine.workers) this.workerMetrics(() => engine.workers!(), registers);
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Disaggregated serving: each worker's state, load and KV transfers, labelled by worker and role. */
  private workerMetrics(workers: () => WorkerStatus[], registers: Registry[]): void {
    const p = 'wgserve_worker_';
    const labelNames = ['worker', 'role'] as const;
    const gauge = (name: string, help: string, value: (w: WorkerStatus) => number) =>
      new Gauge({
        name: `${p}${name}`,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          for (const w of workers()) this.set({ worker: w.id, role: w.role }, value(w));
        },
      });
    gauge('up', 'Whether the worker answers (1) or was lost (0)', (w) => (w.state === 'up' ? 1 : 0));
    gauge('requests_waiting', 'Sequences queued on the worker', (w) => w.waiting);
    gauge('requests_running', 'Sequences the worker runs', (w) => w.running);
    gauge('kv_blocks_used', "KV cache blocks in use on the worker", (w) => w.kvBlocksUsed);
    gauge('kv_blocks_total', "KV cache blocks in the worker's pool", (w) => w.kvBlocksTotal);
    // the workers count since they started: exported as gauges of those running totals
    gauge('kv_transfer_bytes', 'KV bytes this prefill worker has handed over (since it started)', (w) => w.kvBytesSent);
    gauge('kv_transfer_seconds', 'Seconds its handovers took, first layer sent to acknowledgement (since it started)', (w) => w.kvTransferSeconds);
    gauge('kv_transfers', 'Sequences this prefill worker has handed over (since it started)', (w) => w.kvTransfers);
  }

  observeStep(s: StepStats): void {
    this.stepSequences.observe(s.sequences);
    this.stepTokens.observe(s.promptTokens + s.decodeTokens);
    this.stepSeconds.observe(s.seconds);
  }

  observeFinish(reason: FinishReason): void {
    this.finished.inc({ finish_reason: reason });
  }

  /** One finished request with an SLO: `missed` is null when it met it, else the reason. */
  observeSlo(sloClass: string, missed: string | null, completionTokens: number): void {
    this.sloRequests.inc({ slo_class: sloClass, result: missed === null ? 'met' : 'missed', reason: missed ?? 'none' });
    if (missed === 'rejected') this.rejected.inc({ slo_class: sloClass });
    if (missed !== null) return;
    this.goodputRequests.inc({ slo_class: sloClass });
    this.goodputTokens.inc({ slo_class: sloClass }, completionTokens);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}

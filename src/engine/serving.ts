import type { ModelConfig } from '../model/config.ts';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import type { EngineHandle, EngineRequest, StepStats } from './engine.ts';

/** One disaggregated worker as /health and /metrics show it. */
export interface WorkerStatus {
  id: string;
  role: 'prefill' | 'decode';
  /** up: answering; lost: died or stopped answering (its requests moved or ended) */
  state: 'up' | 'lost';
  waiting: number;
  running: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  /** KV handed over: bytes and seconds (first layer sent to acknowledgement), by the sender */
  kvBytesSent: number;
  kvTransferSeconds: number;
  kvTransfers: number;
  /** decode workers: where they receive KV (host:port) */
  kvAddress?: string;
}

/**
 * What the HTTP server needs of whatever generates: the colocated Engine (one process, one
 * device) or the disaggregated front (`src/workers/cluster.ts`, prefill and decode workers).
 */
export interface ServingEngine {
  readonly tokenizer: Tokenizer;
  readonly config: ModelConfig;
  /** the most tokens (prompt + max_tokens) one sequence can hold */
  readonly maxSequenceTokens: number;
  /** requests queued for admission, and sequences admitted */
  readonly waiting: number;
  readonly running: number;
  readonly counters: { preemptions: number };
  /** KV cache blocks in use and in all (over every worker) */
  kvBlocks(): { used: number; total: number };
  /** head-wise KV (docs/headwise.md): bytes of KV in use by retrieval and streaming heads; null without a head pattern */
  kvBytesByKind?(): { retrieval: number; streaming: number } | null;
  /** --ann (docs/ann.md): bytes of key indexes and query samples, held outside the KV pool; null without --ann */
  annBytes?(): number | null;
  /** each engine step (of every worker, when disaggregated) */
  onStep?: (s: StepStats) => void;
  /** queues a request; throws RequestTooLargeError or QueueFullError when it cannot be taken */
  submit(req: EngineRequest): EngineHandle;
  /** resolves when no sequence is left */
  idle(): Promise<void>;
  cancelAll(): void;
  /** per-worker state, when disaggregated */
  workers?(): WorkerStatus[];
}

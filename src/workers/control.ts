import { type ChildProcess, fork } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { FinishReason, StepStats, TokenEvent, Usage } from '../engine/engine.ts';
import { repoRoot } from '../gpu/paths.ts';
import type { TransferResult } from './kv_transfer.ts';
import type { RequestSpec, WorkerRole } from './protocol.ts';

/**
 * The control plane between the front (HTTP API, placement, request state) and its workers:
 * registration and liveness (each worker's status doubles as its heartbeat), dispatch, cancel,
 * tokens. It runs over the Node IPC channel of a child process (`serve --disaggregate`) or over
 * NATS (`--nats URL`, workers on other hosts; `nats_link.ts`). KV never travels here: it goes
 * worker to worker over TCP (`kv_transfer.ts`).
 */

/** Where a decode worker receives KV. */
export interface DataAddress {
  host: string;
  port: number;
}

export interface WorkerInfo {
  id: string;
  role: WorkerRole;
  /** modelFingerprint() of the worker's model: the front refuses workers of another model */
  fingerprint: string;
  /** decode workers: their KV listener */
  data?: DataAddress;
  device: string;
  pid: number;
  host: string;
  /** the most tokens one sequence can hold there */
  maxSequenceTokens: number;
}

export interface WorkerLoad {
  waiting: number;
  running: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  /** tokens per KV block, and KV heads (a sequence of n tokens takes nKvHeads * ceil(n / blockSize) blocks) */
  blockSize: number;
  nKvHeads: number;
  /** head-wise KV: KV heads [fullColumns, nKvHeads) keep only sink + recent tokens (docs/headwise.md) */
  headwise?: { fullColumns: number; sink: number; recent: number };
  /** head-wise KV: bytes of KV in use by retrieval and streaming heads (the engine's kvBytesByKind) */
  kvBytesByKind?: { retrieval: number; streaming: number };
  /** --ann: bytes of its key indexes and query samples (the engine's annBytes) */
  annBytes?: number;
  kvBytesSent: number;
  kvTransferSeconds: number;
  kvTransfers: number;
}

/** Front -> worker. */
export type ToWorker =
  | { type: 'welcome' }
  | { type: 'refuse'; reason: string }
  /** prefill `req` and hand it over to `decode` */
  | { type: 'prefill'; req: RequestSpec; decode: { id: string; address: DataAddress } }
  | { type: 'cancel'; rid: number; attempt: number };

/** Worker -> front. `index`: the token's position among the request's generated tokens. */
export type FromWorker =
  /**
   * every STATUS_INTERVAL_MS; the first one registers the worker. `link` counts the worker's
   * control-link reconnections: a new value tells the front that messages may have been lost.
   */
  | { type: 'status'; worker: WorkerInfo; load: WorkerLoad; steps: StepStats[]; link: number }
  | { type: 'token'; rid: number; attempt: number; index: number; event: TokenEvent }
  /** `generated`: tokens generated when it ended (the front emits the finish after that many tokens) */
  | { type: 'finish'; rid: number; attempt: number; generated: number; reason: FinishReason; usage: Usage; error?: string }
  /** prefill worker: the decode worker acknowledged the KV */
  | ({ type: 'handed-over'; rid: number; attempt: number; to: string } & TransferResult)
  /** prefill worker: the handover failed; the front dispatches the request again */
  | { type: 'handover-failed'; rid: number; attempt: number; generated: number[]; reason: string }
  /** decode worker: it took the request over */
  | { type: 'adopted'; rid: number; attempt: number };

export const STATUS_INTERVAL_MS = 500;
/** a worker silent this long is lost */
export const LIVENESS_TIMEOUT_MS = 3000;

/** The worker's end of the control plane. */
export interface WorkerLink {
  send(m: FromWorker): void;
  onMessage(handler: (m: ToWorker) => void): void;
  /** the front went away (IPC) */
  onClose(handler: () => void): void;
  /** the link is back after an outage (NATS): what was sent meanwhile may be lost */
  onReconnect(handler: () => void): void;
  close(): Promise<void>;
}

/** The front's end: messages from any worker, and workers whose process or link is gone. */
export interface ControlPlane {
  send(workerId: string, m: ToWorker): void;
  onMessage(handler: (workerId: string, m: FromWorker) => void): void;
  onGone(handler: (workerId: string, reason: string) => void): void;
  /**
   * The front's own link went down (false) or came back (true; NATS): while it is down no worker
   * can be heard, and messages sent across the outage, either way, may be lost.
   */
  onLink(handler: (up: boolean) => void): void;
  close(): Promise<void>;
}

/** A worker's end over the IPC channel its parent (the front) opened. */
export function ipcWorkerLink(): WorkerLink {
  if (!process.send) throw new Error('--ipc: this worker was not started by a front (no IPC channel); use --nats URL');
  return {
    send: (m) => {
      // a front that died leaves a broken pipe before 'disconnect' arrives: the error goes to the
      // callback (without one it is an unhandled 'error' event that kills the worker mid-shutdown)
      if (process.connected) process.send!(m, undefined, undefined, () => {});
    },
    onMessage: (h) => process.on('message', (m) => h(m as ToWorker)),
    onClose: (h) => process.on('disconnect', h),
    onReconnect: () => {}, // an IPC channel does not come back
    close: async () => {
      if (process.connected) process.disconnect();
    },
  };
}

/** The CLI entry a child worker runs (the repository's bin/, or the bundle's single file). */
function workerEntry(): string {
  const bin = join(repoRoot, 'bin', 'wgserve.mjs');
  return existsSync(bin) ? bin : join(repoRoot, 'wgserve.mjs');
}

export interface ChildWorkerSpec {
  role: WorkerRole;
  /** CLI arguments after `worker --role R` */
  args: string[];
}

/**
 * Spawns workers as child processes of the front, each with an IPC channel. Worker ids are their
 * role and index (`prefill-0`); a child that exits is reported gone at once.
 */
export class ChildProcessPlane implements ControlPlane {
  private readonly children = new Map<string, ChildProcess>();
  private messageHandler: (workerId: string, m: FromWorker) => void = () => {};
  private goneHandler: (workerId: string, reason: string) => void = () => {};
  private closing = false;

  constructor(specs: ChildWorkerSpec[], env: NodeJS.ProcessEnv = process.env) {
    const counts = { prefill: 0, decode: 0 };
    for (const spec of specs) {
      const id = `${spec.role}-${counts[spec.role]++}`;
      const child = fork(workerEntry(), ['worker', '--role', spec.role, '--id', id, '--ipc', ...spec.args], {
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
        env,
      });
      this.children.set(id, child);
      child.on('message', (m) => this.messageHandler(id, m as FromWorker));
      child.on('exit', (code, signal) => {
        this.children.delete(id);
        if (!this.closing) this.goneHandler(id, `process exited (${signal ?? `code ${code}`})`);
      });
      child.on('error', (err) => this.goneHandler(id, `process error: ${err.message}`));
    }
  }

  /** pid of a worker's process (tests kill it) */
  pid(workerId: string): number | undefined {
    return this.children.get(workerId)?.pid;
  }

  send(workerId: string, m: ToWorker): void {
    const child = this.children.get(workerId);
    if (child?.connected) child.send(m);
  }

  onMessage(handler: (workerId: string, m: FromWorker) => void): void {
    this.messageHandler = handler;
  }

  onGone(handler: (workerId: string, reason: string) => void): void {
    this.goneHandler = handler;
  }

  onLink(): void {} // each child's channel is its own: a lost one is a lost worker

  /** Asks every child to stop (closing its IPC channel ends it), then kills what is left after 5 s. */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(
      [...this.children.values()].map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
            child.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            if (child.connected) child.disconnect();
            else child.kill('SIGTERM');
          }),
      ),
    );
  }
}

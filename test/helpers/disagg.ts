import { type Socket, connect, createServer } from 'node:net';
import type { ControlPlane, DataAddress, FromWorker, ToWorker } from '../../src/workers/control.ts';
import { LIVENESS_TIMEOUT_MS, STATUS_INTERVAL_MS } from '../../src/workers/control.ts';
import { FrameDecoder, type Message } from '../../src/workers/protocol.ts';

/**
 * Waits in the disaggregation tests are on conditions, bounded by the system's own constants
 * times SLACK: generous enough for a loaded 2-core machine (event loops delayed, status rounds
 * late), short enough that a real hang fails with a message instead of the test timeout.
 */
export const SLACK = 4;
/** a live worker's next status reaches the front (the front itself gives up on it after LIVENESS_TIMEOUT_MS) */
export const STATUS_LIMIT_MS = SLACK * LIVENESS_TIMEOUT_MS;
/** the front declares a silent worker lost: the liveness timeout plus one period of its check */
export const LOSS_LIMIT_MS = SLACK * (LIVENESS_TIMEOUT_MS + STATUS_INTERVAL_MS);
/**
 * Workers up (device, model, pipeline warm-up; no constant bounds it): one takes ~5 s of CPU,
 * three starting together took up to ~90 s on the loaded 2-core machine; twice that.
 */
export const WORKERS_START_LIMIT_MS = 180_000;
/**
 * A test or hook of the disaggregation suite (compute on the software device, no constant bounds
 * it): up to 120 s measured with the 2-core machine at load 12 (a CPU hog and other suites beside
 * it), 20-80 s at load 2-9.
 */
export const TEST_LIMIT_MS = 300_000;

/** Polls `cond` every 25 ms until it holds; fails naming `what` (a function: read when it fails) after `limitMs`. */
export async function waitFor(cond: () => boolean, limitMs: number, what: string | (() => string)): Promise<void> {
  const deadline = performance.now() + limitMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`${typeof what === 'string' ? what : what()}: not so after ${limitMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** `p`, or an error naming `what` (a function: read when it fails) after `limitMs`. */
export async function within<T>(p: Promise<T>, limitMs: number, what: string | (() => string)): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${typeof what === 'string' ? what : what()}: not within ${limitMs / 1000} s`)), limitMs);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The front's control plane with a tap: counts each worker's statuses (a fresh one proves the
 * worker and its link alive), records adoptions and workers gone, and can send one dispatch's KV
 * through a relay instead of straight to the decode worker.
 */
export class TapPlane implements ControlPlane {
  private readonly statusCounts = new Map<string, number>();
  private readonly adoptions: { worker: string; rid: number }[] = [];
  /** what the plane reported gone (a child process's exit), whatever the front made of it */
  readonly gone: { id: string; reason: string }[] = [];
  private adoptionWaiters: { match: (a: { worker: string; rid: number }) => boolean; resolve: () => void }[] = [];
  private redirect: { address: DataAddress; resolve: (d: { worker: string; rid: number }) => void } | null = null;

  constructor(private readonly inner: ControlPlane) {}

  statuses(id: string): number {
    return this.statusCounts.get(id) ?? 0;
  }

  /**
   * Resolves once the front hears that `worker` adopted one of `rids` (a request streams from
   * there). Adoption follows a prefill: no constant bounds it, the test's timeout does.
   */
  adopted(worker: string, rids: number[]): Promise<void> {
    const match = (a: { worker: string; rid: number }) => a.worker === worker && rids.includes(a.rid);
    if (this.adoptions.some(match)) return Promise.resolve();
    return new Promise((resolve) => this.adoptionWaiters.push({ match, resolve }));
  }

  /** The next dispatch's KV goes to `address`; resolves with the prefill worker it went to. */
  redirectNext(address: DataAddress): Promise<{ worker: string; rid: number }> {
    return new Promise((resolve) => (this.redirect = { address, resolve }));
  }

  send(id: string, m: ToWorker): void {
    const r = this.redirect;
    if (m.type === 'prefill' && r) {
      this.redirect = null;
      r.resolve({ worker: id, rid: m.req.rid });
      return this.inner.send(id, { ...m, decode: { ...m.decode, address: r.address } });
    }
    this.inner.send(id, m);
  }

  onMessage(handler: (id: string, m: FromWorker) => void): void {
    this.inner.onMessage((id, m) => {
      if (m.type === 'status') this.statusCounts.set(id, this.statuses(id) + 1);
      if (m.type === 'adopted') {
        const a = { worker: id, rid: m.rid };
        this.adoptions.push(a);
        for (const w of this.adoptionWaiters.filter((w) => w.match(a))) w.resolve();
        this.adoptionWaiters = this.adoptionWaiters.filter((w) => !w.match(a));
      }
      handler(id, m);
    });
  }

  onGone(handler: (id: string, reason: string) => void): void {
    this.inner.onGone((id, reason) => {
      this.gone.push({ id, reason });
      handler(id, reason);
    });
  }

  onLink(handler: (up: boolean) => void): void {
    this.inner.onLink(handler);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * A TCP relay in front of a decode worker's KV port, to hold a handover still at a chosen
 * moment: frames from the prefill side pass whole and in order until one matches `holdAfter`;
 * the frames after it are kept back (a transfer stalled mid-sequence). When either side's
 * connection ends, the other's is ended too, as for a direct connection whose process died.
 */
export class KvRelay {
  /** frames passed on, prefill to decode */
  readonly passed: Message[] = [];
  /** resolves once a frame matching holdAfter has passed */
  readonly holding: Promise<void>;
  private held = false;
  private hold!: () => void;
  private readonly sockets = new Set<Socket>();
  private readonly server = createServer((up) => this.relay(up));

  private constructor(
    private readonly target: DataAddress,
    private readonly holdAfter: (m: Message) => boolean,
  ) {
    this.holding = new Promise((resolve) => (this.hold = resolve));
  }

  static async start(target: DataAddress, holdAfter: (m: Message) => boolean): Promise<{ relay: KvRelay; address: DataAddress }> {
    const relay = new KvRelay(target, holdAfter);
    await new Promise<void>((resolve) => relay.server.listen(0, '127.0.0.1', resolve));
    const { port } = relay.server.address() as { port: number };
    return { relay, address: { host: '127.0.0.1', port } };
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private relay(up: Socket): void {
    const down = connect(this.target.port, this.target.host);
    for (const s of [up, down]) {
      this.sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        this.sockets.delete(s);
        up.destroy();
        down.destroy();
      });
    }
    down.on('data', (chunk) => up.write(chunk));
    let buffered = Buffer.alloc(0);
    up.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (!this.held && buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
        const frame = buffered.subarray(0, 4 + buffered.readUInt32BE(0));
        buffered = buffered.subarray(frame.length);
        const [m] = new FrameDecoder().push(frame);
        down.write(frame);
        this.passed.push(m);
        if (this.holdAfter(m)) {
          this.held = true;
          this.hold();
        }
      }
    });
  }
}

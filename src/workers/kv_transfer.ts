import { type Server, type Socket, connect, createServer } from 'node:net';
import type { Engine, KvImport } from '../engine/engine.ts';
import type { KvLayer } from '../model/gpu_model.ts';
import type { DataAddress } from './control.ts';
import { FrameDecoder, KV_FRAME_BYTES, type Message, PROTOCOL_VERSION, ProtocolError, type RequestSpec, checkHello, encodeFrame } from './protocol.ts';

/**
 * The data plane: a prefill worker streams each handed-over sequence's KV to the decode worker the
 * front chose, over one TCP connection per pair, as length-prefixed msgpackr frames (protocol.ts):
 * hello/welcome, then per sequence kv-begin, one kv frame per layer as soon as the GPU has computed
 * that layer, kv-done with the request, and the receiver's ack once it took the sequence over.
 */

type Log = (line: string) => void;
/**
 * Default limit on a transfer without progress, on both ends: the sender waits this long at most
 * for each frame to be taken (and, after the last, for the ack); the receiver, for the next bytes
 * while a sequence is unfinished. A stall fails the connection (a stopped peer, or a path that
 * stops delivering without closing, must not hold KV or a request forever); a slow transfer that
 * keeps moving does not. `wgserve worker --transfer-timeout` sets it.
 */
export const TRANSFER_TIMEOUT_MS = 60_000;

/**
 * One acknowledged handover: K and V bytes; seconds from its first frame to the ack (overlapping
 * the prefill of later layers); and the exposed part, from the last layer reaching the host to
 * the ack: what the transfer adds after the prefill step.
 */
export interface TransferResult {
  bytes: number;
  seconds: number;
  exposedSeconds: number;
}

/** Sender statistics: bytes of K and V sent, and seconds from kv-begin to ack, over acknowledged transfers. */
export interface TransferStats {
  bytes: number;
  seconds: number;
  transfers: number;
}

class SenderConnection {
  readonly ready: Promise<void>;
  private readonly socket: Socket;
  private readonly decoder = new FrameDecoder();
  private readonly acks = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private failure: Error | null = null;
  private welcomed!: { resolve: () => void; reject: (e: Error) => void };

  constructor(address: DataAddress, hello: Message, log: Log) {
    this.socket = connect(address.port, address.host);
    this.socket.setNoDelay(true);
    this.ready = new Promise<void>((resolve, reject) => (this.welcomed = { resolve, reject }));
    this.ready.catch(() => {});
    this.socket.on('connect', () => this.socket.write(encodeFrame(hello)));
    this.socket.on('data', (chunk) => {
      try {
        for (const m of this.decoder.push(chunk)) {
          if (m.type === 'welcome') this.welcomed.resolve();
          else if (m.type === 'refuse') this.fail(new Error(`refused by ${address.host}:${address.port}: ${m.reason}`));
          else if (m.type === 'ack') {
            const waiter = this.acks.get(m.seq);
            this.acks.delete(m.seq);
            if (m.error) waiter?.reject(new Error(m.error));
            else waiter?.resolve();
          } else throw new ProtocolError(`unexpected ${m.type} frame from a decode worker`);
        }
      } catch (err) {
        log(`KV connection to ${address.host}:${address.port}: ${err instanceof Error ? err.message : String(err)}; closing it`);
        this.fail(err instanceof Error ? err : new Error(String(err)));
      }
    });
    this.socket.on('error', (err) => this.fail(new Error(`KV connection to ${address.host}:${address.port}: ${err.message}`)));
    this.socket.on('close', () => this.fail(new Error(`KV connection to ${address.host}:${address.port} closed`)));
  }

  get broken(): boolean {
    return this.failure !== null;
  }

  /** Writes a frame, waiting for the socket to drain when its buffer is full (KV can be large). */
  async send(m: Message): Promise<void> {
    if (this.failure) throw this.failure;
    if (!this.socket.write(encodeFrame(m))) {
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          this.socket.off('drain', done);
          this.socket.off('close', done);
          if (this.failure) reject(this.failure);
          else resolve();
        };
        this.socket.once('drain', done);
        this.socket.once('close', done);
      });
    }
  }

  /** Resolves when the receiver acknowledges `seq` (the transfer's own timer bounds the wait). */
  ack(seq: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => this.acks.set(seq, { resolve, reject }));
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.welcomed.reject(e); // no-op once welcomed
    for (const w of this.acks.values()) w.reject(e);
    this.acks.clear();
    this.socket.destroy();
  }

  close(reason = new Error('closed')): void {
    this.fail(reason);
  }
}

/** One sequence's KV on its way; stream(), then finish() or abort(). */
export interface Transfer {
  /** sends kv-begin, then each layer (`rows` rows of headDim, KvLayer) as it resolves, in order */
  stream(tokens: number, rows: number, layers: Promise<KvLayer>[]): void;
  /** after the layers: kv-done with the request; resolves on the receiver's ack */
  finish(request: RequestSpec): Promise<TransferResult>;
  /** the sequence will not be handed over: tell the receiver to drop what it has */
  abort(reason: string): void;
}

/** The prefill side: connections to decode workers (one each, reused), transfers over them. */
export class KvSender {
  readonly stats: TransferStats = { bytes: 0, seconds: 0, transfers: 0 };
  private readonly connections = new Map<string, SenderConnection>();
  private nextSeq = 1;

  constructor(private readonly o: { workerId: string; fingerprint: string; log: Log; /** K (and V) bytes per frame at most (default KV_FRAME_BYTES) */ frameBytes?: number; /** default TRANSFER_TIMEOUT_MS */ timeoutMs?: number }) {}

  begin(to: { id: string; address: DataAddress }): Transfer {
    const key = `${to.id}@${to.address.host}:${to.address.port}`;
    let conn = this.connections.get(key);
    if (!conn || conn.broken) {
      conn = new SenderConnection(to.address, { type: 'hello', version: PROTOCOL_VERSION, role: 'prefill', workerId: this.o.workerId, fingerprint: this.o.fingerprint }, this.o.log);
      this.connections.set(key, conn);
    }
    const c = conn;
    const seq = this.nextSeq++;
    let chain: Promise<void> = c.ready;
    // a failure surfaces in finish() (or nowhere, after abort): never as an unhandled rejection meanwhile
    const settle = () => void chain.catch(() => {});
    let begun = false;
    let aborted = false;
    let bytes = 0;
    let t0 = 0;
    let lastLayerAt = 0;
    let timer: NodeJS.Timeout | undefined;
    const limit = this.o.timeoutMs ?? TRANSFER_TIMEOUT_MS;
    // (re)started at each step forward: a peer that stops reading or never acknowledges fails the connection and every transfer on it
    const progressed = () => {
      clearTimeout(timer);
      timer = setTimeout(() => c.close(new Error(`KV transfer of sequence ${seq}: no progress for ${limit / 1000} s`)), limit);
    };
    const send = async (m: Message) => {
      await c.send(m);
      if (!aborted) progressed();
    };
    return {
      stream: (tokens, rows, layers) => {
        progressed();
        chain = chain.then(async () => {
          t0 = performance.now();
          begun = true;
          await send({ type: 'kv-begin', seq, tokens, rows });
          for (const [layer, pending] of layers.entries()) {
            const { k, v } = await pending;
            lastLayerAt = performance.now();
            if (aborted) return;
            bytes += k.byteLength + v.byteLength;
            const rowBytes = k.byteLength / rows;
            const step = Math.max(1, Math.floor((this.o.frameBytes ?? KV_FRAME_BYTES) / rowBytes));
            for (let start = 0; start < rows; start += step) {
              const n = Math.min(step, rows - start);
              const part = (b: ArrayBuffer) => new Uint8Array(b, start * rowBytes, n * rowBytes);
              await send({ type: 'kv', seq, layer, start, rows: n, k: part(k), v: part(v) });
            }
          }
        });
        settle();
      },
      finish: async (request) => {
        await chain;
        if (!begun) throw new Error('finish() before stream()');
        const acked = c.ack(seq);
        acked.catch(() => {}); // awaited below, unless the send fails first
        try {
          await send({ type: 'kv-done', seq, tokens: request.prompt.length + request.generated.length - 1, request });
          await acked;
        } finally {
          clearTimeout(timer);
        }
        const now = performance.now();
        const seconds = (now - t0) / 1e3;
        this.stats.bytes += bytes;
        this.stats.seconds += seconds;
        this.stats.transfers++;
        return { bytes, seconds, exposedSeconds: (now - lastLayerAt) / 1e3 };
      },
      abort: (reason) => {
        aborted = true;
        clearTimeout(timer);
        chain = chain.then(() => (begun ? c.send({ type: 'kv-abort', seq, reason }) : undefined)).catch(() => {});
      },
    };
  }

  close(): void {
    for (const c of this.connections.values()) c.close();
    this.connections.clear();
  }
}

interface Incoming {
  tokens: number;
  /** rows of headDim per layer */
  rows: number;
  imp: KvImport | null;
  /** rows received so far, per layer */
  received: Map<number, number>;
  writes: Promise<void>;
}

export interface ReceiverOptions {
  engine: Engine;
  workerId: string;
  fingerprint: string;
  /** takes a sequence over (Engine.adopt plus the worker's bookkeeping); returns why it could not, or null */
  adopt(request: RequestSpec, kv: KvImport | null): string | null;
  log: Log;
  /** silence at most while a sequence is unfinished (default TRANSFER_TIMEOUT_MS) */
  timeoutMs?: number;
}

/**
 * The decode side: a TCP listener; per connection, a hello check (model fingerprint, protocol
 * version) and the sequences in flight. Layers are written into reserved KV blocks as they
 * arrive; kv-done adopts the sequence. A malformed frame, or one that contradicts what came
 * before, closes that connection with the reason logged and drops its unfinished sequences;
 * nothing a peer sends can throw out of here.
 */
export class KvReceiver {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  readonly stats = { bytes: 0, connections: 0, refused: 0, protocolErrors: 0 };

  constructor(private readonly o: ReceiverOptions) {
    this.server = createServer((socket) => this.accept(socket));
  }

  listen(host: string, port: number): Promise<DataAddress> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        const a = this.server.address();
        if (!a || typeof a === 'string') return reject(new Error('KV listener has no TCP address'));
        resolve({ host, port: a.port });
      });
    });
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    this.sockets.add(socket);
    this.stats.connections++;
    socket.setNoDelay(true);
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    const decoder = new FrameDecoder();
    const incoming = new Map<number, Incoming>();
    let greeted = false;
    let closed = false;
    const { nLayers, headDim } = this.o.engine.config;
    const send = (m: Message) => {
      if (!closed) socket.write(encodeFrame(m));
    };
    const drop = (seq: number) => {
      const e = incoming.get(seq);
      incoming.delete(seq);
      // after the writes already queued: they must not land in blocks handed out again
      const imp = e?.imp;
      if (imp) void e.writes.catch(() => {}).then(() => imp.release());
    };
    // while a sequence is unfinished its sender must keep sending: a sender stopped, or a path
    // stalled without closing, must not keep the blocks reserved. The whole connection goes, as
    // every later frame would queue behind the missing ones.
    const limit = this.o.timeoutMs ?? TRANSFER_TIMEOUT_MS;
    let idle: NodeJS.Timeout | undefined;
    const watch = () => {
      if (incoming.size === 0) {
        clearTimeout(idle);
        idle = undefined;
      } else if (idle) idle.refresh();
      else idle = setTimeout(() => shut(`no KV data for ${limit / 1000} s with ${incoming.size} sequence(s) unfinished`), limit);
    };
    const shut = (reason: string | null) => {
      if (closed) return;
      closed = true;
      clearTimeout(idle);
      if (reason) this.o.log(`KV connection from ${peer} closed: ${reason}`);
      for (const seq of [...incoming.keys()]) drop(seq);
      socket.destroy();
    };
    const handle = (m: Message) => {
      if (!greeted) {
        if (m.type !== 'hello') throw new ProtocolError(`expected hello, got ${m.type}`);
        const why = checkHello(m, { fingerprint: this.o.fingerprint, role: 'prefill' });
        if (why) {
          this.stats.refused++;
          this.o.log(`refused prefill worker ${m.workerId} from ${peer}: ${why}`);
          send({ type: 'refuse', reason: why });
          closed = true;
          socket.end();
          return;
        }
        greeted = true;
        send({ type: 'welcome', workerId: this.o.workerId });
        return;
      }
      switch (m.type) {
        case 'kv-begin': {
          if (incoming.has(m.seq)) throw new ProtocolError(`kv-begin for sequence ${m.seq} twice`);
          // null: no room now; the sequence is adopted without KV and recomputes its context
          const imp = this.o.engine.importKv(m.tokens);
          incoming.set(m.seq, { tokens: m.tokens, rows: m.rows, imp, received: new Map(), writes: Promise.resolve() });
          // the same model and head pattern (the fingerprint) keep the same rows
          if (imp && imp.rows !== m.rows) throw new ProtocolError(`kv-begin for sequence ${m.seq}: ${m.rows} rows per layer, this worker keeps ${imp.rows} of ${m.tokens} tokens`);
          return;
        }
        case 'kv': {
          const e = incoming.get(m.seq);
          if (!e) throw new ProtocolError(`kv frame for sequence ${m.seq} without kv-begin`);
          if (m.layer >= nLayers) throw new ProtocolError(`kv frame for layer ${m.layer} of a ${nLayers}-layer model`);
          const have = e.received.get(m.layer) ?? 0;
          if (m.start !== have || m.start + m.rows > e.rows) throw new ProtocolError(`kv frame for rows ${m.start}..${m.start + m.rows} of layer ${m.layer}: expected rows from ${have} of ${e.rows}`);
          const expect = m.rows * headDim * 4;
          if (m.k.byteLength !== expect) throw new ProtocolError(`kv frame of ${m.k.byteLength} bytes per tensor, expected ${expect}`);
          e.received.set(m.layer, have + m.rows);
          this.stats.bytes += 2 * expect;
          const imp = e.imp;
          if (imp) e.writes = e.writes.then(() => imp.writeLayer(m.layer, { k: m.k, v: m.v }, m.start));
          return;
        }
        case 'kv-done': {
          const e = incoming.get(m.seq);
          if (!e) throw new ProtocolError(`kv-done for sequence ${m.seq} without kv-begin`);
          const context = m.request.prompt.length + m.request.generated.length - 1;
          const complete = [...e.received.values()].filter((n) => n === e.rows).length;
          if (complete !== nLayers || m.tokens !== e.tokens || context !== e.tokens) {
            throw new ProtocolError(`kv-done for sequence ${m.seq} after ${complete} of ${nLayers} layers (${e.tokens} tokens; the request's context is ${context})`);
          }
          incoming.delete(m.seq);
          void e.writes.then(
            () => {
              if (closed) return e.imp?.release();
              let error: string | null;
              try {
                error = this.o.adopt(m.request, e.imp);
              } catch (err) {
                error = err instanceof Error ? err.message : String(err);
              }
              if (error) e.imp?.release(); // a no-op once adopted
              send(error ? { type: 'ack', seq: m.seq, error } : { type: 'ack', seq: m.seq });
            },
            (err) => {
              e.imp?.release();
              send({ type: 'ack', seq: m.seq, error: `writing the KV failed: ${err instanceof Error ? err.message : String(err)}` });
            },
          );
          return;
        }
        case 'kv-abort':
          drop(m.seq);
          return;
        default:
          throw new ProtocolError(`unexpected ${m.type} frame from a prefill worker`);
      }
    };
    socket.on('data', (chunk) => {
      if (closed) return;
      try {
        for (const m of decoder.push(chunk)) {
          handle(m);
          if (closed) return;
        }
        watch();
      } catch (err) {
        if (err instanceof ProtocolError) this.stats.protocolErrors++;
        shut(err instanceof Error ? err.message : String(err));
      }
    });
    socket.on('error', (err) => shut(err.message));
    socket.on('close', () => {
      this.sockets.delete(socket);
      shut(decoder.pending > 0 ? `the stream ended inside a frame (${decoder.pending} bytes)` : null);
    });
  }
}

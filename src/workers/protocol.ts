import { isWireAutomaton, type WireAutomaton } from '../constraints/wire.ts';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import type { SamplingOptions } from '../engine/engine.ts';
import { type HeadPattern, headColumns } from '../kv/head_pattern.ts';
import type { ModelSource } from '../model/source.ts';
import type { Slo } from '../scheduler/scheduler.ts';

/**
 * The worker-to-worker data plane (prefill -> decode KV transfer): length-prefixed MessagePack
 * frames over a byte stream (TCP). A frame is a 4-byte big-endian payload length, then the payload:
 * one msgpackr-encoded message. KV tensors travel as raw typed-array bytes (msgpack bin), never
 * as JSON numbers. A connection starts with a versioned hello carrying the model's fingerprint;
 * a peer serving another model (or another protocol version) is refused.
 */
/** 2: KV in rows of headDim (head-wise KV ships only what each head keeps) */
export const PROTOCOL_VERSION = 2;
/** Frames above this are refused before anything is allocated for them. */
export const MAX_FRAME_BYTES = 256 * 1024 * 1024;
/** K (and V) bytes per kv frame at most: long contexts travel in several frames per layer */
export const KV_FRAME_BYTES = 32 * 1024 * 1024;

export type WorkerRole = 'prefill' | 'decode';

/**
 * A request as the front dispatches it and as it travels with its KV: `rid` is the front's id,
 * `attempt` counts dispatches (a request resumed after a worker died is dispatched again; messages
 * of an earlier attempt are stale), `generated` holds the tokens generated so far.
 */
export interface RequestSpec {
  rid: number;
  attempt: number;
  prompt: number[];
  generated: number[];
  sampling: SamplingOptions;
  slo?: Slo;
  priority?: number;
  /** structured output: the request's token automaton */
  constraint?: WireAutomaton;
}

export type Message =
  | { type: 'hello'; version: number; role: WorkerRole; workerId: string; fingerprint: string }
  | { type: 'welcome'; workerId: string }
  | { type: 'refuse'; reason: string }
  /** a sequence's KV follows: `tokens` tokens in every layer */
  | { type: 'kv-begin'; seq: number; tokens: number; rows: number }
  /** rows [start, start + rows) of one layer of one sequence's KV: K and V rows of headDim as raw f32 bytes, in KvLayer's order (a layer larger than KV_FRAME_BYTES comes in several frames, in order) */
  | { type: 'kv'; seq: number; layer: number; start: number; rows: number; k: Uint8Array; v: Uint8Array }
  /** every layer was sent; the receiver takes the sequence over (its context is `tokens` tokens plus the last generated one) */
  | { type: 'kv-done'; seq: number; tokens: number; request: RequestSpec }
  /** the sequence will not come (it ended, or its prefill failed): drop what arrived */
  | { type: 'kv-abort'; seq: number; reason: string }
  /** the receiver took the sequence over, or could not (`error`) */
  | { type: 'ack'; seq: number; error?: string };

/** A malformed, oversize or unexpected frame: the connection is closed with this reason. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

const packr = new Packr({ useRecords: false });

export function encodeFrame(message: Message): Buffer {
  const payload = packr.pack(message);
  if (payload.length > MAX_FRAME_BYTES) throw new ProtocolError(`frame of ${payload.length} bytes exceeds ${MAX_FRAME_BYTES}`);
  const frame = Buffer.allocUnsafe(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  payload.copy(frame, 4);
  return frame;
}

/**
 * Reassembles frames from stream chunks split anywhere. push() returns the complete messages so
 * far, and throws ProtocolError on an oversize length or a payload that is not a valid message;
 * after that the decoder is unusable (the caller closes the connection).
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private size = 0;

  push(chunk: Buffer): Message[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.size += chunk.length;
    }
    const out: Message[] = [];
    for (;;) {
      if (this.size < 4) return out;
      const length = this.peekLength();
      if (length > MAX_FRAME_BYTES) throw new ProtocolError(`frame length ${length} exceeds ${MAX_FRAME_BYTES}`);
      if (this.size < 4 + length) return out; // wait for the rest: nothing is copied until then
      this.consume(4);
      out.push(parseMessage(this.consume(length)));
    }
  }

  /** Bytes received but not yet a whole frame (a stream that ends here was truncated). */
  get pending(): number {
    return this.size;
  }

  private peekLength(): number {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readUInt32BE(0);
    return Buffer.concat(this.chunks, 4).readUInt32BE(0);
  }

  /** Removes and returns the next n bytes (one copy at most, only when they span chunks). */
  private consume(n: number): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      let k = 0;
      while (filled < n) {
        const c = this.chunks[k++];
        const take = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, take);
        filled += take;
      }
    }
    // drop consumed bytes from the front
    let left = n;
    while (left > 0) {
      const c = this.chunks[0];
      if (c.length <= left) {
        this.chunks.shift();
        left -= c.length;
      } else {
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.size -= n;
    return out;
  }
}

const isInt = (v: unknown, min = 0) => Number.isInteger(v) && (v as number) >= min;
const isBytes = (v: unknown) => v instanceof Uint8Array;
const isNum = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const isTokens = (v: unknown) => Array.isArray(v) && v.every((t) => isInt(t));

/** A request spec with every field of the right type (values are checked again where it is submitted). */
export function isRequestSpec(v: unknown): v is RequestSpec {
  const r = v as Record<string, unknown>;
  if (typeof r !== 'object' || r === null || !isInt(r.rid) || !isInt(r.attempt) || !isTokens(r.prompt) || !isTokens(r.generated)) return false;
  const s = r.sampling as Record<string, unknown>;
  if (typeof s !== 'object' || s === null) return false;
  if (!(isInt(s.maxTokens) && isNum(s.temperature) && isInt(s.topK) && isNum(s.topP) && isInt(s.seed, Number.MIN_SAFE_INTEGER))) return false;
  if (!(Array.isArray(s.stop) && s.stop.every((x) => typeof x === 'string')) || !(s.logprobs === undefined || isInt(s.logprobs))) return false;
  return (r.priority === undefined || isNum(r.priority)) && (r.slo === undefined || (typeof r.slo === 'object' && r.slo !== null)) && (r.constraint === undefined || isWireAutomaton(r.constraint));
}

/** Decodes and checks one payload: every field of the message type present with the right type. */
function parseMessage(payload: Buffer): Message {
  let m: unknown;
  try {
    m = packr.unpack(payload);
  } catch (err) {
    throw new ProtocolError(`undecodable frame: ${err instanceof Error ? err.message : String(err)}`);
  }
  const o = m as Record<string, unknown>;
  const ok = (() => {
    if (typeof o !== 'object' || o === null) return false;
    switch (o.type) {
      case 'hello':
        return isInt(o.version) && (o.role === 'prefill' || o.role === 'decode') && typeof o.workerId === 'string' && typeof o.fingerprint === 'string';
      case 'welcome':
        return typeof o.workerId === 'string';
      case 'refuse':
        return typeof o.reason === 'string';
      case 'kv-begin':
        return isInt(o.seq) && isInt(o.tokens, 1) && isInt(o.rows, 1);
      case 'kv':
        return isInt(o.seq) && isInt(o.layer) && isInt(o.start) && isInt(o.rows, 1) && isBytes(o.k) && isBytes(o.v) && (o.k as Uint8Array).length === (o.v as Uint8Array).length;
      case 'kv-done':
        return isInt(o.seq) && isInt(o.tokens) && isRequestSpec(o.request);
      case 'kv-abort':
        return isInt(o.seq) && typeof o.reason === 'string';
      case 'ack':
        return isInt(o.seq) && (o.error === undefined || typeof o.error === 'string');
      default:
        return false;
    }
  })();
  if (!ok) throw new ProtocolError(`not a valid message: ${JSON.stringify(o, (_k, v) => (v instanceof Uint8Array ? `<${v.length} bytes>` : v))?.slice(0, 200)}`);
  return o as Message;
}

/** Why a peer's hello is refused, or null when it is accepted. */
export function checkHello(hello: Extract<Message, { type: 'hello' }>, expect: { fingerprint: string; role?: WorkerRole }): string | null {
  if (hello.version !== PROTOCOL_VERSION) return `protocol version ${hello.version}, this worker speaks ${PROTOCOL_VERSION}`;
  if (hello.fingerprint !== expect.fingerprint) return `model fingerprint ${hello.fingerprint.slice(0, 12)} differs from this worker's ${expect.fingerprint.slice(0, 12)}: the workers serve different models`;
  if (expect.role && hello.role !== expect.role) return `expected a ${expect.role} worker, got a ${hello.role} worker`;
  return null;
}

/**
 * Identifies a model for the hello: its config and tensor table, plus samples of the model
 * file's bytes (4 KiB from the start, middle and end of each file; every file of a Hugging Face
 * directory), so two files of the same shape but different weights differ, without reading
 * gigabytes. With a head pattern, its KV layout too (columns, sink, recent): workers that keep
 * different rows cannot hand KV over.
 */
export function modelFingerprint(source: ModelSource, pattern?: HeadPattern): string {
  const h = createHash('sha256');
  h.update(JSON.stringify(source.config));
  if (pattern) {
    const { fullColumns, columnOf } = headColumns(pattern);
    h.update(JSON.stringify({ fullColumns, columnOf: [...columnOf], sink: pattern.sink, recent: pattern.recent }));
  }
  for (const t of [...source.tensors.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) h.update(`${t.name}|${t.typeName}|${t.dims.join('x')}|${t.bytes};`);
  const files = existsSync(source.path) && statSync(source.path).isDirectory()
    ? readdirSync(source.path).sort().map((f) => join(source.path, f)).filter((f) => statSync(f).isFile())
    : existsSync(source.path) ? [source.path] : [];
  for (const file of files) {
    const size = statSync(file).size;
    const fd = openSync(file, 'r');
    try {
      const sample = Buffer.alloc(4096);
      for (const at of [0, Math.max(0, (size >> 1) - 2048), Math.max(0, size - 4096)]) h.update(sample.subarray(0, readSync(fd, sample, 0, 4096, at)));
    } finally {
      closeSync(fd);
    }
  }
  return h.digest('hex');
}

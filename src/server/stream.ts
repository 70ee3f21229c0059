/**
 * Streaming transports for `stream: true`: server-sent events as OpenAI sends them
 * (`data: {json}\n\n` per chunk, then `data: [DONE]\n\n`), or length-prefixed MessagePack frames
 * (a 4-byte big-endian length, then that many bytes of one msgpack-encoded chunk; the stream ends
 * when the response does). Both write to the Node response and tell when the client falls behind.
 */
import type { ServerResponse } from 'node:http';
import { Packr, Unpackr } from 'msgpackr';

/** Content types taken as MessagePack (requests); responses use the first. */
export const MSGPACK_TYPES = ['application/msgpack', 'application/x-msgpack', 'application/vnd.msgpack'];

// plain maps and arrays (no msgpackr records extension), so any MessagePack library reads them
const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

export const packMsgpack = (value: unknown): Buffer => packr.pack(value);
export const unpackMsgpack = (bytes: Buffer | Uint8Array): unknown => unpackr.unpack(bytes);

/** One 4-byte big-endian length followed by the msgpack encoding of `value`. */
export function msgpackFrame(value: unknown): Buffer {
  const body = packMsgpack(value);
  const frame = Buffer.allocUnsafe(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, 4);
  return frame;
}

/** Splits a byte stream into length-prefixed msgpack frames (for clients and tests). */
export class MsgpackFrameReader {
  private buf = Buffer.alloc(0);

  /** Appends bytes and returns every frame now complete, decoded. */
  push(bytes: Uint8Array): unknown[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, bytes]) : Buffer.from(bytes);
    const out: unknown[] = [];
    while (this.buf.length >= 4) {
      const n = this.buf.readUInt32BE(0);
      if (this.buf.length < 4 + n) break;
      out.push(unpackMsgpack(this.buf.subarray(4, 4 + n)));
      this.buf = this.buf.subarray(4 + n);
    }
    return out;
  }

  /** Bytes of an unfinished frame (non-zero at the end of a stream means it was cut). */
  get pending(): number {
    return this.buf.length;
  }
}

export type StreamFormat = 'sse' | 'msgpack';

/**
 * Tokens at most in one streamed chunk. While a client reads slower than tokens come, its tokens
 * wait in the server and go out coalesced, this many per chunk at most; the response's write
 * buffer then holds at most its high-water mark plus one chunk (docs/api.md, Streaming).
 */
export const MAX_CHUNK_TOKENS = 16;

export interface ChunkStream {
  /** Writes one chunk now; write while `ready` to keep within the high-water mark. */
  write(chunk: unknown): void;
  /** Ends the response (SSE: after `data: [DONE]`). */
  end(): void;
  /** open, and the client has taken what was written down to the response's high-water mark */
  readonly ready: boolean;
  /** `f` runs each time the client catches up after a write left it behind */
  onReady(f: () => void): void;
}

/** Sends the 200 head and returns a writer of chunks in `format`. The response must be hijacked from the framework. */
export function openChunkStream(res: ServerResponse, format: StreamFormat, headers: Record<string, string> = {}): ChunkStream {
  res.writeHead(200, {
    'content-type': format === 'sse' ? 'text/event-stream; charset=utf-8' : MSGPACK_TYPES[0],
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no', // proxies: do not buffer the stream
    ...headers,
  });
  res.flushHeaders();
  const alive = () => !res.writableEnded && !res.destroyed;
  // write() returns false once the response buffers its high-water mark; 'drain' says it emptied
  let behind = false;
  let caughtUp = () => {};
  res.on('drain', () => {
    behind = false;
    caughtUp();
  });
  return {
    write(chunk) {
      if (!alive()) return;
      behind = !res.write(format === 'sse' ? `data: ${JSON.stringify(chunk)}\n\n` : msgpackFrame(chunk));
    },
    end() {
      if (!alive()) return;
      if (format === 'sse') res.write('data: [DONE]\n\n');
      res.end();
    },
    get ready() {
      return alive() && !behind;
    },
    onReady(f) {
      caughtUp = f;
    },
  };
}

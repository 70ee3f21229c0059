/**
 * Streaming transports for `stream: true`: server-sent events as OpenAI sends them
 * (`data: {json}\n\n` per chunk, then `data: [DONE]\n\n`), or length-prefixed MessagePack frames
 * (a 4-byte big-endian length, then that many bytes of one msgpack-encoded chunk; the stream ends
 * when the response does). Both write straight to the Node response.
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

export interface ChunkStream {
  write(chunk: unknown): void;
  /** Ends the response (SSE: after `data: [DONE]`). */
  end(): void;
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
  return {
    write(chunk) {
      if (!alive()) return;
      res.write(format === 'sse' ? `data: ${JSON.stringify(chunk)}\n\n` : msgpackFrame(chunk));
    },
    end() {
      if (!alive()) return;
      if (format === 'sse') res.write('data: [DONE]\n\n');
      res.end();
    },
  };
}

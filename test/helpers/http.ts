import { connect } from 'node:net';

/** POSTs a JSON body (an object, or a string or bytes sent as they are). */
export const post = (url: string, path: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal) =>
  fetch(`${url}${path}`, {
    method: 'POST',
    signal,
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
  });

/**
 * A metric's value from the Prometheus text (first series whose name and labels match); `absent`
 * for a series not there (a labelled counter not yet incremented), else that throws.
 */
export async function metric(url: string, series: string, absent?: number): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (!line && absent !== undefined) return absent;
  if (!line) throw new Error(`metric ${series} not found`);
  return Number(line.slice(series.length + 1));
}

/**
 * Polls `cond` every 50 ms until it holds. The default limit, 15 s, is ~75 decode steps of
 * stories260K on SwiftShader (0.13-0.2 s each, measured on a loaded 2-core machine): for
 * conditions that take one or two steps, a wait only fails when something is wrong.
 */
export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  const end = performance.now() + ms;
  while (!(await cond())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** What a raw exchange got: every byte the server sent until it closed, and when it closed. */
export interface RawExchange {
  bytes: Buffer;
  /** ms from writing the request to the server closing the connection */
  closedAfterMs: number;
}

/**
 * Connects to `url`'s host and port, writes `request` as it is (raw HTTP, framing errors
 * included) and reads until the server closes the connection; fails if it is still open after
 * `limitMs`.
 */
export function rawExchange(url: string, request: string | Buffer, limitMs: number): Promise<RawExchange> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let t0 = 0;
    const sock = connect(Number(port), hostname, () => {
      t0 = performance.now();
      sock.write(request);
    });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`the server kept the connection open for ${limitMs} ms; it sent: ${JSON.stringify(Buffer.concat(chunks).toString())}`));
    }, limitMs);
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('error', () => {}); // a reset after the response shows as 'close' too
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ bytes: Buffer.concat(chunks), closedAfterMs: performance.now() - t0 });
    });
  });
}

/** The responses in raw HTTP/1.1 bytes (each with Content-Length): status, lower-cased headers, body. */
export function parseResponses(bytes: Buffer): { status: number; headers: Record<string, string>; body: string }[] {
  const out: { status: number; headers: Record<string, string>; body: string }[] = [];
  for (let at = 0; at < bytes.length; ) {
    const end = bytes.indexOf('\r\n\r\n', at);
    if (end < 0) throw new Error(`not an HTTP response: ${JSON.stringify(bytes.subarray(at).toString())}`);
    const [statusLine, ...lines] = bytes.subarray(at, end).toString('latin1').split('\r\n');
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
    const length = Number(headers['content-length']);
    if (!Number.isInteger(length)) throw new Error(`a response without Content-Length: ${statusLine}`);
    out.push({ status: Number(statusLine.split(' ')[1]), headers, body: bytes.subarray(end + 4, end + 4 + length).toString('utf8') });
    at = end + 4 + length;
  }
  return out;
}

/** Reads an SSE response's `data:` payloads until `stop` says enough (or the stream ends). */
export async function readSse(res: Response, stop: (events: string[]) => boolean = () => false): Promise<string[]> {
  const reader = res.body!.getReader();
  const utf8 = new TextDecoder();
  const events: string[] = [];
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += utf8.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (block.startsWith('data: ')) events.push(block.slice(6));
    }
    if (stop(events)) break;
  }
  return events;
}

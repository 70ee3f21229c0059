/**
 * The serving load generator: arrival processes, a streaming OpenAI-completions client, per-request
 * records, and the statistics of a run (TTFT, TPOT, inter-token latency, end-to-end latency,
 * throughput, errors by status).
 *
 * Arrivals:
 * - `poisson`: open loop, exponential inter-arrival gaps at a rate (requests/s), from a seeded RNG;
 *   an infinite rate sends every request at once;
 * - `concurrency`: closed loop, C clients each sending their next request when the last one ends;
 * - `trace`: open loop at the arrival times given with the requests (src/sim/trace.ts).
 * A run stops sending at `durationSeconds` or after `maxRequests`, whichever is first; each request
 * is cut at `requestTimeoutSeconds`, so a run ends by itself within their sum.
 *
 * Prompts are token-id arrays of exactly the requested length: BOS (id 1), then ids drawn from
 * [3, 256), valid for any vocabulary of 256 tokens or more and free of BOS/EOS (1, 2) and id 0.
 * Output lengths are the ones the server reports (usage.completion_tokens of the final usage
 * chunk) or, without usage, the number of token chunks: a request may end early on EOS.
 */
import { quantile } from '../src/sim/trace.ts';
import type { Slo } from '../src/scheduler/scheduler.ts';
import { mulberry32 } from '../src/util/rng.ts';

export interface RequestSpec {
  /** prompt tokens (BOS included) */
  inputTokens: number;
  /** max_tokens */
  outputTokens: number;
  /** seconds after the start of the run; trace arrivals only */
  arrival?: number;
}

export type Arrivals = { kind: 'poisson'; rate: number } | { kind: 'concurrency'; concurrency: number } | { kind: 'trace' };

export interface LoadOptions {
  /** server base URL, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted) */
  url: string;
  model: string;
  arrivals: Arrivals;
  /** request i uses specs[i % specs.length]; with trace arrivals, specs[i].arrival (and no wrap-around) */
  specs: readonly RequestSpec[];
  /** stop sending after this many seconds */
  durationSeconds: number;
  /** send at most this many requests */
  maxRequests: number;
  /** each request is aborted after this many seconds (counted as a "timeout" error) */
  requestTimeoutSeconds: number;
  /** sampling temperature sent with every request (0 = greedy) */
  temperature: number;
  /** seeds the arrival gaps, the prompts and the per-request sampling seeds */
  seed: number;
  /** aborts the run: nothing new is sent, requests in flight are cancelled ("cancelled" errors) */
  signal?: AbortSignal;
  /** latency objectives sent with every request (wgserve's `slo` extension) and scored client-side */
  slo?: Slo;
}

export interface RequestRecord {
  index: number;
  /** seconds from the start of the run to sending */
  start: number;
  inputTokens: number;
  maxTokens: number;
  ok: boolean;
  /** error key: the HTTP status ("429", "500", ...), "timeout", "connection", "stream_error", "incomplete_stream", "cancelled" */
  error?: string;
  errorMessage?: string;
  /** seconds to the first token chunk */
  ttft?: number;
  /** seconds to the end of the stream */
  e2e?: number;
  /** tokens generated: usage.completion_tokens, or the token chunks counted when the server sent no usage */
  outputTokens: number;
  /** usage.prompt_tokens when the server sent usage */
  promptTokensReported?: number;
  /** where outputTokens came from */
  outputCountedFrom?: 'usage' | 'chunks';
  /** seconds between successive token chunks */
  itl: number[];
  finishReason?: string;
}

// ---------------------------------------------------------------------------------------------
// prompts and arrivals

/** `n` token ids: BOS (1), then ids in [3, 256) from a seeded RNG. */
export function syntheticPrompt(n: number, seed: number): number[] {
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`a prompt needs at least 1 token, not ${n}`);
  const next = mulberry32(seed);
  const ids = [1];
  while (ids.length < n) ids.push(3 + Math.floor(next() * 253));
  return ids;
}

/** Open-loop Poisson arrival times (seconds) below `until`, at most `count` of them; the first at a random gap too. */
export function poissonArrivals(rate: number, count: number, until: number, seed: number): number[] {
  if (!(rate > 0)) throw new Error(`the arrival rate must be > 0, not ${rate}`);
  const out: number[] = [];
  if (rate === Infinity) {
    while (out.length < count) out.push(0);
    return out;
  }
  const next = mulberry32(seed ^ 0x5bd1e995);
  let t = 0;
  while (out.length < count) {
    t += -Math.log(1 - next()) / rate;
    if (t >= until) break;
    out.push(t);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// server-sent events

/** Splits an SSE byte stream (decoded text) into event data, per the WHATWG event-stream rules that matter here. */
export class SseParser {
  private buffer = '';
  private data: string[] = [];

  /** Feeds text; returns the data of every event completed by it. */
  push(text: string): string[] {
    this.buffer += text;
    const events: string[] = [];
    let nl: number;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      // a lone \r at the very end may be the first half of \r\n: wait for more
      if (this.buffer[nl] === '\r' && nl === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + (this.buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length) events.push(this.data.join('\n'));
        this.data = [];
      } else if (line.startsWith(':')) continue;
      else {
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (name === 'data') this.data.push(value);
      }
    }
    return events;
  }

  /** The data of an event the stream ended in without its blank line (servers that stop after [DONE] alone). */
  end(): string[] {
    const out = this.push('\n\n');
    this.buffer = '';
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// the client

const completionsUrl = (base: string) => base.replace(/\/+$/, '').replace(/\/v1$/, '') + '/v1/completions';

interface StreamChunk {
  choices?: { text?: unknown; finish_reason?: unknown }[];
  usage?: { prompt_tokens?: unknown; completion_tokens?: unknown } | null;
  error?: { message?: unknown } | unknown;
}

/**
 * Sends one streaming completion and records it. Never throws: failures are records with `error`.
 * `t0` is the run's start (performance.now() milliseconds).
 */
export async function sendCompletion(
  o: Pick<LoadOptions, 'url' | 'model' | 'temperature' | 'requestTimeoutSeconds' | 'signal' | 'slo'>,
  index: number,
  prompt: number[],
  maxTokens: number,
  seed: number,
  t0: number,
): Promise<RequestRecord> {
  const sent = performance.now();
  const rec: RequestRecord = { index, start: (sent - t0) / 1000, inputTokens: prompt.length, maxTokens, ok: false, outputTokens: 0, itl: [] };
  const timeout = AbortSignal.timeout(o.requestTimeoutSeconds * 1000);
  const signal = o.signal ? AbortSignal.any([o.signal, timeout]) : timeout;
  const fail = (error: string, message: string) => {
    rec.ok = false;
    rec.error = error;
    rec.errorMessage = message.slice(0, 500);
    rec.e2e = (performance.now() - sent) / 1000;
    return rec;
  };
  const abortKind = () => (timeout.aborted ? 'timeout' : 'cancelled');
  let chunks = 0;
  let lastChunk = 0;
  let usageTokens: number | undefined;
  let done = false;
  try {
    const res = await fetch(completionsUrl(o.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({
        model: o.model,
        prompt,
        max_tokens: maxTokens,
        temperature: o.temperature,
        seed,
        stream: true,
        stream_options: { include_usage: true },
        ...(o.slo ? { slo: { ttft_ms: o.slo.ttftMs, tpot_ms: o.slo.tpotMs, deadline_ms: o.slo.deadlineMs } } : {}),
      }),
      signal,
    });
    if (!res.ok || !res.body) {
      const body = await res.text().catch(() => '');
      let message = body;
      try {
        const m = (JSON.parse(body) as { error?: { message?: unknown } }).error?.message;
        if (typeof m === 'string') message = m;
      } catch {
        // not JSON: keep the text
      }
      return fail(String(res.status), message || res.statusText);
    }
    const parser = new SseParser();
    const decoder = new TextDecoder();
    const onEvent = (data: string): string | null => {
      if (data.trim() === '[DONE]') {
        done = true;
        return null;
      }
      let chunk: StreamChunk;
      try {
        chunk = JSON.parse(data) as StreamChunk;
      } catch {
        return `not JSON: ${data.slice(0, 200)}`;
      }
      if (chunk.error !== undefined && chunk.error !== null) {
        const m = (chunk.error as { message?: unknown }).message;
        return typeof m === 'string' ? m : JSON.stringify(chunk.error);
      }
      const now = performance.now();
      const choice = chunk.choices?.[0];
      if (choice) {
        const text = typeof choice.text === 'string' ? choice.text : '';
        const finish = choice.finish_reason;
        if (typeof finish === 'string') rec.finishReason = finish;
        // a token chunk: text, or no finish reason (a token whose text is not complete yet);
        // an empty chunk that only carries the finish reason is not a token
        if (text !== '' || finish === null || finish === undefined) {
          if (chunks === 0) rec.ttft = (now - sent) / 1000;
          else rec.itl.push((now - lastChunk) / 1000);
          chunks++;
          lastChunk = now;
        }
      }
      const u = chunk.usage;
      if (u && typeof u === 'object') {
        if (typeof u.completion_tokens === 'number') usageTokens = u.completion_tokens;
        if (typeof u.prompt_tokens === 'number') rec.promptTokensReported = u.prompt_tokens;
      }
      return null;
    };
    const reader = res.body.getReader();
    for (;;) {
      const { value, done: eof } = await reader.read();
      const events = eof ? parser.push(decoder.decode()).concat(parser.end()) : parser.push(decoder.decode(value, { stream: true }));
      for (const e of events) {
        const err = onEvent(e);
        if (err !== null) {
          await reader.cancel().catch(() => undefined);
          return fail('stream_error', err);
        }
      }
      if (eof) break;
    }
    if (!done) return fail('incomplete_stream', `the stream ended without [DONE] after ${chunks} token chunks`);
  } catch (e) {
    if (signal.aborted) return fail(abortKind(), `aborted after ${((performance.now() - sent) / 1000).toFixed(1)} s`);
    const cause = (e as { cause?: { code?: unknown; message?: unknown } }).cause;
    return fail('connection', [(e as Error).message, cause?.code, cause?.message].filter((s) => typeof s === 'string').join(': '));
  }
  rec.ok = true;
  rec.e2e = (performance.now() - sent) / 1000;
  rec.outputTokens = usageTokens ?? chunks;
  rec.outputCountedFrom = usageTokens !== undefined ? 'usage' : 'chunks';
  return rec;
}

// ---------------------------------------------------------------------------------------------
// a run

/** Resolves after `ms`, or at once when `signal` aborts (its listener removed either way). */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (ms <= 0 || signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/** The arrival times an open-loop run will use (seconds after its start). */
export function plannedArrivals(o: Pick<LoadOptions, 'arrivals' | 'specs' | 'durationSeconds' | 'maxRequests' | 'seed'>): number[] {
  if (o.arrivals.kind === 'poisson') return poissonArrivals(o.arrivals.rate, o.maxRequests, o.durationSeconds, o.seed);
  if (o.arrivals.kind === 'trace') {
    const out: number[] = [];
    for (const s of o.specs) {
      if (out.length >= o.maxRequests) break;
      const at = s.arrival ?? 0;
      if (at >= o.durationSeconds) break;
      out.push(at);
    }
    return out;
  }
  throw new Error('a closed-loop run has no planned arrivals');
}

export interface LoadRun {
  records: RequestRecord[];
  /** seconds from the start to the last request's end */
  seconds: number;
}

/** Runs the load; resolves when every request sent has finished. */
export async function runLoad(o: LoadOptions): Promise<LoadRun> {
  if (o.specs.length === 0) throw new Error('no requests to send');
  const t0 = performance.now();
  const records: RequestRecord[] = [];
  const send = async (i: number) => {
    const spec = o.specs[i % o.specs.length];
    const seed = (o.seed * 1_000_003 + i) >>> 0;
    records.push(await sendCompletion(o, i, syntheticPrompt(spec.inputTokens, seed), spec.outputTokens, seed, t0));
  };
  const elapsed = () => (performance.now() - t0) / 1000;
  const stopped = () => o.signal?.aborted === true;
  if (o.arrivals.kind === 'concurrency') {
    let next = 0;
    const client = async () => {
      while (!stopped() && next < o.maxRequests && elapsed() < o.durationSeconds) await send(next++);
    };
    await Promise.all(Array.from({ length: Math.max(1, o.arrivals.concurrency) }, client));
  } else {
    const times = plannedArrivals(o);
    const inFlight: Promise<void>[] = [];
    for (let i = 0; i < times.length && !stopped(); i++) {
      await sleep(times[i] * 1000 - (performance.now() - t0), o.signal);
      if (stopped()) break;
      inFlight.push(send(i));
    }
    await Promise.all(inFlight);
  }
  records.sort((a, b) => a.index - b.index);
  return { records, seconds: elapsed() };
}

// ---------------------------------------------------------------------------------------------
// statistics

export interface LatencyStats {
  count: number;
  mean: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** Statistics of values in seconds, reported in milliseconds; null when there are none. */
export function latencyStats(seconds: readonly number[]): LatencyStats | null {
  const v = seconds.filter(Number.isFinite).map((s) => s * 1000);
  if (v.length === 0) return null;
  v.sort((a, b) => a - b);
  return {
    count: v.length,
    mean: v.reduce((s, x) => s + x, 0) / v.length,
    min: v[0],
    p50: quantile(v, 0.5),
    p90: quantile(v, 0.9),
    p99: quantile(v, 0.99),
    max: v[v.length - 1],
  };
}

function countStats(values: readonly number[]): { mean: number; min: number; p50: number; max: number; total: number } | null {
  if (values.length === 0) return null;
  const v = [...values].sort((a, b) => a - b);
  const total = v.reduce((s, x) => s + x, 0);
  return { mean: total / v.length, min: v[0], p50: quantile(v, 0.5), max: v[v.length - 1], total };
}

export interface RunReport {
  /** "poisson", "concurrency" or "trace" */
  arrivals: Arrivals['kind'];
  /** requests/s offered (poisson: the rate; trace: the mean rate of the arrivals sent); null for closed loop */
  offeredRate: number | null;
  concurrency: number | null;
  durationLimitSeconds: number;
  maxRequests: number;
  /** seconds from the first request sent to the last one finished */
  seconds: number;
  requests: { sent: number; completed: number; failed: number };
  /** failed requests by error key (HTTP status, "timeout", "connection", ...) */
  errors: Record<string, number>;
  /** the first message seen for each error key */
  errorMessages: Record<string, string>;
  throughput: {
    /** completed requests / seconds */
    requestsPerSecond: number;
    /** output tokens of completed requests / seconds */
    outputTokensPerSecond: number;
    inputTokensPerSecond: number;
  };
  /** milliseconds; null when no request got a token */
  ttft: LatencyStats | null;
  /** time per output token after the first: (e2e - ttft) / (output tokens - 1), per request with >= 2 tokens */
  tpot: LatencyStats | null;
  /** gaps between successive token chunks, all requests pooled */
  itl: LatencyStats | null;
  e2e: LatencyStats | null;
  inputTokens: { mean: number; min: number; p50: number; max: number; total: number } | null;
  /** tokens actually generated (early EOS included) */
  outputTokens: { mean: number; min: number; p50: number; max: number; total: number } | null;
  /** max_tokens asked for */
  requestedOutputTokens: { mean: number; min: number; p50: number; max: number; total: number } | null;
  /** completed requests that ended before max_tokens */
  endedEarly: number;
  /** how output tokens were counted: requests whose count came from usage / from chunks */
  outputCountedFrom: { usage: number; chunks: number };
  /** completed requests whose usage.prompt_tokens differed from the prompt sent */
  promptTokenMismatches: number;
  /**
   * with an SLO: the share of requests sent that completed within it, as the client measured
   * (TTFT, mean TPOT, end to end); a rejected or failed request is a miss. null without one.
   */
  sloAttainment: number | null;
  /** per request, in order of sending (seconds) */
  perRequest: {
    index: number;
    start: number;
    inputTokens: number;
    maxTokens: number;
    outputTokens: number;
    ok: boolean;
    error?: string;
    ttft: number | null;
    tpot: number | null;
    e2e: number | null;
  }[];
}

const tpotOf = (r: RequestRecord): number | null =>
  r.ok && r.ttft !== undefined && r.e2e !== undefined && r.outputTokens >= 2 ? (r.e2e - r.ttft) / (r.outputTokens - 1) : null;

/** Whether a request met the SLO, by the client's own measurements. */
function metSlo(r: RequestRecord, slo: Slo): boolean {
  if (!r.ok || r.ttft === undefined || r.e2e === undefined) return false;
  const tpot = tpotOf(r);
  return (
    (slo.ttftMs === undefined || r.ttft * 1e3 <= slo.ttftMs) &&
    (slo.tpotMs === undefined || tpot === null || tpot * 1e3 <= slo.tpotMs) &&
    (slo.deadlineMs === undefined || r.e2e * 1e3 <= slo.deadlineMs)
  );
}

export function summarizeRun(o: Pick<LoadOptions, 'arrivals' | 'durationSeconds' | 'maxRequests' | 'slo'>, run: LoadRun, offeredRate: number | null): RunReport {
  const ok = run.records.filter((r) => r.ok);
  const errors: Record<string, number> = {};
  const errorMessages: Record<string, string> = {};
  for (const r of run.records) {
    if (r.ok || !r.error) continue;
    errors[r.error] = (errors[r.error] ?? 0) + 1;
    if (!(r.error in errorMessages) && r.errorMessage) errorMessages[r.error] = r.errorMessage;
  }
  const first = run.records.length ? Math.min(...run.records.map((r) => r.start)) : 0;
  const seconds = Math.max(1e-9, run.seconds - first);
  const outTotal = ok.reduce((s, r) => s + r.outputTokens, 0);
  const inTotal = ok.reduce((s, r) => s + r.inputTokens, 0);
  return {
    arrivals: o.arrivals.kind,
    offeredRate,
    concurrency: o.arrivals.kind === 'concurrency' ? o.arrivals.concurrency : null,
    durationLimitSeconds: o.durationSeconds,
    maxRequests: o.maxRequests,
    seconds,
    requests: { sent: run.records.length, completed: ok.length, failed: run.records.length - ok.length },
    errors,
    errorMessages,
    throughput: { requestsPerSecond: ok.length / seconds, outputTokensPerSecond: outTotal / seconds, inputTokensPerSecond: inTotal / seconds },
    ttft: latencyStats(ok.flatMap((r) => (r.ttft === undefined ? [] : [r.ttft]))),
    tpot: latencyStats(ok.flatMap((r) => tpotOf(r) ?? [])),
    itl: latencyStats(ok.flatMap((r) => r.itl)),
    e2e: latencyStats(ok.map((r) => r.e2e ?? NaN)),
    inputTokens: countStats(ok.map((r) => r.inputTokens)),
    outputTokens: countStats(ok.map((r) => r.outputTokens)),
    requestedOutputTokens: countStats(ok.map((r) => r.maxTokens)),
    endedEarly: ok.filter((r) => r.outputTokens < r.maxTokens).length,
    outputCountedFrom: { usage: ok.filter((r) => r.outputCountedFrom === 'usage').length, chunks: ok.filter((r) => r.outputCountedFrom === 'chunks').length },
    promptTokenMismatches: ok.filter((r) => r.promptTokensReported !== undefined && r.promptTokensReported !== r.inputTokens).length,
    sloAttainment: o.slo && run.records.length ? run.records.filter((r) => metSlo(r, o.slo!)).length / run.records.length : null,
    perRequest: run.records.map((r) => ({
      index: r.index,
      start: r.start,
      inputTokens: r.inputTokens,
      maxTokens: r.maxTokens,
      outputTokens: r.outputTokens,
      ok: r.ok,
      ...(r.error ? { error: r.error } : {}),
      ttft: r.ttft ?? null,
      tpot: tpotOf(r),
      e2e: r.e2e ?? null,
    })),
  };
}

/** Runs the load and summarizes it. `offeredRate` defaults from the arrivals (see RunReport). */
export async function runAndSummarize(o: LoadOptions): Promise<RunReport> {
  let offered: number | null = null;
  if (o.arrivals.kind === 'poisson') offered = o.arrivals.rate;
  else if (o.arrivals.kind === 'trace') {
    const t = plannedArrivals(o);
    offered = t.length >= 2 && t[t.length - 1] > t[0] ? (t.length - 1) / (t[t.length - 1] - t[0]) : null;
  }
  return summarizeRun(o, await runLoad(o), offered);
}

// ---------------------------------------------------------------------------------------------
// the text report

const f = (v: number | null | undefined, digits = 1) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits));

/** A human-readable block for one run. */
export function formatRun(r: RunReport): string {
  const head =
    r.arrivals === 'concurrency'
      ? `closed loop, concurrency ${r.concurrency}`
      : `${r.arrivals === 'poisson' ? 'Poisson' : 'trace'} arrivals, offered ${r.offeredRate === null ? '-' : r.offeredRate === Infinity ? 'inf' : f(r.offeredRate, 3)} req/s`;
  const lines = [
    `== ${head}: ${r.requests.sent} sent, ${r.requests.completed} completed, ${r.requests.failed} failed in ${f(r.seconds, 2)} s`,
    `throughput: ${f(r.throughput.requestsPerSecond, 3)} req/s, ${f(r.throughput.outputTokensPerSecond, 2)} output tok/s, ${f(r.throughput.inputTokensPerSecond, 2)} input tok/s`,
    `tokens: input mean ${f(r.inputTokens?.mean)}, output mean ${f(r.outputTokens?.mean)} of ${f(r.requestedOutputTokens?.mean)} asked (${r.endedEarly} ended early)`,
  ];
  const row = (name: string, s: LatencyStats | null) =>
    `${name.padEnd(10)}${[s?.mean, s?.p50, s?.p90, s?.p99, s?.max].map((v) => f(v).padStart(10)).join('')}${String(s?.count ?? 0).padStart(8)}`;
  lines.push(`${'ms'.padEnd(10)}${['mean', 'p50', 'p90', 'p99', 'max'].map((h) => h.padStart(10)).join('')}${'n'.padStart(8)}`);
  lines.push(row('TTFT', r.ttft), row('TPOT', r.tpot), row('ITL', r.itl), row('E2E', r.e2e));
  if (r.sloAttainment !== null) lines.push(`SLO attainment (client-measured): ${f(100 * r.sloAttainment)}% of ${r.requests.sent}`);
  const errs = Object.entries(r.errors);
  if (errs.length) {
    lines.push(`errors: ${errs.map(([k, n]) => `${k} x${n}`).join(', ')}`);
    for (const [k, m] of Object.entries(r.errorMessages)) lines.push(`  ${k}: ${m}`);
  }
  return lines.join('\n');
}

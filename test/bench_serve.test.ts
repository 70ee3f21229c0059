import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { latencyStats, poissonArrivals, type RunReport, SseParser, syntheticPrompt } from '../bench/serve.ts';
import { readTrace, scaleTrace } from '../src/sim/trace.ts';
import { benchServe, type BenchServeOptions } from '../src/cli/bench_serve.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { startServeProcess, type ServeProcess } from '../bench/serve_process.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const CONV = join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023', 'AzureLLMInferenceTrace_conv.csv');

describe('load generator pieces', () => {
  it('SSE parser: events split anywhere, CRLF and CR line ends, comments, multi-line data, an unterminated last event', () => {
    const text = ': keep-alive\r\ndata: {"a":1}\r\n\r\nevent: x\ndata: line1\ndata:line2\n\ndata: [DONE]\r\rdata: tail';
    for (const cut of [1, 3, 7, 16]) {
      const p = new SseParser();
      const events: string[] = [];
      for (let i = 0; i < text.length; i += cut) events.push(...p.push(text.slice(i, i + cut)));
      events.push(...p.end());
      expect(events).toEqual(['{"a":1}', 'line1\nline2', '[DONE]', 'tail']);
    }
  });

  it('prompts: exact length, BOS first, ids in [3, 256), deterministic', () => {
    expect(syntheticPrompt(1, 5)).toEqual([1]);
    const p = syntheticPrompt(300, 7);
    expect(p).toHaveLength(300);
    expect(p[0]).toBe(1);
    for (const t of p.slice(1)) expect(t >= 3 && t < 256 && Number.isInteger(t)).toBe(true);
    expect(syntheticPrompt(300, 7)).toEqual(p);
    expect(syntheticPrompt(300, 8)).not.toEqual(p);
    expect(() => syntheticPrompt(0, 1)).toThrow();
  });

  it('Poisson arrivals: mean gap 1 / rate, bounded by count and time; an infinite rate sends all at once', () => {
    const a = poissonArrivals(4, 20_000, Infinity, 3);
    expect(a).toHaveLength(20_000);
    const meanGap = a[a.length - 1] / a.length;
    expect(meanGap).toBeGreaterThan(0.25 * 0.97);
    expect(meanGap).toBeLessThan(0.25 * 1.03);
    // exponential gaps: the standard deviation equals the mean
    const gaps = a.map((t, i) => t - (i ? a[i - 1] : 0));
    const sd = Math.sqrt(gaps.reduce((s, g) => s + (g - meanGap) ** 2, 0) / gaps.length);
    expect(sd / meanGap).toBeGreaterThan(0.95);
    expect(sd / meanGap).toBeLessThan(1.05);
    const timed = poissonArrivals(4, 1000, 10, 3);
    expect(timed.length).toBeGreaterThan(20);
    expect(timed.length).toBeLessThan(60);
    expect(Math.max(...timed)).toBeLessThan(10);
    expect(poissonArrivals(Infinity, 3, 10, 1)).toEqual([0, 0, 0]);
  });

  it('latency statistics in ms', () => {
    expect(latencyStats([])).toBeNull();
    const s = latencyStats([0.004, 0.001, 0.003, 0.002, NaN])!;
    const expected = { count: 4, mean: 2.5, min: 1, p50: 2.5, p90: 3.7, p99: 3.97, max: 4 };
    for (const [k, v] of Object.entries(expected)) expect(s[k as keyof typeof s], k).toBeCloseTo(v, 9);
  });
});

/** Every number in a run's summary (not the per-request list) is finite, every latency statistic present. */
function expectComplete(r: RunReport) {
  for (const k of ['ttft', 'tpot', 'itl', 'e2e', 'inputTokens', 'outputTokens', 'requestedOutputTokens'] as const) expect(r[k], k).not.toBeNull();
  const walk = (v: unknown, path: string) => {
    if (typeof v === 'number') expect(Number.isFinite(v), `${path} = ${v}`).toBe(true);
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
  };
  const { perRequest, offeredRate, concurrency, ...rest } = r;
  walk(rest, 'run');
  for (const k of ['ttft', 'tpot', 'e2e'] as const) expect(r[k]!.p50).toBeGreaterThan(0);
  expect(r.requests.failed).toBe(0);
  expect(r.errors).toEqual({});
  expect(r.ttft!.count).toBe(r.requests.completed);
  expect(r.e2e!.count).toBe(r.requests.completed);
  expect(r.throughput.requestsPerSecond).toBeGreaterThan(0);
  expect(r.throughput.outputTokensPerSecond).toBeGreaterThan(0);
  expect(r.outputCountedFrom).toEqual({ usage: r.requests.completed, chunks: 0 });
  expect(r.promptTokenMismatches).toBe(0);
  for (const q of perRequest) {
    expect(q.ok).toBe(true);
    expect(q.outputTokens).toBeGreaterThanOrEqual(1);
    expect(q.outputTokens).toBeLessThanOrEqual(q.maxTokens);
    expect(q.e2e!).toBeGreaterThanOrEqual(q.ttft!);
  }
  return { offeredRate, concurrency };
}

describe('bench serve against a wgserve serve process (127.0.0.1)', () => {
  let url = '';
  let server: ServeProcess | undefined;
  const tmp = useTmpDirs('wgserve-bench-serve-');
  const quiet = { log: () => {}, print: () => {} };
  const defaults: BenchServeOptions = {
    url: '',
    timeScale: 1,
    tokenScale: 1,
    inputTokens: 8,
    outputTokens: 3,
    durationSeconds: 30,
    maxRequests: 3,
    requestTimeoutSeconds: 60,
    warmup: 0,
    temperature: 0,
    seed: 1,
    ...quiet,
  };

  beforeAll(async () => {
    server = await startServeProcess(['--kv-memory', String(4 << 20), '--no-warmup']); // its first requests compile what they use
    url = server.url;
  }, 150_000);
  afterAll(() => server?.stop());

  it('a Poisson rate sweep: complete, finite reports, JSON and a latency-vs-rate SVG', async () => {
    const dir = tmp();
    const json = join(dir, 'sweep.json');
    const plot = join(dir, 'sweep.svg');
    const report = await benchServe({ ...defaults, url, rates: [2, 16], maxRequests: 2, warmup: 1, json, plot });
    expect(report.model).toBe('stories260K');
    expect(report.maxContext).toBe(2048); // from GET /v1/models (max_model_len)
    expect(report.runs.map((r) => [r.arrivals, r.offeredRate, r.requests.sent])).toEqual([
      ['poisson', 2, 2],
      ['poisson', 16, 2],
    ]);
    for (const r of report.runs) {
      expectComplete(r);
      expect(r.inputTokens!.mean).toBe(8);
    }
    const written = JSON.parse(readFileSync(json, 'utf8'));
    expect(written.runs[1].ttft.p90).toBe(report.runs[1].ttft!.p90);
    const svg = readFileSync(plot, 'utf8');
    expect(svg.startsWith('<svg')).toBe(true);
    for (const s of ['TTFT (ms)', 'TPOT (ms)', 'offered rate (req/s)', 'p90']) expect(svg).toContain(s);
  });

  it('closed loop over a real trace scaled by 1/16: trace lengths, a CDF plot', async () => {
    const plot = join(tmp(), 'cdf.svg');
    const report = await benchServe({ ...defaults, url, concurrency: 2, trace: CONV, tokenScale: 1 / 16, maxRequests: 3, plot });
    const run = report.runs[0];
    expectComplete(run);
    expect(run.concurrency).toBe(2);
    const expected = scaleTrace(readTrace(CONV).requests.slice(0, 3), { tokenScale: 1 / 16, maxContext: 2048 });
    expect(run.perRequest.map((q) => [q.inputTokens, q.maxTokens])).toEqual(expected.map((s) => [s.inputTokens, s.outputTokens]));
    expect(report.workload.trace!.original.requests).toBe(19366);
    const svg = readFileSync(plot, 'utf8');
    expect(svg).toContain('TTFT CDF');
  });

  it('trace arrivals compressed in time: requests sent at the scaled arrival times', async () => {
    // arrivals 0, 4 and 4.5 s after the first, x 0.1 in time: sent at 0, 0.4 and 0.45 s
    const trace = join(tmp(), 'trace.csv');
    writeFileSync(trace, 'timestamp,input_tokens,output_tokens\n100,12,3\n104,20,2\n104.5,7,3\n');
    const sendAt = [0, 0.4, 0.45];
    // A send timer is late only by what stalls this process's event loop (a loaded machine
    // deschedules it); the monitor's own timer, due at most `resolution` ms into a stall, measures
    // each stall less at most that much.
    const resolution = 10;
    const stalls = monitorEventLoopDelay({ resolution });
    stalls.enable();
    const report = await benchServe({ ...defaults, url, trace, timeScale: 0.1 });
    stalls.disable();
    const run = report.runs[0];
    expectComplete(run);
    expect(run.perRequest.map((q) => [q.index, q.inputTokens, q.maxTokens]).sort((a, b) => a[0] - b[0])).toEqual([[0, 12, 3], [1, 20, 2], [2, 7, 3]]);
    // timers count whole milliseconds, so one may fire up to 1 ms early (- 2 ms) or late (+ 5 ms, with the send after it)
    const lateness = (stalls.max / 1e6 + resolution + 5) / 1e3;
    for (const q of run.perRequest) {
      expect(q.start).toBeGreaterThanOrEqual(sendAt[q.index] - 0.002);
      expect(q.start, `request ${q.index}; the longest event-loop stall was ${stalls.max / 1e6} ms`).toBeLessThan(sendAt[q.index] + lateness);
    }
    expect(run.offeredRate).toBeCloseTo(2 / 0.45, 6);
  });

  it('errors are counted by status: 400 for a prompt beyond the context, 404 for an unknown model', async () => {
    const tooLong = await benchServe({ ...defaults, url, concurrency: 2, inputTokens: 2100, maxContext: 10_000 });
    expect(tooLong.runs[0].requests).toEqual({ sent: 3, completed: 0, failed: 3 });
    expect(tooLong.runs[0].errors).toEqual({ '400': 3 });
    expect(tooLong.runs[0].errorMessages['400']).toMatch(/context/);
    expect(tooLong.runs[0].ttft).toBeNull();
    const unknown = await benchServe({ ...defaults, url, rate: 50, maxRequests: 2, model: 'no-such-model' });
    expect(unknown.runs[0].errors).toEqual({ '404': 2 });
  });

  it('the CLI: `wgserve bench serve` prints percentiles and writes JSON', async () => {
    const json = join(tmp(), 'cli.json');
    const { stdout } = await promisify(execFile)(
      'node',
      [join(repoRoot, 'bin', 'wgserve.mjs'), 'bench', 'serve', '--url', url, '--rate', 'inf', '--max-requests', '2', '--input-tokens', '4', '--output-tokens', '2', '--warmup', '0', '--json', json],
      { cwd: repoRoot },
    );
    expect(stdout).toMatch(/offered inf req\/s: 2 sent, 2 completed, 0 failed/);
    expect(stdout).toMatch(/TTFT +[\d.]+ +[\d.]+/);
    const report = JSON.parse(readFileSync(json, 'utf8'));
    expect(report.runs[0].offeredRate).toBe('Infinity');
    expect(report.runs[0].requests.completed).toBe(2);
  });
});

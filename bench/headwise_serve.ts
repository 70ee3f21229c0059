/**
 * Served throughput with and without a head pattern at one `--kv-memory` (issue 14,
 * `wgserve bench headwise --serve`): `wgserve serve` is started twice, once with the full cache and
 * once with the pattern, and each gets the same closed-loop load (bench/serve.ts). The server's own
 * /metrics say what the KV budget allowed: sequences running at once (sampled during the run, and
 * the mean batch of its steps), KV blocks in use, preemptions, KV bytes by head kind. A budget too
 * small for the load's sequences with the full cache is where head-wise KV shows: its streaming
 * heads keep only sink + recent tokens, so more sequences fit and each step batches more of them.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type HeadPattern, formatGates, headColumns, loadHeadPattern } from '../src/kv/head_pattern.ts';
import { type KvLayout, PagedKvTables, blocksForBudget } from '../src/kv/paged_kv.ts';
import type { ModelConfig } from '../src/model/config.ts';
import { type RunReport, runAndSummarize, sendCompletion, sleep, syntheticPrompt } from './serve.ts';
import { type ServeProcess, startServeProcess } from './serve_process.ts';

export interface HeadwiseServeOptions {
  /** the model file (default: the server's, the embedded stories260K) */
  model?: string;
  config: ModelConfig;
  kvMemory: number;
  /** a pattern file; without one, equal gates, so --retrieval-fraction takes heads in order */
  headPattern?: string;
  retrievalFraction?: number;
  gateThreshold?: number;
  sink: number;
  recent: number;
  /** prompt tokens (BOS included) and max_tokens of every request */
  inputTokens: number;
  outputTokens: number;
  /** requests per run, and closed-loop clients sending them */
  requests: number;
  concurrency: number;
  /** runs per configuration, alternating between the two servers */
  rounds: number;
  /** sequences per engine step at most (serve's --max-batch; default the server's) */
  maxBatch?: number;
  /** serve's --device */
  device: string;
  seed: number;
  /** /metrics sampling period during the load */
  sampleMs: number;
  requestTimeoutSeconds: number;
  log: (line: string) => void;
  signal?: AbortSignal;
}

/** One configuration's run: the load's report and what the server said about its KV. */
export interface HeadwiseServeRow {
  kv: 'full' | 'head-wise';
  /** 0-based; each round runs both configurations */
  round: number;
  /** full-history columns per sequence (= KV heads per layer for the full cache) */
  retrievalColumns: number;
  kvHeads: number;
  kvBlocksTotal: number;
  /** sequences of inputTokens + outputTokens the pool holds at once, by the engine's bookkeeping */
  sequencesThatFit: number;
  /** sampled during the run: requests holding KV, and KV blocks in use (maximum and mean of the samples) */
  maxRunning: number;
  meanRunning: number;
  maxKvBlocksUsed: number;
  meanKvBlocksUsed: number;
  /** KV bytes by head kind at the sample with the most blocks in use (head-wise only) */
  kvBytesAtPeak: { retrieval: number; streaming: number } | null;
  /** the run's engine steps, the mean sequences batched in one, and its mean duration (seconds) */
  steps: number;
  meanStepSequences: number;
  meanStepSeconds: number;
  preemptions: number;
  run: RunReport;
}

export interface HeadwiseServeReport {
  tool: 'wgserve bench headwise --serve';
  date: string;
  device: string;
  model: string;
  contextLength: number;
  kvMemory: number;
  pattern: { file: string | null; retrievalFraction: number | null; gateThreshold: number | null; sink: number; recent: number };
  workload: { inputTokens: number; outputTokens: number; requests: number; concurrency: number; rounds: number; temperature: 0; seed: number };
  rows: HeadwiseServeRow[];
  /** head-wise output tokens/s over the full cache's, medians over the rounds */
  throughputGain: number;
}

/** Prometheus text as `series -> value`, the series as printed (`name{label="v"}`); comments skipped. */
export function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    if (cut > 0) out.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return out;
}

async function scrape(url: string): Promise<Map<string, number>> {
  const res = await fetch(`${url}/metrics`);
  if (!res.ok) throw new Error(`GET /metrics answered ${res.status}`);
  return parseMetrics(await res.text());
}

const series = (m: Map<string, number>, name: string): number => {
  const v = m.get(name);
  if (v === undefined) throw new Error(`/metrics has no ${name}`);
  return v;
};

interface Sample {
  running: number;
  kvBlocksUsed: number;
  kvBytes: { retrieval: number; streaming: number } | null;
}

/** Samples the gauges every `periodMs` until `stop` aborts; a failed scrape ends the sampling with its error. */
async function sampleGauges(url: string, periodMs: number, stop: AbortSignal): Promise<Sample[]> {
  const samples: Sample[] = [];
  while (!stop.aborted) {
    const m = await scrape(url);
    const retrieval = m.get('wgserve_kv_bytes{kind="retrieval"}');
    const streaming = m.get('wgserve_kv_bytes{kind="streaming"}');
    samples.push({
      running: series(m, 'wgserve_requests_running'),
      kvBlocksUsed: series(m, 'wgserve_kv_blocks_used'),
      kvBytes: retrieval !== undefined && streaming !== undefined ? { retrieval, streaming } : null,
    });
    await sleep(periodMs, stop);
  }
  return samples;
}

/** The pattern file to serve with: the given one, or equal gates for the model's shape in `dir`. */
function patternFile(o: HeadwiseServeOptions, dir: string): string {
  if (o.headPattern) return o.headPattern;
  const gates = Array.from({ length: o.config.nLayers }, () => new Array<number>(o.config.nKvHeads).fill(0));
  const file = join(dir, 'equal-gates.tsv');
  writeFileSync(file, formatGates(gates, ['equal gates: --retrieval-fraction takes the KV heads in order']));
  return file;
}

/** A served model's KV layout: GpuModel's default 16-token blocks in f32 pools (runs check the blocks against the server's /metrics). */
export function servedKvLayout(c: ModelConfig): KvLayout {
  return { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: 16, bytesPerElement: 4 };
}

/** Sequences of `tokens` tokens a pool of `numBlocks` holds, by the engine's bookkeeping (blocksNeeded of a new sequence). */
function sequencesThatFit(c: ModelConfig, numBlocks: number, tokens: number, pattern: HeadPattern | undefined): number {
  const layout = servedKvLayout(c);
  const kv = pattern ? new PagedKvTables(layout, numBlocks, { fullColumns: headColumns(pattern).fullColumns, sink: pattern.sink, recent: pattern.recent }) : new PagedKvTables(layout, numBlocks);
  return Math.floor(numBlocks / kv.blocksNeeded(0, tokens));
}

/** Runs the load against one server and reads what its /metrics say about the run. */
async function measure(server: ServeProcess, o: HeadwiseServeOptions, model: string): Promise<Omit<HeadwiseServeRow, 'kv' | 'round' | 'retrievalColumns' | 'kvHeads' | 'sequencesThatFit'>> {
  const load = { url: server.url, model, temperature: 0, requestTimeoutSeconds: o.requestTimeoutSeconds, signal: o.signal };
  // one request first, not recorded: the first use of some pipelines compiles them
  const warm = await sendCompletion(load, -1, syntheticPrompt(Math.min(o.inputTokens, 16), o.seed), 4, o.seed, performance.now());
  if (!warm.ok) throw new Error(`the warm-up request failed: ${warm.error}: ${warm.errorMessage ?? ''}`);
  const before = await scrape(server.url);
  const stop = new AbortController();
  // settled at once, so a failed scrape waits for the load's end instead of going unhandled
  const sampling = sampleGauges(server.url, o.sampleMs, stop.signal).then(
    (samples) => ({ samples }),
    (error: unknown) => ({ error }),
  );
  let run: RunReport;
  try {
    run = await runAndSummarize({
      ...load,
      arrivals: { kind: 'concurrency', concurrency: o.concurrency },
      specs: [{ inputTokens: o.inputTokens, outputTokens: o.outputTokens }],
      durationSeconds: Infinity,
      maxRequests: o.requests,
      seed: o.seed,
    });
  } finally {
    stop.abort();
  }
  const sampled = await sampling;
  if ('error' in sampled) throw sampled.error;
  const samples = sampled.samples;
  const after = await scrape(server.url);
  const delta = (name: string) => series(after, name) - series(before, name);
  const mean = (v: number[]) => (v.length ? v.reduce((s, x) => s + x, 0) / v.length : 0);
  const peak = samples.reduce<Sample | null>((best, s) => (!best || s.kvBlocksUsed > best.kvBlocksUsed ? s : best), null);
  const steps = delta('wgserve_step_sequences_count');
  return {
    kvBlocksTotal: series(after, 'wgserve_kv_blocks_total'),
    maxRunning: Math.max(0, ...samples.map((s) => s.running)),
    meanRunning: mean(samples.map((s) => s.running)),
    maxKvBlocksUsed: Math.max(0, ...samples.map((s) => s.kvBlocksUsed)),
    meanKvBlocksUsed: mean(samples.map((s) => s.kvBlocksUsed)),
    kvBytesAtPeak: peak?.kvBytes ?? null,
    steps,
    meanStepSequences: steps > 0 ? delta('wgserve_step_sequences_sum') / steps : 0,
    meanStepSeconds: steps > 0 ? delta('wgserve_step_duration_seconds_sum') / steps : 0,
    preemptions: delta('wgserve_preemptions_total'),
    run,
  };
}

/**
 * Starts both servers (one after the other), then runs the load against each in turn for
 * `rounds` rounds, in ABBA order so that a drift of the machine's load (other processes on a
 * shared CPU) weighs on both alike; only one server has requests at a time. Both are stopped at
 * the end, also when a start or a run fails.
 */
export async function runHeadwiseServe(o: HeadwiseServeOptions): Promise<HeadwiseServeReport> {
  const c = o.config;
  if (o.inputTokens + o.outputTokens > c.contextLength) throw new Error(`${o.inputTokens} input + ${o.outputTokens} output tokens exceed the model's context (${c.contextLength})`);
  const dir = mkdtempSync(join(tmpdir(), 'wgserve-headwise-serve-'));
  const servers: ServeProcess[] = [];
  try {
    const file = patternFile(o, dir);
    const patternOptions = { retrievalFraction: o.retrievalFraction, gateThreshold: o.gateThreshold, sink: o.sink, recent: o.recent };
    const pattern = loadHeadPattern(file, c, patternOptions);
    const common = ['--kv-memory', String(o.kvMemory), '--device', o.device, ...(o.model ? ['--model', o.model] : []), ...(o.maxBatch ? ['--max-batch', String(o.maxBatch)] : [])];
    const patternArgs = [
      '--head-pattern', file, '--sink', String(o.sink), '--recent', String(o.recent),
      ...(o.retrievalFraction !== undefined ? ['--retrieval-fraction', String(o.retrievalFraction)] : []),
      ...(o.gateThreshold !== undefined ? ['--gate-threshold', String(o.gateThreshold)] : []),
    ];
    const numBlocks = blocksForBudget(servedKvLayout(c), o.kvMemory);
    const configs = [
      { kv: 'full' as const, args: common, retrievalColumns: c.nKvHeads, fit: sequencesThatFit(c, numBlocks, o.inputTokens + o.outputTokens, undefined) },
      { kv: 'head-wise' as const, args: [...common, ...patternArgs], retrievalColumns: headColumns(pattern).fullColumns, fit: sequencesThatFit(c, numBlocks, o.inputTokens + o.outputTokens, pattern) },
    ];
    for (const cfg of configs) {
      o.log(`starting serve ${cfg.kv === 'full' ? 'with the full cache' : `head-wise (${cfg.retrievalColumns} of ${c.nKvHeads} KV heads keep full history, sink ${o.sink} + recent ${o.recent})`}, --kv-memory ${o.kvMemory}`);
      servers.push(await startServeProcess(cfg.args));
    }
    const models = (await (await fetch(`${servers[0].url}/v1/models`)).json()) as { data: { id: string }[] };
    const model = models.data[0].id;
    const rows: HeadwiseServeRow[] = [];
    for (let round = 0; round < o.rounds; round++) {
      for (const i of round % 2 ? [1, 0] : [0, 1]) {
        if (o.signal?.aborted) throw new Error('bench headwise --serve: aborted');
        const cfg = configs[i];
        const measured = await measure(servers[i], o, model).catch((err: unknown) => {
          const server = servers[i];
          const died = server.proc.exitCode !== null || server.proc.signalCode !== null ? ` (it exited: ${server.proc.exitCode ?? server.proc.signalCode})` : '';
          throw new Error(`the ${cfg.kv} server at ${server.url}${died}: ${err instanceof Error ? err.message : String(err)}; its output ends:\n${server.output().slice(-2000)}`);
        });
        const row: HeadwiseServeRow = { kv: cfg.kv, round, retrievalColumns: cfg.retrievalColumns, kvHeads: c.nKvHeads, sequencesThatFit: cfg.fit, ...measured };
        if (row.kvBlocksTotal !== numBlocks) throw new Error(`the server has ${row.kvBlocksTotal} KV blocks, the bookkeeping here assumed ${numBlocks}`);
        const r = row.run;
        o.log(`  round ${round + 1}, ${cfg.kv}: ${r.requests.completed}/${r.requests.sent} completed in ${r.seconds.toFixed(1)} s, ${r.throughput.outputTokensPerSecond.toFixed(2)} output tok/s; running max ${row.maxRunning} (fit ${row.sequencesThatFit}), mean batch ${row.meanStepSequences.toFixed(2)}, ${row.preemptions} preemptions`);
        rows.push(row);
      }
    }
    const median = (kv: HeadwiseServeRow['kv']) => medianOf(rows.filter((r) => r.kv === kv).map((r) => r.run.throughput.outputTokensPerSecond));
    return {
      tool: 'wgserve bench headwise --serve',
      date: new Date().toISOString(),
      device: servers[0].device,
      model,
      contextLength: c.contextLength,
      kvMemory: o.kvMemory,
      pattern: { file: o.headPattern ?? null, retrievalFraction: o.retrievalFraction ?? null, gateThreshold: o.gateThreshold ?? null, sink: o.sink, recent: o.recent },
      workload: { inputTokens: o.inputTokens, outputTokens: o.outputTokens, requests: o.requests, concurrency: o.concurrency, rounds: o.rounds, temperature: 0, seed: o.seed },
      rows,
      throughputGain: median('head-wise') / median('full'),
    };
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

function medianOf(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

const f = (v: number | null | undefined, d = 1) => (v === null || v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(d));

export function headwiseServeMarkdown(r: HeadwiseServeReport): string {
  const w = r.workload;
  const p = r.pattern;
  const how = p.retrievalFraction !== null ? `${p.retrievalFraction} of each layer's KV heads` : `gates >= ${p.gateThreshold ?? 0.5}`;
  const lines = [
    `Served ${r.model} (context ${r.contextLength}) on ${r.device}, \`--kv-memory ${r.kvMemory}\`: ${w.requests} requests of ${w.inputTokens} prompt + ${w.outputTokens} output tokens (greedy) per run, ${w.concurrency} closed-loop clients, ` +
      `${w.rounds} round(s) alternating between the two servers. Head-wise: ${p.file ?? 'equal gates'}, ${how} keep full history, sink ${p.sink} + recent ${p.recent}.`,
    '',
    '| KV cache | round | KV blocks | sequences that fit | running (max / mean) | batch per step (mean) | step (ms, mean) | KV blocks used (max / mean) | preemptions | completed | output tok/s | TTFT p50 / p90 (ms) | TPOT p50 / p90 (ms) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  const sorted = [...r.rows].sort((a, b) => Number(a.kv !== 'full') - Number(b.kv !== 'full') || a.round - b.round);
  for (const row of sorted) {
    const x = row.run;
    lines.push(
      `| ${row.kv === 'full' ? 'full' : `head-wise (${row.retrievalColumns}/${row.kvHeads} full columns)`} | ${row.round + 1} | ${row.kvBlocksTotal} | ${row.sequencesThatFit} | ${row.maxRunning} / ${f(row.meanRunning)} | ${f(row.meanStepSequences, 2)} | ${f(row.meanStepSeconds * 1e3, 0)} | ` +
        `${row.maxKvBlocksUsed} / ${f(row.meanKvBlocksUsed, 0)} | ${row.preemptions} | ${x.requests.completed}/${x.requests.sent} | ${f(x.throughput.outputTokensPerSecond, 2)} | ${f(x.ttft?.p50, 0)} / ${f(x.ttft?.p90, 0)} | ${f(x.tpot?.p50, 0)} / ${f(x.tpot?.p90, 0)} |`,
    );
  }
  lines.push('', `Head-wise output throughput (median over rounds): ${f(r.throughputGain, 2)}x the full cache's.`);
  return lines.join('\n') + '\n';
}

import { writeServePlot } from '../../bench/plot.ts';
import { writeResult } from '../../bench/results.ts';
import type { Slo } from '../scheduler/scheduler.ts';
import { type Arrivals, formatRun, type LoadOptions, type RequestSpec, type RunReport, runAndSummarize, sendCompletion, syntheticPrompt } from '../../bench/serve.ts';
import { readTrace, scaleTrace, summarizeTrace, type TraceSummary } from '../sim/trace.ts';

export interface BenchServeOptions {
  /** server base URL */
  url: string;
  /** open-loop Poisson arrivals at this rate (requests/s; Infinity: all at once) */
  rate?: number;
  /** closed loop with this many clients */
  concurrency?: number;
  /** a sweep: one run per rate (Poisson, or the trace's arrivals rescaled to each mean rate) */
  rates?: number[];
  /** Azure-format (or generic CSV / JSONL) trace: request lengths, and the arrivals when no rate or concurrency is given */
  trace?: string;
  /** multiplies the trace's arrival times (0.5: twice as fast) */
  timeScale: number;
  /** multiplies the trace's input and output lengths (at least 1 token, clamped to the context) */
  tokenScale: number;
  /** without a trace: prompt tokens per request (BOS included) */
  inputTokens: number;
  /** without a trace: max_tokens per request */
  outputTokens: number;
  /** the model's context; default: what GET /v1/models says, if anything */
  maxContext?: number;
  durationSeconds: number;
  maxRequests: number;
  requestTimeoutSeconds: number;
  /** requests sent one at a time before measuring, not recorded */
  warmup: number;
  /** default: the first model GET /v1/models lists */
  model?: string;
  temperature: number;
  seed: number;
  /** latency objectives sent with every request and scored client-side */
  slo?: Slo;
  json?: string;
  plot?: string;
  /** progress lines (default: stderr) */
  log?: (line: string) => void;
  /** the report text (default: stdout) */
  print?: (text: string) => void;
  signal?: AbortSignal;
}

export interface ServeBenchReport {
  tool: 'wgserve bench serve';
  date: string;
  url: string;
  model: string;
  /** the context used to clamp request lengths; null when unknown */
  maxContext: number | null;
  workload: {
    source: 'fixed' | 'trace';
    inputTokens?: number;
    outputTokens?: number;
    trace?: { file: string; timeScale: number; tokenScale: number; original: TraceSummary; scaled: TraceSummary };
    temperature: number;
    seed: number;
    warmup: number;
  };
  runs: RunReport[];
}

interface ModelInfo {
  id: string;
  contextLength?: number;
}

const CONTEXT_KEYS = ['max_model_len', 'context_length', 'context_window', 'max_context_length', 'n_ctx', 'max_position_embeddings'];

/** GET /v1/models: the ids and, when the server says it, each model's context length. */
export async function listModels(url: string, signal?: AbortSignal): Promise<ModelInfo[]> {
  const timeout = AbortSignal.timeout(30_000);
  let res: Response;
  try {
    res = await fetch(url.replace(/\/+$/, '').replace(/\/v1$/, '') + '/v1/models', { signal: signal ? AbortSignal.any([signal, timeout]) : timeout });
  } catch (e) {
    const cause = (e as { cause?: { code?: unknown; message?: unknown } }).cause;
    const why = typeof cause?.code === 'string' ? cause.code : typeof cause?.message === 'string' ? cause.message : null;
    throw new Error(`GET /v1/models failed: ${(e as Error).message}${why ? ` (${why})` : ''}`);
  }
  if (!res.ok) throw new Error(`GET /v1/models answered ${res.status} ${res.statusText}`);
  const body = (await res.json()) as { data?: Record<string, unknown>[] };
  if (!Array.isArray(body.data)) throw new Error('GET /v1/models: no "data" list in the answer');
  return body.data.map((m) => {
    const found = [m, (m.meta ?? {}) as Record<string, unknown>].flatMap((o) => CONTEXT_KEYS.map((k) => o[k])).find((v) => typeof v === 'number' && Number.isInteger(v) && v > 1);
    return { id: String(m.id), ...(found !== undefined ? { contextLength: found as number } : {}) };
  });
}

/** Runs the benchmark: warm-up, one run or a sweep, the printed report, JSON and plot. */
export async function benchServe(o: BenchServeOptions): Promise<ServeBenchReport> {
  const log = o.log ?? ((l: string) => console.error(l));
  const print = o.print ?? ((t: string) => process.stdout.write(t + '\n'));
  const modes = [o.rate !== undefined, o.concurrency !== undefined, o.rates !== undefined].filter(Boolean).length;
  if (modes > 1) throw new Error('give one of --rate, --concurrency, --rates');
  if (modes === 0 && !o.trace) throw new Error('give --rate, --concurrency, --rates, or --trace (arrivals from the trace)');

  let models: ModelInfo[] = [];
  try {
    models = await listModels(o.url, o.signal);
  } catch (e) {
    if (!o.model) throw new Error(`cannot list the server's models (${(e as Error).message}); is it running at ${o.url}? (--model skips the lookup)`);
    log(`warning: ${(e as Error).message}; using --model ${o.model}`);
  }
  const model = o.model ?? models[0]?.id;
  if (!model) throw new Error('the server lists no model');
  const maxContext = o.maxContext ?? models.find((m) => m.id === model)?.contextLength ?? null;
  log(`bench serve: ${o.url}, model ${model}, context ${maxContext ?? 'unknown (lengths not clamped)'}`);

  // request lengths (and trace arrivals, unscaled in time)
  let specs: RequestSpec[];
  let workload: ServeBenchReport['workload'];
  const common = { temperature: o.temperature, seed: o.seed, warmup: o.warmup };
  if (o.trace) {
    const trace = readTrace(o.trace);
    if (trace.requests.length === 0) throw new Error(`${o.trace}: no requests`);
    specs = scaleTrace(trace.requests, { tokenScale: o.tokenScale, maxContext: maxContext ?? undefined });
    specs = specs.slice(0, o.maxRequests);
    workload = {
      source: 'trace',
      trace: { file: o.trace, timeScale: o.timeScale, tokenScale: o.tokenScale, original: summarizeTrace(trace.requests), scaled: summarizeTrace(specs.map((s) => ({ arrival: (s.arrival ?? 0) * o.timeScale, inputTokens: s.inputTokens, outputTokens: s.outputTokens }))) },
      ...common,
    };
  } else {
    let output = o.outputTokens;
    let input = o.inputTokens;
    if (maxContext !== null) {
      output = Math.min(output, maxContext - 1);
      input = Math.min(input, maxContext - output);
    }
    if (input !== o.inputTokens || output !== o.outputTokens) log(`lengths clamped to the context: ${input} input, ${output} output tokens`);
    specs = [{ inputTokens: input, outputTokens: output }];
    workload = { source: 'fixed', inputTokens: input, outputTokens: output, ...common };
  }

  const base: Omit<LoadOptions, 'arrivals' | 'specs'> = {
    url: o.url,
    model,
    durationSeconds: o.durationSeconds,
    maxRequests: o.maxRequests,
    requestTimeoutSeconds: o.requestTimeoutSeconds,
    temperature: o.temperature,
    seed: o.seed,
    signal: o.signal,
    slo: o.slo,
  };

  // trace arrivals scaled in time: by --time-scale, or to each swept rate
  const traceTimes = (timeScale: number) => specs.map((s) => ({ ...s, arrival: (s.arrival ?? 0) * timeScale }));
  const traceRate = (() => {
    const a = specs.map((s) => s.arrival ?? 0);
    return a.length >= 2 && a[a.length - 1] > a[0] ? (a.length - 1) / (a[a.length - 1] - a[0]) : null;
  })();
  const plans: { arrivals: Arrivals; specs: RequestSpec[]; label: string }[] = [];
  if (o.rates) {
    for (const rate of o.rates) {
      if (o.trace) {
        if (traceRate === null || rate === Infinity) throw new Error('a trace sweep needs a trace of at least two distinct arrival times and finite rates');
        plans.push({ arrivals: { kind: 'trace' }, specs: traceTimes(traceRate / rate), label: `trace arrivals rescaled to ${rate} req/s` });
      } else plans.push({ arrivals: { kind: 'poisson', rate }, specs, label: `Poisson ${rate} req/s` });
    }
  } else if (o.rate !== undefined) plans.push({ arrivals: { kind: 'poisson', rate: o.rate }, specs, label: `Poisson ${o.rate} req/s` });
  else if (o.concurrency !== undefined) plans.push({ arrivals: { kind: 'concurrency', concurrency: o.concurrency }, specs, label: `concurrency ${o.concurrency}` });
  else plans.push({ arrivals: { kind: 'trace' }, specs: traceTimes(o.timeScale), label: `trace arrivals x${o.timeScale} in time` });

  for (let i = 0; i < o.warmup && !o.signal?.aborted; i++) {
    const s = specs[i % specs.length];
    const r = await sendCompletion(base, -1 - i, syntheticPrompt(Math.min(s.inputTokens, 16), o.seed + i), Math.min(s.outputTokens, 4), o.seed + i, performance.now());
    if (!r.ok) throw new Error(`the warm-up request failed: ${r.error}: ${r.errorMessage ?? ''}`);
  }

  const runs: RunReport[] = [];
  for (const p of plans) {
    if (o.signal?.aborted) break;
    log(`run: ${p.label}, at most ${o.maxRequests} requests in ${o.durationSeconds} s`);
    const run = await runAndSummarize({ ...base, arrivals: p.arrivals, specs: p.specs });
    runs.push(run);
    print(formatRun(run));
  }

  const report: ServeBenchReport = { tool: 'wgserve bench serve', date: new Date().toISOString(), url: o.url, model, maxContext, workload, runs };
  if (o.json) {
    writeResult(o.json, JSON.stringify(report, (_k, v) => (v === Infinity ? 'Infinity' : v), 2) + '\n');
    log(`wrote ${o.json}`);
  }
  if (o.plot && runs.length > 0) {
    await writeServePlot(o.plot, runs, `wgserve bench serve: ${model} at ${o.url}`);
    log(`wrote ${o.plot}`);
  }
  return report;
}

import type { TopLevelSpec } from 'vega-lite';
import { Engine, type SamplingOptions } from '../src/engine/engine.ts';
import { warmUp } from '../src/engine/generate.ts';
import type { ServingEngine } from '../src/engine/serving.ts';
import type { DeviceMode } from '../src/gpu/adapter.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import type { ModelSource } from '../src/model/source.ts';
import { quantile } from '../src/sim/trace.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { Cluster } from '../src/workers/cluster.ts';
import { ChildProcessPlane } from '../src/workers/control.ts';
import { KvReceiver, KvSender, type TransferResult } from '../src/workers/kv_transfer.ts';
import { modelFingerprint } from '../src/workers/protocol.ts';

/**
 * Disaggregation benchmark, colocated (one Engine in this process, on this process's device)
 * against disaggregated (one prefill and one decode worker process, KV over loopback TCP):
 *
 * 1. Handover cost vs prompt length: TTFT, and the gap from the first token to the second (in
 *    disaggregated serving the first token comes from the prefill worker; the KV transfer and the
 *    decode worker's first step sit in that gap), with the KV bytes and the times the prefill
 *    worker measures: first frame to acknowledgement (overlapping the prefill of later layers)
 *    and last layer on the host to acknowledgement (what is left exposed). The data plane alone:
 *    the same bytes, already on the host, sent over loopback TCP into this process's engine
 *    (framing, TCP, GPU upload, adoption) and their rate.
 * 2. Interference: decodes are running when long prompts arrive. Colocated, the prompts' chunks
 *    share steps with the decodes and stretch their inter-token times; disaggregated, they run on
 *    the prefill worker. The inter-token gaps of the running decodes while prompts arrive are the
 *    result (on a software device both workers also share the CPU cores, which is interference of
 *    its own: read those numbers as such).
 */

export interface DisaggBenchOptions {
  model: string;
  source: ModelSource;
  device: DeviceMode;
  kvMemory: number;
  promptLengths: number[];
  /** requests per prompt length and mode */
  repeats: number;
  /** interference: decoding requests, their output tokens; long prompts, their length, spacing */
  decoders: number;
  decodeTokens: number;
  longPrompts: number;
  longPromptTokens: number;
  intervalMs: number;
  seed: number;
  log: (line: string) => void;
}

export interface TransferRow {
  promptTokens: number;
  colocatedTtftMs: number;
  disaggregatedTtftMs: number;
  colocatedSecondTokenMs: number;
  disaggregatedSecondTokenMs: number;
  kvBytes: number;
  /** first frame to acknowledgement */
  streamMs: number;
  /** last layer on the host to acknowledgement */
  exposedMs: number;
  /** the data plane alone: host bytes to acknowledgement, and the rate */
  dataPlaneMs: number;
  dataPlaneMBps: number;
}

export interface InterferenceRow {
  mode: 'colocated' | 'disaggregated';
  /** inter-token gaps of the running decodes from the first long prompt's arrival to the end */
  gaps: number;
  tpotMeanMs: number;
  tpotP50Ms: number;
  tpotP90Ms: number;
  tpotMaxMs: number;
  /** TTFT of the long prompts, median */
  longPromptTtftMs: number;
  /** every gap, for the plot: ms since the first long prompt, gap ms */
  series: { atMs: number; gapMs: number }[];
}

export interface DisaggBenchReport {
  date: string;
  device: string;
  isSoftware: boolean;
  model: string;
  transfer: TransferRow[];
  interference: { decoders: number; decodeTokens: number; longPrompts: number; longPromptTokens: number; intervalMs: number; rows: InterferenceRow[] };
}

const median = (xs: number[]) => quantile([...xs].sort((a, b) => a - b), 0.5);
const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });

/** Submits one request and resolves with its token times (ms, performance.now()) and submit time. */
function timed(engine: ServingEngine, prompt: number[], maxTokens: number): Promise<{ t0: number; times: number[] }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const times: number[] = [];
    engine.submit({
      prompt,
      sampling: greedy(maxTokens),
      events: {
        onToken: () => times.push(performance.now()),
        onFinish: (reason, _u, err) => (err || reason === 'error' ? reject(err ?? new Error(reason)) : resolve({ t0, times })),
      },
    });
  });
}

export async function runDisaggBench(gpu: Gpu, o: DisaggBenchOptions): Promise<DisaggBenchReport> {
  const { source } = o;
  const rand = mulberry32(o.seed);
  const vocab = source.config.vocabSize;
  const bos = source.tokenizer.vocab.bos ?? 1;
  // random ids above the special tokens: prompt lengths exactly as asked
  const promptOf = (n: number) => [bos, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(rand() * (vocab - 3)))];
  const maxLength = Math.max(...o.promptLengths, o.longPromptTokens) + o.decodeTokens + 2;
  if (maxLength > source.config.contextLength) throw new Error(`prompts of ${maxLength} tokens exceed the model's context (${source.config.contextLength})`);

  const model = GpuModel.load(gpu, source, { kvMemoryBytes: o.kvMemory });
  await warmUp(model, source.tokenizer);
  const colocated = new Engine(model, source.tokenizer);
  const args = ['--model', o.model, '--device', o.device, '--kv-memory', String(o.kvMemory)];
  const plane = new ChildProcessPlane([{ role: 'prefill', args }, { role: 'decode', args }]);
  const cluster = new Cluster({ plane, tokenizer: source.tokenizer, config: source.config, fingerprint: modelFingerprint(source), log: o.log });
  const transfers: TransferResult[] = [];
  cluster.onTransfer = (t) => transfers.push(t);
  try {
    await cluster.ready({ prefill: 1, decode: 1 }, 180_000);
    const engines = { colocated, disaggregated: cluster } as const;

    const transfer: TransferRow[] = [];
    for (const n of o.promptLengths) {
      const row: Partial<TransferRow> = { promptTokens: n };
      for (const [mode, engine] of Object.entries(engines)) {
        const ttft: number[] = [];
        const second: number[] = [];
        transfers.length = 0;
        for (let r = 0; r < o.repeats; r++) {
          const { t0, times } = await timed(engine, promptOf(n), 2);
          ttft.push(times[0] - t0);
          second.push(times[1] - times[0]);
        }
        if (mode === 'colocated') {
          row.colocatedTtftMs = median(ttft);
          row.colocatedSecondTokenMs = median(second);
        } else {
          row.disaggregatedTtftMs = median(ttft);
          row.disaggregatedSecondTokenMs = median(second);
          row.kvBytes = median(transfers.map((t) => t.bytes));
          row.streamMs = median(transfers.map((t) => t.seconds * 1e3));
          row.exposedMs = median(transfers.map((t) => t.exposedSeconds * 1e3));
        }
      }
      const alone: number[] = [];
      for (let r = 0; r < o.repeats; r++) alone.push(await dataPlaneMs(colocated, source, n));
      row.dataPlaneMs = median(alone);
      row.dataPlaneMBps = row.kvBytes! / 1e6 / (row.dataPlaneMs / 1e3);
      o.log(
        `prompt ${n}: TTFT ${row.colocatedTtftMs!.toFixed(1)} / ${row.disaggregatedTtftMs!.toFixed(1)} ms, second token ${row.colocatedSecondTokenMs!.toFixed(1)} / ${row.disaggregatedSecondTokenMs!.toFixed(1)} ms (colocated / disaggregated); ` +
          `KV ${row.kvBytes} B, streamed ${row.streamMs!.toFixed(1)} ms, exposed ${row.exposedMs!.toFixed(1)} ms; data plane alone ${row.dataPlaneMs.toFixed(1)} ms (${row.dataPlaneMBps.toFixed(1)} MB/s)`,
      );
      transfer.push(row as TransferRow);
    }

    const rows: InterferenceRow[] = [];
    for (const [mode, engine] of Object.entries(engines) as [InterferenceRow['mode'], ServingEngine][]) {
      const decoders = Array.from({ length: o.decoders }, () => timed(engine, promptOf(8), o.decodeTokens));
      // let every decoder reach steady decoding, then send the long prompts
      await new Promise((r) => setTimeout(r, 0));
      while (engine.running < o.decoders) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 200));
      const start = performance.now();
      const longs: Promise<{ t0: number; times: number[] }>[] = [];
      for (let i = 0; i < o.longPrompts; i++) {
        longs.push(timed(engine, promptOf(o.longPromptTokens), 1));
        await new Promise((r) => setTimeout(r, o.intervalMs));
      }
      const [done, longDone] = await Promise.all([Promise.all(decoders), Promise.all(longs)]);
      const series: { atMs: number; gapMs: number }[] = [];
      for (const { times } of done) for (let i = 1; i < times.length; i++) if (times[i - 1] >= start) series.push({ atMs: times[i] - start, gapMs: times[i] - times[i - 1] });
      const gaps = series.map((s) => s.gapMs).sort((a, b) => a - b);
      const row: InterferenceRow = {
        mode,
        gaps: gaps.length,
        tpotMeanMs: gaps.reduce((a, b) => a + b, 0) / Math.max(1, gaps.length),
        tpotP50Ms: quantile(gaps, 0.5),
        tpotP90Ms: quantile(gaps, 0.9),
        tpotMaxMs: gaps.at(-1) ?? NaN,
        longPromptTtftMs: median(longDone.map((l) => l.times[0] - l.t0)),
        series,
      };
      o.log(`interference, ${mode}: TPOT mean ${row.tpotMeanMs.toFixed(1)} ms, p90 ${row.tpotP90Ms.toFixed(1)} ms, max ${row.tpotMaxMs.toFixed(1)} ms over ${row.gaps} gaps; long-prompt TTFT ${row.longPromptTtftMs.toFixed(0)} ms`);
      rows.push(row);
    }
    return {
      date: new Date().toISOString(),
      device: gpu.adapter.description,
      isSoftware: gpu.adapter.isSoftware,
      model: o.model,
      transfer,
      interference: { decoders: o.decoders, decodeTokens: o.decodeTokens, longPrompts: o.longPrompts, longPromptTokens: o.longPromptTokens, intervalMs: o.intervalMs, rows },
    };
  } finally {
    await colocated.idle();
    await cluster.close();
    model.destroy();
  }
}

/**
 * The data plane alone: KV of `tokens` tokens (random, already on the host) from a KvSender to a
 * KvReceiver in this process over loopback TCP, written into `engine`'s cache and adopted (the
 * sequence ends at once: it asks for no more tokens); milliseconds to the acknowledgement.
 */
async function dataPlaneMs(engine: Engine, source: ModelSource, tokens: number): Promise<number> {
  const fingerprint = modelFingerprint(source);
  const receiver = new KvReceiver({
    engine,
    workerId: 'bench',
    fingerprint,
    log: () => {},
    adopt: (spec, kv) => {
      engine.adopt({ prompt: spec.prompt, generated: spec.generated, sampling: spec.sampling }, kv);
      return null;
    },
  });
  const address = await receiver.listen('127.0.0.1', 0);
  const sender = new KvSender({ workerId: 'bench', fingerprint, log: () => {} });
  try {
    const { nLayers, nKvHeads, headDim } = source.config;
    const bytes = tokens * nKvHeads * headDim * 4;
    const layer = () => ({ k: new Float32Array(bytes / 4).map(Math.random).buffer, v: new Float32Array(bytes / 4).map(Math.random).buffer });
    const layers = Array.from({ length: nLayers }, layer);
    const transfer = sender.begin({ id: 'bench', address });
    const t0 = performance.now();
    transfer.stream(tokens, tokens * nKvHeads, layers.map((l) => Promise.resolve(l)));
    await transfer.finish({ rid: 0, attempt: 1, prompt: Array.from({ length: tokens }, () => 1), generated: [1], sampling: greedy(1) });
    return performance.now() - t0;
  } finally {
    sender.close();
    await receiver.close();
  }
}

const f = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

export function disaggBenchMarkdown(r: DisaggBenchReport): string {
  const i = r.interference;
  return [
    `Device: ${r.device}${r.isSoftware ? ' (software: timings say nothing about GPUs, and all processes share the CPU cores)' : ''}; model ${r.model.split('/').pop()}; ${r.date.slice(0, 10)}.`,
    '',
    '**KV handover vs prompt length** (medians; colocated / disaggregated)',
    '',
    '| prompt tokens | TTFT ms | first-to-second token ms | KV bytes | streamed ms (first frame to ack) | exposed ms (last layer to ack) | data plane alone ms | data plane MB/s |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.transfer.map(
      (t) =>
        `| ${t.promptTokens} | ${f(t.colocatedTtftMs)} / ${f(t.disaggregatedTtftMs)} | ${f(t.colocatedSecondTokenMs)} / ${f(t.disaggregatedSecondTokenMs)} | ${t.kvBytes} | ${f(t.streamMs)} | ${f(t.exposedMs)} | ${f(t.dataPlaneMs)} | ${f(t.dataPlaneMBps)} |`,
    ),
    '',
    `**Interference**: ${i.decoders} running decodes (${i.decodeTokens} tokens each) while ${i.longPrompts} prompts of ${i.longPromptTokens} tokens arrive ${i.intervalMs} ms apart; inter-token gaps of the decodes from the first prompt on`,
    '',
    '| mode | gaps | TPOT mean ms | p50 ms | p90 ms | max ms | long-prompt TTFT ms |',
    '|---|---:|---:|---:|---:|---:|---:|',
    ...i.rows.map((x) => `| ${x.mode} | ${x.gaps} | ${f(x.tpotMeanMs)} | ${f(x.tpotP50Ms)} | ${f(x.tpotP90Ms)} | ${f(x.tpotMaxMs)} | ${f(x.longPromptTtftMs, 0)} |`),
    '',
  ].join('\n');
}

/** Two panels: the decodes' inter-token gaps over time in each mode, and handover time vs prompt length. */
export function disaggPlotSpec(r: DisaggBenchReport): TopLevelSpec {
  const gaps = r.interference.rows.flatMap((x) => x.series.map((s) => ({ mode: x.mode, atMs: s.atMs, gapMs: s.gapMs })));
  const handover = r.transfer.flatMap((t) => [
    { promptTokens: t.promptTokens, series: 'first-to-second token, colocated', ms: t.colocatedSecondTokenMs },
    { promptTokens: t.promptTokens, series: 'first-to-second token, disaggregated', ms: t.disaggregatedSecondTokenMs },
    { promptTokens: t.promptTokens, series: 'KV exposed (last layer to ack)', ms: t.exposedMs },
    { promptTokens: t.promptTokens, series: 'data plane alone', ms: t.dataPlaneMs },
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `Disaggregation on ${r.device}`,
    background: 'white',
    resolve: { scale: { color: 'independent' } },
    hconcat: [
      {
        title: 'Inter-token gaps of running decodes while long prompts arrive',
        width: 380,
        height: 240,
        data: { values: gaps },
        mark: { type: 'point', filled: true, size: 14, opacity: 0.6 },
        encoding: {
          x: { field: 'atMs', type: 'quantitative', title: 'ms since the first long prompt' },
          y: { field: 'gapMs', type: 'quantitative', title: 'inter-token gap (ms)' },
          color: { field: 'mode', type: 'nominal', title: 'mode' },
        },
      },
      {
        title: 'Handover vs prompt length',
        width: 300,
        height: 240,
        data: { values: handover },
        mark: { type: 'line', point: true },
        encoding: {
          x: { field: 'promptTokens', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'prompt tokens' },
          y: { field: 'ms', type: 'quantitative', title: 'ms' },
          color: { field: 'series', type: 'nominal', title: 'series' },
        },
      },
    ],
  } as TopLevelSpec;
}

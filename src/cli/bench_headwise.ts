import {
  type HeadwiseBenchOptions,
  type HeadwiseReport,
  type HeadwiseTimingReport,
  headwiseMarkdown,
  headwiseTimingMarkdown,
  headwiseTimingShapes,
  runHeadwiseBench,
  runHeadwiseTiming,
} from '../../bench/headwise.ts';
import { type QualityReport, headwiseQualityMarkdown, runHeadwiseQuality } from '../../bench/headwise_quality.ts';
import { type HeadwiseServeOptions, type HeadwiseServeReport, headwiseServeMarkdown, runHeadwiseServe, servedKvLayout } from '../../bench/headwise_serve.ts';
import { setMaxListeners } from 'node:events';
import { updateDocSection, writeResult } from '../../bench/results.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { openModel } from '../model/source.ts';
import { DEFAULT_RECENT, DEFAULT_SINK } from '../kv/head_pattern.ts';
import { blockBytes } from '../kv/paged_kv.ts';

/** --serve: the pattern (default: equal gates, so --retrieval-fraction, default 0.25, takes heads in order) and the load, per configuration */
type ServeFlags = Pick<HeadwiseServeOptions, 'headPattern' | 'retrievalFraction' | 'gateThreshold' | 'inputTokens' | 'outputTokens' | 'requests' | 'concurrency' | 'rounds' | 'maxBatch'>;

export interface BenchHeadwiseOptions extends Omit<HeadwiseBenchOptions, 'kvMemory' | 'sink' | 'recent'>, ServeFlags {
  /** default: 40 GiB for the memory tables; with --serve, what holds a quarter of --concurrency full-cache sequences */
  kvMemory?: number;
  /** default 64 and 256; with --serve 4 and 32 (a window the embedded model's short requests pass) */
  sink?: number;
  recent?: number;
  json?: string;
  markdown?: string;
  updateDocs: boolean;
  /** also time decode attention on a device */
  timing: boolean;
  timingContexts: number[];
  /** sequences per decode step; default 1 on a software device, 8 on a GPU */
  batch?: number;
  device: DeviceMode;
  /** instead: fidelity against full attention on a real model (greedy agreement, KL) */
  quality: boolean;
  model?: string;
  /** --quality: new tokens per greedy continuation */
  maxTokens: number;
  /** instead: served throughput of `wgserve serve` with and without a pattern at one --kv-memory */
  serve: boolean;
}

/** `wgserve bench headwise --quality`: greedy-token agreement and logit KL of patterns against full attention. */
async function benchQuality(o: BenchHeadwiseOptions): Promise<QualityReport> {
  const gpu = await Gpu.open({ mode: o.device });
  let report: QualityReport;
  try {
    const src = await openModel(o.model ?? DEFAULT_MODEL);
    const options = { fractions: o.fractions, sink: o.sink ?? DEFAULT_SINK, recent: o.recent ?? DEFAULT_RECENT, maxTokens: o.maxTokens, randomPatterns: 2, seed: o.seed, chunk: 64 };
    report = await runHeadwiseQuality(gpu, src, options, (r) =>
      console.error(`  retrieval ${r.retrievalHeads}/${r.kvHeads} ${r.pattern.padEnd(14)} agreement ${(100 * r.agreement).toFixed(1)}% (past window ${(100 * r.agreementPastWindow).toFixed(1)}%), mean KL ${r.meanKl.toExponential(2)}`),
    );
  } finally {
    gpu.destroy();
  }
  const markdown = headwiseQualityMarkdown(report);
  if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
  if (o.markdown) writeResult(o.markdown, markdown);
  if (o.updateDocs) updateDocSection('headwise-quality', () => `\n${markdown}`);
  if (!o.json && !o.markdown) process.stdout.write(markdown);
  return report;
}

/**
 * `wgserve bench headwise --serve`: `wgserve serve` with the full cache, then with the pattern, under
 * the same closed-loop load at one --kv-memory (bench/headwise_serve.ts). The default budget holds
 * a quarter of --concurrency full-cache sequences, so the full cache limits concurrency.
 */
async function benchServeHeadwise(o: BenchHeadwiseOptions): Promise<HeadwiseServeReport> {
  const model = o.model ?? DEFAULT_MODEL;
  const config = (await openModel(model)).config;
  const layout = servedKvLayout(config);
  const fullBlocks = config.nKvHeads * Math.ceil((o.inputTokens + o.outputTokens) / layout.blockSize);
  const kvMemory = o.kvMemory ?? Math.max(1, Math.floor(o.concurrency / 4)) * fullBlocks * blockBytes(layout);
  const retrievalFraction = o.retrievalFraction ?? (o.gateThreshold === undefined ? 0.25 : undefined);
  const aborted = new AbortController();
  // every request in flight listens to it
  setMaxListeners(o.concurrency + 16, aborted.signal);
  const onSignal = () => aborted.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let report: HeadwiseServeReport;
  try {
    report = await runHeadwiseServe({
      model: o.model,
      config,
      kvMemory,
      headPattern: o.headPattern,
      retrievalFraction,
      gateThreshold: o.gateThreshold,
      sink: o.sink ?? 4,
      recent: o.recent ?? 32,
      inputTokens: o.inputTokens,
      outputTokens: o.outputTokens,
      requests: o.requests,
      concurrency: o.concurrency,
      rounds: o.rounds,
      maxBatch: o.maxBatch,
      device: o.device,
      seed: o.seed,
      sampleMs: 250,
      requestTimeoutSeconds: 600,
      log: (l) => console.error(l),
      signal: aborted.signal,
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const markdown = headwiseServeMarkdown(report);
  if (o.json) writeResult(o.json, JSON.stringify(report, (_k, v) => (v === Infinity ? 'Infinity' : v), 2) + '\n');
  if (o.markdown) writeResult(o.markdown, markdown);
  if (!o.json && !o.markdown) process.stdout.write(markdown);
  return report;
}

/**
 * `wgserve bench headwise`: the memory side of head-wise KV (no device needed) and, with
 * --timing, decode attention time on the device. --update-docs writes the memory tables (with a
 * software device's timing) into the headwise-software section, a GPU's timing into headwise-gpu.
 */
export async function benchHeadwise(o: BenchHeadwiseOptions): Promise<(HeadwiseReport & { timing?: HeadwiseTimingReport }) | QualityReport | HeadwiseServeReport> {
  if (o.quality && o.serve) throw new Error('--quality and --serve: give one');
  if (o.quality) return benchQuality(o);
  if (o.serve) return benchServeHeadwise(o);
  const { json, markdown: md, updateDocs, timing: withTiming, timingContexts, batch, device, fractions, blockSize, bytesPerElement, seed, contexts } = o;
  const options = { fractions, blockSize, bytesPerElement, seed, contexts, kvMemory: o.kvMemory ?? 40 * 2 ** 30, sink: o.sink ?? DEFAULT_SINK, recent: o.recent ?? DEFAULT_RECENT };
  const report = runHeadwiseBench(options);
  const markdown = headwiseMarkdown(report);
  for (const g of report.goals) console.error(`${g.what}: ${g.reduction.toFixed(2)}x (goal ${g.goal}x) ${g.met ? 'met' : 'NOT met'}`);
  let timing: HeadwiseTimingReport | undefined;
  if (withTiming) {
    const gpu = await Gpu.open({ mode: device });
    try {
      const software = gpu.adapter.isSoftware;
      console.error(`bench headwise: decode attention on ${gpu.adapter.description}${software ? ' (software device)' : ''}`);
      const t = { contexts: timingContexts, fractions, sink: options.sink, recent: options.recent, batch: batch ?? (software ? 1 : 8), seed: o.seed, scale: software ? ('reduced' as const) : ('full' as const) };
      timing = await runHeadwiseTiming(gpu, t, headwiseTimingShapes(software), (r) =>
        console.error(`  ${r.model.padEnd(14)} ctx=${String(r.context).padStart(6)} retrieval ${r.retrievalHeads}/${r.kvHeads} ${r.microseconds.toFixed(1).padStart(10)} µs ${r.speedup.toFixed(2)}x`),
      );
    } finally {
      gpu.destroy();
    }
    for (const g of timing.goals) console.error(`${g.what}: ${g.speedup.toFixed(2)}x faster decode attention (goal ${g.goal}x on a GPU)`);
  }
  const timingMd = timing ? headwiseTimingMarkdown(timing) : '';
  const all = timing ? `${markdown}\n${timingMd}` : markdown;
  const result = timing ? { ...report, timing } : report;
  if (json) writeResult(json, JSON.stringify(result, null, 2) + '\n');
  if (md) writeResult(md, all);
  // a GPU's timing has a section of its own; the memory tables are the same on every device
  if (updateDocs) updateDocSection(timing && !timing.software ? 'headwise-gpu' : 'headwise-software', () => `\n${timing && !timing.software ? timingMd : all}`);
  if (!json && !md) process.stdout.write(all);
  return result;
}

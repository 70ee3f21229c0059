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
import { updateDocSection, writeResult } from '../../bench/results.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { openModel } from '../model/source.ts';

export interface BenchHeadwiseOptions extends HeadwiseBenchOptions {
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
}

/** `wgserve bench headwise --quality`: greedy-token agreement and logit KL of patterns against full attention. */
async function benchQuality(o: BenchHeadwiseOptions): Promise<QualityReport> {
  const gpu = await Gpu.open({ mode: o.device });
  let report: QualityReport;
  try {
    const src = await openModel(o.model ?? DEFAULT_MODEL);
    const options = { fractions: o.fractions, sink: o.sink, recent: o.recent, maxTokens: o.maxTokens, randomPatterns: 2, seed: o.seed, chunk: 64 };
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
 * `wgserve bench headwise`: the memory side of head-wise KV (no device needed) and, with
 * --timing, decode attention time on the device. --update-docs writes the memory tables (with a
 * software device's timing) into the headwise-software section, a GPU's timing into headwise-gpu.
 */
export async function benchHeadwise(o: BenchHeadwiseOptions): Promise<(HeadwiseReport & { timing?: HeadwiseTimingReport }) | QualityReport> {
  if (o.quality) return benchQuality(o);
  const { json, markdown: md, updateDocs, timing: withTiming, timingContexts, batch, device, quality: _q, model: _m, maxTokens: _t, ...options } = o;
  const report = runHeadwiseBench(options);
  const markdown = headwiseMarkdown(report);
  for (const g of report.goals) console.error(`${g.what}: ${g.reduction.toFixed(2)}x (goal ${g.goal}x) ${g.met ? 'met' : 'NOT met'}`);
  let timing: HeadwiseTimingReport | undefined;
  if (withTiming) {
    const gpu = await Gpu.open({ mode: device });
    try {
      const software = gpu.adapter.isSoftware;
      console.error(`bench headwise: decode attention on ${gpu.adapter.description}${software ? ' (software device)' : ''}`);
      const t = { contexts: timingContexts, fractions: o.fractions, sink: o.sink, recent: o.recent, batch: batch ?? (software ? 1 : 8), seed: o.seed, scale: software ? ('reduced' as const) : ('full' as const) };
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

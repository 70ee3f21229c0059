import { type DisaggBenchReport, disaggBenchMarkdown, disaggPlotSpec, runDisaggBench } from '../../bench/disagg.ts';
import { updateBenchmarksDoc, writeResult } from '../../bench/results.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { openModel } from '../model/source.ts';
import { writeSvgPlot } from '../util/output.ts';

export interface BenchDisaggOptions {
  model?: string;
  promptLengths: number[];
  repeats: number;
  decoders: number;
  decodeTokens: number;
  longPrompts: number;
  longPromptTokens: number;
  interval: number;
  kvMemory: number;
  seed: number;
  device: DeviceMode;
  json?: string;
  markdown?: string;
  plot?: string;
  updateDocs: boolean;
}

/** `wgserve bench disagg`: see bench/disagg.ts. */
export async function benchDisagg(o: BenchDisaggOptions): Promise<DisaggBenchReport> {
  const model = o.model ?? DEFAULT_MODEL;
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const source = await openModel(model);
    console.error(`bench disagg on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}: ${model}`);
    const report = await runDisaggBench(gpu, { ...o, model, source, intervalMs: o.interval, log: (line) => console.error(line) });
    const markdown = disaggBenchMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.plot) await writeSvgPlot(o.plot, disaggPlotSpec(report));
    if (o.updateDocs) {
      const plot = o.plot ? `\n![disaggregation plot](${o.plot.replace(/^.*?bench\//, '../bench/')})\n` : '';
      updateBenchmarksDoc(report.isSoftware ? 'disagg-software' : 'disagg-gpu', () => `\n${markdown}${plot}\n`);
    }
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

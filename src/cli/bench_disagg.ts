import { type DisaggBenchOptions, type DisaggBenchReport, disaggBenchMarkdown, disaggPlotSpec, runDisaggBench } from '../../bench/disagg.ts';
import { updateDocSection, writeResult } from '../../bench/results.ts';
import { Gpu } from '../gpu/gpu.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { openModel } from '../model/source.ts';
import { writeSvgPlot } from '../util/output.ts';

export type BenchDisaggOptions = Omit<DisaggBenchOptions, 'model' | 'source' | 'intervalMs' | 'log'> & {
  /** default: the embedded model */
  model?: string;
  /** ms between long prompts */
  interval: number;
  json?: string;
  markdown?: string;
  plot?: string;
  updateDocs: boolean;
};

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
      updateDocSection(report.isSoftware ? 'disagg-software' : 'disagg-gpu', () => `\n${markdown}${plot}\n`);
    }
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

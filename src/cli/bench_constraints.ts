import { type ConstraintBenchReport, constraintBenchMarkdown, runConstraintBench } from '../../bench/constraints.ts';
import { updateDocSection, writeResult } from '../../bench/results.ts';
import type { BenchScale } from '../../bench/shapes.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';

export interface BenchConstraintsOptions {
  device: DeviceMode;
  sizes: number[];
  vocabs: number[];
  batches: number[];
  length: number;
  pointerMax: number;
  /** batch sizes of the decode steps compared with; default: the sweep's (those up to 8 on a software device) */
  modelBatches?: number[];
  /** skip the decode-step comparison */
  models: boolean;
  scale: BenchScale | 'auto';
  seed: number;
  json?: string;
  markdown?: string;
  updateDocs: boolean;
}

export async function benchConstraints(o: BenchConstraintsOptions): Promise<ConstraintBenchReport> {
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const software = gpu.adapter.isSoftware;
    const scale: BenchScale = o.scale === 'auto' ? (software ? 'reduced' : 'full') : o.scale;
    console.error(`bench constraints on ${gpu.adapter.description}${software ? ' (software device)' : ''}: sets ${o.sizes.join(',')}, vocab ${o.vocabs.join(',')}, batch ${o.batches.join(',')}`);
    // decode steps take seconds on a software device (a 4-token prompt per sequence even so)
    const stepBatches = o.modelBatches ?? (scale === 'full' ? o.batches : o.batches.filter((b) => b <= 8));
    const models = o.models
      ? [
          { model: 'stories260k', dtype: 'f32' as const, batches: stepBatches },
          { model: 'llama-3.2-1b', dtype: 'q4_0' as const, batches: stepBatches },
        ].filter((m) => m.batches.length > 0)
      : [];
    const report = await runConstraintBench(gpu, { ...o, scale, models, log: (line) => console.error(line) });
    const markdown = constraintBenchMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.updateDocs) updateDocSection(software ? 'constraints-software' : 'constraints-gpu', () => `\n${markdown}`);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

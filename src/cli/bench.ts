import { type KernelBenchReport, kernelBenchMarkdown, runKernelBench } from '../../bench/kernels.ts';
import { updateDocSection, writeResult } from '../../bench/results.ts';
import type { BenchScale } from '../../bench/shapes.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';

export interface BenchKernelsOptions {
  device: DeviceMode;
  scale: BenchScale | 'auto';
  filter?: string;
  json?: string;
  markdown?: string;
  updateDocs: boolean;
}

export async function benchKernels(o: BenchKernelsOptions): Promise<KernelBenchReport> {
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const scale: BenchScale = o.scale === 'auto' ? (gpu.adapter.isSoftware ? 'reduced' : 'full') : o.scale;
    console.error(`bench kernels on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}, ${scale} shapes`);
    const report = await runKernelBench(gpu, {
      scale,
      filter: o.filter ? new RegExp(o.filter) : undefined,
      onResult: (r) =>
        console.error(`  ${r.family.padEnd(18)} ${r.name.padEnd(60)} ${r.medianUs.toFixed(1).padStart(10)} µs ${r.gbps.toFixed(2).padStart(9)} GB/s ${r.gflops.toFixed(2).padStart(10)} GFLOP/s`),
    });
    const markdown = kernelBenchMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.updateDocs) updateDocs(report, markdown);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

/** Replaces the software- or GPU-device section of docs/benchmarks.md with this run's table. */
function updateDocs(report: KernelBenchReport, markdown: string): void {
  updateDocSection(report.adapter.isSoftware ? 'kernels-software' : 'kernels-gpu', () => `\n${markdown}`);
}

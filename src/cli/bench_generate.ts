import { type GenerateBenchReport, generateBenchMarkdown, generateRunMarkdown, mergeRunBlocks, runGenerateBench, runKey } from '../../bench/generate.ts';
import { updateDocSection, writeResult } from '../../bench/results.ts';
import type { BenchScale } from '../../bench/shapes.ts';
import type { WeightFormat } from '../../kernels/weights.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';

export interface BenchGenerateOptions {
  device: DeviceMode;
  /** MODEL_SHAPES keys */
  models: string[];
  dtypes: WeightFormat[];
  batches: number[];
  scale: BenchScale | 'auto';
  /** default: 128 at full scale, 16 reduced */
  promptTokens?: number;
  /** default: 32 at full scale, 8 reduced */
  decodeTokens?: number;
  seed: number;
  json?: string;
  markdown?: string;
  updateDocs: boolean;
}

export async function benchGenerate(o: BenchGenerateOptions): Promise<GenerateBenchReport> {
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const scale: BenchScale = o.scale === 'auto' ? (gpu.adapter.isSoftware ? 'reduced' : 'full') : o.scale;
    const promptTokens = o.promptTokens ?? (scale === 'full' ? 128 : 16);
    const decodeTokens = o.decodeTokens ?? (scale === 'full' ? 32 : 8);
    console.error(
      `bench generate on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}, ${scale === 'full' ? 'full' : 'REDUCED (width / 8)'} shapes, ` +
        `batch ${o.batches.join(',')}, ${promptTokens} prompt + ${decodeTokens} decode tokens`,
    );
    const runs = o.models.flatMap((model) => o.dtypes.map((dtype) => ({ model, dtype, scale, batches: o.batches, promptTokens, decodeTokens, seed: o.seed })));
    const report = await runGenerateBench(gpu, runs, (line) => console.error(line));
    const markdown = generateBenchMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.updateDocs) updateDocs(report);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

/** Replaces (or adds) this run's blocks in the software- or GPU-device section of docs/benchmarks.md. */
function updateDocs(report: GenerateBenchReport): void {
  const tag = report.adapter.isSoftware ? 'generate-software' : 'generate-gpu';
  const blocks = report.runs.map((r) => ({ key: runKey(r), markdown: generateRunMarkdown(report, r) }));
  updateDocSection(tag, (body) => mergeRunBlocks(body, blocks));
}

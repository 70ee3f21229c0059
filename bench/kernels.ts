import { FLOPS_PER_ITER, PEAK_WG, peakFlops } from '../kernels/peak_flops.ts';
import type { AdapterSummary, GpuFeatures } from '../src/gpu/adapter.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { type BenchCase, L2_BYTES, type PreparedCase } from './case.ts';
import { CASE_FACTORIES } from './cases/index.ts';
import { measureCopyBandwidth } from './cases/copy.ts';
import type { BenchScale } from './shapes.ts';
import { timeRuns } from './timing.ts';

export interface KernelResult {
  family: string;
  name: string;
  computeBound: boolean;
  /** median time of one run, microseconds */
  medianUs: number;
  gbps: number;
  gflops: number;
  /** achieved bytes/s over the copy kernel's bytes/s in the same run */
  bandwidthFraction: number;
  /** achieved FLOP/s over the FMA probe's, reported for compute-bound cases only */
  flopFraction: number | null;
  /** copies of the weights the runs rotated among (PreparedCase.weightCopies) */
  weightCopies: number;
}

export interface KernelBenchReport {
  adapter: AdapterSummary;
  features: GpuFeatures;
  scale: BenchScale;
  date: string;
  /** how times were taken: GPU timestamp queries, or wall clock around submit */
  timing: 'gpu-timestamps' | 'wall-clock';
  copyBandwidthGBs: number;
  peakGflops: number;
  results: KernelResult[];
}

export interface KernelBenchOptions {
  scale: BenchScale;
  /** only cases whose "family name" matches */
  filter?: RegExp;
  /** called as each case finishes (progress output) */
  onResult?: (r: KernelResult) => void;
}

/** Every registered family's cases (bench/cases/index.ts), in family-name order. */
export function loadCases(scale: BenchScale): BenchCase[] {
  return Object.keys(CASE_FACTORIES)
    .sort()
    .flatMap((family) => CASE_FACTORIES[family](scale));
}

/** FLOP/s of the FMA-chain probe: the device's attainable arithmetic rate, measured in this run. */
export async function measurePeakFlops(gpu: Gpu, scale: BenchScale): Promise<number> {
  const workgroups = scale === 'full' ? 8192 : 64;
  const iters = scale === 'full' ? 2048 : 256;
  const out = gpu.createBuffer(workgroups * PEAK_WG * 4);
  const seconds = await timeRuns(gpu, (step) => peakFlops(step, { out, workgroups, iters }), scale);
  out.destroy();
  return (workgroups * PEAK_WG * iters * FLOPS_PER_ITER) / seconds;
}

export async function runKernelBench(gpu: Gpu, options: KernelBenchOptions): Promise<KernelBenchReport> {
  const { scale } = options;
  const copyBytesPerSecond = await measureCopyBandwidth(gpu, scale);
  const peakFlopsPerSecond = await measurePeakFlops(gpu, scale);
  const results: KernelResult[] = [];
  for (const c of loadCases(scale)) {
    if (options.filter && !options.filter.test(`${c.family} ${c.name}`)) continue;
    let prepared: PreparedCase | null = null;
    try {
      prepared = c.setup(gpu);
      const p = prepared;
      const seconds = await timeRuns(gpu, (step, index) => p.run(step, index), scale);
      const bytesPerSecond = p.bytes / seconds;
      const flopsPerSecond = p.flops / seconds;
      const result: KernelResult = {
        family: c.family,
        name: c.name,
        computeBound: c.computeBound ?? false,
        medianUs: seconds * 1e6,
        gbps: bytesPerSecond / 1e9,
        gflops: flopsPerSecond / 1e9,
        bandwidthFraction: bytesPerSecond / copyBytesPerSecond,
        flopFraction: c.computeBound ? flopsPerSecond / peakFlopsPerSecond : null,
        weightCopies: p.weightCopies ?? 1,
      };
      results.push(result);
      options.onResult?.(result);
    } finally {
      prepared?.dispose();
    }
  }
  return {
    adapter: gpu.adapter,
    features: gpu.features,
    scale,
    date: new Date().toISOString(),
    timing: gpu.features.timestampQuery ? 'gpu-timestamps' : 'wall-clock',
    copyBandwidthGBs: copyBytesPerSecond / 1e9,
    peakGflops: peakFlopsPerSecond / 1e9,
    results,
  };
}

const pct = (x: number | null) => (x === null ? '' : `${(100 * x).toFixed(1)}%`);
const num = (x: number, digits = 1) => (x >= 100 ? x.toFixed(0) : x.toFixed(digits));

/** The markdown table docs/benchmarks.md quotes. */
export function kernelBenchMarkdown(r: KernelBenchReport): string {
  const device = `${r.adapter.description} (${r.adapter.vendor} ${r.adapter.architecture})${r.adapter.isSoftware ? ', software device' : ''}`;
  const lines = [
    `Device: ${device}. Shapes: ${r.scale === 'full' ? 'full model shapes' : 'REDUCED (test model, and real models scaled down by 8 in width; labelled /8)'}.`,
    `Timing: ${r.timing === 'gpu-timestamps' ? 'GPU timestamp queries (wall clock for steps whose timestamps read 0)' : 'wall clock around submit'}, median per run. ` +
      `Matmul runs rotate among copies of their weights, together over ${L2_BYTES / 2 ** 20} MiB (one copy when a matrix alone is larger), so weights are read from memory, not from L2. Copy kernel bandwidth ${num(r.copyBandwidthGBs)} GB/s; FMA probe ${num(r.peakGflops)} GFLOP/s (both measured in this run, ${r.date.slice(0, 10)}).`,
    '',
    '| family | case | median µs | GB/s | % of copy BW | GFLOP/s | % of FMA peak |',
    '|---|---|---:|---:|---:|---:|---:|',
    ...r.results.map(
      (x) => `| ${x.family} | ${x.name} | ${num(x.medianUs)} | ${num(x.gbps, 2)} | ${pct(x.bandwidthFraction)} | ${num(x.gflops, 2)} | ${pct(x.flopFraction)} |`,
    ),
  ];
  return lines.join('\n') + '\n';
}

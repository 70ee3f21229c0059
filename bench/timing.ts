import type { Gpu } from '../src/gpu/gpu.ts';
import type { Step } from '../src/gpu/step.ts';
import type { BenchScale } from './shapes.ts';

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Median seconds per run of `record` (which records one run into a step; `index` counts the runs
 * recorded so far, so a case can rotate among copies of its inputs). After a warm-up step
 * (pipeline compilation, first touch of buffers), each timed step repeats the run enough times to
 * last ~2-5 ms (at most 64), so that coarse timestamp ticks (SwiftShader's are 65.5 µs) and submit
 * overhead do not dominate. A step's time is its GPU time from timestamp queries, or the wall clock
 * around submit when the device has none (or its timestamps read 0).
 */
export async function timeRuns(gpu: Gpu, record: (step: Step, index: number) => void, scale: BenchScale): Promise<number> {
  let index = 0;
  const once = async (reps: number): Promise<number> => {
    const step = gpu.step({ timestamps: true });
    for (let i = 0; i < reps; i++) record(step, index++);
    const t0 = performance.now();
    const { gpuTimeNs } = await step.submit();
    const seconds = gpuTimeNs !== undefined && gpuTimeNs > 0 ? gpuTimeNs / 1e9 : (performance.now() - t0) / 1e3;
    return seconds / reps;
  };
  await once(1);
  const estimate = await once(1);
  const targetSeconds = scale === 'full' ? 5e-3 : 2e-3;
  const reps = Math.min(64, Math.max(1, Math.ceil(targetSeconds / Math.max(estimate, 1e-9))));
  const samples: number[] = [];
  for (let i = 0; i < (scale === 'full' ? 7 : 3); i++) samples.push(await once(reps));
  return median(samples);
}

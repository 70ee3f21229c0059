import type { CaseFactory } from '../case.ts';
import type { BenchScale } from '../shapes.ts';
import { copyBuffer } from '../../kernels/copy.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';

/** Bytes copied: 256 MiB at full scale (far beyond any cache), 16 MiB reduced (software device). */
function copySize(gpu: Gpu, scale: BenchScale): number {
  const wanted = scale === 'full' ? 256 * 1024 * 1024 : 16 * 1024 * 1024;
  const limit = Math.min(gpu.limits.maxStorageBufferBindingSize, gpu.limits.maxBufferSize);
  return Math.floor(Math.min(wanted, limit) / 16) * 16;
}

const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(0)} MiB`;

export const cases: CaseFactory = (scale) => [
  {
    family: 'copy',
    name: `vec4 copy ${mib(scale === 'full' ? 256 * 1024 * 1024 : 16 * 1024 * 1024)}`,
    setup(gpu) {
      const size = copySize(gpu, scale);
      const src = gpu.createBuffer(size, 'copy src');
      const dst = gpu.createBuffer(size, 'copy dst');
      return {
        run: (step) => copyBuffer(step, { src, dst, bytes: size }),
        bytes: 2 * size, // read once + written once
        flops: 0,
        dispose: () => [src, dst].forEach((b) => b.destroy()),
      };
    },
  },
];

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * The device's copy bandwidth in bytes/s (bytes read + bytes written per second) as the copy
 * kernel achieves it: the roofline the kernel benchmark compares every memory-bound kernel to.
 * Each timed step repeats the copy enough times to last ~2 ms (at most 64), the time per copy is
 * the step's GPU time (timestamp queries) or, without them, the wall clock around submit; the
 * median over several steps is returned.
 */
export async function measureCopyBandwidth(gpu: Gpu, scale: BenchScale): Promise<number> {
  const size = copySize(gpu, scale);
  const src = gpu.createBuffer(size, 'copy-bw src');
  const dst = gpu.createBuffer(size, 'copy-bw dst');
  try {
    const secondsPerCopy = async (reps: number): Promise<number> => {
      const step = gpu.step({ label: 'copy bandwidth', timestamps: true });
      for (let i = 0; i < reps; i++) copyBuffer(step, { src, dst, bytes: size });
      const t0 = performance.now();
      const { gpuTimeNs } = await step.submit();
      const seconds = gpuTimeNs !== undefined && gpuTimeNs > 0 ? gpuTimeNs / 1e9 : (performance.now() - t0) / 1e3;
      return seconds / reps;
    };
    await secondsPerCopy(1); // warm-up: pipeline compile, first touch of the buffers
    const estimate = await secondsPerCopy(1);
    const reps = Math.min(64, Math.max(1, Math.ceil(2e-3 / Math.max(estimate, 1e-9))));
    const samples: number[] = [];
    for (let i = 0; i < (scale === 'full' ? 9 : 5); i++) samples.push(await secondsPerCopy(reps));
    return (2 * size) / median(samples);
  } finally {
    src.destroy();
    dst.destroy();
  }
}

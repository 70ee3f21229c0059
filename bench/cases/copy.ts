import type { CaseFactory } from '../case.ts';
import type { BenchScale } from '../shapes.ts';
import { copyBuffer } from '../../kernels/copy.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { timeRuns } from '../timing.ts';

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

/**
 * The device's copy bandwidth in bytes/s (bytes read + bytes written per second) as the copy
 * kernel achieves it: the roofline the kernel benchmark compares every memory-bound kernel to.
 */
export async function measureCopyBandwidth(gpu: Gpu, scale: BenchScale): Promise<number> {
  const size = copySize(gpu, scale);
  const src = gpu.createBuffer(size, 'copy-bw src');
  const dst = gpu.createBuffer(size, 'copy-bw dst');
  try {
    return (2 * size) / (await timeRuns(gpu, (step) => copyBuffer(step, { src, dst, bytes: size }), scale));
  } finally {
    src.destroy();
    dst.destroy();
  }
}

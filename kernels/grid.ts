import type { Gpu } from '../src/gpu/gpu.ts';

/**
 * Workgroup counts for `n` independent workgroups, folded into a 2D grid when n exceeds the
 * per-dimension limit. Shaders recover the index as `wg.x + wg.y * num_workgroups.x` and skip
 * indices >= n.
 */
export function grid1d(gpu: Gpu, n: number): [number, number] {
  const max = gpu.limits.maxComputeWorkgroupsPerDimension;
  if (n <= max) return [n, 1];
  const y = Math.ceil(n / max);
  return [Math.ceil(n / y), y];
}

/**
 * Workgroups a kernel that can split its work (decode attention's partitions, the tiled matmul's
 * splits over K) aims for on a GPU: several per multiprocessor of a large one (132 on an H100/H200).
 */
export const GPU_TARGET_WORKGROUPS = 1024;

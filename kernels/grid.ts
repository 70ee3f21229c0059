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

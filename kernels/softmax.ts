import type { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { useSubgroups } from './subgroups.ts';

export interface SoftmaxArgs {
  /** [rows, cols] f32 */
  x: Binding;
  /** [rows, cols] f32; must not alias x */
  out: Binding;
  rows: number;
  cols: number;
  /** force the subgroup variant (softmax_subgroup.wgsl) on or off (default: the device's mode, kernels/subgroups.ts) */
  subgroups?: boolean;
}

/**
 * Workgroup size for one row of `cols` elements: enough invocations to give each about 16
 * elements, at least 64 (two NVIDIA warps, one AMD wave) and at most 1024 or the device limit.
 * A whole vocabulary row (128k-152k) gets 1024 invocations, the most one multiprocessor can keep
 * in flight for a single-row (batch 1) decode step.
 */
export function rowWorkgroupSize(gpu: Gpu, cols: number): number {
  const limit = Math.min(1024, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
  let wg = 64;
  while (wg < limit && wg * 16 < cols) wg *= 2;
  return Math.min(wg, limit);
}

/**
 * Row-wise numerically stable softmax (max, sum of exp, normalise), one workgroup per row.
 * Non-finite inputs (-inf masks; +inf and NaN likewise) get probability 0; a row with no finite
 * input comes out all zeros.
 */
export function softmax(step: Step, a: SoftmaxArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get(useSubgroups(step.gpu, a.subgroups) ? 'softmax_subgroup' : 'softmax', 'main', { WG: rowWorkgroupSize(step.gpu, a.cols) }),
    params: new Params().u32(a.rows).u32(a.cols),
    buffers: [a.x, a.out],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

/** CPU reference in float64, with the kernel's rules for non-finite inputs. */
export function softmaxRef(x: Float32Array, rows: number, cols: number): Float64Array {
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let max = -Infinity;
    for (let i = 0; i < cols; i++) if (Number.isFinite(x[base + i]) && x[base + i] > max) max = x[base + i];
    if (max === -Infinity) continue;
    let sum = 0;
    for (let i = 0; i < cols; i++) if (Number.isFinite(x[base + i])) sum += Math.exp(x[base + i] - max);
    for (let i = 0; i < cols; i++) if (Number.isFinite(x[base + i])) y[base + i] = Math.exp(x[base + i] - max) / sum;
  }
  return y;
}

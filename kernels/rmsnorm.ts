import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { useSubgroups } from './subgroups.ts';

export interface RmsNormArgs {
  /** [rows, dim] f32 */
  x: Binding;
  /** [dim] f32 */
  weight: Binding;
  /** [rows, dim] f32; must not alias x */
  out: Binding;
  rows: number;
  dim: number;
  eps: number;
  /** force the subgroup variant on or off (default: the device's mode, kernels/subgroups.ts) */
  subgroups?: boolean;
}

export interface RmsScaleArgs {
  /** [rows, dim] f32 */
  x: Binding;
  /** [rows] f32: 1 / sqrt(mean(x^2) + eps) of each row; must not alias x */
  out: Binding;
  rows: number;
  dim: number;
  eps: number;
  /** as in RmsNormArgs */
  subgroups?: boolean;
}

const WG = 256;

/** The shader: the subgroup variant when chosen (rmsnorm_subgroup.wgsl: same kernel, subgroup reductions). */
const shader = (step: Step, force?: boolean) => (useSubgroups(step.gpu, force) ? 'rmsnorm_subgroup' : 'rmsnorm');

export function rmsNorm(step: Step, a: RmsNormArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get(shader(step, a.subgroups), 'main', { WG }),
    params: new Params().u32(a.rows).u32(a.dim).f32(a.eps),
    buffers: [a.x, a.weight, a.out],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

/** Each row's RMSNorm scale only, for a matmul that normalises its input in its prologue (MatmulArgs.norm). */
export function rmsScale(step: Step, a: RmsScaleArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get(shader(step, a.subgroups), 'scale', { WG }),
    params: new Params().u32(a.rows).u32(a.dim).f32(a.eps),
    buffers: [a.x, a.out],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

/** CPU reference of rmsScale, float64 accumulation. */
export function rmsScaleRef(x: Float32Array, rows: number, dim: number, eps: number): Float64Array {
  const s = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    s[r] = 1 / Math.sqrt(ss / dim + eps);
  }
  return s;
}

/** CPU reference, float64 accumulation. */
export function rmsNormRef(x: Float32Array, weight: Float32Array, rows: number, dim: number, eps: number): Float64Array {
  const scale = rmsScaleRef(x, rows, dim, eps);
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) for (let i = 0; i < dim; i++) y[r * dim + i] = x[r * dim + i] * scale[r] * weight[i];
  return y;
}

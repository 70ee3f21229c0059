import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';

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
}

export function rmsNorm(step: Step, a: RmsNormArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('rmsnorm', 'main', { WG: 256 }),
    params: new Params().u32(a.rows).u32(a.dim).f32(a.eps),
    buffers: [a.x, a.weight, a.out],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

/** CPU reference, float64 accumulation. */
export function rmsNormRef(x: Float32Array, weight: Float32Array, rows: number, dim: number, eps: number): Float64Array {
  const y = new Float64Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    const scale = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = x[r * dim + i] * scale * weight[i];
  }
  return y;
}

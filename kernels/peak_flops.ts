import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';

export const PEAK_WG = 256;
/** FLOPs one invocation performs per loop iteration: 8 vec4 chains, 2 FLOPs per multiply-add. */
export const FLOPS_PER_ITER = 8 * 4 * 2;

export interface PeakFlopsArgs {
  /** f32 [workgroups * PEAK_WG] */
  out: Binding;
  workgroups: number;
  iters: number;
  mul?: number;
  add?: number;
}

/** Dispatches the FMA-chain probe; FLOPs = workgroups * PEAK_WG * iters * FLOPS_PER_ITER. */
export function peakFlops(step: Step, a: PeakFlopsArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('peak_flops', 'main', { WG: PEAK_WG }),
    params: new Params().u32(a.iters).f32(a.mul ?? 0.999).f32(a.add ?? 1e-3),
    buffers: [a.out],
    workgroups: [a.workgroups],
  });
}

/** CPU reference of one invocation's output (float64; the chains converge to add/(1-mul)). */
export function peakFlopsRef(id: number, iters: number, mul = 0.999, add = 1e-3): number {
  const s = (id % 1024) * 1e-3;
  let total = 0;
  for (let chain = 0; chain < 8; chain++) {
    for (let lane = 0; lane < 4; lane++) {
      let v = s + lane * 0.1 + chain;
      for (let i = 0; i < iters; i++) v = v * mul + add;
      total += v;
    }
  }
  return total;
}

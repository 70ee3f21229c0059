import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { WFMT, type WeightFormat, checkRowLength, dequantizeRef, weightGroup } from './weights.ts';

export interface DequantizeArgs {
  /** an [n, k] weight matrix as uploaded (repackWeights, rows of k; array<vec4<u32>>) */
  w: Binding;
  /** [count] f32: row r's element c at r * k + c */
  out: Binding;
  /** elements to decode: n * k */
  count: number;
  /** elements per row (a multiple of 32 for quantised formats); default: count, one row */
  k?: number;
  format: WeightFormat;
}

const WG = 64;

/** Decodes the first `count` elements of a weight matrix to f32 (bit-exact with dequantizeRef of its GGUF bytes). */
export function dequantize(step: Step, a: DequantizeArgs): void {
  const k = a.k ?? a.count;
  checkRowLength(a.format, k);
  if (a.count === 0) return;
  if (k === 0 || a.count % k !== 0) throw new RangeError(`dequantize: count ${a.count} is not whole rows of ${k}`);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('dequant', 'main', { WFMT: WFMT[a.format], WG }),
    params: new Params().u32(a.count).u32(k),
    buffers: [a.w, a.out],
    workgroups: grid1d(step.gpu, Math.ceil(((a.count / k) * Math.ceil(k / weightGroup(a.format))) / WG)),
  });
}

/** CPU reference over the GGUF bytes (the format's exact decode; see dequantizeRef in weights.ts). */
export { dequantizeRef };

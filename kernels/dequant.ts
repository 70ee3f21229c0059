import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { QK, WFMT, type WeightFormat, dequantizeRef, isQuantized, weightGroup } from './weights.ts';

export interface DequantizeArgs {
  /** weights as uploaded (repackWeights; array<u32>, padded to 4 bytes) */
  w: Binding;
  /** [count] f32 */
  out: Binding;
  /** elements to decode; a multiple of 32 (whole blocks) for quantised formats */
  count: number;
  format: WeightFormat;
}

const WG = 64;

/** Decodes the first `count` elements of a weight buffer to f32 (bit-exact with dequantizeRef). */
export function dequantize(step: Step, a: DequantizeArgs): void {
  if (isQuantized(a.format) && a.count % QK !== 0) {
    throw new RangeError(`dequantize: ${a.format} count must be a multiple of ${QK} (whole blocks), got ${a.count}`);
  }
  if (a.count === 0) return;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('dequant', 'main', { WFMT: WFMT[a.format], WG }),
    params: new Params().u32(a.count),
    buffers: [a.w, a.out],
    workgroups: grid1d(step.gpu, Math.ceil(Math.ceil(a.count / weightGroup(a.format)) / WG)),
  });
}

/** CPU reference over the GGUF bytes (the format's exact decode; see dequantizeRef in weights.ts). */
export { dequantizeRef };

import { dequantizeRef } from '../../kernels/weights.ts';
import type { CpuWeights } from './cpu_reference.ts';
import { weightFormatOf } from './gpu_weights.ts';
import type { ModelSource } from './source.ts';

/** Every tensor of a model decoded to f32 exactly as the GPU decodes it: the float64 CPU forward pass's weights. */
export function cpuWeightsOf(src: ModelSource): CpuWeights {
  const w: CpuWeights = new Map();
  for (const t of src.tensors.values()) {
    const format = weightFormatOf(t);
    if (!format) throw new Error(`no CPU decoder for ${t.typeName} (${t.name})`);
    w.set(t.name, dequantizeRef(format, t.read(), t.dims.reduce((a, b) => a * b, 1)));
  }
  return w;
}

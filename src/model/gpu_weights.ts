import type { WeightFormat } from '../../kernels/weights.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { ModelFileError } from './gguf.ts';
import type { ModelSource, TensorSource } from './source.ts';

/** A weight tensor resident on the GPU in its file format. */
export interface GpuTensor {
  buffer: GPUBuffer;
  format: WeightFormat;
  /** dims[0] contiguous, as in the file */
  dims: number[];
}

const FORMATS: Record<string, WeightFormat> = { F32: 'f32', F16: 'f16', Q8_0: 'q8_0', Q4_0: 'q4_0' };

/**
 * Uploads every tensor of the model, one at a time (read from disk, copied into a mapped GPU
 * buffer, dropped), so host memory never holds more than the largest tensor. Quantised and f16
 * tensors stay in their format. BF16 widens exactly to f32 (the kernels have no BF16 decode yet).
 */
export function uploadWeights(gpu: Gpu, source: ModelSource, onProgress?: (done: number, total: number) => void): Map<string, GpuTensor> {
  const total = [...source.tensors.values()].reduce((n, t) => n + t.bytes, 0);
  let done = 0;
  const out = new Map<string, GpuTensor>();
  for (const t of source.tensors.values()) {
    const { bytes, format } = tensorBytes(t, source.path);
    out.set(t.name, { buffer: gpu.upload(bytes, t.name), format, dims: t.dims });
    done += t.bytes;
    onProgress?.(done, total);
  }
  return out;
}

function tensorBytes(t: TensorSource, file: string): { bytes: Uint8Array; format: WeightFormat } {
  const raw = t.read();
  if (t.typeName === 'BF16') {
    const src = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2);
    const wide = new Uint32Array(src.length);
    for (let i = 0; i < src.length; i++) wide[i] = src[i] << 16;
    return { bytes: new Uint8Array(wide.buffer), format: 'f32' };
  }
  const format = FORMATS[t.typeName];
  if (!format) throw new ModelFileError(`${file}: tensor "${t.name}" has type ${t.typeName}, which the kernels cannot read`);
  return { bytes: raw, format };
}

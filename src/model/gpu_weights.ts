import { type WeightFormat, dequantizeRef } from '../../kernels/weights.ts';
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

const FORMATS: Record<string, WeightFormat> = { F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_0: 'q4_0' };

/** The kernels' name for a file tensor type (undefined for types they cannot read). */
export function weightFormatOf(t: Pick<TensorSource, 'typeName'>): WeightFormat | undefined {
  return FORMATS[t.typeName];
}

/**
 * Uploads every tensor of the model, one at a time (read from disk, copied into a mapped GPU
 * buffer, dropped), so host memory never holds more than the largest tensor. Matrices stay in
 * their file format (f32, f16, bf16, q8_0, q4_0): the matmul and embedding kernels decode them.
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

/** A tensor with one row: every dim past the first is 1 (norm weights, biases). */
function isVector(t: TensorSource): boolean {
  return t.dims.slice(1).every((d) => d === 1);
}

function tensorBytes(t: TensorSource, file: string): { bytes: Uint8Array; format: WeightFormat } {
  const format = FORMATS[t.typeName];
  if (!format) throw new ModelFileError(`${file}: tensor "${t.name}" has type ${t.typeName}, which the kernels cannot read`);
  const raw = t.read();
  // Vectors (the RMSNorm weights, and biases) are read by rmsnorm and the elementwise kernels as
  // plain f32 arrays, and GpuModel binds their buffers without looking at the format. So a vector
  // in any other format (BF16 checkpoints store their norms in bf16) is widened to f32 here with
  // the reference decoder: exact (bf16 bit for bit), and only a few KB per layer.
  if (isVector(t) && format !== 'f32') {
    const count = t.dims.reduce((a, b) => a * b, 1);
    return { bytes: new Uint8Array(dequantizeRef(format, raw, count).buffer), format: 'f32' };
  }
  return { bytes: raw, format };
}

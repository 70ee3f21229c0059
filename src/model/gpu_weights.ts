import { type WeightFormat, dequantizeRef, repackWeights } from '../../kernels/weights.ts';
import type { Gpu } from '../gpu/gpu.ts';
import { ModelFileError } from './gguf.ts';
import type { ModelSource, TensorSource } from './source.ts';

/** A weight tensor resident on the GPU in its file format, in the GPU layout (repackWeights: rows of dims[0]). */
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
 * Projections the forward pass applies to the same input, concatenated at load (rows of the parts
 * in order) so that one matmul computes them all: `blk.N.attn_qkv.weight` holds q, k, v rows (and
 * `blk.N.attn_qkv.bias` their biases, when all three have one), `blk.N.ffn_gate_up.weight` gate then
 * up rows. A layer's parts are fused only when they share one format and row length; otherwise
 * they stay separate tensors (and GpuModel runs them as separate matmuls).
 */
const FUSED_PROJECTIONS = [
  { name: 'attn_qkv', parts: ['attn_q', 'attn_k', 'attn_v'] },
  { name: 'ffn_gate_up', parts: ['ffn_gate', 'ffn_up'] },
] as const;

/** For each source tensor that is part of a fused one: the fused name and all its parts' tensors. */
function fusionPlan(source: ModelSource): Map<string, { name: string; parts: TensorSource[] }> {
  const plan = new Map<string, { name: string; parts: TensorSource[] }>();
  const fuse = (name: string, parts: (TensorSource | undefined)[]): boolean => {
    if (parts.some((t) => !t)) return false;
    const group = { name, parts: parts as TensorSource[] };
    for (const t of group.parts) plan.set(t.name, group);
    return true;
  };
  for (let l = 0; l < source.config.nLayers; l++) {
    for (const f of FUSED_PROJECTIONS) {
      const weights = f.parts.map((p) => source.tensors.get(`blk.${l}.${p}.weight`));
      const [first] = weights;
      const alike = weights.every((t) => t && first && t.typeName === first.typeName && t.dims.length === 2 && t.dims[0] === first.dims[0] && !isVector(t));
      if (!alike || !fuse(`blk.${l}.${f.name}.weight`, weights)) continue;
      fuse(`blk.${l}.${f.name}.bias`, f.parts.map((p) => source.tensors.get(`blk.${l}.${p}.bias`)));
    }
  }
  return plan;
}

/**
 * Uploads every tensor of the model, one at a time (read from disk, repacked if quantised, copied
 * into a mapped GPU buffer, dropped), so host memory never holds more than the largest tensor
 * twice, or a fused group's parts and their concatenation twice.
 * Matrices stay in their file format (f32, f16, bf16, q8_0, q4_0): the matmul and embedding
 * kernels decode them from the aligned GPU layout (repackWeights, exact: f32 / f16 / bf16 rows
 * padded to whole 8-element groups, q8_0 / q4_0 blocks in superblocks). Vectors are one row, so
 * they keep their plain f32 layout (any padding only follows it). The parts of a fused projection
 * (FUSED_PROJECTIONS) are uploaded as one tensor under the fused name instead of their own: their
 * GGUF rows concatenated, then repacked.
 */
export function uploadWeights(gpu: Gpu, source: ModelSource, onProgress?: (done: number, total: number) => void): Map<string, GpuTensor> {
  const total = [...source.tensors.values()].reduce((n, t) => n + t.bytes, 0);
  const plan = fusionPlan(source);
  let done = 0;
  const out = new Map<string, GpuTensor>();
  for (const t of source.tensors.values()) {
    const group = plan.get(t.name);
    if (!group) {
      const { bytes, format } = tensorBytes(t, source.path);
      out.set(t.name, { buffer: gpu.upload(repackWeights(format, bytes, t.dims[0]), t.name), format, dims: t.dims });
    } else if (!out.has(group.name)) {
      // rows of every part, in order: in any format a matrix is its rows' bytes back to back
      const parts = group.parts.map((p) => tensorBytes(p, source.path));
      const bytes = new Uint8Array(parts.reduce((n, p) => n + p.bytes.byteLength, 0));
      let offset = 0;
      for (const p of parts) {
        bytes.set(p.bytes, offset);
        offset += p.bytes.byteLength;
      }
      const product = (dims: number[]) => dims.reduce((a, b) => a * b, 1);
      const dims = isVector(t) ? [group.parts.reduce((n, p) => n + product(p.dims), 0)] : [t.dims[0], group.parts.reduce((n, p) => n + product(p.dims.slice(1)), 0)];
      out.set(group.name, { buffer: gpu.upload(repackWeights(parts[0].format, bytes, dims[0]), group.name), format: parts[0].format, dims });
    }
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

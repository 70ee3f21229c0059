import { Params } from '../src/gpu/params.ts';
import type { BufferRange } from '../src/gpu/buffers.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { WFMT, type WeightFormat, checkRowLength, dequantizeRef, gpuRowLength, rowBytes, weightGroup } from './weights.ts';

export interface EmbeddingArgs {
  /** [rows, dim] weight matrix as uploaded (repackWeights, rows of dim; array<vec4<u32>>) */
  table: Binding;
  /** [count] u32 token ids */
  tokens: Binding;
  /** [count, dim] f32 */
  out: Binding;
  count: number;
  dim: number;
  /**
   * Rows of the table (vocabulary size); ids >= rows produce zero rows. Default: as many whole rows
   * as the table binding holds (q8_0 / q4_0 superblocks pad by less than a row).
   */
  rows?: number;
  format: WeightFormat;
}

const WG = 64;

/** out[t, :] = dequantised table row tokens[t]. */
export function embedding(step: Step, a: EmbeddingArgs): void {
  checkRowLength(a.format, a.dim);
  if (a.count === 0 || a.dim === 0) return;
  const rows = a.rows ?? Math.floor(bindingSize(a.table) / rowBytes(a.format, gpuRowLength(a.format, a.dim)));
  step.dispatch({
    pipeline: step.gpu.pipelines.get('embedding', 'main', { WFMT: WFMT[a.format], WG }),
    params: new Params().u32(a.count).u32(a.dim).u32(rows),
    buffers: [a.table, a.tokens, a.out],
    workgroups: grid1d(step.gpu, Math.ceil((a.count * Math.ceil(a.dim / weightGroup(a.format))) / WG)),
  });
}

/** A gather of dense rows (no weight layout): what `gatherRows` reads. */
export interface GatherArgs {
  /** [rows, dim] rows back to back with no padding: f32, or f16 packed in pairs */
  table: Binding;
  /** [count] u32 row indices */
  tokens: Binding;
  /** [count, dim] f32 */
  out: Binding;
  count: number;
  dim: number;
  /** Rows of the table; indices >= rows produce zero rows. */
  rows: number;
  format: 'f32' | 'f16';
}

/**
 * out[t, :] = table row tokens[t] of dense f32 or f16 rows: activations and KV pool rows. Weight
 * tables are laid out for 16-byte loads at upload and go through `embedding` instead.
 */
export function gatherRows(step: Step, a: GatherArgs): void {
  if (a.count === 0 || a.dim === 0) return;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('embedding', 'gather', { WFMT: WFMT[a.format], WG }),
    params: new Params().u32(a.count).u32(a.dim).u32(a.rows),
    buffers: [a.table, a.tokens, a.out],
    workgroups: grid1d(step.gpu, Math.ceil((a.count * a.dim) / WG)),
  });
}

/** A token id already on the GPU: the u32 at byte `offset` of `buffer` (a step's sampled ids, not yet read back). */
export interface GpuTokenId {
  buffer: GPUBuffer;
  offset: number;
}

/**
 * Records copies of GPU-resident ids into the id list an embedding will read: `id` goes to u32
 * `row` of the list at `dst` (which holds placeholders there). Runs of consecutive rows taking
 * consecutive words of one buffer are one copy, so a steady decode batch in an unchanged order
 * costs one.
 */
export function copyTokenIds(step: Step, dst: BufferRange, ids: readonly { row: number; id: GpuTokenId }[]): void {
  const sorted = [...ids].sort((a, b) => a.row - b.row);
  for (let i = 0; i < sorted.length; ) {
    const { row, id } = sorted[i];
    let n = 1;
    while (i + n < sorted.length && sorted[i + n].row === row + n && sorted[i + n].id.buffer === id.buffer && sorted[i + n].id.offset === id.offset + 4 * n) n++;
    step.copy(id.buffer, id.offset, dst.buffer, dst.offset + row * 4, n * 4);
    i += n;
  }
}

function bindingSize(b: Binding): number {
  if ('buffer' in b) return b.size ?? b.buffer.size - (b.offset ?? 0);
  return b.size;
}

/** CPU reference over the GGUF bytes: decodes the table rows of `tokens` (ids >= rows give zeros, as on the GPU). */
export function embeddingRef(format: WeightFormat, table: Uint8Array, tokens: ArrayLike<number>, dim: number, rows: number): Float32Array {
  const rb = rowBytes(format, dim);
  const out = new Float32Array(tokens.length * dim);
  for (let t = 0; t < tokens.length; t++) {
    const id = tokens[t];
    if (id >= rows) continue;
    out.set(dequantizeRef(format, table.subarray(id * rb, (id + 1) * rb), dim), t * dim);
  }
  return out;
}

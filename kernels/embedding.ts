import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { WFMT, type WeightFormat, checkRowLength, dequantizeRef, rowBytes } from './weights.ts';

export interface EmbeddingArgs {
  /** [rows, dim] weight matrix in GGUF layout (array<u32>) */
  table: Binding;
  /** [count] u32 token ids */
  tokens: Binding;
  /** [count, dim] f32 */
  out: Binding;
  count: number;
  dim: number;
  /**
   * Rows of the table (vocabulary size); ids >= rows produce zero rows. Default: as many whole rows
   * as the table binding holds.
   */
  rows?: number;
  format: WeightFormat;
}

const WG = 64;

/** out[t, :] = dequantised table row tokens[t]. */
export function embedding(step: Step, a: EmbeddingArgs): void {
  checkRowLength(a.format, a.dim);
  if (a.count === 0 || a.dim === 0) return;
  const rows = a.rows ?? Math.floor(bindingSize(a.table) / rowBytes(a.format, a.dim));
  step.dispatch({
    pipeline: step.gpu.pipelines.get('embedding', 'main', { WFMT: WFMT[a.format], WG }),
    params: new Params().u32(a.count).u32(a.dim).u32(rows),
    buffers: [a.table, a.tokens, a.out],
    workgroups: grid1d(step.gpu, Math.ceil((a.count * Math.ceil(a.dim / 8)) / WG)),
  });
}

function bindingSize(b: Binding): number {
  if ('buffer' in b) return b.size ?? b.buffer.size - (b.offset ?? 0);
  return b.size;
}

/** CPU reference: decodes the table rows of `tokens` (ids >= rows give zeros, as on the GPU). */
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

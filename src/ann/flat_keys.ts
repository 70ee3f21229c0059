/**
 * Rows of f32 vectors in one buffer, seen as a KeySource (the paged KV layout with an identity
 * block table): the index's own centroids, and key sets outside the model (benchmarks, tests).
 */
import type { KeySource } from '../../kernels/ann.ts';
import type { Gpu } from '../gpu/gpu.ts';

const BLOCK = 256;

export interface FlatKeys {
  source: KeySource;
  /** bytes of the block table (the rows' buffer is the caller's) */
  bytes: number;
  destroy(): void;
}

/** `rows` rows of `dim` f32 in `buffer` (rows may be a capacity the caller fills later). */
export function flatKeySource(gpu: Gpu, buffer: GPUBuffer, rows: number, dim: number): FlatKeys {
  const table = gpu.upload(Uint32Array.from({ length: Math.max(1, Math.ceil(rows / BLOCK)) }, (_, i) => i), 'ann identity table');
  return {
    source: { pool: buffer, table, tableStride: 0, row: 0, blockSize: BLOCK, headDim: dim, dtype: 'f32' },
    bytes: table.size,
    destroy: () => table.destroy(),
  };
}

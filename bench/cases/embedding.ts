import type { BenchCase, CaseFactory } from '../case.ts';
import { type ModelShape, benchShapes } from '../shapes.ts';
import { randomWeights } from './matmul.ts';
import { embedding } from '../../kernels/embedding.ts';
import { QK, WEIGHT_FORMATS, type WeightFormat, isQuantized, rowBytes } from '../../kernels/weights.ts';
import { mulberry32 } from '../../src/util/rng.ts';

/**
 * Table rows allocated at most. A lookup reads only the rows of its tokens, so its speed does not
 * depend on the table's size; capping it keeps f32 tables of 128K-152K vocabularies (2+ GB) within
 * every device's binding limit. Tokens are drawn uniformly from the allocated rows.
 */
const MAX_TABLE_ROWS = 32768;

function embeddingCase(shape: ModelShape, format: WeightFormat, count: number, seed: number): BenchCase {
  const dim = isQuantized(format) ? Math.ceil(shape.dim / QK) * QK : shape.dim;
  const rows = Math.min(shape.vocab, MAX_TABLE_ROWS);
  const capped = rows < shape.vocab ? `, ${rows} of ${shape.vocab} rows allocated` : '';
  return {
    family: 'embedding',
    name: `${format} ${shape.name} tokens=${count} dim=${dim}${capped}`,
    setup(gpu) {
      const table = randomWeights(gpu, format, rows, dim, seed);
      const next = mulberry32(seed + 1);
      const tokens = gpu.upload(Uint32Array.from({ length: count }, () => Math.floor(next() * rows)));
      const out = gpu.createBuffer(count * dim * 4);
      return {
        run: (step) => embedding(step, { table, tokens, out, count, dim, rows, format }),
        // one table row read per token, the token ids, the f32 rows written
        bytes: count * (rowBytes(format, dim) + 4 + dim * 4),
        flops: 0,
        dispose: () => [table, tokens, out].forEach((b) => b.destroy()),
      };
    },
  };
}

/** Per model shape and weight format: one token (decode) and a prefill batch (512 full, 64 reduced). */
export const cases: CaseFactory = (scale) => {
  const prefill = scale === 'full' ? 512 : 64;
  const out: BenchCase[] = [];
  let seed = 1000;
  for (const shape of benchShapes(scale)) {
    for (const format of WEIGHT_FORMATS) {
      for (const count of [1, prefill]) out.push(embeddingCase(shape, format, count, seed++));
    }
  }
  return out;
};

import type { CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { kvPoolBytes, writeKv } from '../../kernels/kv_cache.ts';
import { mulberry32, normalArray } from '../../src/util/rng.ts';

/** KV write of one step's new tokens (decode batch, or a prompt chunk) into shuffled pool slots. */
export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    [1, 32, scale === 'full' ? 512 : 64].map((tokens) => ({
      family: 'kv-write',
      name: `${shape.name} tokens=${tokens} kvHeads=${shape.nKvHeads} hd=${shape.headDim}`,
      setup(gpu) {
        const rows = tokens * shape.nKvHeads;
        const blockSize = 16;
        const numBlocks = Math.ceil((4 * rows) / blockSize);
        const next = mulberry32(rows);
        const slots = Array.from({ length: numBlocks * blockSize }, (_, i) => i);
        for (let i = slots.length - 1; i > 0; i--) {
          const j = Math.floor(next() * (i + 1));
          [slots[i], slots[j]] = [slots[j], slots[i]];
        }
        const k = gpu.upload(normalArray(rows * shape.headDim, 1));
        const v = gpu.upload(normalArray(rows * shape.headDim, 2));
        const kPool = gpu.createBuffer(kvPoolBytes(numBlocks, blockSize, shape.headDim));
        const vPool = gpu.createBuffer(kvPoolBytes(numBlocks, blockSize, shape.headDim));
        const slotMapping = gpu.upload(Uint32Array.from(slots.slice(0, rows)));
        return {
          run: (step) => writeKv(step, { k, v, kPool, vPool, slotMapping, tokens, nKvHeads: shape.nKvHeads, headDim: shape.headDim }),
          bytes: 4 * rows * shape.headDim * 4 + rows * 4, // K and V read and written, slots read
          flops: 0,
          dispose: () => [k, v, kPool, vPool, slotMapping].forEach((b) => b.destroy()),
        };
      },
    })),
  );

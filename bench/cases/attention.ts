import type { BenchCase, CaseFactory, PreparedCase } from '../case.ts';
import { type ModelShape, benchShapes } from '../shapes.ts';
import { type PrefillSeq, attentionDecode, attentionPrefill, prefillMeta } from '../../kernels/attention.ts';
import { buildPagedLayout, kvPoolBytes } from '../../kernels/kv_cache.ts';
import type { Gpu } from '../../src/gpu/gpu.ts';
import { type HeadwiseKv, PagedKvTables } from '../../src/kv/paged_kv.ts';
import { normalArray } from '../../src/util/rng.ts';

const BLOCK_SIZE = 16;
/** Longest context a model is run with here (stories260K was trained at 512). */
const MAX_CONTEXT: Record<string, number> = { stories260K: 512 };

/**
 * Heads of a shape as whole numbers: the reduced shapes divide head counts by 8, which can leave
 * a fraction (Qwen2.5-7B/8: 3.5 query heads over 1 kv head); round the group size and say so.
 */
function heads(shape: ModelShape): { nHeads: number; nKvHeads: number; label: string } {
  const nKvHeads = Math.max(1, Math.round(shape.nKvHeads));
  const group = Math.max(1, Math.round(shape.nHeads / nKvHeads));
  const nHeads = group * nKvHeads;
  const label = `heads=${nHeads}/${nKvHeads}${nHeads !== shape.nHeads ? ` (rounded from ${shape.nHeads})` : ''} hd=${shape.headDim}`;
  return { nHeads, nKvHeads, label };
}

/** A pool filled with a repeated 1 MiB random pattern (values do not change the kernels' speed). */
function filledPool(gpu: Gpu, bytes: number, seed: number, label: string): GPUBuffer {
  const buffer = gpu.createBuffer(bytes, label);
  const pattern = normalArray(Math.min(bytes / 4, 256 * 1024), seed);
  for (let offset = 0; offset < bytes; offset += pattern.byteLength) {
    const n = Math.min(pattern.length, (bytes - offset) / 4);
    gpu.write(buffer, pattern.subarray(0, n), offset);
  }
  return buffer;
}

/** Paged K/V pools, table and lengths for `seqLens` (shuffled blocks, as after allocator churn). */
function pagedCache(gpu: Gpu, seqLens: number[], nKvHeads: number, headDim: number) {
  const layout = buildPagedLayout({ seqLens, nKvHeads, blockSize: BLOCK_SIZE, spareBlocks: 0, seed: 7 });
  const bytes = kvPoolBytes(layout.numBlocks, BLOCK_SIZE, headDim);
  const kPool = filledPool(gpu, bytes, 1, 'bench k pool');
  const vPool = filledPool(gpu, bytes, 2, 'bench v pool');
  const blockTable = gpu.upload(layout.blockTable, 'bench block table');
  const kvLen = gpu.upload(layout.kvLen, 'bench kv len');
  return { kv: { kPool, vPool, blockTable, tableStride: layout.tableStride, blockSize: BLOCK_SIZE }, kvLen, buffers: [kPool, vPool, blockTable, kvLen] };
}

/** `subgroups`: the subgroup variant (on a device without the feature, the plain kernel again). */
function decodeCase(shape: ModelShape, batch: number, ctx: number, subgroups = false): BenchCase {
  const { nHeads, nKvHeads, label } = heads(shape);
  const hd = shape.headDim;
  return {
    family: 'attention-decode',
    name: `${shape.name} ${label} batch=${batch} ctx=${ctx}${subgroups ? ' subgroups' : ''}`,
    setup(gpu): PreparedCase {
      const cache = pagedCache(gpu, new Array<number>(batch).fill(ctx), nKvHeads, hd);
      const q = gpu.upload(normalArray(batch * nHeads * hd, 3));
      const out = gpu.createBuffer(batch * nHeads * hd * 4);
      return {
        run: (step) =>
          attentionDecode(step, { ...cache.kv, q, out, kvLen: cache.kvLen, batch, nHeads, nKvHeads, headDim: hd, maxKvLen: ctx, subgroups: subgroups && gpu.features.subgroups }),
        // K and V of every head row read once, q read and out written once (the split-K partials
        // are a few % on top and not counted).
        bytes: (2 * batch * nKvHeads * ctx * hd + 2 * batch * nHeads * hd) * 4,
        // QK and PV: 2 * 2 * ctx * hd per query head.
        flops: 4 * batch * nHeads * ctx * hd,
        dispose: () => [...cache.buffers, q, out].forEach((b) => b.destroy()),
      };
    },
  };
}

function prefillCase(shape: ModelShape, tokens: number): BenchCase {
  const { nHeads, nKvHeads, label } = heads(shape);
  const hd = shape.headDim;
  return {
    family: 'attention-prefill',
    name: `${shape.name} ${label} tokens=${tokens} causal`,
    computeBound: true,
    setup(gpu): PreparedCase {
      const cache = pagedCache(gpu, [tokens], nKvHeads, hd);
      const seqs: PrefillSeq[] = [{ qStart: 0, qLen: tokens, ctxLen: tokens, headRowBase: 0 }];
      const q = gpu.upload(normalArray(tokens * nHeads * hd, 3));
      const meta = gpu.upload(prefillMeta(seqs));
      const out = gpu.createBuffer(tokens * nHeads * hd * 4);
      return {
        run: (step) =>
          attentionPrefill(step, { ...cache.kv, q, out, meta, numSeqs: 1, maxQLen: tokens, nHeads, nKvHeads, headDim: hd }),
        bytes: (2 * nKvHeads * tokens * hd + 2 * tokens * nHeads * hd) * 4,
        // Causal: query i attends to i + 1 slots, 4 * (i + 1) * hd FLOPs per query head.
        flops: 4 * nHeads * hd * ((tokens * (tokens + 1)) / 2),
        dispose: () => [...cache.buffers, q, meta, out].forEach((b) => b.destroy()),
      };
    },
  };
}

/**
 * Decode attention alone over a head-wise cache (docs/headwise.md): `batch` sequences of `ctx`
 * tokens in tables built by the real bookkeeping, KV head h of the layer in column columnOf[h];
 * columns >= fullColumns are rings of sink + recent slots. Without `hw`, today's full cache.
 */
export function headwiseDecodeCase(shape: ModelShape, batch: number, ctx: number, hw?: HeadwiseKv & { columnOf: Uint32Array }): BenchCase {
  const { nHeads, nKvHeads, label } = heads(shape);
  const hd = shape.headDim;
  const kind = hw ? `${hw.fullColumns}/${nKvHeads} full, sink ${hw.sink} + recent ${hw.recent}` : 'full';
  return {
    family: 'attention-decode-headwise',
    name: `${shape.name} ${label} batch=${batch} ctx=${ctx} ${kind}`,
    setup(gpu): PreparedCase {
      const layout = { nLayers: 1, nKvHeads, headDim: hd, blockSize: BLOCK_SIZE, bytesPerElement: 4 };
      const numBlocks = new PagedKvTables(layout, 1, hw).blocksNeeded(-1, ctx) * batch;
      const kv = new PagedKvTables(layout, numBlocks, hw);
      const seqs = Array.from({ length: batch }, (_, s) => (kv.reserve(s, ctx), s));
      const { table, lengths, stride } = kv.batchTables(seqs);
      const bytes = kvPoolBytes(numBlocks, BLOCK_SIZE, hd);
      const kPool = filledPool(gpu, bytes, 1, 'bench k pool');
      const vPool = filledPool(gpu, bytes, 2, 'bench v pool');
      const blockTable = gpu.upload(table, 'bench block table');
      const kvLen = gpu.upload(lengths, 'bench kv len');
      const columnOf = gpu.upload(hw?.columnOf ?? new Uint32Array(nKvHeads).map((_, h) => h), 'bench columns');
      const paged = { kPool, vPool, blockTable, tableStride: stride, blockSize: BLOCK_SIZE };
      const q = gpu.upload(normalArray(batch * nHeads * hd, 3));
      const out = gpu.createBuffer(batch * nHeads * hd * 4);
      const slots = lengths.reduce((a, b) => a + b, 0);
      return {
        run: (step) => attentionDecode(step, { ...paged, q, out, kvLen, batch, nHeads, nKvHeads, headDim: hd, maxKvLen: ctx, columns: hw ? { columnOf, layer: 0 } : undefined }),
        // the K and V rows the head rows hold, q and out
        bytes: (2 * slots * hd + 2 * batch * nHeads * hd) * 4,
        flops: 4 * (nHeads / nKvHeads) * slots * hd,
        dispose: () => [kPool, vPool, blockTable, kvLen, columnOf, q, out].forEach((b) => b.destroy()),
      };
    },
  };
}

export const cases: CaseFactory = (scale) => {
  const contexts = scale === 'full' ? [1024, 4096] : [256, 1024];
  const prefillTokens = scale === 'full' ? 512 : 128;
  const out: BenchCase[] = [];
  for (const shape of benchShapes(scale)) {
    const maxCtx = MAX_CONTEXT[shape.name] ?? Infinity;
    for (const ctx of contexts) {
      if (ctx > maxCtx) continue;
      for (const batch of [1, 8, 32]) out.push(decodeCase(shape, batch, ctx));
      out.push(decodeCase(shape, 1, ctx, true));
    }
    if (prefillTokens <= maxCtx) out.push(prefillCase(shape, prefillTokens));
  }
  return out;
};

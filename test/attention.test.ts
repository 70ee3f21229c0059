import { describe, expect, it } from 'vitest';
import {
  type HostPagedKv,
  type PagedKv,
  type PrefillSeq,
  attentionDecode,
  attentionDecodePartials,
  attentionDecodeRef,
  attentionMerge,
  attentionMergeRef,
  attentionPrefill,
  attentionPrefillRef,
  decodePlan,
  prefillMeta,
  subgroupLanes,
} from '../kernels/attention.ts';
import { GPU_TARGET_WORKGROUPS } from '../kernels/grid.ts';
import {
  type KvDtype,
  type PagedLayout,
  buildPagedLayout,
  kvPoolBytes,
  slotMappingFor,
  slotOf,
  unpackF16Pool,
  writeKv,
  writeKvRef,
} from '../kernels/kv_cache.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray, uniformArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Tolerance of attention outputs against the float64 reference. q ~ N(0, 1.5^2), k, v ~ N(0, 1),
// scale 1/sqrt(headDim) (0.3 in two cases), so scores are O(1..10) and the output is a p-weighted
// mean of v rows (|v| <~ 4). Error sources, all f32:
// - a score is a headDim-term dot product: rounding ~ sqrt(headDim) * 2^-24 * |score terms| ~ 1e-6;
// - exp/exp2: Vulkan allows 3 + 2|x| ulp, i.e. a relative error of up to ~3e-6 for |x| <~ 20 on
//   real GPUs (SwiftShader is near-exact);
// both perturb each weight p relatively by delta, which moves the weighted mean by <= 2 * delta *
// max|v| ~ 2e-5 worst case; the f32 sums over up to a few hundred slots add ~sqrt(n) * 2^-24
// relative. Observed here: decode < 1e-6, prefill <= 3e-6. atol 3e-5 + rtol 1e-4 covers the worst
// case on any conforming device; a wrong slot, mask, head mapping or merge weight errs by 1e-2 .. 1.
const TOL = { atol: 3e-5, rtol: 1e-4 };
// Merge of given partials (m in [-8, 8], so exp arguments down to -16; outputs N(0, 1)): each weight
// l * exp(m - max) carries exp's error, up to 3 + 2 * 1.44 * 16 ~ 50 ulp ~ 3e-6 relative on a
// conforming Vulkan device, moving the weighted mean by <= 2 * 3e-6 * max|o| (~3.5) ~ 2e-5; the
// merged sum l is off by the same 3e-6 relative (m is exact). Observed here: <= 5e-7.
const MERGE_TOL = { atol: 2e-5, rtol: 1e-5 };

interface Cache {
  layout: PagedLayout;
  headDim: number;
  dtype: KvDtype;
  gpuKv: PagedKv;
  host: HostPagedKv;
  kvLen: GPUBuffer;
  buffers: GPUBuffer[];
}

/**
 * A paged cache for `seqLens` (slot i == position i of each sequence) with shuffled blocks, filled
 * through writeKv from random K/V rows (in `chunks` steps per sequence when asked).
 */
async function makeCache(gpu: Gpu, o: { seqLens: number[]; nKvHeads: number; headDim: number; blockSize: number; seed: number; dtype?: KvDtype }): Promise<Cache> {
  const dtype = o.dtype ?? 'f32';
  const layout = buildPagedLayout({ seqLens: o.seqLens, nKvHeads: o.nKvHeads, blockSize: o.blockSize, seed: o.seed });
  const chunks = o.seqLens.map((len, seq) => ({ seq, start: 0, len }));
  const tokens = o.seqLens.reduce((a, b) => a + b, 0);
  const k = normalArray(tokens * o.nKvHeads * o.headDim, o.seed * 3 + 1);
  const v = normalArray(tokens * o.nKvHeads * o.headDim, o.seed * 3 + 2);
  const mapping = slotMappingFor(layout, chunks);
  const bytes = kvPoolBytes(layout.numBlocks, o.blockSize, o.headDim, dtype);
  const kPool = gpu.createBuffer(bytes, 'k pool');
  const vPool = gpu.createBuffer(bytes, 'v pool');
  const kb = gpu.upload(k);
  const vb = gpu.upload(v);
  const mb = gpu.upload(mapping);
  const step = gpu.step();
  writeKv(step, { k: kb, v: vb, kPool, vPool, slotMapping: mb, tokens, nKvHeads: o.nKvHeads, headDim: o.headDim, dtype });
  await step.submit();
  for (const b of [kb, vb, mb]) b.destroy();
  let hostK: Float32Array;
  let hostV: Float32Array;
  if (dtype === 'f16') {
    // The reference reads the values the GPU stored, so f16 storage adds no error to compare.
    hostK = unpackF16Pool(await gpu.read(kPool, 0, bytes));
    hostV = unpackF16Pool(await gpu.read(vPool, 0, bytes));
  } else {
    hostK = new Float32Array(layout.numBlocks * o.blockSize * o.headDim);
    hostV = new Float32Array(hostK.length);
    writeKvRef(hostK, hostV, k, v, mapping, tokens, o.nKvHeads, o.headDim);
  }
  const table = gpu.upload(layout.blockTable);
  const kvLen = gpu.upload(layout.kvLen);
  return {
    layout,
    headDim: o.headDim,
    dtype,
    gpuKv: { kPool, vPool, blockTable: table, tableStride: layout.tableStride, blockSize: o.blockSize, dtype },
    host: { kPool: hostK, vPool: hostV, blockTable: layout.blockTable, tableStride: layout.tableStride, blockSize: o.blockSize },
    kvLen,
    buffers: [kPool, vPool, table, kvLen],
  };
}

const destroy = (c: Cache) => c.buffers.forEach((b) => b.destroy());

interface DecodeCase {
  seqLens: number[];
  nKvHeads: number;
  group: number;
  headDim: number;
  blockSize: number;
  dtype?: KvDtype;
  partitionSize?: number;
  /** the default plan's target (decodePlan: the device's by default) */
  targetWorkgroups?: number;
  scale?: number;
  /** expected number of split-K partitions (checks the case exercises what it claims) */
  parts?: number;
}

async function runDecode(gpu: Gpu, c: DecodeCase, seed: number, subgroups = false): Promise<void> {
  const nHeads = c.nKvHeads * c.group;
  const batch = c.seqLens.length;
  const cache = await makeCache(gpu, { ...c, seed });
  // A spread of query scales: sharper and flatter softmaxes.
  const q = normalArray(batch * nHeads * c.headDim, seed * 3 + 3, 1.5);
  const qb = gpu.upload(q);
  const out = gpu.createBuffer(q.byteLength);
  const shape = { batch, nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, maxKvLen: Math.max(...c.seqLens), partitionSize: c.partitionSize, targetWorkgroups: c.targetWorkgroups, scale: c.scale, subgroups };
  if (c.parts !== undefined) expect(decodePlan(gpu, shape).numParts).toBe(c.parts);
  const step = gpu.step();
  attentionDecode(step, { ...cache.gpuKv, ...shape, q: qb, out, kvLen: cache.kvLen });
  await step.submit();
  const want = attentionDecodeRef(cache.host, q, cache.layout.kvLen, shape);
  expectClose(await gpu.readF32(out, q.length), want, TOL, 'decode');
  destroy(cache);
  qb.destroy();
  out.destroy();
}

// The subgroup variant (several lanes per K row, subgroup reductions) computes each score with a
// different order of additions (each lane's strided chunks, then a butterfly), within the same
// rounding estimate as the plain kernel: TOL holds for both.
for (const subgroups of [false, true]) describe(subgroups ? 'attention decode (subgroup variant)' : 'attention decode', () => {
  const getGpu = useGpu();
  const run = (c: DecodeCase, seed: number) => async (ctx: { skip: () => void }) => {
    if (subgroups && !getGpu().features.subgroups) ctx.skip();
    await runDecode(getGpu(), c, seed, subgroups);
  };
  const cases: DecodeCase[] = [
    // The test model's head dim, every GQA ratio; lengths 1, 17, ~100 batched, one empty row.
    { seqLens: [1, 17, 100], nKvHeads: 2, group: 1, headDim: 8, blockSize: 16 },
    { seqLens: [17, 1, 100, 0], nKvHeads: 2, group: 2, headDim: 8, blockSize: 16 },
    { seqLens: [100, 17, 1], nKvHeads: 2, group: 4, headDim: 8, blockSize: 5 },
    { seqLens: [1, 100, 17], nKvHeads: 1, group: 8, headDim: 8, blockSize: 7 },
    { seqLens: [1, 17, 93], nKvHeads: 2, group: 4, headDim: 64, blockSize: 7, scale: 0.3 },
    { seqLens: [100, 1, 17], nKvHeads: 1, group: 8, headDim: 64, blockSize: 16 },
    { seqLens: [97, 17, 1], nKvHeads: 2, group: 2, headDim: 128, blockSize: 16 },
    { seqLens: [17, 101], nKvHeads: 1, group: 8, headDim: 128, blockSize: 5 },
    // Uneven GQA group (Qwen2.5's 7): 7 heads per workgroup.
    { seqLens: [40, 3], nKvHeads: 1, group: 7, headDim: 64, blockSize: 16 },
    // Group 16 (MQA-like): two workgroups of 8 heads per kv head.
    { seqLens: [30], nKvHeads: 1, group: 16, headDim: 8, blockSize: 16 },
    // f16 KV storage.
    { seqLens: [1, 17, 100], nKvHeads: 2, group: 4, headDim: 64, blockSize: 16, dtype: 'f16' },
    { seqLens: [33, 120], nKvHeads: 1, group: 2, headDim: 128, blockSize: 7, dtype: 'f16', partitionSize: 64, parts: 2 },
    { seqLens: [50, 9], nKvHeads: 1, group: 2, headDim: 256, blockSize: 16 },
  ];
  // The subgroup variant (each pipeline a compile of seconds on SwiftShader): headDim 8 (2 lanes per
  // K row, rows per pass beyond the partition) with an empty row, f16 KV, and below a long context
  // of 256-slot partitions at headDim 128 (several passes per partition, merged).
  const subgroupCases = new Set([1, 10]);
  cases.forEach((c, i) => {
    if (subgroups && !subgroupCases.has(i)) return;
    it(`headDim=${c.headDim} gqa=${c.group} blockSize=${c.blockSize} lens=${c.seqLens} ${c.dtype ?? 'f32'}${c.scale ? ` scale=${c.scale}` : ''}`, run(c, 100 + i));
  });

  // a GPU's plan (split towards GPU_TARGET_WORKGROUPS) on this device too
  if (!subgroups) it('long context: ~2000 slots over many split-K partitions (a GPU\'s default plan)', run({ seqLens: [2000, 700, 1], nKvHeads: 2, group: 4, headDim: 64, blockSize: 16, targetWorkgroups: GPU_TARGET_WORKGROUPS, parts: 63 }, 200));

  it('long context: 256-slot partitions, awkward block size, headDim 128', run({ seqLens: [1999, 300], nKvHeads: 1, group: 2, headDim: 128, blockSize: 7, partitionSize: 256, parts: 8 }, 201));
});

describe('attention decode plan', () => {
  const getGpu = useGpu();

  it('on a GPU more partitions when the grid is small (batch 1, short context), 256-slot ones when it is large; a software device keeps 256', () => {
    const gpu = getGpu();
    // Llama-3-8B's heads: 8 kv heads of 4 query heads, one workgroup each.
    const llama = { nHeads: 32, nKvHeads: 8, headDim: 128 };
    const at = (batch: number, maxKvLen: number) => decodePlan(gpu, { ...llama, batch, maxKvLen, targetWorkgroups: GPU_TARGET_WORKGROUPS });
    expect(decodePlan(gpu, { ...llama, batch: 1, maxKvLen: 512, targetWorkgroups: 0 })).toMatchObject({ partitionSize: 256, numParts: 2 });
    if (gpu.adapter.isSoftware) expect(decodePlan(gpu, { ...llama, batch: 1, maxKvLen: 512 }).partitionSize).toBe(256);
    expect(at(1, 512)).toMatchObject({ partitionSize: 32, numParts: 16, gq: 4 });
    expect(at(1, 8192).partitionSize).toBe(64); // 8 rows x 128 partitions = 1024 workgroups
    expect(at(64, 4096)).toMatchObject({ partitionSize: 256, numParts: 16 });
    expect(at(1, 20).numParts).toBe(1); // one partition: written directly, no merge
  });

  it('the subgroup variant shares a K row among at most 8 lanes and at most the smallest subgroup', (ctx) => {
    const gpu = getGpu();
    if (!gpu.features.subgroups) ctx.skip();
    const min = gpu.adapter.subgroupMinSize;
    expect(subgroupLanes(gpu, 128, true)).toBe(Math.min(8, min));
    expect(subgroupLanes(gpu, 8, true)).toBe(Math.min(2, min));
    expect(subgroupLanes(gpu, 4, true)).toBe(1);
    expect(subgroupLanes(gpu, 128, false)).toBe(0);
  });
});

describe('attention merge', () => {
  const getGpu = useGpu();

  for (const [rows, parts, headDim] of [
    [5, 4, 8],
    [3, 2, 128],
    [7, 17, 64],
  ]) {
    it(`merges given partials: rows=${rows} parts=${parts} headDim=${headDim}`, async () => {
      const gpu = getGpu();
      const partOut = normalArray(rows * parts * headDim, rows * 31 + parts);
      const ml = new Float32Array(rows * parts * 2);
      const mls = uniformArray(rows * parts * 2, rows + parts * 7, -8, 8);
      for (let i = 0; i < rows * parts; i++) {
        ml[i * 2] = mls[i * 2];
        ml[i * 2 + 1] = 1 + Math.abs(mls[i * 2 + 1]) * 20;
      }
      // Empty partials (sum 0) must be skipped whatever their outputs hold; row 0 has none at all.
      for (let s = 0; s < parts; s++) ml[s * 2 + 1] = 0;
      ml[(1 * parts + parts - 1) * 2 + 1] = 0;
      partOut.fill(NaN, 0, parts * headDim);
      partOut.fill(NaN, (1 * parts + parts - 1) * headDim, (1 * parts + parts) * headDim);
      const ob = gpu.upload(partOut);
      const mb = gpu.upload(ml);
      const out = gpu.createBuffer(rows * headDim * 4);
      const outMl = gpu.createBuffer(rows * 8);
      const out2 = gpu.createBuffer(rows * headDim * 4);
      const step = gpu.step();
      attentionMerge(step, { partOut: ob, partMl: mb, out, outMl, rows, parts, headDim });
      attentionMerge(step, { partOut: ob, partMl: mb, out: out2, rows, parts, headDim });
      await step.submit();
      const want = attentionMergeRef(partOut, ml, rows, parts, headDim);
      expectClose(await gpu.readF32(out, rows * headDim), want.out, MERGE_TOL, 'merge');
      expectClose(await gpu.readF32(out2, rows * headDim), want.out, MERGE_TOL, 'merge (no stats)');
      const gotMl = await gpu.readF32(outMl, rows * 2);
      // Row 0 had no partial: sum 0 (its max is the empty sentinel).
      expect(gotMl[1]).toBe(0);
      expectClose(gotMl.subarray(2), want.ml.subarray(2), MERGE_TOL, 'merged stats');
      for (const b of [ob, mb, out, outMl, out2]) b.destroy();
    });
  }

  it('a static-window partial merged with a retrieved-token partial equals attention over their union', async () => {
    // The ANN use: per head row, one table holds sinks + a recent window (whole blocks), the other
    // a retrieved, token-granular subset of the remaining slots. A pool [numBlocks, 16, headDim]
    // is the same memory as [numBlocks * 16, 1, headDim], so a list of absolute slots is a block
    // table with blockSize 1: no K/V is copied. Both dispatches write partials into one buffer
    // (partBase 0 and winParts), and one merge combines them.
    const gpu = getGpu();
    const [headDim, blockSize, nKvHeads, group] = [64, 16, 2, 4];
    const nHeads = nKvHeads * group;
    const seqLens = [300, 170];
    const batch = seqLens.length;
    const cache = await makeCache(gpu, { seqLens, nKvHeads, headDim, blockSize, seed: 300 });
    const { layout } = cache;
    const winBlocks: number[][] = [];
    const winSlots: number[][] = [];
    const retSlots: number[][] = [];
    const rand = mulberry32(302);
    for (let row = 0; row < layout.numRows; row++) {
      const len = layout.kvLen[row];
      const nb = Math.ceil(len / blockSize);
      // Window: sink block 0 plus the last (partial) block, which must come last in its table.
      winBlocks.push([layout.blockTable[row * layout.tableStride], layout.blockTable[row * layout.tableStride + nb - 1]]);
      const win = [...Array.from({ length: blockSize }, (_, i) => i), ...Array.from({ length: len - (nb - 1) * blockSize }, (_, i) => (nb - 1) * blockSize + i)];
      winSlots.push(win.map((i) => slotOf(layout, row, i)));
      // Retrieved: a random ~30% of the tokens in between, in random order.
      const picked: number[] = [];
      for (let i = blockSize; i < (nb - 1) * blockSize; i++) if (rand() < 0.3) picked.push(slotOf(layout, row, i));
      retSlots.push(picked.sort(() => rand() - 0.5));
    }
    const tableOf = (lists: number[][]) => {
      const stride = Math.max(1, ...lists.map((l) => l.length));
      const t = new Uint32Array(lists.length * stride);
      lists.forEach((l, r) => t.set(l, r * stride));
      return { t, stride, len: new Uint32Array(lists.map((l) => l.length)) };
    };
    const win = tableOf(winBlocks);
    const winLen = new Uint32Array(winSlots.map((w) => w.length));
    const ret = tableOf(retSlots);
    // The reference attends to the union, listed as absolute slots (blockSize 1).
    const union = tableOf(winSlots.map((w, r) => [...w, ...retSlots[r]]));

    const q = normalArray(batch * nHeads * headDim, 301, 2);
    const qb = gpu.upload(q);
    const bufs = [win.t, winLen, ret.t, ret.len].map((a) => gpu.upload(a));
    const [winT, winL, retT, retL] = bufs;
    const partitionSize = 64;
    const shape = { batch, nHeads, nKvHeads, headDim, partitionSize };
    const winParts = decodePlan(gpu, { ...shape, maxKvLen: Math.max(...winLen) }).numParts;
    const retParts = decodePlan(gpu, { ...shape, maxKvLen: Math.max(...ret.len) }).numParts;
    expect(retParts).toBeGreaterThan(1);
    const stride = winParts + retParts;
    const rows = batch * nHeads;
    const partOut = gpu.createBuffer(rows * stride * headDim * 4);
    const partMl = gpu.createBuffer(rows * stride * 8);
    const out = gpu.createBuffer(q.byteLength);
    const step = gpu.step();
    const common = { kPool: cache.gpuKv.kPool, vPool: cache.gpuKv.vPool, q: qb, partOut, partMl, partStride: stride, ...shape };
    attentionDecodePartials(step, { ...common, blockSize, blockTable: winT, tableStride: win.stride, kvLen: winL, maxKvLen: Math.max(...winLen), partBase: 0 });
    attentionDecodePartials(step, { ...common, blockSize: 1, blockTable: retT, tableStride: ret.stride, kvLen: retL, maxKvLen: Math.max(...ret.len), partBase: winParts });
    attentionMerge(step, { partOut, partMl, out, rows, parts: stride, headDim });
    await step.submit();
    const want = attentionDecodeRef({ ...cache.host, blockTable: union.t, tableStride: union.stride, blockSize: 1 }, q, union.len, shape);
    expectClose(await gpu.readF32(out, q.length), want, TOL, 'window + retrieved');
    for (const b of [qb, ...bufs, partOut, partMl, out]) b.destroy();
    destroy(cache);
  });
});

interface PrefillCase {
  qLens: number[];
  nKvHeads: number;
  group: number;
  headDim: number;
  blockSize: number;
  dtype?: KvDtype;
  tile?: { bm: number; bk: number };
  scale?: number;
}

/** Packs whole prompts (ctxLen == qLen) in one dispatch and checks against the reference. */
async function runPrefill(gpu: Gpu, c: PrefillCase, seed: number): Promise<void> {
  const nHeads = c.nKvHeads * c.group;
  const cache = await makeCache(gpu, { seqLens: c.qLens, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: c.blockSize, seed, dtype: c.dtype });
  const totalTokens = c.qLens.reduce((a, b) => a + b, 0);
  const seqs: PrefillSeq[] = [];
  let qStart = 0;
  c.qLens.forEach((len, s) => {
    seqs.push({ qStart, qLen: len, ctxLen: len, headRowBase: s * c.nKvHeads });
    qStart += len;
  });
  const q = normalArray(totalTokens * nHeads * c.headDim, seed * 3 + 3, 1.5);
  const qb = gpu.upload(q);
  const mb = gpu.upload(prefillMeta(seqs));
  const out = gpu.createBuffer(q.byteLength);
  const shape = { nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, scale: c.scale };
  const step = gpu.step();
  attentionPrefill(step, { ...cache.gpuKv, ...shape, q: qb, out, meta: mb, numSeqs: seqs.length, maxQLen: Math.max(...c.qLens), tile: c.tile });
  await step.submit();
  const want = attentionPrefillRef(cache.host, q, seqs, { ...shape, totalTokens });
  expectClose(await gpu.readF32(out, q.length), want, TOL, 'prefill');
  destroy(cache);
  for (const b of [qb, mb, out]) b.destroy();
}

describe('attention prefill', () => {
  const getGpu = useGpu();
  const cases: PrefillCase[] = [
    { qLens: [1, 17, 100], nKvHeads: 2, group: 1, headDim: 8, blockSize: 16 },
    { qLens: [17, 100, 1], nKvHeads: 2, group: 2, headDim: 8, blockSize: 7 },
    { qLens: [100, 1, 17], nKvHeads: 2, group: 4, headDim: 8, blockSize: 5 },
    { qLens: [1, 17, 100], nKvHeads: 1, group: 8, headDim: 8, blockSize: 16 },
    { qLens: [17, 93, 1], nKvHeads: 2, group: 4, headDim: 64, blockSize: 7, scale: 0.3 },
    { qLens: [1, 97, 17], nKvHeads: 1, group: 2, headDim: 128, blockSize: 16 },
    { qLens: [17, 70], nKvHeads: 1, group: 8, headDim: 128, blockSize: 5 },
    { qLens: [40, 3], nKvHeads: 1, group: 7, headDim: 64, blockSize: 16 },
    { qLens: [1, 17, 100], nKvHeads: 2, group: 4, headDim: 64, blockSize: 16, dtype: 'f16' },
    // headDim 256 (16 x 8 tiles), and the smallest tile (as on a 16 KiB workgroup-memory device).
    { qLens: [50, 9], nKvHeads: 1, group: 2, headDim: 256, blockSize: 16 },
    { qLens: [3, 60], nKvHeads: 2, group: 2, headDim: 64, blockSize: 7, tile: { bm: 16, bk: 8 } },
  ];
  cases.forEach((c, i) => {
    it(`headDim=${c.headDim} gqa=${c.group} blockSize=${c.blockSize} lens=${c.qLens} ${c.dtype ?? 'f32'}${c.tile ? ` tile=${c.tile.bm}x${c.tile.bk}` : ''}${c.scale ? ` scale=${c.scale}` : ''}`, () => runPrefill(getGpu(), c, 400 + i));
  });

  it('chunked prefill (3 chunks, two sequences, mixed in each dispatch) matches one pass', async () => {
    const gpu = getGpu();
    // Same pipeline as the headDim=64 gqa=4 blockSize=7 case above (compiles are slow here).
    const [headDim, blockSize, nKvHeads, group] = [64, 7, 2, 4];
    const nHeads = nKvHeads * group;
    const lens = [100, 37];
    // Chunk boundaries per sequence: [0, a), [a, b), [b, len).
    const bounds = [
      [0, 30, 61, 100],
      [0, 10, 37, 37],
    ];
    const layout = buildPagedLayout({ seqLens: lens, nKvHeads, blockSize, seed: 500 });
    const k = normalArray(137 * nKvHeads * headDim, 501);
    const v = normalArray(137 * nKvHeads * headDim, 502);
    const q = normalArray(137 * nHeads * headDim, 503, 1.5);
    // Token rows of the prompts in k/v/q: sequence 0 first, then sequence 1.
    const first = [0, 100];
    const rowsOf = (a: Float32Array, width: number, seq: number, from: number, to: number) => a.subarray((first[seq] + from) * width, (first[seq] + to) * width);
    const bytes = kvPoolBytes(layout.numBlocks, blockSize, headDim);
    const table = gpu.upload(layout.blockTable);
    const shape = { nHeads, nKvHeads, headDim };

    const run = async (chunks: number): Promise<Float32Array> => {
      const kPool = gpu.createBuffer(bytes);
      const vPool = gpu.createBuffer(bytes);
      const result = new Float32Array(q.length);
      for (let c = 0; c < chunks; c++) {
        const parts = lens.map((_, s) => (chunks === 1 ? { from: 0, to: lens[s] } : { from: bounds[s][c], to: bounds[s][c + 1] }));
        const live = parts.map((p, s) => ({ ...p, s })).filter((p) => p.to > p.from);
        const tokens = live.reduce((a, p) => a + p.to - p.from, 0);
        const cat = (src: Float32Array, width: number) => {
          const o = new Float32Array(tokens * width);
          let t = 0;
          for (const p of live) {
            o.set(rowsOf(src, width, p.s, p.from, p.to), t * width);
            t += p.to - p.from;
          }
          return o;
        };
        const seqs: PrefillSeq[] = [];
        let qStart = 0;
        for (const p of live) {
          seqs.push({ qStart, qLen: p.to - p.from, ctxLen: p.to, headRowBase: p.s * nKvHeads });
          qStart += p.to - p.from;
        }
        const kb = gpu.upload(cat(k, nKvHeads * headDim));
        const vb = gpu.upload(cat(v, nKvHeads * headDim));
        const mapping = gpu.upload(slotMappingFor(layout, live.map((p) => ({ seq: p.s, start: p.from, len: p.to - p.from }))));
        const qb = gpu.upload(cat(q, nHeads * headDim));
        const mb = gpu.upload(prefillMeta(seqs));
        const out = gpu.createBuffer(tokens * nHeads * headDim * 4);
        const step = gpu.step();
        writeKv(step, { k: kb, v: vb, kPool, vPool, slotMapping: mapping, tokens, nKvHeads, headDim });
        attentionPrefill(step, {
          kPool,
          vPool,
          blockTable: table,
          tableStride: layout.tableStride,
          blockSize,
          ...shape,
          q: qb,
          out,
          meta: mb,
          numSeqs: seqs.length,
          maxQLen: Math.max(...seqs.map((s) => s.qLen)),
        });
        await step.submit();
        const got = await gpu.readF32(out, tokens * nHeads * headDim);
        let t = 0;
        for (const p of live) {
          result.set(got.subarray(t * nHeads * headDim, (t + p.to - p.from) * nHeads * headDim), (first[p.s] + p.from) * nHeads * headDim);
          t += p.to - p.from;
        }
        for (const b of [kb, vb, mapping, qb, mb, out]) b.destroy();
      }
      kPool.destroy();
      vPool.destroy();
      return result;
    };

    const one = await run(1);
    const three = await run(3);
    // Same math, different tile boundaries (and so a different order of the online-softmax
    // updates): both within TOL of the reference, so within 2 * TOL of each other.
    expectClose(three, one, { atol: 2 * TOL.atol, rtol: 2 * TOL.rtol }, '3 chunks vs 1');
    const hostK = new Float32Array(bytes / 4);
    const hostV = new Float32Array(bytes / 4);
    writeKvRef(hostK, hostV, k, v, slotMappingFor(layout, lens.map((len, seq) => ({ seq, start: 0, len }))), 137, nKvHeads, headDim);
    const host = { kPool: hostK, vPool: hostV, blockTable: layout.blockTable, tableStride: layout.tableStride, blockSize };
    const seqs = lens.map((len, s) => ({ qStart: first[s], qLen: len, ctxLen: len, headRowBase: s * nKvHeads }));
    expectClose(three, attentionPrefillRef(host, q, seqs, { ...shape, totalTokens: 137 }), TOL, 'chunked vs reference');
    table.destroy();
  });
});

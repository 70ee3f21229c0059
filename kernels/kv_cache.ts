import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { grid1d } from './grid.ts';
import { f16BitsToF32 } from './weights.ts';

/**
 * Paged KV cache layout (one K pool and one V pool per layer):
 *
 * - pool: [numBlocks, blockSize, headDim] values, f32 (4 bytes each) or f16 (2 bytes each, pairs
 *   packed little-endian into 32-bit words). Slot `s` of the pool (s = block * blockSize + offset)
 *   holds one K (or V) row at element offset s * headDim.
 * - a block belongs to one head row = one (sequence, kv head) pair: headRow = seqIndex * nKvHeads + kvHead.
 * - blockTable: u32 [numHeadRows, tableStride]; slot i of a head row (its i-th cached token) lives in
 *   pool block blockTable[row * tableStride + floor(i / blockSize)] at offset i % blockSize.
 * - kvLen: u32 [numHeadRows], the number of valid slots of each head row.
 *
 * RoPE is applied before K is stored, so attention over a head row does not depend on the order of
 * its slots: a ring buffer (sinks + recent window) or a gathered subset is just another table/length.
 * A pool [numBlocks, blockSize, headDim] is also the pool [numBlocks * blockSize, 1, headDim], so a
 * token-granular subset (e.g. vector-search hits) is a table of absolute slots read with blockSize 1.
 */
export type KvDtype = 'f32' | 'f16';

/** A slotMapping entry that makes writeKv skip the row (padding tokens). */
export const SKIP_SLOT = 0xffffffff;

/** Bytes of one K (or V) pool. */
export function kvPoolBytes(numBlocks: number, blockSize: number, headDim: number, dtype: KvDtype = 'f32'): number {
  return numBlocks * blockSize * headDim * (dtype === 'f16' ? 2 : 4);
}

export interface WriteKvArgs {
  /** [tokens, nKvHeads, headDim] f32, K after RoPE */
  k: Binding;
  /** [tokens, nKvHeads, headDim] f32 */
  v: Binding;
  kPool: Binding;
  vPool: Binding;
  /** u32 [tokens * nKvHeads]: absolute pool slot of (token t, kv head h) at t * nKvHeads + h, or SKIP_SLOT */
  slotMapping: Binding;
  tokens: number;
  nKvHeads: number;
  /** a multiple of 4 */
  headDim: number;
  /** storage type of the pools (default f32) */
  dtype?: KvDtype;
  /**
   * Where (token t, kv head h)'s rows are in k / v, elements, multiples of 4: at t * stride +
   * kOffset (vOffset) + h * headDim. Default [tokens, nKvHeads, headDim] (stride nKvHeads *
   * headDim, offsets 0); the K and V parts of a fused q/k/v buffer are stride (nHeads + 2 *
   * nKvHeads) * headDim, kOffset nHeads * headDim, vOffset (nHeads + nKvHeads) * headDim.
   */
  source?: { stride: number; kOffset: number; vOffset: number };
}

const WRITE_WG = 256;

/** Stores the step's new K/V rows into the pools at the slots of `slotMapping`. */
export function writeKv(step: Step, a: WriteKvArgs): void {
  if (a.headDim % 4 !== 0) throw new Error(`writeKv: headDim ${a.headDim} is not a multiple of 4`);
  const rows = a.tokens * a.nKvHeads;
  if (rows === 0) return;
  const src = a.source ?? { stride: a.nKvHeads * a.headDim, kOffset: 0, vOffset: 0 };
  if (![src.stride, src.kOffset, src.vOffset].every((n) => Number.isInteger(n / 4) && n >= 0)) throw new Error(`writeKv: source stride and offsets must be multiples of 4`);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('kv_cache', 'main', { WG: WRITE_WG, KV_F16: a.dtype === 'f16' ? 1 : 0 }),
    params: new Params().u32(rows).u32(a.headDim).u32(a.nKvHeads).u32(src.stride).u32(src.kOffset).u32(src.vOffset),
    buffers: [a.k, a.v, a.kPool, a.vPool, a.slotMapping],
    workgroups: grid1d(step.gpu, Math.ceil((rows * a.headDim) / 4 / WRITE_WG)),
  });
}

/** CPU mirror of writeKv for f32 pools (tests, tools). */
export function writeKvRef(
  kPool: Float32Array,
  vPool: Float32Array,
  k: Float32Array,
  v: Float32Array,
  slotMapping: Uint32Array,
  tokens: number,
  nKvHeads: number,
  headDim: number,
): void {
  for (let r = 0; r < tokens * nKvHeads; r++) {
    const slot = slotMapping[r];
    if (slot === SKIP_SLOT) continue;
    kPool.set(k.subarray(r * headDim, (r + 1) * headDim), slot * headDim);
    vPool.set(v.subarray(r * headDim, (r + 1) * headDim), slot * headDim);
  }
}

/** A block table and lengths for a set of head rows (CPU side; upload blockTable and kvLen). */
export interface PagedLayout {
  blockSize: number;
  nKvHeads: number;
  /** head rows = sequences * nKvHeads */
  numRows: number;
  /** blocks the pools must hold (used ones plus spares) */
  numBlocks: number;
  /** u32 entries per head row of blockTable */
  tableStride: number;
  /** u32 [numRows, tableStride]; entries past a row's blocks are SKIP_SLOT */
  blockTable: Uint32Array;
  /** u32 [numRows] valid slots per head row */
  kvLen: Uint32Array;
}

export interface LayoutOptions {
  /** tokens cached per sequence; every kv head of sequence s gets seqLens[s] slots */
  seqLens: number[];
  nKvHeads: number;
  blockSize: number;
  /** slots to reserve per sequence (>= its length; default the length), e.g. a whole prompt that is written in chunks */
  capacity?: number[];
  /** unused blocks added to the pool, shuffled in among the used ones (default 3) */
  spareBlocks?: number;
  /** seed of the block shuffle (default 1) */
  seed?: number;
}

/**
 * Builds a block table with shuffled, non-contiguous block assignment (as an allocator produces
 * after some churn): every head row gets ceil(capacity / blockSize) distinct blocks drawn from a
 * random permutation of the pool.
 */
export function buildPagedLayout(o: LayoutOptions): PagedLayout {
  const bs = o.blockSize;
  const seqs = o.seqLens.length;
  const numRows = seqs * o.nKvHeads;
  const cap = o.seqLens.map((len, s) => {
    const c = o.capacity?.[s] ?? len;
    if (c < len) throw new Error(`buildPagedLayout: capacity ${c} < length ${len} for sequence ${s}`);
    return c;
  });
  const rowBlocks = cap.map((c) => Math.ceil(c / bs));
  const tableStride = Math.max(1, ...rowBlocks);
  const used = rowBlocks.reduce((a, b) => a + b, 0) * o.nKvHeads;
  const numBlocks = used + (o.spareBlocks ?? 3);
  const perm = Array.from({ length: numBlocks }, (_, i) => i);
  const rand = mulberry32(o.seed ?? 1);
  for (let i = numBlocks - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const blockTable = new Uint32Array(numRows * tableStride).fill(SKIP_SLOT);
  const kvLen = new Uint32Array(numRows);
  let next = 0;
  for (let s = 0; s < seqs; s++) {
    for (let h = 0; h < o.nKvHeads; h++) {
      const row = s * o.nKvHeads + h;
      kvLen[row] = o.seqLens[s];
      for (let b = 0; b < rowBlocks[s]; b++) blockTable[row * tableStride + b] = perm[next++];
    }
  }
  return { blockSize: bs, nKvHeads: o.nKvHeads, numRows, numBlocks, tableStride, blockTable, kvLen };
}

/** Absolute pool slot of slot `i` of head row `row`. */
export function slotOf(layout: Pick<PagedLayout, 'blockSize' | 'tableStride' | 'blockTable'>, row: number, i: number): number {
  const block = layout.blockTable[row * layout.tableStride + Math.floor(i / layout.blockSize)];
  if (block === undefined || block === SKIP_SLOT) throw new Error(`slotOf: head row ${row} has no block for slot ${i}`);
  return block * layout.blockSize + (i % layout.blockSize);
}

/**
 * writeKv's slotMapping for a packed batch of chunks: chunk c holds tokens start .. start + len of
 * sequence `seq` (slot index == position, full-history heads), in batch order.
 */
export function slotMappingFor(layout: PagedLayout, chunks: { seq: number; start: number; len: number }[]): Uint32Array {
  const total = chunks.reduce((a, c) => a + c.len, 0);
  const out = new Uint32Array(total * layout.nKvHeads);
  let t = 0;
  for (const c of chunks) {
    for (let i = 0; i < c.len; i++, t++) {
      for (let h = 0; h < layout.nKvHeads; h++) out[t * layout.nKvHeads + h] = slotOf(layout, c.seq * layout.nKvHeads + h, c.start + i);
    }
  }
  return out;
}

/** Decodes an f16 pool read back from the GPU into f32 values (same element order). */
export function unpackF16Pool(bytes: ArrayBuffer): Float32Array {
  const halves = new Uint16Array(bytes);
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = f16BitsToF32(halves[i]);
  return out;
}

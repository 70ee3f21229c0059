import type { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { GPU_TARGET_WORKGROUPS, grid1d } from './grid.ts';
import type { KvDtype } from './kv_cache.ts';
import { useSubgroups } from './subgroups.ts';

/**
 * Attention over the paged KV cache (layout documented in kernels/kv_cache.ts): decode (one query
 * per sequence, split-K with a log-sum-exp merge) and causal prefill (FlashAttention-style tiles).
 * GQA: query head h reads kv head floor(h / (nHeads / nKvHeads)).
 *
 * Head-wise KV (docs/headwise.md): with `columns` (decode) or `headwise` (prefill), KV head h of
 * the layer reads head row headRowBase + columnOf[layer * nKvHeads + h] instead of headRowBase + h;
 * in prefill, columns >= fullColumns are rings of sink + recent slots, read as they were before the
 * chunk plus the chunk's own new K/V rows, under the window mask. One dispatch serves both kinds.
 */

/** The paged K/V of one layer as the kernels read it. */
export interface PagedKv {
  /** [numBlocks, blockSize, headDim] in `dtype` */
  kPool: Binding;
  vPool: Binding;
  /** u32 [numHeadRows, tableStride] */
  blockTable: Binding;
  tableStride: number;
  blockSize: number;
  /** default f32 */
  dtype?: KvDtype;
}

export interface AttentionShape {
  nHeads: number;
  nKvHeads: number;
  /** a multiple of 4 (of 8 with f16 KV) with headDim / 4 dividing 128: 4, 8, 16, 32, 64, 128, 256, 512 */
  headDim: number;
  /** softmax scale, default 1 / sqrt(headDim) */
  scale?: number;
}

const WG = 128;
/** Query heads one workgroup attends together (sharing every K/V load), at most. */
const MAX_GQ = 8;

function checkShape(s: AttentionShape, dtype: KvDtype | undefined, who: string): number {
  if (!Number.isInteger(s.nHeads) || !Number.isInteger(s.nKvHeads) || s.nKvHeads < 1 || s.nHeads % s.nKvHeads !== 0) {
    throw new Error(`${who}: nHeads ${s.nHeads} is not a multiple of nKvHeads ${s.nKvHeads}`);
  }
  const d4 = s.headDim / 4;
  if (!Number.isInteger(d4) || WG % d4 !== 0) throw new Error(`${who}: unsupported headDim ${s.headDim} (a multiple of 4 with headDim / 4 dividing ${WG})`);
  if (dtype === 'f16' && s.headDim % 8 !== 0) throw new Error(`${who}: f16 KV needs headDim a multiple of 8, got ${s.headDim}`);
  return s.nHeads / s.nKvHeads;
}

/** Largest divisor of the GQA group size that is <= MAX_GQ: query heads per workgroup. */
function headsPerWorkgroup(group: number): number {
  for (let g = Math.min(group, MAX_GQ); g > 1; g--) if (group % g === 0) return g;
  return 1;
}

const defaultScale = (s: AttentionShape) => s.scale ?? 1 / Math.sqrt(s.headDim);

// ------------------------------------------------------------------------------------------------
// Decode

export interface DecodeShape extends AttentionShape {
  batch: number;
  /** upper bound of kvLen over the batch's head rows (sizes the split-K grid) */
  maxKvLen: number;
  /** slots per split-K partition (a power of two, 32..1024); default chosen from the grid size */
  partitionSize?: number;
  /**
   * Workgroups the default plan splits partitions towards (GPU_TARGET_WORKGROUPS on a hardware
   * adapter; 0 on a software one, whose few CPU cores gain nothing from more, smaller partitions)
   */
  targetWorkgroups?: number;
  /**
   * Force the subgroup variant (attention_decode_subgroup.wgsl: several lanes per K row, subgroup
   * reductions) on or off; default: the device's mode (kernels/subgroups.ts).
   */
  subgroups?: boolean;
}

/** Head-wise decode: where the layer's KV heads live (the columnOf of src/kv/head_pattern.ts headColumns, uploaded). */
export interface HeadwiseDecode {
  /** u32 [nLayers, nKvHeads]: KV head h of layer l reads column columnOf[l * nKvHeads + h] of its sequence */
  columnOf: Binding;
  layer: number;
}

export interface DecodePlan {
  /** slots per partition */
  partitionSize: number;
  /** partitions per head row (grid x) */
  numParts: number;
  /** query heads per workgroup */
  gq: number;
  /** workgroup memory of the partition kernel, bytes */
  workgroupBytes: number;
}

const decodeSmem = (gq: number, headDim: number, part: number) => gq * headDim * 4 + Math.max(gq * part, WG * 4) * 4 + gq * WG * 4;

/**
 * Split-K plan: partitions of 256 slots, halved (down to 32) while the grid (head rows x head
 * groups x partitions, so batch, kv heads and context length together) would have fewer than
 * the target's workgroups (GPU_TARGET_WORKGROUPS on a GPU), so short contexts and small batches
 * still give a large GPU parallel work; a context that fits one partition needs no merge.
 */
export function decodePlan(gpu: Gpu, s: DecodeShape): DecodePlan {
  const group = checkShape(s, undefined, 'decodePlan');
  const gq = headsPerWorkgroup(group);
  const rowsGrid = s.batch * s.nKvHeads * (group / gq);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  let part = s.partitionSize ?? 256;
  if (s.partitionSize === undefined) {
    const target = s.targetWorkgroups ?? (gpu.adapter.isSoftware ? 0 : GPU_TARGET_WORKGROUPS);
    while (part > 32 && rowsGrid * Math.ceil(s.maxKvLen / part) < target) part /= 2;
  }
  if (!Number.isInteger(Math.log2(part)) || part < 32 || part > 1024) throw new Error(`decodePlan: partitionSize ${part} must be a power of two in 32..1024`);
  while (decodeSmem(gq, s.headDim, part) > limit && part > 32) part /= 2;
  const workgroupBytes = decodeSmem(gq, s.headDim, part);
  if (workgroupBytes > limit) throw new Error(`decodePlan: needs ${workgroupBytes} bytes of workgroup memory, device has ${limit}`);
  return { partitionSize: part, numParts: Math.max(1, Math.ceil(s.maxKvLen / part)), gq, workgroupBytes };
}

export interface AttentionDecodeArgs extends PagedKv, DecodeShape {
  /** [batch, nHeads, headDim] f32 */
  q: Binding;
  /** [batch, nHeads, headDim] f32 */
  out: Binding;
  /** u32 [numHeadRows]; sequence b, kv head h reads head row b * nKvHeads + h (b * nKvHeads + column with `columns`) */
  kvLen: Binding;
  /**
   * Head-wise KV: the head rows to read. A ring is read after this step's write, when it holds
   * exactly the query's window (sink and latest recent tokens), so decode needs no mask.
   */
  columns?: HeadwiseDecode;
}

/** Decode attention: partitions (split-K), then the log-sum-exp merge unless one partition covers all. */
export function attentionDecode(step: Step, a: AttentionDecodeArgs): void {
  const plan = decodePlan(step.gpu, a);
  if (plan.numParts === 1) {
    dispatchDecode(step, a, plan, { out: a.out, ml: step.scratch(16, 'attention unused'), stride: 1, base: 0, direct: true });
    return;
  }
  const rows = a.batch * a.nHeads;
  const partOut = step.scratch(rows * plan.numParts * a.headDim * 4, 'attention partials');
  const partMl = step.scratch(rows * plan.numParts * 8, 'attention partial stats');
  dispatchDecode(step, a, plan, { out: partOut, ml: partMl, stride: plan.numParts, base: 0, direct: false });
  attentionMerge(step, { partOut, partMl, out: a.out, rows, parts: plan.numParts, headDim: a.headDim });
}

export interface DecodePartialsArgs extends PagedKv, DecodeShape {
  q: Binding;
  kvLen: Binding;
  /** f32 [batch * nHeads, partStride, headDim]: each partition's output, normalised by its own sum */
  partOut: Binding;
  /** f32 [batch * nHeads, partStride, 2]: (max of the scaled scores, sum of exp(score - max)); (-1e30, 0) when empty */
  partMl: Binding;
  /** partials per query row in partOut/partMl (>= partBase + plan.numParts) */
  partStride: number;
  /** index of this dispatch's first partition (so several dispatches can fill one partial buffer) */
  partBase: number;
  /** head-wise KV, as in AttentionDecodeArgs */
  columns?: HeadwiseDecode;
}

/**
 * Writes the split-K partials only (partials of query row r, partition j at index r * partStride +
 * partBase + j), for callers that merge them with partials of their own (see attentionMerge).
 * Returns the plan, whose numParts partials were written per row.
 */
export function attentionDecodePartials(step: Step, a: DecodePartialsArgs): DecodePlan {
  const plan = decodePlan(step.gpu, a);
  if (a.partBase + plan.numParts > a.partStride) {
    throw new Error(`attentionDecodePartials: ${plan.numParts} partitions from ${a.partBase} do not fit partStride ${a.partStride}`);
  }
  dispatchDecode(step, a, plan, { out: a.partOut, ml: a.partMl, stride: a.partStride, base: a.partBase, direct: false });
  return plan;
}

/** Most lanes that share one K row in the subgroup variant: 8 read 128 contiguous bytes per load. */
const MAX_ROW_LANES = 8;

/**
 * Lanes per K row of the subgroup variant, or 0 for the plain kernel: the largest power of two up to
 * MAX_ROW_LANES that divides headDim / 4 and fits the device's smallest subgroup. The plain kernel
 * when subgroups are off, when the device does not report its subgroup sizes, or when its largest
 * subgroup does not divide the workgroup (the variant needs full subgroups).
 */
export function subgroupLanes(gpu: Gpu, headDim: number, force?: boolean): number {
  if (!useSubgroups(gpu, force)) return 0;
  const { subgroupMinSize: min, subgroupMaxSize: max } = gpu.adapter;
  if (min < 1 || max < 1 || WG % max !== 0) return 0;
  let lanes = 1;
  while (lanes * 2 <= Math.min(MAX_ROW_LANES, min) && (headDim / 4) % (lanes * 2) === 0) lanes *= 2;
  return lanes;
}

function dispatchDecode(
  step: Step,
  a: PagedKv & DecodeShape & { q: Binding; kvLen: Binding; columns?: HeadwiseDecode },
  plan: DecodePlan,
  o: { out: Binding; ml: Binding; stride: number; base: number; direct: boolean },
): void {
  const group = checkShape(a, a.dtype, 'attentionDecode');
  const y = a.batch * a.nKvHeads * (group / plan.gq);
  if (y > step.gpu.limits.maxComputeWorkgroupsPerDimension) throw new Error(`attentionDecode: ${y} head rows exceed the grid limit`);
  const lanes = subgroupLanes(step.gpu, a.headDim, a.subgroups);
  step.dispatch({
    pipeline: step.gpu.pipelines.get(lanes ? 'attention_decode_subgroup' : 'attention_decode', 'main', {
      HEAD_DIM: a.headDim,
      BLOCK_SIZE: a.blockSize,
      GQ: plan.gq,
      WG,
      PART: plan.partitionSize,
      KV_F16: a.dtype === 'f16' ? 1 : 0,
      DIRECT: o.direct ? 1 : 0,
      HEADWISE: a.columns ? 1 : 0,
      ...(lanes ? { SG_LANES: lanes } : {}),
    }),
    params: new Params()
      .u32(a.nHeads)
      .u32(a.nKvHeads)
      .u32(group)
      .u32(a.tableStride)
      .f32(defaultScale(a))
      .u32(o.stride)
      .u32(o.base)
      .u32(a.columns ? a.columns.layer * a.nKvHeads : 0),
    buffers: [a.q, a.kPool, a.vPool, a.blockTable, a.kvLen, o.out, o.ml, a.columns?.columnOf ?? step.scratch(16, 'attention unused')],
    workgroups: [plan.numParts, y],
  });
}

export interface MergeArgs {
  /** f32 [rows, parts, headDim], each partial normalised by its own sum */
  partOut: Binding;
  /** f32 [rows, parts, 2]: (max, sum-exp); partials with sum 0 are skipped */
  partMl: Binding;
  /** f32 [rows, headDim] */
  out: Binding;
  /** optional f32 [rows, 2]: the merged (max, sum-exp), so a merged result can be merged again */
  outMl?: Binding;
  rows: number;
  parts: number;
  headDim: number;
}

const MERGE_WG = 256;

/**
 * Log-sum-exp merge of attention partials: out = sum_s w_s o_s / sum_s w_s, w_s = l_s exp(m_s - max m).
 * Merges split-K partitions, and equally a static-window partial with a retrieved-token partial.
 */
export function attentionMerge(step: Step, a: MergeArgs): void {
  const n = a.rows * a.headDim;
  if (n === 0) return;
  const stats = a.outMl !== undefined;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('attention_decode', stats ? 'merge_stats' : 'merge', { MERGE_WG }),
    params: new Params().u32(a.rows).u32(a.parts).u32(a.headDim),
    buffers: stats ? [a.partOut, a.partMl, a.out, a.outMl as Binding] : [a.partOut, a.partMl, a.out],
    workgroups: grid1d(step.gpu, Math.ceil(n / MERGE_WG)),
  });
}

// ------------------------------------------------------------------------------------------------
// Prefill

/** One sequence of a prefill batch. */
export interface PrefillSeq {
  /** first row of its queries in the packed q */
  qStart: number;
  /** queries (new tokens) in this chunk */
  qLen: number;
  /** slots cached for the sequence, this chunk included (>= qLen) */
  ctxLen: number;
  /** head row of its kv head 0 (seqIndex * nKvHeads) */
  headRowBase: number;
}

/**
 * The u32 metadata buffer of attentionPrefill: [numSeqs, 4] = (qStart, qLen, ctxLen, headRowBase),
 * then, for a head-wise cache, the column table columnOf [nLayers, nKvHeads] (in the metadata rather
 * than a binding of its own, so the kernel stays within 8 storage buffers).
 */
export function prefillMeta(seqs: PrefillSeq[], columnOf?: ArrayLike<number>): Uint32Array {
  const m = new Uint32Array(seqs.length * 4 + (columnOf?.length ?? 0));
  seqs.forEach((s, i) => {
    if (s.qLen > s.ctxLen) throw new Error(`prefillMeta: sequence ${i} has qLen ${s.qLen} > ctxLen ${s.ctxLen}`);
    m.set([s.qStart, s.qLen, s.ctxLen, s.headRowBase], i * 4);
  });
  if (columnOf) m.set(columnOf, seqs.length * 4);
  return m;
}

export interface PrefillPlan {
  /** query rows ((token, head) pairs) per tile */
  bm: number;
  /** slots per K/V tile */
  bk: number;
  /** query heads per workgroup */
  gq: number;
  /** tokens per tile */
  tq: number;
  workgroupBytes: number;
}

const PREFILL_TILES: [number, number][] = [
  [64, 32],
  [32, 32],
  [32, 16],
  [16, 16],
  [16, 8],
];

const prefillSmem = (bm: number, bk: number, headDim: number) => {
  const dp = headDim / 4 + 1;
  return bm * dp * 16 + bk * dp * 16 + bm * (bk + 1) * 4 + 3 * bm * 4 + bk * 4;
};

/**
 * The largest tile (BM query rows x BK slots) that fits the device's workgroup memory, or the given
 * one (BM a multiple of 16 up to 64, BK a multiple of 8 up to 32) when it fits.
 */
export function prefillPlan(gpu: Gpu, s: AttentionShape, tile?: { bm: number; bk: number }): PrefillPlan {
  const group = checkShape(s, undefined, 'prefillPlan');
  const gq = headsPerWorkgroup(group);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  const rg = WG / (s.headDim / 4);
  if (tile && !(tile.bm % 16 === 0 && tile.bm >= 16 && tile.bm <= 64 && tile.bk % 8 === 0 && tile.bk >= 8 && tile.bk <= 32)) {
    throw new Error(`prefillPlan: unsupported tile ${tile.bm}x${tile.bk}`);
  }
  for (const [bm, bk] of tile ? [[tile.bm, tile.bk]] : PREFILL_TILES) {
    if (Math.ceil(bm / rg) > 16 || bm < gq) continue;
    const bytes = prefillSmem(bm, bk, s.headDim);
    if (bytes <= limit) return { bm, bk, gq, tq: Math.floor(bm / gq), workgroupBytes: bytes };
  }
  throw new Error(`prefillPlan: no tile${tile ? ` ${tile.bm}x${tile.bk}` : ''} for headDim ${s.headDim} fits ${limit} bytes of workgroup memory`);
}

export interface AttentionPrefillArgs extends PagedKv, AttentionShape {
  /** [totalTokens, nHeads, headDim] f32 */
  q: Binding;
  /** [totalTokens, nHeads, headDim] f32; rows of no sequence are left untouched */
  out: Binding;
  /** u32 [numSeqs, 4], see prefillMeta */
  meta: Binding;
  numSeqs: number;
  /** upper bound of qLen over the batch (sizes the grid) */
  maxQLen: number;
  /** tile override (tests, tuning); default: the largest that fits, see prefillPlan */
  tile?: { bm: number; bk: number };
  /** head-wise KV: rings and the column table (then in `meta`, see prefillMeta) */
  headwise?: HeadwisePrefill;
}

/**
 * Head-wise prefill. Full columns (< fullColumns) are read from the pool as without a pattern:
 * written before the attention, this chunk included. A ring column is read as it was *before* the
 * chunk, min(before, sink + recent) slots at positions ringPosition(i, before, sink, recent), plus
 * the chunk's own keys from kNew/vNew, masked by the window (a query at p sees k <= p with
 * k < sink or k > p - recent); so the chunk's ring slots must be written after this dispatch.
 */
export interface HeadwisePrefill {
  layer: number;
  fullColumns: number;
  sink: number;
  recent: number;
  /**
   * This step's new K (after RoPE) and V rows, f32: element d of KV head h (the head, not its
   * column) of packed token t at t * newStride + offset + h * headDim + d. Default newStride
   * nKvHeads * headDim and offsets 0 ([tokens, nKvHeads, headDim], what writeKv takes); a fused
   * [tokens, nHeads + 2 * nKvHeads, headDim] qkv buffer is newStride (nHeads + 2 * nKvHeads) *
   * headDim, kOffset nHeads * headDim, vOffset (nHeads + nKvHeads) * headDim. Multiples of 4.
   */
  kNew: Binding;
  vNew: Binding;
  newStride?: number;
  kOffset?: number;
  vOffset?: number;
}

/** Causal prefill attention of a packed batch of sequences (chunks) over the paged cache. */
export function attentionPrefill(step: Step, a: AttentionPrefillArgs): void {
  const plan = prefillPlan(step.gpu, a, a.tile);
  const group = checkShape(a, a.dtype, 'attentionPrefill');
  const tilesPerSeq = Math.ceil(a.maxQLen / plan.tq);
  if (a.numSeqs === 0 || tilesPerSeq === 0) return;
  const [x, y] = grid1d(step.gpu, a.numSeqs * tilesPerSeq);
  const hw = a.headwise;
  const vec4s = (n: number, what: string) => {
    if (!(Number.isInteger(n / 4) && n >= 0)) throw new Error(`attentionPrefill: headwise ${what} ${n} is not a multiple of 4`);
    return n / 4;
  };
  if (hw && !(Number.isInteger(hw.sink) && hw.sink >= 0 && Number.isInteger(hw.recent) && hw.recent >= 1)) {
    throw new Error(`attentionPrefill: sink ${hw.sink} and recent ${hw.recent} must be integers, recent >= 1`);
  }
  // without a pattern the new-row bindings are never read: any small buffer
  const [kNew, vNew] = hw ? [hw.kNew, hw.vNew] : Array<Binding>(2).fill(step.scratch(16, 'attention unused'));
  step.dispatch({
    pipeline: step.gpu.pipelines.get('attention_prefill', 'main', {
      HEAD_DIM: a.headDim,
      BLOCK_SIZE: a.blockSize,
      GQ: plan.gq,
      WG,
      BM: plan.bm,
      BK: plan.bk,
      KV_F16: a.dtype === 'f16' ? 1 : 0,
      HEADWISE: hw ? 1 : 0,
    }),
    params: new Params()
      .u32(a.nHeads)
      .u32(a.nKvHeads)
      .u32(group)
      .u32(a.tableStride)
      .f32(defaultScale(a) * Math.LOG2E)
      .u32(a.numSeqs)
      .u32(tilesPerSeq)
      .u32(hw ? a.numSeqs * 4 + hw.layer * a.nKvHeads : 0)
      .u32(hw?.fullColumns ?? 0)
      .u32(hw?.sink ?? 0)
      .u32(hw?.recent ?? 1)
      .u32(hw ? vec4s(hw.newStride ?? a.nKvHeads * a.headDim, 'newStride') : 0)
      .u32(hw ? vec4s(hw.kOffset ?? 0, 'kOffset') : 0)
      .u32(hw ? vec4s(hw.vOffset ?? 0, 'vOffset') : 0),
    buffers: [a.q, a.kPool, a.vPool, a.blockTable, a.meta, a.out, kNew, vNew],
    workgroups: [x, y, a.nKvHeads * (group / plan.gq)],
  });
}

// ------------------------------------------------------------------------------------------------
// CPU references (float64)

/** Host copy of a layer's paged K/V (values, whatever the GPU storage type). */
export interface HostPagedKv {
  kPool: ArrayLike<number>;
  vPool: ArrayLike<number>;
  blockTable: ArrayLike<number>;
  tableStride: number;
  blockSize: number;
}

export interface Partial {
  /** [headDim], normalised by l */
  out: Float64Array;
  /** max of the scaled scores (natural log units) */
  m: number;
  /** sum of exp(score - m) */
  l: number;
}

/**
 * Attention of one query vector (q[qOffset .. qOffset + headDim]) to slots [from, to) of a head row,
 * in float64. An empty range gives out 0, m -1e30, l 0 (the kernels' empty partial).
 */
export function attentionPartialRef(
  kv: HostPagedKv,
  q: ArrayLike<number>,
  qOffset: number,
  row: number,
  from: number,
  to: number,
  headDim: number,
  scale = 1 / Math.sqrt(headDim),
): Partial {
  const n = Math.max(0, to - from);
  const scores = new Float64Array(n);
  const slots = new Array<number>(n);
  let m = -Infinity;
  for (let t = 0; t < n; t++) {
    const s = from + t;
    const slot = kv.blockTable[row * kv.tableStride + Math.floor(s / kv.blockSize)] * kv.blockSize + (s % kv.blockSize);
    slots[t] = slot;
    let dot = 0;
    for (let d = 0; d < headDim; d++) dot += q[qOffset + d] * kv.kPool[slot * headDim + d];
    scores[t] = dot * scale;
    m = Math.max(m, scores[t]);
  }
  const out = new Float64Array(headDim);
  if (n === 0) return { out, m: -1e30, l: 0 };
  let l = 0;
  for (let t = 0; t < n; t++) {
    const pr = Math.exp(scores[t] - m);
    l += pr;
    for (let d = 0; d < headDim; d++) out[d] += pr * kv.vPool[slots[t] * headDim + d];
  }
  for (let d = 0; d < headDim; d++) out[d] /= l;
  return { out, m, l };
}

/** Reference of attentionDecode: [batch, nHeads, headDim]. */
export function attentionDecodeRef(
  kv: HostPagedKv,
  q: ArrayLike<number>,
  kvLen: ArrayLike<number>,
  s: AttentionShape & { batch: number },
): Float64Array {
  const group = s.nHeads / s.nKvHeads;
  const out = new Float64Array(s.batch * s.nHeads * s.headDim);
  for (let b = 0; b < s.batch; b++) {
    for (let h = 0; h < s.nHeads; h++) {
      const row = b * s.nKvHeads + Math.floor(h / group);
      const qr = b * s.nHeads + h;
      const r = attentionPartialRef(kv, q, qr * s.headDim, row, 0, kvLen[row], s.headDim, defaultScale(s));
      out.set(r.out, qr * s.headDim);
    }
  }
  return out;
}

/** Reference of attentionPrefill: [totalTokens, nHeads, headDim] (rows of no sequence are 0). */
export function attentionPrefillRef(
  kv: HostPagedKv,
  q: ArrayLike<number>,
  seqs: PrefillSeq[],
  s: AttentionShape & { totalTokens: number },
): Float64Array {
  const group = s.nHeads / s.nKvHeads;
  const out = new Float64Array(s.totalTokens * s.nHeads * s.headDim);
  for (const seq of seqs) {
    for (let i = 0; i < seq.qLen; i++) {
      const pos = seq.ctxLen - seq.qLen + i;
      for (let h = 0; h < s.nHeads; h++) {
        const qr = (seq.qStart + i) * s.nHeads + h;
        const row = seq.headRowBase + Math.floor(h / group);
        const r = attentionPartialRef(kv, q, qr * s.headDim, row, 0, pos + 1, s.headDim, defaultScale(s));
        out.set(r.out, qr * s.headDim);
      }
    }
  }
  return out;
}

/** Reference of attentionMerge: merged outputs [rows, headDim] and stats [rows, 2]. */
export function attentionMergeRef(
  partOut: ArrayLike<number>,
  partMl: ArrayLike<number>,
  rows: number,
  parts: number,
  headDim: number,
): { out: Float64Array; ml: Float64Array } {
  const out = new Float64Array(rows * headDim);
  const ml = new Float64Array(rows * 2);
  for (let r = 0; r < rows; r++) {
    let mx = -1e30;
    for (let s = 0; s < parts; s++) if (partMl[(r * parts + s) * 2 + 1] > 0) mx = Math.max(mx, partMl[(r * parts + s) * 2]);
    let l = 0;
    for (let s = 0; s < parts; s++) {
      const i = r * parts + s;
      if (!(partMl[i * 2 + 1] > 0)) continue;
      const w = partMl[i * 2 + 1] * Math.exp(partMl[i * 2] - mx);
      l += w;
      for (let d = 0; d < headDim; d++) out[r * headDim + d] += w * partOut[i * headDim + d];
    }
    if (l > 0) for (let d = 0; d < headDim; d++) out[r * headDim + d] /= l;
    ml[r * 2] = mx;
    ml[r * 2 + 1] = l;
  }
  return { out, ml };
}

/**
 * Decode attention with a key index: the kernels that prepare it (shaders/ann_attention.wgsl).
 * `annCollect` samples prefill queries into a head row's build-query reservoir; `annSlotTable`
 * turns each indexed head row's static window and the ids its search found into a slot table
 * (one pool slot per entry) that attentionDecodePartials reads with blockSize 1.
 */
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { annFill } from './ann.ts';
import { grid1d } from './grid.ts';

/** Words of RowMeta in the shader (row, n, lo, hi, dst, padding). */
export const ROW_META_WORDS = 8;

/** One indexed head row of a decode step. */
export interface SlotRow {
  /** its kv head row in the model's block table */
  row: number;
  /** keys it holds (the decode token's included) */
  n: number;
  /** the middle is [lo, hi): [0, lo) is the sink, [hi, n) the recent keys not yet indexed */
  lo: number;
  hi: number;
  /** its row in the slot table (batch index * nKvHeads + kv head) */
  dst: number;
}

export interface SlotTableArgs {
  rows: SlotRow[];
  /** i32 [rows, idsPerRow]: the group's found ids per row (-1 where none) */
  ids: Binding;
  idsPerRow: number;
  /** the model's block table, as attention reads it */
  blockTable: Binding;
  tableStride: number;
  blockSize: number;
  headDim: number;
  /** u32 [tableRows, outStride] out; lengths u32 [tableRows], filled with 0 by the caller for rows not listed */
  table: Binding;
  outStride: number;
  lengths: Binding;
}

/** Bitmap words per row for middles up to `maxHi` keys. */
export const bitmapWords = (maxHi: number) => Math.max(1, Math.ceil(maxHi / 32));

/** Records the slot table of the listed rows: static window, then the union of found middle keys in key order. */
export function annSlotTable(step: Step, a: SlotTableArgs): void {
  const r = a.rows.length;
  if (r === 0) return;
  const words = bitmapWords(Math.max(...a.rows.map((x) => x.hi)));
  for (const x of a.rows) {
    if (!(0 <= x.lo && x.lo <= x.hi && x.hi <= x.n)) throw new Error(`annSlotTable: bad ranges lo ${x.lo} hi ${x.hi} n ${x.n}`);
    if (x.lo + (x.n - x.hi) + Math.min(x.hi - x.lo, a.idsPerRow) > a.outStride) throw new Error(`annSlotTable: row ${x.dst} needs more than ${a.outStride} slots`);
  }
  const meta = new Uint32Array(r * ROW_META_WORDS);
  a.rows.forEach((x, i) => meta.set([x.row, x.n, x.lo, x.hi, x.dst], i * ROW_META_WORDS));
  const metaBuf = step.upload(meta, 'ann rows');
  const bits = step.scratch(r * words * 4, 'ann union bits');
  annFill(step, bits, r * words);
  const constants = { HEAD_DIM: a.headDim, BLOCK_SIZE: a.blockSize };
  const params = new Params().u32(a.tableStride).u32(r).u32(words).u32(a.idsPerRow).u32(a.outStride).u32(0).u32(0).u32(0).u32(0);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_attention', 'mark', constants),
    params,
    buffers: [metaBuf, a.ids, bits],
    workgroups: grid1d(step.gpu, Math.ceil((r * a.idsPerRow) / 64)),
  });
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_attention', 'gather', constants),
    params,
    buffers: [metaBuf, bits, a.blockTable, a.table, a.lengths],
    workgroups: [r],
  });
}

/**
 * Positions a row attends to (reference of annSlotTable, as positions): [0, lo), [hi, n), then the
 * distinct found ids in [lo, hi), ascending.
 */
export function slotPositionsRef(x: Pick<SlotRow, 'n' | 'lo' | 'hi'>, found: ArrayLike<number>): number[] {
  const mid = [...new Set(Array.from(found).filter((id) => id >= x.lo && id < x.hi))].sort((a, b) => a - b);
  return [...Array.from({ length: x.lo }, (_, i) => i), ...Array.from({ length: x.n - x.hi }, (_, i) => x.hi + i), ...mid];
}

// --- build-query reservoir -------------------------------------------------------------------

/** 32-bit mix of (seed, position) (the murmur3 finaliser). */
function mix(seed: number, p: number): number {
  let h = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ p) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Reservoir slot of the token at position p (Algorithm R with a hash of the position for its
 * random draw): p < slots keeps slot p; a later token replaces slot j = hash(p) mod (p + 1) when j
 * < slots, else it is not kept (-1). A pure function of p, so every layer and every chunking of a
 * prompt keeps the same uniform sample of its positions.
 */
export function reservoirSlot(p: number, slots: number, seed: number): number {
  if (p < slots) return p;
  const j = mix(seed, p) % (p + 1);
  return j < slots ? j : -1;
}

/** (token row, slot) pairs for tokens [row0, row0 + count) at positions from `position`; a later token wins a slot. */
export function reservoirPairs(row0: number, position: number, count: number, slots: number, seed: number): Uint32Array {
  const bySlot = new Map<number, number>();
  for (let t = 0; t < count; t++) {
    const j = reservoirSlot(position + t, slots, seed);
    if (j >= 0) bySlot.set(j, row0 + t);
  }
  return Uint32Array.from([...bySlot].flatMap(([slot, row]) => [row, slot]));
}

export interface CollectArgs {
  /** f32 [tokens, nHeads, headDim]: the step's queries (after RoPE) */
  q: Binding;
  nHeads: number;
  group: number;
  headDim: number;
  /** u32 [n, 2] (token row, slot), from reservoirPairs */
  pairs: Uint32Array;
  /** kv head of each reservoir block */
  heads: readonly number[];
  /** f32 [heads, slots, group, headDim] */
  reservoir: Binding;
  slots: number;
}

/** Copies the group queries of the sampled tokens into their reservoir slots. */
export function annCollect(step: Step, a: CollectArgs): void {
  const n = a.pairs.length / 2;
  if (n === 0 || a.heads.length === 0) return;
  const total = n * a.heads.length * a.group * (a.headDim / 4);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_attention', 'collect', { HEAD_DIM: a.headDim }),
    params: new Params().u32(0).u32(n).u32(0).u32(0).u32(0).u32(a.nHeads).u32(a.group).u32(a.heads.length).u32(a.slots),
    buffers: [a.q, step.upload(a.pairs, 'ann pairs'), step.upload(Uint32Array.from(a.heads), 'ann heads'), a.reservoir],
    workgroups: grid1d(step.gpu, Math.ceil(total / 64)),
  });
}

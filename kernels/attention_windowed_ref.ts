import type { AttentionShape, HostPagedKv } from './attention.ts';
import { ringPosition } from '../src/kv/paged_kv.ts';

/**
 * Float64 references of head-wise attention (docs/headwise.md): a streaming head's query at
 * position p sees the keys at positions k <= p with k < sink or k > p - recent; a retrieval head
 * sees every k <= p. Two forms: by definition over the whole history (`windowedAttentionRef`),
 * and as a head-wise kernel must compute it from the paged cache (`pagedWindowedAttentionRef`),
 * which the kernel tests check the GPU against.
 */

/** The window of streaming heads. */
export interface AttentionWindow {
  sink: number;
  recent: number;
}

/** Whether a query at position `query` sees the key at `key`; `window` null: a retrieval head. */
export function keyVisible(key: number, query: number, window: AttentionWindow | null): boolean {
  return key <= query && (window === null || key < window.sink || key > query - window.recent);
}

/** Softmax-weighted sum over the keys `visible` admits: [headDim]. */
function attend(dot: (key: number) => number, value: (key: number, d: number) => number, keys: readonly number[], headDim: number, scale: number): Float64Array {
  const scores = keys.map((key) => dot(key) * scale);
  const m = Math.max(...scores);
  const out = new Float64Array(headDim);
  let l = 0;
  keys.forEach((key, i) => {
    const p = Math.exp(scores[i] - m);
    l += p;
    for (let d = 0; d < headDim; d++) out[d] += p * value(key, d);
  });
  for (let d = 0; d < headDim; d++) out[d] /= l;
  return out;
}

/**
 * Windowed causal attention of one sequence by definition: q [tokens, nHeads, headDim], k and v
 * [tokens, nKvHeads, headDim] at positions 0..tokens-1; `streaming[h]` says KV head h's kind.
 * Returns [tokens, nHeads, headDim].
 */
export function windowedAttentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: AttentionShape & AttentionWindow & { tokens: number; streaming: readonly boolean[] },
): Float64Array {
  const { nHeads, nKvHeads, headDim } = s;
  const group = nHeads / nKvHeads;
  const scale = s.scale ?? 1 / Math.sqrt(headDim);
  const out = new Float64Array(s.tokens * nHeads * headDim);
  for (let t = 0; t < s.tokens; t++) {
    for (let h = 0; h < nHeads; h++) {
      const kh = Math.floor(h / group);
      const window = s.streaming[kh] ? s : null;
      const keys = Array.from({ length: t + 1 }, (_, j) => j).filter((j) => keyVisible(j, t, window));
      const qo = (t * nHeads + h) * headDim;
      const dot = (j: number) => {
        let acc = 0;
        for (let d = 0; d < headDim; d++) acc += q[qo + d] * k[(j * nKvHeads + kh) * headDim + d];
        return acc;
      };
      out.set(attend(dot, (j, d) => v[(j * nKvHeads + kh) * headDim + d], keys, headDim, scale), qo);
    }
  }
  return out;
}

/** One sequence's chunk in a head-wise step. */
export interface WindowedChunk {
  /** first row of its queries (and of its new K/V rows) in the packed batch */
  qStart: number;
  /** new tokens */
  qLen: number;
  /** tokens the sequence held before this chunk: the chunk's first position */
  before: number;
  /** head row (table row) of its column 0: seqIndex * nKvHeads */
  headRowBase: number;
}

/**
 * What a head-wise attention kernel computes for one layer (docs/headwise.md, "kernels"): the
 * pool holds every head row's K/V *before* this step's tokens are written (a ring's slots that
 * the chunk will overwrite still hold their old tokens), and the chunk's own keys and values are
 * read from the step's new rows kNew/vNew [rows, nKvHeads, headDim]. KV head h of this layer lives
 * in column columnOf[h]; columns >= fullColumns are rings, whose slot i holds the token at
 * ringPosition(i, before, sink, recent). Decode is the case qLen = 1.
 * Returns [rows, nHeads, headDim] (rows of no chunk are 0).
 */
export function pagedWindowedAttentionRef(
  kv: HostPagedKv,
  q: ArrayLike<number>,
  kNew: ArrayLike<number>,
  vNew: ArrayLike<number>,
  chunks: readonly WindowedChunk[],
  s: AttentionShape & AttentionWindow & { rows: number; fullColumns: number; columnOf: ArrayLike<number> },
): Float64Array {
  const { nHeads, nKvHeads, headDim, sink, recent } = s;
  const group = nHeads / nKvHeads;
  const scale = s.scale ?? 1 / Math.sqrt(headDim);
  const out = new Float64Array(s.rows * nHeads * headDim);
  const slotOf = (row: number, i: number) => kv.blockTable[row * kv.tableStride + Math.floor(i / kv.blockSize)] * kv.blockSize + (i % kv.blockSize);
  for (const c of chunks) {
    for (let kh = 0; kh < nKvHeads; kh++) {
      const column = s.columnOf[kh];
      const ring = column >= s.fullColumns;
      const row = c.headRowBase + column;
      // cached keys by position: slot index -> position (a full row holds position i at index i)
      const held = ring ? Math.min(c.before, sink + recent) : c.before;
      const cached = Array.from({ length: held }, (_, i) => ({ pos: ring ? ringPosition(i, c.before, sink, recent) : i, slot: slotOf(row, i) }));
      const slotByPos = new Map(cached.map((e) => [e.pos, e.slot]));
      const key = (pos: number, d: number, pool: ArrayLike<number>, fresh: ArrayLike<number>) =>
        pos >= c.before ? fresh[((c.qStart + pos - c.before) * nKvHeads + kh) * headDim + d] : pool[slotByPos.get(pos)! * headDim + d];
      for (let i = 0; i < c.qLen; i++) {
        const p = c.before + i;
        const window = ring ? { sink, recent } : null;
        const keys = [...cached.map((e) => e.pos), ...Array.from({ length: i + 1 }, (_, j) => c.before + j)].filter((pos) => keyVisible(pos, p, window));
        for (let h = kh * group; h < (kh + 1) * group; h++) {
          const qo = ((c.qStart + i) * nHeads + h) * headDim;
          const dot = (pos: number) => {
            let acc = 0;
            for (let d = 0; d < headDim; d++) acc += q[qo + d] * key(pos, d, kv.kPool, kNew);
            return acc;
          };
          out.set(attend(dot, (pos, d) => key(pos, d, kv.vPool, vNew), keys, headDim, scale), qo);
        }
      }
    }
  }
  return out;
}

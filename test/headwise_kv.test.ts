import { describe, expect, it } from 'vitest';
import { headwiseMarkdown, headwiseShapes, runHeadwiseBench } from '../bench/headwise.ts';
import { attentionDecodeRef } from '../kernels/attention.ts';
import { keyVisible, pagedWindowedAttentionRef, windowedAttentionRef, type WindowedChunk } from '../kernels/attention_windowed_ref.ts';
import { KvPoolExhausted, NO_SLOT, PagedKvTables, ringIndex, ringPosition, type HeadwiseKv } from '../src/kv/paged_kv.ts';
import { mulberry32, uniformArray } from '../src/util/rng.ts';

const layout = { nLayers: 1, nKvHeads: 3, headDim: 4, blockSize: 4, bytesPerElement: 4 };

/** The positions a row keeps after `n` tokens, by definition. */
function keptPositions(n: number, hw: HeadwiseKv, column: number): number[] {
  const all = Array.from({ length: n }, (_, p) => p);
  return column < hw.fullColumns ? all : all.filter((p) => p < hw.sink || p >= n - hw.recent);
}

describe('head-wise KV bookkeeping', () => {
  const hw = { fullColumns: 1, sink: 3, recent: 6 }; // rings of 9 slots: 3 blocks

  it('rings stop growing at sink + recent slots; full columns keep every token', () => {
    const kv = new PagedKvTables(layout, 100, hw);
    let n = 0;
    for (const chunk of [1, 2, 5, 1, 7, 13, 1, 1, 30]) {
      const need = kv.blocksNeeded(5, chunk);
      const used = kv.pool.used;
      kv.append(5, chunk);
      n += chunk;
      expect(kv.pool.used - used).toBe(need);
      expect(kv.pool.used).toBe(Math.ceil(n / 4) + 2 * Math.ceil(Math.min(n, 9) / 4));
      expect(kv.tokens(5)).toBe(n);
      expect([0, 1, 2].map((h) => kv.length(5, h))).toEqual([n, Math.min(n, 9), Math.min(n, 9)]);
    }
    expect(kv.blocksByKind()).toEqual({ retrieval: Math.ceil(n / 4), streaming: 6 });
    expect(kv.blocksHeld(5)).toBe(kv.pool.used);
    // a new sequence's footprint for the same tokens
    expect(kv.blocksNeeded(-1, n)).toBe(kv.pool.used);
  });

  it('maps each kept token to a slot of its own, NO_SLOT for tokens a later token of the same append overwrites', () => {
    const rand = mulberry32(11);
    for (const h of [hw, { fullColumns: 0, sink: 0, recent: 5 }, { fullColumns: 2, sink: 20, recent: 3 }]) {
      const kv = new PagedKvTables(layout, 200, h);
      let n = 0;
      for (let i = 0; i < 12; i++) {
        const chunk = 1 + Math.floor(rand() * 11);
        const slots = kv.append(1, chunk);
        n += chunk;
        for (let col = 0; col < 3; col++) {
          const kept = new Set(keptPositions(n, h, col));
          for (let t = 0; t < chunk; t++) expect(slots[t * 3 + col] === NO_SLOT).toBe(!kept.has(n - chunk + t));
          const held = kv.heldSlots(1, col);
          expect(Array.from(held.positions)).toEqual([...kept]);
          expect(new Set(held.slots).size).toBe(held.slots.length);
          // the slot a position got when written is where the row still holds it
          for (let t = 0; t < chunk; t++) {
            const pos = n - chunk + t;
            if (kept.has(pos)) expect(held.slots[[...kept].indexOf(pos)]).toBe(slots[t * 3 + col]);
          }
          // ringPosition inverts ringIndex for every slot a ring holds
          if (col >= h.fullColumns) for (const pos of kept) expect(ringPosition(ringIndex(pos, h.sink, h.recent), n, h.sink, h.recent)).toBe(pos);
        }
      }
    }
  });

  it('without rings (or with every column full) every number is as before; maxSequenceTokens counts whole rings', () => {
    const plain = new PagedKvTables(layout, 30);
    const full = new PagedKvTables(layout, 30, { fullColumns: 3, sink: 1, recent: 1 });
    expect(full.maxSequenceTokens).toBe(plain.maxSequenceTokens);
    for (const kv of [plain, full]) kv.append(1, 9);
    expect(Array.from(full.append(1, 5))).toEqual(Array.from(plain.append(1, 5)));
    expect(full.batchTables([1])).toEqual(plain.batchTables([1]));
    // 1 full column + 2 rings of 3 blocks: the full column gets what the rings leave
    const kv = new PagedKvTables(layout, 30, hw);
    expect(kv.maxSequenceTokens).toBe((30 - 6) * 4);
    kv.append(1, kv.maxSequenceTokens);
    expect(kv.pool.free).toBe(0);
    expect(() => kv.append(1, 1)).toThrow(KvPoolExhausted);
    expect(new PagedKvTables(layout, 30, { fullColumns: 0, sink: 3, recent: 6 }).maxSequenceTokens).toBe(Infinity);
    // a pool too small for whole rings: every row linear, an equal share each, at most the window
    expect(new PagedKvTables(layout, 7, hw).maxSequenceTokens).toBe(8);
  });

  it('forks share full blocks and ring sink blocks, copy the rest, and refuse once the parent ring has moved on', () => {
    const h = { fullColumns: 1, sink: 4, recent: 8 };
    const kv = new PagedKvTables(layout, 100, h);
    kv.append(1, 10);
    expect(kv.canFork(1, 8)).toBe(true);
    const copies = kv.fork(1, 2, 8);
    // full column: 2 shared blocks; each ring: sink block shared, the second block copied
    expect(copies.length).toBe(2);
    expect(kv.pool.used).toBe(3 * 3 + 2);
    for (let col = 0; col < 3; col++) {
      const parent = kv.heldSlots(1, col);
      const child = kv.heldSlots(2, col);
      expect(Array.from(child.positions)).toEqual(Array.from({ length: 8 }, (_, p) => p));
      // the child's slot of each position is the parent's, or the copy of the parent's block
      child.positions.forEach((pos, i) => {
        const ps = parent.slots[pos];
        const cs = child.slots[i];
        const copied = copies.find((c) => c.from === Math.floor(ps / 4));
        expect(cs).toBe(copied ? copied.to * 4 + (ps % 4) : ps);
      });
    }
    kv.append(2, 20); // the child wraps its own ring: no shared block written
    kv.append(1, 3); // parent at 13 tokens: its ring lost position 4
    expect(kv.canFork(1, 8)).toBe(false);
    expect(() => kv.fork(1, 3, 8)).toThrow(/no longer hold/);
    expect(kv.fork(1, 3, 4)).toEqual([]); // within the sink: every block shared
    kv.free(3);
    kv.free(1);
    kv.free(2);
    expect(kv.pool.used).toBe(0);
    // a ring's shared sink block is never written: only a truncated fork could, and is refused
    const sinks = new PagedKvTables(layout, 100, { fullColumns: 0, sink: 8, recent: 4 });
    sinks.append(1, 8);
    expect(sinks.fork(1, 2, 8)).toEqual([]);
    sinks.truncate(2, 6);
    expect(() => sinks.append(2, 1)).toThrow(/shared KV block/);
  });
});

/** Causal attention with an explicit -Infinity mask: the brute force the references are checked against. */
function maskedAttention(q: Float32Array, k: Float32Array, v: Float32Array, T: number, nHeads: number, nKv: number, d: number, streaming: boolean[], sink: number, recent: number): Float64Array {
  const out = new Float64Array(T * nHeads * d);
  const g = nHeads / nKv;
  for (let h = 0; h < nHeads; h++) {
    const kh = Math.floor(h / g);
    for (let i = 0; i < T; i++) {
      const row = new Float64Array(T);
      for (let j = 0; j < T; j++) {
        const masked = j > i || (streaming[kh] && j >= sink && j <= i - recent);
        let dot = 0;
        for (let x = 0; x < d; x++) dot += q[(i * nHeads + h) * d + x] * k[(j * nKv + kh) * d + x];
        row[j] = masked ? -Infinity : dot / Math.sqrt(d);
      }
      const m = Math.max(...row);
      const e = row.map((s) => Math.exp(s - m));
      const sum = e.reduce((a, b) => a + b, 0);
      for (let j = 0; j < T; j++) for (let x = 0; x < d; x++) out[(i * nHeads + h) * d + x] += (e[j] / sum) * v[(j * nKv + kh) * d + x];
    }
  }
  return out;
}

// float64 sums of at most ~100 products of values in [-1, 1] in different orders: |error| << 1e-12
const TOL = 1e-12;
const expectClose = (a: Float64Array, b: Float64Array) => {
  expect(a.length).toBe(b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  expect(worst).toBeLessThan(TOL);
};

describe('windowed attention references', () => {
  const nHeads = 6;
  const nKv = 3;
  const d = 4;

  it('the definition equals brute-force masked attention (ring wrap, sink larger than the context, GQA groups of mixed kinds)', () => {
    for (const [T, sink, recent] of [
      [40, 2, 5],
      [30, 40, 4],
      [17, 0, 1],
    ]) {
      const q = uniformArray(T * nHeads * d, 1);
      const k = uniformArray(T * nKv * d, 2);
      const v = uniformArray(T * nKv * d, 3);
      const streaming = [true, false, true];
      const ref = windowedAttentionRef(q, k, v, { nHeads, nKvHeads: nKv, headDim: d, tokens: T, sink, recent, streaming });
      expectClose(ref, maskedAttention(q, k, v, T, nHeads, nKv, d, streaming, sink, recent));
    }
    expect(keyVisible(3, 10, { sink: 2, recent: 7 })).toBe(false);
    expect(keyVisible(4, 10, { sink: 2, recent: 7 })).toBe(true);
    expect(keyVisible(1, 10, { sink: 2, recent: 1 })).toBe(true);
  });

  it('the paged form over the head-wise tables equals the definition, chunk by chunk across the window', () => {
    const bs = 4;
    const lay = { nLayers: 1, nKvHeads: nKv, headDim: d, blockSize: bs, bytesPerElement: 4 };
    // two layers' worth of column maps: head 1 streaming in column 2, or head 0 streaming with heads permuted
    const cases = [
      { hw: { fullColumns: 2, sink: 2, recent: 5 }, columnOf: [0, 2, 1], chunks: [3, 9, 1, 1, 12, 2, 1] },
      { hw: { fullColumns: 1, sink: 6, recent: 3 }, columnOf: [2, 0, 1], chunks: [1, 4, 7, 1, 8, 1] },
      { hw: { fullColumns: 0, sink: 40, recent: 2 }, columnOf: [0, 1, 2], chunks: [5, 11, 1, 3] },
    ];
    for (const { hw, columnOf, chunks } of cases) {
      const T = chunks.reduce((a, b) => a + b, 0);
      const q = uniformArray(T * nHeads * d, 4);
      const k = uniformArray(T * nKv * d, 5);
      const v = uniformArray(T * nKv * d, 6);
      const streaming = columnOf.map((c) => c >= hw.fullColumns);
      const want = windowedAttentionRef(q, k, v, { nHeads, nKvHeads: nKv, headDim: d, tokens: T, ...hw, streaming });
      const kv = new PagedKvTables(lay, 64, hw);
      const kPool = new Float64Array(64 * bs * d);
      const vPool = new Float64Array(64 * bs * d);
      let before = 0;
      for (const n of chunks) {
        const slots = kv.append(9, n);
        const { table, stride } = kv.batchTables([9]);
        const rows = (x: Float32Array, w: number) => x.subarray(before * w * d, (before + n) * w * d);
        const chunk: WindowedChunk = { qStart: 0, qLen: n, before, headRowBase: 0 };
        const got = pagedWindowedAttentionRef({ kPool, vPool, blockTable: table, tableStride: stride, blockSize: bs }, rows(q, nHeads), rows(k, nKv), rows(v, nKv), [chunk], {
          nHeads,
          nKvHeads: nKv,
          headDim: d,
          rows: n,
          ...hw,
          columnOf,
        });
        expectClose(got, want.subarray(before * nHeads * d, (before + n) * nHeads * d));
        // then the step's K/V is written: KV head h of this layer at the slots of its column
        for (let t = 0; t < n; t++) {
          for (let h = 0; h < nKv; h++) {
            const slot = slots[t * nKv + columnOf[h]];
            if (slot === NO_SLOT) continue;
            for (let x = 0; x < d; x++) {
              kPool[slot * d + x] = k[((before + t) * nKv + h) * d + x];
              vPool[slot * d + x] = v[((before + t) * nKv + h) * d + x];
            }
          }
        }
        before += n;
      }
    }
  });

  it("decode needs no mask: after the token's write, a ring's held slots are exactly its query's window", () => {
    const hw = { fullColumns: 1, sink: 2, recent: 3 };
    const T = 23;
    const q = uniformArray(T * nHeads * d, 7);
    const k = uniformArray(T * nKv * d, 8);
    const v = uniformArray(T * nKv * d, 9);
    const want = windowedAttentionRef(q, k, v, { nHeads, nKvHeads: nKv, headDim: d, tokens: T, ...hw, streaming: [false, true, true] });
    const kv = new PagedKvTables({ ...layout, nKvHeads: nKv }, 64, hw);
    const kPool = new Float64Array(64 * 4 * d);
    const vPool = new Float64Array(64 * 4 * d);
    for (let t = 0; t < T; t++) {
      const slots = kv.append(0, 1);
      for (let h = 0; h < nKv; h++) {
        kPool.set(k.subarray((t * nKv + h) * d, (t * nKv + h + 1) * d), slots[h] * d);
        vPool.set(v.subarray((t * nKv + h) * d, (t * nKv + h + 1) * d), slots[h] * d);
      }
      const { table, lengths, stride } = kv.batchTables([0]);
      const got = attentionDecodeRef({ kPool, vPool, blockTable: table, tableStride: stride, blockSize: 4 }, q.subarray(t * nHeads * d, (t + 1) * nHeads * d), lengths, { nHeads, nKvHeads: nKv, headDim: d, batch: 1 });
      expectClose(got, want.subarray(t * nHeads * d, (t + 1) * nHeads * d));
    }
  });
});

describe('bench headwise', () => {
  it('bytes per sequence and sequences held follow the blocks of R full columns and nKv - R rings', () => {
    const o = { contexts: [1000, 32768], fractions: [0.25, 0.5], sink: 64, recent: 256, blockSize: 16, kvMemory: 2 ** 30, bytesPerElement: 2, seed: 1 };
    const report = runHeadwiseBench(o);
    expect(report.rows.length).toBe(3 * 2 * 3);
    for (const r of report.rows) {
      const shape = headwiseShapes().find((s) => s.name === r.model)!;
      const block = 2 * shape.nLayers * 16 * shape.headDim * 2;
      const R = Math.round(r.fraction * shape.nKvHeads);
      expect(r.retrievalHeads).toBe(R);
      const blocks = R * Math.ceil(r.context / 16) + (shape.nKvHeads - R) * Math.ceil(Math.min(r.context, 320) / 16);
      expect(r.bytesPerSequence).toBe(blocks * block);
      expect(r.maxSequences).toBe(Math.floor(Math.floor(2 ** 30 / block) / blocks));
    }
    expect(report.goals.map((g) => g.met)).toEqual([true, true, true]);
    expect(headwiseMarkdown(report)).toContain('3.89x');
  });
});

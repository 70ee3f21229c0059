import { describe, expect, it } from 'vitest';
import { BlockPool } from '../src/kv/block_pool.ts';
import { KvPoolExhausted, PagedKvTables, blockBytes, blocksForBudget } from '../src/kv/paged_kv.ts';
import { mulberry32 } from '../src/util/rng.ts';

const layout = { nLayers: 2, nKvHeads: 3, headDim: 8, blockSize: 4, bytesPerElement: 4 };

describe('paged KV tables', () => {
  it('sizes blocks and budgets', () => {
    expect(blockBytes(layout)).toBe(2 * 2 * 4 * 8 * 4);
    expect(blocksForBudget(layout, 10 * blockBytes(layout) + 5)).toBe(10);
  });

  it('grows sequences block by block without moving stored slots', () => {
    const kv = new PagedKvTables(layout, 64);
    const first = kv.append(7, 3); // 3 tokens: one block per head row
    expect(kv.pool.used).toBe(3);
    const more = kv.append(7, 6); // 9 tokens: three blocks per head row
    expect(kv.pool.used).toBe(9);
    expect(kv.length(7)).toBe(9);
    const { table, lengths, stride } = kv.batchTables([7]);
    expect(stride).toBe(3);
    expect(Array.from(lengths)).toEqual([9, 9, 9]);
    // every slot handed out is where the table says token t of head h lives
    const all = [...Array.from(first), ...Array.from(more)];
    for (let t = 0; t < 9; t++) {
      for (let h = 0; h < 3; h++) {
        expect(all[t * 3 + h]).toBe(table[h * stride + Math.floor(t / 4)] * 4 + (t % 4));
      }
    }
    expect(new Set(all).size).toBe(all.length); // no slot given twice
  });

  it('is all-or-nothing when the pool runs out, and freeing makes room again', () => {
    const kv = new PagedKvTables(layout, 7);
    kv.append(1, 8); // 2 blocks x 3 heads = 6
    expect(() => kv.append(2, 1)).toThrow(KvPoolExhausted);
    expect(kv.has(2)).toBe(false);
    expect(() => kv.append(1, 1)).toThrow(/3 blocks needed, 1 free/);
    expect(kv.length(1)).toBe(8); // unchanged by the failed append
    kv.free(1);
    expect(kv.pool.free).toBe(7);
    kv.append(2, 4);
    expect(kv.pool.used).toBe(3);
  });

  it('random grow/free sequences never share a block and return every block', () => {
    const rand = mulberry32(5);
    const kv = new PagedKvTables(layout, 200);
    const live = new Set<number>();
    for (let step = 0; step < 500; step++) {
      const seq = Math.floor(rand() * 12);
      if (live.has(seq) && rand() < 0.2) {
        kv.free(seq);
        live.delete(seq);
        continue;
      }
      try {
        kv.append(seq, 1 + Math.floor(rand() * 9));
        live.add(seq);
      } catch (e) {
        expect(e).toBeInstanceOf(KvPoolExhausted);
      }
      const { table, lengths, stride } = kv.batchTables([...live]);
      const owned: number[] = [];
      lengths.forEach((len, row) => owned.push(...table.subarray(row * stride, row * stride + Math.ceil(len / 4))));
      expect(new Set(owned).size).toBe(owned.length);
      expect(owned.length + kv.pool.free).toBe(200);
    }
    for (const s of live) kv.free(s);
    expect(kv.pool.free).toBe(200);
  });

  it('block pool refuses nonsense sizes', () => {
    expect(() => new BlockPool(0)).toThrow(RangeError);
    const p = new BlockPool(3);
    expect(p.take(4)).toBeNull();
    expect(p.take(3)).toEqual([0, 1, 2]);
  });
});

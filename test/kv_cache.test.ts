import { f16BitsToF32 } from '../kernels/weights.ts';
import { describe, expect, it } from 'vitest';
import {
  SKIP_SLOT,
  buildPagedLayout,
  kvPoolBytes,
  slotMappingFor,
  slotOf,
  unpackF16Pool,
  writeKv,
  writeKvRef,
} from '../kernels/kv_cache.ts';
import { normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';

describe('kv_cache layout helpers', () => {
  it('gives every head row distinct, shuffled blocks', () => {
    const layout = buildPagedLayout({ seqLens: [1, 17, 40, 0], nKvHeads: 3, blockSize: 5, seed: 7 });
    expect(layout.numRows).toBe(12);
    expect(layout.tableStride).toBe(8);
    const seen = new Set<number>();
    let contiguous = true;
    for (let row = 0; row < layout.numRows; row++) {
      const len = layout.kvLen[row];
      expect(len).toBe([1, 17, 40, 0][Math.floor(row / 3)]);
      for (let b = 0; b < Math.ceil(len / 5); b++) {
        const block = layout.blockTable[row * layout.tableStride + b];
        expect(block).toBeLessThan(layout.numBlocks);
        expect(seen.has(block)).toBe(false);
        seen.add(block);
        if (b > 0 && block !== layout.blockTable[row * layout.tableStride + b - 1] + 1) contiguous = false;
      }
      for (let b = Math.ceil(len / 5); b < layout.tableStride; b++) expect(layout.blockTable[row * layout.tableStride + b]).toBe(SKIP_SLOT);
    }
    expect(contiguous).toBe(false);
    expect(slotOf(layout, 4, 12)).toBe(layout.blockTable[4 * layout.tableStride + 2] * 5 + 2);
    const mapping = slotMappingFor(layout, [{ seq: 2, start: 10, len: 3 }]);
    expect(Array.from(mapping.subarray(0, 3))).toEqual([slotOf(layout, 6, 10), slotOf(layout, 7, 10), slotOf(layout, 8, 10)]);
  });

  it('decodes halves', () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
  });
});

describe('writeKv', () => {
  const getGpu = useGpu();

  for (const [headDim, blockSize, nKvHeads] of [
    [8, 16, 2],
    [64, 7, 3],
    [128, 5, 1],
  ]) {
    it(`f32 places rows bit-exactly: headDim=${headDim} blockSize=${blockSize} nKvHeads=${nKvHeads}`, async () => {
      const gpu = getGpu();
      const layout = buildPagedLayout({ seqLens: [1, 17, 30], nKvHeads, blockSize, seed: headDim });
      // A batch of chunks in any order, one of them mid-sequence.
      const chunks = [
        { seq: 1, start: 0, len: 17 },
        { seq: 0, start: 0, len: 1 },
        { seq: 2, start: 11, len: 19 },
      ];
      const mapping = slotMappingFor(layout, chunks);
      mapping[5] = SKIP_SLOT; // a padding row: must be skipped
      const tokens = 37;
      const k = normalArray(tokens * nKvHeads * headDim, 1 + headDim);
      const v = normalArray(tokens * nKvHeads * headDim, 2 + headDim);
      // Bit patterns a float path could alter: -0, a subnormal, a signalling NaN with payload.
      const kBits = new Uint32Array(k.buffer);
      kBits[0] = 0x80000000;
      kBits[1] = 0x00000001;
      kBits[2] = 0x7fa00001;
      const poolLen = layout.numBlocks * blockSize * headDim;
      // Pools start with a marker that must survive wherever the table does not point.
      const kPool = new Float32Array(poolLen).fill(-7.5);
      const vPool = new Float32Array(poolLen).fill(3.25);
      const kb = gpu.upload(k);
      const vb = gpu.upload(v);
      const kp = gpu.upload(kPool);
      const vp = gpu.upload(vPool);
      const mb = gpu.upload(mapping);
      const step = gpu.step();
      writeKv(step, { k: kb, v: vb, kPool: kp, vPool: vp, slotMapping: mb, tokens, nKvHeads, headDim });
      await step.submit();
      writeKvRef(kPool, vPool, k, v, mapping, tokens, nKvHeads, headDim);
      const kGot = new Uint32Array(await gpu.read(kp));
      const vGot = new Uint32Array(await gpu.read(vp));
      expect(kGot.length).toBe(poolLen);
      // Bitwise: the kernel is a copy.
      expect(kGot).toEqual(new Uint32Array(kPool.buffer));
      expect(vGot).toEqual(new Uint32Array(vPool.buffer));
      // And the reference agrees with the table: token 3 of chunk 0 (seq 1, position 3), kv head 0.
      const slot = slotOf(layout, 1 * nKvHeads, 3);
      expect(Array.from(new Float32Array(kGot.buffer, slot * headDim * 4, headDim))).toEqual(Array.from(k.subarray(3 * nKvHeads * headDim, (3 * nKvHeads + 1) * headDim)));
      for (const b of [kb, vb, kp, vp, mb]) b.destroy();
    });
  }

  it('f16 pools hold each value rounded to one of its two nearest halves', async () => {
    const gpu = getGpu();
    const [headDim, blockSize, nKvHeads] = [64, 16, 2];
    const layout = buildPagedLayout({ seqLens: [20, 9], nKvHeads, blockSize, seed: 3 });
    const chunks = [
      { seq: 0, start: 0, len: 20 },
      { seq: 1, start: 0, len: 9 },
    ];
    const mapping = slotMappingFor(layout, chunks);
    const tokens = 29;
    const k = normalArray(tokens * nKvHeads * headDim, 11, 3);
    const v = normalArray(tokens * nKvHeads * headDim, 12, 0.01);
    const bytes = kvPoolBytes(layout.numBlocks, blockSize, headDim, 'f16');
    const kp = gpu.createBuffer(bytes);
    const vp = gpu.createBuffer(bytes);
    const kb = gpu.upload(k);
    const vb = gpu.upload(v);
    const mb = gpu.upload(mapping);
    const step = gpu.step();
    writeKv(step, { k: kb, v: vb, kPool: kp, vPool: vp, slotMapping: mb, tokens, nKvHeads, headDim, dtype: 'f16' });
    await step.submit();
    const kGot = unpackF16Pool(await gpu.read(kp, 0, bytes));
    const vGot = unpackF16Pool(await gpu.read(vp, 0, bytes));
    const kWant = new Float32Array(kGot.length);
    const vWant = new Float32Array(vGot.length);
    writeKvRef(kWant, vWant, k, v, mapping, tokens, nKvHeads, headDim);
    // WGSL lets the f32 -> f16 conversion round either way, so allow one f16 ulp of the value
    // (2^-10 relative for normal halves, 2^-24 absolute for subnormals); untouched slots stay 0.
    for (const [got, want] of [
      [kGot, kWant],
      [vGot, vWant],
    ]) {
      for (let i = 0; i < want.length; i++) {
        const ulp = Math.max(2 ** (Math.floor(Math.log2(Math.abs(want[i]) || 2 ** -30)) - 10), 2 ** -24);
        if (!(Math.abs(got[i] - want[i]) <= ulp)) expect.fail(`element ${i}: ${got[i]} vs ${want[i]}`);
      }
    }
    for (const b of [kb, vb, kp, vp, mb]) b.destroy();
  });
});

import { describe, expect, it } from 'vitest';
import { embedding, embeddingRef, gatherRows } from '../kernels/embedding.ts';
import { WEIGHT_FORMATS, encodeWeights, f16BitsToF32, isQuantized, repackWeights } from '../kernels/weights.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Tolerance zero: an embedding row is a pure decode, and decoding is exact in f32 (f16 and bf16 ->
// f32 are exact; a quantised value f32(d) * f32(q) fits f32's 24-bit significand), so the GPU must
// return exactly the reference decoder's values.
const EXACT = { atol: 0, rtol: 0 };

const isNanBits = (u: number) => (u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0;

const ROWS = 37;

function tokenLists(): [string, number[]][] {
  const next = mulberry32(99);
  const many = Array.from({ length: 300 }, () => Math.floor(next() * ROWS));
  return [
    ['one token', [0]],
    ['repeats and the last row', [5, ROWS - 1, 5, 0, ROWS - 1, 5]],
    ['300 random tokens', many],
    ['an out-of-range id gives zeros', [3, ROWS, 0xffffffff, ROWS - 1]],
  ];
}

describe('embedding', () => {
  const getGpu = useGpu();
  for (const format of WEIGHT_FORMATS) {
    for (const dim of isQuantized(format) ? [32, 96] : [173, 64]) {
      for (const [what, tokens] of tokenLists()) {
        it(`${format} dim=${dim}: ${what}`, async () => {
          const gpu = getGpu();
          const table = encodeWeights(format, normalArray(ROWS * dim, dim + 17, 0.5), ROWS, dim);
          const tb = gpu.upload(repackWeights(format, table, dim));
          const ib = gpu.upload(new Uint32Array(tokens));
          const ob = gpu.createBuffer(tokens.length * dim * 4);
          const step = gpu.step();
          embedding(step, { table: tb, tokens: ib, out: ob, count: tokens.length, dim, rows: ROWS, format });
          await step.submit();
          const got = await gpu.readF32(ob, tokens.length * dim);
          expectClose(got, embeddingRef(format, table, tokens, dim, ROWS), EXACT, `${format} embedding`);
          for (const b of [tb, ib, ob]) b.destroy();
        });
      }
    }
  }

  // Every bf16 pattern at every position of an 8-element group and in the ragged group at the end
  // of a row (odd dim: the row padding follows it). Values compared as bits (the sign of zero
  // counts); a NaN must come back as a NaN (payloads are not promised by WGSL, see dequant.test.ts).
  it('bf16 dim=173: all 65536 bit patterns, bit-exact', async () => {
    const gpu = getGpu();
    const dim = 173;
    const rows = Math.ceil(0x10000 / dim);
    const table = new Uint16Array(rows * dim);
    for (let i = 0; i < table.length; i++) table[i] = i & 0xffff;
    const bytes = new Uint8Array(table.buffer);
    const next = mulberry32(7);
    const tokens = [...Array.from({ length: rows }, (_, r) => rows - 1 - r), ...Array.from({ length: 50 }, () => Math.floor(next() * rows))];
    const tb = gpu.upload(repackWeights('bf16', bytes, dim));
    const ib = gpu.upload(new Uint32Array(tokens));
    const ob = gpu.createBuffer(tokens.length * dim * 4);
    const step = gpu.step();
    embedding(step, { table: tb, tokens: ib, out: ob, count: tokens.length, dim, rows, format: 'bf16' });
    await step.submit();
    const got = await gpu.readU32(ob, tokens.length * dim);
    const want = new Uint32Array(embeddingRef('bf16', bytes, tokens, dim, rows).buffer);
    for (let i = 0; i < want.length; i++) {
      const ok = isNanBits(want[i]) ? isNanBits(got[i]) : got[i] === want[i];
      if (!ok) expect.fail(`bf16 embedding element ${i} (token ${tokens[Math.floor(i / dim)]}, col ${i % dim}): 0x${got[i].toString(16)}, expected 0x${want[i].toString(16)}`);
    }
    for (const b of [tb, ib, ob]) b.destroy();
  });

  it('rows default to what the table binding holds', async () => {
    const gpu = getGpu();
    const dim = 64;
    const table = encodeWeights('q4_0', normalArray(ROWS * dim, 5), ROWS, dim);
    const tokens = [ROWS - 1, ROWS, 2];
    const tb = gpu.upload(repackWeights('q4_0', table, dim));
    const ib = gpu.upload(new Uint32Array(tokens));
    const ob = gpu.createBuffer(tokens.length * dim * 4);
    const step = gpu.step();
    embedding(step, { table: tb, tokens: ib, out: ob, count: tokens.length, dim, format: 'q4_0' });
    await step.submit();
    expectClose(await gpu.readF32(ob, tokens.length * dim), embeddingRef('q4_0', table, tokens, dim, ROWS), EXACT, 'q4_0 embedding');
    for (const b of [tb, ib, ob]) b.destroy();
  });

  // gatherRows reads dense rows with no padding (activations, KV pool rows): an odd dim puts rows
  // at every offset; f16 pairs straddle rows. Exact: f32 is copied, f16 widened.
  for (const format of ['f32', 'f16'] as const) {
    it(`gatherRows ${format} dim=13: dense rows, an index past the rows gives zeros`, async () => {
      const gpu = getGpu();
      const dim = 13;
      const rows = 9;
      const words = format === 'f32' ? normalArray(rows * dim, 3) : Uint16Array.from(normalArray(rows * dim, 3), (_, i) => (i * 2731) & 0x7bff);
      const value = (e: number) => (format === 'f32' ? words[e] : f16BitsToF32(words[e]));
      const tokens = [8, 0, 3, rows, 3, 7];
      const tb = gpu.upload(words);
      const ib = gpu.upload(new Uint32Array(tokens));
      const ob = gpu.createBuffer(tokens.length * dim * 4);
      const step = gpu.step();
      gatherRows(step, { table: tb, tokens: ib, out: ob, count: tokens.length, dim, rows, format });
      await step.submit();
      const want = Float32Array.from({ length: tokens.length * dim }, (_, i) => {
        const id = tokens[Math.floor(i / dim)];
        return id < rows ? value(id * dim + (i % dim)) : 0;
      });
      expectClose(await gpu.readF32(ob, tokens.length * dim), want, EXACT, `${format} gather`);
      for (const b of [tb, ib, ob]) b.destroy();
    });
  }
});

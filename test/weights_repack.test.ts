import { describe, expect, it } from 'vitest';
import { dequantize } from '../kernels/dequant.ts';
import { embedding, embeddingRef } from '../kernels/embedding.ts';
import { matmul } from '../kernels/matmul.ts';
import { SUPERBLOCK, dequantizeRef, encodeWeights, f16BitsToF32, gpuWeightBytes, repackWeights, weightBytes } from '../kernels/weights.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// The q8_0 / q4_0 repack (kernels/weights.ts repackWeights) must be exact: every kernel that reads
// the repacked bytes gets back dequantizeRef's values of the GGUF bytes bit for bit (d * q is
// exact in f32, dequant.test.ts). Tolerance zero throughout: matmul is checked with one-hot X rows,
// so each output is 1 * w plus exact zeros, a weight element itself. Shapes: one row of K of one
// block, a row count that is not a multiple of 4 (the decode kernel's rows per workgroup) with a
// block count that is not one of SUPERBLOCK (a partial last superblock), and a long K of an odd
// block count.

const EXACT = { atol: 0, rtol: 0 };
const FORMATS = ['q8_0', 'q4_0'] as const;
type QFormat = (typeof FORMATS)[number];

// decodeM: X rows of the decode matmul (one-hot columns checked); tiled: whether the tiled matmul
// runs too. Long K keeps both small: its loops are the short ones repeated, slow on a software device.
const SHAPES: { n: number; k: number; what: string; decodeM: number; tiled: boolean }[] = [
  { n: 1, k: 32, what: 'one row of one block', decodeM: 8, tiled: true },
  { n: 7, k: 96, what: '7 rows of 3 blocks (partial superblock)', decodeM: 8, tiled: true },
  { n: 3, k: 4128, what: 'long K (129 blocks, over the decode kernel\'s 128 threads)', decodeM: 2, tiled: false },
];

/** The GPU layout decoded on the CPU from its specification (weights.ts SUPERBLOCK), independently of the shader. */
function decodeLayout(format: QFormat, bytes: Uint8Array, count: number): Float32Array {
  const qb = format === 'q8_0' ? 32 : 16;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  for (let b = 0; b < count / 32; b++) {
    const base = Math.floor(b / SUPERBLOCK) * (16 + SUPERBLOCK * qb);
    const j = b % SUPERBLOCK;
    const d = f16BitsToF32(view.getUint16(base + 2 * j, true));
    const q = base + 16 + j * qb;
    for (let e = 0; e < 32; e++) {
      const v = format === 'q8_0' ? view.getInt8(q + e) : ((bytes[q + (e >> 1)] >> (4 * (e & 1))) & 15) - 8;
      out[b * 32 + e] = d * v;
    }
  }
  return out;
}

/** One-hot X rows: row i has a 1 at column cols[i]. */
function oneHot(cols: number[], k: number): Float32Array {
  const x = new Float32Array(cols.length * k);
  cols.forEach((c, i) => (x[i * k + c] = 1));
  return x;
}

async function run(gpu: Gpu, record: (step: ReturnType<Gpu['step']>) => void, out: GPUBuffer, count: number): Promise<Float32Array> {
  const step = gpu.step();
  record(step);
  await step.submit();
  return gpu.readF32(out, count);
}

describe('q8_0 / q4_0 repacked at upload', () => {
  const getGpu = useGpu();

  for (const format of FORMATS) {
    for (const { n, k, what, decodeM, tiled } of SHAPES) {
      it(`${format} ${what}: [${n} x ${k}]`, async () => {
        const gpu = getGpu();
        const gguf = encodeWeights(format, normalArray(n * k, n * 31 + k, 0.5), n, k);
        const want = dequantizeRef(format, gguf, n * k);
        const packed = repackWeights(format, gguf);
        // size: GGUF's bytes per block plus 16 scale bytes per superblock of fewer than 8 blocks
        expect(packed.byteLength).toBe(gpuWeightBytes(format, n, k));
        expect(packed.byteLength % 16).toBe(0);
        expect(packed.byteLength - weightBytes(format, n, k)).toBe(((n * k) / 32) % SUPERBLOCK === 0 ? 0 : 16 - 2 * (((n * k) / 32) % SUPERBLOCK));
        expectClose(decodeLayout(format, packed, n * k), want, EXACT, `${format} layout`);

        const w = gpu.upload(packed);
        const deq = gpu.createBuffer(n * k * 4);
        expectClose(await run(gpu, (s) => dequantize(s, { w, out: deq, count: n * k, format }), deq, n * k), want, EXACT, `${format} dequant`);

        // every row, then an id past the table (zeros)
        const tokens = [...Array.from({ length: n }, (_, i) => n - 1 - i), n];
        const ids = gpu.upload(Uint32Array.from(tokens));
        const emb = gpu.createBuffer(tokens.length * k * 4);
        const gathered = await run(gpu, (s) => embedding(s, { table: w, tokens: ids, out: emb, count: tokens.length, dim: k, rows: n, format }), emb, tokens.length * k);
        expectClose(gathered, embeddingRef(format, gguf, tokens, k, n), EXACT, `${format} embedding`);

        // one-hot X picks column c of every W row: first and last element, block edges, random
        const next = mulberry32(k + n);
        const cols = [k - 1, 0, 31, Math.min(32, k - 1), 16, 15, ...Array.from({ length: 6 }, () => Math.floor(next() * k))];
        const subgroupRuns = gpu.features.subgroups ? [false, true] : [false];
        for (const [variant, m, subgroups] of [
          ...subgroupRuns.map((sg) => ['decode', decodeM, sg] as const),
          ...(tiled ? [['tiled', cols.length, false] as const] : []),
        ]) {
          const c = cols.slice(0, m);
          const x = gpu.upload(oneHot(c, k));
          const y = gpu.createBuffer(m * n * 4);
          const got = await run(gpu, (s) => matmul(s, { x, w, out: y, m, n, k, format, variant, subgroups }), y, m * n);
          const ref = Float32Array.from({ length: m * n }, (_, i) => want[(i % n) * k + c[Math.floor(i / n)]]);
          expectClose(got, ref, EXACT, `${format} matmul ${variant}${subgroups ? ' subgroups' : ''}`);
          x.destroy();
          y.destroy();
        }
        for (const b of [w, deq, ids, emb]) b.destroy();
      });
    }

    it(`${format}: concatenated GGUF matrices repack to the concatenation's layout (fused projections)`, () => {
      const [a, b] = [3, 6].map((n) => encodeWeights(format, normalArray(n * 64, n, 0.5), n, 64));
      const both = new Uint8Array([...a, ...b]);
      const packed = repackWeights(format, both);
      expectClose(decodeLayout(format, packed, 9 * 64), new Float32Array([...dequantizeRef(format, a, 3 * 64), ...dequantizeRef(format, b, 6 * 64)]), EXACT, `${format} fused`);
    });
  }

  it('f32 / f16 / bf16 bytes are uploaded unchanged', () => {
    const bytes = new Uint8Array([1, 2, 3, 4, 5, 6]);
    for (const format of ['f32', 'f16', 'bf16'] as const) expect(repackWeights(format, bytes)).toBe(bytes);
  });
});

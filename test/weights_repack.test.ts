import { describe, expect, it } from 'vitest';
import { dequantize } from '../kernels/dequant.ts';
import { embedding, embeddingRef } from '../kernels/embedding.ts';
import { matmul } from '../kernels/matmul.ts';
import { SUPERBLOCK, dequantizeRef, encodeWeights, f16BitsToF32, gpuWeightBytes, repackWeights, weightBytes } from '../kernels/weights.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// The upload layout (kernels/weights.ts repackWeights) must be exact: every kernel that reads the
// uploaded bytes gets back dequantizeRef's values of the GGUF bytes bit for bit (d * q is exact in
// f32, dequant.test.ts). Tolerance zero throughout: matmul is checked with one-hot X rows, so each
// output is 1 * w plus exact zeros, a weight element itself.
// q8_0 / q4_0 (superblocks): one row of K of one block, a row count that is not a multiple of 4
// (the decode kernel's rows per workgroup) with a block count that is not one of SUPERBLOCK (a
// partial last superblock), and a long K of an odd block count.
// f32 / f16 / bf16 (rows padded to whole groups of 8): K shorter than a group on one row, odd K
// whose padding lies between rows, and K = 4 mod 8 (f32: a whole padding vec4 after each row); rows
// of whole groups need no padding and are uploaded as the GGUF bytes themselves.

const EXACT = { atol: 0, rtol: 0 };
const QFORMATS = ['q8_0', 'q4_0'] as const;
const FFORMATS = ['f32', 'f16', 'bf16'] as const;
type QFormat = (typeof QFORMATS)[number];
type FFormat = (typeof FFORMATS)[number];

// decodeM: X rows of the decode matmul (one-hot columns checked); tiled: whether the tiled matmul
// runs too. Long K keeps both small: its loops are the short ones repeated, slow on a software device.
interface Shape {
  n: number;
  k: number;
  what: string;
  decodeM: number;
  tiled: boolean;
}
const QSHAPES: Shape[] = [
  { n: 1, k: 32, what: 'one row of one block', decodeM: 8, tiled: true },
  { n: 7, k: 96, what: '7 rows of 3 blocks (partial superblock)', decodeM: 8, tiled: true },
  { n: 3, k: 4128, what: 'long K (129 blocks, over the decode kernel\'s 128 threads)', decodeM: 2, tiled: false },
];
const FSHAPES: Shape[] = [
  { n: 1, k: 5, what: 'one row shorter than a group', decodeM: 8, tiled: true },
  { n: 7, k: 13, what: '7 rows of odd K', decodeM: 8, tiled: true },
  { n: 5, k: 36, what: 'K = 4 mod 8, past one 32-wide tile step', decodeM: 8, tiled: true },
];

/** The GPU layout decoded on the CPU from its specification (weights.ts SUPERBLOCK), independently of the shader. */
function decodeBlocks(format: QFormat, bytes: Uint8Array, count: number): Float32Array {
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

/**
 * The padded float layout decoded on the CPU from its specification (rows of k, each taking whole
 * 8-element groups: 16 bytes of f16 / bf16, 32 of f32), with a check that the padding is +0 bits.
 */
function decodeRows(format: FFormat, bytes: Uint8Array, n: number, k: number): Float32Array {
  const size = format === 'f32' ? 4 : 2;
  const stride = Math.ceil(k / 8) * 8 * size;
  expect(bytes.byteLength, `${format} padded size`).toBe(n * stride);
  const out = new Float32Array(n * k);
  for (let r = 0; r < n; r++) {
    const row = bytes.subarray(r * stride, (r + 1) * stride);
    out.set(dequantizeRef(format, row, k), r * k);
    expect(row.subarray(k * size).every((b) => b === 0), `${format} row ${r} padding`).toBe(true);
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

describe('weights in the upload layout', () => {
  const getGpu = useGpu();

  const runs = [...QFORMATS.flatMap((format) => QSHAPES.map((shape) => ({ format, shape }))), ...FFORMATS.flatMap((format) => FSHAPES.map((shape) => ({ format, shape })))];
  for (const { format, shape } of runs) {
    const { n, k, what, decodeM, tiled } = shape;
    it(`${format} ${what}: [${n} x ${k}]`, async () => {
      const gpu = getGpu();
      const gguf = encodeWeights(format, normalArray(n * k, n * 31 + k, 0.5), n, k);
      const want = dequantizeRef(format, gguf, n * k);
      const packed = repackWeights(format, gguf, k);
      expect(packed.byteLength).toBe(gpuWeightBytes(format, n, k));
      expect(packed.byteLength % 16).toBe(0);
      if (format === 'q8_0' || format === 'q4_0') {
        // GGUF's bytes per block plus 16 scale bytes per superblock of fewer than 8 blocks
        expect(packed.byteLength - weightBytes(format, n, k)).toBe(((n * k) / 32) % SUPERBLOCK === 0 ? 0 : 16 - 2 * (((n * k) / 32) % SUPERBLOCK));
        expectClose(decodeBlocks(format, packed, n * k), want, EXACT, `${format} layout`);
      } else {
        expectClose(decodeRows(format, packed, n, k), want, EXACT, `${format} layout`);
      }

      const w = gpu.upload(packed);
      const deq = gpu.createBuffer(n * k * 4);
      expectClose(await run(gpu, (s) => dequantize(s, { w, out: deq, count: n * k, k, format }), deq, n * k), want, EXACT, `${format} dequant`);

      // every row, then an id past the table (zeros)
      const tokens = [...Array.from({ length: n }, (_, i) => n - 1 - i), n];
      const ids = gpu.upload(Uint32Array.from(tokens));
      const emb = gpu.createBuffer(tokens.length * k * 4);
      const gathered = await run(gpu, (s) => embedding(s, { table: w, tokens: ids, out: emb, count: tokens.length, dim: k, rows: n, format }), emb, tokens.length * k);
      expectClose(gathered, embeddingRef(format, gguf, tokens, k, n), EXACT, `${format} embedding`);

      // one-hot X picks column c of every W row: first and last element, block and group edges, random
      const next = mulberry32(k + n);
      const cols = [k - 1, 0, 31, 32, 16, 15, 7, 8, ...Array.from({ length: 6 }, () => Math.floor(next() * k))].map((c) => Math.min(c, k - 1));
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

  for (const format of [...QFORMATS, ...FFORMATS]) {
    it(`${format}: concatenated GGUF matrices repack to the concatenation's layout (fused projections)`, () => {
      const k = format === 'q8_0' || format === 'q4_0' ? 64 : 13;
      const [a, b] = [3, 6].map((n) => encodeWeights(format, normalArray(n * k, n, 0.5), n, k));
      const want = new Float32Array([...dequantizeRef(format, a, 3 * k), ...dequantizeRef(format, b, 6 * k)]);
      const packed = repackWeights(format, new Uint8Array([...a, ...b]), k);
      const got = format === 'q8_0' || format === 'q4_0' ? decodeBlocks(format, packed, 9 * k) : decodeRows(format, packed, 9, k);
      expectClose(got, want, EXACT, `${format} fused`);
    });
  }

  it('f32 / f16 / bf16 rows of whole groups of 8 are uploaded unchanged (no copy)', () => {
    for (const format of FFORMATS) {
      const bytes = encodeWeights(format, normalArray(3 * 40, 1), 3, 40);
      expect(repackWeights(format, bytes, 40)).toBe(bytes);
    }
  });

  it('refuses bytes that are not whole rows', () => {
    expect(() => repackWeights('f16', new Uint8Array(2 * 13 + 2), 13)).toThrow(/whole f16 rows of 13/);
    expect(() => repackWeights('q8_0', new Uint8Array(34 * 3), 64)).toThrow(/whole q8_0 rows of 64/);
  });
});

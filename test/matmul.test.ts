import { describe, expect, it } from 'vitest';
import { MATMUL_DECODE_MAX_M, type MatmulVariant, decodeThreads, matmul, matmulRef, matmulVariant } from '../kernels/matmul.ts';
import { WEIGHT_FORMATS, type WeightFormat, dequantizeRef, encodeWeights, isQuantized } from '../kernels/weights.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Tolerance. The reference multiplies X by the CPU-dequantised W in float64; the GPU decodes W to
// exactly the same f32 values (dequant.test.ts checks that bit for bit; d*q is exact in f32), so
// the only difference is the kernel's f32 rounding. A dot product in which every term passes
// through at most L roundings (its product, then additions) satisfies
//   |err| <= L * u * sum_k |x_k * w_k|,  u = 2^-24 (to first order; +1% covers the rest).
// L per kernel:
// - tiled: product (1) + dot4 (3) + one accumulator that takes ceil(K/4) dot4 results;
// - decode: product (1) + dot4 (3) + lo+hi (1) + the thread's accumulator over its
//   ceil(ceil(K/8)/threads) groups of 8 + the log2(threads) reduction tree.
// sum|x*w| is taken at its maximum over the outputs. This is a proven bound, not a fit to observed
// errors (which are 10-1000x smaller; the tiled bound is loosest at long K, ~0.17 at K=4099 against
// terms |x*w| ~ 0.6 and outputs ~60). A dropped, doubled or mis-decoded term exceeds it.
function tolerance(x: Float32Array, w: Float32Array, m: number, n: number, k: number, variant: 'decode' | 'tiled') {
  let worst = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += Math.abs(x[i * k + t] * w[j * k + t]);
      worst = Math.max(worst, s);
    }
  }
  const threads = decodeThreads(k);
  const chain = variant === 'tiled' ? 4 + Math.ceil(k / 4) : 5 + Math.ceil(Math.ceil(k / 8) / threads) + Math.log2(threads);
  return { atol: 1.01 * chain * 2 ** -24 * worst, rtol: 0 };
}

interface Case {
  m: number;
  n: number;
  /** K for f32/f16/bf16 (any length) and for quantised formats (a multiple of 32) */
  k: [number, number];
  variant: MatmulVariant;
  what: string;
}

const CASES: Case[] = [
  { m: 1, n: 67, k: [173, 96], variant: 'decode', what: 'decode M=1' },
  { m: 3, n: 172, k: [173, 96], variant: 'decode', what: 'decode M=3' },
  { m: 7, n: 67, k: [64, 64], variant: 'decode', what: 'decode M=7' },
  { m: 1, n: 67, k: [173, 96], variant: 'tiled', what: 'tiled M=1' },
  { m: 33, n: 172, k: [173, 96], variant: 'tiled', what: 'tiled M=33' },
  { m: 70, n: 67, k: [37, 160], variant: 'tiled', what: 'tiled M=70' },
  { m: 1, n: 1, k: [173, 96], variant: 'decode', what: 'decode, one row' },
  { m: 33, n: 1, k: [173, 96], variant: 'tiled', what: 'tiled, one row' },
  { m: 2, n: 5, k: [4099, 4096], variant: 'decode', what: 'decode, long K' },
  { m: 2, n: 5, k: [4099, 4096], variant: 'tiled', what: 'tiled, long K' },
  { m: 11, n: 9, k: [40, 64], variant: 'decode', what: 'decode forced on M=11 (two dispatches)' },
  { m: MATMUL_DECODE_MAX_M, n: 20, k: [72, 64], variant: 'auto', what: `auto M=${MATMUL_DECODE_MAX_M} (decode)` },
  { m: MATMUL_DECODE_MAX_M + 1, n: 20, k: [72, 64], variant: 'auto', what: `auto M=${MATMUL_DECODE_MAX_M + 1} (tiled)` },
];

describe('matmul', () => {
  const getGpu = useGpu();

  it('auto picks decode up to the threshold and tiled above it', () => {
    expect(matmulVariant(1)).toBe('decode');
    expect(matmulVariant(MATMUL_DECODE_MAX_M)).toBe('decode');
    expect(matmulVariant(MATMUL_DECODE_MAX_M + 1)).toBe('tiled');
    expect(matmulVariant(1, 'tiled')).toBe('tiled');
  });

  it('rejects quantised K that is not a multiple of 32', async () => {
    const gpu = getGpu();
    const b = gpu.createBuffer(1024);
    const step = gpu.step();
    expect(() => matmul(step, { x: b, w: b, out: b, m: 1, n: 1, k: 48, format: 'q4_0' })).toThrow(/multiple of 32/);
    expect(() => encodeWeights('q8_0', new Float32Array(40), 1, 40)).toThrow(/multiple of 32/);
    await step.submit();
    b.destroy();
  });

  for (const format of WEIGHT_FORMATS) {
    for (const c of CASES) {
      const k = c.k[isQuantized(format) ? 1 : 0];
      it(`${format} ${c.what}: [${c.m} x ${k}] . [${c.n} x ${k}]^T`, async () => {
        const gpu = getGpu();
        const { m, n } = c;
        const x = normalArray(m * k, m * 7919 + k);
        const wq = encodeWeights(format as WeightFormat, normalArray(n * k, n * 104729 + k + 1), n, k);
        const w = dequantizeRef(format, wq, n * k);
        const xb = gpu.upload(x);
        const wb = gpu.upload(wq);
        const yb = gpu.createBuffer(m * n * 4);
        const step = gpu.step();
        matmul(step, { x: xb, w: wb, out: yb, m, n, k, format, variant: c.variant });
        await step.submit();
        const y = await gpu.readF32(yb, m * n);
        expectClose(y, matmulRef(x, w, m, n, k), tolerance(x, w, m, n, k, matmulVariant(m, c.variant)), `${format} ${c.what}`);
        for (const b of [xb, wb, yb]) b.destroy();
      });
    }
  }
});

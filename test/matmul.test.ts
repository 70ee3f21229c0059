import { describe, expect, it } from 'vitest';
import { siluMul } from '../kernels/elementwise.ts';
import {
  MATMUL_DECODE_MAX_M,
  MATMUL_MIN_SPLIT_K,
  type MatmulVariant,
  decodeThreads,
  matmul,
  matmulRef,
  matmulSplits,
  matmulTileRows,
  matmulVariant,
} from '../kernels/matmul.ts';
import { GPU_TARGET_WORKGROUPS } from '../kernels/grid.ts';
import { rmsNorm, rmsScale, rmsScaleRef } from '../kernels/rmsnorm.ts';
import { WEIGHT_FORMATS, type WeightFormat, dequantizeRef, encodeWeights, isQuantized, repackWeights, weightBytes, weightGroup } from '../kernels/weights.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

const U = 2 ** -24;

// Tolerance. The reference multiplies X by the CPU-dequantised W in float64; the GPU decodes W to
// exactly the same f32 values (dequant.test.ts checks that bit for bit; d*q is exact in f32), so
// the only difference is the kernel's f32 rounding. A dot product in which every term passes
// through at most L roundings (its product, then additions) satisfies
//   |err| <= L * u * sum_k |x_k * w_k|,  u = 2^-24 (to first order; +1% covers the rest).
// L per kernel:
// - tiled: product (1) + dot4 (3) + one accumulator that takes ceil(K/4) dot4 results;
// - decode: product (1) + dot4 (3) + lo+hi (1) + the thread's accumulator over its
//   ceil(ceil(K/G)/threads) groups of G elements, G/8 additions each (G = weightGroup: 8, or a
//   block of 32 for q8_0 / q4_0) + the log2(threads) reduction tree;
// - decode, subgroup variant: the same up to the thread's accumulator, then subgroupAdd over L
//   lanes (at worst serial: L - 1) and the serial sum of threads/L subgroup sums, worst over the
//   device's subgroup sizes L (Variant 'decode-sg').
// - tiled split over K into S parts: each part's accumulator takes at most ceil(K/4) dot4 results,
//   then split_sum adds the S partial sums: the tiled L + S bounds it.
// sum|x*w| is taken at its maximum over the outputs. This is a proven bound, not a fit to observed
// errors (which are 10-1000x smaller; the tiled bound is loosest at long K, ~0.17 at K=4099 against
// terms |x*w| ~ 0.6 and outputs ~60). A dropped, doubled or mis-decoded term exceeds it.
// When the kernel's input terms x_k themselves carry a relative error of at most `inputRel` (the
// normalised X of the norm prologue), each term's error grows by inputRel * |x_k * w_k|.
type Variant = 'decode' | 'decode-sg' | 'tiled';

/** Subgroup sizes the device may use (powers of two from its minimum to its maximum). */
function subgroupSizes(gpu: Gpu): number[] {
  const sizes: number[] = [];
  for (let l = Math.max(1, gpu.adapter.subgroupMinSize); l <= Math.max(1, gpu.adapter.subgroupMaxSize); l *= 2) sizes.push(l);
  return sizes;
}

/** Per output (row-major [m, n]): the bound on |Y - reference| described above. */
function dotBounds(x: ArrayLike<number>, w: ArrayLike<number>, m: number, n: number, k: number, format: WeightFormat, variant: Variant, inputRel = 0, lanes: number[] = [], splits = 1): Float64Array {
  const threads = decodeThreads(k, format);
  const group = weightGroup(format);
  const perThread = 5 + (group / 8) * Math.ceil(Math.ceil(k / group) / threads);
  const chain =
    variant === 'tiled' ? 4 + Math.ceil(k / 4) + (splits > 1 ? splits : 0) : variant === 'decode' ? perThread + Math.log2(threads) : perThread + Math.max(...lanes.map((l) => l - 1 + threads / l));
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += Math.abs(x[i * k + t] * w[j * k + t]);
      out[i * n + j] = 1.01 * (chain * U + inputRel) * s;
    }
  }
  return out;
}

function tolerance(x: ArrayLike<number>, w: ArrayLike<number>, m: number, n: number, k: number, format: WeightFormat, variant: Variant, lanes: number[] = [], splits = 1) {
  return { atol: Math.max(...dotBounds(x, w, m, n, k, format, variant, 0, lanes, splits)), rtol: 0 };
}

/** The parts a forced split over K makes (matmul: whole 32-element steps per part). */
const splitsOf = (k: number, splitK = 1) => Math.ceil(k / (Math.ceil(k / splitK / 32) * 32));

/** The kernel (and decode reduction) that matmul runs, as dotBounds names it. */
const kernelVariant = (m: number, variant: MatmulVariant, subgroups: boolean): Variant => {
  const v = matmulVariant(m, variant);
  return v === 'decode' && subgroups ? 'decode-sg' : v;
};

interface Case {
  m: number;
  n: number;
  /** K for f32/f16/bf16 (any length) and for quantised formats (a multiple of 32) */
  k: [number, number];
  variant: MatmulVariant;
  what: string;
  /** tiled: splits over K, forced (as matmulSplits picks on a GPU) */
  splitK?: number;
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
  { m: MATMUL_DECODE_MAX_M + 1, n: 20, k: [72, 64], variant: 'auto', what: `auto M=${MATMUL_DECODE_MAX_M + 1} (tiled, 16-row tile)` },
  { m: 17, n: 67, k: [173, 96], variant: 'auto', what: 'auto M=17 (tiled, 32-row tile)' },
  { m: 64, n: 130, k: [37, 64], variant: 'auto', what: 'auto M=64 (tiled, one row of 64-row tiles)' },
  { m: 13, n: 67, k: [173, 96], variant: 'tiled', splitK: 3, what: 'tiled split over K in 3 (the last one short)' },
  { m: 2, n: 5, k: [4099, 4096], variant: 'tiled', splitK: 7, what: 'tiled, long K split in 7' },
  { m: 64, n: 130, k: [37, 64], variant: 'tiled', splitK: 2, what: 'tiled M=64 split over K in 2' },
];

// The tile height does not touch weight decoding (w_load8 is the same code for every TM), and every
// tiled pipeline is a shader compile of seconds on SwiftShader: the 16- and 32-row tiles run on f32,
// the 64-row tile on every format.
// A split over K does not touch weight decoding either: splits run on f32 and q4_0.
function tileTested(format: WeightFormat, m: number, variant: MatmulVariant, splitK?: number): boolean {
  if (splitK !== undefined && format !== 'f32' && format !== 'q4_0') return false;
  return matmulVariant(m, variant) === 'decode' || matmulTileRows(m) === 64 || format === 'f32';
}

describe('matmul', () => {
  const getGpu = useGpu();

  it('auto picks decode up to the threshold and tiled above it', () => {
    expect(matmulVariant(1)).toBe('decode');
    expect(matmulVariant(MATMUL_DECODE_MAX_M)).toBe('decode');
    expect(matmulVariant(MATMUL_DECODE_MAX_M + 1)).toBe('tiled');
    expect(matmulVariant(1, 'tiled')).toBe('tiled');
  });

  it('splits over K: on a GPU, batches of at most 64 rows whose tiles fall short of its workgroup target, each split at least 256 long', () => {
    const gpu = { adapter: { isSoftware: false } } as Gpu;
    // Llama-3.2-1B at batch 16: o projection (32 tiles, K 2048), down (32 tiles, K 8192), gate/up (256 tiles)
    expect(matmulSplits(gpu, 16, 2048, 32)).toBe(2048 / MATMUL_MIN_SPLIT_K);
    expect(matmulSplits(gpu, 16, 8192, 32)).toBe(GPU_TARGET_WORKGROUPS / 32);
    expect(matmulSplits(gpu, 16, 2048, 256)).toBe(GPU_TARGET_WORKGROUPS / 256);
    expect(matmulSplits(gpu, 16, 2048, GPU_TARGET_WORKGROUPS)).toBe(1);
    expect(matmulSplits(gpu, 65, 8192, 32)).toBe(1); // prefill: rows of tiles fill the GPU
    expect(matmulSplits(gpu, 16, 300, 32)).toBe(1); // too short to split
    expect(matmulSplits({ adapter: { isSoftware: true } } as Gpu, 16, 8192, 32)).toBe(1);
  });

  it("row scales for the next norm: added up with the splits (split_sum_rows, no extra dispatch) or by rmsScale after; rmsScale's bits either way", async () => {
    const gpu = getGpu();
    // N > 256: each of split_sum_rows' 256 threads takes several columns, as rmsScale's do
    const [m, n, k, eps] = [12, 300, 173, 1e-5];
    const x = normalArray(m * k, 3);
    const res = normalArray(m * n, 4);
    const wq = encodeWeights('f32', normalArray(n * k, 5), n, k);
    const [xb, rb, wb] = [gpu.upload(x), gpu.upload(res), gpu.upload(repackWeights('f32', wq, k))];
    for (const splitK of [3, 1]) {
      const [y1, y2, s1, s2] = [gpu.createBuffer(m * n * 4), gpu.createBuffer(m * n * 4), gpu.createBuffer(m * 4), gpu.createBuffer(m * 4)];
      const step = gpu.step();
      const args = { x: xb, w: wb, m, n, k, format: 'f32' as const, variant: 'tiled' as const, splitK, epilogue: { kind: 'residual' as const, residual: rb } };
      const before = gpu.counters.dispatches;
      matmul(step, { ...args, out: y1, rowScales: { out: s1, eps } });
      expect(gpu.counters.dispatches - before, `dispatches, splitK ${splitK}`).toBe(2);
      matmul(step, { ...args, out: y2 });
      rmsScale(step, { x: y2, out: s2, rows: m, dim: n, eps, subgroups: false });
      await step.submit();
      const [g1, g2, c1, c2] = await Promise.all([gpu.readF32(y1, m * n), gpu.readF32(y2, m * n), gpu.readF32(s1, m), gpu.readF32(s2, m)]);
      expect(bits(g1), `outputs, splitK ${splitK}`).toEqual(bits(g2));
      expect(bits(c1), `scales, splitK ${splitK}`).toEqual(bits(c2));
      for (const b of [y1, y2, s1, s2]) b.destroy();
    }
    for (const b of [xb, rb, wb]) b.destroy();
  });

  it('tiled batches of up to 64 rows take one row of tiles, the narrowest that holds them', () => {
    expect([1, 9, 16, 17, 32, 33, 64, 65, 500].map(matmulTileRows)).toEqual([16, 16, 16, 32, 32, 64, 64, 64, 64]);
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

  // The subgroup variant of the decode kernel differs only in its reduction (weights are decoded by
  // the same code): f32 on M = 1, long K (128 threads) and M = 11 (dispatches of 8 and 3 rows); the
  // fused cases below add M = 7.
  const SUBGROUP_RUNS = new Set(['f32 decode M=1', 'f32 decode, long K', 'f32 decode forced on M=11 (two dispatches)']);
  const runs = WEIGHT_FORMATS.flatMap((format) =>
    CASES.flatMap((c) => [{ format, c, subgroups: false }, ...(SUBGROUP_RUNS.has(`${format} ${c.what}`) ? [{ format, c, subgroups: true }] : [])]),
  );
  for (const { format, c, subgroups } of runs) {
    if (!tileTested(format, c.m, c.variant, c.splitK)) continue;
    const k = c.k[isQuantized(format) ? 1 : 0];
    it(`${format} ${c.what}${subgroups ? ' (subgroup variant)' : ''}: [${c.m} x ${k}] . [${c.n} x ${k}]^T`, async (ctx) => {
      const gpu = getGpu();
      if (subgroups && !gpu.features.subgroups) ctx.skip();
      const { m, n } = c;
      const x = normalArray(m * k, m * 7919 + k);
      const wq = encodeWeights(format as WeightFormat, normalArray(n * k, n * 104729 + k + 1), n, k);
      const w = dequantizeRef(format, wq, n * k);
      const xb = gpu.upload(x);
      const wb = gpu.upload(repackWeights(format, wq, k));
      const yb = gpu.createBuffer(m * n * 4);
      const step = gpu.step();
      matmul(step, { x: xb, w: wb, out: yb, m, n, k, format, variant: c.variant, subgroups, splitK: c.splitK });
      await step.submit();
      const y = await gpu.readF32(yb, m * n);
      const tol = tolerance(x, w, m, n, k, format, kernelVariant(m, c.variant, subgroups), subgroupSizes(gpu), splitsOf(k, c.splitK));
      expectClose(y, matmulRef(x, w, m, n, k), tol, `${format} ${c.what}`);
      for (const b of [xb, wb, yb]) b.destroy();
    });
  }

  // The fused prologue and epilogues (one step runs norm + bias, residual, and norm + SwiGLU over
  // W = [gate; up]; the bias and residual cases use the gate rows as W). Two checks each:
  // 1. Bit for bit against the unfused kernels. The norm prologue forms x * scale * g with the same
  //    f32 operations as rmsnorm's `main` and no dot product changes its order of additions, so
  //    the fused Y equals rmsNorm -> matmul exactly; a bias or residual epilogue is one f32 addition
  //    after that (emulated exactly by Math.fround of the float64 sum of two f32: double rounding is
  //    harmless for + when 53 >= 2*24 + 2); SwiGLU equals matmul(gate), matmul(up) -> silu_mul.
  // 2. Against the float64 reference, on the exactly normalised rows x * s * g. The kernel's input
  //    terms are then off by a relative inputRel = eps_s + 2u: the scale's sum of squares is one
  //    product and ceil(K/256) + R additions (256 lanes, then a tree: R = 8; subgroup variant:
  //    R = 256/L + L - 1, worst over the subgroup sizes L), the mean and + eps two more roundings,
  //    so its relative error is at most (ceil(K/256) + R + 3) u, halved by the square root;
  //    inverseSqrt adds 2 ulp (4u); then x * s and * g round once each. The dot products follow
  //    dotBounds; bias and residual add one rounding of the output (rtol u); SwiGLU's bound per
  //    output, with e_g, e_u the bounds of its gate and up dot products, is
  //      |silu(g)| e_u + 1.1 e_g |u| + 1.1 e_g e_u + eta (|silu(g)| + 1.1 e_g)(|u| + e_u)
  //    (|silu'| <= 1.1; eta = (8 + 2|g|) 2^-23, the bound of silu_mul's own rounding in
  //    elementwise.test.ts).
  const FUSED_CASES: { m: number; n: number; k: [number, number]; what: string; splitK?: number }[] = [
    { m: 1, n: 67, k: [173, 96], what: 'decode M=1' },
    { m: 7, n: 9, k: [64, 64], what: 'decode M=7' },
    { m: 2, n: 5, k: [4099, 4096], what: 'decode, long K' },
    { m: 12, n: 37, k: [173, 96], what: 'tiled M=12' },
    { m: 70, n: 33, k: [37, 160], what: 'tiled M=70 (two row tiles)' },
    { m: 33, n: 1, k: [173, 96], what: 'tiled, one output' },
    { m: 12, n: 37, k: [173, 96], what: 'tiled M=12 split over K in 3', splitK: 3 },
    { m: 33, n: 1, k: [173, 96], what: 'tiled, one output, split over K in 2', splitK: 2 },
  ];
  const silu = (v: number) => (v >= 0 ? v / (1 + Math.exp(-v)) : (v * Math.exp(v)) / (1 + Math.exp(v)));
  const bits = (a: Float32Array) => [...new Uint32Array(a.buffer, a.byteOffset, a.length)];

  // The subgroup variant runs on f32 M = 7, with rmsnorm's subgroup variant for the scales.
  for (const format of ['f32', 'q4_0'] as const) {
    for (const c of FUSED_CASES) for (const subgroups of [false, true]) {
      if (!tileTested(format, c.m, 'auto') || (subgroups && !(format === 'f32' && c.m === 7))) continue;
      const k = c.k[isQuantized(format) ? 1 : 0];
      it(`${format} fused, ${c.what}${subgroups ? ' (subgroup variant)' : ''}: [${c.m} x ${k}] -> ${c.n}`, async (ctx) => {
        const gpu = getGpu();
        if (subgroups && !gpu.features.subgroups) ctx.skip();
        const { m, n } = c;
        const variant = kernelVariant(m, 'auto', subgroups);
        const lanes = subgroupSizes(gpu);
        const x = normalArray(m * k, m * 31 + k, 2);
        const g = normalArray(k, k + 5);
        const bias = normalArray(n, n + 3);
        const res = normalArray(m * n, m + n, 4);
        const wq = encodeWeights(format, normalArray(2 * n * k, n * 7 + k), 2 * n, k);
        const w = dequantizeRef(format, wq, 2 * n * k);
        const gateBytes = weightBytes(format, n, k);
        const [xb, gb, bb, rb] = [x, g, bias, res].map((a) => gpu.upload(a));
        const [wb, gateB, upB] = [wq, wq.slice(0, gateBytes), wq.slice(gateBytes)].map((a) => gpu.upload(repackWeights(format, a, k)));
        const out = () => gpu.createBuffer(m * n * 4);
        const [scale, h, y1, y2, y3, p1, p2, pu, p3] = [gpu.createBuffer(m * 4), gpu.createBuffer(m * k * 4), out(), out(), out(), out(), out(), out(), out()];
        const step = gpu.step();
        const norm = { weight: gb, scale };
        const base = { x: xb, m, n, k, format, subgroups, splitK: c.splitK };
        const splits = splitsOf(k, c.splitK);
        rmsScale(step, { x: xb, out: scale, rows: m, dim: k, eps: 1e-5, subgroups });
        matmul(step, { ...base, w: gateB, out: y1, norm, epilogue: { kind: 'bias', bias: bb } });
        matmul(step, { ...base, w: gateB, out: y2, epilogue: { kind: 'residual', residual: rb } });
        matmul(step, { ...base, w: wb, out: y3, norm, epilogue: { kind: 'swiglu' } });
        rmsNorm(step, { x: xb, weight: gb, out: h, rows: m, dim: k, eps: 1e-5, subgroups });
        matmul(step, { ...base, x: h, w: gateB, out: p1 });
        matmul(step, { ...base, w: gateB, out: p2 });
        matmul(step, { ...base, x: h, w: upB, out: pu });
        siluMul(step, { gate: p1, up: pu, out: p3, count: m * n });
        await step.submit();
        const [g1, g2, g3, u1, u2, u3] = await Promise.all([y1, y2, y3, p1, p2, p3].map((b) => gpu.readF32(b, m * n)));

        // 1. the unfused kernels' bits
        expect(bits(g1), 'norm + bias').toEqual(bits(u1.map((v, i) => v + bias[i % n])));
        expect(bits(g2), 'residual').toEqual(bits(u2.map((v, i) => res[i] + v)));
        expect(bits(g3), 'norm + SwiGLU').toEqual(bits(u3));

        // 2. the float64 reference
        const s = rmsScaleRef(x, m, k, 1e-5);
        const hRef = Float64Array.from(x, (v, i) => v * s[Math.floor(i / k)] * g[i % k]);
        // the scale's sum: 256 lanes, then a tree of 8 or (subgroups) 256/L + L - 1 additions
        const reduce = subgroups ? Math.max(...lanes.map((l) => 256 / l + l - 1)) : 8;
        const inputRel = ((Math.ceil(k / 256) + reduce + 3) / 2 + 4 + 2) * U;
        const wGate = w.subarray(0, n * k);
        const wUp = w.subarray(n * k);
        const gate = matmulRef(hRef, wGate, m, n, k);
        const up = matmulRef(hRef, wUp, m, n, k);
        const eg = dotBounds(hRef, wGate, m, n, k, format, variant, inputRel, lanes, splits);
        const eu = dotBounds(hRef, wUp, m, n, k, format, variant, inputRel, lanes, splits);
        const e2 = dotBounds(x, wGate, m, n, k, format, variant, 0, lanes, splits);
        const label = `${format} ${c.what}${subgroups ? ' subgroups' : ''}`;
        expectClose(g1, gate.map((v, i) => v + bias[i % n]), { atol: (1 + U) * Math.max(...eg), rtol: U }, `${label} norm + bias`);
        expectClose(g2, matmulRef(x, wGate, m, n, k).map((v, i) => res[i] + v), { atol: (1 + U) * Math.max(...e2), rtol: U }, `${label} residual`);
        let atol = 0;
        for (let i = 0; i < m * n; i++) {
          const sg = Math.abs(silu(gate[i]));
          const eta = (8 + 2 * Math.min(Math.abs(gate[i]) + eg[i], 104)) * 2 ** -23;
          atol = Math.max(atol, sg * eu[i] + 1.1 * eg[i] * Math.abs(up[i]) + 1.1 * eg[i] * eu[i] + eta * (sg + 1.1 * eg[i]) * (Math.abs(up[i]) + eu[i]));
        }
        expectClose(g3, gate.map((v, i) => silu(v) * up[i]), { atol, rtol: 0 }, `${label} norm + SwiGLU`);
        for (const b of [xb, gb, bb, rb, wb, gateB, upB, scale, h, y1, y2, y3, p1, p2, pu, p3]) b.destroy();
      });
    }
  }
});

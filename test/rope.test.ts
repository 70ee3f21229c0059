import { describe, expect, it } from 'vitest';
import { SKIP_SLOT } from '../kernels/kv_cache.ts';
import { type RopeMode, type RopeScaling, rope, ropeFrequencies, ropeKv, ropeKvRef, ropeRef } from '../kernels/rope.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Tolerance. Kernel and reference use the same f32 inverse frequencies; the reference forms
// angle = pos * freq exactly (float64) while the kernel rounds it to f32: up to |angle| * 2^-24
// absolute error in the angle, growing with position. The kernel's own cos/sin (range reduction +
// Taylor series, not WGSL's built-ins, which are only bounded to 2^-11) add a few f32 ulps, and
// the rotation two products and a sum more. Measured on SwiftShader over angles 1e-3..4096 rad:
// error <= |angle| * 2^-24 + 2^-24.6 per unit of |x0| + |x1|. The bound used, per token, is
//   (|x0| + |x1|)max * (pos * maxFreq * 2^-23 + 2^-21)
// (2x and ~8x margins). A wrong pair, frequency, position or sign gives O(|x|) errors.
function tokenAtol(pairMax: number, pos: number, maxFreq: number): number {
  return pairMax * (pos * maxFreq * 2 ** -23 + 2 ** -21);
}

interface Case {
  mode: RopeMode;
  tokens: number;
  heads: number;
  headDim: number;
  ropeDim: number;
  base: number;
  scaling?: RopeScaling;
  maxPos: number;
}

const LLAMA31: RopeScaling = { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 };

const CASES: Case[] = [
  // vec4 path (headDim % 4 == 0, ropeDim % 4 == 0 normal / % 8 == 0 neox)
  { mode: 'normal', tokens: 1, heads: 1, headDim: 8, ropeDim: 8, base: 10000, maxPos: 7 },
  { mode: 'neox', tokens: 1, heads: 1, headDim: 8, ropeDim: 8, base: 10000, maxPos: 3000 },
  { mode: 'normal', tokens: 7, heads: 3, headDim: 64, ropeDim: 64, base: 10000, maxPos: 4000 },
  { mode: 'neox', tokens: 5, heads: 4, headDim: 128, ropeDim: 128, base: 1000000, maxPos: 4096 },
  { mode: 'normal', tokens: 13, heads: 4, headDim: 128, ropeDim: 128, base: 500000, scaling: LLAMA31, maxPos: 4096 },
  { mode: 'neox', tokens: 9, heads: 2, headDim: 64, ropeDim: 64, base: 10000, scaling: { type: 'linear', factor: 4 }, maxPos: 4096 },
  // partial rotary, vec4 path
  { mode: 'normal', tokens: 3, heads: 2, headDim: 128, ropeDim: 64, base: 10000, maxPos: 2500 },
  { mode: 'neox', tokens: 11, heads: 3, headDim: 64, ropeDim: 32, base: 10000, maxPos: 2500 },
  // scalar path: rotated runs that are not whole vec4s
  { mode: 'normal', tokens: 3, heads: 2, headDim: 8, ropeDim: 6, base: 10000, maxPos: 3000 },
  { mode: 'neox', tokens: 5, heads: 3, headDim: 8, ropeDim: 6, base: 10000, maxPos: 3000 },
  { mode: 'neox', tokens: 13, heads: 4, headDim: 80, ropeDim: 20, base: 10000, maxPos: 4096 },
  { mode: 'normal', tokens: 7, heads: 2, headDim: 10, ropeDim: 10, base: 10000, maxPos: 4096 },
  { mode: 'neox', tokens: 3, heads: 5, headDim: 128, ropeDim: 4, base: 10000, maxPos: 4096 },
];

describe('rope', () => {
  const getGpu = useGpu();

  for (const c of CASES) {
    const scaled = c.scaling ? ` ${c.scaling.type}` : '';
    it(`${c.mode} tokens=${c.tokens} heads=${c.heads} headDim=${c.headDim} ropeDim=${c.ropeDim}${scaled}`, async () => {
      const gpu = getGpu();
      const { tokens, heads, headDim, ropeDim } = c;
      const n = tokens * heads * headDim;
      const x = normalArray(n, tokens * 131 + headDim * 7 + ropeDim, 1.5);
      // positions: 0, the maximum, and random ones in between (not sorted: a batch mixes sequences)
      const rand = mulberry32(c.maxPos + tokens);
      const positions = new Uint32Array(tokens);
      for (let t = 0; t < tokens; t++) positions[t] = t === 0 ? c.maxPos : t === 1 ? 0 : Math.floor(rand() * (c.maxPos + 1));
      const freqs = ropeFrequencies({ ropeDim, base: c.base, scaling: c.scaling });

      const xb = gpu.upload(x);
      const pb = gpu.upload(positions);
      const fb = gpu.upload(freqs);
      const step = gpu.step();
      rope(step, { x: xb, positions: pb, freqs: fb, tokens, heads, headDim, ropeDim, mode: c.mode });
      await step.submit();
      const y = await gpu.readF32(xb, n);
      const ref = ropeRef(x, positions, freqs, c);

      const maxFreq = Math.max(...freqs);
      const half = ropeDim / 2;
      for (let t = 0; t < tokens; t++) {
        const lo = t * heads * headDim;
        let pairMax = 0;
        for (let h = 0; h < heads; h++) {
          for (let j = 0; j < half; j++) {
            const i0 = lo + h * headDim + (c.mode === 'neox' ? j : 2 * j);
            const i1 = c.mode === 'neox' ? i0 + half : i0 + 1;
            pairMax = Math.max(pairMax, Math.abs(x[i0]) + Math.abs(x[i1]));
          }
        }
        expectClose(y.subarray(lo, lo + heads * headDim), ref.subarray(lo, lo + heads * headDim),
          { atol: tokenAtol(pairMax, positions[t], maxFreq), rtol: 0 }, `rope token ${t} pos ${positions[t]}`);
      }
      // dims beyond ropeDim pass through bit for bit
      for (let r = 0; r < tokens * heads; r++) {
        for (let d = ropeDim; d < headDim; d++) expect(y[r * headDim + d]).toBe(x[r * headDim + d]);
      }
      for (const b of [xb, pb, fb]) b.destroy();
    });
  }

  it('position 0 is the identity', async () => {
    const gpu = getGpu();
    const [tokens, heads, headDim] = [3, 2, 64];
    const x = normalArray(tokens * heads * headDim, 5);
    const xb = gpu.upload(x);
    const pb = gpu.upload(new Uint32Array(tokens));
    const fb = gpu.upload(ropeFrequencies({ ropeDim: headDim, base: 10000 }));
    for (const mode of ['normal', 'neox'] as const) {
      const step = gpu.step();
      rope(step, { x: xb, positions: pb, freqs: fb, tokens, heads, headDim, ropeDim: headDim, mode });
      await step.submit();
    }
    // cos 0 = 1 and sin 0 = 0 exactly in the kernel's series, so x is unchanged bit for bit
    expect(Array.from(await gpu.readF32(xb, x.length))).toEqual(Array.from(x));
    for (const b of [xb, pb, fb]) b.destroy();
  });

  it('rejects odd or oversized ropeDim', () => {
    const gpu = getGpu();
    const b = gpu.createBuffer(64);
    const step = gpu.step();
    const shape = { x: b, positions: b, freqs: b, tokens: 1, heads: 1, headDim: 8 };
    expect(() => rope(step, { ...shape, ropeDim: 7, mode: 'normal' })).toThrow(RangeError);
    expect(() => rope(step, { ...shape, ropeDim: 10, mode: 'neox' })).toThrow(RangeError);
    b.destroy();
  });
});

// RoPE + KV write in one dispatch: q and k against the float64 reference with rope's bound per token
// (tokenAtol: the same rotation arithmetic), v and the pass-through dims bit for bit, rows with
// SKIP_SLOT and every slot not in the mapping left as they were.
describe('rope_kv', () => {
  const getGpu = useGpu();
  const KV_CASES = [
    { mode: 'normal', tokens: 5, nHeads: 3, nKvHeads: 1, headDim: 8, ropeDim: 8, maxPos: 300 },
    { mode: 'neox', tokens: 7, nHeads: 4, nKvHeads: 2, headDim: 64, ropeDim: 32, maxPos: 4096 },
    { mode: 'normal', tokens: 3, nHeads: 2, nKvHeads: 2, headDim: 10, ropeDim: 6, maxPos: 2000 },
    { mode: 'neox', tokens: 1, nHeads: 1, nKvHeads: 1, headDim: 8, ropeDim: 6, maxPos: 17 },
  ] as const;

  for (const c of KV_CASES) {
    it(`${c.mode} tokens=${c.tokens} heads=${c.nHeads}/${c.nKvHeads} headDim=${c.headDim} ropeDim=${c.ropeDim}`, async () => {
      const gpu = getGpu();
      const { tokens, nHeads, nKvHeads, headDim } = c;
      const heads = nHeads + 2 * nKvHeads;
      const qkv = normalArray(tokens * heads * headDim, tokens * 17 + headDim, 1.5);
      const rand = mulberry32(c.maxPos);
      const positions = Uint32Array.from({ length: tokens }, (_, t) => (t === 0 ? c.maxPos : Math.floor(rand() * c.maxPos)));
      const freqs = ropeFrequencies({ ropeDim: c.ropeDim, base: 10000 });
      // slots shuffled over a pool with spare rows; the last row skipped when there are several
      const numSlots = tokens * nKvHeads + 5;
      const order = Array.from({ length: numSlots }, (_, i) => i).sort(() => rand() - 0.5);
      const slots = Uint32Array.from({ length: tokens * nKvHeads }, (_, r) => (r === tokens * nKvHeads - 1 && r > 0 ? SKIP_SLOT : order[r]));
      const pool = normalArray(numSlots * headDim, 99); // stale contents
      const [qkvB, pB, fB, sB, kB, vB] = [qkv, positions, freqs, slots, pool, pool].map((a) => gpu.upload(a));
      const qB = gpu.createBuffer(tokens * nHeads * headDim * 4);
      const step = gpu.step();
      ropeKv(step, { ...c, qkv: qkvB, q: qB, kPool: kB, vPool: vB, slotMapping: sB, positions: pB, freqs: fB });
      await step.submit();
      const [q, kPool, vPool] = await Promise.all([gpu.readF32(qB, tokens * nHeads * headDim), gpu.readF32(kB, pool.length), gpu.readF32(vB, pool.length)]);

      const kRef = Float64Array.from(pool);
      const vRef = Float64Array.from(pool);
      const qRef = ropeKvRef(qkv, positions, freqs, c, slots, kRef, vRef);
      const maxFreq = Math.max(...freqs);
      const pairMax = (t: number, from: number, count: number) => {
        let mx = 0;
        for (let i = (t * heads + from) * headDim; i < (t * heads + from + count) * headDim; i++) mx = Math.max(mx, Math.abs(qkv[i]));
        return 2 * mx;
      };
      for (let t = 0; t < tokens; t++) {
        const tol = (from: number, count: number) => ({ atol: tokenAtol(pairMax(t, from, count), positions[t], maxFreq), rtol: 0 });
        const qRow = t * nHeads * headDim;
        expectClose(q.subarray(qRow, qRow + nHeads * headDim), qRef.subarray(qRow, qRow + nHeads * headDim), tol(0, nHeads), `q token ${t}`);
        for (let h = 0; h < nKvHeads; h++) {
          const slot = slots[t * nKvHeads + h];
          if (slot === SKIP_SLOT) continue;
          const at = slot * headDim;
          expectClose(kPool.subarray(at, at + headDim), kRef.subarray(at, at + headDim), tol(nHeads, nKvHeads), `k token ${t} head ${h}`);
          // pass-through dims of k
          for (let d = c.ropeDim; d < headDim; d++) expect(kPool[at + d]).toBe(qkv[(t * heads + nHeads + h) * headDim + d]);
        }
        for (let h = 0; h < nHeads; h++) for (let d = c.ropeDim; d < headDim; d++) expect(q[qRow + h * headDim + d]).toBe(qkv[(t * heads + h) * headDim + d]);
      }
      // v bit for bit; untouched slots (spares and the skipped row's) keep their contents
      expect([...vPool]).toEqual([...Float32Array.from(vRef)]);
      const written = new Set([...slots].filter((sl) => sl !== SKIP_SLOT));
      for (let sl = 0; sl < numSlots; sl++) {
        if (!written.has(sl)) expect([...kPool.subarray(sl * headDim, (sl + 1) * headDim)], `slot ${sl}`).toEqual([...pool.subarray(sl * headDim, (sl + 1) * headDim)]);
      }
      for (const b of [qkvB, pB, fB, sB, kB, vB, qB]) b.destroy();
    });
  }
});

describe('ropeFrequencies', () => {
  // One f32 rounding of a float64 value: relative error <= 2^-24.
  const F32 = { atol: 0, rtol: 2 ** -23 };

  it('unscaled: base^(-2i/d)', () => {
    // d = 64, base 10000: i = 0 -> 1, i = 16 -> 10000^(-1/2) = 0.01, i = 24 -> 10000^(-3/4) = 0.001
    const f = ropeFrequencies({ ropeDim: 64, base: 10000 });
    expect(f.length).toBe(32);
    expectClose([f[0], f[16], f[24]], [1, 0.01, 0.001], F32, 'unscaled');
  });

  it('linear scaling divides every frequency by the factor', () => {
    const f = ropeFrequencies({ ropeDim: 64, base: 10000, scaling: { type: 'linear', factor: 4 } });
    expectClose([f[0], f[16], f[24]], [0.25, 0.0025, 0.00025], F32, 'linear');
  });

  it('llama3 scaling (Llama 3.1: factor 8, low 1, high 4, original 8192, base 500000, d 128)', () => {
    // Wavelength of pair i: 2*pi / f_i with f_i = 500000^(-i/64). Bands: wavelength < 8192/4 = 2048
    // kept; > 8192/1 = 8192 divided by 8; between, f * ((1 - t)/8 + t), t = (8192/wavelength - 1)/3.
    const f = ropeFrequencies({ ropeDim: 128, base: 500000, scaling: LLAMA31 });
    const expected = [
      // i = 0: f = 1, wavelength 2*pi: kept
      [0, 1],
      // i = 28: f = 500000^(-0.4375) = 0.0032114460, wavelength 1956.5 < 2048: kept
      [28, 0.003211445994752591],
      // i = 32: f = 1/sqrt(500000) = 0.0014142136, wavelength 2*pi*707.107 = 4442.883;
      // t = (8192/4442.883 - 1)/3 = 0.2812826; f * (0.7187174/8 + 0.2812826) = f * 0.3711223
      [32, 0.0005248461609929547],
      // i = 35: f = 500000^(-35/64) = 0.00076449699, wavelength 8218.7 > 8192: f/8
      [35, 0.00076449698831717 / 8],
      // i = 63: f = 500000^(-63/64) = 2.4551408e-6: f/8
      [63, 2.455140791131609e-6 / 8],
    ];
    expectClose(expected.map(([i]) => f[i]), expected.map(([, v]) => v), F32, 'llama3');
    // across the band the scaled frequency never increases with i and stays between f/8 and f
    const plain = ropeFrequencies({ ropeDim: 128, base: 500000 });
    for (let i = 1; i < 64; i++) expect(f[i]).toBeLessThanOrEqual(f[i - 1]);
    for (let i = 0; i < 64; i++) {
      expect(f[i]).toBeLessThanOrEqual(plain[i]);
      expect(f[i]).toBeGreaterThanOrEqual(plain[i] / 8 - 1e-12);
    }
  });
});

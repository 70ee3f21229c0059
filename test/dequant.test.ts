import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gguf } from '@huggingface/gguf';
import { describe, expect, it } from 'vitest';
import { dequantize, dequantizeRef } from '../kernels/dequant.ts';
import {
  type WeightFormat,
  bf16BitsToF32,
  bf16FromF32Bits,
  encodeWeights,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  repackWeights,
  weightBytes,
} from '../kernels/weights.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';

// Decoding is exact: f16 -> f32 is exact, and a quantised value f32(d) * f32(q) multiplies an
// 11-bit significand by an integer of at most 8 bits, which fits f32's 24 bits, so it is exact
// too (also for subnormal f16 d, which is a normal f32). The GPU must therefore match the CPU
// decoder bit for bit (tolerance zero, compared as u32 including the sign of zero).
//
// bf16 is decoded by bit moves only (bits << 16, bitcast), so every pattern must come back exactly
// as the reference writes it: subnormals, +-0 and +-inf bit for bit. For NaN the GPU tests assert
// only that a NaN comes back as a NaN (exponent all ones, mantissa non-zero): WGSL does not promise
// to carry NaN payloads or signs through f32 values (a conforming driver may canonicalise them),
// and weights are never NaN in practice. The CPU side (dequantizeRef, the encoder) is checked for
// exact NaN bits, sign and payload included.

/** The first `count` elements of `bytes` (GGUF layout, rows of k; default one row) decoded on the GPU. */
async function gpuDequant(gpu: Gpu, format: WeightFormat, bytes: Uint8Array, count: number, k = count): Promise<Float32Array> {
  const wb = gpu.upload(repackWeights(format, bytes.subarray(0, weightBytes(format, count / k, k)), k));
  const ob = gpu.createBuffer(count * 4);
  const step = gpu.step();
  dequantize(step, { w: wb, out: ob, count, k, format });
  await step.submit();
  const out = await gpu.readF32(ob, count);
  wb.destroy();
  ob.destroy();
  return out;
}

function expectBitExact(actual: Float32Array, expected: Float32Array, label: string): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  for (let i = 0; i < e.length; i++) {
    if (a[i] !== e[i]) {
      expect.fail(`${label}: element ${i} is ${actual[i]} (0x${a[i].toString(16)}), expected ${expected[i]} (0x${e[i].toString(16)})`);
    }
  }
}

const isNanBits = (u: number) => (u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0;

/** As expectBitExact, except that where the expected value is a NaN any NaN is accepted. */
function expectBitExactNanAsNan(actual: Float32Array, expected: Float32Array, label: string): number {
  expect(actual.length, `${label} length`).toBe(expected.length);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  let nans = 0;
  for (let i = 0; i < e.length; i++) {
    const ok = isNanBits(e[i]) ? isNanBits(a[i]) : a[i] === e[i];
    if (!ok) expect.fail(`${label}: element ${i} is 0x${a[i].toString(16)}, expected 0x${e[i].toString(16)}`);
    if (isNanBits(e[i])) nans++;
  }
  return nans;
}

/** bf16 bytes of the given 16-bit patterns. */
function bf16Bytes(patterns: ArrayLike<number>): Uint8Array {
  return new Uint8Array(Uint16Array.from(patterns).buffer);
}

/** bf16 patterns that must survive decoding: +-0, subnormals, smallest/largest normals, +-inf, NaNs. */
const BF16_SPECIALS = [0x0000, 0x8000, 0x0001, 0x807f, 0x0080, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x7f81, 0x3f80];

/** A random f16 bit pattern that is finite (no inf/NaN): normals, subnormals and zeros of both signs. */
function randomFiniteHalf(next: () => number): number {
  for (;;) {
    const h = Math.floor(next() * 0x10000);
    if ((h & 0x7c00) !== 0x7c00) return h;
  }
}

/**
 * Random quantised blocks whose scales cover the extremes: random finite f16, the largest f16
 * (65504), subnormal f16, +-0, tiny normal; with random q, all-zero q, and extreme q.
 */
function randomBlocks(format: 'q8_0' | 'q4_0', blocks: number, seed: number): Uint8Array {
  const size = format === 'q8_0' ? 34 : 18;
  const next = mulberry32(seed);
  const out = new Uint8Array(blocks * size);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const o = b * size;
    for (let j = 2; j < size; j++) out[o + j] = Math.floor(next() * 256);
    const kind = b % 8;
    let d: number;
    if (kind === 0) d = 0x7bff | (next() < 0.5 ? 0x8000 : 0); // +-65504
    else if (kind === 1) d = 1 + Math.floor(next() * 0x3ff); // subnormal
    else if (kind === 2) d = next() < 0.5 ? 0x0000 : 0x8000; // +-0
    else if (kind === 3) d = 0x0400 | 0x8000; // -smallest normal
    else d = randomFiniteHalf(next);
    view.setUint16(o, d, true);
    if (kind === 4) out.fill(0, o + 2, o + size); // zero quants (q8_0: 0; q4_0: -8 * d)
    if (kind === 5) out.fill(format === 'q8_0' ? 0x80 : 0x88, o + 2, o + size); // q = -128 / nibbles -8
    if (kind === 6) out.fill(format === 'q8_0' ? 0x7f : 0xff, o + 2, o + size); // q = 127 / nibbles +7
  }
  return out;
}

describe('dequant: bit-exact against the CPU decoder', () => {
  const getGpu = useGpu();

  it('f32 (random bit patterns incl. subnormals and -0, ragged count)', async () => {
    const count = 1003;
    const next = mulberry32(11);
    const words = new Uint32Array(count);
    for (let i = 0; i < count; i++) {
      let v = Math.floor(next() * 0x100000000);
      if (((v >>> 23) & 0xff) === 0xff) v &= 0xbfffffff; // keep finite
      words[i] = i % 17 === 0 ? (i & 1) << 31 : i % 13 === 0 ? v & 0x807fffff : v;
    }
    const bytes = new Uint8Array(words.buffer);
    expectBitExact(await gpuDequant(getGpu(), 'f32', bytes, count), dequantizeRef('f32', bytes, count), 'f32');
  });

  for (const count of [173, 4096 + 5]) {
    it(`f16 (random finite bit patterns incl. subnormals and +-0), count=${count}`, async () => {
      const next = mulberry32(count);
      const bytes = new Uint8Array(count * 2);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < count; i++) view.setUint16(i * 2, i < 4 ? [0, 0x8000, 1, 0x83ff][i] : randomFiniteHalf(next), true);
      expectBitExact(await gpuDequant(getGpu(), 'f16', bytes, count), dequantizeRef('f16', bytes, count), 'f16');
    });
  }

  it('bf16: all 65536 bit patterns, then 3 more (ragged count 65539)', async () => {
    const patterns = Array.from({ length: 0x10000 + 3 }, (_, i) => (i < 0x10000 ? i : [0x8001, 0x7f80, 0xffff][i - 0x10000]));
    const bytes = bf16Bytes(patterns);
    const want = dequantizeRef('bf16', bytes, patterns.length);
    const nans = expectBitExactNanAsNan(await gpuDequant(getGpu(), 'bf16', bytes, patterns.length), want, 'bf16 all patterns');
    expect(nans).toBe(2 * 127 + 1); // per sign 127 exponent-255 patterns with a non-zero mantissa, plus 0xffff
  });

  for (const count of [5, 173, 4096 + 5]) {
    it(`bf16: random bit patterns after the special values, count=${count}`, async () => {
      const next = mulberry32(count + 77);
      const patterns = Array.from({ length: count }, (_, i) => (i < BF16_SPECIALS.length ? BF16_SPECIALS[i] : Math.floor(next() * 0x10000)));
      const bytes = bf16Bytes(patterns);
      expectBitExactNanAsNan(await gpuDequant(getGpu(), 'bf16', bytes, count), dequantizeRef('bf16', bytes, count), `bf16 count=${count}`);
    });
  }

  it('bf16: stories260K F32 tensors encoded to bf16 are within half a bf16 ulp', async () => {
    const gpu = getGpu();
    for (const t of await readGguf('stories260K.gguf')) {
      const count = t.n * t.k;
      const original = dequantizeRef('f32', t.bytes, count);
      const bytes = encodeWeights('bf16', original, t.n, t.k);
      const decoded = await gpuDequant(gpu, 'bf16', bytes, count, t.k);
      expectBitExact(decoded, dequantizeRef('bf16', bytes, count), `bf16 ${t.name}`);
      for (let i = 0; i < count; i++) {
        // half a bf16 ulp: relative 2^-8 for normals (8-bit significand), 2^-134 below 2^-126
        const bound = 2 ** -8 * Math.abs(original[i]) + 2 ** -134;
        if (!(Math.abs(decoded[i] - original[i]) <= bound)) expect.fail(`bf16 ${t.name} element ${i}: ${decoded[i]} vs ${original[i]}`);
      }
    }
  });

  for (const format of ['q8_0', 'q4_0'] as const) {
    it(`${format}: random blocks with extreme scales`, async () => {
      const blocks = 203;
      const bytes = randomBlocks(format, blocks, format === 'q8_0' ? 3 : 4);
      expectBitExact(await gpuDequant(getGpu(), format, bytes, blocks * 32), dequantizeRef(format, bytes, blocks * 32), format);
    });

    it(`${format}: encoded weights of very large and very small magnitude`, async () => {
      // Rows of N(0, 1) scaled by 1e4 (d near the top of f16), 1e-6 (subnormal d) and 0.
      const k = 96;
      const scales = [1, 1e4, 1e-6, 0, 3e-8];
      const values = normalArray(scales.length * k, 5);
      scales.forEach((s, r) => {
        for (let i = 0; i < k; i++) values[r * k + i] *= s;
      });
      const bytes = encodeWeights(format, values, scales.length, k);
      const count = scales.length * k;
      expectBitExact(await gpuDequant(getGpu(), format, bytes, count), dequantizeRef(format, bytes, count), format);
    });
  }

  it('f16 conversion helpers round to nearest even', () => {
    // Spot values of binary16: max, overflow threshold, min normal/subnormal, ties.
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65519.99)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00);
    expect(f32ToF16Bits(2 ** -14)).toBe(0x0400);
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // tie to even (0)
    expect(f32ToF16Bits(3 * 2 ** -25)).toBe(0x0002); // tie to even (2)
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie to even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    for (let h = 0; h < 0x10000; h++) {
      if ((h & 0x7c00) === 0x7c00 && h & 0x3ff) continue; // NaN
      if (f32ToF16Bits(f16BitsToF32(h)) !== h) expect.fail(`f16 round trip of 0x${h.toString(16)}`);
    }
  });

  it('bf16 conversion helpers round to nearest even and keep NaN a NaN', () => {
    const u = (bits: number) => bf16FromF32Bits(bits);
    expect(f32ToBf16Bits(1)).toBe(0x3f80);
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie to even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie to even
    expect(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81); // just above the tie
    expect(f32ToBf16Bits(-0)).toBe(0x8000);
    expect(f32ToBf16Bits(Infinity)).toBe(0x7f80);
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(u(0x7f7f7fff)).toBe(0x7f7f); // below the overflow threshold: largest bf16
    expect(u(0x7f7f8000)).toBe(0x7f80); // the threshold (a tie) overflows to inf
    expect(u(0xff7fffff)).toBe(0xff80); // largest f32 -> -inf
    // f32 subnormals: bf16 keeps the f32 exponent range, so they round to bf16 subnormals
    expect(u(0x00000001)).toBe(0x0000);
    expect(u(0x00008000)).toBe(0x0000); // tie to even (0)
    expect(u(0x00018000)).toBe(0x0002); // tie to even (2)
    expect(u(0x00008001)).toBe(0x0001);
    expect(u(0x807fffff)).toBe(0x8080); // largest subnormal carries into the smallest normal
    // NaN: sign and the upper payload bits kept, quiet bit set; never an infinity
    expect(u(0x7fc00000)).toBe(0x7fc0);
    expect(u(0x7f800001)).toBe(0x7fc0); // payload only in the discarded bits
    expect(u(0xff800001)).toBe(0xffc0);
    expect(u(0x7fa12345)).toBe(0x7fe1);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
    const nanIn = new Float32Array(new Uint32Array([0x7f800001, 0xffa50000, 0x7fffffff]).buffer);
    expect([...new Uint16Array(encodeWeights('bf16', nanIn, 1, 3).buffer)]).toEqual([0x7fc0, 0xffe5, 0x7fff]);
    // Every pattern: the reference decoder is exact to the bit (NaN payloads too), and encoding a
    // decoded non-NaN pattern gives it back.
    const all = bf16Bytes(Array.from({ length: 0x10000 }, (_, h) => h));
    const decoded = new Uint32Array(dequantizeRef('bf16', all, 0x10000).buffer);
    for (let h = 0; h < 0x10000; h++) {
      if (decoded[h] !== h << 16 >>> 0) expect.fail(`dequantizeRef bf16 0x${h.toString(16)}: 0x${decoded[h].toString(16)}`);
      const back = isNanBits(h << 16) ? u(h << 16) === (h | 0x40) : f32ToBf16Bits(bf16BitsToF32(h)) === h;
      if (!back) expect.fail(`bf16 round trip of 0x${h.toString(16)}`);
    }
    // Random finite f32 against an independent rounding: the nearer of the two bf16 neighbours of
    // |x| (the one past the largest bf16 counting as 2^128, IEEE's overflow rule), ties to even.
    const next = mulberry32(2024);
    const f = new Float32Array(1);
    const bits = new Uint32Array(f.buffer);
    const mag = (p: number) => (p === 0x7f80 ? 2 ** 128 : bf16BitsToF32(p));
    for (let i = 0; i < 100000; i++) {
      bits[0] = Math.floor(next() * 0x100000000);
      if ((bits[0] & 0x7f800000) === 0x7f800000) continue;
      const x = Math.abs(f[0]);
      const lo = (bits[0] & 0x7fffffff) >>> 16;
      const dLo = x - mag(lo);
      const dHi = mag(lo + 1) - x;
      const want = (dLo < dHi || (dLo === dHi && lo % 2 === 0) ? lo : lo + 1) | ((bits[0] >>> 16) & 0x8000);
      if (u(bits[0]) !== want) expect.fail(`bf16 of 0x${bits[0].toString(16)}: 0x${u(bits[0]).toString(16)}, expected 0x${want.toString(16)}`);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// The shipped model: GGUF files written by llama.cpp's tools against the F32 original.

const MODEL_DIR = join(repoRoot, 'models', 'stories260K');
const GGML_TYPES: Record<number, WeightFormat> = { 0: 'f32', 1: 'f16', 2: 'q4_0', 8: 'q8_0' };

interface Tensor {
  name: string;
  format: WeightFormat;
  /** GGUF ne0: the contiguous row length */
  k: number;
  /** rows: the product of the other dims */
  n: number;
  bytes: Uint8Array;
}

async function readGguf(file: string): Promise<Tensor[]> {
  const path = join(MODEL_DIR, file);
  const parsed = await gguf(path, { allowLocalFile: true });
  const data = readFileSync(path);
  return parsed.tensorInfos.map((t) => {
    const format = GGML_TYPES[t.dtype];
    if (!format) throw new Error(`${file}: ${t.name} has unsupported GGML type ${t.dtype}`);
    const dims = t.shape.map(Number);
    const k = dims[0];
    const n = dims.slice(1).reduce((a, b) => a * b, 1);
    const start = Number(parsed.tensorDataOffset + t.offset);
    return { name: t.name, format, k, n, bytes: data.subarray(start, start + weightBytes(format, n, k)) };
  });
}

/** Bound on |d - f16(d)| for the f16 scale d_h: half an f16 ulp (relative 2^-11, or 2^-25 if subnormal). */
function scaleRounding(dh: number): number {
  return 2 ** -11 * Math.abs(dh) + 2 ** -25;
}

/**
 * Per-element quantisation error bound of each format, from the block's stored scale d_h:
 * - q8_0: q = round(x / d) is within half a step, |x - q*d| <= d/2; storing d as f16 adds
 *   |q| * |d - d_h| <= 127 * half an f16 ulp of d.
 * - q4_0: q = min(15, trunc(x/d + 8.5)) is within half a step except at the top of the range,
 *   where x/d in [7.5, 8] is clipped to 7: |x - (q-8)*d| <= d; the f16 scale adds 8 * |d - d_h|.
 * - f16: half an f16 ulp of x (relative 2^-11, or 2^-25 below the normal range).
 * d is |d_h| within its own rounding; the 1e-4 relative slack covers the f32 arithmetic of the
 * quantiser (d = amax/127, id = 1/d, x*id: three roundings of 2^-24 on values up to 127).
 */
function quantBound(t: Tensor, original: Float32Array): (i: number) => number {
  if (t.format === 'f16') return (i) => 2 ** -11 * Math.abs(original[i]) + 2 ** -25;
  const view = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const size = t.format === 'q8_0' ? 34 : 18;
  const [step, qmax] = t.format === 'q8_0' ? [0.5, 127] : [1, 8];
  return (i) => {
    const dh = f16BitsToF32(view.getUint16(Math.floor(i / 32) * size, true));
    const dd = scaleRounding(dh);
    return step * (Math.abs(dh) + dd) * (1 + 1e-4) + qmax * dd;
  };
}

describe('dequant: stories260K GGUF tensors against the F32 original', () => {
  const getGpu = useGpu();
  let originals: Map<string, Float32Array>;

  const loadOriginals = async () => {
    if (originals) return originals;
    originals = new Map();
    for (const t of await readGguf('stories260K.gguf')) {
      expect(t.format).toBe('f32');
      originals.set(t.name, dequantizeRef('f32', t.bytes, t.n * t.k));
    }
    return originals;
  };

  for (const file of ['stories260K-Q8_0.gguf', 'stories260K-Q4_0.gguf', 'stories260K-F16.gguf']) {
    it(file, async () => {
      const gpu = getGpu();
      const f32 = await loadOriginals();
      const tensors = await readGguf(file);
      expect(tensors.length).toBe(f32.size);
      const formats = new Set(tensors.map((t) => t.format));
      expect(formats.has(file.includes('Q8_0') ? 'q8_0' : file.includes('Q4_0') ? 'q4_0' : 'f16')).toBe(true);
      for (const t of tensors) {
        const count = t.n * t.k;
        const original = f32.get(t.name);
        if (!original) throw new Error(`${t.name} missing from the F32 file`);
        expect(original.length, t.name).toBe(count);
        const decoded = await gpuDequant(gpu, t.format, t.bytes, count, t.k);
        expectBitExact(decoded, dequantizeRef(t.format, t.bytes, count), `${file} ${t.name}`);
        if (t.format === 'f32') {
          expectBitExact(decoded, original, `${file} ${t.name} (f32 copy)`);
          continue;
        }
        const bound = quantBound(t, original);
        for (let i = 0; i < count; i++) {
          const err = Math.abs(decoded[i] - original[i]);
          if (!(err <= bound(i))) {
            expect.fail(`${file} ${t.name} (${t.format}) element ${i}: ${decoded[i]} vs ${original[i]}, error ${err} over the bound ${bound(i)}`);
          }
        }
        // The reference encoders reproduce llama.cpp's quantisers and f16 conversion byte for byte.
        const reencoded = encodeWeights(t.format, original, t.n, t.k);
        expect(Buffer.compare(Buffer.from(reencoded), Buffer.from(t.bytes)), `${file} ${t.name}: encodeWeights differs from llama.cpp`).toBe(0);
      }
    });
  }
});

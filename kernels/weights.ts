/**
 * Weight formats as stored in GGUF files, shared by every kernel that reads model weights
 * (matmul, embedding, dequant). Weights are bound to shaders as `array<vec4<u32>>`, laid out once at
 * upload (repackWeights, below) so that every weight load is one 16-byte aligned vec4: f32 / f16 /
 * bf16 rows padded with zeros to whole groups of 8 elements, q8_0 / q4_0 repacked into aligned
 * superblocks; `shaders/common/weights.wgsl` decodes them. This module has the CPU side:
 * sizes, the repack, a reference decoder of the GGUF layout that rounds exactly like the shaders
 * (so GPU and CPU can be compared bitwise), and llama.cpp-compatible reference encoders for tests
 * and synthetic weights.
 *
 * Layouts (little-endian):
 * - f32: 4 bytes per element; f16: IEEE binary16, 2 bytes per element.
 * - bf16: bfloat16, 2 bytes per element: the upper 16 bits of an f32 (sign, 8-bit exponent, 7-bit
 *   mantissa), so decoding is `bits << 16` read as an f32, exact for every pattern.
 * - q8_0: blocks of 32 elements, 34 bytes: f16 scale d, then 32 int8 q; x = d * q.
 * - q4_0: blocks of 32 elements, 18 bytes: f16 scale d, then 16 bytes qs; element j < 16 is
 *   ((qs[j] & 0xF) - 8) * d and element j + 16 is ((qs[j] >> 4) - 8) * d.
 * A matrix W[N, K] stores its rows one after another, K contiguous (GGUF ne0 = K).
 */

export type WeightFormat = 'f32' | 'f16' | 'q8_0' | 'q4_0' | 'bf16';

export const WEIGHT_FORMATS: readonly WeightFormat[] = ['f32', 'f16', 'q8_0', 'q4_0', 'bf16'];

/** The `WFMT` override constant of shaders that include common/weights.wgsl. */
export const WFMT: Record<WeightFormat, number> = { f32: 0, f16: 1, q8_0: 2, q4_0: 3, bf16: 4 };

/** Elements per quantisation block (both q8_0 and q4_0). */
export const QK = 32;

const BLOCK_BYTES = { q8_0: 34, q4_0: 18 } as const;

export function isQuantized(format: WeightFormat): format is 'q8_0' | 'q4_0' {
  return format === 'q8_0' || format === 'q4_0';
}

/** Throws unless `format` can hold rows of `k` elements (quantised rows are whole blocks). */
export function checkRowLength(format: WeightFormat, k: number): void {
  if (!Number.isInteger(k) || k < 0) throw new RangeError(`row length must be a non-negative integer, got ${k}`);
  if (isQuantized(format) && k % QK !== 0) {
    throw new RangeError(`${format} weights need a row length (K) that is a multiple of ${QK}, got K=${k}`);
  }
}

/** Bytes of one row of `k` elements. */
export function rowBytes(format: WeightFormat, k: number): number {
  checkRowLength(format, k);
  switch (format) {
    case 'f32':
      return k * 4;
    case 'f16':
    case 'bf16':
      return k * 2;
    default:
      return (k / QK) * BLOCK_BYTES[format];
  }
}

/** Bytes of an [n, k] matrix (unpadded; GPU buffers round this up to 4). */
export function weightBytes(format: WeightFormat, n: number, k: number): number {
  return n * rowBytes(format, k);
}

/** Elements a shader thread decodes per weight load: a block for quantised formats, else 8. */
export function weightGroup(format: WeightFormat): number {
  return isQuantized(format) ? QK : 8;
}

// ---------------------------------------------------------------------------------------------
// The GPU layout

/**
 * Blocks per superblock of the GPU layout. GGUF's 34- and 18-byte blocks are only 2-byte aligned,
 * so the GPU gets them repacked (repackWeights): superblocks of 8 blocks, each the 8 f16 scales
 * (16 bytes) then the 8 blocks' quants, so every block's quants are 16-byte aligned (one vec4<u32>
 * for q4_0, two for q8_0). q8_0 quants are the 32 int8 in element order; q4_0 quants are 4 u32,
 * word t holding elements 8t..8t+7, element 8t+e in bits 4e..4e+3, so 8 consecutive elements are
 * one word, and the 8 scales of a superblock are one vec4<u32>. A last superblock of r < 8 blocks
 * is the 16 scale bytes (unused slots zero) then its r blocks' quants. The bytes per block are
 * GGUF's (18 or 34) in whole superblocks, and a buffer is a whole number of 16-byte units. Blocks
 * are numbered through the tensor, so an [n, k] matrix lays out as its n * k elements in one row
 * would (concatenating matrices concatenates their blocks).
 */
export const SUPERBLOCK = 8;

const QUANT_BYTES = { q8_0: 32, q4_0: 16 } as const;

/**
 * Elements one row of `k` takes in the GPU layout: f32 / f16 / bf16 rows are padded with zeros to
 * whole groups of 8 (the shaders' w_load8: one aligned vec4<u32> of f16 / bf16, two of f32), so
 * every row starts 16-byte aligned and a row's last group needs no bounds check; q8_0 / q4_0 rows
 * are whole blocks already (their alignment comes from the superblocks). Real models' K is a
 * multiple of 8, so the padding costs them nothing.
 */
export function gpuRowLength(format: WeightFormat, k: number): number {
  checkRowLength(format, k);
  return isQuantized(format) ? k : Math.ceil(k / 8) * 8;
}

/** Bytes of an [n, k] matrix as uploaded to the GPU (repackWeights): a multiple of 16. */
export function gpuWeightBytes(format: WeightFormat, n: number, k: number): number {
  if (!isQuantized(format)) return weightBytes(format, n, gpuRowLength(format, k));
  checkRowLength(format, k);
  const blocks = (n * k) / QK;
  return Math.ceil(blocks / SUPERBLOCK) * 16 + blocks * QUANT_BYTES[format];
}

/**
 * The bytes of a tensor of rows of `k` elements in GGUF layout as the shaders read them: f32 / f16 /
 * bf16 rows padded with zeros to gpuRowLength (the bytes themselves when K is a multiple of 8),
 * q8_0 / q4_0 in the superblock layout (SUPERBLOCK). Exact: every value, scale and quant is kept bit
 * for bit.
 */
export function repackWeights(format: WeightFormat, bytes: Uint8Array, k: number): Uint8Array {
  const rb = rowBytes(format, k);
  if (rb === 0 ? bytes.byteLength !== 0 : bytes.byteLength % rb !== 0) {
    throw new RangeError(`repackWeights: ${bytes.byteLength} bytes are not whole ${format} rows of ${k} elements`);
  }
  if (isQuantized(format)) return repackBlocks(format, bytes);
  const stride = rowBytes(format, gpuRowLength(format, k));
  if (stride === rb) return bytes;
  const rows = bytes.byteLength / rb;
  const out = new Uint8Array(rows * stride);
  for (let r = 0; r < rows; r++) out.set(bytes.subarray(r * rb, (r + 1) * rb), r * stride);
  return out;
}

/** q8_0 / q4_0 blocks in the superblock layout (SUPERBLOCK). */
function repackBlocks(format: 'q8_0' | 'q4_0', bytes: Uint8Array): Uint8Array {
  const size = BLOCK_BYTES[format];
  const blocks = bytes.byteLength / size;
  const qb = QUANT_BYTES[format];
  const out = new Uint8Array(gpuWeightBytes(format, 1, blocks * QK));
  for (let b = 0; b < blocks; b++) {
    const sb = Math.floor(b / SUPERBLOCK);
    const j = b % SUPERBLOCK;
    const base = sb * (16 + SUPERBLOCK * qb);
    const src = b * size;
    out[base + 2 * j] = bytes[src];
    out[base + 2 * j + 1] = bytes[src + 1];
    const dst = base + 16 + j * qb;
    if (format === 'q8_0') {
      out.set(bytes.subarray(src + 2, src + size), dst);
      continue;
    }
    // GGUF byte i holds element i (low nibble) and element i + 16 (high nibble); GPU byte i holds
    // elements 2i (low) and 2i + 1 (high).
    const qs = src + 2;
    for (let i = 0; i < 8; i++) {
      out[dst + i] = (bytes[qs + 2 * i] & 0xf) | ((bytes[qs + 2 * i + 1] & 0xf) << 4);
      out[dst + 8 + i] = (bytes[qs + 2 * i] >> 4) | (bytes[qs + 2 * i + 1] & 0xf0);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// f16 <-> f32 (Node 20 has no Math.f16round)

const f32Buf = new Float32Array(1);
const u32Buf = new Uint32Array(f32Buf.buffer);

/** Round half to even, for non-negative x. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The binary16 bit pattern nearest to `value` (round to nearest, ties to even; overflow to inf). */
export function f32ToF16Bits(value: number): number {
  f32Buf[0] = value;
  const bits = u32Buf[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return mant ? sign | 0x7e00 : sign | 0x7c00; // NaN (quiet) / inf
  const a = Math.abs(f32Buf[0]);
  if (a < 2 ** -14) {
    // f16 subnormal range: a multiple of 2^-24. A result of 1024 is the smallest normal, which the
    // bit pattern 0x0400 encodes correctly as well.
    return sign | roundHalfEven(a * 2 ** 24);
  }
  let e = exp - 127; // a is a normal f32 here
  let frac = roundHalfEven((a / 2 ** e - 1) * 1024);
  if (frac === 1024) {
    frac = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | frac;
}

/** The value of a binary16 bit pattern (exact as a double and as an f32). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/** `value` rounded to the nearest f16 (the analogue of Math.f16round). */
export function f16Round(value: number): number {
  return f16BitsToF32(f32ToF16Bits(value));
}

// ---------------------------------------------------------------------------------------------
// bf16 <-> f32 (bf16 is the upper half of an f32, so conversions are bit operations on f32 bits)

/**
 * The bf16 bit pattern nearest to the f32 with bit pattern `bits`: round to nearest, ties to even
 * (overflow rounds to inf, f32 subnormals round to bf16 subnormals or across to the smallest
 * normal by the carry). A NaN stays a NaN of the same sign with its upper 7 payload bits, quieted
 * (0x0040 set) so a NaN whose payload sits only in the low 16 bits does not become an infinity.
 */
export function bf16FromF32Bits(bits: number): number {
  const u = bits >>> 0;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return (u >>> 16) | 0x0040;
  // Adding 0x7fff plus the lowest kept bit rounds the discarded half to nearest even; the sum of a
  // non-NaN pattern stays below 2^32, and the carry runs into the exponent where it should.
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** The bf16 bit pattern nearest to `value` (as an f32 first; see bf16FromF32Bits). */
export function f32ToBf16Bits(value: number): number {
  f32Buf[0] = value;
  return bf16FromF32Bits(u32Buf[0]);
}

/** The value of a bf16 bit pattern (exact; a NaN's payload is not promised to survive as a JS number). */
export function bf16BitsToF32(h: number): number {
  u32Buf[0] = (h & 0xffff) << 16;
  return f32Buf[0];
}

// ---------------------------------------------------------------------------------------------
// CPU reference decoder

/**
 * Decodes the first `count` elements of a weight buffer in GGUF layout. f16 and bf16 widen exactly
 * (bf16 bit for bit, NaN payloads included). Quantised values are the f32 product f32(d) * f32(q)
 * exactly as the shaders compute it (the product of an 11-bit and an at most 8-bit significand is
 * exact in f32, so there is no rounding to disagree on).
 */
export function dequantizeRef(format: WeightFormat, bytes: Uint8Array, count: number): Float32Array {
  if (isQuantized(format) && count % QK !== 0) {
    throw new RangeError(`${format}: count must be a multiple of ${QK} (whole blocks), got ${count}`);
  }
  const need = isQuantized(format) ? (count / QK) * BLOCK_BYTES[format] : count * (format === 'f32' ? 4 : 2);
  if (bytes.byteLength < need) throw new RangeError(`${format}: ${count} elements need ${need} bytes, got ${bytes.byteLength}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  switch (format) {
    case 'f32':
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      break;
    case 'f16':
      for (let i = 0; i < count; i++) out[i] = f16BitsToF32(view.getUint16(i * 2, true));
      break;
    case 'bf16': {
      // Written as bits, so NaN payloads and signs survive exactly as the shader's bitcast keeps them.
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, true) << 16;
      break;
    }
    case 'q8_0':
      for (let b = 0; b < count / QK; b++) {
        const o = b * 34;
        const d = f16BitsToF32(view.getUint16(o, true));
        for (let j = 0; j < QK; j++) out[b * QK + j] = d * view.getInt8(o + 2 + j);
      }
      break;
    case 'q4_0':
      for (let b = 0; b < count / QK; b++) {
        const o = b * 18;
        const d = f16BitsToF32(view.getUint16(o, true));
        for (let j = 0; j < 16; j++) {
          const q = bytes[o + 2 + j];
          out[b * QK + j] = d * ((q & 0xf) - 8);
          out[b * QK + j + 16] = d * ((q >> 4) - 8);
        }
      }
      break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reference encoders (llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref, f32 arithmetic)

const fr = Math.fround;

/** C's roundf: half away from zero. */
function roundAway(x: number): number {
  return Math.sign(x) * Math.round(Math.abs(x));
}

/**
 * Encodes an [n, k] f32 matrix in `format` (GGUF layout). f16 and bf16 round to nearest even (bf16
 * keeps NaNs NaN; see bf16FromF32Bits). Quantisers follow llama.cpp's reference ones in f32
 * arithmetic: Q8_0 takes d = amax / 127, id = 1 / d, q = roundf(x * id); Q4_0 takes the
 * signed value m of largest magnitude, d = m / -8, id = 1 / d, q = min(15, trunc(x * id + 8.5)).
 * The f32 d is used for quantising and stored rounded to f16.
 */
export function encodeWeights(format: WeightFormat, values: Float32Array, n: number, k: number): Uint8Array {
  if (values.length !== n * k) throw new RangeError(`encodeWeights: ${values.length} values for [${n}, ${k}]`);
  const out = new Uint8Array(weightBytes(format, n, k));
  const view = new DataView(out.buffer);
  const count = n * k;
  switch (format) {
    case 'f32':
      for (let i = 0; i < count; i++) view.setFloat32(i * 4, values[i], true);
      break;
    case 'f16':
      for (let i = 0; i < count; i++) view.setUint16(i * 2, f32ToF16Bits(values[i]), true);
      break;
    case 'bf16': {
      // From the f32 bit patterns, so NaN payloads are seen as stored (not as a JS number).
      const bits = new Uint32Array(values.buffer, values.byteOffset, count);
      for (let i = 0; i < count; i++) view.setUint16(i * 2, bf16FromF32Bits(bits[i]), true);
      break;
    }
    case 'q8_0':
      for (let b = 0; b < count / QK; b++) {
        const x = values.subarray(b * QK, b * QK + QK);
        let amax = 0;
        for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[j]));
        const d = fr(amax / 127);
        const id = d ? fr(1 / d) : 0;
        const o = b * 34;
        view.setUint16(o, f32ToF16Bits(d), true);
        for (let j = 0; j < QK; j++) view.setInt8(o + 2 + j, roundAway(fr(x[j] * id)));
      }
      break;
    case 'q4_0':
      for (let b = 0; b < count / QK; b++) {
        const x = values.subarray(b * QK, b * QK + QK);
        let amax = 0;
        let max = 0;
        for (let j = 0; j < QK; j++) {
          if (amax < Math.abs(x[j])) {
            amax = Math.abs(x[j]);
            max = x[j];
          }
        }
        const d = fr(max / -8);
        const id = d ? fr(1 / d) : 0;
        const o = b * 18;
        view.setUint16(o, f32ToF16Bits(d), true);
        const q = (v: number) => Math.min(15, Math.trunc(fr(fr(v * id) + 8.5)));
        for (let j = 0; j < 16; j++) out[o + 2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
      }
      break;
  }
  return out;
}

import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { SKIP_SLOT } from './kv_cache.ts';

/**
 * Which elements of a head are rotated together: 'normal' pairs adjacent elements (2i, 2i+1)
 * (llama.cpp's LLAMA_ROPE_TYPE_NORM: LLaMA, Mistral); 'neox' pairs (i, i + ropeDim/2)
 * (GPT-NeoX, Qwen2, Phi, and Hugging Face's rotate_half).
 */
export type RopeMode = 'normal' | 'neox';

/** Context-extension rescaling of the inverse frequencies, applied on the CPU. */
export type RopeScaling =
  /** Position interpolation: every frequency divided by `factor`. */
  | { type: 'linear'; factor: number }
  /**
   * Llama 3.1: wavelengths longer than originalMaxPositions / lowFreqFactor are divided by
   * `factor` (frequency / factor), wavelengths shorter than originalMaxPositions / highFreqFactor
   * are kept, and the band between interpolates linearly in originalMaxPositions / wavelength.
   */
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface RopeFrequencyOptions {
  /** Rotated dimensions per head (even); the table has ropeDim / 2 entries. */
  ropeDim: number;
  /** theta base, e.g. 10000 (Llama 2) or 500000 (Llama 3). */
  base: number;
  scaling?: RopeScaling;
}

/**
 * The ropeDim / 2 inverse frequencies base^(-2i / ropeDim), scaling applied, computed in float64
 * and rounded once to f32. Upload the result and pass it as `freqs`; all scaling variants live
 * here, so the shader only ever sees a table.
 */
export function ropeFrequencies(o: RopeFrequencyOptions): Float32Array {
  if (!Number.isInteger(o.ropeDim) || o.ropeDim <= 0 || o.ropeDim % 2 !== 0) throw new RangeError(`ropeDim must be a positive even integer, got ${o.ropeDim}`);
  if (!(o.base > 0)) throw new RangeError(`rope base must be positive, got ${o.base}`);
  const half = o.ropeDim / 2;
  const out = new Float32Array(half);
  const s = o.scaling;
  if (s && !(s.factor > 0)) throw new RangeError(`rope scaling factor must be positive, got ${s.factor}`);
  if (s?.type === 'llama3' && !(s.highFreqFactor > s.lowFreqFactor && s.lowFreqFactor > 0 && s.originalMaxPositions > 0)) {
    throw new RangeError('llama3 rope scaling needs 0 < lowFreqFactor < highFreqFactor and originalMaxPositions > 0');
  }
  for (let i = 0; i < half; i++) {
    let f = Math.pow(o.base, (-2 * i) / o.ropeDim);
    if (s?.type === 'linear') {
      f /= s.factor;
    } else if (s?.type === 'llama3') {
      const wavelength = (2 * Math.PI) / f;
      const longest = s.originalMaxPositions / s.lowFreqFactor; // beyond: fully interpolated
      const shortest = s.originalMaxPositions / s.highFreqFactor; // below: unchanged
      if (wavelength > longest) {
        f /= s.factor;
      } else if (wavelength >= shortest) {
        // t = 0 at wavelength == longest, 1 at wavelength == shortest
        const t = (s.originalMaxPositions / wavelength - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        f = (1 - t) * (f / s.factor) + t * f;
      }
    }
    out[i] = f;
  }
  return out;
}

export interface RopeShape {
  tokens: number;
  heads: number;
  headDim: number;
  /** Rotated dimensions per head, even, <= headDim; the rest pass through unchanged. */
  ropeDim: number;
  mode: RopeMode;
}

export interface RopeArgs extends RopeShape {
  /** [tokens, heads, headDim] f32, rotated in place */
  x: Binding;
  /** [tokens] u32 position of each token */
  positions: Binding;
  /** [ropeDim / 2] f32 inverse frequencies from ropeFrequencies() */
  freqs: Binding;
}

const WG = 256;

function checkShape(a: RopeShape): void {
  for (const k of ['tokens', 'heads', 'headDim', 'ropeDim'] as const) {
    if (!Number.isInteger(a[k]) || a[k] < 0) throw new RangeError(`rope ${k} must be a non-negative integer, got ${a[k]}`);
  }
  if (a.ropeDim % 2 !== 0 || a.ropeDim > a.headDim) throw new RangeError(`rope needs an even ropeDim <= headDim, got ropeDim=${a.ropeDim} headDim=${a.headDim}`);
  if (a.mode !== 'normal' && a.mode !== 'neox') throw new RangeError(`unknown rope mode "${String(a.mode)}"`);
}

/** Rotates x in place. q and k are separate calls (they differ in head count). */
export function rope(step: Step, a: RopeArgs): void {
  checkShape(a);
  const neox = a.mode === 'neox';
  // vec4 path when every rotated run is made of whole, 16-byte aligned vec4 words
  const vec4 = a.headDim % 4 === 0 && a.ropeDim % (neox ? 8 : 4) === 0;
  const perHead = vec4 ? a.ropeDim / (neox ? 8 : 4) : a.ropeDim / 2;
  const invocations = a.tokens * a.heads * perHead;
  if (invocations > 0xffffffff) throw new RangeError('rope: too many elements for one dispatch');
  step.dispatch({
    pipeline: step.gpu.pipelines.get('rope', vec4 ? 'main_vec4' : 'main_scalar', { WG, NEOX: neox ? 1 : 0 }),
    params: new Params().u32(a.tokens).u32(a.heads).u32(a.headDim).u32(a.ropeDim),
    buffers: [a.x, a.positions, a.freqs],
    workgroups: grid1d(step.gpu, Math.ceil(invocations / WG)),
  });
}

/**
 * CPU reference in float64: angle = position * freqs[j] with the same f32 frequency table as the
 * kernel, so only the kernel's f32 angle rounding and sin/cos differ. Returns the rotated copy.
 */
export function ropeRef(x: Float32Array, positions: Uint32Array, freqs: Float32Array, s: RopeShape): Float64Array {
  checkShape(s);
  const y = Float64Array.from(x);
  const half = s.ropeDim / 2;
  for (let t = 0; t < s.tokens; t++) {
    for (let h = 0; h < s.heads; h++) {
      const base = (t * s.heads + h) * s.headDim;
      for (let j = 0; j < half; j++) {
        const angle = positions[t] * freqs[j];
        const c = Math.cos(angle);
        const sn = Math.sin(angle);
        const i0 = s.mode === 'neox' ? base + j : base + 2 * j;
        const i1 = s.mode === 'neox' ? i0 + half : i0 + 1;
        const a = x[i0];
        const b = x[i1];
        y[i0] = a * c - b * sn;
        y[i1] = a * sn + b * c;
      }
    }
  }
  return y;
}

export interface RopeKvShape {
  tokens: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  ropeDim: number;
  mode: RopeMode;
}

export interface RopeKvArgs extends RopeKvShape {
  /** [tokens, nHeads + 2 * nKvHeads, headDim] f32: the fused q/k/v projection's rows (q heads, k heads, v heads) */
  qkv: Binding;
  /** [tokens, nHeads, headDim] f32: q rotated */
  q: Binding;
  /** f32 K and V pools (layout in kernels/kv_cache.ts): k rotated and v stored at the slots */
  kPool: Binding;
  vPool: Binding;
  /** u32 [tokens * nKvHeads]: pool slot of (token, kv head), or SKIP_SLOT */
  slotMapping: Binding;
  positions: Binding;
  freqs: Binding;
  /** also write k rotated back into qkv, in place (head-wise KV: a ring's prefill reads the chunk's keys there) */
  keepK?: boolean;
  /** false: no pool write, k rotated kept in qkv (implies keepK) for writeKv to pack into f16 pools */
  writeKv?: boolean;
}

function checkKvShape(a: RopeKvShape): void {
  checkShape({ tokens: a.tokens, heads: a.nHeads, headDim: a.headDim, ropeDim: a.ropeDim, mode: a.mode });
  if (!Number.isInteger(a.nKvHeads) || a.nKvHeads < 1) throw new RangeError(`rope_kv nKvHeads must be a positive integer, got ${a.nKvHeads}`);
  if (a.headDim % 2 !== 0) throw new RangeError(`rope_kv needs an even headDim, got ${a.headDim}`);
}

/**
 * RoPE on q and k and the KV cache write in one dispatch: q rotated to `q`, k rotated and v to the
 * pools (f32) at `slotMapping`. The same rotation as rope(), then writeKv().
 */
export function ropeKv(step: Step, a: RopeKvArgs): void {
  checkKvShape(a);
  const invocations = a.tokens * (a.nHeads + 2 * a.nKvHeads) * (a.headDim / 2);
  if (invocations === 0) return;
  if (invocations > 0xffffffff) throw new RangeError('rope_kv: too many elements for one dispatch');
  step.dispatch({
    pipeline: step.gpu.pipelines.get('rope', 'rope_kv', { WG, NEOX: a.mode === 'neox' ? 1 : 0, KEEP_K: a.keepK || a.writeKv === false ? 1 : 0, WRITE_KV: a.writeKv === false ? 0 : 1 }),
    params: new Params().u32(a.tokens).u32(a.nHeads).u32(a.nKvHeads).u32(a.headDim).u32(a.ropeDim),
    buffers: [a.qkv, a.positions, a.freqs, a.q, a.kPool, a.vPool, a.slotMapping],
    workgroups: grid1d(step.gpu, Math.ceil(invocations / WG)),
  });
}

/**
 * CPU reference of ropeKv in float64: returns q rotated, and writes k rotated and v into the
 * float64 pools at the slots (rows of headDim at slot * headDim; SKIP_SLOT rows are not stored).
 */
export function ropeKvRef(
  qkv: Float32Array,
  positions: Uint32Array,
  freqs: Float32Array,
  s: RopeKvShape,
  slotMapping: Uint32Array,
  kPool: Float64Array,
  vPool: Float64Array,
): Float64Array {
  checkKvShape(s);
  const { tokens, nHeads, nKvHeads, headDim } = s;
  const heads = nHeads + 2 * nKvHeads;
  const part = (from: number, count: number) => {
    const out = new Float32Array(tokens * count * headDim);
    for (let t = 0; t < tokens; t++) out.set(qkv.subarray((t * heads + from) * headDim, (t * heads + from + count) * headDim), t * count * headDim);
    return out;
  };
  const shape = { tokens, headDim, ropeDim: s.ropeDim, mode: s.mode };
  const q = ropeRef(part(0, nHeads), positions, freqs, { ...shape, heads: nHeads });
  const k = ropeRef(part(nHeads, nKvHeads), positions, freqs, { ...shape, heads: nKvHeads });
  const v = part(nHeads + nKvHeads, nKvHeads);
  for (let r = 0; r < tokens * nKvHeads; r++) {
    const slot = slotMapping[r];
    if (slot === SKIP_SLOT) continue;
    kPool.set(k.subarray(r * headDim, (r + 1) * headDim), slot * headDim);
    vPool.set(v.subarray(r * headDim, (r + 1) * headDim), slot * headDim);
  }
  return q;
}

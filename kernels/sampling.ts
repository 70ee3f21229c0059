import type { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { rowWorkgroupSize } from './softmax.ts';

/** Token written for a row in which every logit is masked (-inf) or otherwise not finite. */
export const NO_TOKEN = 0xffffffff;

/**
 * Per-row sampling parameters, stored on the GPU as an array of structs { temperature: f32,
 * topK: u32, topP: f32, minPOffset: f32, seedLo: u32, seedHi: u32, counter: u32 } (28 bytes each).
 */
export interface SampleParams {
  /** <= 0 (or NaN): greedy (argmax). */
  temperature: number;
  /** Keep the topK largest logits plus every logit tied with the k-th; 0 = off. */
  topK: number;
  /** Keep the smallest highest-probability set reaching this share of the top-k mass (ties at the threshold kept); >= 1 = off. */
  topP: number;
  /** Keep tokens whose probability is at least minP times the largest (before top-k / top-p); 0 or absent = off. */
  minP?: number;
  /** Per-sequence RNG seed: any safe integer, the Philox key as its 64-bit two's complement. */
  seed: number;
  /** The token's index among the sequence's generated tokens (u32): a sequence's draws differ per token. */
  counter: number;
}

export const SAMPLE_PARAMS_BYTES = 28;

/** A seed's 64-bit two's complement as [low word, high word] (negative seeds wrap: -1 -> [2^32-1, 2^32-1]). */
export function seedWords(seed: number): [number, number] {
  if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be an integer within +-(2^53 - 1): ${seed}`);
  const w = BigInt.asUintN(64, BigInt(seed));
  return [Number(w & 0xffffffffn), Number(w >> 32n)];
}

/**
 * The min-p cut as an offset from the row's largest logit, T * ln(minP) rounded to f32: a token
 * stays a candidate when logit >= max + offset, i.e. exp((logit - max) / T) >= minP. -Infinity
 * when min-p is off (minP <= 0) or the row is greedy.
 */
export function minPOffset(q: Pick<SampleParams, 'temperature' | 'minP'>): number {
  const minP = q.minP ?? 0;
  if (!(minP > 0) || isGreedy(q.temperature)) return -Infinity;
  return Math.fround(Math.fround(q.temperature) * Math.log(Math.min(1, minP)));
}

/** Packs `params` into the bytes of the kernel's per-row parameter buffer (little-endian). */
export function packSampleParams(params: readonly SampleParams[]): Uint8Array {
  const bytes = new Uint8Array(Math.max(1, params.length) * SAMPLE_PARAMS_BYTES);
  const view = new DataView(bytes.buffer);
  params.forEach((q, i) => {
    const o = i * SAMPLE_PARAMS_BYTES;
    for (const [name, v] of [['topK', q.topK], ['counter', q.counter]] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`sample param ${name} must be a u32: ${v}`);
    }
    const [lo, hi] = seedWords(q.seed);
    view.setFloat32(o, q.temperature, true);
    view.setUint32(o + 4, q.topK, true);
    view.setFloat32(o + 8, q.topP, true);
    view.setFloat32(o + 12, minPOffset(q), true);
    view.setUint32(o + 16, lo, true);
    view.setUint32(o + 20, hi, true);
    view.setUint32(o + 24, q.counter, true);
  });
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// RNG: Philox4x32-10 (mirrors shaders/sampling.wgsl bit for bit)

const PHILOX_M0 = 0xd2511f53;
const PHILOX_M1 = 0xcd9e8d57;
const PHILOX_W0 = 0x9e3779b9;
const PHILOX_W1 = 0xbb67ae85;

/** High word of the 64-bit product of two u32s: a * b = a * bh * 2^16 + a * bl, each part exact in a double. */
function mulHi(a: number, b: number): number {
  const bl = b & 0xffff;
  const bh = b >>> 16;
  return Math.floor((a * bh + Math.floor((a * bl) / 65536)) / 65536) >>> 0;
}

/** Philox4x32 with 10 rounds (Random123): the 4-word block for a 4-word counter and a 2-word key. */
export function philox4x32(counter: readonly number[], key: readonly number[]): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map((x) => x >>> 0);
  let [k0, k1] = key.map((x) => x >>> 0);
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + PHILOX_W0) >>> 0;
      k1 = (k1 + PHILOX_W1) >>> 0;
    }
    const hi0 = mulHi(PHILOX_M0, c0);
    const lo0 = Math.imul(PHILOX_M0, c0) >>> 0;
    const hi1 = mulHi(PHILOX_M1, c2);
    const lo1 = Math.imul(PHILOX_M1, c2) >>> 0;
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return [c0, c1, c2, c3];
}

/** The draw's 32 random bits: the first word of Philox4x32-10 at counter (counter, 0, 0, 0), key = the seed's words. */
export function drawHash(seed: number, counter: number): number {
  return philox4x32([counter, 0, 0, 0], seedWords(seed))[0];
}

/** The draw's uniform in [0, 1): the top 24 bits times 2^-24 (exact in f32). */
export function drawUniform(seed: number, counter: number): number {
  return (drawHash(seed, counter) >>> 8) / 16777216;
}

// ---------------------------------------------------------------------------------------------
// GPU

/** Compile-time sizes of the sampling kernels; tests lower them to reach every path on small rows. */
export interface SamplingConfig {
  /** Invocations per workgroup (a power of two). */
  workgroupSize?: number;
  /** Candidates the sampler keeps in workgroup memory (a multiple of the workgroup size). */
  candidates?: number;
  /** Contiguous elements per invocation in index-order passes over global memory. */
  tileElems?: number;
}

export interface ResolvedSamplingConfig {
  WG: number;
  CAP: number;
  TILE_E: number;
}

/**
 * Sizes for rows of `cols` logits: the softmax workgroup size (halved while the device's workgroup
 * storage cannot hold WG candidates), and as many workgroup-memory candidates (8 bytes each, a
 * power of two, at most 4096) as that storage leaves after the kernel's reduction and scan arrays
 * (24 bytes per invocation). 48 KiB and WG 1024 (NVIDIA under Vulkan): 2048 candidates.
 */
export function samplingConfig(gpu: Gpu, cols: number, override: SamplingConfig = {}): ResolvedSamplingConfig {
  let wg = override.workgroupSize ?? rowWorkgroupSize(gpu, cols);
  const storage = gpu.limits.maxComputeWorkgroupStorageSize;
  const capFor = (w: number) => {
    const room = Math.floor((storage - 24 * w - 64) / 8);
    return room >= 1 ? Math.min(4096, 2 ** Math.floor(Math.log2(room))) : 0;
  };
  if (override.workgroupSize === undefined) while (wg > 64 && capFor(wg) < wg) wg /= 2;
  const cap = override.candidates ?? Math.max(wg, capFor(wg));
  const tileE = override.tileElems ?? 8;
  if (!Number.isInteger(Math.log2(wg))) throw new RangeError(`workgroup size must be a power of two: ${wg}`);
  if (cap < wg || cap % wg !== 0) throw new RangeError(`candidates (${cap}) must be a positive multiple of the workgroup size (${wg})`);
  if (!Number.isInteger(tileE) || tileE < 1) throw new RangeError(`tileElems must be a positive integer: ${tileE}`);
  if (24 * wg + 8 * cap + 64 > storage) throw new RangeError(`workgroup size ${wg} with ${cap} candidates exceeds this device's workgroup storage (${storage} bytes)`);
  return { WG: wg, CAP: cap, TILE_E: tileE };
}

export interface ArgmaxArgs {
  /** [rows, cols] f32 */
  logits: Binding;
  /** [rows] u32: lowest index of the largest finite logit, NO_TOKEN if none is finite */
  out: Binding;
  rows: number;
  cols: number;
  config?: SamplingConfig;
}

/** Greedy token per row (ties -> lowest index). */
export function argmax(step: Step, a: ArgmaxArgs): void {
  const { WG } = samplingConfig(step.gpu, a.cols, a.config);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('sampling', 'argmax', { WG }),
    params: new Params().u32(a.rows).u32(a.cols),
    buffers: [a.logits, a.out],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

export interface SampleArgs {
  /** [rows, cols] f32, read as given (a mask / bias kernel may rewrite it before this runs) */
  logits: Binding;
  /** [rows] SampleParams structs, bytes from packSampleParams */
  params: Binding;
  /** [rows] u32 sampled token (NO_TOKEN for a row with no finite logit) */
  out: Binding;
  /** [rows] f32 probability of the token under the distribution drawn from (1 for greedy rows); optional */
  outProbs?: Binding;
  rows: number;
  cols: number;
  config?: SamplingConfig;
}

/**
 * Samples one token per row: temperature, min-p, top-k, top-p, then an inverse-CDF draw with
 * u = drawUniform(seed, counter). See shaders/sampling.wgsl for the exact semantics.
 */
export function sample(step: Step, a: SampleArgs): void {
  const cfg = samplingConfig(step.gpu, a.cols, a.config);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('sampling', 'sample', { ...cfg }),
    params: new Params().u32(a.rows).u32(a.cols),
    buffers: [a.logits, a.out, a.outProbs ?? step.scratch(Math.max(1, a.rows) * 4, 'token-probs'), a.params],
    workgroups: grid1d(step.gpu, a.rows),
  });
}

export interface DrawHashArgs {
  /** [rows] SampleParams */
  params: Binding;
  /** [rows] u32: drawHash(seed, counter) */
  outHashes: Binding;
  /** [rows] f32: drawUniform(seed, counter) */
  outUniforms: Binding;
  rows: number;
}

/** The GPU side of the RNG alone (for checking its TypeScript mirror). */
export function drawHashes(step: Step, a: DrawHashArgs): void {
  const WG = 64;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('sampling', 'draw_hashes', { WG }),
    params: new Params().u32(a.rows).u32(0),
    buffers: [a.params, a.outHashes, a.outUniforms, a.params],
    workgroups: [Math.ceil(a.rows / WG)],
  });
}

export interface PhiloxBlocksArgs {
  /** [blocks, 8] u32, in place: counter (4 words) and key (2 words) in; words 0..3 become the output */
  io: Binding;
  blocks: number;
}

/** Philox4x32-10 on the GPU for arbitrary (counter, key) blocks (the known-answer test). */
export function philoxBlocks(step: Step, a: PhiloxBlocksArgs): void {
  const WG = 64;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('sampling', 'philox_block', { WG }),
    params: new Params().u32(a.blocks).u32(0),
    buffers: [step.scratch(4, 'unused'), a.io],
    workgroups: [Math.ceil(a.blocks / WG)],
  });
}

// ---------------------------------------------------------------------------------------------
// CPU references (float64 probabilities; thresholds on the same f32 logits as the kernel)

/** Lowest index of the largest finite logit per row; NO_TOKEN where no logit is finite. */
export function argmaxRef(logits: Float32Array, rows: number, cols: number): Uint32Array {
  const out = new Uint32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = NO_TOKEN;
    for (let i = 0; i < cols; i++) {
      const v = logits[r * cols + i];
      if (Number.isFinite(v) && (best === NO_TOKEN || v > logits[r * cols + best])) best = i;
    }
    out[r] = best;
  }
  return out;
}

/** The distribution one row draws from, after temperature, min-p, top-k and top-p (renormalised). */
export interface FilteredRow {
  /** Probability per column (0 outside the kept set). */
  probs: Float64Array;
  /** Kept columns in index order. */
  kept: number[];
  /** Greedy row (temperature <= 0 or too small for f32): probs is one-hot on the argmax. */
  greedy: boolean;
  /**
   * Smallest distance of a top-p decision from its threshold, |cumulative mass - topP * mass| /
   * mass over the tie groups considered (Infinity when top-p is off): f32 sums on the GPU can
   * decide differently only when this is within their rounding.
   */
  topPMargin: number;
}

function isGreedy(temperature: number): boolean {
  const t = Math.fround(temperature);
  return !(t > 0) || !Number.isFinite(Math.fround(1 / t));
}

/** Filters one row of logits exactly as the kernel does (in float64). */
export function filterRowRef(row: ArrayLike<number>, q: SampleParams): FilteredRow {
  const cols = row.length;
  const probs = new Float64Array(cols);
  const valid: number[] = [];
  for (let i = 0; i < cols; i++) if (Number.isFinite(row[i])) valid.push(i);
  if (valid.length === 0) return { probs, kept: [], greedy: false, topPMargin: Infinity };
  if (isGreedy(q.temperature)) {
    let best = valid[0];
    for (const i of valid) if (row[i] > row[best]) best = i;
    probs[best] = 1;
    return { probs, kept: [best], greedy: true, topPMargin: Infinity };
  }
  const t = Math.fround(q.temperature);
  // Valid columns by logit, largest first (index order within ties).
  let order = [...valid].sort((a, b) => row[b] - row[a] || a - b);
  const max = row[order[0]];
  // Min-p: the same f32 threshold as the kernel, max + offset (an f32 sum).
  const offset = minPOffset(q);
  if (Number.isFinite(offset)) {
    const thr = Math.min(Math.fround(max + offset), max);
    order = order.filter((i) => row[i] >= thr);
  }
  const n = order.length;
  const w = (i: number) => Math.exp((row[i] - max) / t);
  const k = q.topK === 0 ? n : Math.min(q.topK, n);
  const kth = row[order[k - 1]];
  let count = k;
  while (count < n && row[order[count]] === kth) count++;
  let mass = 0;
  for (let j = 0; j < count; j++) mass += w(order[j]);
  let threshold = kth;
  let topPMargin = Infinity;
  const topP = Math.fround(q.topP);
  if (topP < 1) {
    const goal = topP * mass;
    let cum = 0;
    for (let j = 0; j < count; ) {
      const v = row[order[j]];
      while (j < count && row[order[j]] === v) cum += w(order[j++]);
      topPMargin = Math.min(topPMargin, Math.abs(cum - goal) / mass);
      if (cum >= goal) {
        threshold = v;
        break;
      }
    }
  }
  const kept = order.filter((i) => row[i] >= threshold).sort((a, b) => a - b);
  let keptMass = 0;
  for (const i of kept) keptMass += w(i);
  for (const i of kept) probs[i] = w(i) / keptMass;
  return { probs, kept, greedy: false, topPMargin };
}

export interface SampleRefResult {
  /** Token per row (NO_TOKEN where no logit is finite). */
  tokens: Uint32Array;
  /** Probability of the token under the distribution drawn from (1 for greedy rows). */
  probs: Float64Array;
  /** The uniform each row drew (drawUniform(seed, counter)); NaN for greedy rows. */
  u: Float64Array;
  /**
   * Smallest distance of the row's outcome from a decision boundary, in units of the kept mass:
   * min(|u - CDF boundary|, top-p margin). Where this is below the f32 rounding of the kernel's
   * sums, the GPU may legitimately pick the neighbouring token. Infinity for greedy rows.
   */
  margin: Float64Array;
}

/** CPU reference of `sample`, float64, same semantics and the same RNG draws. */
export function sampleRef(logits: Float32Array, params: readonly SampleParams[], rows: number, cols: number): SampleRefResult {
  const tokens = new Uint32Array(rows);
  const probs = new Float64Array(rows);
  const us = new Float64Array(rows).fill(NaN);
  const margin = new Float64Array(rows).fill(Infinity);
  for (let r = 0; r < rows; r++) {
    const row = logits.subarray(r * cols, (r + 1) * cols);
    const f = filterRowRef(row, params[r]);
    if (f.kept.length === 0) {
      tokens[r] = NO_TOKEN;
      continue;
    }
    if (f.greedy) {
      tokens[r] = f.kept[0];
      probs[r] = 1;
      continue;
    }
    const u = drawUniform(params[r].seed, params[r].counter);
    us[r] = u;
    // First kept index whose inclusive CDF exceeds u (index order); the last positive one if none.
    let cum = 0;
    let pick = -1;
    let best = f.topPMargin;
    for (const i of f.kept) {
      if (f.probs[i] === 0) continue;
      cum += f.probs[i];
      best = Math.min(best, Math.abs(cum - u));
      if (pick < 0 && cum > u) pick = i;
    }
    if (pick < 0) for (const i of f.kept) if (f.probs[i] > 0) pick = i;
    tokens[r] = pick;
    probs[r] = f.probs[pick];
    margin[r] = best;
  }
  return { tokens, probs, u: us, margin };
}

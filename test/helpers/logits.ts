import { expect } from 'vitest';
import type { Gpu } from '../../src/gpu/gpu.ts';
import type { ModelConfig } from '../../src/model/config.ts';
import { cpuForward } from '../../src/model/cpu_reference.ts';
import { GpuModel } from '../../src/model/gpu_model.ts';
import type { ModelSource } from '../../src/model/source.ts';
import { cpuWeightsOf } from '../../src/model/cpu_weights.ts';

/** Unit roundoff (half an ulp of 1, relative) of f32, float64, and of the bf16 and f16 weight formats. */
export const UNIT_ROUNDOFF = { f32: 2 ** -24, f64: 2 ** -53, bf16: 2 ** -8, f16: 2 ** -11 } as const;

/** Logits of every position of `tokens`, from one GPU forward pass of a freshly loaded model. */
export async function gpuLogits(gpu: Gpu, src: ModelSource, tokens: number[]): Promise<Float32Array[]> {
  const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
  try {
    const step = gpu.step();
    const { logits, rows } = model.forward(step, [{ seq: 0, tokens }], { allPositions: true });
    const read = step.readback(logits, 0, rows * src.config.vocabSize * 4);
    await step.submit();
    const all = new Float32Array(await read);
    return Array.from({ length: rows }, (_, t) => all.subarray(t * src.config.vocabSize, (t + 1) * src.config.vocabSize));
  } finally {
    model.destroy();
  }
}

/** The float64 CPU oracle's logits of every position, on the weights as the GPU decodes them. */
export function cpuLogits(src: ModelSource, tokens: number[]): Float64Array[] {
  return cpuForward(src.config, cpuWeightsOf(src), tokens);
}

/** max |a - b| over every position's logits, relative to max |b|. */
export function relativeLogitError(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let err = 0;
  for (let t = 0; t < b.length; t++) for (let v = 0; v < b[t].length; v++) err = Math.max(err, Math.abs(a[t][v] - b[t][v]));
  return err / maxAbs(b);
}

export function maxAbs(rows: ArrayLike<number>[]): number {
  let m = 0;
  for (const r of rows) for (let i = 0; i < r.length; i++) m = Math.max(m, Math.abs(r[i]));
  return m;
}

/**
 * The bound on a forward pass's logit error, relative to the largest |logit|, when every operation
 * (or every weight) carries a relative rounding error of at most `u`: u·√N, N the number of roundings
 * on the longest chain that feeds one logit. Per layer that chain holds the two RMSNorm sums of dim
 * squares, a q/k/v dot product (dim terms), a score (headDim terms), the softmax sum and the P·V sum
 * (one term per position, at most `positions`), the output projection (nHeads·headDim terms), gate/up
 * (dim terms), down (ffn terms) and ~13 single roundings (norm scales, RoPE, score scale, softmax
 * division, SiLU, residual adds); then the final RMSNorm and the output projection (dim terms each).
 * Rounding errors of either sign add like a random walk: √N·u is the probabilistic bound of Higham
 * and Mary (SIAM J. Sci. Comput. 2019) with λ = 1, and nothing on the path amplifies them (every
 * layer is normalised, the residual stream only adds). stories260K over 21 positions: N = 2585,
 * f32 bound 3.0e-6.
 */
export function roundingTolerance(c: ModelConfig, positions: number, u: number): number {
  const perLayer = 3 * c.dim + c.headDim + 2 * positions + c.nHeads * c.headDim + c.ffn + 13;
  return u * Math.sqrt(c.nLayers * perLayer + 2 * c.dim + 2);
}

/**
 * Asserts the GPU's logits of every position of `tokens` equal `want` (default: the float64 oracle
 * on the same decoded weights) within the f32 roundingTolerance, relative to the largest |logit|.
 */
export async function expectGpuLogits(gpu: Gpu, src: ModelSource, tokens: number[], want: Float64Array[] = cpuLogits(src, tokens)): Promise<void> {
  const err = relativeLogitError(await gpuLogits(gpu, src, tokens), want);
  expect(err, 'GPU logit error relative to the largest |logit|').toBeLessThan(roundingTolerance(src.config, tokens.length, UNIT_ROUNDOFF.f32));
}

/** log-softmax of one row of logits, in float64. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(row, (v) => v - logZ);
}

export interface OracleGreedy {
  /** the tokens greedy decoding picks */
  tokens: number[];
  /** each picked token's distribution: the log-softmax of the float64 logits */
  logprobs: Float64Array[];
  /**
   * The bound on |GPU logprob - oracle logprob|: a logprob is logit - logZ, and logZ moves by a
   * softmax-weighted mean of the logit errors, so twice the f32 logit bound (roundingTolerance x
   * the largest |logit|).
   */
  tolerance: number;
}

/** Greedy decoding by the float64 CPU oracle: what a greedy request with logprobs must return. */
export function oracleGreedy(src: ModelSource, prompt: number[], n: number): OracleGreedy {
  const weights = cpuWeightsOf(src);
  const tokens = [...prompt];
  const rows: Float64Array[] = [];
  for (let i = 0; i < n; i++) {
    const row = cpuForward(src.config, weights, tokens).at(-1)!;
    rows.push(row);
    tokens.push(row.indexOf(Math.max(...row)));
  }
  const tolerance = 2 * roundingTolerance(src.config, tokens.length, UNIT_ROUNDOFF.f32) * maxAbs(rows);
  return { tokens: tokens.slice(prompt.length), logprobs: rows.map(logSoftmax), tolerance };
}

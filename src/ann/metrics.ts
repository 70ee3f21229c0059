/**
 * The truth a key index is measured against, in float64 on the CPU: exact scores, exact top-k,
 * recall of the top-k ids, recall of the attention mass, and the attention output error.
 */
import type { Vectors } from './sets.ts';

/** Exact scores q·k of one query over all keys (float64). */
export function exactScores(keys: Vectors, q: Float32Array | Float64Array): Float64Array {
  const { rows: n, dim: d, data } = keys;
  const s = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let acc = 0;
    for (let j = 0; j < d; j++) acc += q[j] * data[i * d + j];
    s[i] = acc;
  }
  return s;
}

/** Ids of the k largest scores, best first (ties: lower id first). */
export function topK(scores: ArrayLike<number>, k: number): Int32Array {
  const ids = Array.from({ length: scores.length }, (_, i) => i);
  ids.sort((a, b) => scores[b] - scores[a] || a - b);
  return Int32Array.from(ids.slice(0, k));
}

/** What one query's search is scored on. */
export interface QueryTruth {
  /** exact top-k ids */
  top: Int32Array;
  /** softmax at scale 1/sqrt(D) over all keys (float64) */
  probs: Float64Array;
  /** the exact attention output over the values */
  output: Float64Array;
  /** attention over the exact top-k keys alone (renormalised): the best any top-k search can do */
  topOutput: Float64Array;
  /** softmax mass of the exact top-k keys */
  topMass: number;
}

/** The exact truth of one query: top-k ids, softmax over all keys at 1/sqrt(D), output over `values`. */
export function queryTruth(keys: Vectors, values: Vectors, q: Float32Array, k: number): QueryTruth {
  const scores = exactScores(keys, q);
  const scale = 1 / Math.sqrt(keys.dim);
  let max = -Infinity;
  for (const s of scores) max = Math.max(max, s * scale);
  const probs = new Float64Array(scores.length);
  let sum = 0;
  for (let i = 0; i < scores.length; i++) sum += probs[i] = Math.exp(scores[i] * scale - max);
  for (let i = 0; i < probs.length; i++) probs[i] /= sum;
  const top = topK(scores, k);
  let topMass = 0;
  for (const id of top) topMass += probs[id];
  return { top, probs, output: attend(values, probs, Array.from(probs.keys())), topOutput: attend(values, probs, top), topMass };
}

/** sum over `ids` of w[id] * values[id], with w renormalised to sum to 1 over `ids`. */
function attend(values: Vectors, w: Float64Array, ids: ArrayLike<number>): Float64Array {
  const out = new Float64Array(values.dim);
  let total = 0;
  for (let t = 0; t < ids.length; t++) total += w[ids[t]];
  if (total === 0) return out;
  for (let t = 0; t < ids.length; t++) {
    const id = ids[t];
    const a = w[id] / total;
    for (let j = 0; j < values.dim; j++) out[j] += a * values.data[id * values.dim + j];
  }
  return out;
}

export interface QueryQuality {
  /** |found ∩ exact top-k| / k */
  recall: number;
  /** softmax mass of the found keys / softmax mass of the exact top-k keys (softmax over all keys) */
  massRecall: number;
  /** |attention over the found keys (renormalised) - exact attention| / |exact attention| */
  outputError: number;
  /** the same against attention over the exact top-k keys: the search's own error, without top-k truncation's */
  outputErrorTopK: number;
}

/** Quality of one query's found ids (-1 = none) against its truth. */
export function queryQuality(truth: QueryTruth, values: Vectors, found: ArrayLike<number>): QueryQuality {
  const ids = Array.from(found).filter((id) => id >= 0);
  const exact = new Set(truth.top);
  let hits = 0;
  let mass = 0;
  for (const id of new Set(ids)) {
    if (exact.has(id)) hits++;
    mass += truth.probs[id];
  }
  const approx = attend(values, truth.probs, ids);
  return { recall: hits / truth.top.length, massRecall: Math.min(1, mass / truth.topMass), outputError: relError(approx, truth.output), outputErrorTopK: relError(approx, truth.topOutput) };
}

function relError(a: Float64Array, b: Float64Array): number {
  let err = 0;
  let norm = 0;
  for (let j = 0; j < a.length; j++) {
    err += (a[j] - b[j]) ** 2;
    norm += b[j] ** 2;
  }
  return Math.sqrt(err / norm);
}

/**
 * Key/query sets for the key index: generated out-of-distribution sets, and raw float32 files
 * checked for size, dimension and non-finite rows before anything uses them.
 */
import { readFileSync, statSync } from 'node:fs';
import { mulberry32, normalArray } from '../util/rng.ts';

/** Row-major float32 vectors, `rows` x `dim`. */
export interface Vectors {
  data: Float32Array;
  rows: number;
  dim: number;
}

export interface AnnSet {
  name: string;
  keys: Vectors;
  /** queries the index may learn from (the prefill's queries in the model) */
  buildQueries: Vectors;
  /** queries searched; never used to build */
  queries: Vectors;
}

export interface GeneratedSetOptions {
  keys: number;
  dim: number;
  buildQueries: number;
  queries: number;
  seed: number;
  /** key clusters (default 64) */
  keyClusters?: number;
  /** query clusters (default 32): the query distribution's modes, shifted away from the keys' */
  queryClusters?: number;
  /** keys planted per searched query to score above almost every other key (default 4) */
  planted?: number;
}

const RANK = 16;
const NOISE = 0.2;
/** scales the queries so that softmax at 1/sqrt(D) spreads its mass over many keys (at 16K keys: ~16% on the top key, ~55% on the top 100) */
const QUERY_SCALE = 0.6;

/**
 * An out-of-distribution set in the shape of attention: keys are clusters around a large offset
 * they all share (so the keys nearest a query in L2 are not its highest-scoring ones), queries are
 * clusters around a different, shifted centre, and every searched query gets a few planted keys
 * that score above almost all others, at random positions (a token the query needs that no build
 * query saw).
 */
export function generateSet(o: GeneratedSetOptions): AnnSet {
  const { dim: d } = o;
  const keyClusters = o.keyClusters ?? 64;
  const queryClusters = o.queryClusters ?? 32;
  const planted = o.planted ?? 4;
  let seed = o.seed * 1000;
  const normal = (n: number, std: number) => normalArray(n, ++seed, std);
  const offset = normal(d, 2);
  const keyCentres = normal(keyClusters * d, 1);
  const shift = normal(d, 1.5);
  const queryCentres = normal(queryClusters * d, 1);
  const next = mulberry32(++seed);

  // keys vary within their cluster mostly in a low-rank subspace (keys have a low effective rank)
  const basis = normal(RANK * d, 1 / Math.sqrt(RANK));
  const keys = normal(o.keys * d, NOISE);
  const z = normal(o.keys * RANK, 1);
  for (let i = 0; i < o.keys; i++) {
    const c = Math.floor(next() * keyClusters);
    for (let j = 0; j < d; j++) {
      let low = 0;
      for (let r = 0; r < RANK; r++) low += z[i * RANK + r] * basis[r * d + j];
      keys[i * d + j] += offset[j] + keyCentres[c * d + j] + low;
    }
  }
  const queriesOf = (m: number) => {
    const q = normal(m * d, 0.5);
    for (let i = 0; i < m; i++) {
      const c = Math.floor(next() * queryClusters);
      for (let j = 0; j < d; j++) q[i * d + j] = QUERY_SCALE * (q[i * d + j] + shift[j] + queryCentres[c * d + j]);
    }
    return q;
  };
  const build = queriesOf(o.buildQueries);
  const queries = queriesOf(o.queries);

  // a planted key: a random key moved along the query's direction by 4 standard deviations of
  // the query's scores over keys (estimated from the key noise and centres: 0.7^2 + 1 per dim)
  const spread = Math.sqrt(NOISE ** 2 + 2);
  for (let i = 0; i < o.queries; i++) {
    const q = queries.subarray(i * d, (i + 1) * d);
    const norm = Math.hypot(...q);
    for (let p = 0; p < planted; p++) {
      const k = Math.floor(next() * o.keys);
      const boost = (4 + next()) * spread;
      for (let j = 0; j < d; j++) keys[k * d + j] += (boost * q[j]) / norm;
    }
  }
  return {
    name: `generated n=${o.keys} D=${d}`,
    keys: { data: keys, rows: o.keys, dim: d },
    buildQueries: { data: build, rows: o.buildQueries, dim: d },
    queries: { data: queries, rows: o.queries, dim: d },
  };
}

/** Throws naming the first row with a NaN or infinite element. */
function checkFinite(v: Vectors, what: string): void {
  for (let i = 0; i < v.data.length; i++) {
    if (!Number.isFinite(v.data[i])) {
      throw new Error(`${what}: row ${Math.floor(i / v.dim)} has a non-finite value (${v.data[i]}) at column ${i % v.dim}`);
    }
  }
}

/**
 * Reads a raw little-endian float32 file of rows of `dim` values. Refuses an empty file, a size
 * that is not a whole number of rows, and rows with NaN or infinite values.
 */
export function readVectors(path: string, dim: number, what: string): Vectors {
  if (!Number.isInteger(dim) || dim < 1) throw new Error(`--dim must be a positive integer, got ${dim}`);
  const size = statSync(path).size;
  const rowBytes = dim * 4;
  if (size === 0) throw new Error(`${what} ${path} is empty`);
  if (size % rowBytes !== 0) {
    throw new Error(`${what} ${path}: ${size} bytes is not a whole number of float32 rows of dimension ${dim} (${rowBytes} bytes each); wrong file or wrong --dim?`);
  }
  const bytes = readFileSync(path);
  const data = new Float32Array(size / 4);
  new Uint8Array(data.buffer).set(bytes);
  if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) throw new Error('big-endian hosts are not supported');
  const v = { data, rows: size / rowBytes, dim };
  checkFinite(v, `${what} ${path}`);
  return v;
}

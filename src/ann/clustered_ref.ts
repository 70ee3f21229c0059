/**
 * CPU reference (float64) of the key index that src/ann/key_index.ts builds and searches on the
 * GPU, step for step (see docs/ann.md): spherical k-means over the build queries gives C query
 * centroids; each centroid's list holds the L keys it scores highest (the keys a query like it
 * attends to most; a key may be in several lists) and the L-th score is the list's threshold for
 * keys appended later. A search scores the query against the centroids, scans the lists of the
 * nprobe best (probesRef), each distinct key once, and keeps the k best (annSearchListsRef).
 */
import { annKmeansRef, annTopKRef, type ListsRef } from '../../kernels/ann.ts';
import type { Vectors } from './sets.ts';

export interface IndexShape {
  clusters: number;
  /** keys per list at build */
  listLength: number;
  /** k-means iterations over the build queries */
  iterations: number;
}

export interface ClusteredRef extends ListsRef {
  centroids: Float64Array;
  thr: number[];
}

const scoresOf = (keys: Vectors, a: ArrayLike<number>, row: number) =>
  Float64Array.from({ length: keys.rows }, (_, i) => {
    let s = 0;
    for (let j = 0; j < keys.dim; j++) s += a[row * keys.dim + j] * keys.data[i * keys.dim + j];
    return s;
  });

export function buildClusteredRef(keys: Vectors, buildQueries: Vectors, shape: IndexShape): ClusteredRef {
  const centroids = annKmeansRef(buildQueries.data, buildQueries.rows, keys.dim, shape.clusters, shape.iterations);
  const lists: number[][] = [];
  const thr: number[] = [];
  for (let j = 0; j < shape.clusters; j++) {
    const top = annTopKRef(scoresOf(keys, centroids, j), 1, keys.rows, Math.min(shape.listLength, keys.rows));
    lists.push(Array.from(top.ids[0]));
    thr.push(top.thr[0]);
  }
  return { centroids, thr, lists, overflow: [] };
}

/** The query's nprobe best centroids. */
export function probesRef(index: { centroids: ArrayLike<number>; lists: unknown[] }, dim: number, q: ArrayLike<number>, nprobe: number): number[] {
  const clusters = index.lists.length;
  const s = Float64Array.from({ length: clusters }, (_, j) => {
    let v = 0;
    for (let t = 0; t < dim; t++) v += index.centroids[j * dim + t] * q[t];
    return v;
  });
  return Array.from(annTopKRef(s, 1, clusters, nprobe).ids[0]);
}

/**
 * The key index of one head row (one (sequence, KV head) pair), built and searched on the GPU
 * (docs/ann.md): query centroids from spherical k-means over the build queries (the prefill's
 * queries), one list per centroid of the keys it scores highest, searched by scanning the lists of
 * a query's best centroids. The keys stay where they are (the paged KV cache, or any buffer in its
 * layout: flat_keys.ts); the index holds centroids, thresholds and key ids.
 *
 * Everything is recorded into the caller's Step (no readback): build at prefill, extend as decode
 * appends keys, search a batch of queries (the query heads of one KV head share the index), free
 * with the sequence. `bytes` is its GPU memory, to account with the KV it indexes.
 */
import { annAppend, annFill, checkHeadDim, annKmeans, annScan, annScores, annTopK, type KeySource, type ListsRef, scanSlots } from '../../kernels/ann.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { Binding, Step } from '../gpu/step.ts';
import { type FlatKeys, flatKeySource } from './flat_keys.ts';

export interface KeyIndexOptions {
  /** query centroids (default 64; at most the number of build queries) */
  clusters?: number;
  /** keys per list at build, as a fraction of the keys (default 0.01) ... */
  listFraction?: number;
  /** ... or as a count */
  listLength?: number;
  /** k-means iterations (default 8) */
  iterations?: number;
  /** room per list for appended keys, as a fraction of its length (default 0.25) */
  slack?: number;
}

export interface BuildArgs {
  keys: KeySource;
  /** keys [0, count) of the head row are indexed */
  count: number;
  /** f32 [buildCount, headDim]: queries the index learns from; never the searched ones */
  buildQueries: Binding;
  buildCount: number;
  /** keys the head row may reach with appends (sizes the overflow list); >= count */
  capacity: number;
  options?: KeyIndexOptions;
}

export interface SearchArgs {
  /** f32 [count, headDim] */
  queries: Binding;
  count: number;
  k: number;
  /** lists scanned per query (1 to clusters) */
  nprobe: number;
}

/** Scratch buffers of the search's step (valid until it is submitted; read them back or use them in it). */
export interface SearchResult {
  /** i32 [queries, k]: key ids in no particular order, -1 where fewer were found */
  ids: GPUBuffer;
  /** f32 [queries, k]: their scores q·k (LOWEST, -3.4e38, where none) */
  scores: GPUBuffer;
  /** u32 [queries] at byte offset touchedOffset: keys whose scores were computed */
  touched: GPUBuffer;
  touchedOffset: number;
}

export interface IndexSnapshot extends ListsRef {
  centroids: Float32Array;
  thr: Float32Array;
}

/** The build scores centroids against the keys in chunks of centroids whose score rows take at most this many bytes. */
const BUILD_SCORES_BYTES = 64 * 1024 * 1024;

export class KeyIndex {
  private count: number;
  private destroyed = false;

  private constructor(
    private keys: KeySource,
    readonly clusters: number,
    readonly listLength: number,
    /** capacity of each list */
    readonly cap: number,
    readonly buildCount: number,
    readonly capacity: number,
    private readonly centroids: GPUBuffer,
    private readonly centroidKeys: FlatKeys,
    private readonly thr: GPUBuffer,
    private readonly lists: GPUBuffer,
    private readonly counts: GPUBuffer,
  ) {
    this.count = buildCount;
  }

  /** Records the build into `step`. Throws (before recording anything) on arguments it cannot index. */
  static build(step: Step, a: BuildArgs): KeyIndex {
    const gpu = step.gpu;
    const o = a.options ?? {};
    const d = a.keys.headDim;
    checkHeadDim(d, a.keys.dtype);
    if (!Number.isInteger(a.count) || a.count < 1) throw new Error(`key index: no keys to index (count ${a.count})`);
    if (!Number.isInteger(a.buildCount) || a.buildCount < 1) throw new Error('key index: at least one build query is needed');
    if (!(a.capacity >= a.count)) throw new Error(`key index: capacity ${a.capacity} is below the ${a.count} keys indexed`);
    const clusters = Math.min(o.clusters ?? 64, a.buildCount);
    const listLength = Math.min(a.count, Math.max(1, o.listLength ?? Math.ceil((o.listFraction ?? 0.01) * a.count)));
    const cap = listLength + Math.ceil((o.slack ?? 0.25) * listLength);
    const overCap = a.capacity - a.count;
    const centroids = gpu.createBuffer(clusters * d * 4, 'ann centroids');
    const index = new KeyIndex(
      a.keys,
      clusters,
      listLength,
      cap,
      a.count,
      a.capacity,
      centroids,
      flatKeySource(gpu, centroids, clusters, d),
      gpu.createBuffer(clusters * 4, 'ann thresholds'),
      gpu.createBuffer((clusters * cap + overCap) * 4, 'ann lists'),
      gpu.createBuffer((clusters + 1) * 4, 'ann counts'),
    );

    const points = step.scratch(a.buildCount * d * 4, 'ann build points');
    step.copy(bufferOf(a.buildQueries), offsetOf(a.buildQueries), points, 0, a.buildCount * d * 4);
    annKmeans(step, { points, pointCount: a.buildCount, centroids, clusters, assign: step.scratch(a.buildCount * 4), headDim: d, iterations: o.iterations ?? 8 });
    annFill(step, index.counts, clusters + 1);
    const rowsPer = Math.max(4, Math.floor(Math.min(BUILD_SCORES_BYTES, gpu.limits.maxStorageBufferBindingSize) / (a.count * 4) / 4) * 4);
    const scores = step.scratch(Math.min(rowsPer, clusters) * a.count * 4, 'ann build scores');
    const listScores = step.scratch(clusters * cap * 4, 'ann list scores');
    for (let r0 = 0; r0 < clusters; r0 += rowsPer) {
      const rows = Math.min(rowsPer, clusters - r0);
      annScores(step, { a: centroids, aRow0: r0, rows, keys: a.keys, n: a.count, out: scores });
      annTopK(step, { scores, rows, cols: a.count, k: listLength, outIds: index.lists, outScores: listScores, count: index.counts, thr: index.thr, outStride: cap, outRow0: r0 });
    }
    return index;
  }

  /** Keys indexed (build + appended). */
  get keyCount(): number {
    return this.count;
  }

  /** GPU memory held by the index. */
  get bytes(): number {
    return this.centroids.size + this.thr.size + this.lists.size + this.counts.size + this.centroidKeys.bytes;
  }

  /**
   * Points the index at its keys' current binding (the model uploads its block table and packs
   * its head rows anew every step); the keys themselves must be the same.
   */
  rebind(keys: KeySource): void {
    this.alive();
    if (keys.headDim !== this.keys.headDim || keys.dtype !== this.keys.dtype) throw new Error('key index: rebind to keys of another head dim or type');
    this.keys = keys;
  }

  /** Records the indexing of keys [keyCount, newCount), which the caller has stored in the key source. */
  extend(step: Step, newCount: number): void {
    this.alive();
    if (!Number.isInteger(newCount) || newCount < this.count) throw new Error(`key index: cannot shrink from ${this.count} to ${newCount} keys`);
    if (newCount > this.capacity) throw new Error(`key index: ${newCount} keys exceed its capacity of ${this.capacity}; rebuild it larger`);
    if (newCount === this.count) return;
    annAppend(step, { ...this.layout(), centroids: this.centroids, thr: this.thr, keys: this.keys, first: this.count, n: newCount - this.count });
    this.count = newCount;
  }

  /** Records a search of `count` queries for their k best keys. */
  search(step: Step, s: SearchArgs): SearchResult {
    this.alive();
    if (!Number.isInteger(s.k) || s.k < 1) throw new Error(`key index: top-k must be a positive integer, got ${s.k}`);
    if (s.k > this.count) throw new Error(`key index: top-k ${s.k} exceeds the ${this.count} keys indexed`);
    if (!Number.isInteger(s.nprobe) || s.nprobe < 1 || s.nprobe > this.clusters) throw new Error(`key index: nprobe must be 1 to ${this.clusters}, got ${s.nprobe}`);
    const b = s.count;
    const words = Math.ceil(this.count / 32);
    const seen = step.scratch((b * words + b) * 4, 'ann seen');
    annFill(step, seen, b * words + b);
    const centroidScores = step.scratch(b * this.clusters * 4, 'ann centroid scores');
    annScores(step, { a: s.queries, rows: b, keys: this.centroidKeys.source, n: this.clusters, out: centroidScores });
    const probes = step.scratch(b * s.nprobe * 4, 'ann probes');
    // per-row counts and thresholds of the two top-k selections: not needed here
    const [count, thr] = [step.scratch(b * 4), step.scratch(b * 4)];
    annTopK(step, { scores: centroidScores, rows: b, cols: this.clusters, k: s.nprobe, outIds: probes, outScores: step.scratch(b * s.nprobe * 4), count, thr });
    const layout = this.layout();
    const slots = scanSlots({ nprobe: s.nprobe, cap: this.cap, overSpan: this.count - this.buildCount });
    const candScores = step.scratch(b * slots * 4, 'ann candidate scores');
    const candIds = step.scratch(b * slots * 4, 'ann candidate ids');
    annScan(step, { ...layout, queries: s.queries, queryCount: b, keys: this.keys, probes, nprobe: s.nprobe, overSpan: this.count - this.buildCount, seen, words, candScores, candIds });
    const ids = step.scratch(b * s.k * 4, 'ann ids');
    const scores = step.scratch(b * s.k * 4, 'ann scores');
    annTopK(step, { scores: candScores, ids: candIds, rows: b, cols: slots, k: s.k, outIds: ids, outScores: scores, count, thr });
    return { ids, scores, touched: seen, touchedOffset: b * words * 4 };
  }

  /** Reads the index back (tests, and a handover that ships it): centroids, thresholds, each list's ids and the overflow list. */
  async snapshot(gpu: Gpu): Promise<IndexSnapshot> {
    this.alive();
    const d = this.keys.headDim;
    const [centroids, thr, lists, counts] = await Promise.all([
      gpu.readF32(this.centroids, this.clusters * d),
      gpu.readF32(this.thr, this.clusters),
      gpu.read(this.lists).then((b) => new Int32Array(b)),
      gpu.readU32(this.counts, this.clusters + 1),
    ]);
    const listIds = Array.from({ length: this.clusters }, (_, j) => Array.from(lists.subarray(j * this.cap, j * this.cap + Math.min(counts[j], this.cap))));
    const over = this.clusters * this.cap;
    return { centroids, thr, lists: listIds, overflow: Array.from(lists.subarray(over, over + Math.min(counts[this.clusters], this.capacity - this.buildCount))) };
  }

  /** Frees the index's GPU memory (with its sequence). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const b of [this.centroids, this.thr, this.lists, this.counts]) b.destroy();
    this.centroidKeys.destroy();
  }

  private layout() {
    return { lists: this.lists, counts: this.counts, clusters: this.clusters, cap: this.cap, overCap: this.capacity - this.buildCount };
  }

  private alive(): void {
    if (this.destroyed) throw new Error('key index used after destroy()');
  }
}

const bufferOf = (b: Binding): GPUBuffer => ('buffer' in b ? b.buffer : b);
const offsetOf = (b: Binding): number => ('buffer' in b ? (b.offset ?? 0) : 0);

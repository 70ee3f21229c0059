/**
 * The key index's kernels (src/ann/ puts them together): scores against keys read in the paged KV
 * layout, top-k per row, spherical k-means over build queries, the scan of probed lists, appends,
 * and a fill. Each has a float64 CPU reference with the kernel's rules.
 */
import type { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';

/**
 * The keys of one head row, read as attention reads them (kernels/kv_cache.ts): key s lives in
 * pool block table[row * tableStride + s / blockSize] at offset s % blockSize.
 */
export interface KeySource {
  pool: Binding;
  table: Binding;
  tableStride: number;
  row: number;
  blockSize: number;
  headDim: number;
  dtype: 'f32' | 'f16';
}

/** Keys on the CPU in the layout of a KeySource, for references: flat rows [n, headDim]. */
export type KeyRows = { data: ArrayLike<number>; dim: number };

const keyConstants = (k: KeySource) => ({ HEAD_DIM: k.headDim, BLOCK_SIZE: k.blockSize, KV_F16: k.dtype === 'f16' ? 1 : 0 });

/** Throws unless the kernels can read rows of `d` values of this type. */
export function checkHeadDim(d: number, dtype: 'f32' | 'f16'): void {
  if (!Number.isInteger(d) || d < 4 || d % (dtype === 'f16' ? 8 : 4) !== 0 || d > 1024) {
    throw new Error(`key index: head dim ${d} must be a multiple of ${dtype === 'f16' ? 8 : 4} in [4, 1024]`);
  }
}

const dot = (a: ArrayLike<number>, ai: number, b: ArrayLike<number>, bi: number, d: number) => {
  let s = 0;
  for (let j = 0; j < d; j++) s += a[ai + j] * b[bi + j];
  return s;
};

// --- scores ----------------------------------------------------------------------------------

export interface ScoresArgs {
  /** f32 [>= a_row0 + rows, headDim] */
  a: Binding;
  aRow0?: number;
  rows: number;
  keys: KeySource;
  first?: number;
  n: number;
  /** f32: row r at r * outStride */
  out: Binding;
  outStride?: number;
}

/** out[r, i] = a[aRow0 + r] · key[first + i]. */
export function annScores(step: Step, x: ScoresArgs): void {
  checkHeadDim(x.keys.headDim, x.keys.dtype);
  const [gx, gy] = grid1d(step.gpu, Math.ceil(x.n / 64));
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_scores', 'main', keyConstants(x.keys)),
    params: new Params().u32(x.keys.tableStride).u32(x.keys.row).u32(x.first ?? 0).u32(x.n).u32(x.rows).u32(x.aRow0 ?? 0).u32(x.outStride ?? x.n),
    buffers: [x.a, x.keys.pool, x.keys.table, x.out],
    workgroups: [gx, gy, Math.ceil(x.rows / 4)],
  });
}

export function annScoresRef(a: ArrayLike<number>, rows: number, keys: KeyRows, first: number, n: number): Float64Array {
  const out = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) for (let i = 0; i < n; i++) out[r * n + i] = dot(a, r * keys.dim, keys.data, (first + i) * keys.dim, keys.dim);
  return out;
}

// --- top-k ------------------------------------------------------------------------------------

export interface TopKArgs {
  /** f32 [rows, inStride]: the first `cols` of each row are candidates; non-finite ones are not */
  scores: Binding;
  /** i32 [rows, inStride]: the id of each candidate (negative: not a candidate); default: its column */
  ids?: Binding;
  rows: number;
  cols: number;
  inStride?: number;
  k: number;
  /** outputs of row r go to row outRow0 + r: ids (i32) and scores (f32) [*, outStride], count (u32) and thr (f32) [*] */
  outIds: Binding;
  outScores: Binding;
  count: Binding;
  thr: Binding;
  outStride?: number;
  outRow0?: number;
}

/** The lowest f32, which top-k writes for "no score" (a constant -inf is not valid WGSL). */
export const LOWEST = -3.4028234663852886e38;

function topKWorkgroupSize(gpu: Gpu): number {
  return Math.min(256, gpu.limits.maxComputeInvocationsPerWorkgroup, gpu.limits.maxComputeWorkgroupSizeX);
}

/**
 * The k largest finite scores of each row, in no particular order, with their ids; -1 / LOWEST
 * where a row has fewer; count = how many; thr = the k-th score (LOWEST when fewer than k). Among
 * candidates equal to the k-th score, which ones are kept is unspecified.
 */
export function annTopK(step: Step, x: TopKArgs): void {
  if (x.k < 1) throw new Error(`top-k: k must be >= 1, got ${x.k}`);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_topk', 'main', { WG: topKWorkgroupSize(step.gpu), USE_IDS: x.ids ? 1 : 0 }),
    params: new Params().u32(x.rows).u32(x.cols).u32(x.inStride ?? x.cols).u32(x.k).u32(x.outStride ?? x.k).u32(x.outRow0 ?? 0),
    // without ids the scores stand in for the (unread) ids binding
    buffers: [x.scores, x.ids ?? x.scores, x.outIds, x.outScores, x.count, x.thr],
    workgroups: grid1d(step.gpu, x.rows),
  });
}

/** Reference: per row, the ids of the k largest finite scores, best first (ties: lower column first), and the k-th score. */
export function annTopKRef(scores: ArrayLike<number>, rows: number, cols: number, k: number, ids?: ArrayLike<number>): { ids: Int32Array[]; thr: number[] } {
  const out: Int32Array[] = [];
  const thr: number[] = [];
  for (let r = 0; r < rows; r++) {
    const cand: number[] = [];
    for (let c = 0; c < cols; c++) if (Number.isFinite(scores[r * cols + c])) cand.push(c);
    cand.sort((a, b) => scores[r * cols + b] - scores[r * cols + a] || a - b);
    const top = Int32Array.from({ length: k }, (_, t) => (t < cand.length ? (ids ? ids[r * cols + cand[t]] : cand[t]) : -1));
    out.push(top);
    thr.push(cand.length > k ? scores[r * cols + cand[k - 1]] : LOWEST);
  }
  return { ids: out, thr };
}

// --- fill -------------------------------------------------------------------------------------

/** buf[0, n) = value (u32 words). */
export function annFill(step: Step, buf: Binding, n: number, value = 0): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_fill'),
    params: new Params().u32(n).u32(value),
    buffers: [buf],
    workgroups: grid1d(step.gpu, Math.ceil(n / 64)),
  });
}

// --- k-means ----------------------------------------------------------------------------------

export interface KmeansArgs {
  /** f32 [points, headDim], normalised in place */
  points: Binding;
  pointCount: number;
  /** f32 [clusters, headDim] */
  centroids: Binding;
  clusters: number;
  /** u32 [points] scratch */
  assign: Binding;
  headDim: number;
  iterations: number;
}

/** Spherical k-means: points normalised, centroids started at evenly spaced points, then iterations of assign and update. */
export function annKmeans(step: Step, x: KmeansArgs): void {
  checkHeadDim(x.headDim, 'f32');
  if (x.clusters < 1 || x.clusters > x.pointCount) throw new Error(`k-means: ${x.clusters} clusters need 1 to ${x.pointCount} points`);
  const get = (entry: string) => step.gpu.pipelines.get('ann_kmeans', entry, { HEAD_DIM: x.headDim, WG: 64 });
  const params = new Params().u32(x.pointCount).u32(x.clusters);
  const perPoint = grid1d(step.gpu, Math.ceil(x.pointCount / 64));
  step.dispatch({ pipeline: get('normalize_rows'), params, buffers: [x.points], workgroups: perPoint });
  step.dispatch({ pipeline: get('init'), params, buffers: [x.points, x.centroids], workgroups: grid1d(step.gpu, Math.ceil(x.clusters / 64)) });
  for (let it = 0; it < x.iterations; it++) {
    step.dispatch({ pipeline: get('assign'), params, buffers: [x.points, x.centroids, x.assign], workgroups: perPoint });
    step.dispatch({ pipeline: get('update'), params, buffers: [x.points, x.centroids, x.assign], workgroups: grid1d(step.gpu, x.clusters) });
  }
}

/** Index of the largest value (ties: the lowest index), as the kernels break them. */
function argmax(n: number, f: (j: number) => number): number {
  let best = 0;
  let bestV = -Infinity;
  for (let j = 0; j < n; j++) {
    const v = f(j);
    if (v > bestV) [best, bestV] = [j, v];
  }
  return best;
}

/** Reference of annKmeans (float64). */
export function annKmeansRef(points: ArrayLike<number>, m: number, d: number, clusters: number, iterations: number): Float64Array {
  const q = Float64Array.from(points as ArrayLike<number>);
  for (let i = 0; i < m; i++) {
    const n = Math.sqrt(dot(q, i * d, q, i * d, d));
    if (n > 0) for (let j = 0; j < d; j++) q[i * d + j] /= n;
  }
  const c = new Float64Array(clusters * d);
  for (let j = 0; j < clusters; j++) {
    const i = Math.floor((j * m) / clusters);
    c.set(q.subarray(i * d, (i + 1) * d), j * d);
  }
  for (let it = 0; it < iterations; it++) {
    const a = Int32Array.from({ length: m }, (_, i) => argmax(clusters, (j) => dot(c, j * d, q, i * d, d)));
    const sum = new Float64Array(clusters * d);
    for (let i = 0; i < m; i++) for (let j = 0; j < d; j++) sum[a[i] * d + j] += q[i * d + j];
    for (let j = 0; j < clusters; j++) {
      const n = Math.sqrt(dot(sum, j * d, sum, j * d, d));
      if (n > 0) for (let t = 0; t < d; t++) c[j * d + t] = sum[j * d + t] / n;
    }
  }
  return c;
}

// --- list scan --------------------------------------------------------------------------------

/** The lists layout shared by scan and append: [clusters, cap] ids, then the overflow list (overCap). */
export interface ListsLayout {
  /** i32 [clusters * cap + overCap] */
  lists: Binding;
  /** u32 [clusters + 1]: entries given to each list (may exceed cap), then the overflow list's */
  counts: Binding;
  clusters: number;
  cap: number;
  overCap: number;
}

export interface ScanArgs extends ListsLayout {
  /** f32 [queries, headDim] */
  queries: Binding;
  queryCount: number;
  keys: KeySource;
  /** i32 [queries, nprobe]: each query's probed lists (-1: none) */
  probes: Binding;
  nprobe: number;
  /** overflow slots scanned (the entries it can hold now: keys appended since the build) */
  overSpan: number;
  /** u32 [queries * words + queries], zeroed: seen bits (words = ceil(keys / 32) per query), then keys scored per query */
  seen: Binding;
  words: number;
  /** f32 / i32 [queries, nprobe * cap + overSpan] */
  candScores: Binding;
  candIds: Binding;
}

export const scanSlots = (x: { nprobe: number; cap: number; overSpan: number }) => x.nprobe * x.cap + x.overSpan;

/** Scores each probed list's keys once per query (see shaders/ann_scan.wgsl). */
export function annScan(step: Step, x: ScanArgs): void {
  checkHeadDim(x.keys.headDim, x.keys.dtype);
  const maxY = step.gpu.limits.maxComputeWorkgroupsPerDimension;
  if (x.queryCount > maxY) throw new Error(`key index scan: at most ${maxY} queries per dispatch, got ${x.queryCount}`);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_scan', 'main', keyConstants(x.keys)),
    params: new Params().u32(x.keys.tableStride).u32(x.keys.row).u32(x.clusters).u32(x.cap).u32(x.overSpan).u32(x.nprobe).u32(x.words).u32(x.queryCount),
    buffers: [x.queries, x.keys.pool, x.keys.table, x.probes, x.lists, x.counts, x.seen, x.candScores, x.candIds],
    workgroups: [x.nprobe + 1, x.queryCount],
  });
}

/** Lists on the CPU: each list's ids (its first min(count, cap) entries) and the overflow list. */
export interface ListsRef {
  lists: number[][];
  overflow: number[];
}

/** Reference of annScan + annTopK: the scanned lists' distinct keys scored, the k best (-1 padded), and how many were scored. */
export function annSearchListsRef(l: ListsRef, keys: KeyRows, q: ArrayLike<number>, probes: readonly number[], k: number): { ids: Int32Array; touched: number } {
  const cand = new Set<number>();
  for (const j of probes) if (j >= 0) for (const id of l.lists[j]) cand.add(id);
  for (const id of l.overflow) cand.add(id);
  const ids = [...cand];
  const s = ids.map((id) => dot(q, 0, keys.data, id * keys.dim, keys.dim));
  const order = Array.from(s.keys()).sort((a, b) => s[b] - s[a] || ids[a] - ids[b]);
  return { ids: Int32Array.from({ length: k }, (_, t) => (t < order.length ? ids[order[t]] : -1)), touched: ids.length };
}

// --- append -----------------------------------------------------------------------------------

export interface AppendArgs extends ListsLayout {
  /** f32 [clusters, headDim] */
  centroids: Binding;
  /** f32 [clusters]: each list's threshold */
  thr: Binding;
  keys: KeySource;
  first: number;
  n: number;
}

/** Appends keys [first, first + n) to every list whose threshold they reach (see shaders/ann_append.wgsl). */
export function annAppend(step: Step, x: AppendArgs): void {
  checkHeadDim(x.keys.headDim, x.keys.dtype);
  step.dispatch({
    pipeline: step.gpu.pipelines.get('ann_append', 'main', keyConstants(x.keys)),
    params: new Params().u32(x.keys.tableStride).u32(x.keys.row).u32(x.first).u32(x.n).u32(x.clusters).u32(x.cap).u32(x.overCap),
    buffers: [x.centroids, x.keys.pool, x.keys.table, x.thr, x.lists, x.counts],
    workgroups: grid1d(step.gpu, Math.ceil(x.n / 64)),
  });
}

/** Reference of annAppend on CPU lists (list order within a list is the kernel's to choose). */
export function annAppendRef(l: ListsRef, cap: number, centroids: ArrayLike<number>, thr: ArrayLike<number>, keys: KeyRows, first: number, n: number): void {
  for (let id = first; id < first + n; id++) {
    let overflow = false;
    l.lists.forEach((list, j) => {
      if (dot(centroids, j * keys.dim, keys.data, id * keys.dim, keys.dim) >= thr[j]) {
        if (list.length < cap) list.push(id);
        else overflow = true;
      }
    });
    if (overflow) l.overflow.push(id);
  }
}

/**
 * `wgserve bench ann`: the key index (src/ann/key_index.ts) alone on key/query sets where the
 * truth is known, beside a CPU ANN library over the keys alone (hnswlib-node, inner-product HNSW)
 * and an exact GPU scan. Per setting: recall of the exact top-k, recall of the attention mass,
 * the fraction of keys whose scores were computed, the attention output error, build time and
 * search time per query. Truth and quality are computed in float64 on the CPU (src/ann/metrics.ts);
 * the values for the output error are seeded normal vectors (a set has no values of its own).
 */
import type { TopLevelSpec } from 'vega-lite';
import { annScores, annTopK } from '../kernels/ann.ts';
import { flatKeySource } from '../src/ann/flat_keys.ts';
import { KeyIndex, type KeyIndexOptions } from '../src/ann/key_index.ts';
import { type QueryTruth, queryQuality, queryTruth } from '../src/ann/metrics.ts';
import type { AnnSet, Vectors } from '../src/ann/sets.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import type { Step } from '../src/gpu/step.ts';
import { normalArray } from '../src/util/rng.ts';

export interface AnnBenchOptions {
  set: AnnSet;
  topK: number;
  /** clusters and iterations (the list length is swept) */
  index: Omit<KeyIndexOptions, 'listFraction' | 'listLength'>;
  /** key-index builds: keys per list as a fraction of the keys */
  listFractions: number[];
  /** key-index settings per build: lists scanned per query */
  nprobes: number[];
  /** hnswlib-node search breadths (empty: no CPU peer) */
  hnswEfs: number[];
  /** queries per GPU step */
  batch: number;
  log: (line: string) => void;
}

export interface AnnRow {
  method: 'key index' | 'hnswlib (CPU, keys only)' | 'exact scan (GPU)';
  setting: string;
  recall: number;
  massRecall: number;
  /** keys whose scores were computed, over all keys (mean over queries) */
  keysScored: number;
  /** all scores computed (keys and, for the key index, centroids) over the keys */
  scoresComputed: number;
  outputError: number;
  outputErrorTopK: number;
  buildSeconds: number;
  searchSecondsPerQuery: number;
  /** true when keysScored is a lower bound (hnswlib-node does not report its distance count) */
  keysScoredLowerBound?: boolean;
}

export interface AnnBenchReport {
  device: string;
  isSoftware: boolean;
  /** topMass: mean softmax mass of the exact top-k keys */
  set: { name: string; keys: number; dim: number; buildQueries: number; queries: number; topMass: number };
  topK: number;
  indexes: { listFraction: number; clusters: number; listLength: number; bytes: number; buildSeconds: number }[];
  rows: AnnRow[];
  /** per searched query of the first key-index setting: ids found (-1 padded, best first) and keys scored */
  first: { ids: Int32Array; touched: Int32Array };
}

/** The benchmark's goal (issue 15): attention-mass recall >= 0.95 while scoring <= 3% of keys. */
const GOAL = { massRecall: 0.95, keysScored: 0.03 };

interface Found {
  ids: Int32Array;
  touched: Int32Array;
  seconds: number;
}

function mean<T>(xs: T[], f: (x: T) => number): number {
  return xs.reduce((s, x) => s + f(x), 0) / xs.length;
}

/** Quality of one method's ids against the truths. */
function quality(found: Found, truths: QueryTruth[], values: Vectors, k: number, n: number) {
  const per = truths.map((t, i) => queryQuality(t, values, found.ids.subarray(i * k, (i + 1) * k)));
  return {
    recall: mean(per, (q) => q.recall),
    massRecall: mean(per, (q) => q.massRecall),
    outputError: mean(per, (q) => q.outputError),
    outputErrorTopK: mean(per, (q) => q.outputErrorTopK),
    keysScored: mean(Array.from(found.touched), (t) => t) / n,
    searchSecondsPerQuery: found.seconds / truths.length,
  };
}

/** Reorders each query's k ids best first by their scores (the GPU returns them unordered). */
function bestFirst(ids: Int32Array, scores: Float32Array, k: number): Int32Array {
  const out = new Int32Array(ids.length);
  for (let r = 0; r < ids.length / k; r++) {
    const order = Array.from({ length: k }, (_, t) => r * k + t).sort((a, b) => (ids[a] < 0 ? 1 : 0) - (ids[b] < 0 ? 1 : 0) || scores[b] - scores[a] || ids[a] - ids[b]);
    order.forEach((src, t) => (out[r * k + t] = ids[src]));
  }
  return out;
}

/**
 * Runs `record` over the queries in batches (one step each, results read back) after one
 * untimed warm-up batch (pipeline compilation); returns the ids, keys scored and the wall time.
 */
async function searchAll(gpu: Gpu, queries: Vectors, k: number, batch: number, record: (step: Step, q: GPUBuffer, count: number) => { ids: GPUBuffer; scores: GPUBuffer; touched: (count: number) => Promise<Int32Array> | Int32Array }): Promise<Found> {
  const m = queries.rows;
  const d = queries.dim;
  const upload = gpu.upload(queries.data);
  const run = async (start: number, count: number) => {
    const step = gpu.step();
    const q = step.scratch(count * d * 4);
    step.copy(upload, start * d * 4, q, 0, count * d * 4);
    const r = record(step, q, count);
    const reads = [step.readback(r.ids, 0, count * k * 4), step.readback(r.scores, 0, count * k * 4)];
    const touched = r.touched(count);
    await step.submit();
    const [ids, scores] = await Promise.all(reads);
    return { ids: bestFirst(new Int32Array(ids), new Float32Array(scores), k), touched: await touched };
  };
  try {
    await run(0, Math.min(batch, m));
    const ids = new Int32Array(m * k);
    const touched = new Int32Array(m);
    const t0 = performance.now();
    for (let s = 0; s < m; s += batch) {
      const r = await run(s, Math.min(batch, m - s));
      ids.set(r.ids, s * k);
      touched.set(r.touched, s);
    }
    return { ids, touched, seconds: (performance.now() - t0) / 1000 };
  } finally {
    upload.destroy();
  }
}

export async function runAnnBench(gpu: Gpu, o: AnnBenchOptions): Promise<AnnBenchReport> {
  const { keys, buildQueries, queries } = o.set;
  const n = keys.rows;
  const d = keys.dim;
  const k = o.topK;
  if (queries.dim !== d || buildQueries.dim !== d) throw new Error(`keys, queries and build queries must share one dimension (${d}, ${queries.dim}, ${buildQueries.dim})`);
  if (!Number.isInteger(k) || k < 1) throw new Error(`--top-k must be a positive integer, got ${k}`);
  if (k > n) throw new Error(`--top-k ${k} is larger than the number of keys (${n})`);
  const values: Vectors = { data: normalArray(n * d, 0x5eed, 1), rows: n, dim: d };

  o.log(`truth: exact scores of ${queries.rows} queries over ${n} keys (float64, CPU)`);
  const truths = Array.from({ length: queries.rows }, (_, i) => queryTruth(keys, values, queries.data.subarray(i * d, (i + 1) * d), k));
  const rows: AnnRow[] = [];
  const keyBuf = gpu.upload(keys.data);
  const flat = flatKeySource(gpu, keyBuf, n, d);
  const build = gpu.upload(buildQueries.data);
  try {
    // the key index: one build per list length (after an untimed one that compiles the pipelines), then each nprobe
    const buildIndex = async (count: number, listFraction: number) => {
      const t0 = performance.now();
      const step = gpu.step();
      const index = KeyIndex.build(step, { keys: flat.source, count, buildQueries: build, buildCount: buildQueries.rows, capacity: count, options: { ...o.index, listFraction } });
      await step.submit();
      return { index, seconds: (performance.now() - t0) / 1000 };
    };
    (await buildIndex(Math.min(n, 256), 1)).index.destroy();
    const indexes: AnnBenchReport['indexes'] = [];
    let first: AnnBenchReport['first'] | undefined;
    for (const listFraction of o.listFractions) {
      const { index, seconds: buildSeconds } = await buildIndex(n, listFraction);
      indexes.push({ listFraction, clusters: index.clusters, listLength: index.listLength, bytes: index.bytes, buildSeconds });
      o.log(`key index: ${index.clusters} centroids, lists of ${index.listLength} keys, ${(index.bytes / 1024).toFixed(0)} KiB, built in ${buildSeconds.toFixed(2)} s`);
      try {
        for (const nprobe of o.nprobes) {
          const found = await searchAll(gpu, queries, k, o.batch, (s, q, count) => {
            const r = index.search(s, { queries: q, count, k, nprobe });
            const touched = s.readback(r.touched, r.touchedOffset, count * 4);
            return { ...r, touched: async () => new Int32Array(await touched) };
          });
          first ??= { ids: found.ids, touched: found.touched };
          const qy = quality(found, truths, values, k, n);
          rows.push({ method: 'key index', setting: `L=${index.listLength} nprobe=${nprobe}`, ...qy, scoresComputed: qy.keysScored + index.clusters / n, buildSeconds });
          o.log(`  nprobe ${nprobe}: recall ${qy.recall.toFixed(3)}, mass recall ${qy.massRecall.toFixed(4)}, keys scored ${(100 * qy.keysScored).toFixed(2)}%, ${(qy.searchSecondsPerQuery * 1e3).toFixed(2)} ms/query`);
        }
      } finally {
        index.destroy();
      }
    }

    // exact scan on the GPU: every key scored, then top-k
    const exact = await searchAll(gpu, queries, k, o.batch, (s, q, count) => {
      const scores = s.scratch(count * n * 4);
      annScores(s, { a: q, rows: count, keys: flat.source, n, out: scores });
      const [ids, top, c, t] = [s.scratch(count * k * 4), s.scratch(count * k * 4), s.scratch(count * 4), s.scratch(count * 4)];
      annTopK(s, { scores, rows: count, cols: n, k, outIds: ids, outScores: top, count: c, thr: t });
      return { ids, scores: top, touched: (m) => new Int32Array(m).fill(n) };
    });
    const qe = quality(exact, truths, values, k, n);
    rows.push({ method: 'exact scan (GPU)', setting: 'all keys', ...qe, scoresComputed: 1, buildSeconds: 0 });
    o.log(`exact scan: recall ${qe.recall.toFixed(3)}, ${(qe.searchSecondsPerQuery * 1e3).toFixed(2)} ms/query`);
    if (o.hnswEfs.length > 0) rows.push(...hnswRows(await loadHnswlib(), o, truths, values));
    return {
      device: gpu.adapter.description,
      isSoftware: gpu.adapter.isSoftware,
      set: { name: o.set.name, keys: n, dim: d, buildQueries: buildQueries.rows, queries: queries.rows, topMass: mean(truths, (t) => t.topMass) },
      topK: k,
      indexes,
      rows,
      first: first!,
    };
  } finally {
    build.destroy();
    flat.destroy();
    keyBuf.destroy();
  }
}

type Hnswlib = typeof import('hnswlib-node');

/** hnswlib-node: an optional dependency (a native add-on built at install), so a machine without a C++ toolchain still installs. */
async function loadHnswlib(): Promise<Hnswlib> {
  try {
    return (await import('hnswlib-node')).default as unknown as Hnswlib;
  } catch (err) {
    throw new Error(`the hnswlib peer needs the optional dependency hnswlib-node, which did not install here (its native build needs python3, make and a C++ compiler): ${(err as Error).message}. Run with --no-hnsw to leave the peer out.`);
  }
}

/** hnswlib-node over the keys alone (inner-product space, M 16, efConstruction 200), one row per search breadth ef. */
function hnswRows(hnswlib: Hnswlib, o: AnnBenchOptions, truths: QueryTruth[], values: Vectors): AnnRow[] {
  const { keys, queries } = o.set;
  const [n, d, k, m] = [keys.rows, keys.dim, o.topK, queries.rows];
  const t0 = performance.now();
  const h = new hnswlib.HierarchicalNSW('ip', d);
  h.initIndex({ maxElements: n, m: 16, efConstruction: 200, randomSeed: 1 });
  for (let i = 0; i < n; i++) h.addPoint(Array.from(keys.data.subarray(i * d, (i + 1) * d)), i);
  const buildSeconds = (performance.now() - t0) / 1000;
  o.log(`hnswlib: built in ${buildSeconds.toFixed(1)} s`);
  const qs = Array.from({ length: m }, (_, i) => Array.from(queries.data.subarray(i * d, (i + 1) * d)));
  return o.hnswEfs.map((ef) => {
    h.setEf(Math.max(ef, k));
    const ids = new Int32Array(m * k).fill(-1);
    const t1 = performance.now();
    qs.forEach((q, i) => ids.set(h.searchKnn(q, k).neighbors.slice(0, k), i * k));
    const seconds = (performance.now() - t1) / 1000;
    // keys scored: hnswlib-node does not report its distance count; the filter sees each key the
    // search admitted as a candidate, a lower bound (counted in a second, untimed pass)
    const touched = new Int32Array(m);
    qs.forEach((q, i) => h.searchKnn(q, k, () => (touched[i]++, true)));
    const qy = quality({ ids, touched, seconds }, truths, values, k, n);
    o.log(`  hnswlib ef ${ef}: recall ${qy.recall.toFixed(3)}, mass recall ${qy.massRecall.toFixed(4)}, keys scored >= ${(100 * qy.keysScored).toFixed(2)}%, ${(qy.searchSecondsPerQuery * 1e3).toFixed(2)} ms/query`);
    return { method: 'hnswlib (CPU, keys only)', setting: `ef=${Math.max(ef, k)}`, ...qy, scoresComputed: qy.keysScored, buildSeconds, keysScoredLowerBound: true };
  });
}

const pct = (x: number) => `${(100 * x).toFixed(x < 0.01 ? 3 : 2)}%`;

/** The first key-index row that meets the goal, else the one with the best mass recall. */
function goalRow(r: AnnBenchReport): { row: AnnRow; met: boolean } {
  const own = r.rows.filter((x) => x.method === 'key index');
  const met = own.find((x) => x.massRecall >= GOAL.massRecall && x.keysScored <= GOAL.keysScored);
  return met ? { row: met, met: true } : { row: own.reduce((a, b) => (b.massRecall > a.massRecall ? b : a)), met: false };
}

export function annBenchMarkdown(r: AnnBenchReport): string {
  const { row: goal, met } = goalRow(r);
  const lines = [
    `Key index on ${r.set.name}: ${r.set.keys} keys, D = ${r.set.dim}, ${r.set.buildQueries} build queries, ${r.set.queries} searched queries, top-k ${r.topK} (the exact top-${r.topK} hold ${pct(r.set.topMass)} of the attention mass); ${r.device}${r.isSoftware ? ' (software device)' : ''}.`,
    '',
    ...r.indexes.map((x) => `- Index: ${x.clusters} centroids, lists of L = ${x.listLength} keys: ${(x.bytes / 1024).toFixed(0)} KiB (${(x.bytes / r.set.keys).toFixed(2)} bytes per key indexed), built in ${x.buildSeconds.toFixed(2)} s.`),
    '',
    '| method | setting | recall@k | mass recall | keys scored | all scores | output error vs exact top-k | vs all keys | build s | search ms / query |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.method} | ${x.setting} | ${x.recall.toFixed(3)} | ${x.massRecall.toFixed(4)} | ${x.keysScoredLowerBound ? '>= ' : ''}${pct(x.keysScored)} | ${x.keysScoredLowerBound ? '>= ' : ''}${pct(x.scoresComputed)} | ${x.outputErrorTopK.toExponential(2)} | ${x.outputError.toExponential(2)} | ${x.buildSeconds.toFixed(2)} | ${(x.searchSecondsPerQuery * 1e3).toFixed(3)} |`,
    ),
    '',
    `Goal (mass recall >= ${GOAL.massRecall} with <= ${pct(GOAL.keysScored)} of keys scored): ${met ? `met by the key index at ${goal.setting} (${goal.massRecall.toFixed(4)}, ${pct(goal.keysScored)})` : `not met; best key-index setting ${goal.setting}: ${goal.massRecall.toFixed(4)} at ${pct(goal.keysScored)}`}.`,
    '',
    `At equal recall (mass recall >= ${goal.massRecall.toFixed(4)}, the key index at ${goal.setting}):`,
    '',
    '| method | setting | keys scored | search ms / query |',
    '|---|---|---:|---:|',
    `| key index | ${goal.setting} | ${pct(goal.keysScored)} | ${(goal.searchSecondsPerQuery * 1e3).toFixed(3)} |`,
    ...['hnswlib (CPU, keys only)', 'exact scan (GPU)'].map((method) => {
      const peer = r.rows.filter((x) => x.method === method && x.massRecall >= goal.massRecall).sort((a, b) => a.keysScored - b.keysScored)[0];
      if (peer) return `| ${method} | ${peer.setting} | ${peer.keysScoredLowerBound ? '>= ' : ''}${pct(peer.keysScored)} | ${(peer.searchSecondsPerQuery * 1e3).toFixed(3)} |`;
      return r.rows.some((x) => x.method === method) ? `| ${method} | none of its settings reached it | | |` : '';
    }),
    '',
    '"keys scored": keys whose score q·k was computed, over all keys (mean over queries); "all scores" adds the key index\'s centroid scores. hnswlib-node does not report its distance count: its figure counts the keys its search admitted as candidates (a lower bound). Output error: |attention over the found keys - reference| / |reference|, softmax at 1/sqrt(D), seeded normal values; the reference is attention over the exact top-k keys (the search\'s own error) or over all keys (with the error of keeping only k keys, which the exact scan\'s row shows alone).',
    '',
  ];
  return lines.filter((l, i) => l !== '' || lines[i - 1] !== '').join('\n');
}

/** Mass recall and top-k recall against keys scored (log scale), one line per method. */
export function annPlotSpec(r: AnnBenchReport): TopLevelSpec {
  const values = r.rows.map((x) => ({ method: x.method, setting: x.setting, keys: 100 * x.keysScored, massRecall: x.massRecall, recall: x.recall }));
  const panel = (field: string, title: string) => ({
    width: 300,
    height: 220,
    mark: { type: 'line' as const, point: true },
    encoding: {
      x: { field: 'keys', type: 'quantitative' as const, title: 'keys scored (%)', scale: { type: 'log' as const } },
      y: { field, type: 'quantitative' as const, title, scale: { zero: false } },
      color: { field: 'method', type: 'nominal' as const, title: 'method' },
      tooltip: [{ field: 'setting' }],
    },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `key index: ${r.set.keys} keys, D ${r.set.dim}, top-${r.topK} (${r.isSoftware ? 'software device' : r.device})`,
    background: 'white',
    data: { values },
    hconcat: [panel('massRecall', 'attention-mass recall'), panel('recall', `recall@${r.topK}`)],
  } as TopLevelSpec;
}

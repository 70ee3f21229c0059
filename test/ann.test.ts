import { describe, expect, it } from 'vitest';
import { type KeyRows, type KeySource, LOWEST, type ListsRef, annAppendRef, annSearchListsRef, annKmeans, annKmeansRef, annScores, annScoresRef, annTopK, annTopKRef } from '../kernels/ann.ts';
import { type ClusteredRef, buildClusteredRef, probesRef } from '../src/ann/clustered_ref.ts';
import { flatKeySource } from '../src/ann/flat_keys.ts';
import { KeyIndex } from '../src/ann/key_index.ts';
import { generateSet } from '../src/ann/sets.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

const F32_EPS = 2 ** -24;

/** Keys [n, d] stored in a paged pool in shuffled blocks of `blockSize`, as the KV cache stores them. */
function pagedKeys(gpu: Gpu, keys: Float32Array, n: number, d: number, blockSize: number, seed: number) {
  const blocks = Math.ceil(n / blockSize);
  const order = Array.from({ length: blocks }, (_, i) => i);
  const next = mulberry32(seed);
  for (let i = blocks - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const pool = new Float32Array(blocks * blockSize * d);
  for (let s = 0; s < n; s++) pool.set(keys.subarray(s * d, (s + 1) * d), (order[Math.floor(s / blockSize)] * blockSize + (s % blockSize)) * d);
  // head row 1 of 2: row 0's table entries are garbage the kernels must not read
  const table = new Uint32Array(2 * blocks).fill(0xdead);
  table.set(order, blocks);
  const source: KeySource = { pool: gpu.upload(pool), table: gpu.upload(table), tableStride: blocks, row: 1, blockSize, headDim: d, dtype: 'f32' };
  return source;
}

/** |f32 dot - exact| <= d * eps * sum |a_j k_j| (sequential f32 accumulation), per element. */
function dotBounds(a: Float32Array, rows: number, keys: KeyRows, n: number): Float64Array {
  const b = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++)
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0; j < keys.dim; j++) s += Math.abs(a[r * keys.dim + j] * keys.data[i * keys.dim + j]);
      b[r * n + i] = keys.dim * F32_EPS * s + 1e-30;
    }
  return b;
}

async function runTopK(gpu: Gpu, scores: Float32Array, rows: number, cols: number, k: number) {
  const step = gpu.step();
  const [ids, outScores, count, thr] = [step.scratch(rows * k * 4), step.scratch(rows * k * 4), step.scratch(rows * 4), step.scratch(rows * 4)];
  annTopK(step, { scores: step.upload(scores), rows, cols, k, outIds: ids, outScores, count, thr });
  const reads = [step.readback(ids, 0, rows * k * 4), step.readback(outScores, 0, rows * k * 4), step.readback(count, 0, rows * 4), step.readback(thr, 0, rows * 4)];
  await step.submit();
  const [i, s, c, t] = await Promise.all(reads);
  return { ids: new Int32Array(i), scores: new Float32Array(s), count: new Uint32Array(c), thr: new Float32Array(t) };
}

describe('ann kernels', () => {
  const getGpu = useGpu();

  // distinct random scores: the k best are a set the kernel must return exactly
  for (const [rows, cols, k] of [
    [1, 1, 1],
    [3, 300, 7],
    [2, 5000, 100], // several radix passes decide
    [5, 10, 20], // fewer candidates than k: all of them, padded
  ]) {
    it(`top-k rows=${rows} cols=${cols} k=${k}`, async () => {
      const scores = normalArray(rows * cols, rows * 31 + cols, 3);
      const got = await runTopK(getGpu(), scores, rows, cols, k);
      const ref = annTopKRef(scores, rows, cols, k);
      for (let r = 0; r < rows; r++) {
        const ids = got.ids.subarray(r * k, (r + 1) * k);
        expect([...ids].sort((a, b) => a - b), `row ${r} ids`).toEqual([...ref.ids[r]].sort((a, b) => a - b));
        for (let t = 0; t < k; t++) expect(got.scores[r * k + t]).toBe(ids[t] >= 0 ? scores[r * cols + ids[t]] : LOWEST);
        expect(got.count[r]).toBe(Math.min(k, cols));
        expect(got.thr[r]).toBe(Math.fround(ref.thr[r]));
      }
    });
  }

  it('top-k skips NaN and infinite scores and keeps k of many ties', async () => {
    const cols = 600;
    const scores = new Float32Array(2 * cols).fill(1.5); // row 0: all tied
    for (let c = 0; c < cols; c++) scores[cols + c] = c % 3 === 0 ? NaN : c % 3 === 1 ? Infinity : -c; // row 1: a third finite
    const got = await runTopK(getGpu(), scores, 2, cols, 250);
    const row0 = got.ids.subarray(0, 250);
    expect(new Set(row0).size).toBe(250);
    expect(Math.min(...row0)).toBeGreaterThanOrEqual(0);
    expect(got.thr[0]).toBe(1.5);
    const row1 = [...got.ids.subarray(250)];
    const ref = annTopKRef(scores.subarray(cols), 1, cols, 250).ids[0];
    expect(row1.sort((a, b) => a - b)).toEqual([...ref].sort((a, b) => a - b));
    expect(row1.filter((i) => i === -1).length).toBe(50); // 200 finite candidates for 250 places
    expect(got.count[1]).toBe(200);
    expect(got.thr[1]).toBe(LOWEST);
  });

  for (const [rows, n, d, blockSize] of [
    [1, 1, 4, 1],
    [5, 67, 8, 4], // rows not a multiple of 4, keys not of the tile
    [6, 300, 128, 16],
  ]) {
    it(`scores rows=${rows} keys=${n} D=${d} through a shuffled block table`, async () => {
      const gpu = getGpu();
      const keys = normalArray(n * d, n + d, 1);
      const a = normalArray(rows * d, rows + d, 1);
      const source = pagedKeys(gpu, keys, n, d, blockSize, 3);
      const first = n > 2 ? 2 : 0;
      const step = gpu.step();
      const out = step.scratch(rows * n * 4);
      annScores(step, { a: step.upload(a), rows, keys: source, first, n: n - first, out });
      const read = step.readback(out, 0, rows * (n - first) * 4);
      await step.submit();
      const got = new Float32Array(await read);
      const rowsRef: KeyRows = { data: keys, dim: d };
      const ref = annScoresRef(a, rows, rowsRef, first, n - first);
      const bounds = dotBounds(a, rows, { data: keys.subarray(first * d), dim: d }, n - first);
      for (let i = 0; i < ref.length; i++) expect(Math.abs(got[i] - ref[i]), `score ${i}`).toBeLessThanOrEqual(bounds[i]);
    });
  }

  it('k-means matches the float64 reference on separated clusters', async () => {
    const gpu = getGpu();
    const [m, d, clusters] = [203, 12, 5];
    // points around 7 well separated directions: every assignment has a wide margin
    const centres = normalArray(7 * d, 5, 4);
    const noise = normalArray(m * d, 6, 0.3);
    const points = Float32Array.from(noise, (v, i) => v + centres[(Math.floor(i / d) % 7) * d + (i % d)]);
    const step = gpu.step();
    const centroids = step.scratch(clusters * d * 4);
    // normalised in place: a buffer of its own (a step upload is read-only)
    const pointBuf = step.scratch(points.byteLength);
    gpu.write(pointBuf, points);
    annKmeans(step, { points: pointBuf, pointCount: m, centroids, clusters, assign: step.scratch(m * 4), headDim: d, iterations: 4 });
    const read = step.readback(centroids, 0, clusters * d * 4);
    await step.submit();
    // unit vectors from f32 sums of ~40 unit vectors and an f32 normalisation: ~1e-6; 1e-5 leaves room
    expectClose(new Float32Array(await read), annKmeansRef(points, m, d, clusters, 4), { atol: 1e-5, rtol: 0 }, 'centroids');
  });
});

describe('KeyIndex', () => {
  const getGpu = useGpu();
  const d = 32;
  const set = generateSet({ keys: 3000, dim: d, buildQueries: 300, queries: 12, seed: 7, keyClusters: 12, queryClusters: 6 });
  const shape = { clusters: 6, listLength: 120, iterations: 4 };
  const k = 20;

  async function search(gpu: Gpu, index: KeyIndex, q: Float32Array, count: number, nprobe: number) {
    const step = gpu.step();
    const r = index.search(step, { queries: step.upload(q), count, k, nprobe });
    const reads = [step.readback(r.ids, 0, count * k * 4), step.readback(r.scores, 0, count * k * 4), step.readback(r.touched, r.touchedOffset, count * 4)];
    await step.submit();
    const [ids, scores, touched] = await Promise.all(reads);
    return { ids: new Int32Array(ids), scores: new Float32Array(scores), touched: new Uint32Array(touched) };
  }

  /** The GPU's ids equal the reference's, except where two scores are within f32 rounding of the k-th. */
  function expectSameIds(got: Int32Array, ref: Int32Array, q: Float32Array, keys: Float32Array, label: string) {
    const score = (id: number) => {
      let s = 0;
      for (let j = 0; j < d; j++) s += q[j] * keys[id * d + j];
      return s;
    };
    const missing = [...ref].filter((id) => !got.includes(id)).sort((a, b) => score(a) - score(b));
    const extra = [...got].filter((id) => !ref.includes(id)).sort((a, b) => score(a) - score(b));
    expect(missing.length, `${label}: ${missing} vs ${extra}`).toBe(extra.length);
    for (let t = 0; t < missing.length; t++) expect(Math.abs(score(missing[t]) - score(extra[t])), label).toBeLessThan(1e-3);
  }

  /** Each GPU list holds the reference list's keys, except near-ties at its threshold (f32 against float64 scores). */
  function expectSameLists(got: ListsRef, ref: ClusteredRef, keys: Float32Array) {
    got.lists.forEach((list, j) => {
      const score = (id: number) => {
        let s = 0;
        for (let t = 0; t < d; t++) s += ref.centroids[j * d + t] * keys[id * d + t];
        return s;
      };
      const want = new Set(ref.lists[j]);
      expect(list.length, `list ${j} length`).toBe(ref.lists[j].length);
      for (const id of list) if (!want.has(id)) expect(Math.abs(score(id) - ref.thr[j]), `list ${j} key ${id}`).toBeLessThan(1e-4);
    });
  }

  /** After appending keys [n0, n1): every key that reaches list j's threshold is in list j, or in the overflow list when j is full; lists hold only such keys. */
  function expectAppended(got: ListsRef, ref: ClusteredRef, keys: Float32Array, n0: number, n1: number, cap: number) {
    const over = new Set(got.overflow);
    got.lists.forEach((list, j) => {
      const score = (id: number) => {
        let s = 0;
        for (let t = 0; t < d; t++) s += ref.centroids[j * d + t] * keys[id * d + t];
        return s;
      };
      const qualifying = Array.from({ length: n1 - n0 }, (_, i) => n0 + i).filter((id) => score(id) >= ref.thr[j] + 1e-4);
      expect(list.length, `list ${j} length`).toBe(Math.min(cap, ref.lists[j].length));
      const inList = new Set(list);
      for (const id of qualifying) expect(inList.has(id) || over.has(id), `key ${id} for list ${j}`).toBe(true);
      for (const id of list) if (id >= n0) expect(score(id), `list ${j} key ${id}`).toBeGreaterThan(ref.thr[j] - 1e-4);
    });
  }

  it('build, extend and search agree with the reference', async () => {
    const gpu = getGpu();
    const n0 = 2500;
    const capacity = set.keys.rows;
    const keyBuf = gpu.upload(set.keys.data);
    const flat = flatKeySource(gpu, keyBuf, capacity, d);
    const step = gpu.step();
    const index = KeyIndex.build(step, { keys: flat.source, count: n0, buildQueries: step.upload(set.buildQueries.data), buildCount: set.buildQueries.rows, capacity, options: { ...shape, slack: 0.1 } });
    await step.submit();
    const ref = buildClusteredRef({ ...set.keys, rows: n0, data: set.keys.data.subarray(0, n0 * d) }, set.buildQueries, shape);
    let snap = await index.snapshot(gpu);
    // k-means centroids: unit vectors from f32 sums and normalisation, assignments with wide margins
    expectClose(snap.centroids, ref.centroids, { atol: 1e-5, rtol: 0 }, 'centroids');
    expectClose(snap.thr, ref.thr, { atol: 1e-4, rtol: 1e-5 }, 'thresholds');
    expectSameLists(snap, ref, set.keys.data);

    // the searches over the GPU's own lists: the same ids (up to f32 near-ties) and exactly the same keys scored
    const m = set.queries.rows;
    const checkSearch = async (nprobe: number, label: string) => {
      const got = await search(gpu, index, set.queries.data, m, nprobe);
      for (let i = 0; i < m; i++) {
        const q = set.queries.data.subarray(i * d, (i + 1) * d);
        const r = annSearchListsRef(snap, set.keys, q, probesRef(snap, d, q, nprobe), k);
        expectSameIds(got.ids.subarray(i * k, (i + 1) * k), r.ids, q, set.keys.data, `${label} query ${i}`);
        expect(got.touched[i], `${label} query ${i} keys scored`).toBe(r.touched);
        for (let t = 0; t < k; t++) if (got.ids[i * k + t] < 0) expect(got.scores[i * k + t]).toBe(LOWEST);
      }
    };
    await checkSearch(1, 'nprobe 1');
    await checkSearch(3, 'nprobe 3');

    // 500 more keys: the lists' thresholds decide where they go, full lists spill to the overflow list
    const ext = gpu.step();
    index.extend(ext, capacity);
    await ext.submit();
    annAppendRef(ref, index.cap, ref.centroids, ref.thr, { data: set.keys.data, dim: d }, n0, capacity - n0);
    expect(ref.overflow.length).toBeGreaterThan(0); // the test covers the overflow list
    snap = await index.snapshot(gpu);
    expectAppended(snap, ref, set.keys.data, n0, capacity, index.cap);
    expect(snap.overflow.length).toBeGreaterThan(0);
    await checkSearch(2, 'extended');
    expect(index.bytes).toBeGreaterThanOrEqual((6 * index.cap + capacity - n0) * 4 + 6 * d * 4);
    index.destroy();
    flat.destroy();
    keyBuf.destroy();
  });

  it('refuses what it cannot do, before recording anything', async () => {
    const gpu = getGpu();
    const keyBuf = gpu.upload(set.keys.data.subarray(0, 100 * d));
    const flat = flatKeySource(gpu, keyBuf, 100, d);
    const step = gpu.step();
    const q = step.upload(set.buildQueries.data.subarray(0, 10 * d));
    expect(() => KeyIndex.build(step, { keys: flat.source, count: 0, buildQueries: q, buildCount: 10, capacity: 100 })).toThrow(/no keys/);
    expect(() => KeyIndex.build(step, { keys: flat.source, count: 100, buildQueries: q, buildCount: 10, capacity: 50 })).toThrow(/capacity/);
    expect(() => KeyIndex.build(step, { keys: { ...flat.source, headDim: 6 }, count: 100, buildQueries: q, buildCount: 10, capacity: 100 })).toThrow(/head dim 6/);
    const index = KeyIndex.build(step, { keys: flat.source, count: 100, buildQueries: q, buildCount: 10, capacity: 100 });
    expect(index.clusters).toBe(10); // at most one per build query
    expect(() => index.search(step, { queries: q, count: 1, k: 101, nprobe: 1 })).toThrow(/top-k 101 exceeds the 100 keys/);
    expect(() => index.search(step, { queries: q, count: 1, k: 5, nprobe: 11 })).toThrow(/nprobe/);
    expect(() => index.extend(step, 101)).toThrow(/capacity/);
    await step.submit();
    index.destroy();
    const after = gpu.step();
    expect(() => index.search(after, { queries: q, count: 1, k: 5, nprobe: 1 })).toThrow(/after destroy/);
    await after.discard();
    flat.destroy();
    keyBuf.destroy();
  });
});

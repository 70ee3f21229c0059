import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exactScores, topK } from '../src/ann/metrics.ts';
import { generateSet, type Vectors } from '../src/ann/sets.ts';
import { type BenchAnnOptions, benchAnn } from '../src/cli/bench_ann.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const tmpDir = useTmpDirs('wgserve-bench-ann-');

const D = 16;
const set = generateSet({ keys: 3000, dim: D, buildQueries: 200, queries: 10, seed: 3, keyClusters: 10, queryClusters: 5 });

const f32File = (dir: string, name: string, data: Float32Array) => {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  return path;
};

function options(dir: string, over: Partial<BenchAnnOptions> = {}): BenchAnnOptions {
  return {
    device: 'auto',
    keys: f32File(dir, 'keys.f32', set.keys.data),
    queries: f32File(dir, 'queries.f32', set.queries.data),
    buildQueries: f32File(dir, 'build.f32', set.buildQueries.data),
    dim: D,
    keyCount: 0,
    buildCount: 0,
    queryCount: 0,
    seed: 1,
    topK: 10,
    clusters: 8,
    listFraction: [0.05],
    nprobe: [2],
    hnswEf: [20],
    hnsw: true,
    batch: 4,
    updateDocs: false,
    decode: false,
    contexts: [],
    group: 4,
    listLength: 320,
    sink: 64,
    recent: 256,
    buildTokens: 256,
    ...over,
  };
}

const int32s = (path: string) => {
  const b = readFileSync(path);
  return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

describe('bench ann', () => {
  it('writes ids best first and keys scored; the recall checked from the files alone is the one reported', async () => {
    const dir = tmpDir();
    const o = options(dir, { idsOut: join(dir, 'ids.i32'), touchedOut: join(dir, 'touched.i32'), json: join(dir, 'r.json'), plot: join(dir, 'r.svg') });
    await benchAnn(o);
    const [m, k, n] = [set.queries.rows, o.topK, set.keys.rows];
    const ids = int32s(o.idsOut!);
    const touched = int32s(o.touchedOut!);
    expect(ids.length).toBe(m * k);
    expect(touched.length).toBe(m);
    const report = JSON.parse(readFileSync(o.json!, 'utf8'));
    let recall = 0;
    let massRecall = 0;
    for (let i = 0; i < m; i++) {
      const q = set.queries.data.subarray(i * D, (i + 1) * D);
      const scores = exactScores(set.keys, q);
      const row = [...ids.subarray(i * k, (i + 1) * k)];
      const found = row.filter((id) => id >= 0);
      expect(row.slice(found.length).every((id) => id === -1), `query ${i}: -1 only at the end`).toBe(true);
      expect(new Set(found).size).toBe(found.length);
      for (let t = 1; t < found.length; t++) expect(scores[found[t - 1]]).toBeGreaterThanOrEqual(scores[found[t]] - 1e-4); // best first (f32 scores)
      expect(touched[i]).toBeGreaterThanOrEqual(found.length);
      expect(touched[i]).toBeLessThanOrEqual(n);
      const exact = topK(scores, k);
      recall += found.filter((id) => exact.includes(id)).length / k / m;
      // softmax weights at 1/sqrt(D) up to their common normaliser, which cancels in the ratio
      const max = Math.max(...scores);
      const w = (id: number) => Math.exp((scores[id] - max) / Math.sqrt(D));
      massRecall += found.reduce((a, id) => a + w(id), 0) / Array.from(exact).reduce((a, id) => a + w(id), 0) / m;
    }
    const own = report.rows.find((r: { method: string }) => r.method === 'key index');
    expect(own.setting).toBe('L=150 nprobe=2');
    expect(own.recall).toBeCloseTo(recall, 12);
    expect(own.massRecall).toBeCloseTo(massRecall, 10);
    expect(own.keysScored).toBeCloseTo(touched.reduce((a, b) => a + b, 0) / m / n, 12);
    const exactRow = report.rows.find((r: { method: string }) => r.method === 'exact scan (GPU)');
    expect(exactRow.recall).toBe(1);
    expect(exactRow.massRecall).toBeCloseTo(1, 12);
    expect(report.rows.some((r: { method: string; setting: string }) => r.method.startsWith('hnswlib') && r.setting === 'ef=20')).toBe(true);
    expect(report.indexes[0].bytes).toBeGreaterThan(150 * 8 * 4); // 8 lists of 150 ids at least
    expect(readFileSync(o.plot!, 'utf8')).toMatch(/^<svg/);
  });

  it('refuses bad input with a clear error', async () => {
    const dir = tmpDir();
    const with_ = (name: string, data: Float32Array) => f32File(dir, name, data);
    const bad = (v: Vectors, at: number, value: number) => {
      const data = Float32Array.from(v.data);
      data[at] = value;
      return data;
    };
    const run = (over: Partial<BenchAnnOptions>) => benchAnn(options(dir, over));
    writeFileSync(join(dir, 'ragged.f32'), new Uint8Array(set.keys.data.byteLength + 2));
    await expect(run({ keys: join(dir, 'ragged.f32') })).rejects.toThrow(/not a whole number of float32 rows of dimension 16/);
    await expect(run({ dim: 7 })).rejects.toThrow(/wrong file or wrong --dim/);
    writeFileSync(join(dir, 'empty.f32'), new Uint8Array(0));
    await expect(run({ queries: join(dir, 'empty.f32') })).rejects.toThrow(/is empty/);
    await expect(run({ queries: with_('nan.f32', bad(set.queries, 3 * D + 5, NaN)) })).rejects.toThrow(/queries .*row 3 has a non-finite value \(NaN\) at column 5/);
    await expect(run({ keys: with_('inf.f32', bad(set.keys, 17 * D, -Infinity)) })).rejects.toThrow(/keys .*row 17 has a non-finite value/);
    await expect(run({ buildQueries: undefined })).rejects.toThrow(/go together/);
    await expect(run({ topK: 3001 })).rejects.toThrow(/--top-k 3001 is larger than the number of keys \(3000\)/);
    const six = generateSet({ keys: 20, dim: 6, buildQueries: 4, queries: 2, seed: 1 });
    await expect(run({ dim: 6, keys: with_('k6.f32', six.keys.data), queries: with_('q6.f32', six.queries.data), buildQueries: with_('b6.f32', six.buildQueries.data) })).rejects.toThrow(/multiple of 4/);
  });
});

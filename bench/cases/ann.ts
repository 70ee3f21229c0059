import type { BenchCase, CaseFactory } from '../case.ts';
import { annScores, annTopK } from '../../kernels/ann.ts';
import { flatKeySource } from '../../src/ann/flat_keys.ts';
import { KeyIndex } from '../../src/ann/key_index.ts';
import { generateSet } from '../../src/ann/sets.ts';
import { normalArray } from '../../src/util/rng.ts';

const D = 128;
const CENTROIDS = 64;

/**
 * The key index's kernels at one head row of 16K (reduced) or 128K (full) keys, D = 128: the
 * build's centroid scores and list selection (64 rows), and a search of 8 query heads (one GQA
 * group) at nprobe 4 over lists of 1% of the keys. `wgserve bench ann` measures quality.
 */
export const cases: CaseFactory = (scale) => {
  const n = scale === 'full' ? 131072 : 16384;
  const list = Math.ceil(n / 100);
  return [
    {
      family: 'ann',
      name: `centroid scores ${CENTROIDS}x${n} D=${D}`,
      computeBound: true,
      setup(gpu) {
        const keys = gpu.upload(normalArray(n * D, 1, 1));
        const flat = flatKeySource(gpu, keys, n, D);
        const a = gpu.upload(normalArray(CENTROIDS * D, 2, 1));
        const out = gpu.createBuffer(CENTROIDS * n * 4);
        return {
          run: (step) => annScores(step, { a, rows: CENTROIDS, keys: flat.source, n, out }),
          bytes: (n + CENTROIDS) * D * 4 + CENTROIDS * n * 4,
          flops: 2 * CENTROIDS * n * D,
          dispose: () => {
            flat.destroy();
            [keys, a, out].forEach((b) => b.destroy());
          },
        };
      },
    },
    {
      family: 'ann',
      name: `top-${list} of ${CENTROIDS}x${n}`,
      setup(gpu) {
        const scores = gpu.upload(normalArray(CENTROIDS * n, 3, 1));
        const [ids, top, count, thr] = [gpu.createBuffer(CENTROIDS * list * 4), gpu.createBuffer(CENTROIDS * list * 4), gpu.createBuffer(CENTROIDS * 4), gpu.createBuffer(CENTROIDS * 4)];
        return {
          run: (step) => annTopK(step, { scores, rows: CENTROIDS, cols: n, k: list, outIds: ids, outScores: top, count, thr }),
          // the row is read once per radix pass (5) on a GPU without the row in cache
          bytes: 5 * CENTROIDS * n * 4 + 2 * CENTROIDS * list * 4,
          flops: 0,
          dispose: () => [scores, ids, top, count, thr].forEach((b) => b.destroy()),
        };
      },
    },
    {
      family: 'ann',
      name: `search 8 queries nprobe=4 top-100 of ${n} keys`,
      setup(gpu) {
        const set = generateSet({ keys: n, dim: D, buildQueries: 1024, queries: 8, seed: 1 });
        const keys = gpu.upload(set.keys.data);
        const flat = flatKeySource(gpu, keys, n, D);
        const queries = gpu.upload(set.queries.data);
        const step = gpu.step();
        const index = KeyIndex.build(step, { keys: flat.source, count: n, buildQueries: step.upload(set.buildQueries.data), buildCount: 1024, capacity: n, options: { clusters: CENTROIDS, listLength: list } });
        // queue order runs the build before the timed steps; a failed build fails them too
        step.submit().catch(() => {});
        return {
          run: (s) => void index.search(s, { queries, count: 8, k: 100, nprobe: 4 }),
          // keys of 4 lists per query read once, the lists' ids, the centroids
          bytes: 8 * (4 * list * (D + 1) * 4 + CENTROIDS * D * 4),
          flops: 2 * 8 * (4 * list + CENTROIDS) * D,
          dispose: () => {
            index.destroy();
            flat.destroy();
            [keys, queries].forEach((b) => b.destroy());
          },
        };
      },
    },
  ] satisfies BenchCase[];
};

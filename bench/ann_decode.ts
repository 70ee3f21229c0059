/**
 * `wgserve bench ann --decode`: decode attention time of one retrieval head row against context
 * length, exact (kernels/attention.ts attentionDecode over every key) and with a key index
 * (src/ann/ann_attention.ts: search + slot table + attention over the static window and the found
 * keys), on the same device, same keys and queries; with the keys each reads per step and the
 * output error of the indexed attention against the exact one.
 *
 * Keys and queries come from the generated out-of-distribution set (src/ann/sets.ts), a context of
 * n keys being the set's first n; values are seeded normal vectors. The head row has a GQA group of
 * query heads (Llama-3-8B: 4 heads of dim 128 per KV head; Llama-3.2-1B: 4 of dim 64).
 */
import { type AttentionDecodeArgs, attentionDecode } from '../kernels/attention.ts';
import { AnnAttention } from '../src/ann/ann_attention.ts';
import { generateSet } from '../src/ann/sets.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import type { Step } from '../src/gpu/step.ts';
import { normalArray } from '../src/util/rng.ts';
import { timeRuns } from './timing.ts';

export interface AnnDecodeBenchOptions {
  contexts: number[];
  headDim: number;
  /** query heads per KV head */
  group: number;
  topK: number;
  nprobe: number;
  clusters: number;
  listLength: number;
  sink: number;
  recent: number;
  buildTokens: number;
  seed: number;
  log: (line: string) => void;
}

export interface AnnDecodeRow {
  context: number;
  exactSeconds: number;
  indexSeconds: number;
  buildSeconds: number;
  /** per step: K rows the exact kernel reads (K and V rows each) */
  exactKeys: number;
  /** per step: keys the search scored, summed over the group's queries, plus centroid rows */
  searchScores: number;
  /** per step: slots the indexed attention reads (K and V rows each) */
  attended: number;
  /** bytes read per step (K, V and centroid rows), indexed / exact */
  bytesRatio: number;
  /** max |indexed - exact| / max |exact| over the group's outputs */
  outputError: number;
  /** softmax mass (over all keys, float64) of the keys attended, mean over the group's query heads */
  massAttended: number;
  /** the same for the best set a search of the same k could find: static window and the union of each head's exact top-(topK + sink) middle keys */
  massBest: number;
  indexBytes: number;
}

export interface AnnDecodeReport {
  device: string;
  isSoftware: boolean;
  options: Omit<AnnDecodeBenchOptions, 'log'>;
  rows: AnnDecodeRow[];
}

const BLOCK = 16;

export async function runAnnDecodeBench(gpu: Gpu, o: AnnDecodeBenchOptions): Promise<AnnDecodeReport> {
  const [d, G] = [o.headDim, o.group];
  const nMax = Math.max(...o.contexts);
  const steps = 8;
  o.log(`generating ${nMax} keys, D ${d}`);
  const set = generateSet({ keys: nMax, dim: d, buildQueries: o.buildTokens * G, queries: steps * G, seed: o.seed });
  const kPool = gpu.upload(set.keys.data, 'bench k pool');
  const vPool = gpu.upload(normalArray(nMax * d, o.seed + 1, 1), 'bench v pool');
  const table = gpu.upload(Uint32Array.from({ length: Math.ceil(nMax / BLOCK) }, (_, i) => i), 'bench table');
  const build = gpu.upload(set.buildQueries.data, 'bench build queries');
  const queries = gpu.upload(set.queries.data, 'bench queries');
  const rows: AnnDecodeRow[] = [];
  try {
    for (const n of o.contexts) {
      const ann = new AnnAttention(
        gpu,
        { nLayers: 1, nHeads: G, nKvHeads: 1, headDim: d, blockSize: BLOCK, dtype: 'f32', maxTokens: nMax },
        { threshold: Math.min(4096, n), sink: o.sink, recent: o.recent, topK: o.topK, nprobe: o.nprobe, buildTokens: o.buildTokens, index: { clusters: o.clusters, listLength: o.listLength } },
      );
      const lengths = Uint32Array.of(n);
      const args = (step: Step, i: number, out: GPUBuffer): AttentionDecodeArgs => ({
        kPool, vPool, blockTable: table, tableStride: 0, blockSize: BLOCK, nHeads: G, nKvHeads: 1, headDim: d, batch: 1, maxKvLen: n,
        q: { buffer: queries, offset: (i % steps) * G * d * 4, size: G * d * 4 },
        out,
        kvLen: step.upload(lengths),
      });
      // the prefill's queries (sampled as the model's hook would), then the build in the first decode step
      let step = gpu.step();
      ann.collect(step, 0, build, [{ seq: 0, row: 0, position: n - o.buildTokens, count: o.buildTokens }]);
      await step.submit();
      const t0 = performance.now();
      step = gpu.step();
      ann.attentionDecode(step, 0, args(step, 0, step.scratch(G * d * 4)), { seqs: [0], lengths });
      await step.submit();
      const buildSeconds = (performance.now() - t0) / 1000;

      // one instrumented step: both outputs, slots attended, keys scored
      step = gpu.step();
      const [outIdx, outExact] = [step.scratch(G * d * 4), step.scratch(G * d * 4)];
      const info = ann.attentionDecode(step, 0, args(step, 1, outIdx), { seqs: [0], lengths })!;
      attentionDecode(step, args(step, 1, outExact));
      const reads = [step.readback(outIdx), step.readback(outExact), step.readback(info.lengths, 0, 4), step.readback(info.scored[0].buffer, info.scored[0].offset, G * 4), step.readback(info.table, 0, info.stride * 4)];
      await step.submit();
      const [oi, oe, len, scored, slots] = await Promise.all(reads);
      const [a, e] = [new Float32Array(oi), new Float32Array(oe)];
      const outputError = a.reduce((m, x, i) => Math.max(m, Math.abs(x - e[i])), 0) / e.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      const attended = new Uint32Array(len)[0];
      // the identity block table makes a slot its position
      const mass = attentionMass(set.keys.data, set.queries.data.subarray(G * d, 2 * G * d), d, n, new Uint32Array(slots, 0, attended), info.rows[0], o.topK + info.rows[0].lo);
      const index = ann.indexOf(0, 0, 0)!;
      const searchScores = new Uint32Array(scored).reduce((s, x) => s + x, 0) + G * index.clusters;

      const indexSeconds = await timeRuns(gpu, (s, i) => void ann.attentionDecode(s, 0, args(s, i, s.scratch(G * d * 4)), { seqs: [0], lengths }), 'reduced');
      const exactSeconds = await timeRuns(gpu, (s, i) => attentionDecode(s, args(s, i, s.scratch(G * d * 4))), 'reduced');
      const row: AnnDecodeRow = {
        context: n,
        exactSeconds,
        indexSeconds,
        buildSeconds,
        exactKeys: n,
        searchScores,
        attended,
        bytesRatio: (searchScores + 2 * attended) / (2 * n),
        outputError,
        ...mass,
        indexBytes: ann.bytes(0),
      };
      rows.push(row);
      o.log(`${n} keys: exact ${(exactSeconds * 1e3).toFixed(2)} ms, with index ${(indexSeconds * 1e3).toFixed(2)} ms (build ${buildSeconds.toFixed(1)} s), keys scored ${searchScores}, slots attended ${attended}, mass ${row.massAttended.toFixed(3)} (best ${row.massBest.toFixed(3)}), output error ${outputError.toExponential(1)}`);
      ann.free(0);
    }
  } finally {
    [kPool, vPool, table, build, queries].forEach((b) => b.destroy());
  }
  const { log: _, ...options } = o;
  return { device: gpu.adapter.description, isSoftware: gpu.adapter.isSoftware, options, rows };
}

/** Mean softmax mass (scale 1/sqrt(d), float64) of the attended positions, and of the static window with the union of each head's exact top-k middle keys. */
function attentionMass(keys: Float32Array, q: Float32Array, d: number, n: number, attended: Uint32Array, r: { lo: number; hi: number }, k: number) {
  const G = q.length / d;
  const scores = Array.from({ length: G }, (_, g) => {
    const s = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let x = 0;
      for (let j = 0; j < d; j++) x += q[g * d + j] * keys[i * d + j];
      s[i] = x / Math.sqrt(d);
    }
    const m = s.reduce((x, y) => Math.max(x, y), -Infinity);
    let l = 0;
    for (let i = 0; i < n; i++) l += (s[i] = Math.exp(s[i] - m));
    return s.map((x) => x / l);
  });
  const best = new Set<number>();
  for (let i = 0; i < n; i++) if (i < r.lo || i >= r.hi) best.add(i);
  const middle = Array.from({ length: r.hi - r.lo }, (_, i) => r.lo + i);
  for (const p of scores) for (const i of [...middle].sort((a, b) => p[b] - p[a]).slice(0, k)) best.add(i);
  const massOf = (set: Iterable<number>) => scores.reduce((t, p) => t + [...set].reduce((u, i) => u + p[i], 0), 0) / G;
  return { massAttended: massOf(attended), massBest: massOf(best) };
}

const ms = (s: number) => (s * 1e3).toFixed(2);

export function annDecodeMarkdown(r: AnnDecodeReport): string {
  const o = r.options;
  const base = r.rows[0];
  const last = r.rows[r.rows.length - 1];
  return [
    `Decode attention of one retrieval head row (${o.group} query heads of dim ${o.headDim} on one KV head, f32 KV) against context length; ${r.device}${r.isSoftware ? ' (software device)' : ''}. With the index: sink ${o.sink} + recent ${o.recent} exact, top-${o.topK} per query head from ${o.clusters} centroids, lists of ${o.listLength} keys, nprobe ${o.nprobe}, built from ${o.buildTokens} sampled prefill tokens.`,
    '',
    '| context | exact ms | with index ms | speed-up | build s | keys scored (search) | slots attended | bytes read vs exact | mass attended | best mass at this k | output error | index KiB |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.context} | ${ms(x.exactSeconds)} | ${ms(x.indexSeconds)} | ${(x.exactSeconds / x.indexSeconds).toFixed(2)}x | ${x.buildSeconds.toFixed(1)} | ${x.searchScores} | ${x.attended} | ${(100 * x.bytesRatio).toFixed(2)}% | ${x.massAttended.toFixed(4)} | ${x.massBest.toFixed(4)} | ${x.outputError.toExponential(1)} | ${(x.indexBytes / 1024).toFixed(0)} |`,
    ),
    '',
    `Goal (issue 15): decode attention time at ${last.context} within 2x of ${base.context}: with the index ${(last.indexSeconds / base.indexSeconds).toFixed(2)}x (exact: ${(last.exactSeconds / base.exactSeconds).toFixed(2)}x).`,
    '',
    '"keys scored": q·k computed by the search, summed over the group\'s query heads, centroids included; "slots attended": K and V rows the attention reads (static window and the union of the found keys). "bytes read vs exact": (keys scored + 2 x slots attended) / (2 x context). "mass attended": softmax mass (over all keys, float64) of the attended keys, mean over the group\'s heads; "best mass at this k": the static window with the union of each head\'s exact top-(k + sink) middle keys (what a perfect search of the same breadth would attend: the search asks for k + sink keys so that sink keys among them still leave k middle ones). This set spreads attention widely (the generated set, docs/ann.md), so neither is near 1. Output error: max |indexed - exact| / max |exact| over the group\'s outputs. Times: median step time of the attention alone (search included, build excluded), one head row, batch 1.',
    '',
  ].join('\n');
}

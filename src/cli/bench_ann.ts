import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command, InvalidArgumentError, type Option } from 'commander';
import type { AnnBenchReport } from '../../bench/ann.ts';
import type { AnnSet } from '../ann/sets.ts';
import { type DeviceMode, parseDeviceMode } from '../gpu/adapter.ts';

export interface BenchAnnOptions {
  device: DeviceMode;
  /** user files (raw little-endian float32 rows of --dim); all three or none */
  keys?: string;
  queries?: string;
  buildQueries?: string;
  dim: number;
  /** a generated set's sizes */
  keyCount: number;
  buildCount: number;
  queryCount: number;
  seed: number;
  topK: number;
  clusters: number;
  listFraction: number[];
  nprobe: number[];
  hnswEf: number[];
  hnsw: boolean;
  batch: number;
  idsOut?: string;
  touchedOut?: string;
  json?: string;
  markdown?: string;
  plot?: string;
  updateDocs: boolean;
  /** `--decode`: decode attention time against context length instead (bench/ann_decode.ts) */
  decode: boolean;
  contexts: number[];
  group: number;
  listLength: number;
  sink: number;
  recent: number;
  buildTokens: number;
  /** `--model [file]`: agreement and KL against full attention in a model instead (bench/ann_model.ts); true for the embedded one */
  model?: string | boolean;
  thresholds?: number[];
  sequences?: number;
  length?: number;
  /** `--synthetic NAME`: --model on a synthetic model of this shape (widths / 8, F32, random ids) at long contexts */
  synthetic?: string;
  layers?: number;
  qScale?: number[];
  decodeSteps?: number;
}

/** The set to run: the user's files, or a generated out-of-distribution one. Throws on bad files before any device work. */
async function annSet(o: BenchAnnOptions): Promise<AnnSet> {
  const { generateSet, readVectors } = await import('../ann/sets.ts');
  if (o.keys || o.queries || o.buildQueries) {
    if (!o.keys || !o.queries || !o.buildQueries) throw new Error('--keys, --queries and --build-queries go together (the index learns from the build queries, never from the searched ones)');
    const keys = readVectors(o.keys, o.dim, 'keys');
    return { name: o.keys, keys, queries: readVectors(o.queries, o.dim, 'queries'), buildQueries: readVectors(o.buildQueries, o.dim, 'build queries') };
  }
  return generateSet({ keys: o.keyCount, dim: o.dim, buildQueries: o.buildCount, queries: o.queryCount, seed: o.seed });
}

/** Int32 little-endian rows (the host is little-endian: readVectors checks). */
function int32File(path: string, v: Int32Array): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
}

/** `wgserve bench ann --decode`: see bench/ann_decode.ts. */
async function benchAnnDecode(o: BenchAnnOptions): Promise<void> {
  if (o.dim % 4 !== 0 || 128 % (o.dim / 4) !== 0) throw new Error(`--dim ${o.dim}: decode attention needs a multiple of 4 with dim / 4 dividing 128`);
  const [{ annDecodeMarkdown, runAnnDecodeBench }, { updateDocSection, writeResult }, { Gpu }] = await Promise.all([
    import('../../bench/ann_decode.ts'),
    import('../../bench/results.ts'),
    import('../gpu/gpu.ts'),
  ]);
  const gpu = await Gpu.open({ mode: o.device });
  try {
    console.error(`bench ann --decode on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}`);
    const report = await runAnnDecodeBench(gpu, {
      contexts: o.contexts,
      headDim: o.dim,
      group: o.group,
      topK: o.topK,
      nprobe: o.nprobe[0],
      clusters: o.clusters,
      listLength: o.listLength,
      sink: o.sink,
      recent: o.recent,
      buildTokens: o.buildTokens,
      seed: o.seed,
      log: (line) => console.error(line),
    });
    const markdown = annDecodeMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.updateDocs) updateDocSection(report.isSoftware ? 'ann-decode-software' : 'ann-decode-gpu', () => `\n${markdown}\n`);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
  } finally {
    gpu.destroy();
  }
}

/**
 * `wgserve bench ann --model`: see bench/ann_model.ts. Runs: each threshold with a short prompt (the
 * index built while decoding), then the lowest with a prompt of half the length (built at the
 * first decode step) from the prompt's samples and, as a disaggregated decode worker would, from
 * decode queries alone. The index's settings are scaled to the embedded model's 512-token context.
 */
async function benchAnnModel(o: BenchAnnOptions): Promise<void> {
  const [{ annModelMarkdown, runAnnModelBench }, { writeResult }, { Gpu }, { openModel }, { DEFAULT_MODEL }] = await Promise.all([
    import('../../bench/ann_model.ts'),
    import('../../bench/results.ts'),
    import('../gpu/gpu.ts'),
    import('../model/source.ts'),
    import('../model/default_model.ts'),
  ]);
  const src = await openModel(typeof o.model === 'string' ? o.model : DEFAULT_MODEL);
  const { thresholds = [64, 200], sequences = 2, length = 320 } = o;
  const ann = { sink: 16, recent: 32, extendEvery: 16, topK: 16, nprobe: 2, index: { clusters: 16, listFraction: 0.1 } };
  const low = Math.min(...thresholds);
  if (!(low > ann.sink + ann.recent)) throw new Error(`--thresholds: each must exceed the static window of ${ann.sink + ann.recent} keys (sink ${ann.sink} + recent ${ann.recent})`);
  const half = Math.floor(length / 2);
  if (half < low) throw new Error(`--length ${length}: half of it (the long prompt) must reach the lowest threshold ${low}`);
  const runs = [
    ...thresholds.map((threshold) => ({ threshold, prefix: 32, samples: 'prompt' as const })),
    { threshold: low, prefix: half, samples: 'prompt' as const },
    { threshold: low, prefix: half, samples: 'decode only' as const },
  ];
  const gpu = await Gpu.open({ mode: o.device });
  try {
    console.error(`bench ann --model on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}: ${src.path}`);
    const report = await runAnnModelBench(gpu, src, { sequences, length, ann, runs }, (r) =>
      console.error(`threshold ${r.threshold}, prefix ${r.prefix}, samples from ${r.samples}: agreement ${(100 * r.agreement).toFixed(1)}%, mean KL ${r.meanKl.toExponential(2)}`),
    );
    const markdown = annModelMarkdown(report);
    if (o.json) writeResult(o.json, JSON.stringify(report, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
  } finally {
    gpu.destroy();
  }
}

/**
 * `wgserve bench ann --synthetic NAME`: the --model measurement at long contexts on a synthetic
 * model (NAME's shape with widths / 8 and its first --layers layers, F32 weights), reading seeded
 * random ids: a prompt of length - decode-steps tokens (prefilled in chunks of 512, its queries
 * sampled), then --decode-steps scored decode steps, all past every threshold; per --q-scale
 * (attention logits scaled, docs/ann.md) one run per threshold, each built from the prompt's
 * samples. The index's settings are scaled to a few thousand keys.
 */
async function benchAnnModelSynthetic(o: BenchAnnOptions & { synthetic: string }): Promise<void> {
  const [{ annModelMarkdown, attentionMass, randomTokens, runAnnModelBench, scaleQueries }, { writeResult }, { Gpu }, { syntheticModel, syntheticShape }] = await Promise.all([
    import('../../bench/ann_model.ts'),
    import('../../bench/results.ts'),
    import('../gpu/gpu.ts'),
    import('../model/synthetic.ts'),
  ]);
  const { thresholds = [1024], sequences = 1, length = 4096, layers = 2, qScale = [1, 4], decodeSteps = 128 } = o;
  const full = syntheticShape(o.synthetic, 'reduced');
  if (layers > full.nLayers) throw new Error(`--layers ${layers}: ${full.name} has ${full.nLayers}`);
  const shape = { ...full, name: `${full.name}, ${layers} of ${full.nLayers} layers`, nLayers: layers };
  const prefix = length - decodeSteps;
  const ann = { sink: 64, recent: 256, extendEvery: 64, topK: 64, nprobe: 2, index: { clusters: 32, listFraction: 0.05 } };
  const low = Math.min(...thresholds);
  if (!(low > ann.sink + ann.recent)) throw new Error(`--thresholds: each must exceed the static window of ${ann.sink + ann.recent} keys`);
  if (prefix < Math.max(...thresholds)) throw new Error(`--length ${length} - --decode-steps ${decodeSteps} (the prompt) must reach every threshold`);
  // the handover's decode-only build is measured on the embedded model; here every run builds from the prompt's samples
  const runs = thresholds.map((threshold) => ({ threshold, prefix, samples: 'prompt' as const }));
  const gpu = await Gpu.open({ mode: o.device });
  try {
    const reports = [];
    for (const scale of qScale) {
      const src = scaleQueries(syntheticModel(shape, 'f32'), scale);
      console.error(`bench ann --synthetic on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}: ${src.path}`);
      const t0 = performance.now();
      const mass = attentionMass(src, randomTokens(src, 1, length - 1, o.seed)[0], prefix, { k: ann.topK, sink: ann.sink, recent: ann.recent });
      console.error(`attention mass (${((performance.now() - t0) / 1000).toFixed(0)} s on the CPU): top key ${mass.top1.toFixed(3)}, top ${mass.k} ${mass.topK.toFixed(3)}, window ${mass.window.toFixed(3)}`);
      const options = { sequences, length, tokens: { random: o.seed }, chunk: 512, ann, runs };
      reports.push(
        await runAnnModelBench(
          gpu,
          src,
          options,
          (r) => console.error(`threshold ${r.threshold}, samples from ${r.samples}: agreement ${(100 * r.agreement).toFixed(1)}%, mean KL ${r.meanKl.toExponential(2)}, ${r.msPerStep.toFixed(0)} ms/step (exact ${r.msPerStepExact.toFixed(0)})`),
          { queryScale: scale, mass },
        ),
      );
    }
    const markdown = reports.map(annModelMarkdown).join('\n');
    if (o.json) writeResult(o.json, JSON.stringify(reports, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (!o.json && !o.markdown) process.stdout.write(markdown);
  } finally {
    gpu.destroy();
  }
}

/** `wgserve bench ann`: see bench/ann.ts (with --decode, bench/ann_decode.ts; with --model or --synthetic, bench/ann_model.ts). */
export async function benchAnn(o: BenchAnnOptions): Promise<AnnBenchReport | undefined> {
  if (o.decode) return void (await benchAnnDecode(o));
  if (o.synthetic) return void (await benchAnnModelSynthetic({ ...o, synthetic: o.synthetic }));
  if (o.model) return void (await benchAnnModel(o));
  const set = await annSet(o);
  if (set.keys.dim % 4 !== 0) throw new Error(`--dim ${set.keys.dim}: the key index needs a multiple of 4`);
  if (o.topK > set.keys.rows) throw new Error(`--top-k ${o.topK} is larger than the number of keys (${set.keys.rows})`);
  const [{ annBenchMarkdown, annPlotSpec, runAnnBench }, { updateDocSection, writeResult }, { Gpu }, { writeSvgPlot }] = await Promise.all([
    import('../../bench/ann.ts'),
    import('../../bench/results.ts'),
    import('../gpu/gpu.ts'),
    import('../util/output.ts'),
  ]);
  const gpu = await Gpu.open({ mode: o.device });
  try {
    console.error(`bench ann on ${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software device)' : ''}: ${set.name}`);
    const report = await runAnnBench(gpu, {
      set,
      topK: o.topK,
      index: { clusters: o.clusters },
      listFractions: o.listFraction,
      nprobes: o.nprobe,
      hnswEfs: o.hnsw ? o.hnswEf : [],
      batch: o.batch,
      log: (line) => console.error(line),
    });
    const markdown = annBenchMarkdown(report);
    if (o.idsOut) int32File(o.idsOut, report.first.ids);
    if (o.touchedOut) int32File(o.touchedOut, report.first.touched);
    const { first: _, ...summary } = report;
    if (o.json) writeResult(o.json, JSON.stringify(summary, null, 2) + '\n');
    if (o.markdown) writeResult(o.markdown, markdown);
    if (o.plot) await writeSvgPlot(o.plot, annPlotSpec(report));
    if (o.updateDocs) {
      const plot = o.plot ? `\n![key index: recall against keys scored](${o.plot.replace(/^.*?bench\//, '../bench/')})\n` : '';
      updateDocSection(report.isSoftware ? 'ann-software' : 'ann-gpu', () => `\n${markdown}${plot}\n`);
    }
    if (!o.json && !o.markdown) process.stdout.write(markdown);
    return report;
  } finally {
    gpu.destroy();
  }
}

const positiveInt = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer`);
  return n;
};
const intList = (name: string) => (v: string) => v.split(',').map((s) => positiveInt(name)(s.trim()));
const fractions = (name: string) => (v: string) =>
  v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!(n > 0 && n <= 1)) throw new InvalidArgumentError(`${name} must be fractions in (0, 1] separated by commas`);
    return n;
  });

const positives = (name: string) => (v: string) =>
  v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!(n > 0 && Number.isFinite(n))) throw new InvalidArgumentError(`${name} must be positive numbers separated by commas`);
    return n;
  });

/** `bench ann`, with the shared --device option. */
export function benchAnnCommand(device: Option): Command {
  return new Command('ann')
    .description('the key index for long-context attention (docs/ann.md) alone on key/query sets: recall, attention-mass recall, keys scored, output error, build and search time, beside hnswlib and an exact scan')
    .option('--keys <file>', 'keys: raw little-endian float32 [n, dim] (with --queries and --build-queries; default: a generated out-of-distribution set)')
    .option('--queries <file>', 'searched queries: raw float32 [m, dim]')
    .option('--build-queries <file>', 'queries the index learns from (never the searched ones): raw float32 [b, dim]')
    .option('--dim <d>', 'vector dimension (a multiple of 4)', positiveInt('--dim'), 128)
    .option('--key-count <n>', 'generated set: keys', positiveInt('--key-count'), 131072)
    .option('--build-count <n>', 'generated set: build queries', positiveInt('--build-count'), 2048)
    .option('--query-count <n>', 'generated set: searched queries', positiveInt('--query-count'), 100)
    .option('--seed <s>', 'generated set (and --synthetic ids): seed', positiveInt('--seed'), 1)
    .option('--top-k <k>', 'keys to find per query', positiveInt('--top-k'), 100)
    .option('--clusters <c>', 'key index: query centroids', positiveInt('--clusters'), 64)
    .option('--list-fraction <list>', 'key index builds: keys per centroid list, as fractions of the keys (comma-separated; one build each)', fractions('--list-fraction'), [0.001, 0.0025, 0.01])
    .option('--nprobe <list>', 'key index settings per build: lists scanned per query (comma-separated; --ids-out and --touched-out take the first build\'s first)', intList('--nprobe'), [1, 2, 4, 8])
    .option('--hnsw-ef <list>', 'hnswlib search breadths (comma-separated; at least --top-k)', intList('--hnsw-ef'), [100, 200, 400, 800])
    .option('--no-hnsw', 'skip the hnswlib peer')
    .option('--batch <n>', 'queries per GPU step', positiveInt('--batch'), 16)
    .option('--ids-out <file>', 'the ids found for each query: int32 little-endian [m, top-k], best first, -1 where fewer')
    .option('--touched-out <file>', 'keys whose scores were computed for each query: int32 [m]')
    .option('--json <file>', 'write the report as JSON')
    .option('--markdown <file>', 'write the tables as markdown')
    .option('--plot <file.svg>', 'write the plot of recall against keys scored')
    .option('--update-docs', 'replace the key-index section for this device class in docs/benchmarks.md', false)
    .option('--decode', 'instead: decode attention time of one head row against context length, exact and with the index (--contexts, --group, --list-length, --sink, --recent, --build-tokens; --dim, --top-k, --clusters, the first --nprobe)', false)
    .option('--contexts <list>', '--decode: context lengths (comma-separated)', intList('--contexts'), [8192, 16384, 32768, 65536, 131072])
    .option('--group <g>', '--decode: query heads per KV head', positiveInt('--group'), 4)
    .option('--list-length <l>', '--decode: keys per centroid list', positiveInt('--list-length'), 320)
    .option('--sink <n>', '--decode: first keys always attended', positiveInt('--sink'), 64)
    .option('--recent <n>', '--decode: latest keys always attended', positiveInt('--recent'), 256)
    .option('--build-tokens <n>', '--decode: prefill tokens sampled to build from', positiveInt('--build-tokens'), 256)
    .option('--model [file]', 'instead: greedy-token agreement and logit KL against full attention in a model (default: the embedded stories260K), --thresholds, --sequences, --length (bench/ann_model.ts)')
    .option('--thresholds <list>', '--model: thresholds (comma-separated; default 64,200)', intList('--thresholds'))
    .option('--sequences <n>', '--model: continuations scored (default 2)', positiveInt('--sequences'))
    .option('--length <n>', '--model: tokens per continuation (default 320; --synthetic: 4096)', positiveInt('--length'))
    .option('--synthetic <name>', 'instead: --model on a synthetic model of this shape (e.g. llama-3.2-1b; widths / 8, F32) reading random ids at long contexts (default --thresholds 1024, --sequences 1, --length 4096)')
    .option('--layers <n>', '--synthetic: the shape\'s first n layers (default 2)', positiveInt('--layers'))
    .option('--q-scale <list>', '--synthetic: attention logits scaled by each (attn_q weights x s; 1 is the random model as it is; default 1,4)', positives('--q-scale'))
    .option('--decode-steps <n>', '--synthetic: decode steps scored after the prompt (default 128)', positiveInt('--decode-steps'))
    .addOption(device)
    .action(async (o: Omit<BenchAnnOptions, 'device'> & { device: string }) => {
      await benchAnn({ ...o, device: parseDeviceMode(o.device) });
    });
}

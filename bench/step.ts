import { NO_TOKEN, argmax } from '../kernels/sampling.ts';
import type { WeightFormat } from '../kernels/weights.ts';
import type { AdapterSummary, GpuFeatures } from '../src/gpu/adapter.ts';
import { type GpuCounts, countsSince } from '../src/gpu/counters.ts';
import { SidePool } from '../src/gpu/side_pool.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { type TraceEvent, stepTraceEvents } from '../src/gpu/trace.ts';
import { blockBytes } from '../src/kv/paged_kv.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import { syntheticModel, syntheticShape } from '../src/model/synthetic.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { checkFits } from './generate.ts';
import type { BenchScale, ModelShape } from './shapes.ts';
import { median } from './timing.ts';

/**
 * What the host does for one steady-state decode step (`wgserve bench step`): WebGPU calls counted
 * by src/gpu/counters.ts (dispatches, passes, submits, bind groups and buffers created, writeBuffer
 * calls and bytes) and the host time to record the step, with the GPU time and the read-back wait
 * beside them. Per batch size B: a prefill of `context` tokens per sequence (none when 0), `warmup`
 * decode steps (pipelines compiled, pool and caches filled), then `steps` measured decode steps of
 * B tokens, each a forward pass + GPU argmax + read-back of the B ids fed back as the next tokens
 * (`pipeline`: fed on the GPU, the next step recorded before the read-back resolves).
 *
 * A model may be measured with fewer layers than its shape has (`layers`: a full 8B does not fit a
 * software device's time): every layer records the same work, so each step is split at the layer
 * boundaries (ForwardOptions.afterLayer) into a fixed part (embedding, uploads, head, sampling) and
 * per-layer figures, and the whole model's step is fixed + nLayers x per layer.
 */

export interface StepBenchOptions {
  /** MODEL_SHAPES key, or a shape (tests) */
  model: string | ModelShape;
  dtype: WeightFormat;
  scale: BenchScale;
  /** layers to build and run (default: all of the shape's) */
  layers?: number;
  batches: number[];
  /** prompt tokens per sequence prefilled before the decode steps (0: none) */
  context: number;
  warmup: number;
  steps: number;
  /** steps recorded and discarded (not run) for the host recording time: unaffected by the GPU (default 15) */
  recordRepeats?: number;
  /** each decode step recorded and submitted before the previous one's ids are read back, fed its ids on the GPU (as the engine pipelines) */
  pipeline?: boolean;
  seed?: number;
  log?: (line: string) => void;
}

/** Per-step figures: counts of WebGPU calls (from the steps run) and host milliseconds. */
export interface StepFigures extends GpuCounts {
  /**
   * host time from the step's creation to submit(): forward pass, sampling, read-back recorded;
   * median over steps recorded and discarded (not run), so the GPU's work does not disturb it
   */
  recordMs: number;
}

export interface StepBatchResult {
  batch: number;
  /** KV positions per sequence when the measured steps began */
  contextTokens: number;
  /** the measured model (its layers), median over the measured steps (recordMs: of those run) */
  measured: StepFigures & { submitMs: number; gpuMs: number | null; readbackWaitMs: number; wallMs: number };
  /** one layer's share */
  perLayer: StepFigures;
  /** outside the layers: embedding, uploads, output head, sampling, read-back */
  fixed: StepFigures;
  /** the whole model (all the shape's layers): fixed + nLayers x perLayer */
  fullModel: StepFigures;
  /** a measured step's counts differed from the first's (steady state not reached) */
  countsVaried: boolean;
}

export interface StepRun {
  model: string;
  dtype: WeightFormat;
  scale: BenchScale;
  shape: ModelShape;
  layersMeasured: number;
  /** the steps were pipelined (StepBenchOptions.pipeline) */
  pipeline: boolean;
  results: StepBatchResult[];
}

export interface StepBenchReport {
  adapter: AdapterSummary;
  features: GpuFeatures;
  date: string;
  runs: StepRun[];
  /** Chrome trace-event JSON of the measured steps (chrome://tracing, Perfetto) */
  trace: TraceEvent[];
}

const FIGURE_KEYS = [
  'dispatches',
  'computePasses',
  'submits',
  'bindGroupsCreated',
  'buffersCreated',
  'bufferBytesCreated',
  'writeBufferCalls',
  'writeBufferBytes',
  'pipelinesCreated',
  'readbacks',
  'recordMs',
] as const satisfies readonly (keyof StepFigures)[];

const figures = (counts: GpuCounts, recordMs: number): StepFigures => ({ ...counts, recordMs });
const combine = (a: StepFigures, b: StepFigures, f: (x: number, y: number) => number): StepFigures =>
  Object.fromEntries(FIGURE_KEYS.map((k) => [k, f(a[k], b[k])])) as unknown as StepFigures;
const medianOf = (xs: StepFigures[]): StepFigures => Object.fromEntries(FIGURE_KEYS.map((k) => [k, median(xs.map((x) => x[k]))])) as unknown as StepFigures;

interface MeasuredStep extends Recorded {
  submitMs: number;
  gpuMs: number | null;
  readbackWaitMs: number;
  wallMs: number;
  tokens: Uint32Array;
}

/** Figures of one step split at its layer boundaries. */
interface Recorded {
  total: StepFigures;
  layers: StepFigures[];
}

/**
 * Records one step (forward pass, argmax, read-back) with counters snapshotted at every layer
 * boundary. The ids go to a buffer held past the step (the caller releases it): a pipelined next
 * step reads them.
 */
function record(model: GpuModel, ids: SidePool, chunks: SeqChunk[], label: string, timestamps: boolean) {
  const gpu = model.gpu;
  const start = gpu.counters.snapshot();
  const step = gpu.step({ label, timestamps });
  const t0 = step.times.created;
  const marks: { counts: GpuCounts; t: number }[] = [];
  const { logits, rows } = model.forward(step, chunks, { afterLayer: () => marks.push({ counts: gpu.counters.snapshot(), t: performance.now() }) });
  const out = ids.take(rows * 4);
  argmax(step, { logits, out, rows, cols: model.config.vocabSize });
  const read = step.readback(out, 0, rows * 4);
  const recorded = performance.now();
  const layers = marks.map((m, i) => figures(countsSince(i === 0 ? start : marks[i - 1].counts, m.counts), m.t - (i === 0 ? t0 : marks[i - 1].t)));
  return { step, start, t0, out, read, recorded, layers };
}

/** Records a step and discards it (not run): the host recording time alone; the tokens are taken back out of the KV tables. */
async function recordOnly(model: GpuModel, ids: SidePool, chunks: SeqChunk[], label: string): Promise<Recorded> {
  const before = chunks.map((c) => (model.kv.has(c.seq) ? model.kv.length(c.seq) : 0));
  const r = record(model, ids, chunks, label, false);
  const total = figures(countsSince(r.start, model.gpu.counters.snapshot()), r.recorded - r.t0);
  await r.step.discard();
  ids.release(r.out);
  chunks.forEach((c, i) => (before[i] === 0 ? model.release(c.seq) : model.kv.truncate(c.seq, before[i])));
  return { total, layers: r.layers };
}

/** A submitted step: `out` holds its ids on the GPU; `finish` waits for their read-back (a pipelined run records the next step first). */
interface Launched {
  out: GPUBuffer;
  finish(trace: TraceEvent[] | null): Promise<MeasuredStep>;
}

function launchStep(model: GpuModel, ids: SidePool, chunks: SeqChunk[], label: string): Launched {
  const gpu = model.gpu;
  const r = record(model, ids, chunks, label, true);
  const submitted = r.step.submit();
  submitted.catch(() => {}); // awaited in finish; its errors reject the read-back too
  // taken now: a step recorded before this one is read back must not count here
  const end = gpu.counters.snapshot();
  return {
    out: r.out,
    finish: async (trace) => {
      const tokens = new Uint32Array(await r.read);
      const tRead = performance.now();
      ids.release(r.out); // a pipelined next step that reads them was submitted before
      const { gpuTimeNs } = await submitted;
      if (tokens.some((t) => t === NO_TOKEN)) throw new Error(`${label}: no finite logit in some row (the synthetic weights produced inf/NaN)`);
      const { created, submitCalled, submitted: tSubmitted } = r.step.times;
      const gpuMs = gpuTimeNs !== undefined && gpuTimeNs > 0 ? gpuTimeNs / 1e6 : null;
      if (trace) trace.push(...stepTraceEvents(label, r.step.times, { gpuMs, readbackDone: tRead, args: { dispatches: end.dispatches - r.start.dispatches } }));
      return {
        total: figures(countsSince(r.start, end), submitCalled - created),
        layers: r.layers,
        submitMs: tSubmitted - submitCalled,
        gpuMs,
        readbackWaitMs: tRead - tSubmitted,
        wallMs: tRead - created,
        tokens,
      };
    },
  };
}

/**
 * `steps` decode steps of `seqs` from the ids `first`. Pipelined: each step is recorded and
 * submitted before the previous one's ids are read back, its input ids copied on the GPU from
 * the previous step's (GpuModel.forward's gpuToken), as the engine pipelines decode steps.
 */
async function decodeSteps(model: GpuModel, pool: SidePool, seqs: number[], first: Uint32Array, steps: number, pipeline: boolean, label: (s: number) => string, trace: TraceEvent[] | null): Promise<MeasuredStep[]> {
  const measured: MeasuredStep[] = [];
  const fed = (ids: Uint32Array) => seqs.map((seq, i) => ({ seq, tokens: [ids[i]] }));
  let pending = launchStep(model, pool, fed(first), label(0));
  for (let s = 1; ; s++) {
    const last = s === steps;
    const feed = pending.out;
    const following = pipeline && !last ? launchStep(model, pool, seqs.map((seq, i) => ({ seq, tokens: [0], gpuToken: { buffer: feed, offset: 4 * i } })), label(s)) : null;
    const m = await pending.finish(trace);
    measured.push(m);
    if (last) return measured;
    pending = following ?? launchStep(model, pool, fed(m.tokens), label(s));
  }
}

let nextSeq = 1;

/** Builds one synthetic model (with `layers` layers) and measures decode steps at every batch size. */
export async function runStepModel(gpu: Gpu, o: StepBenchOptions, trace: TraceEvent[] | null): Promise<StepRun> {
  const log = o.log ?? (() => {});
  const full = typeof o.model === 'string' ? syntheticShape(o.model, o.scale) : o.model;
  const layers = o.layers ?? full.nLayers;
  if (!Number.isInteger(layers) || layers < 1 || layers > full.nLayers) throw new Error(`layers must be 1..${full.nLayers}, got ${layers}`);
  if (!Number.isInteger(o.steps) || o.steps < 1) throw new Error(`steps must be a positive integer, got ${o.steps}`);
  const shape: ModelShape = { ...full, nLayers: layers };
  const source = syntheticModel(shape, o.dtype, { seed: o.seed });
  const c = source.config;
  const blockSize = 16;
  const maxBatch = Math.max(...o.batches);
  const positions = o.context + o.warmup + o.steps;
  const layout = { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize, bytesPerElement: 4 };
  const blocks = maxBatch * c.nKvHeads * (Math.ceil(positions / blockSize) + 1);
  checkFits(gpu, source, { maxBatch, promptTokens: Math.max(1, o.context), kvPoolBytes: blocks * blockSize * c.headDim * 4 });
  log(`${full.name} ${o.dtype}: ${layers} of ${full.nLayers} layers`);
  const model = GpuModel.load(gpu, source, { kvMemoryBytes: blocks * blockBytes(layout), blockSize });
  const ids = new SidePool(gpu, 'next tokens');
  const random = mulberry32((o.seed ?? 1) * 7919);
  const prompt = (n: number) => Array.from({ length: n }, () => Math.floor(random() * c.vocabSize));
  const results: StepBatchResult[] = [];
  try {
    for (const B of o.batches) {
      const seqs = Array.from({ length: B }, () => nextSeq++);
      try {
        const first = o.context > 0 ? (await launchStep(model, ids, seqs.map((seq) => ({ seq, tokens: prompt(o.context) })), `prefill b=${B}`).finish(null)).tokens : Uint32Array.from(prompt(B));
        const warm = o.warmup > 0 ? await decodeSteps(model, ids, seqs, first, o.warmup, o.pipeline ?? false, (s) => `warm-up b=${B} ${s}`, null) : [];
        const contextTokens = model.kv.has(seqs[0]) ? model.kv.length(seqs[0]) : 0;
        const measured = await decodeSteps(model, ids, seqs, warm.at(-1)?.tokens ?? first, o.steps, o.pipeline ?? false, (s) => `decode b=${B} step ${s}`, trace);
        const next = measured.at(-1)!.tokens;
        const chunks = () => seqs.map((seq, i) => ({ seq, tokens: [next[i]] }));
        const recorded: Recorded[] = [];
        for (let s = 0; s < (o.recordRepeats ?? 15); s++) recorded.push(await recordOnly(model, ids, chunks(), `record-only b=${B} ${s}`));
        results.push(summarize(B, contextTokens, full.nLayers, measured, recorded));
        const r = results.at(-1)!;
        log(
          `  batch ${String(B).padStart(3)}: ${r.fullModel.dispatches} dispatches, ${r.fullModel.bindGroupsCreated} bind groups, ${r.fullModel.buffersCreated} buffers, ` +
            `${r.fullModel.writeBufferCalls} writes / step; record ${r.fullModel.recordMs.toFixed(2)} ms (${full.nLayers} layers)`,
        );
      } finally {
        for (const s of seqs) model.release(s);
      }
    }
  } finally {
    ids.destroy();
    model.destroy();
    gpu.pool.destroy();
  }
  return { model: full.name, dtype: o.dtype, scale: o.scale, shape: full, layersMeasured: layers, pipeline: o.pipeline ?? false, results };
}

/** Typical layers: layer 0 also holds what the forward pass records before it (uploads, embedding). */
const typicalLayers = (steps: Recorded[]) => steps.flatMap((s) => (s.layers.length > 1 ? s.layers.slice(1) : s.layers));

function summarize(batch: number, contextTokens: number, nLayers: number, steps: MeasuredStep[], recordOnly: Recorded[]): StepBatchResult {
  const measuredLayers = steps[0].layers.length;
  // counts from the steps run; recording times from the recorded-only steps when there are any
  const timed = recordOnly.length ? recordOnly : steps;
  const total = { ...medianOf(steps.map((s) => s.total)), recordMs: median(timed.map((s) => s.total.recordMs)) };
  const perLayer = { ...medianOf(typicalLayers(steps)), recordMs: median(typicalLayers(timed).map((l) => l.recordMs)) };
  const fixed = combine(total, perLayer, (t, p) => t - measuredLayers * p);
  const first = steps[0].total;
  return {
    batch,
    contextTokens,
    measured: {
      ...medianOf(steps.map((s) => s.total)),
      submitMs: median(steps.map((s) => s.submitMs)),
      gpuMs: steps.every((s) => s.gpuMs !== null) ? median(steps.map((s) => s.gpuMs!)) : null,
      readbackWaitMs: median(steps.map((s) => s.readbackWaitMs)),
      wallMs: median(steps.map((s) => s.wallMs)),
    },
    perLayer,
    fixed,
    fullModel: combine(fixed, perLayer, (f, p) => f + nLayers * p),
    countsVaried: steps.some((s) => FIGURE_KEYS.some((k) => k !== 'recordMs' && s.total[k] !== first[k])),
  };
}

export async function runStepBench(gpu: Gpu, runs: StepBenchOptions[], withTrace: boolean): Promise<StepBenchReport> {
  const trace: TraceEvent[] = [];
  const out: StepRun[] = [];
  for (const r of runs) out.push(await runStepModel(gpu, r, withTrace ? trace : null));
  return { adapter: gpu.adapter, features: gpu.features, date: new Date().toISOString(), runs: out, trace };
}

// ---------------------------------------------------------------------------------------------
// Markdown

const ms = (x: number) => (x >= 10 ? x.toFixed(1) : x.toFixed(2));
const kb = (b: number) => (b / 1024).toFixed(1);

/** A stable key for a run's block in docs/benchmarks.md. */
export function stepRunKey(r: StepRun): string {
  return `step-${r.model.split('/')[0].toLowerCase().replace(/[^a-z0-9.]+/g, '-')}-${r.scale}-${r.dtype}${r.pipeline ? '-pipelined' : ''}`;
}

export function stepRunMarkdown(report: StepBenchReport, r: StepRun): string {
  const a = report.adapter;
  const s = r.shape;
  const device = `${a.description} (${a.vendor} ${a.architecture})${a.isSoftware ? ', software device' : ''}`;
  const partial = r.layersMeasured < s.nLayers;
  const row = (label: string, f: StepFigures) =>
    `| ${label} | ${f.dispatches} | ${f.computePasses} | ${f.submits} | ${f.bindGroupsCreated} | ${f.buffersCreated} | ${f.writeBufferCalls} | ${kb(f.writeBufferBytes)} | ${ms(f.recordMs)} |`;
  const lines = [
    `#### ${r.model}, ${r.dtype}: one decode step${r.pipeline ? ', pipelined' : ''}`,
    '',
    `${r.scale === 'full' ? 'Full shapes' : 'REDUCED shapes (width / 8)'}: ${s.nLayers} layers, dim ${s.dim}, ffn ${s.ffn}, ${s.nHeads}/${s.nKvHeads} heads x ${s.headDim}, vocab ${s.vocab}. ` +
      (partial
        ? `Measured with ${r.layersMeasured} of the ${s.nLayers} layers; the whole-model rows are the fixed part + ${s.nLayers} x the per-layer part (every layer records the same work). `
        : '') +
      (r.pipeline ? 'Pipelined: each step recorded and submitted before the previous step\'s ids were read back, fed them on the GPU (read-back wait overlaps the next recording). ' : '') +
      `Context ${r.results[0]?.contextTokens ?? 0} tokens per sequence when measured. Counts: medians of the steps run; host record ms: median of steps recorded and discarded (not run, so the GPU's work does not disturb the host). Device: ${device} (${report.date.slice(0, 10)}).`,
    '',
    '| batch | dispatches | compute passes | submits | bind groups created | GPU buffers created | writeBuffer calls | writeBuffer KiB | host record ms |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.results.flatMap((x) => [row(`${x.batch}: whole model`, x.fullModel), row(`${x.batch}: per layer`, x.perLayer)]),
    '',
    '| batch | steps run: record ms | submit ms | GPU ms | read-back wait ms | wall ms |',
    '|---|---:|---:|---:|---:|---:|',
    ...r.results.map((x) => `| ${x.batch} | ${ms(x.measured.recordMs)} | ${ms(x.measured.submitMs)} | ${x.measured.gpuMs === null ? 'n/a' : ms(x.measured.gpuMs)} | ${ms(x.measured.readbackWaitMs)} | ${ms(x.measured.wallMs)} |`),
  ];
  if (r.results.some((x) => x.countsVaried)) lines.push('', 'Counts varied between the measured steps: steady state was not reached.');
  return lines.join('\n') + '\n';
}

export function stepBenchMarkdown(report: StepBenchReport): string {
  return report.runs.map((r) => stepRunMarkdown(report, r)).join('\n');
}

import { NO_TOKEN, argmax } from '../kernels/sampling.ts';
import { withDocSection } from './results.ts';
import type { WeightFormat } from '../kernels/weights.ts';
import type { AdapterSummary, GpuFeatures } from '../src/gpu/adapter.ts';
import { BufferPool, align } from '../src/gpu/buffers.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { blockBytes } from '../src/kv/paged_kv.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import type { ModelSource } from '../src/model/source.ts';
import { syntheticModel, syntheticShape } from '../src/model/synthetic.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { measureCopyBandwidth } from './cases/copy.ts';
import type { BenchScale, ModelShape } from './shapes.ts';

/**
 * End-to-end generation benchmark on synthetic models (random weights in a real model's shapes and
 * GGUF formats, see src/model/synthetic.ts). Per batch size B: one batched prefill step of
 * `promptTokens` tokens per sequence, then `decodeTokens` decode steps of B tokens, each one
 * forward pass + GPU argmax + readback of the B token ids, fed back as the next tokens. Every step
 * is timed by GPU timestamps when the device has them (wall clock for a step whose timestamps read
 * 0) and also by the wall clock around record + submit + readback.
 *
 * Decode roofline: a decode step must read every weight once (all layers, the output head, and B
 * rows of the embedding table) plus the K and V of every cached position of every sequence; those
 * bytes over the step time, divided by the copy kernel's bandwidth measured in the same run, is the
 * fraction of the memory roofline reached.
 */

export interface GenerateBenchOptions {
  /** MODEL_SHAPES key (e.g. "llama-3-8b"), or a shape (tests) */
  model: string | ModelShape;
  dtype: WeightFormat;
  /** for a model given by key: full shapes, or width / 8 (software devices) */
  scale: BenchScale;
  batches: number[];
  /** prompt tokens per sequence, prefilled in one batched step */
  promptTokens: number;
  /** decode steps after the prefill */
  decodeTokens: number;
  /** random prompts and weights (default 1) */
  seed?: number;
  /** an untimed prefill (of at most 16 tokens) and decode step per batch size first: pipelines, buffer pool (default true) */
  warmup?: boolean;
  log?: (line: string) => void;
}

export interface GenerateBatchResult {
  batch: number;
  promptTokens: number;
  decodeSteps: number;
  prefillSeconds: number;
  /** batch * promptTokens / prefill time */
  prefillTokensPerSecond: number;
  decodeSeconds: number;
  /** batch * decode steps / decode time */
  decodeTokensPerSecond: number;
  meanDecodeStepMs: number;
  /** decode tokens/s by the wall clock around record + submit + readback (CPU overhead included) */
  wallDecodeTokensPerSecond: number;
  /** steps timed by the wall clock because the device gave no timestamps (or they read 0) */
  wallClockSteps: number;
  /** weights read by one decode step: every layer tensor, output norm and head, `batch` embedding rows */
  weightBytesPerStep: number;
  /** K and V bytes attention reads per decode step, mean over the steps */
  meanKvBytesPerStep: number;
  /** (weights + KV bytes) per decode step / step time, GB/s */
  decodeGBs: number;
  /** decodeGBs over the copy bandwidth */
  rooflineFraction: number;
}

export interface GenerateRun {
  /** the shape's name; reduced shapes read "<model>/8 (reduced)" */
  model: string;
  dtype: WeightFormat;
  scale: BenchScale;
  shape: ModelShape;
  architecture: string;
  tiedEmbeddings: boolean;
  /** bytes of all weight tensors */
  weightBytes: number;
  kvBytesPerElement: number;
  /** synthesis + upload */
  loadSeconds: number;
  results: GenerateBatchResult[];
}

export interface GenerateBenchReport {
  adapter: AdapterSummary;
  features: GpuFeatures;
  date: string;
  timing: 'gpu-timestamps' | 'wall-clock';
  copyBandwidthGBs: number;
  runs: GenerateRun[];
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** Throws, before any weight is generated, if a tensor, KV pool or activation exceeds the device's buffer limits. */
export function checkFits(gpu: Gpu, source: ModelSource, o: { maxBatch: number; promptTokens: number; kvPoolBytes: number }): void {
  const { maxBufferSize, maxStorageBufferBindingSize } = gpu.limits;
  const limit = Math.min(maxBufferSize, maxStorageBufferBindingSize);
  const limits = `this device's maxBufferSize is ${mib(maxBufferSize)} and maxStorageBufferBindingSize ${mib(maxStorageBufferBindingSize)}`;
  for (const t of source.tensors.values()) {
    if (align(t.bytes, 4) > limit) {
      throw new Error(`${source.config.name}: tensor ${t.name} [${t.dims.join(', ')}] ${t.typeName} is ${mib(t.bytes)}, more than one storage buffer can hold: ${limits}. Try a smaller --dtype or --scale reduced.`);
    }
  }
  if (o.kvPoolBytes > limit) throw new Error(`${source.config.name}: one layer's KV pool needs ${mib(o.kvPoolBytes)}: ${limits}. Lower --batch or --prompt-tokens/--decode-tokens.`);
  const c = source.config;
  const tokens = o.maxBatch * o.promptTokens;
  // scratch buffers come from the pool in power-of-two size classes and are bound whole
  const widest = BufferPool.sizeClass(tokens * Math.max(c.dim, c.nHeads * c.headDim, c.ffn) * 4);
  const logits = BufferPool.sizeClass(o.maxBatch * c.vocabSize * 4);
  if (Math.max(widest, logits) > limit) {
    throw new Error(`${c.name}: batch ${o.maxBatch} x ${o.promptTokens} prompt tokens needs activation buffers of ${mib(Math.max(widest, logits))}: ${limits}. Lower --batch or --prompt-tokens.`);
  }
}

interface StepTime {
  tokens: Uint32Array;
  /** GPU time when timestamps gave one, else wall */
  seconds: number;
  wallSeconds: number;
  wallClock: boolean;
}

/** One forward pass over `chunks` + greedy argmax + readback of the next token ids, timed. */
async function timedStep(model: GpuModel, chunks: SeqChunk[], label: string): Promise<StepTime> {
  const t0 = performance.now();
  const step = model.gpu.step({ label, timestamps: true });
  const { logits, rows } = model.forward(step, chunks);
  const out = step.scratch(rows * 4, 'next tokens');
  argmax(step, { logits, out, rows, cols: model.config.vocabSize });
  const read = step.readback(out, 0, rows * 4);
  const { gpuTimeNs } = await step.submit();
  const tokens = new Uint32Array(await read);
  const wallSeconds = (performance.now() - t0) / 1e3;
  if (tokens.some((t) => t === NO_TOKEN)) throw new Error(`${label}: no finite logit in some row (the synthetic weights produced inf/NaN)`);
  const timed = gpuTimeNs !== undefined && gpuTimeNs > 0;
  return { tokens, seconds: timed ? gpuTimeNs / 1e9 : wallSeconds, wallSeconds, wallClock: !timed };
}

/** Bytes of weights one decode step of `batch` sequences reads. */
export function decodeWeightBytes(source: ModelSource, batch: number): number {
  let total = 0;
  const head = source.tensors.get('output.weight') ?? source.tensors.get('token_embd.weight')!;
  for (const t of source.tensors.values()) {
    if (t.name.startsWith('blk.') || t.name === 'output_norm.weight' || t === head) total += t.bytes;
  }
  const emb = source.tensors.get('token_embd.weight')!;
  if (emb !== head) total += batch * (emb.bytes / emb.dims[1]); // one row per sequence
  return total;
}

let nextSeq = 1;

/** Loads one synthetic model and benchmarks it at every batch size. */
export async function runGenerateModel(gpu: Gpu, copyBytesPerSecond: number, o: GenerateBenchOptions): Promise<GenerateRun> {
  const log = o.log ?? (() => {});
  const shape = typeof o.model === 'string' ? syntheticShape(o.model, o.scale) : o.model;
  const P = o.promptTokens;
  const D = o.decodeTokens;
  const batches = [...o.batches];
  if (batches.length === 0 || batches.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`batch sizes must be positive integers, got ${batches.join(',')}`);
  if (!Number.isInteger(P) || P < 1) throw new Error(`prompt tokens must be a positive integer, got ${P}`);
  if (!Number.isInteger(D) || D < 1) throw new Error(`decode tokens must be a positive integer, got ${D}`);
  const source = syntheticModel(shape, o.dtype, { seed: o.seed });
  const c = source.config;
  if (P + D > c.contextLength) throw new Error(`${shape.name}: ${P} prompt + ${D} decode tokens exceed the context length ${c.contextLength}`);

  // KV: room for the largest batch's full sequences, one spare block per head row
  const blockSize = 16;
  const maxBatch = Math.max(...batches);
  const layout = { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize, bytesPerElement: 4 };
  const blocks = maxBatch * c.nKvHeads * (Math.ceil((P + D) / blockSize) + 1);
  checkFits(gpu, source, { maxBatch, promptTokens: P, kvPoolBytes: blocks * blockSize * c.headDim * 4 });

  const weightBytes = [...source.tensors.values()].reduce((n, t) => n + t.bytes, 0);
  log(`${shape.name} ${o.dtype}: generating and uploading ${mib(weightBytes)} of synthetic weights`);
  const t0 = performance.now();
  const model = GpuModel.load(gpu, source, { kvMemoryBytes: blocks * blockBytes(layout), blockSize });
  const loadSeconds = (performance.now() - t0) / 1e3;
  const kvBytesPerElement = model.kv.layout.bytesPerElement;
  const kvBytesPerToken = 2 * c.nLayers * c.nKvHeads * c.headDim * kvBytesPerElement;
  log(`  loaded in ${loadSeconds.toFixed(1)} s`);

  const random = mulberry32((o.seed ?? 1) * 7919);
  const prompt = (n: number) => Array.from({ length: n }, () => Math.floor(random() * c.vocabSize));
  const results: GenerateBatchResult[] = [];
  try {
    for (const B of batches) {
      if (o.warmup !== false) {
        const seqs = Array.from({ length: B }, () => nextSeq++);
        try {
          const first = await timedStep(model, seqs.map((seq) => ({ seq, tokens: prompt(Math.min(P, 16)) })), `warm-up prefill b=${B}`);
          await timedStep(model, seqs.map((seq, i) => ({ seq, tokens: [first.tokens[i]] })), `warm-up decode b=${B}`);
        } finally {
          for (const s of seqs) model.release(s);
        }
      }
      const seqs = Array.from({ length: B }, () => nextSeq++);
      try {
        const pre = await timedStep(model, seqs.map((seq) => ({ seq, tokens: prompt(P) })), `prefill b=${B}`);
        let next = pre.tokens;
        let decodeSeconds = 0;
        let wallSeconds = 0;
        let wallClockSteps = pre.wallClock ? 1 : 0;
        let kvBytes = 0;
        for (let s = 0; s < D; s++) {
          const r = await timedStep(model, seqs.map((seq, i) => ({ seq, tokens: [next[i]] })), `decode b=${B} step ${s}`);
          next = r.tokens;
          decodeSeconds += r.seconds;
          wallSeconds += r.wallSeconds;
          if (r.wallClock) wallClockSteps++;
          // attention read every cached position of every sequence, the new one included
          for (const seq of seqs) kvBytes += model.kv.length(seq) * kvBytesPerToken;
        }
        const weightBytesPerStep = decodeWeightBytes(source, B);
        const bytesPerSecond = (D * weightBytesPerStep + kvBytes) / decodeSeconds;
        const result: GenerateBatchResult = {
          batch: B,
          promptTokens: P,
          decodeSteps: D,
          prefillSeconds: pre.seconds,
          prefillTokensPerSecond: (B * P) / pre.seconds,
          decodeSeconds,
          decodeTokensPerSecond: (B * D) / decodeSeconds,
          meanDecodeStepMs: (1e3 * decodeSeconds) / D,
          wallDecodeTokensPerSecond: (B * D) / wallSeconds,
          wallClockSteps,
          weightBytesPerStep,
          meanKvBytesPerStep: kvBytes / D,
          decodeGBs: bytesPerSecond / 1e9,
          rooflineFraction: bytesPerSecond / copyBytesPerSecond,
        };
        results.push(result);
        log(
          `  batch ${String(B).padStart(3)}: prefill ${result.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${result.decodeTokensPerSecond.toFixed(2)} tok/s ` +
            `(${result.meanDecodeStepMs.toFixed(1)} ms/step, ${(100 * result.rooflineFraction).toFixed(1)}% of copy bandwidth)`,
        );
      } finally {
        for (const s of seqs) model.release(s);
      }
    }
  } finally {
    model.destroy();
    // every step has completed: drop the pooled activations sized for this model before the next one
    gpu.pool.destroy();
  }
  return {
    model: shape.name,
    dtype: o.dtype,
    scale: o.scale,
    shape,
    architecture: c.architecture,
    tiedEmbeddings: !source.tensors.has('output.weight'),
    weightBytes,
    kvBytesPerElement,
    loadSeconds,
    results,
  };
}

/** Measures the copy bandwidth once, then runs every (model, dtype) configuration. */
export async function runGenerateBench(gpu: Gpu, runs: GenerateBenchOptions[], log?: (line: string) => void): Promise<GenerateBenchReport> {
  const scale = runs.some((r) => r.scale === 'full') ? 'full' : 'reduced';
  const copyBytesPerSecond = await measureCopyBandwidth(gpu, scale);
  log?.(`copy bandwidth ${(copyBytesPerSecond / 1e9).toFixed(2)} GB/s`);
  const out: GenerateRun[] = [];
  for (const r of runs) out.push(await runGenerateModel(gpu, copyBytesPerSecond, { ...r, log: r.log ?? log }));
  return {
    adapter: gpu.adapter,
    features: gpu.features,
    date: new Date().toISOString(),
    timing: gpu.features.timestampQuery ? 'gpu-timestamps' : 'wall-clock',
    copyBandwidthGBs: copyBytesPerSecond / 1e9,
    runs: out,
  };
}

// ---------------------------------------------------------------------------------------------
// Markdown

const num = (x: number, digits = 1) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(digits) : x.toPrecision(3));
const mb = (b: number) => (b / 1e6).toFixed(b >= 1e8 ? 0 : 2);

/** A stable key for a run's block in docs/benchmarks.md. */
export function runKey(r: GenerateRun): string {
  return `${r.model.split('/')[0].toLowerCase().replace(/[^a-z0-9.]+/g, '-')}-${r.scale}-${r.dtype}`;
}

/** One run's heading, description and table. */
export function generateRunMarkdown(report: GenerateBenchReport, r: GenerateRun): string {
  const s = r.shape;
  const a = report.adapter;
  const device = `${a.description} (${a.vendor} ${a.architecture})${a.isSoftware ? ', software device' : ''}`;
  const scale = r.scale === 'full' ? 'full shapes' : 'REDUCED shapes (width / 8, head dims kept)';
  const lines = [
    `#### ${r.model}${r.scale === 'reduced' && !r.model.includes('reduced') ? ' (reduced)' : ''}, ${r.dtype}`,
    '',
    `${scale}: ${s.nLayers} layers, dim ${s.dim}, ffn ${s.ffn}, ${s.nHeads}/${s.nKvHeads} heads x ${s.headDim}, vocab ${s.vocab}, ${r.architecture}` +
      `${r.tiedEmbeddings ? ', tied embeddings' : ''}. Synthetic random weights, every matrix ${r.dtype}, norms f32: ${mb(r.weightBytes)} MB; KV cache ${r.kvBytesPerElement === 2 ? 'f16' : 'f32'}. ` +
      `Prompt ${r.results[0]?.promptTokens ?? 0} tokens per sequence in one batched prefill step, then ${r.results[0]?.decodeSteps ?? 0} greedy decode steps. ` +
      `Device: ${device}; ${report.timing === 'gpu-timestamps' ? 'GPU timestamps' : 'wall clock'}; copy bandwidth ${num(report.copyBandwidthGBs, 2)} GB/s (same run, ${report.date.slice(0, 10)}).`,
    '',
    '| batch | prefill tok/s | decode tok/s | ms / decode step | decode tok/s, wall clock | MB read / step (weights + KV) | GB/s | % of copy BW |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.results.map(
      (x) =>
        `| ${x.batch} | ${num(x.prefillTokensPerSecond)} | ${num(x.decodeTokensPerSecond, 2)} | ${num(x.meanDecodeStepMs)} | ${num(x.wallDecodeTokensPerSecond, 2)} | ` +
        `${mb(x.weightBytesPerStep)} + ${mb(x.meanKvBytesPerStep)} | ${num(x.decodeGBs, 2)} | ${(100 * x.rooflineFraction).toFixed(1)}% |`,
    ),
  ];
  return lines.join('\n') + '\n';
}

export function generateBenchMarkdown(report: GenerateBenchReport): string {
  return report.runs.map((r) => generateRunMarkdown(report, r)).join('\n');
}

/**
 * Puts each run's block into the `<!-- tag:begin -->` ... `<!-- tag:end -->` section of a document:
 * a block with the same key (model, scale, dtype) is replaced, others are appended, so separate
 * invocations (q4_0, then f16) accumulate.
 */
/** Replaces each run's block (by key) in a docs section body, or appends it: runs accumulate. */
export function mergeRunBlocks(section: string, blocks: { key: string; markdown: string }[]): string {
  let body = section;
  for (const b of blocks) {
    const open = `<!-- generate-run ${b.key} -->`;
    const close = `<!-- /generate-run ${b.key} -->`;
    const block = `${open}\n${b.markdown.trimEnd()}\n${close}`;
    const a = body.indexOf(open);
    const z = body.indexOf(close);
    if (a >= 0 && z > a) body = body.slice(0, a) + block + body.slice(z + close.length);
    else body = `${body.trimEnd()}\n\n${block}\n`;
  }
  return `\n${body.trim()}\n`;
}

export function mergeDocSection(doc: string, tag: string, blocks: { key: string; markdown: string }[]): string {
  return withDocSection(doc, tag, (body) => mergeRunBlocks(body, blocks));
}

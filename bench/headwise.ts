/**
 * Head-wise KV (issue 14, docs/headwise.md). Memory: KV bytes per sequence and the most sequences a
 * KV budget holds, against context length, for a share of retrieval heads against the full cache.
 * Every number comes from the real bookkeeping (PagedKvTables with the pattern's columns): a
 * sequence's blocks, and a pool of `kvMemory` filled with sequences until it refuses one.
 * Timing: decode attention alone over such tables on a device, against the full cache.
 */
import type { Gpu } from '../src/gpu/gpu.ts';
import { type HeadColumns, headColumns, headPattern } from '../src/kv/head_pattern.ts';
import { KvPoolExhausted, type KvLayout, PagedKvTables, blockBytes, blocksForBudget } from '../src/kv/paged_kv.ts';
import { MODEL_SHAPES, type ModelShape } from '../src/model/shapes.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { headwiseDecodeCase } from './cases/attention.ts';
import type { BenchScale } from './shapes.ts';
import { timeRuns } from './timing.ts';

export interface HeadwiseBenchOptions {
  contexts: number[];
  /** retrieval-head fractions (per layer); 1 is the full cache, always included */
  fractions: number[];
  sink: number;
  recent: number;
  blockSize: number;
  /** KV cache budget, bytes */
  kvMemory: number;
  bytesPerElement: number;
  seed: number;
}

export interface HeadwiseRow {
  model: string;
  attention: 'MHA' | 'GQA';
  context: number;
  /** retrieval heads per layer / KV heads per layer */
  fraction: number;
  retrievalHeads: number;
  kvHeads: number;
  bytesPerSequence: number;
  /** full-cache bytes / these bytes */
  reduction: number;
  maxSequences: number;
}

export interface HeadwiseReport {
  options: HeadwiseBenchOptions;
  rows: HeadwiseRow[];
  goals: { what: string; reduction: number; goal: number; met: boolean }[];
}

/** The shapes of the issue: Llama-3-8B as MHA (its 32 query heads each with a KV head), Llama-3-8B and Llama-3.2-1B (GQA). */
export function headwiseShapes(): ModelShape[] {
  const l8 = MODEL_SHAPES['llama-3-8b'];
  return [{ ...l8, name: `${l8.name} as MHA`, nKvHeads: l8.nHeads }, l8, MODEL_SHAPES['llama-3.2-1b']];
}

/** The storage of a pattern of `fraction` retrieval heads per layer for `shape` (seeded gates, binarised as `--retrieval-fraction`). */
function columnsFor(shape: ModelShape, fraction: number, o: { seed: number; sink: number; recent: number }): HeadColumns {
  const rand = mulberry32(o.seed);
  const gates = Array.from({ length: shape.nLayers }, () => Array.from({ length: shape.nKvHeads }, rand));
  return headColumns(headPattern(gates, { retrievalFraction: fraction, sink: o.sink, recent: o.recent }));
}

/** Tables for `shape` with a pattern of `fraction` retrieval heads per layer (1: the full cache). */
function tablesFor(shape: ModelShape, fraction: number, o: HeadwiseBenchOptions): { kv: PagedKvTables; retrievalHeads: number } {
  const layout: KvLayout = { nLayers: shape.nLayers, nKvHeads: shape.nKvHeads, headDim: shape.headDim, blockSize: o.blockSize, bytesPerElement: o.bytesPerElement };
  const numBlocks = blocksForBudget(layout, o.kvMemory);
  if (fraction >= 1) return { kv: new PagedKvTables(layout, numBlocks), retrievalHeads: shape.nKvHeads };
  const { fullColumns } = columnsFor(shape, fraction, o);
  return { kv: new PagedKvTables(layout, numBlocks, { fullColumns, sink: o.sink, recent: o.recent }), retrievalHeads: fullColumns };
}

/** Sequences of `context` tokens the pool takes before it refuses one. */
function fill(kv: PagedKvTables, context: number): number {
  let n = 0;
  try {
    for (;;) kv.reserve(n++, context);
  } catch (err) {
    if (!(err instanceof KvPoolExhausted)) throw err;
  }
  for (let s = 0; s < n; s++) kv.free(s);
  return n - 1;
}

export function runHeadwiseBench(o: HeadwiseBenchOptions, shapes = headwiseShapes()): HeadwiseReport {
  const fractions = [...new Set([1, ...o.fractions])].sort((a, b) => b - a);
  const rows: HeadwiseRow[] = [];
  for (const shape of shapes) {
    const attention = shape.nKvHeads === shape.nHeads ? 'MHA' : 'GQA';
    for (const context of o.contexts) {
      let full = 0;
      for (const fraction of fractions) {
        const { kv, retrievalHeads } = tablesFor(shape, fraction, o);
        const bytesPerSequence = kv.blocksNeeded(-1, context) * blockBytes(kv.layout);
        if (fraction >= 1) full = bytesPerSequence;
        rows.push({ model: shape.name, attention, context, fraction, retrievalHeads, kvHeads: shape.nKvHeads, bytesPerSequence, reduction: full / bytesPerSequence, maxSequences: fill(kv, context) });
      }
    }
  }
  const at = (attention: string, fraction: number) => rows.filter((r) => r.attention === attention && r.fraction === fraction && r.context === 32768);
  const goals = [
    { attention: 'MHA', fraction: 0.25, goal: 3.5 },
    { attention: 'GQA', fraction: 0.5, goal: 1.8 },
  ].flatMap((g) => at(g.attention, g.fraction).map((r) => ({ what: `${r.model}, ${g.fraction * 100}% retrieval heads, 32K context`, reduction: r.reduction, goal: g.goal, met: r.reduction >= g.goal })));
  return { options: o, rows, goals };
}

const human = (bytes: number) => (bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`);
const ctx = (n: number) => (n % 1024 === 0 ? `${n / 1024}K` : String(n));

export function headwiseMarkdown(r: HeadwiseReport): string {
  const o = r.options;
  const fractions = [...new Set(r.rows.map((x) => x.fraction))];
  const lines = [
    `KV memory per sequence and sequences a ${human(o.kvMemory)} KV cache holds (${o.bytesPerElement}-byte elements, ${o.blockSize}-token blocks), streaming heads keeping sink ${o.sink} + recent ${o.recent} tokens; retrieval heads as a share of each layer's KV heads (per-layer top fraction of seeded gates). From the block bookkeeping (PagedKvTables), not a device.`,
    '',
  ];
  for (const model of [...new Set(r.rows.map((x) => x.model))]) {
    const rows = r.rows.filter((x) => x.model === model);
    lines.push(`**${model}** (${rows[0].attention}, ${rows[0].kvHeads} KV heads per layer)`, '');
    lines.push(`| context | ${fractions.map((f) => (f >= 1 ? 'full: per seq | seqs' : `${f * 100}%: per seq | less | seqs`)).join(' | ')} |`);
    lines.push(`|---:|${fractions.map((f) => (f >= 1 ? '---:|---:|' : '---:|---:|---:|')).join('')}`);
    for (const context of [...new Set(rows.map((x) => x.context))]) {
      const cells = fractions.map((f) => {
        const x = rows.find((y) => y.context === context && y.fraction === f)!;
        return f >= 1 ? `${human(x.bytesPerSequence)} | ${x.maxSequences}` : `${human(x.bytesPerSequence)} | ${x.reduction.toFixed(2)}x | ${x.maxSequences}`;
      });
      lines.push(`| ${ctx(context)} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  lines.push('Goals (issue 14):', '');
  for (const g of r.goals) lines.push(`- ${g.what}: ${g.reduction.toFixed(2)}x less KV memory (goal >= ${g.goal}x): ${g.met ? 'met' : 'NOT met'}`);
  lines.push('');
  return lines.join('\n');
}

// ------------------------------------------------------------------------------------------------
// Timing: decode attention alone

export interface HeadwiseTimingOptions {
  contexts: number[];
  /** retrieval-head fractions (per layer); the full cache is always timed */
  fractions: number[];
  sink: number;
  recent: number;
  /** sequences per decode step */
  batch: number;
  seed: number;
  /** samples per case (reduced: fewer, for a software device) */
  scale: BenchScale;
}

export interface HeadwiseTimingRow {
  model: string;
  context: number;
  fraction: number;
  retrievalHeads: number;
  kvHeads: number;
  /** median GPU time of one decode-attention dispatch (with its split-K merge), µs */
  microseconds: number;
  /** full-cache time / this time */
  speedup: number;
}

export interface HeadwiseTimingReport {
  device: string;
  software: boolean;
  options: HeadwiseTimingOptions;
  rows: HeadwiseTimingRow[];
  goals: { what: string; speedup: number; goal: number; met: boolean }[];
}

/** The shapes the timing half runs: Llama-3.2-1B and Llama-3-8B (GQA); on a GPU also Llama-3-8B as MHA. */
export function headwiseTimingShapes(software: boolean): ModelShape[] {
  const [mha, ...gqa] = headwiseShapes();
  return software ? gqa.reverse() : [...gqa.reverse(), mha];
}

/**
 * Decode attention time of one layer against context, for each fraction of retrieval heads
 * (layer 0's columns of the seeded pattern) against the full cache: `batch` sequences of `context`
 * tokens, f32 K/V in 16-token blocks, the kernel alone (bench/cases/attention.ts headwiseDecodeCase).
 */
export async function runHeadwiseTiming(gpu: Gpu, o: HeadwiseTimingOptions, shapes: ModelShape[], onRow?: (r: HeadwiseTimingRow) => void): Promise<HeadwiseTimingReport> {
  const fractions = [...new Set([1, ...o.fractions])].sort((a, b) => b - a);
  const rows: HeadwiseTimingRow[] = [];
  for (const shape of shapes) {
    for (const context of o.contexts) {
      let full = 0;
      for (const fraction of fractions) {
        const columns = fraction >= 1 ? undefined : columnsFor(shape, fraction, o);
        const hw = columns && { fullColumns: columns.fullColumns, sink: o.sink, recent: o.recent, columnOf: columns.columnOf.subarray(0, shape.nKvHeads) };
        const prepared = headwiseDecodeCase(shape, o.batch, context, hw).setup(gpu);
        let seconds: number;
        try {
          seconds = await timeRuns(gpu, (step, i) => prepared.run(step, i), o.scale);
        } finally {
          prepared.dispose();
        }
        if (fraction >= 1) full = seconds;
        const row = { model: shape.name, context, fraction, retrievalHeads: columns?.fullColumns ?? shape.nKvHeads, kvHeads: shape.nKvHeads, microseconds: seconds * 1e6, speedup: full / seconds };
        rows.push(row);
        onRow?.(row);
      }
    }
  }
  const goals = rows
    .filter((r) => r.fraction === 0.25 && r.context === 32768)
    .map((r) => ({ what: `${r.model}, 25% retrieval heads, 32K context`, speedup: r.speedup, goal: 2, met: r.speedup >= 2 }));
  return { device: `${gpu.adapter.description}${gpu.adapter.isSoftware ? ' (software)' : ''}`, software: gpu.adapter.isSoftware, options: o, rows, goals };
}

export function headwiseTimingMarkdown(r: HeadwiseTimingReport): string {
  const o = r.options;
  const fractions = [...new Set(r.rows.map((x) => x.fraction))];
  const lines = [
    `Decode attention of one layer alone (split-K kernel and its merge), ${o.batch} sequence${o.batch > 1 ? 's' : ''} per step, f32 K/V in 16-token blocks, streaming heads keeping sink ${o.sink} + recent ${o.recent} tokens, on ${r.device}: median time per dispatch and speedup over the full cache.`,
    '',
  ];
  for (const model of [...new Set(r.rows.map((x) => x.model))]) {
    const rows = r.rows.filter((x) => x.model === model);
    lines.push(`**${model}** (${rows[0].kvHeads} KV heads per layer)`, '');
    lines.push(`| context | ${fractions.map((f) => (f >= 1 ? 'full: µs' : `${f * 100}%: µs | faster`)).join(' | ')} |`);
    lines.push(`|---:|${fractions.map((f) => (f >= 1 ? '---:|' : '---:|---:|')).join('')}`);
    for (const context of [...new Set(rows.map((x) => x.context))]) {
      const cells = fractions.map((f) => {
        const x = rows.find((y) => y.context === context && y.fraction === f)!;
        return f >= 1 ? x.microseconds.toFixed(0) : `${x.microseconds.toFixed(0)} | ${x.speedup.toFixed(2)}x`;
      });
      lines.push(`| ${ctx(context)} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  if (r.goals.length) {
    lines.push(`Goal (issue 14, on a GPU): decode attention >= 2x faster than full attention at 32K context with 25% retrieval heads.${r.software ? ' This is a software device, so the goal is not judged here.' : ''}`, '');
    for (const g of r.goals) lines.push(`- ${g.what}: ${g.speedup.toFixed(2)}x${r.software ? '' : `: ${g.met ? 'met' : 'NOT met'}`}`);
    lines.push('');
  }
  return lines.join('\n');
}

/**
 * Head-wise KV memory (issue 14, docs/headwise.md): KV bytes per sequence and the most sequences a
 * KV budget holds, against context length, for a share of retrieval heads against the full cache.
 * Every number comes from the real bookkeeping (PagedKvTables with the pattern's columns): a
 * sequence's blocks, and a pool of `kvMemory` filled with sequences until it refuses one.
 */
import { headColumns, headPattern } from '../src/kv/head_pattern.ts';
import { KvPoolExhausted, type KvLayout, PagedKvTables, blockBytes, blocksForBudget } from '../src/kv/paged_kv.ts';
import { MODEL_SHAPES, type ModelShape } from '../src/model/shapes.ts';
import { mulberry32 } from '../src/util/rng.ts';

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

/** Tables for `shape` with a pattern of `fraction` retrieval heads per layer (seeded gates, binarised as `--retrieval-fraction`). */
function tablesFor(shape: ModelShape, fraction: number, o: HeadwiseBenchOptions): { kv: PagedKvTables; retrievalHeads: number } {
  const layout: KvLayout = { nLayers: shape.nLayers, nKvHeads: shape.nKvHeads, headDim: shape.headDim, blockSize: o.blockSize, bytesPerElement: o.bytesPerElement };
  const numBlocks = blocksForBudget(layout, o.kvMemory);
  if (fraction >= 1) return { kv: new PagedKvTables(layout, numBlocks), retrievalHeads: shape.nKvHeads };
  const rand = mulberry32(o.seed);
  const gates = Array.from({ length: shape.nLayers }, () => Array.from({ length: shape.nKvHeads }, rand));
  const { fullColumns } = headColumns(headPattern(gates, { retrievalFraction: fraction, sink: o.sink, recent: o.recent }));
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

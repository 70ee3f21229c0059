import { readFileSync } from 'node:fs';

/**
 * Head-wise KV patterns (DuoAttention, docs/headwise.md): per layer and KV head, a retrieval head
 * keeps every token's K/V; a streaming head keeps `sink` first tokens and the `recent` latest.
 * Pattern files are DuoAttention's: a row per layer, a tab- (or space-) separated gate in [0,1]
 * per KV head, `#` lines ignored (numpy's loadtxt reads what we write).
 */
export type HeadKind = 'retrieval' | 'streaming';

export interface HeadPattern {
  /** gates [layer][kvHead] as read from the file (or computed by calibrate-heads) */
  gates: number[][];
  /** binarised kinds [layer][kvHead] */
  kinds: HeadKind[][];
  /** first tokens a streaming head keeps */
  sink: number;
  /** latest tokens a streaming head keeps (the query's own included) */
  recent: number;
}

export interface PatternShape {
  nLayers: number;
  nKvHeads: number;
}

export interface PatternOptions {
  /** per layer, this fraction of the KV heads (rounded) with the highest gates are retrieval heads */
  retrievalFraction?: number;
  /** a head whose gate is >= this is a retrieval head (default 0.5, as DuoAttention) */
  gateThreshold?: number;
  sink?: number;
  recent?: number;
}

export const DEFAULT_SINK = 64;
export const DEFAULT_RECENT = 256;
export const DEFAULT_GATE_THRESHOLD = 0.5;

/** A pattern file that is missing or does not fit the model; the message names the file and line. */
export class HeadPatternError extends Error {
  override name = 'HeadPatternError';
}

/** Parses a pattern file's text into gates [layer][kvHead], checked against the model's shape. */
export function parseGates(text: string, file: string, shape: PatternShape): number[][] {
  const gates: number[][] = [];
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const where = `${file}:${i + 1}`;
    if (gates.length === shape.nLayers) throw new HeadPatternError(`${where}: a row for layer ${gates.length}, but the model has ${shape.nLayers} layers`);
    const cells = line.split(/[\t ,]+/);
    if (cells.length !== shape.nKvHeads) throw new HeadPatternError(`${where}: ${cells.length} gates for layer ${gates.length}, the model has ${shape.nKvHeads} KV heads`);
    gates.push(
      cells.map((cell, h) => {
        const g = Number(cell);
        if (!(cell !== '' && Number.isFinite(g) && g >= 0 && g <= 1)) throw new HeadPatternError(`${where}: gate ${h + 1} "${cell}" is not a number in [0,1]`);
        return g;
      }),
    );
  });
  if (gates.length !== shape.nLayers) throw new HeadPatternError(`${file}: ${gates.length} layer rows (up to line ${lines.length}), the model has ${shape.nLayers} layers`);
  return gates;
}

/** Retrieval or streaming per head: by a per-layer top fraction, or else by a gate threshold. */
export function binariseGates(gates: readonly (readonly number[])[], o: Pick<PatternOptions, 'retrievalFraction' | 'gateThreshold'> = {}): HeadKind[][] {
  if (o.retrievalFraction !== undefined && o.gateThreshold !== undefined) throw new HeadPatternError('give a retrieval fraction or a gate threshold, not both');
  if (o.retrievalFraction !== undefined) {
    const f = o.retrievalFraction;
    if (!(f >= 0 && f <= 1)) throw new HeadPatternError(`retrieval fraction ${f} is not in [0,1]`);
    return gates.map((row) => {
      const keep = Math.round(f * row.length);
      // highest gates first; equal gates in head order, so the choice is reproducible
      const order = row.map((g, h) => ({ g, h })).sort((a, b) => b.g - a.g || a.h - b.h);
      const retrieval = new Set(order.slice(0, keep).map((e) => e.h));
      return row.map((_, h) => (retrieval.has(h) ? 'retrieval' : 'streaming'));
    });
  }
  const t = o.gateThreshold ?? DEFAULT_GATE_THRESHOLD;
  if (!(t >= 0 && t <= 1)) throw new HeadPatternError(`gate threshold ${t} is not in [0,1]`);
  return gates.map((row) => row.map((g) => (g >= t ? 'retrieval' : 'streaming')));
}

/** A pattern from gates: binarised, with the window (sink + recent) checked. */
export function headPattern(gates: number[][], o: PatternOptions = {}): HeadPattern {
  const sink = o.sink ?? DEFAULT_SINK;
  const recent = o.recent ?? DEFAULT_RECENT;
  if (!(Number.isInteger(sink) && sink >= 0)) throw new HeadPatternError(`sink ${sink} must be an integer >= 0`);
  if (!(Number.isInteger(recent) && recent >= 1)) throw new HeadPatternError(`recent ${recent} must be an integer >= 1 (a query sees itself)`);
  return { gates, kinds: binariseGates(gates, o), sink, recent };
}

/** Reads and binarises a pattern file for a model of `shape`. */
export function loadHeadPattern(file: string, shape: PatternShape, o: PatternOptions = {}): HeadPattern {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HeadPatternError(code === 'ENOENT' ? `head pattern file ${file} not found` : `head pattern file ${file}: ${(err as Error).message}`);
  }
  return headPattern(parseGates(text, file, shape), o);
}

/** Pattern file text: `#` comment lines, then a row of tab-separated gates per layer. */
export function formatGates(gates: readonly (readonly number[])[], comments: readonly string[] = []): string {
  return [...comments.map((c) => `# ${c}`), ...gates.map((row) => row.map((g) => g.toPrecision(6)).join('\t'))].join('\n') + '\n';
}

/** Retrieval heads per layer. */
export function retrievalCounts(p: Pick<HeadPattern, 'kinds'>): number[] {
  return p.kinds.map((row) => row.filter((k) => k === 'retrieval').length);
}

/**
 * How a pattern is stored (docs/headwise.md): every sequence has nKvHeads head rows ("columns")
 * shared by all layers; columns [0, fullColumns) keep full history, the others are rings. In layer
 * l, KV head h lives in column `columnOf[l * nKvHeads + h]`. A layer with fewer retrieval heads
 * than fullColumns has the memory of full columns anyway, so its streaming heads with the highest
 * gates are promoted into them (`kinds` is the pattern as stored and attended).
 */
export interface HeadColumns {
  fullColumns: number;
  columnOf: Uint32Array;
  kinds: HeadKind[][];
}

export function headColumns(p: HeadPattern): HeadColumns {
  const nLayers = p.kinds.length;
  const nKv = p.kinds[0]?.length ?? 0;
  const fullColumns = Math.max(0, ...retrievalCounts(p));
  const columnOf = new Uint32Array(nLayers * nKv);
  const kinds = p.kinds.map((row, l) => {
    // retrieval heads first, then the streaming heads by falling gate: the first fullColumns are full
    const order = row.map((k, h) => ({ k, g: p.gates[l][h], h })).sort((a, b) => Number(b.k === 'retrieval') - Number(a.k === 'retrieval') || b.g - a.g || a.h - b.h);
    order.forEach((e, column) => (columnOf[l * nKv + e.h] = column));
    return row.map((_, h): HeadKind => (columnOf[l * nKv + h] < fullColumns ? 'retrieval' : 'streaming'));
  });
  return { fullColumns, columnOf, kinds };
}

/** The command-line options of a head pattern (serve, generate, worker). */
export interface HeadPatternCliOptions extends PatternOptions {
  headPattern?: string;
}

/** The pattern the options ask for, or undefined without --head-pattern (then none of the others may be given). */
export function headPatternFromOptions(o: HeadPatternCliOptions, shape: PatternShape): HeadPattern | undefined {
  if (o.headPattern === undefined) {
    const stray = (['retrievalFraction', 'gateThreshold', 'sink', 'recent'] as const).filter((k) => o[k] !== undefined);
    if (stray.length) throw new HeadPatternError(`${stray.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} need --head-pattern`);
    return undefined;
  }
  return loadHeadPattern(o.headPattern, shape, o);
}

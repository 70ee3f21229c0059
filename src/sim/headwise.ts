import { type HeadPattern, headColumns } from '../kv/head_pattern.ts';
import type { HeadwiseKv } from '../kv/paged_kv.ts';

/**
 * Head-wise KV in the capacity and step-time models (docs/headwise.md, docs/simulator.md): of a
 * layer's `nKvHeads` KV heads, `fullColumns` keep full history and the others sink + recent.
 * Both KV held and attention read are counted in tokens of the full cache averaged over the KV
 * heads, the unit the cost models' kvCapacityTokens and BatchShape already use.
 */
export interface HeadwiseLayout extends HeadwiseKv {
  nKvHeads: number;
}

/** The layout a pattern is stored in (its full columns: the most retrieval heads of any layer). */
export function layoutOfPattern(p: HeadPattern): HeadwiseLayout {
  return { nKvHeads: p.kinds[0]?.length ?? 0, fullColumns: headColumns(p).fullColumns, sink: p.sink, recent: p.recent };
}

/** Averaged over KV heads: full heads count every token, ring heads at most sink + recent. */
function headAverage(full: number, ring: number, hw: HeadwiseLayout): number {
  return (hw.fullColumns * full + (hw.nKvHeads - hw.fullColumns) * ring) / hw.nKvHeads;
}

/**
 * A sequence of `tokens` tokens in tokens of the full cache: the KV it keeps, and the KV one
 * decode step of it reads (a streaming head attends to exactly the slots its ring holds).
 */
export function kvTokensOf(tokens: number, hw: HeadwiseLayout | undefined): number {
  return hw ? headAverage(tokens, Math.min(tokens, hw.sink + hw.recent), hw) : tokens;
}

/**
 * BatchShape.prefillAttention of a prompt chunk of `n` tokens after `before` computed ones: every
 * query against the context up to the chunk's end (the causal square whole, as without a pattern);
 * a streaming head's queries see at most sink + recent keys each.
 */
export function prefillPairsOf(n: number, before: number, hw: HeadwiseLayout | undefined): number {
  return n * kvTokensOf(before + n, hw);
}

/** Throws unless `hw` is a layout: integer counts, 0 <= fullColumns <= nKvHeads, recent >= 1. */
export function checkLayout(hw: HeadwiseLayout, what: string): void {
  const int = (v: unknown, min: number) => typeof v === 'number' && Number.isInteger(v) && v >= min;
  if (!(int(hw?.nKvHeads, 1) && int(hw.fullColumns, 0) && hw.fullColumns <= hw.nKvHeads && int(hw.sink, 0) && int(hw.recent, 1))) {
    throw new Error(`${what} must be { nKvHeads >= 1, fullColumns in [0, nKvHeads], sink >= 0, recent >= 1 } (integers), not ${JSON.stringify(hw)}`);
  }
}

/** One line for reports: "1 of 4 KV heads keep full history, the others sink 64 + recent 256". */
export function describeLayout(hw: HeadwiseLayout): string {
  return `${hw.fullColumns} of ${hw.nKvHeads} KV heads keep full history, the others sink ${hw.sink} + recent ${hw.recent}`;
}

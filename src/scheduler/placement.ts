/**
 * Placement for disaggregated serving, shared by the live front (`src/workers/cluster.ts`) and
 * the simulator: which prefill worker computes a prompt, which decode worker takes it over.
 */

export interface PrefillCandidate {
  /** prompt tokens dispatched to it and not yet prefilled */
  queuedTokens: number;
}

/**
 * TTFT-aware: the prefill worker with the fewest prompt tokens queued starts a new prompt
 * soonest. Null while every worker already has `backlog` tokens queued: the request waits at the
 * front, so the later choices (and the decode worker) are made with fresh load.
 */
export function pickPrefill<T extends PrefillCandidate>(candidates: readonly T[], backlog: number): T | null {
  let best: T | null = null;
  for (const c of candidates) if (c.queuedTokens < backlog && (!best || c.queuedTokens < best.queuedTokens)) best = c;
  return best;
}

export interface DecodeCandidate {
  /** KV blocks free for new sequences */
  freeBlocks: number;
  /** sequences it decodes (or is about to receive) */
  sequences: number;
  /** blocks the request needs there (workers with fewer free are skipped; default 0) */
  needBlocks?: number;
}

/**
 * TPOT-aware: the decode worker with the most free KV (the least likely to preempt), and among
 * equals the one with the fewest sequences (the smallest batch decodes fastest). Null when none
 * has the blocks the request needs: it waits rather than land where it would recompute.
 */
export function pickDecode<T extends DecodeCandidate>(candidates: readonly T[]): T | null {
  let best: T | null = null;
  for (const c of candidates) {
    if (c.freeBlocks < (c.needBlocks ?? 0)) continue;
    if (!best || c.freeBlocks > best.freeBlocks || (c.freeBlocks === best.freeBlocks && c.sequences < best.sequences)) best = c;
  }
  return best;
}

import type { BatchShape, CostModel } from './cost_model.ts';

/**
 * Service times of one sequence served alone, from a CostModel: the lower bounds the SLO policy
 * rejects on and the simulator's ceilings and miss breakdown compare with.
 */

/** A step's predicted seconds; 0 when the model has no finite positive answer (an unfitted online model). */
export function stepSeconds(cost: CostModel, b: BatchShape): number {
  const t = cost.stepSeconds(b);
  return Number.isFinite(t) && t > 0 ? t : 0;
}

/** One decode step of a sequence whose context holds `context` tokens. */
export function decodeSeconds(cost: CostModel, context: number): number {
  return stepSeconds(cost, { prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: context });
}

/**
 * Seconds to prefill `tokens` tokens after `context` in budget-sized chunks (the full chunks at
 * their mean context, then the last one: exact when the step time is linear in attention work),
 * and the number of steps.
 */
export function prefillSeconds(cost: CostModel, context: number, tokens: number, tokenBudget: number): { seconds: number; chunks: number } {
  if (tokens <= 0) return { seconds: 0, chunks: 0 };
  const B = Math.max(1, tokenBudget);
  const chunks = Math.ceil(tokens / B);
  const last = tokens - (chunks - 1) * B;
  const lastContext = context + (chunks - 1) * B;
  let seconds = stepSeconds(cost, { prefillTokens: last, prefillAttention: last * (lastContext + last), decodeSeqs: 0, decodeContext: 0 });
  if (chunks > 1) {
    const meanEnd = context + B + ((chunks - 2) * B) / 2; // a full chunk's context plus itself, on average
    seconds += (chunks - 1) * stepSeconds(cost, { prefillTokens: B, prefillAttention: B * meanEnd, decodeSeqs: 0, decodeContext: 0 });
  }
  return { seconds, chunks };
}

/** Seconds of `tokens` decode steps after `context`, at the context halfway through them. */
export function decodeRunSeconds(cost: CostModel, context: number, tokens: number): number {
  return tokens > 0 ? tokens * decodeSeconds(cost, context + tokens / 2) : 0;
}

import type { SeqView } from './scheduler.ts';

/**
 * A conservative estimate of how long a response will be, learned from the sequences that finished
 * on their own: a high quantile (p90 by default) of the recent output lengths, conditioned on being
 * longer than what the sequence has generated so far (so it is refined as the sequence generates),
 * capped by max_tokens and at least one more token. With too few samples (fewer than `minSamples`
 * overall, or that many longer than the sequence already is) the estimate is max_tokens.
 */
export class OutputLengthEstimator {
  /** recent finished output lengths, in arrival order (for eviction) and sorted (for quantiles) */
  private readonly recent: number[] = [];
  private readonly sorted: number[] = [];
  /** bumped on every sample: estimates made under an older version may have changed */
  version = 0;

  constructor(
    private readonly quantile = 0.9,
    private readonly window = 2000,
    private readonly minSamples = 8,
  ) {
    if (!(quantile > 0 && quantile <= 1)) throw new Error(`quantile must be in (0, 1], got ${quantile}`);
  }

  observe(outputTokens: number): void {
    if (!(outputTokens >= 0)) return;
    this.version++;
    this.recent.push(outputTokens);
    this.sorted.splice(upperBound(this.sorted, outputTokens), 0, outputTokens);
    if (this.recent.length > this.window) {
      const old = this.recent.shift()!;
      this.sorted.splice(upperBound(this.sorted, old) - 1, 1);
    }
  }

  /** The estimated final output length of `s`. */
  estimate(s: Pick<SeqView, 'generated' | 'maxTokens'>): number {
    const floor = Math.min(s.maxTokens, s.generated + 1);
    if (this.sorted.length < this.minSamples) return Math.max(floor, s.maxTokens);
    const from = upperBound(this.sorted, s.generated); // samples longer than what it has
    const n = this.sorted.length - from;
    if (n < this.minSamples) return Math.max(floor, s.maxTokens);
    const q = this.sorted[from + Math.max(0, Math.ceil(this.quantile * n) - 1)];
    return Math.max(floor, Math.min(q, s.maxTokens));
  }
}

/** The first index whose value is greater than x (sorted ascending). */
function upperBound(a: readonly number[], x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

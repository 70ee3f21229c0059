/** Latency objectives of one request (all optional), in milliseconds. */
export interface Slo {
  /** time to first token */
  ttftMs?: number;
  /** mean time per output token after the first */
  tpotMs?: number;
  /** the whole response, from arrival */
  deadlineMs?: number;
}

/** What the scheduler sees of one sequence (the engine owns the rest). */
export interface SeqView {
  id: number;
  /** submission order, for first-come-first-served */
  arrival: number;
  /** arrival time on the scheduler's clock (seconds; the same clock as plan()'s `now`) */
  arrivalTime: number;
  /** prompt length, and output tokens generated so far */
  promptTokens: number;
  generated: number;
  /** the request's max_tokens (an upper bound of its output length) */
  maxTokens: number;
  /** when its first output token was emitted (seconds), if it has been */
  firstTokenTime?: number;
  slo?: Slo;
  /** larger runs first among otherwise equal requests; default 0 */
  priority?: number;
  /** tokens the sequence has (prompt + generated) */
  totalTokens: number;
  /** tokens whose KV is in the cache; totalTokens - computed are still to feed */
  computed: number;
  /** waiting: never admitted, or preempted (its KV freed); running: holds KV */
  state: 'waiting' | 'running';
}

export interface KvView {
  freeBlocks: number;
  /** blocks `seq` needs to store `tokens` more tokens */
  blocksNeeded(seq: number, tokens: number): number;
  /** blocks `seq` holds now (what preempting it frees) */
  blocksHeld(seq: number): number;
}

export interface StepPlan {
  /** tokens each sequence feeds this step, decode tokens and prompt chunks alike */
  items: { seq: number; tokens: number }[];
  /** running sequences to preempt first: their KV is freed and they recompute later */
  preempt: number[];
  /** sequences to end now because they can no longer meet their SLO (policies that refuse) */
  reject?: Rejection[];
}

/**
 * Why a sequence was rejected: the objective it cannot meet and the estimate that decided it. The
 * estimate is a lower bound (its own service served alone, plus the prompt work already committed
 * ahead of it), so a rejection errs towards serving.
 */
export interface Rejection {
  seq: number;
  objective: 'ttft' | 'tpot' | 'deadline';
  /** seconds from now it needs at least before the objective's event (the first token, or the end) */
  neededSeconds: number;
  /** of neededSeconds, the committed prompt work ahead of it */
  aheadSeconds: number;
  /** seconds from now until the objective is due (for tpot: the tpot itself, which one solo step exceeds) */
  leftSeconds: number;
}

/** A rejection in words, for logs and the client's error message. */
export function describeRejection(r: Rejection): string {
  const s = (x: number) => `${(x * 1e3).toFixed(0)} ms`;
  if (r.objective === 'tpot') return `one decode step alone takes ${s(r.neededSeconds)}, over the TPOT of ${s(r.leftSeconds)}`;
  const what = r.objective === 'ttft' ? 'its first token' : 'its next token';
  const ahead = r.aheadSeconds > 0 ? ` (${s(r.aheadSeconds)} of it prompt work already committed ahead)` : '';
  return `${what} needs at least ${s(r.neededSeconds)}${ahead}, and its ${r.objective === 'ttft' ? 'TTFT' : 'deadline'} leaves ${s(Math.max(0, r.leftSeconds))}`;
}

export interface SchedulerLimits {
  /** tokens per forward pass (decode tokens + prompt chunks) */
  tokenBudget: number;
  /** sequences per forward pass */
  maxBatch: number;
}

/**
 * Decides each step who runs: which waiting sequences are admitted, how many prompt tokens each
 * prefills, which running sequences decode, whom to preempt when KV is short. Pure: the same
 * code runs under the live engine's clock and the simulator's.
 */
export interface Scheduler {
  readonly name: string;
  plan(seqs: readonly SeqView[], kv: KvView, limits: SchedulerLimits, now: number): StepPlan;
  /**
   * Optional: told the output length (generated tokens, end-of-sequence included) of each
   * sequence that finished on its own (stop or length), for policies that learn output lengths.
   */
  observeFinished?(outputTokens: number): void;
}

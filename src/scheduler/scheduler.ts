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
  reject?: number[];
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

import { NO_SLOT, type BiasEntry, type CountsInit, applyBias, countTokens, initCounts, packBiasEntries, packPenaltyRows, penalize } from '../../kernels/penalties.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { Step } from '../gpu/step.ts';
import type { SamplingOptions } from './engine.ts';

/** OpenAI's logit_bias limits: entries per request, and the bias range. */
export const MAX_LOGIT_BIAS = 300;
export const LOGIT_BIAS_RANGE = 100;
/**
 * repetition_penalty's range. vLLM takes any value > 0; beyond 100x either way a penalty has long
 * stopped discriminating, and the divided logits would head for f32 overflow (an overflowed
 * logit counts as masked).
 */
export const MIN_REPETITION_PENALTY = 0.01;
export const MAX_REPETITION_PENALTY = 100;

/** Why these sampling options can never run (null when they can): out-of-range values, unknown token ids. */
export function samplingProblem(s: SamplingOptions, vocabSize: number): string | null {
  const num = (v: number | undefined, lo: number, hi: number, name: string) => (v === undefined || (typeof v === 'number' && v >= lo && v <= hi) ? null : `${name} must be in [${lo}, ${hi}]: ${v}`);
  if (!Number.isSafeInteger(s.seed)) return `seed must be an integer within +-(2^53 - 1): ${s.seed}`;
  const bias = s.logitBias ?? [];
  if (bias.length > MAX_LOGIT_BIAS) return `logit_bias has ${bias.length} entries; at most ${MAX_LOGIT_BIAS}`;
  const seen = new Set<number>();
  for (const [t, b] of bias) {
    if (!(Number.isInteger(t) && t >= 0 && t < vocabSize)) return `logit_bias token id ${t} is outside the vocabulary (0..${vocabSize - 1})`;
    if (seen.has(t)) return `logit_bias names token ${t} twice`;
    seen.add(t);
    const bad = num(b, -LOGIT_BIAS_RANGE, LOGIT_BIAS_RANGE, `logit_bias of token ${t}`);
    if (bad) return bad;
  }
  const minTokens = s.minTokens ?? 0;
  if (!(Number.isInteger(minTokens) && minTokens >= 0 && minTokens <= s.maxTokens)) return `min_tokens must be an integer in [0, max_tokens = ${s.maxTokens}]: ${minTokens}`;
  return (
    num(s.presencePenalty, -2, 2, 'presence_penalty') ??
    num(s.frequencyPenalty, -2, 2, 'frequency_penalty') ??
    num(s.repetitionPenalty, MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY, 'repetition_penalty') ??
    num(s.minP, 0, 1, 'min_p')
  );
}

/** The sequence needs token counts: a penalty other than its neutral value. */
function hasPenalties(s: SamplingOptions): boolean {
  return (s.presencePenalty ?? 0) !== 0 || (s.frequencyPenalty ?? 0) !== 0 || (s.repetitionPenalty ?? 1) !== 1;
}

/** One logit row of a step, as the engine sees its sequence. */
export interface PenaltyRowInput {
  seq: number;
  sampling: SamplingOptions;
  /** prompt, then generated tokens */
  tokens: readonly number[];
  promptLength: number;
  /** tokens generated on the GPU beyond `tokens` (a pipelined row: its previous step's, not yet read back) */
  ahead: number;
  /** the row's sampled token is kept (it completes the sequence's context this step) */
  accepts: boolean;
}

/**
 * The engine's side of shaders/penalties.wgsl: count rows on the GPU for the running sequences
 * with penalties (a slot each, rebuilt from the sequence's tokens when it first runs and after a
 * preemption, updated on the GPU from each sampled token; never read back), and per step the
 * bias, min-tokens mask and penalty dispatches. A step whose rows use none of these records
 * nothing, so their logits reach the sampler untouched.
 */
export class LogitPenalties {
  private counts: GPUBuffer | null = null;
  private capacity = 0;
  private readonly slots = new Map<number, number>();
  private readonly free: number[] = [];

  constructor(
    private readonly gpu: Gpu,
    private readonly vocab: number,
    /** tokens that end a sequence: masked until min_tokens are generated */
    private readonly stopTokens: readonly number[],
  ) {}

  /**
   * Records the processors for `rows` (row i of `logits` is rows[i]) into the step; returns what
   * to record after sampling (the count update from the sampled ids), or null when nothing was
   * recorded.
   */
  record(step: Step, logits: GPUBuffer, rows: readonly PenaltyRowInput[]): ((sampled: GPUBuffer) => void) | null {
    const entries: BiasEntry[] = [];
    const inits: CountsInit[] = [];
    let counting = false;
    const penalties = rows.map((r, row) => {
      const s = r.sampling;
      const bias = new Map(s.logitBias ?? []);
      if (r.tokens.length + r.ahead - r.promptLength < (s.minTokens ?? 0)) for (const t of this.stopTokens) bias.set(t, -Infinity);
      for (const [token, b] of bias) entries.push({ row, token, bias: b });
      if (!hasPenalties(s)) return { slot: NO_SLOT, presence: 0, frequency: 0, repetition: 1 };
      counting = true;
      let slot = this.slots.get(r.seq);
      if (slot === undefined) {
        slot = this.take(r.seq);
        inits.push({ slot, tokens: r.tokens, promptLength: r.promptLength });
      }
      return { slot, presence: s.presencePenalty ?? 0, frequency: s.frequencyPenalty ?? 0, repetition: s.repetitionPenalty ?? 1 };
    });
    if (entries.length === 0 && !counting) return null;
    if (inits.length) initCounts(step, { counts: this.counts!, seqs: inits, cols: this.vocab });
    if (entries.length) applyBias(step, { logits, entries: step.upload(packBiasEntries(entries), 'logit bias'), count: entries.length, cols: this.vocab });
    if (!counting) return null;
    penalize(step, { logits, penalties: step.upload(packPenaltyRows(penalties), 'penalties'), counts: this.counts!, rows: rows.length, cols: this.vocab });
    const update = Uint32Array.from(rows, (r, i) => (r.accepts ? penalties[i].slot : NO_SLOT));
    return (sampled) => countTokens(step, { counts: this.counts!, slots: step.upload(update, 'count slots'), sampled, rows: rows.length, cols: this.vocab });
  }

  /** The sequence's count row is free again (it finished, left, or was preempted: rebuilt when it runs again). */
  release(seq: number): void {
    const slot = this.slots.get(seq);
    if (slot === undefined) return;
    this.slots.delete(seq);
    this.free.push(slot);
  }

  private take(seq: number): number {
    if (this.free.length === 0) this.grow();
    const slot = this.free.pop()!;
    this.slots.set(seq, slot);
    return slot;
  }

  /**
   * Doubles the count rows. The old rows are copied in a submit of their own, queued before the
   * step being recorded, so they survive even if that step is discarded.
   */
  private grow(): void {
    const rowBytes = this.vocab * 4;
    const limit = Math.min(this.gpu.limits.maxStorageBufferBindingSize, this.gpu.limits.maxBufferSize);
    const capacity = Math.max(4, this.capacity * 2);
    const fit = Math.min(capacity, Math.floor(limit / rowBytes));
    if (fit <= this.capacity) throw new Error(`token counts for more than ${this.capacity} sequences with penalties exceed this device's buffer size limit (${limit} bytes)`);
    const counts = this.gpu.createBuffer(fit * rowBytes, 'token counts');
    if (this.counts) {
      const encoder = this.gpu.device.createCommandEncoder({ label: 'token counts grow' });
      encoder.copyBufferToBuffer(this.counts, 0, counts, 0, this.capacity * rowBytes);
      this.gpu.device.queue.submit([encoder.finish()]);
      this.counts.destroy(); // freed once the copy has run
    }
    for (let s = fit - 1; s >= this.capacity; s--) this.free.push(s);
    this.counts = counts;
    this.capacity = fit;
  }
}

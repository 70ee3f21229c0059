import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';

/**
 * Logit processors that run before `sample` (shaders/penalties.wgsl): OpenAI's logit_bias, the
 * min-tokens mask, and presence / frequency (OpenAI, over the output) and repetition (vLLM, over
 * prompt and output) penalties from per-sequence token counts kept on the GPU.
 */

/** A row without a count slot (no penalties), or a token count row not to update. */
export const NO_SLOT = 0xffffffff;
/** Count word bit: the token occurs in the prompt (bits 0..30 count it in the output). */
export const PROMPT_BIT = 0x80000000;

const WG = 256;

/** One sparse logit change: logits[row, token] += bias; a bias of -Infinity masks the token. */
export interface BiasEntry {
  row: number;
  token: number;
  bias: number;
}

export const BIAS_ENTRY_BYTES = 12;

export function packBiasEntries(entries: readonly BiasEntry[]): Uint8Array {
  const bytes = new Uint8Array(Math.max(1, entries.length) * BIAS_ENTRY_BYTES);
  const view = new DataView(bytes.buffer);
  entries.forEach((e, i) => {
    view.setUint32(i * 12, e.row, true);
    view.setUint32(i * 12 + 4, e.token, true);
    view.setFloat32(i * 12 + 8, e.bias, true);
  });
  return bytes;
}

/** Per-row penalties; `slot` is the row's count row, NO_SLOT for a row without penalties. */
export interface PenaltyRow {
  slot: number;
  presence: number;
  frequency: number;
  repetition: number;
}

export const PENALTY_ROW_BYTES = 16;

export function packPenaltyRows(rows: readonly PenaltyRow[]): Uint8Array {
  const bytes = new Uint8Array(Math.max(1, rows.length) * PENALTY_ROW_BYTES);
  const view = new DataView(bytes.buffer);
  rows.forEach((r, i) => {
    view.setUint32(i * 16, r.slot, true);
    view.setFloat32(i * 16 + 4, r.presence, true);
    view.setFloat32(i * 16 + 8, r.frequency, true);
    view.setFloat32(i * 16 + 12, r.repetition, true);
  });
  return bytes;
}

export interface BiasArgs {
  /** [rows, cols] f32, changed in place */
  logits: Binding;
  /** packBiasEntries bytes; tokens unique within a row */
  entries: Binding;
  count: number;
  cols: number;
}

/** Adds each entry's bias to its logit (a -Infinity bias writes -Infinity). */
export function applyBias(step: Step, a: BiasArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('penalties', 'bias', { WG }),
    params: new Params().u32(a.count).u32(a.cols),
    buffers: [a.logits, a.entries],
    workgroups: [Math.ceil(a.count / WG)],
  });
}

export interface PenalizeArgs {
  /** [rows, cols] f32, changed in place */
  logits: Binding;
  /** [rows] packPenaltyRows bytes */
  penalties: Binding;
  /** [slots, cols] u32 token counts */
  counts: Binding;
  rows: number;
  cols: number;
}

/** Repetition, frequency and presence penalties of every row with a count slot. */
export function penalize(step: Step, a: PenalizeArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('penalties', 'penalize', { WG }),
    params: new Params().u32(a.rows).u32(a.cols),
    buffers: [a.logits, a.penalties, a.counts],
    workgroups: [Math.ceil(a.cols / WG), a.rows],
  });
}

/** A sequence whose count row is (re)built from its tokens: the first `promptLength` are prompt. */
export interface CountsInit {
  slot: number;
  tokens: readonly number[];
  promptLength: number;
}

export interface InitCountsArgs {
  /** [slots, cols] u32 token counts */
  counts: Binding;
  seqs: readonly CountsInit[];
  cols: number;
}

/** Rebuilds the count rows of `seqs` (one workgroup each); uploads their tokens into the step. */
export function initCounts(step: Step, a: InitCountsArgs): void {
  const jobs = new Uint32Array(Math.max(1, a.seqs.length) * 4);
  const total = a.seqs.reduce((n, s) => n + s.tokens.length, 0);
  const tokens = new Uint32Array(Math.max(1, total));
  let offset = 0;
  a.seqs.forEach((s, i) => {
    jobs.set([s.slot, offset, s.promptLength, s.tokens.length], i * 4);
    tokens.set(s.tokens, offset);
    offset += s.tokens.length;
  });
  step.dispatch({
    pipeline: step.gpu.pipelines.get('penalties', 'counts_init', { WG }),
    params: new Params().u32(a.seqs.length).u32(a.cols),
    buffers: [a.counts, step.upload(jobs, 'count init jobs'), step.upload(tokens, 'count init tokens')],
    workgroups: [a.seqs.length],
  });
}

export interface CountTokensArgs {
  counts: Binding;
  /** [rows] u32: the count row each row's sampled token goes to, NO_SLOT for none */
  slots: Binding;
  /** [rows] u32 sampled tokens (NO_TOKEN, or any id >= cols, counts nowhere) */
  sampled: Binding;
  rows: number;
  cols: number;
}

/** Adds each row's sampled token to its sequence's output count. */
export function countTokens(step: Step, a: CountTokensArgs): void {
  step.dispatch({
    pipeline: step.gpu.pipelines.get('penalties', 'count_tokens', { WG: 64 }),
    params: new Params().u32(a.rows).u32(a.cols),
    buffers: [a.counts, a.slots, a.sampled],
    workgroups: [Math.ceil(a.rows / 64)],
  });
}

// ---------------------------------------------------------------------------------------------
// CPU references (float64)

/** What one row is given: OpenAI / vLLM semantics. */
export interface RowPenaltiesRef {
  /** [token, bias] (-Infinity masks) */
  bias?: readonly (readonly [number, number])[];
  presence?: number;
  frequency?: number;
  repetition?: number;
  prompt?: readonly number[];
  output?: readonly number[];
}

/** A count row as the kernel keeps it: PROMPT_BIT where the token is in the prompt, plus its output count. */
export function countsRef(prompt: readonly number[], output: readonly number[], cols: number): Uint32Array {
  const c = new Uint32Array(cols);
  for (const t of prompt) c[t] = (c[t] | PROMPT_BIT) >>> 0;
  for (const t of output) c[t]++;
  return c;
}

/**
 * The logits after bias and penalties (float64), from vLLM's definition: bias added (or -inf),
 * then for every token in the prompt or output l > 0 ? l / r : l * r, then l -= f * n + p * (n > 0)
 * with n the token's output count.
 */
export function penaltiesRef(logits: ArrayLike<number>, rows: number, cols: number, per: readonly RowPenaltiesRef[]): Float64Array {
  const out = Float64Array.from(logits);
  for (let r = 0; r < rows; r++) {
    const q = per[r];
    const row = out.subarray(r * cols, (r + 1) * cols);
    for (const [t, b] of q.bias ?? []) row[t] = b === -Infinity ? -Infinity : row[t] + b;
    const n = new Float64Array(cols);
    const seen = new Uint8Array(cols);
    for (const t of q.prompt ?? []) seen[t] = 1;
    for (const t of q.output ?? []) (seen[t] = 1), n[t]++;
    const rep = q.repetition ?? 1;
    for (let j = 0; j < cols; j++) {
      if (!seen[j] || !Number.isFinite(row[j])) continue;
      row[j] = row[j] > 0 ? row[j] / rep : row[j] * rep;
      if (n[j] > 0) row[j] -= (q.frequency ?? 0) * n[j] + (q.presence ?? 0);
    }
  }
  return out;
}

import { describe, expect, it, vi } from 'vitest';
import {
  NO_SLOT,
  PROMPT_BIT,
  type BiasEntry,
  type PenaltyRow,
  type RowPenaltiesRef,
  applyBias,
  countTokens,
  countsRef,
  initCounts,
  packBiasEntries,
  packPenaltyRows,
  penalize,
  penaltiesRef,
} from '../kernels/penalties.ts';
import { NO_TOKEN } from '../kernels/sampling.ts';
import { LogitPenalties, type PenaltyRowInput } from '../src/engine/logit_penalties.ts';
import type { SamplingOptions } from '../src/engine/engine.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';

// 1000 columns: not a multiple of the 256-wide workgroups, so every dispatch has a partial tail.
const COLS = 1000;

/** Random token ids in [0, cols), with repeats (a few tokens drawn often). */
function tokens(n: number, seed: number, cols = COLS): number[] {
  const next = mulberry32(seed);
  return Array.from({ length: n }, () => (next() < 0.3 ? Math.floor(next() * 8) : Math.floor(next() * cols)));
}

/**
 * Asserts GPU logits against the float64 reference. Where the reference did not change a logit,
 * the GPU must leave its bits alone (exact). Elsewhere the f32 path rounds: the parameters to f32
 * (2^-24 relative each), the division (WGSL allows 2.5 ULP) or multiplication (0.5 ULP), then
 * f * n, two subtractions and the bias add (0.5 ULP each). Every one of these is relative to a
 * magnitude of at most |l| + |l / r| + |f n| + |p| + |bias|, so the total stays below 8 ULP of that
 * sum: allowed |gpu - ref| <= 8 * 2^-24 * scale. Returns the largest error in units of that scale.
 */
function expectLogits(gpu: Float32Array, input: Float32Array, ref: Float64Array, scale: (i: number) => number, label: string): number {
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    if (Object.is(ref[i], input[i])) {
      if (!Object.is(gpu[i], input[i])) expect.fail(`${label} element ${i}: untouched logit ${input[i]} became ${gpu[i]}`);
      continue;
    }
    if (!Number.isFinite(ref[i])) {
      if (!Object.is(gpu[i], ref[i])) expect.fail(`${label} element ${i}: ${gpu[i]}, expected ${ref[i]}`);
      continue;
    }
    const err = Math.abs(gpu[i] - ref[i]) / (2 ** -24 * scale(i));
    worst = Math.max(worst, err);
    if (!(err <= 8)) expect.fail(`${label} element ${i}: ${gpu[i]}, expected ${ref[i]} (${err.toFixed(2)} ULP of the scale ${scale(i)})`);
  }
  return worst;
}

describe('penalties kernels', () => {
  const getGpu = useGpu();

  async function readLogits(gpu: Gpu, buf: GPUBuffer, n: number) {
    return gpu.readF32(buf, n);
  }

  it('bias: sparse adds and -inf masks, other logits bit for bit untouched', async () => {
    const gpu = getGpu();
    for (const rows of [1, 5]) {
      const logits = normalArray(rows * COLS, 3 + rows, 4);
      logits[3] = Infinity; // non-finite logits stay non-finite
      logits[4] = NaN;
      const per: RowPenaltiesRef[] = [];
      const entries: BiasEntry[] = [];
      const next = mulberry32(rows);
      for (let r = 0; r < rows; r++) {
        // row 1 (of 5) has no entries; others mix +-100, fractions, a mask, the last column
        const bias: [number, number][] = r === 1 ? [] : [[0, 100], [COLS - 1, -100], [7 + r, 0.3], [500, -Infinity], [3 + (r ? 10 : 0), next() * 2 - 1], [4, 5]];
        per.push({ bias });
        for (const [token, b] of bias) entries.push({ row: r, token, bias: b });
      }
      const lb = gpu.upload(logits);
      const step = gpu.step();
      applyBias(step, { logits: lb, entries: step.upload(packBiasEntries(entries)), count: entries.length, cols: COLS });
      await step.submit();
      const got = await readLogits(gpu, lb, rows * COLS);
      lb.destroy();
      const ref = penaltiesRef(logits, rows, COLS, per);
      const biasOf = (i: number) => per[Math.floor(i / COLS)].bias!.find(([t]) => t === i % COLS)?.[1] ?? 0;
      const worst = expectLogits(got, logits, ref, (i) => Math.abs(logits[i]) + Math.abs(biasOf(i)), `bias rows=${rows}`);
      // measured: 0.70 ULP of the scale at most (f32 roundings of the bias and of the sum)
      expect(worst).toBeLessThan(8);
      expect(got[500]).toBe(-Infinity);
      expect(got[COLS + 17]).toBe(logits[COLS + 17]);
    }
  });

  it('token counts: built from prompt and output on the GPU, updated from sampled ids, rebuilt over a used slot', async () => {
    const gpu = getGpu();
    const slots = 3;
    const counts = gpu.createBuffer(slots * COLS * 4);
    const seqs = [
      { slot: 2, prompt: tokens(700, 1), output: tokens(40, 2) },
      { slot: 0, prompt: [5, 5, 5, COLS - 1], output: [] as number[] },
      { slot: 1, prompt: tokens(3, 3), output: tokens(2000, 4) }, // more tokens than the workgroup, heavy repeats
    ];
    let step = gpu.step();
    initCounts(step, { counts, seqs: seqs.map((s) => ({ slot: s.slot, tokens: [...s.prompt, ...s.output], promptLength: s.prompt.length })), cols: COLS });
    await step.submit();
    const want = (s: (typeof seqs)[number]) => countsRef(s.prompt, s.output, COLS);
    let all = await gpu.readU32(counts, slots * COLS);
    for (const s of seqs) expect(Array.from(all.subarray(s.slot * COLS, (s.slot + 1) * COLS)), `slot ${s.slot}`).toEqual(Array.from(want(s)));
    // one sampled token per row: rows 0 and 2 count (slots 2 and 1), row 1 has no slot, row 3 sampled nothing
    const sampled = Uint32Array.from([9, 5, COLS - 1, NO_TOKEN]);
    const rowSlots = Uint32Array.from([2, NO_SLOT, 1, 0]);
    step = gpu.step();
    countTokens(step, { counts, slots: step.upload(rowSlots), sampled: step.upload(sampled), rows: 4, cols: COLS });
    await step.submit();
    seqs[0].output.push(9);
    seqs[2].output.push(COLS - 1);
    all = await gpu.readU32(counts, slots * COLS);
    for (const s of seqs) expect(Array.from(all.subarray(s.slot * COLS, (s.slot + 1) * COLS)), `slot ${s.slot} after the update`).toEqual(Array.from(want(s)));
    expect(all[COLS - 1]).toBe((PROMPT_BIT | 0) >>> 0); // slot 0: the prompt bit alone
    // a used slot rebuilt for another sequence holds exactly the new one's counts
    const fresh = { slot: 1, prompt: [1, 2], output: [2, 2, 3] };
    step = gpu.step();
    initCounts(step, { counts, seqs: [{ slot: 1, tokens: [...fresh.prompt, ...fresh.output], promptLength: 2 }], cols: COLS });
    await step.submit();
    all = await gpu.readU32(counts, slots * COLS);
    expect(Array.from(all.subarray(COLS, 2 * COLS))).toEqual(Array.from(want(fresh)));
    counts.destroy();
  });

  it('penalize: repetition over prompt and output, frequency and presence over the output, against float64', async () => {
    const gpu = getGpu();
    const settings = [
      { presence: 0.5, frequency: 0.3, repetition: 1 },
      { presence: 0, frequency: 0, repetition: 1.3 },
      { presence: -2, frequency: 2, repetition: 0.7 }, // negative presence raises, repetition < 1 favours repeats
      { presence: 1.1, frequency: -0.4, repetition: 1.9 },
    ];
    // rows 0..3 with a slot each, row 4 without (NO_SLOT): must stay bit for bit
    const rows = settings.length + 1;
    const seqs = settings.map((_, i) => ({ prompt: tokens(50 + 100 * i, 10 + i), output: tokens(30 * i, 20 + i) }));
    const logits = normalArray(rows * COLS, 5, 6);
    logits[7] = -Infinity; // a masked logit stays masked (token 7 is likely in row 0's counts)
    logits[8] = 0;
    logits[9] = -0;
    const counts = gpu.createBuffer(settings.length * COLS * 4);
    const lb = gpu.upload(logits);
    const penaltyRows: PenaltyRow[] = [...settings.map((s, i) => ({ slot: settings.length - 1 - i, ...s })), { slot: NO_SLOT, presence: 1, frequency: 1, repetition: 2 }];
    const step = gpu.step();
    initCounts(step, { counts, seqs: seqs.map((s, i) => ({ slot: penaltyRows[i].slot, tokens: [...s.prompt, ...s.output], promptLength: s.prompt.length })), cols: COLS });
    penalize(step, { logits: lb, penalties: step.upload(packPenaltyRows(penaltyRows)), counts, rows, cols: COLS });
    await step.submit();
    const got = await readLogits(gpu, lb, rows * COLS);
    for (const b of [lb, counts]) b.destroy();
    const per: RowPenaltiesRef[] = [...settings.map((s, i) => ({ ...s, ...seqs[i] })), {}];
    const ref = penaltiesRef(logits, rows, COLS, per);
    const n = (i: number) => (per[Math.floor(i / COLS)].output ?? []).filter((t) => t === i % COLS).length;
    const scale = (i: number) => {
      const q = per[Math.floor(i / COLS)];
      const r = q.repetition ?? 1;
      return Math.abs(logits[i]) * Math.max(r, 1 / r) + Math.abs((q.frequency ?? 0) * n(i)) + Math.abs(q.presence ?? 0);
    };
    const worst = expectLogits(got, logits, ref, scale, 'penalize');
    // measured: 1.41 ULP of the scale at most
    expect(worst).toBeLessThan(8);
    // by hand: row 1 divides positive and multiplies negative repeated logits by 1.3 (bound as above)
    for (const t of seqs[1].prompt.slice(0, 20)) {
      const l = logits[COLS + t];
      expect(Math.abs(got[COLS + t] - (l > 0 ? l / 1.3 : l * 1.3))).toBeLessThanOrEqual(8 * 2 ** -24 * 1.3 * Math.abs(l));
    }
    expect(got[7]).toBe(-Infinity);
  });
});

describe('LogitPenalties (the engine side): slots, growth, min-tokens and counts across steps', () => {
  const getGpu = useGpu();
  const EOS = 2;
  const base: SamplingOptions = { maxTokens: 50, temperature: 1, topK: 0, topP: 1, seed: 0, stop: [] };

  it('matches the float64 reference step after step, through a growth of the count buffer and a preemption', async () => {
    const gpu = getGpu();
    const lp = new LogitPenalties(gpu, COLS, [EOS]);
    // seq -> options; 6 sequences with penalties so that the initial 4 count rows grow to 8
    const opts: Record<number, SamplingOptions> = {
      1: { ...base, presencePenalty: 0.5, frequencyPenalty: 0.3 },
      2: { ...base, repetitionPenalty: 1.3 },
      3: { ...base, presencePenalty: 1, frequencyPenalty: 1, repetitionPenalty: 1.2, logitBias: [[EOS, 5], [11, -3]] },
      4: { ...base, logitBias: [[0, 100]] }, // bias only: no count row
      5: { ...base, minTokens: 3 }, // EOS masked for the first 3 tokens
      6: { ...base, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, minP: 0 }, // neutral: untouched
      7: { ...base, frequencyPenalty: 0.7 },
      8: { ...base, repetitionPenalty: 0.8 },
      9: { ...base, presencePenalty: -1 },
    };
    const seqs = new Map<number, { tokens: number[]; promptLength: number }>();
    for (const id of Object.keys(opts).map(Number)) {
      const prompt = tokens(20 + id * 7, 100 + id);
      seqs.set(id, { tokens: prompt, promptLength: prompt.length });
    }
    // steps: which sequences run, and which of them only prefill a chunk (their token is not kept)
    const plan: { run: number[]; chunk?: number[]; release?: number[] }[] = [
      { run: [1, 2, 3, 4], chunk: [2] }, // 3 of the first 4 count rows taken (2 prefills a chunk: its token is not kept)
      { run: [1, 2, 3, 5, 6, 7] }, // the 4th
      { run: [1, 2, 3, 4, 5, 6, 7, 8, 9] }, // 8 and 9: growth to 8 rows (those of 1, 2, 3, 7 copied)
      { run: [2, 3, 5, 7, 8, 9], release: [1, 7] }, // 1 and 7 preempted: rows freed
      { run: [1, 3, 5, 7, 9] }, // and rebuilt from their tokens
      { run: [1, 2, 3, 5, 8] },
    ];
    const next = mulberry32(77);
    let worstAll = 0;
    for (const [k, st] of plan.entries()) {
      for (const id of st.release ?? []) lp.release(id);
      const rows: PenaltyRowInput[] = st.run.map((id) => {
        const s = seqs.get(id)!;
        return { seq: id, sampling: opts[id], tokens: s.tokens, promptLength: s.promptLength, ahead: 0, accepts: !(st.chunk ?? []).includes(id) };
      });
      const logits = normalArray(rows.length * COLS, 1000 + k, 5);
      const sampledIds = rows.map(() => Math.floor(next() * COLS));
      const lb = gpu.upload(logits);
      const sb = gpu.upload(Uint32Array.from(sampledIds));
      const step = gpu.step();
      const after = lp.record(step, lb, rows);
      after?.(sb);
      await step.submit();
      const got = await gpu.readF32(lb, rows.length * COLS);
      for (const b of [lb, sb]) b.destroy();
      // the reference from the options' definitions and the tokens so far
      const per: RowPenaltiesRef[] = rows.map((r) => {
        const o = r.sampling;
        const s = seqs.get(r.seq)!;
        const bias = new Map(o.logitBias ?? []);
        if (s.tokens.length - s.promptLength < (o.minTokens ?? 0)) bias.set(EOS, -Infinity);
        return {
          bias: [...bias],
          presence: o.presencePenalty,
          frequency: o.frequencyPenalty,
          repetition: o.repetitionPenalty,
          prompt: s.tokens.slice(0, s.promptLength),
          output: s.tokens.slice(s.promptLength),
        };
      });
      const ref = penaltiesRef(logits, rows.length, COLS, per);
      const scale = (i: number) => {
        const q = per[Math.floor(i / COLS)];
        const n = (q.output ?? []).filter((t) => t === i % COLS).length;
        const r = q.repetition ?? 1;
        const b = q.bias?.find(([t]) => t === i % COLS)?.[1] ?? 0;
        return (Math.abs(logits[i]) + Math.abs(b)) * Math.max(r, 1 / r) + Math.abs((q.frequency ?? 0) * n) + Math.abs(q.presence ?? 0);
      };
      worstAll = Math.max(worstAll, expectLogits(got, logits, ref, scale, `step ${k}`));
      // min-tokens: EOS masked while fewer than 3 tokens were generated, free after
      const r5 = rows.findIndex((r) => r.seq === 5);
      if (r5 >= 0) {
        const generated = seqs.get(5)!.tokens.length - seqs.get(5)!.promptLength;
        if (generated < 3) expect(got[r5 * COLS + EOS], `step ${k}`).toBe(-Infinity);
        else expect(got[r5 * COLS + EOS], `step ${k}`).toBe(logits[r5 * COLS + EOS]);
      }
      rows.forEach((r, i) => r.accepts && seqs.get(r.seq)!.tokens.push(sampledIds[i]));
    }
    expect(worstAll).toBeLessThan(8); // measured: 1.76 ULP of the scale
  });

  it('records no dispatch for rows without options (or with neutral values)', async () => {
    const gpu = getGpu();
    const lp = new LogitPenalties(gpu, COLS, [EOS]);
    const lb = gpu.createBuffer(COLS * 4);
    const step = gpu.step();
    const dispatch = vi.spyOn(step, 'dispatch');
    const neutral = { ...base, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, minTokens: 0, minP: 0, logitBias: [] };
    const done = { ...base, minTokens: 2 }; // min_tokens already reached
    const rows = [base, neutral, done].map((sampling, i) => ({ seq: i, sampling, tokens: [1, 2, 3, 4], promptLength: 2, ahead: 0, accepts: true }));
    expect(lp.record(step, lb, rows)).toBeNull();
    expect(dispatch).not.toHaveBeenCalled();
    await step.submit();
    lb.destroy();
  });
});

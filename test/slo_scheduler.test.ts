import { describe, expect, it } from 'vitest';
import type { BatchShape, CostModel } from '../src/scheduler/cost_model.ts';
import { EdfScheduler, effectiveDeadline } from '../src/scheduler/edf.ts';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { OnlineCostModel } from '../src/scheduler/online_cost.ts';
import type { Scheduler, SeqView, StepPlan } from '../src/scheduler/scheduler.ts';
import { SloScheduler } from '../src/scheduler/slo.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { expectValidPlan, kvOf, mustProgress } from './helpers/kv_view.ts';


/** 10 ms per step + 1 ms per prompt token + 2 ms per decoding sequence. */
const fakeCost: CostModel = {
  stepSeconds: (b: BatchShape) => 0.01 + 0.001 * b.prefillTokens + 0.002 * b.decodeSeqs,
  kvTransferSeconds: () => 0,
  kvCapacityTokens: 1e6,
  describe: () => 'fake',
};

/** A waiting request of `prompt` tokens (ids give the arrival order). */
const waiting = (id: number, prompt: number, extra: Partial<SeqView> = {}): SeqView => ({
  id,
  arrival: id,
  arrivalTime: 0,
  promptTokens: prompt,
  generated: 0,
  maxTokens: 16,
  totalTokens: prompt,
  computed: 0,
  state: 'waiting',
  ...extra,
});

/** A running, decoding request that has generated `generated` tokens. */
const decoding = (id: number, prompt: number, generated: number, extra: Partial<SeqView> = {}): SeqView => ({
  id,
  arrival: id,
  arrivalTime: 0,
  promptTokens: prompt,
  generated,
  maxTokens: 64,
  totalTokens: prompt + generated,
  computed: prompt + generated - 1,
  state: 'running',
  firstTokenTime: 0.1,
  ...extra,
});

const big = { tokenBudget: 1000, maxBatch: 16 };

describe('EDF scheduler', () => {
  it("computes each sequence's next deadline from its SLO", () => {
    expect(effectiveDeadline(waiting(1, 4, { arrivalTime: 2, slo: { ttftMs: 500, deadlineMs: 10_000 } }))).toBeCloseTo(2.5);
    expect(effectiveDeadline(waiting(1, 4, { arrivalTime: 2, slo: { deadlineMs: 3000 } }))).toBeCloseTo(5);
    // generating: firstTokenTime + tpot x generated
    expect(effectiveDeadline(decoding(1, 4, 10, { firstTokenTime: 1, slo: { ttftMs: 100, tpotMs: 50 } }))).toBeCloseTo(1.5);
    expect(effectiveDeadline(decoding(1, 4, 10, { firstTokenTime: 1, slo: { tpotMs: 50, deadlineMs: 1200 } }))).toBeCloseTo(1.2);
    expect(effectiveDeadline(waiting(1, 4))).toBe(Infinity);
  });

  it('admits waiting requests in deadline order, requests without an SLO last in arrival order', () => {
    const seqs = [
      waiting(1, 10),
      waiting(2, 10, { slo: { deadlineMs: 9000 } }),
      waiting(3, 10, { slo: { ttftMs: 200 } }),
      waiting(4, 10),
      waiting(5, 10, { slo: { ttftMs: 1000 } }),
    ];
    const plan = new EdfScheduler().plan(seqs, kvOf(seqs, 1000), { tokenBudget: 1000, maxBatch: 16 });
    expect(plan.items.map((i) => i.seq)).toEqual([3, 5, 2, 1, 4]);
    // a tight budget goes to the earliest deadlines
    const tight = new EdfScheduler().plan(seqs, kvOf(seqs, 1000), { tokenBudget: 25, maxBatch: 16 });
    expect(tight.items).toEqual([{ seq: 3, tokens: 10 }, { seq: 5, tokens: 10 }, { seq: 2, tokens: 5 }]);
  });

  it('preempts the running sequence with the latest deadline when KV is short', () => {
    // 6 blocks; each running sequence holds 2 (8 tokens computed) and seq 1 needs a third
    const seqs = [
      decoding(1, 8, 1, { slo: { tpotMs: 10 } }), // due 0.11
      decoding(2, 8, 1, { slo: { tpotMs: 5000 } }), // due 5.1
      decoding(3, 8, 1, { slo: { tpotMs: 100 } }), // due 0.2
    ];
    const plan = new EdfScheduler().plan(seqs, kvOf(seqs, 6), { tokenBudget: 32, maxBatch: 8 });
    expect(plan.preempt).toEqual([2]);
    expect(plan.items).toEqual([{ seq: 1, tokens: 1 }, { seq: 3, tokens: 1 }]);
  });
});

describe('SLO scheduler', () => {
  it('rejects a request that cannot meet its SLO even alone, and serves a feasible one', () => {
    const slo = new SloScheduler(fakeCost);
    // 200 prompt tokens take >= 0.21 s alone: a 100 ms TTFT is hopeless, 1 s is feasible
    const seqs = [waiting(1, 200, { slo: { ttftMs: 100 } }), waiting(2, 200, { slo: { ttftMs: 1000 } })];
    const plan = slo.plan(seqs, kvOf(seqs, 1000), big, 0);
    // the rejection states the estimate: 10 ms + 200 x 1 ms alone, against 100 ms left
    expect(plan.reject).toEqual([{ seq: 1, objective: 'ttft', neededSeconds: fakeCost.stepSeconds({ prefillTokens: 200, prefillAttention: 200 * 200, decodeSeqs: 0, decodeContext: 0 }), aheadSeconds: 0, leftSeconds: 0.1 }]);
    expect(plan.items).toEqual([{ seq: 2, tokens: 200 }]);
    // a deadline already past is hopeless for a running sequence too
    const late = [decoding(3, 8, 4, { slo: { deadlineMs: 500 } })];
    expect(slo.plan(late, kvOf(late, 100), big, 1).reject).toMatchObject([{ seq: 3, objective: 'deadline', leftSeconds: -0.5 }]);
    // a TPOT below one solo decode step (12 ms) cannot be met by any schedule
    const fast = [waiting(4, 4, { slo: { tpotMs: 5 } })];
    expect(slo.plan(fast, kvOf(fast, 100), big, 0).reject).toEqual([{ seq: 4, objective: 'tpot', neededSeconds: 0.012, aheadSeconds: 0, leftSeconds: 0.005 }]);
    // ... but a stream already going is never cut for its TPOT
    const going = [decoding(5, 4, 3, { slo: { tpotMs: 5 } })];
    expect(slo.plan(going, kvOf(going, 100), big, 5).reject).toBeUndefined();
  });

  it('orders by least slack: an urgent new request gets the budget and the batch slot ahead of others; running decodes keep theirs', () => {
    const slo = new SloScheduler(fakeCost);
    const now = 1;
    const seqs = [
      decoding(1, 8, 10, { slo: { tpotMs: 500 }, maxTokens: 12 }), // far ahead of its TPOT
      waiting(2, 20, { arrivalTime: 0.9, slo: { ttftMs: 200 } }), // 30 ms of prefill, due in 100 ms
      decoding(3, 8, 10), // no SLO: leftover capacity only
      waiting(4, 20, { arrivalTime: 0.5, slo: { deadlineMs: 60_000 } }),
    ];
    const slack = (s: SeqView) => slo.assess(s, now, big).slack;
    expect(slack(seqs[1])).toBeCloseTo(0.9 + 0.2 - now - 0.03, 6);
    expect(slack(seqs[1])).toBeLessThan(slack(seqs[0]));
    expect(slack(seqs[2])).toBe(Infinity);
    const bySeq = (p: StepPlan) => [...p.items].sort((a, b) => a.seq - b.seq);
    const plan = slo.plan(seqs, kvOf(seqs, 1000), { tokenBudget: 21, maxBatch: 8 }, now);
    // seq 2 (least slack) takes the budget ahead of seq 4, leaving a token for each running decode (1 and 3); none is left for 4
    expect(bySeq(plan)).toEqual([{ seq: 1, tokens: 1 }, { seq: 2, tokens: 19 }, { seq: 3, tokens: 1 }]);
    const roomy = slo.plan(seqs, kvOf(seqs, 1000), { tokenBudget: 100, maxBatch: 8 }, now);
    expect(bySeq(roomy)).toEqual([{ seq: 1, tokens: 1 }, { seq: 2, tokens: 20 }, { seq: 3, tokens: 1 }, { seq: 4, tokens: 20 }]);
    // one slot for a prompt beside the two decodes: the urgent one gets it
    expect(bySeq(slo.plan(seqs, kvOf(seqs, 1000), { tokenBudget: 100, maxBatch: 3 }, now)).map((i) => i.seq)).toEqual([1, 2, 3]);
  });

  it('estimates output length from finished sequences: a conditional p90, capped by max_tokens', () => {
    const slo = new SloScheduler(fakeCost);
    const s = (generated: number, maxTokens = 1000) => decoding(1, 4, generated, { maxTokens });
    expect(slo.estimateOutput(s(0))).toBe(1000); // no samples yet: max_tokens
    for (let i = 1; i <= 100; i++) slo.observeFinished(i); // lengths 1..100
    expect(slo.estimateOutput(s(0))).toBe(90);
    expect(slo.estimateOutput(s(0, 50))).toBe(50);
    expect(slo.estimateOutput(s(50))).toBe(95); // p90 of 51..100
    expect(slo.estimateOutput(s(99))).toBe(1000); // beyond experience: max_tokens
    // the window forgets old samples
    const w = new SloScheduler(fakeCost, { window: 10, minSamples: 2 });
    for (let i = 0; i < 50; i++) w.observeFinished(1000);
    for (let i = 0; i < 10; i++) w.observeFinished(10);
    expect(w.estimateOutput(s(0, 5000))).toBe(10);
  });

  it('preempts the sequence with the most slack when KV is short, no-SLO ones first', () => {
    const seqs = [
      decoding(1, 8, 1, { slo: { tpotMs: 50 } }),
      decoding(2, 8, 1),
      decoding(3, 8, 1, { slo: { tpotMs: 5000 } }),
    ];
    const plan = new SloScheduler(fakeCost).plan(seqs, kvOf(seqs, 6), big, 0.1);
    expect(plan.preempt).toEqual([2]);
    expect(plan.items.map((i) => i.seq)).toEqual([1, 3]);
  });

  it('random states: never over the budget, batch or KV; no sequence twice; only SLO requests rejected, and not planned; never idle while work fits', () => {
    const rand = mulberry32(11);
    const policies: Scheduler[] = [new EdfScheduler(fakeCost), new SloScheduler(fakeCost)];
    for (const p of policies) for (let i = 0; i < 30; i++) p.observeFinished?.(1 + Math.floor(rand() * 40));
    const progressChecked: Record<string, number> = { edf: 0, slo: 0 };
    for (let trial = 0; trial < 400; trial++) {
      const seqs: SeqView[] = [];
      const now = rand() * 3;
      for (let id = 0; id < 1 + Math.floor(rand() * 12); id++) {
        const prompt = 1 + Math.floor(rand() * 40);
        const generated = rand() < 0.5 ? Math.floor(rand() * 20) : 0;
        const total = prompt + generated;
        const running = rand() < 0.5;
        const r = rand();
        const slo = r < 0.25 ? undefined : r < 0.5 ? { ttftMs: rand() * 2000 } : r < 0.75 ? { tpotMs: rand() * 100 } : { deadlineMs: rand() * 5000, tpotMs: rand() < 0.5 ? rand() * 100 : undefined };
        seqs.push({
          id,
          arrival: id,
          arrivalTime: rand() * now,
          promptTokens: prompt,
          generated,
          maxTokens: generated + 1 + Math.floor(rand() * 30),
          firstTokenTime: generated > 0 ? now * rand() : undefined,
          slo,
          priority: Math.floor(rand() * 3),
          totalTokens: total,
          computed: running ? Math.floor(rand() * total) : 0,
          state: running ? 'running' : 'waiting',
        });
      }
      const kv = kvOf(seqs, seqs.reduce((n, s) => n + (s.state === 'running' ? Math.ceil(s.computed / 4) : 0), 0) + Math.floor(rand() * 20));
      const limits = { tokenBudget: 1 + Math.floor(rand() * 64), maxBatch: 1 + Math.floor(rand() * 6) };
      for (const p of policies) {
        const plan: StepPlan = p.plan(seqs, kv, limits, now);
        expectValidPlan(plan, seqs, kv, limits);
        if (p.name === 'edf') expect(plan.reject).toBeUndefined();
        const rejected = new Set(plan.reject?.map((r) => r.seq));
        for (const s of seqs) if (rejected.has(s.id)) expect(s.slo).toBeDefined();
        // never idle while work fits. The slo policy may trim prompt work to nothing while a stream with a
        // tpot runs (a decode token is never trimmed); EDF serves any sequence that fits.
        const served = seqs.filter((s) => !rejected.has(s.id));
        const capped = p.name === 'slo' && served.some((s) => s.state === 'running' && s.firstTokenTime !== undefined && s.slo?.tpotMs !== undefined);
        const isDecode = (s: SeqView) => s.state === 'running' && s.totalTokens - s.computed === 1 && s.computed >= s.promptTokens;
        if (mustProgress(served, kv, limits, capped ? isDecode : undefined)) {
          progressChecked[p.name]++;
          expect(plan.items.length, `${p.name}: ${JSON.stringify({ seqs, limits, now })}`).toBeGreaterThan(0);
        }
      }
    }
    // not vacuous: 360 (edf) and 254 (slo) of these 400 states must progress
    expect(progressChecked.edf).toBeGreaterThan(200);
    expect(progressChecked.slo).toBeGreaterThan(150);
  });
});

describe('online cost model', () => {
  it('predicts 0 until it has measured enough steps, then fits a + b x prompt tokens + c x decodes', () => {
    const m = new OnlineCostModel(1000, 64, 8);
    expect(m.stepSeconds({ prefillTokens: 100, prefillAttention: 0, decodeSeqs: 4, decodeContext: 0 })).toBe(0);
    const rand = mulberry32(5);
    for (let i = 0; i < 40; i++) {
      const p = Math.floor(rand() * 200);
      const d = Math.floor(rand() * 16);
      m.observe({ sequences: d + 1, promptTokens: p, decodeTokens: d, seconds: 0.02 + 0.0005 * p + 0.003 * d });
    }
    const c = m.coefficients()!;
    expect(c[0]).toBeCloseTo(0.02, 6);
    expect(c[1]).toBeCloseTo(0.0005, 8);
    expect(c[2]).toBeCloseTo(0.003, 7);
    expect(m.stepSeconds({ prefillTokens: 100, prefillAttention: 0, decodeSeqs: 4, decodeContext: 0 })).toBeCloseTo(0.082, 6);
    expect(m.describe()).toMatch(/online step-time fit over 40 steps/);
    // identical steps: no slope to fit, the mean step time
    const flat = new OnlineCostModel();
    for (let i = 0; i < 10; i++) flat.observe({ sequences: 1, promptTokens: 0, decodeTokens: 1, seconds: 0.05 });
    expect(flat.stepSeconds({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: 0 })).toBeCloseTo(0.05, 6);
  });
});

describe('serve flags', () => {
  it('parses --slo-class specs and builds the --policy scheduler', async () => {
    const { parseSloClasses, schedulerFor } = await import('../src/cli/serve.ts');
    expect(parseSloClasses(['interactive=ttft:500,tpot:50', 'batch=deadline:60000'])).toEqual({ interactive: { ttftMs: 500, tpotMs: 50 }, batch: { deadlineMs: 60_000 } });
    for (const bad of ['interactive', 'x=ttft', 'x=ttft:0', 'x=latency:5', 'x=ttft:5:6', 'x=tpot:fast']) expect(() => parseSloClasses([bad]), bad).toThrow(/--slo-class/);
    expect((await schedulerFor('fcfs', undefined, 1000)).scheduler.name).toBe('fcfs');
    expect((await schedulerFor('edf', undefined, 1000)).scheduler.name).toBe('edf');
    const slo = await schedulerFor('slo', undefined, 1000);
    expect(slo.scheduler.name).toBe('slo');
    expect(slo.online).toBeInstanceOf(OnlineCostModel);
    await expect(schedulerFor('lottery', undefined, 1000)).rejects.toThrow(/--policy/);
  });
});

describe('slo policy: streams keep their pace', () => {
  it('trims prompt work so the step fits what running streams can absorb; fcfs does not', () => {
    // a stream with tpot 20 ms, on schedule (its next token due now): it tolerates 2 x 20 ms steps
    const now = 10;
    const stream: SeqView = {
      id: 1,
      arrival: 1,
      arrivalTime: 9,
      promptTokens: 10,
      generated: 5,
      maxTokens: 100,
      totalTokens: 16,
      computed: 15,
      state: 'running',
      firstTokenTime: now - 5 * 0.02,
      slo: { ttftMs: 5000, tpotMs: 20 },
    };
    const prompt = waiting(2, 100, { arrivalTime: now, slo: { ttftMs: 5000, tpotMs: 20 } });
    const seqs = [stream, prompt];
    const limits = { tokenBudget: 512, maxBatch: 8 };
    const slo = new SloScheduler(fakeCost, { paceFloor: 2 }).plan(seqs, kvOf(seqs, 1000), limits, now);
    const taken = slo.items.find((i) => i.seq === 2)?.tokens ?? 0;
    // 10 ms + 2 ms (the decode) + 1 ms per prompt token <= 40 ms: at most 28 prompt tokens
    expect(slo.items.find((i) => i.seq === 1)).toEqual({ seq: 1, tokens: 1 });
    expect(taken).toBe(28);
    // with the default floor of one tpot: 10 + 2 + n <= 20 ms (in floating point, 7 tokens: 0.01 + 0.008 + 0.002 rounds above 0.02)
    const tight = new SloScheduler(fakeCost).plan(seqs, kvOf(seqs, 1000), limits, now);
    expect(tight.items.find((i) => i.seq === 2)?.tokens).toBe(0.01 + 0.001 * 8 + 0.002 <= 0.02 ? 8 : 7);
    const fcfs = new FcfsScheduler().plan(seqs, kvOf(seqs, 1000), limits);
    expect(fcfs.items.find((i) => i.seq === 2)?.tokens).toBe(100);
  });

  it('a running prompt the cap holds back keeps its KV: deferred, not preempted', () => {
    // a stream with tpot 5 ms absorbs 2 x 5 ms steps; its decode alone is predicted at 12 ms, so no prompt token fits beside it
    const now = 10;
    const stream = decoding(1, 10, 5, { firstTokenTime: now - 5 * 0.005, slo: { tpotMs: 5 } });
    const prefilling: SeqView = { ...waiting(2, 100), state: 'running', computed: 32 };
    const seqs = [stream, prefilling];
    expect(new SloScheduler(fakeCost).plan(seqs, kvOf(seqs, 1000), big, now)).toEqual({ items: [{ seq: 1, tokens: 1 }], preempt: [] });
  });
});

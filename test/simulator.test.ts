import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import type { BatchShape, CostModel } from '../src/scheduler/cost_model.ts';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { readFileSync } from 'node:fs';
import { makeScheduler, parseLength, parseSlo, POLICIES, simulateCli } from '../src/cli/simulate.ts';
import type { Scheduler } from '../src/scheduler/scheduler.ts';
import { analyticalCostModel } from '../src/sim/cost/analytical.ts';
import { type Placement, type SimOptions, simulate, type StepRecord } from '../src/sim/simulator.ts';
import { candidatePlacements, maxGoodRate, planPlacement } from '../src/sim/sweep.ts';
import { readTrace } from '../src/sim/trace.ts';
import { arrivalTimes, type SimRequest, syntheticWorkload, traceWorkload } from '../src/sim/workload.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { useTmpDirs } from './helpers/tmp.ts';

/** A small linear step-time model: enough structure for the invariants, nothing fitted. */
function toyCost(kvCapacityTokens: number): CostModel {
  return {
    kvCapacityTokens,
    stepSeconds: (b: BatchShape) => 0.004 + 2e-5 * b.prefillTokens + 1e-8 * b.prefillAttention + 1e-4 * b.decodeSeqs + 2e-7 * b.decodeContext,
    kvTransferSeconds: (tokens) => 1e-3 + tokens * 1e-6,
    describe: () => 'toy linear model',
  };
}

function randomWorkload(seed: number, n: number): SimRequest[] {
  const next = mulberry32(seed);
  let t = 0;
  const out: SimRequest[] = [];
  for (let i = 0; i < n; i++) {
    // bursts of simultaneous arrivals now and then
    if (next() > 0.2) t += -Math.log(1 - next()) / 40;
    out.push({ arrival: t, inputTokens: 1 + Math.floor(next() * 600), outputTokens: 1 + Math.floor(next() * 200), maxTokens: next() < 0.3 ? 256 : undefined });
  }
  return out;
}

/** Checks every step against the engine's rules; returns the steps. */
function checkedRun(w: SimRequest[], o: SimOptions) {
  const steps: StepRecord[] = [];
  const lastEnd = new Map<number, number>();
  const where = new Map<number, { instance: number; role: string }[]>();
  const r = simulate(w, {
    ...o,
    onStep: (s) => {
      steps.push(s);
      // time never goes backwards, and an instance runs one step at a time
      expect(s.end).toBeGreaterThan(s.start);
      expect(s.start).toBeGreaterThanOrEqual(lastEnd.get(s.instance) ?? -Infinity);
      lastEnd.set(s.instance, s.end);
      const tokens = s.plan.items.reduce((a, i) => a + i.tokens, 0);
      expect(tokens).toBeLessThanOrEqual(o.limits!.tokenBudget!);
      expect(s.plan.items.length).toBeLessThanOrEqual(o.limits!.maxBatch!);
      expect(s.kvUsedBlocks).toBeLessThanOrEqual(s.kvBlocks);
      for (const { seq } of s.plan.items) {
        const list = where.get(seq) ?? [];
        if (list.at(-1)?.instance !== s.instance) list.push({ instance: s.instance, role: s.role });
        where.set(seq, list);
      }
    },
  });
  return { ...r, steps, where };
}

describe('simulator invariants on random workloads', () => {
  const placements: Placement[] = [
    { kind: 'colocated', instances: 1 },
    { kind: 'colocated', instances: 3 },
    { kind: 'disaggregated', prefill: 1, decode: 2 },
    { kind: 'disaggregated', prefill: 2, decode: 1 },
  ];
  for (const seed of [1, 2, 3]) {
    for (const placement of placements) {
      it(`seed ${seed}, ${placement.kind === 'colocated' ? `${placement.instances} colocated` : `${placement.prefill}P+${placement.decode}D`}: every request ends once, limits hold`, () => {
        const w = randomWorkload(seed, 400);
        // a small KV pool (about 6 long requests) so that preemption and recompute happen
        const o: SimOptions = { cost: toyCost(5000), scheduler: () => new FcfsScheduler(), placement, limits: { tokenBudget: 256, maxBatch: 16 }, blockSize: 16, maxTokens: 1024, maxWaiting: 10_000 };
        const r = checkedRun(w, o);
        expect(r.requests).toHaveLength(w.length);
        r.requests.forEach((q, i) => {
          expect(q.id).toBe(i);
          // the pool holds any single request here, the queue is unbounded, FCFS rejects nobody
          expect(q.outcome).toBe('finished');
          expect(q.generated).toBe(Math.min(w[i].outputTokens, w[i].maxTokens ?? Infinity));
          expect(q.ttft!).toBeGreaterThan(0);
          expect(q.e2e!).toBeGreaterThanOrEqual(q.ttft!);
        });
        // a sequence lives on one instance at a time: colocated, one instance; P/D, prefill then decode
        for (const [, list] of r.where) {
          if (placement.kind === 'colocated') expect(list).toHaveLength(1);
          else {
            expect(list.length).toBeLessThanOrEqual(2);
            expect(list[0].role).toBe('prefill');
            if (list.length === 2) expect(list[1].role).toBe('decode');
          }
        }
        // every token fed was planned: prompt + recompute + decode tokens add up
        const fed = r.steps.reduce((a, s) => a + s.plan.items.reduce((b, i) => b + i.tokens, 0), 0);
        const need = r.requests.reduce((a, q) => a + q.inputTokens + q.generated - 1, 0);
        if (placement.kind === 'colocated') expect(fed).toBeGreaterThanOrEqual(need);
        if (placement.kind === 'colocated' && r.summary.preemptions === 0) expect(fed).toBe(need);
      });
    }
  }

  for (const policy of POLICIES) {
    it(`policy ${policy} under mixed SLOs, 1P+1D and 2 colocated: every request ends once, limits hold`, () => {
      const next = mulberry32(5);
      const w = randomWorkload(4, 300).map((r) => ({ ...r, slo: next() < 0.5 ? { ttftMs: 200 + next() * 800, tpotMs: 20 + next() * 60 } : next() < 0.5 ? { deadlineMs: 2000 + next() * 8000 } : undefined }));
      for (const placement of [{ kind: 'colocated', instances: 2 }, { kind: 'disaggregated', prefill: 1, decode: 1 }] as Placement[]) {
        const cost = toyCost(6000);
        const r = checkedRun(w, { cost, scheduler: () => makeScheduler(policy, cost), placement, limits: { tokenBudget: 256, maxBatch: 16 }, maxWaiting: 10_000 });
        expect(r.requests).toHaveLength(w.length);
        r.requests.forEach((q, i) => expect(q.id).toBe(i));
        for (const q of r.requests) if (q.outcome === 'finished') expect(q.generated).toBe(Math.min(w[q.id].outputTokens, w[q.id].maxTokens ?? Infinity));
        expect(r.requests.filter((q) => q.outcome === 'refused' || q.outcome === 'unfinished')).toEqual([]);
        if (policy !== 'slo') expect(r.summary.rejected).toBe(0);
      }
    });
  }

  it('exercises preemption (the small pool runs out)', () => {
    const o: SimOptions = { cost: toyCost(5000), scheduler: new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 }, limits: { tokenBudget: 256, maxBatch: 16 }, maxWaiting: 10_000 };
    expect(checkedRun(randomWorkload(1, 400), o).summary.preemptions).toBeGreaterThan(0);
  });

  it('same seed, same result', () => {
    const o: SimOptions = { cost: toyCost(8000), scheduler: () => new FcfsScheduler(), placement: { kind: 'disaggregated', prefill: 1, decode: 2 }, slo: { ttftMs: 300, tpotMs: 20 } };
    const w = () => syntheticWorkload({ arrivals: 'gamma', cv: 2, rate: 20, count: 300, input: { kind: 'uniform', min: 10, max: 500 }, output: { kind: 'uniform', min: 1, max: 100 }, seed: 9 });
    const a = simulate(w(), o);
    const b = simulate(w(), o);
    expect(b.requests).toEqual(a.requests);
    expect({ ...b.summary, wallSeconds: 0 }).toEqual({ ...a.summary, wallSeconds: 0 });
    const c = simulate(syntheticWorkload({ arrivals: 'gamma', cv: 2, rate: 20, count: 300, input: { kind: 'uniform', min: 10, max: 500 }, output: { kind: 'uniform', min: 1, max: 100 }, seed: 10 }), o);
    expect(c.requests).not.toEqual(a.requests);
  });

  it('refuses what the engine would refuse, counts rejections as misses, and runs every policy object it is given', () => {
    const w: SimRequest[] = [
      { arrival: 0, inputTokens: 100, outputTokens: 10 },
      { arrival: 0, inputTokens: 100_000, outputTokens: 10 }, // larger than the pool
      { arrival: 0.001, inputTokens: 50, outputTokens: 5 },
    ];
    // a policy that ends the newest waiting sequence on its first plan and otherwise defers to FCFS
    const fcfs = new FcfsScheduler();
    let rejected = false;
    const rejecting: Scheduler = {
      name: 'reject-once',
      plan(seqs, kv, limits) {
        const last = seqs.at(-1)!;
        if (!rejected && seqs.length > 1) {
          rejected = true;
          return { items: [], preempt: [], reject: [{ seq: last.id, objective: 'ttft', neededSeconds: 2, aheadSeconds: 0.5, leftSeconds: 1 }] };
        }
        return fcfs.plan(seqs, kv, limits);
      },
    };
    const r = simulate(w, { cost: toyCost(4096), scheduler: rejecting, placement: { kind: 'colocated', instances: 1 }, slo: { ttftMs: 1000 } });
    expect(r.requests.map((q) => q.outcome)).toEqual(['finished', 'refused', 'rejected']);
    // each miss says why, a rejection with the estimate the policy gave
    expect(r.requests.map((q) => q.miss)).toEqual([null, 'refused-too-large', 'rejected']);
    expect(r.requests[2].rejection).toEqual({ objective: 'ttft', neededSeconds: 2, aheadSeconds: 0.5, leftSeconds: 1 });
    expect(r.summary.misses).toEqual({ 'refused-too-large': 1, rejected: 1 });
    expect(r.requests.map((q) => q.sloMet)).toEqual([true, false, false]);
    expect(r.summary.attainment).toBeCloseTo(1 / 3, 12);
  });

  it('measures TTFT, TPOT and e2e on the simulated clock (one request, hand-computed)', () => {
    const cost = toyCost(4096);
    const r = simulate([{ arrival: 1, inputTokens: 100, outputTokens: 3 }], { cost, scheduler: new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 } });
    const prefill = cost.stepSeconds({ prefillTokens: 100, prefillAttention: 100 * 100, decodeSeqs: 0, decodeContext: 0 });
    const d1 = cost.stepSeconds({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: 101 });
    const d2 = cost.stepSeconds({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: 1, decodeContext: 102 });
    const q = r.requests[0];
    expect(q.ttft).toBeCloseTo(prefill, 12);
    expect(q.tpot).toBeCloseTo((d1 + d2) / 2, 12);
    expect(q.e2e).toBeCloseTo(prefill + d1 + d2, 12);
    // disaggregated: the same, with the KV transfer before the second token
    const pd = simulate([{ arrival: 1, inputTokens: 100, outputTokens: 3 }], { cost, scheduler: new FcfsScheduler(), placement: { kind: 'disaggregated', prefill: 1, decode: 1 } });
    expect(pd.requests[0].ttft).toBeCloseTo(prefill, 12);
    expect(pd.requests[0].e2e).toBeCloseTo(prefill + cost.kvTransferSeconds(100) + d1 + d2, 12);
  });
});

function stats(gaps: number[]) {
  const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
  const sd = Math.sqrt(gaps.reduce((a, b) => a + (b - mean) ** 2, 0) / (gaps.length - 1));
  return { rate: 1 / mean, cv: sd / mean };
}
const gapsOf = (t: number[]) => t.map((x, i) => x - (i ? t[i - 1] : 0));

describe('synthetic arrivals', () => {
  // n = 50,000 gaps: the relative standard error of the mean is cv / sqrt(n) (0.45% at cv 1,
  // 0.9% at cv 2) and of the standard deviation about sqrt((kurtosis - 1) / 4n) (kurtosis of a
  // Gamma gap: 3 + 6 cv^2; 0.3% at cv 0.5, 0.5% at cv 1, 1.1% at cv 2); the bounds are ~4 sigma
  it('Poisson: mean rate and CV 1 within 2% / 3%', () => {
    const s = stats(gapsOf(arrivalTimes({ arrivals: 'poisson', rate: 8, count: 50_000, seed: 3 })));
    expect(Math.abs(s.rate / 8 - 1)).toBeLessThan(0.02);
    expect(Math.abs(s.cv - 1)).toBeLessThan(0.03);
  });
  for (const cv of [0.5, 2, 4]) {
    it(`Gamma, CV ${cv}: mean rate within ${cv >= 2 ? 4 : 2}%, CV within ${cv >= 2 ? 8 : 3}%`, () => {
      const s = stats(gapsOf(arrivalTimes({ arrivals: 'gamma', cv, rate: 3, count: 50_000, seed: 11 })));
      expect(Math.abs(s.rate / 3 - 1)).toBeLessThan(cv >= 2 ? 0.04 : 0.02);
      expect(Math.abs(s.cv / cv - 1)).toBeLessThan(cv >= 2 ? 0.08 : 0.03);
    });
  }
  it('lengths: fixed, uniform bounds, empirical values and trace pairs', () => {
    const w = syntheticWorkload({ arrivals: 'poisson', rate: 1, count: 2000, input: { kind: 'uniform', min: 5, max: 9 }, output: { kind: 'empirical', values: [3, 7] }, seed: 1 });
    expect(new Set(w.map((r) => r.inputTokens))).toEqual(new Set([5, 6, 7, 8, 9]));
    expect(new Set(w.map((r) => r.outputTokens))).toEqual(new Set([3, 7]));
    const pairs = [
      { inputTokens: 10, outputTokens: 1 },
      { inputTokens: 20, outputTokens: 2 },
    ];
    const p = syntheticWorkload({ arrivals: 'poisson', rate: 1, count: 100, input: { kind: 'fixed', value: 1 }, output: { kind: 'fixed', value: 1 }, pairs, seed: 1 });
    for (const r of p) expect(r.outputTokens).toBe(r.inputTokens / 10);
  });
});

describe('placements under the analytical H100 model (Llama-3-8B)', () => {
  const cost = analyticalCostModel('h100', 'llama-3-8b');
  const at = (input: number, output: number) => (rate: number) => syntheticWorkload({ arrivals: 'poisson', rate, count: 400, input: { kind: 'fixed', value: input }, output: { kind: 'fixed', value: output }, seed: 7 });

  it('candidates: colocated and every split', () => {
    expect(candidatePlacements(3).map((p) => (p.kind === 'colocated' ? `c${p.instances}` : `${p.prefill}+${p.decode}`))).toEqual(['c3', '1+2', '2+1']);
  });

  it('prefill-heavy (4096 in, 64 out), TTFT 300 ms / TPOT 20 ms: a P/D split beats colocation in goodput per GPU', () => {
    const res = planPlacement(at(4096, 64), 4, { cost, scheduler: () => new FcfsScheduler(), slo: { ttftMs: 300, tpotMs: 20 } });
    const colocated = res.find((r) => r.placement === 'colocated x4')!;
    expect(res[0].placement).toMatch(/P\+/);
    expect(res[0].ratePerGpu).toBeGreaterThan(colocated.ratePerGpu * 1.1);
  });

  it('short prompts and short answers (512 in, 32 out), TTFT 200 ms / TPOT 30 ms: colocation is at least as good', () => {
    const res = planPlacement(at(512, 32), 4, { cost, scheduler: () => new FcfsScheduler(), slo: { ttftMs: 200, tpotMs: 30 } });
    expect(res[0].placement).toBe('colocated x4');
  });

  it('bisection brackets the 90% attainment rate', () => {
    const g = maxGoodRate(at(1024, 128), { cost, scheduler: () => new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 }, slo: { ttftMs: 500, tpotMs: 50 } });
    expect(g.best!.attainment).toBeGreaterThanOrEqual(0.9);
    const above = g.probes.filter((p) => p.rate > g.ratePerGpu * 1.03);
    expect(above.length).toBeGreaterThan(0);
    for (const p of above) expect(p.attainment).toBeLessThan(0.9);
  });
});

describe('the Azure conv trace', () => {
  it('simulates all 19,366 requests (FCFS, one H100, the trace rate)', () => {
    const trace = readTrace(join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023', 'AzureLLMInferenceTrace_conv.csv'));
    const w = traceWorkload(trace.requests);
    const t0 = performance.now();
    const r = simulate(w, { cost: analyticalCostModel('h100', 'llama-3-8b'), scheduler: () => new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 }, slo: { ttftMs: 500, tpotMs: 50 } });
    const seconds = (performance.now() - t0) / 1e3;
    console.log(`conv trace: ${r.summary.requests} requests, ${r.summary.steps} steps in ${seconds.toFixed(2)} s (${Math.round(r.summary.requests / seconds)} requests/s)`);
    expect(r.summary.requests).toBe(19366);
    expect(r.summary.finished).toBe(19366);
  });
});

describe('SLO-aware scheduling on the Azure conv trace (H100 preset, Llama-3-8B, TTFT 300 ms, TPOT 20 ms)', () => {
  // Past the knee (~10 req/s here), FCFS keeps admitting prompt work until every running stream
  // misses its TPOT; the slo policy protects running streams' pace and rejects what cannot make its
  // TTFT. Measured with 3000 requests: goodput 4.22 vs 2.67 req/s at 14 req/s, 2.22 vs 0.86 at 16,
  // and 7.80 vs 7.78 at 8 (below the knee).
  it('slo attains a higher goodput than fcfs beyond the knee, and about the same below it', async () => {
    const { SloScheduler } = await import('../src/scheduler/slo.ts');
    const trace = readTrace(join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023', 'AzureLLMInferenceTrace_conv.csv'));
    const cost = analyticalCostModel('h100', 'llama-3-8b');
    const run = (rate: number, scheduler: () => Scheduler) =>
      simulate(traceWorkload(trace.requests.slice(0, 3000), { rate }), { cost, scheduler, placement: { kind: 'colocated', instances: 1 }, slo: { ttftMs: 300, tpotMs: 20 } }).summary;
    for (const rate of [14, 16]) {
      const fcfs = run(rate, () => new FcfsScheduler());
      const slo = run(rate, () => new SloScheduler(cost));
      expect(slo.goodputRps, `rate ${rate}`).toBeGreaterThan(1.2 * fcfs.goodputRps);
    }
    const below = [run(8, () => new FcfsScheduler()), run(8, () => new SloScheduler(cost))];
    expect(below[1].goodputRps).toBeGreaterThan(0.97 * below[0].goodputRps);
  });
});

describe('wgserve simulate (CLI module)', () => {
  const tmp = useTmpDirs('wgsim-');
  it('parses SLO and length specs', () => {
    expect(parseSlo('ttft=500,tpot=50')).toEqual({ ttftMs: 500, tpotMs: 50 });
    expect(parseSlo('deadline=2000ms')).toEqual({ deadlineMs: 2000 });
    expect(() => parseSlo('ttft=fast')).toThrow(/ttft=MS/);
    expect(parseLength('128', 'input').dist).toEqual({ kind: 'fixed', value: 128 });
    expect(parseLength('10:20', 'output').dist).toEqual({ kind: 'uniform', min: 10, max: 20 });
    expect(() => parseLength('nope', 'input')).toThrow(/N, A:B or a trace file/);
  });

  it('sweeps policies, writes one JSON object per policy and rate and an SVG plot', async () => {
    const dir = tmp();
    const lines: string[] = [];
    await simulateCli({
      synthetic: 'gamma', cv: 2, rates: [2, 8], inputLen: '256:1024', outputLen: '16:64', requests: 200, hardware: 'l4', modelShape: 'llama-3.2-1b',
      policy: ['fcfs', 'edf'], slo: 'ttft=300,tpot=40', sweep: false, plan: false, tokenBudget: 1024, maxBatch: 64, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 3,
      json: join(dir, 'runs.json'), plot: join(dir, 'plot.svg'), print: (l) => lines.push(l),
    });
    const runs = JSON.parse(readFileSync(join(dir, 'runs.json'), 'utf8')) as Record<string, unknown>[];
    expect(runs.map((r) => [r.policy, r.rate])).toEqual([['fcfs', 2], ['fcfs', 8], ['edf', 2], ['edf', 8]]);
    for (const k of ['attainment', 'goodput_rps', 'ttft_p50', 'ttft_p90', 'ttft_p99', 'tpot_p50', 'tpot_p90', 'tpot_p99']) expect(typeof runs[0][k]).toBe('number');
    expect(readFileSync(join(dir, 'plot.svg'), 'utf8')).toMatch(/^<svg/);
    expect(lines.some((l) => l.includes('attainment'))).toBe(true);
  });

  it('--rate-scale multiplies the rate of a single run (synthetic and trace)', async () => {
    const dir = tmp();
    const common = { inputLen: '128', outputLen: '16', hardware: 'h100', modelShape: 'llama-3-8b', policy: ['fcfs'] as const, sweep: false, plan: false, tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 2, print: () => {} };
    await simulateCli({ ...common, policy: ['fcfs'], synthetic: 'poisson', rate: 2, rateScale: 3, requests: 2000, json: join(dir, 'a.json') });
    const a = JSON.parse(readFileSync(join(dir, 'a.json'), 'utf8'))[0];
    expect(Math.abs(a.rate / 6 - 1)).toBeLessThan(0.1); // 2000 Poisson gaps: 2.2% standard error
    const trace = join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023', 'AzureLLMInferenceTrace_conv.csv');
    await simulateCli({ ...common, policy: ['fcfs'], trace, requests: 500, rateScale: 2, json: join(dir, 'b.json') });
    await simulateCli({ ...common, policy: ['fcfs'], trace, requests: 500, json: join(dir, 'c.json') });
    const [b, c] = ['b', 'c'].map((f) => JSON.parse(readFileSync(join(dir, `${f}.json`), 'utf8'))[0]);
    expect(b.rate / c.rate).toBeCloseTo(2, 9);
  });

  it('--plan reports every placement of the GPUs, best first', async () => {
    const lines: string[] = [];
    await simulateCli({
      synthetic: 'poisson', inputLen: '2048', outputLen: '32', requests: 150, hardware: 'h100', modelShape: 'llama-3-8b', policy: ['fcfs'], slo: 'ttft=300,tpot=25',
      sweep: false, plan: true, gpus: 2, tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 1, print: (l) => lines.push(l),
    });
    expect(lines.filter((l) => /^ {2}(colocated x2|1P\+1D) /.test(l))).toHaveLength(2);
    expect(lines.some((l) => /best: /.test(l))).toBe(true);
  });
});

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { simulateCli } from '../src/cli/simulate.ts';
import { MODEL_SHAPES } from '../src/model/shapes.ts';
import type { BatchShape, CostModel } from '../src/scheduler/cost_model.ts';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { analyticalCostModel, analyticalDegrees, modelWeights } from '../src/sim/cost/analytical.ts';
import { degreesOf } from '../src/sim/cost/degrees.ts';
import { costModelFromJson, type FittedCostModelJson } from '../src/sim/cost/fitted.ts';
import { type DegreeCosts, type Parallelism, linkTransferSeconds, pipelineFill, pipelineStep } from '../src/sim/cost/parallel.ts';
import { kvTokensOf } from '../src/sim/headwise.ts';
import { layoutCandidates, packNodes, planSearch } from '../src/sim/placement_search.ts';
import { simulate, type StepRecord } from '../src/sim/simulator.ts';
import { planPlacement } from '../src/sim/sweep.ts';
import { type SimRequest, syntheticWorkload } from '../src/sim/workload.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const decode = (seqs: number, context: number): BatchShape => ({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: seqs, decodeContext: seqs * context });
const prefill = (tokens: number): BatchShape => ({ prefillTokens: tokens, prefillAttention: tokens * tokens, decodeSeqs: 0, decodeContext: 0 });
const fixed = (rate: number, count: number, input: number, output: number, seed = 3) =>
  syntheticWorkload({ arrivals: 'poisson', rate, count, input: { kind: 'fixed', value: input }, output: { kind: 'fixed', value: output }, seed });

describe('step time per degree (analytical presets)', () => {
  const shape = MODEL_SHAPES['llama-3-8b'];
  const bw = 3.35e12 * 0.7;
  const kvBytes = 32 * 2 * 8 * 128 * 2; // per token, all layers
  const weightsRead = (modelWeights(shape).layerParams + modelWeights(shape).headParams) * 2;

  it('TP2 halves weights, FLOPs and KV per GPU and adds two all-reduces per layer over NVLink', () => {
    const tp2 = analyticalCostModel('h100', 'llama-3-8b', { tensorParallel: 2 });
    // decode of one sequence at context 1024 stays memory-bound on every part
    const link = 450e9 * 0.8;
    const allReduce = 32 * 2 * (10e-6 + ((2 * 1) / 2) * ((1 * 4096 * 2) / link));
    const expected = 1e-3 + (weightsRead / 2 + kvBytes / 2) / bw + (1024 * kvBytes) / 2 / bw + allReduce;
    const e = tp2.estimate(decode(1, 1024));
    expect(e.allReduce).toBeCloseTo(allReduce, 15);
    expect(e.seconds).toBeCloseTo(expected, 12);
    expect(tp2.stepSeconds(decode(1, 1024))).toBe(e.seconds);
    // one GPU: no all-reduce, the pass unchanged (today's preset numbers)
    expect(analyticalCostModel('h100', 'llama-3-8b').estimate(decode(1, 1024)).allReduce).toBe(0);
    // PCIe presets pay more per all-reduce than NVLink ones
    const l4 = (tp: number) => analyticalCostModel('l4', 'llama-3.2-1b', { tensorParallel: tp }).estimate(prefill(512)).allReduce;
    expect(l4(2)).toBeGreaterThan(analyticalCostModel('h100', 'llama-3.2-1b', { tensorParallel: 2 }).estimate(prefill(512)).allReduce);
    expect(l4(1)).toBe(0);
  });

  it('memory per GPU decides the fit and the KV capacity; KV heads beyond the TP degree are not split', () => {
    const s70 = MODEL_SHAPES['llama-3-70b'];
    const total = modelWeights(s70).totalParams * 2;
    const kv70 = 80 * 2 * 8 * 128 * 2;
    const usable = 80e9 * 0.9;
    const degrees = analyticalDegrees('h100', 'llama-3-70b');
    expect(degrees.at({ tp: 1, pp: 1 })).toMatch(/weights need 141\.\d GB per GPU, 72\.0 GB usable/);
    for (const d of [{ tp: 2, pp: 1 }, { tp: 1, pp: 2 }, { tp: 4, pp: 2 }, { tp: 8, pp: 1 }]) {
      const m = degrees.at(d) as CostModel;
      expect(m.kvCapacityTokens, JSON.stringify(d)).toBe(Math.floor((usable - total / (d.tp * d.pp)) / (kv70 / (Math.min(d.tp, 8) * d.pp))));
    }
    // Qwen2.5-7B has 4 KV heads: at TP8 each KV head lives on two GPUs, so KV per GPU is that of TP4
    const q8 = analyticalCostModel('h100', 'qwen2.5-7b', { tensorParallel: 8 });
    const q4 = analyticalCostModel('h100', 'qwen2.5-7b', { tensorParallel: 4 });
    expect(q8.kvCapacityTokens).toBeGreaterThan(q4.kvCapacityTokens); // fewer weights per GPU...
    expect(q8.kvCapacityTokens / q4.kvCapacityTokens).toBeLessThan(1.1); // ...but the same KV share
    expect(analyticalDegrees('h100', 'qwen2.5-7b').degrees(8).filter((d) => d.pp === 1).map((d) => d.tp)).toEqual([1, 2, 4]); // 28 heads: not 8
  });

  it('pipeline: micro-batches through the stages, bubbles when there are fewer than stages', () => {
    const a = 0.01;
    const c = 0.001;
    const pass = (b: BatchShape) => a + c * (b.prefillTokens + b.decodeSeqs);
    const hop = (tokens: number) => 1e-4 + tokens * 1e-6;
    const { step, fill } = pipelineStep(pass, 4, hop);
    // 8 decodes: m = 4 micro-batches of 2; stage = pass(2) / 4 + hop(2); all out after m + pp - 1 stages, next step after pp
    const stage = (a + 2 * c) / 4 + hop(2);
    expect(step(decode(8, 100))).toBeCloseTo(7 * stage, 15);
    expect(fill(decode(8, 100))).toBeCloseTo(3 * stage, 15);
    // a lone decode: one micro-batch, the other stages idle: a whole pass plus the hops, no overlap
    expect(step(decode(1, 100))).toBeCloseTo(pass(decode(1, 100)) + 4 * hop(1), 15);
    expect(fill(decode(1, 100))).toBe(0);
    expect(pipelineStep(pass, 1, hop).step).toBe(pass);
  });

  it('the simulator starts the next pipelined step before the last micro-batch\'s tokens, and times them at the step\'s end', () => {
    const cost = analyticalCostModel('h100', 'llama-3-70b', { pipelineParallel: 4 });
    const steps: StepRecord[] = [];
    const w: SimRequest[] = [{ arrival: 0, inputTokens: 1000, outputTokens: 3 }];
    const r = simulate(w, { cost, scheduler: () => new FcfsScheduler(), placement: { kind: 'colocated', instances: 1, degree: { tp: 1, pp: 4 } }, onStep: (s) => steps.push(s) });
    const first = steps[0];
    // the prompt's 1000 tokens are 4 micro-batches: its token comes at stepSeconds, the next step starts fill earlier
    expect(first.end - first.start).toBeCloseTo(cost.stepSeconds(first.shape) - pipelineFill(cost, first.shape), 12);
    expect(r.requests[0].ttft).toBeCloseTo(cost.stepSeconds(first.shape), 12);
    expect(r.summary.gpus).toBe(4);
  });
});

describe('fitted coefficients per degree', () => {
  const coefficients = (base: number) => ({ base, prefillTokens: 1e-4, prefillAttention: 0, decodeSeqs: 1e-4, decodeContext: 1e-7 });
  const json: FittedCostModelJson = {
    kind: 'fitted',
    coefficients: { ...coefficients(0.02), decodeBase: 0.005 },
    kvCapacityTokens: 10000,
    kvTransferBytesPerSecond: 1e11,
    kvBytesPerToken: 1e5,
    device: 'test',
    model: 'test',
    fittedAt: new Date(0).toISOString(),
    samples: [],
    degrees: [{ tp: 2, coefficients: coefficients(0.015), kvCapacityTokens: 30000 }],
  };
  const degrees = degreesOf(costModelFromJson(json));

  it('uses the measured coefficients, derives pipelines from them, refuses unmeasured TP', () => {
    expect(degrees.degrees(4)).toEqual([{ tp: 1, pp: 1 }, { tp: 2, pp: 1 }, { tp: 1, pp: 2 }, { tp: 2, pp: 2 }, { tp: 1, pp: 4 }]);
    const one = degrees.at({ tp: 1, pp: 1 }) as CostModel;
    // the decode constant applies to steps with decodes only
    expect(one.stepSeconds(decode(2, 100))).toBeCloseTo(0.02 + 0.005 + 2e-4 + 2e-5, 15);
    expect(one.stepSeconds(prefill(100))).toBeCloseTo(0.02 + 1e-2, 15);
    const tp2 = degrees.at({ tp: 2, pp: 1 }) as CostModel;
    expect(tp2.stepSeconds(prefill(100))).toBeCloseTo(0.015 + 1e-2, 15);
    expect(tp2.kvCapacityTokens).toBe(30000);
    const tp2pp2 = degrees.at({ tp: 2, pp: 2 }) as CostModel;
    expect(tp2pp2.kvCapacityTokens).toBe(60000);
    // two micro-batches of 50 tokens, each stage half a pass: all out after 3 stages
    expect(tp2pp2.stepSeconds(prefill(100))).toBeCloseTo(3 * ((0.015 + 50e-4) / 2), 15);
    expect(degrees.at({ tp: 4, pp: 1 })).toMatch(/no coefficients measured at tp4/);
    expect(() => costModelFromJson({ ...json, degrees: [{ tp: 0, coefficients: coefficients(0), kvCapacityTokens: 1 }] })).toThrow(/degrees\[0\]/);
  });
});

/** A source of two degrees with hand-made linear models: one-GPU instances and TP2 ones twice as fast. */
function toyDegrees(): DegreeCosts {
  const model = (speed: number, kv: number): CostModel => ({
    kvCapacityTokens: kv,
    stepSeconds: (b) => (0.004 + 2e-5 * b.prefillTokens + 1e-8 * b.prefillAttention + 1e-4 * b.decodeSeqs + 2e-7 * b.decodeContext) / speed,
    kvTransferSeconds: (t) => 1e-3 + t * 1e-6,
    describe: () => `toy x${speed}`,
  });
  const one = model(1, 200000);
  const two = model(2, 500000);
  return {
    describe: () => 'toy',
    degrees: (max) => [{ tp: 1, pp: 1 }, { tp: 2, pp: 1 }, { tp: 8, pp: 1 }].filter((d) => d.tp <= max),
    at: (d: Parallelism) => (d.tp === 1 ? one : d.tp === 2 ? two : 'too big for the test'),
  };
}

describe('layout enumeration', () => {
  const base = { scheduler: () => new FcfsScheduler(), slo: { ttftMs: 500, tpotMs: 50 } };

  it('every colocated and P/D layout of at most G GPUs, with counts and degrees; skips with reasons', () => {
    const { layouts, skipped } = layoutCandidates(fixed(1, 50, 512, 64), toyDegrees(), base, { gpus: 3 });
    expect(layouts.map((l) => l.layout.label).sort()).toEqual(
      ['colocated x1', 'colocated x2', 'colocated x3', 'colocated x1 tp2', '1P+1D', '1P+2D', '2P+1D', '1P(tp2)+1D', '1P+1D(tp2)'].sort(),
    );
    const gpus = Object.fromEntries(layouts.map((l) => [l.layout.label, l.layout.gpus]));
    expect(gpus['1P(tp2)+1D']).toBe(3);
    expect(gpus['colocated x1 tp2']).toBe(2);
    // highest estimate first
    const est = layouts.map((l) => l.estimate.perGpu);
    expect([...est].sort((a, b) => b - a)).toEqual(est);
    // tp8 is not offered for 3 GPUs; with 8 GPUs in nodes of 4 it does not fit a node
    expect(skipped).toEqual([]);
    const wide = layoutCandidates(fixed(1, 50, 512, 64), toyDegrees(), base, { gpus: 8, gpusPerNode: 4 });
    expect(wide.skipped).toContainEqual({ what: 'tp8 instances', reason: '8 GPUs do not fit in a node of 4' });
  });

  it('skips degrees whose KV cannot hold enough requests, or that cannot meet the SLO even idle', () => {
    const w = [...fixed(1, 70, 512, 64, 4), ...fixed(1, 30, 300000, 64, 5)].sort((a, b) => a.arrival - b.arrival);
    const { skipped } = layoutCandidates(w, toyDegrees(), base, { gpus: 2 });
    expect(skipped).toContainEqual({ what: 'one-GPU instances', reason: expect.stringMatching(/KV holds 200000 tokens: 30\.0% of requests .* do not fit, more than the 10%/) });
    // with head-wise KV (1 of 8 KV heads full, the rest 64 + 256-token rings) a 300K-token request
    // takes 300000 / 8 + 7 x 320 / 8 = 37,780 tokens of the full cache: they fit
    const hw = { nKvHeads: 8, fullColumns: 1, sink: 64, recent: 256 };
    expect(kvTokensOf(300064, hw)).toBe((300064 + 7 * 320) / 8);
    expect(kvTokensOf(300, hw)).toBe(300);
    expect(layoutCandidates(w, toyDegrees(), { ...base, headwise: hw }, { gpus: 2 }).skipped.map((s) => s.what)).not.toContain('one-GPU instances');
    const tight = layoutCandidates(fixed(1, 50, 512, 64), toyDegrees(), { ...base, slo: { ttftMs: 10, tpotMs: 50 } }, { gpus: 2 });
    expect(tight.skipped.map((s) => s.what)).toContain('colocated one-GPU instances');
    expect(tight.skipped.find((s) => s.what === 'colocated one-GPU instances')!.reason).toMatch(/only 0\.0% of requests could meet the SLO/);
  });

  it('KV between instances: each GPU of the smaller instance moves its shard over its own link; prefill and decode share nodes', () => {
    const link = { name: 'test', bytesPerSecond: 1e11, latencySeconds: 1e-5 };
    expect(linkTransferSeconds(link, 1e5, 1000, { tp: 2, pp: 1 }, { tp: 1, pp: 1 })).toBeCloseTo(1e-5 + 1e8 / 1e11, 15);
    expect(linkTransferSeconds(link, 1e5, 1000, { tp: 2, pp: 1 }, { tp: 2, pp: 2 })).toBeCloseTo(1e-5 + 1e8 / 2e11, 15);
    const { layouts } = layoutCandidates(fixed(1, 50, 512, 64), toyDegrees(), { scheduler: () => new FcfsScheduler() }, { gpus: 4, gpusPerNode: 2 });
    expect(layouts.find((l) => l.layout.label === '2P+2D')!.layout.nodes).toEqual({ front: [0, 1], back: [0, 1] });
    expect(layouts.some((l) => l.layout.label === 'colocated x1 tp2')).toBe(true);
  });

  it('packs instances into nodes, first fit decreasing', () => {
    expect(packNodes([4], [2, 2], 8, 1)).toEqual({ front: [0], back: [0, 0] });
    expect(packNodes([2, 2], [4, 4], 6, 2)).toEqual({ front: [0, 1], back: [0, 1] });
    expect(packNodes([4, 4, 4], [], 4, 2)).toBeNull();
  });
});

describe('placement search', () => {
  const tmp = useTmpDirs('wgplan-');

  it('one-GPU layouts give the numbers of the one-GPU placement search', () => {
    const cost = degreesOf({ ...toyDegrees().at({ tp: 1, pp: 1 }) as CostModel });
    const at = (rate: number) => fixed(rate, 150, 1024, 32, 1);
    const o = { scheduler: () => new FcfsScheduler(), slo: { ttftMs: 300, tpotMs: 25 } };
    const old = planPlacement(at, 2, { ...o, cost: cost.at({ tp: 1, pp: 1 }) as CostModel });
    const res = planSearch(at, cost, o, { gpus: 2, keep: Infinity });
    for (const label of ['colocated x2', '1P+1D']) {
      const a = old.find((r) => r.placement === label)!;
      const b = res.results.find((r) => r.placement === label)!;
      expect(b.ratePerGpu, label).toBe(a.ratePerGpu);
      expect(b.best!.attainment, label).toBe(a.best!.attainment);
    }
    // every simulated layout stays under its estimate (what pruning relies on)
    for (const r of res.results) expect(r.ratePerGpu).toBeLessThanOrEqual(r.estimate.perGpu);
  });

  it('--plan --gpus 2 for Llama-3-70B on H100s: only parallel instances fit; JSON rows carry the degrees and counts', async () => {
    const dir = tmp();
    const lines: string[] = [];
    await simulateCli({
      synthetic: 'poisson', inputLen: '512', outputLen: '32', requests: 120, hardware: 'h100', modelShape: 'llama-3-70b', policy: ['fcfs'], slo: 'ttft=1000,tpot=100',
      sweep: false, plan: true, gpus: 2, gpusPerNode: 2, tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 1,
      json: join(dir, 'plan.json'), plot: join(dir, 'plan.svg'), print: (l) => lines.push(l),
    });
    expect(lines.some((l) => /skipped one-GPU instances: weights need 141\.\d GB per GPU/.test(l))).toBe(true);
    expect(lines.filter((l) => /^ {2}colocated x1 (tp2|pp2) /.test(l))).toHaveLength(2);
    expect(lines.some((l) => /best: colocated x1 (tp2|pp2), .*misses are mostly/.test(l))).toBe(true);
    const rows = JSON.parse(readFileSync(join(dir, 'plan.json'), 'utf8')) as Record<string, unknown>[];
    const tp2 = rows.filter((r) => r.placement === 'colocated x1 tp2');
    expect(tp2.length).toBeGreaterThan(0);
    expect(tp2[0]).toMatchObject({ gpus: 2, tp_prefill: 2, pp_prefill: 1, tp_decode: 2, pp_decode: 1, colocated_instances: 1, prefill_instances: 0, decode_instances: 0 });
    expect(rows.some((r) => r.stopped_early === true)).toBe(true);
    expect(readFileSync(join(dir, 'plan.svg'), 'utf8')).toMatch(/^<svg/);
  });

  it('a single run of a disaggregated layout with its own degrees per role', async () => {
    const dir = tmp();
    await simulateCli({
      synthetic: 'poisson', rate: 4, inputLen: '256', outputLen: '16', requests: 40, hardware: 'h100', modelShape: 'llama-3-8b', policy: ['fcfs'], slo: 'ttft=500,tpot=50',
      sweep: false, plan: false, prefill: 1, decode: 2, tp: 2, tpDecode: 1, ppDecode: 2, tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 1,
      json: join(dir, 'run.json'), print: () => {},
    });
    const [row] = JSON.parse(readFileSync(join(dir, 'run.json'), 'utf8')) as Record<string, unknown>[];
    expect(row).toMatchObject({ placement: '1P(tp2)+2D(pp2)', gpus: 6, tp_prefill: 2, pp_prefill: 1, tp_decode: 1, pp_decode: 2, colocated_instances: 0, prefill_instances: 1, decode_instances: 2, stopped_early: false });
  });
});

describe('simulator: per-role cost models, KV transfers by instance pair, failed probes cut short', () => {
  const toy = toyDegrees();
  const one = toy.at({ tp: 1, pp: 1 }) as CostModel;
  const two = toy.at({ tp: 2, pp: 1 }) as CostModel;

  it('prefill and decode instances step on their own models; transfers take the pair\'s time', () => {
    const pairs: [number, number][] = [];
    const steps: StepRecord[] = [];
    const r = simulate(fixed(20, 60, 256, 16), {
      cost: one,
      costs: { prefill: one, decode: two },
      kvTransferSeconds: (_tokens, from, to) => (pairs.push([from, to]), 0.002),
      scheduler: () => new FcfsScheduler(),
      placement: { kind: 'disaggregated', prefill: 2, decode: 1, decodeDegree: { tp: 2, pp: 1 } },
      onStep: (s) => steps.push(s),
    });
    expect(r.summary.gpus).toBe(4);
    expect(r.summary.placement).toBe('2P+1D(tp2)');
    for (const s of steps) expect(s.end - s.start).toBeCloseTo((s.role === 'decode' ? two : one).stepSeconds(s.shape), 15);
    expect(steps.find((s) => s.role === 'decode')!.kvBlocks).toBe(500000 / 16);
    expect(pairs.length).toBe(60);
    expect(new Set(pairs.map(([f]) => f))).toEqual(new Set([0, 1]));
    expect(pairs.every(([, t]) => t === 0)).toBe(true);
  });

  it('stops a run once the target is out of reach; attainment is then an upper bound', () => {
    const w = fixed(400, 400, 1024, 64);
    const o = { cost: one, scheduler: () => new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 } as const, slo: { ttftMs: 200, tpotMs: 30 } };
    const full = simulate(w, o).summary;
    const cut = simulate(w, { ...o, stopBelow: 0.9 }).summary;
    expect(full.attainment).toBeLessThan(0.9);
    expect(cut.stoppedEarly).toBe(true);
    expect(cut.attainment).toBeLessThan(0.9);
    expect(cut.attainment).toBeGreaterThanOrEqual(full.attainment);
    expect(cut.steps).toBeLessThan(full.steps);
    // a run that meets the target runs whole, with the same result
    const easy = fixed(2, 100, 256, 16);
    const a = simulate(easy, o).summary;
    const b = simulate(easy, { ...o, stopBelow: 0.9 }).summary;
    expect(b.stoppedEarly).toBe(false);
    expect({ ...b, wallSeconds: 0 }).toEqual({ ...a, wallSeconds: 0 });
  });
});

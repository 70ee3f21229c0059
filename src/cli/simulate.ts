import { existsSync } from 'node:fs';
import { writeOutput } from '../util/output.ts';
import { DEFAULT_RECENT, DEFAULT_SINK } from '../kv/head_pattern.ts';
import { MODEL_SHAPES } from '../model/shapes.ts';
import type { CostModel } from '../scheduler/cost_model.ts';
import { EdfScheduler } from '../scheduler/edf.ts';
import { FcfsScheduler } from '../scheduler/fcfs.ts';
import type { Scheduler, Slo } from '../scheduler/scheduler.ts';
import { SloScheduler } from '../scheduler/slo.ts';
import { analyticalCostModel } from '../sim/cost/analytical.ts';
import { degreesOf } from '../sim/cost/degrees.ts';
import { FittedCostModel, loadCostModel } from '../sim/cost/fitted.ts';
import { ONE_GPU, type Parallelism, parallelOf } from '../sim/cost/parallel.ts';
import { type AttainmentSeries, type LayoutBar, writeAttainmentPlot, writeLayoutPlot } from '../sim/plot.ts';
import { describeLayout } from '../sim/headwise.ts';
import { type LayoutResult, planSearch } from '../sim/placement_search.ts';
import { type Placement, placementLabel, type RequestResult, type SimOptions, type SimSummary, simulate } from '../sim/simulator.ts';
import { type GoodputResult, maxGoodRate, sweepRates, type WorkloadAt } from '../sim/sweep.ts';
import { readTrace, type TraceRequest } from '../sim/trace.ts';
import { checkLengthDist, type LengthDist, type SimRequest, syntheticWorkload, traceWorkload } from '../sim/workload.ts';

export const POLICIES = ['fcfs', 'edf', 'slo'] as const;
export type PolicyName = (typeof POLICIES)[number];

/** A fresh scheduler of the named policy (one per simulated instance: the SLO policy learns). */
export function makeScheduler(name: PolicyName, cost: CostModel): Scheduler {
  switch (name) {
    case 'fcfs':
      return new FcfsScheduler();
    case 'edf':
      return new EdfScheduler(cost);
    case 'slo':
      return new SloScheduler(cost);
  }
}

/** `ttft=500,tpot=50,deadline=10000` (milliseconds) to an Slo. */
export function parseSlo(text: string): Slo {
  const slo: Slo = {};
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(ttft|tpot|deadline)\s*=\s*([0-9.eE+]+)\s*(ms)?$/.exec(part);
    const v = m ? Number(m[2]) : NaN;
    if (!m || !(v > 0)) throw new Error(`--slo: "${part}" is not ttft=MS, tpot=MS or deadline=MS with a number > 0`);
    slo[`${m[1] as 'ttft' | 'tpot' | 'deadline'}Ms`] = v;
  }
  return slo;
}

/** The accepted forms of the heavy-tailed length specs. */
const DIST_FORMS = {
  lognormal: 'lognormal:median=M,mean=X[,max=K] or lognormal:median=M,sigma=S[,max=K]',
  pareto: 'pareto:min=M,alpha=A[,max=K]',
} as const;

/**
 * A heavy-tailed length spec: `lognormal:median=7000,mean=12000,max=126000` (or `sigma=S` instead
 * of the mean; sigma = sqrt(2 ln(mean / median)), so the mean must exceed the median) or
 * `pareto:min=2000,alpha=1.5,max=126000`. Undefined when `text` names neither.
 */
export function parseDistSpec(text: string, option: string): LengthDist | undefined {
  const m = /^(lognormal|pareto)\s*:(.*)$/.exec(text.trim());
  if (!m) return undefined;
  const kind = m[1] as keyof typeof DIST_FORMS;
  function fail(why: string): never {
    throw new Error(`${option}: ${why}; give ${DIST_FORMS[kind]}`);
  }
  const allowed = kind === 'lognormal' ? ['median', 'mean', 'sigma', 'max'] : ['min', 'alpha', 'max'];
  const p: Record<string, number> = {};
  for (const part of m[2].split(',').map((s) => s.trim())) {
    const kv = /^([a-z]+)\s*=\s*(\S+)$/.exec(part);
    if (!kv || !allowed.includes(kv[1])) fail(`"${part}" is not one of ${allowed.map((k) => `${k}=`).join(', ')}`);
    if (kv[1] in p) fail(`${kv[1]} is given twice`);
    const v = Number(kv[2]);
    if (!Number.isFinite(v)) fail(`${kv[1]}=${kv[2]} is not a number`);
    p[kv[1]] = v;
  }
  let dist: LengthDist;
  if (kind === 'lognormal') {
    if (p.median === undefined || (p.mean === undefined) === (p.sigma === undefined)) fail('give median and one of mean or sigma');
    if (p.mean !== undefined && !(p.mean > p.median)) fail(`the mean (${p.mean}) must exceed the median (${p.median})`);
    dist = { kind, median: p.median, sigma: p.sigma ?? Math.sqrt(2 * Math.log(p.mean / p.median)), max: p.max };
  } else {
    if (p.min === undefined || p.alpha === undefined) fail('give min and alpha');
    dist = { kind, min: p.min, alpha: p.alpha, max: p.max };
  }
  checkLengthDist(dist, option);
  return dist;
}

/**
 * A length spec: `N` (fixed), `A:B` (uniform integers), a heavy tail (`parseDistSpec`), or a trace
 * file (its empirical input or output lengths).
 */
export function parseLength(text: string, column: 'input' | 'output'): { dist: LengthDist; file?: string; trace?: TraceRequest[] } {
  const t = text.trim();
  if (/^\d+$/.test(t)) return { dist: { kind: 'fixed', value: Number(t) } };
  const m = /^(\d+)\s*:\s*(\d+)$/.exec(t);
  if (m) return { dist: { kind: 'uniform', min: Number(m[1]), max: Number(m[2]) } };
  const dist = parseDistSpec(t, `--${column}-len`);
  if (dist) return { dist };
  if (!existsSync(t)) throw new Error(`--${column}-len: "${text}" is not N, A:B or a trace file, nor ${DIST_FORMS.lognormal}, nor ${DIST_FORMS.pareto}`);
  const trace = readTrace(t).requests;
  return { dist: { kind: 'empirical', values: trace.map((r) => Math.max(1, column === 'input' ? r.inputTokens : r.outputTokens)) }, file: t, trace };
}

export interface SimulateCliOptions {
  trace?: string;
  synthetic?: 'poisson' | 'gamma';
  rate?: number;
  rates?: number[];
  cv?: number;
  /** synthetic: requests per group arriving at one instant */
  burst?: number;
  /** trace: arrivals floored to multiples of this many seconds (in the trace's time) */
  arrivalStep?: number;
  inputLen: string;
  outputLen: string;
  requests?: number;
  rateScale?: number;
  costModel?: string;
  hardware: string;
  modelShape: string;
  instances?: number;
  prefill?: number;
  decode?: number;
  policy: PolicyName[];
  slo?: string;
  sweep: boolean;
  plan: boolean;
  gpus?: number;
  /** --plan: GPUs per node (instances stay inside one; KV over the interconnect inside a node, the network across) */
  gpusPerNode?: number;
  /** degree of every instance (prefill instances when disaggregated); default: the cost model's own */
  tp?: number;
  pp?: number;
  /** degree of decode instances (default --tp / --pp) */
  tpDecode?: number;
  ppDecode?: number;
  tokenBudget: number;
  maxBatch: number;
  blockSize: number;
  /** head-wise KV (docs/headwise.md): this share of each layer's KV heads keeps full history, the rest sink + recent */
  retrievalFraction?: number;
  /** default 64 and 256 */
  sink?: number;
  recent?: number;
  /** KV heads per layer for --retrieval-fraction (default: --model-shape's) */
  kvHeads?: number;
  maxTokens: number;
  maxWaiting: number;
  target: number;
  seed: number;
  json?: string;
  plot?: string;
  requestsOut?: string;
  /** report lines (default: stdout) */
  print?: (line: string) => void;
}

const ms = (s: number) => (Number.isFinite(s) ? +(s * 1e3).toFixed(3) : null);
const fmt = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '-');

/** The JSON record of one run (latencies in milliseconds) on `p`. */
function record(s: SimSummary, kind: string, p: Placement) {
  const colocated = p.kind === 'colocated';
  const front = (colocated ? p.degree : p.prefillDegree) ?? ONE_GPU;
  const back = (colocated ? p.degree : p.decodeDegree) ?? ONE_GPU;
  return {
    policy: s.policy,
    placement: s.placement,
    gpus: s.gpus,
    tp_prefill: front.tp,
    pp_prefill: front.pp,
    tp_decode: back.tp,
    pp_decode: back.pp,
    colocated_instances: colocated ? p.instances : 0,
    prefill_instances: colocated ? 0 : p.prefill,
    decode_instances: colocated ? 0 : p.decode,
    rate: s.rate,
    rate_per_gpu: s.rate / s.gpus,
    attainment: s.attainment,
    goodput_rps: s.goodputRps,
    goodput_tokens_per_s: s.goodputTokensPerSecond,
    ttft_p50: ms(s.ttft.p50),
    ttft_p90: ms(s.ttft.p90),
    ttft_p99: ms(s.ttft.p99),
    tpot_p50: ms(s.tpot.p50),
    tpot_p90: ms(s.tpot.p90),
    tpot_p99: ms(s.tpot.p99),
    e2e_p50: ms(s.e2e.p50),
    e2e_p99: ms(s.e2e.p99),
    requests: s.requests,
    finished: s.finished,
    rejected: s.rejected,
    refused: s.refused,
    unfinished: s.unfinished,
    preemptions: s.preemptions,
    steps: s.steps,
    wall_seconds: s.wallSeconds,
    ceiling_idle: s.ceilings.idle,
    ceiling_shortest_first: s.ceilings.shortestFirst,
    misses: s.misses,
    stopped_early: s.stoppedEarly,
    run: kind,
  };
}

/** The miss breakdown and the ceilings, one line. */
function missLine(s: SimSummary): string {
  const pct = (v: number) => `${fmt(v * 100)}%`;
  const misses = Object.entries(s.misses)
    .sort((a, b) => b[1] - a[1])
    .map(([why, n]) => `${why} ${n}`)
    .join(', ');
  const ceiling = s.ceilings.shortestFirst > 0 ? ` (${pct(s.attainment / s.ceilings.shortestFirst)} of it)` : '';
  return `      ceilings: idle GPU ${pct(s.ceilings.idle)}, bursts shortest first ${pct(s.ceilings.shortestFirst)}${ceiling}; missed: ${misses || 'none'}`;
}

/** One JSON line per request of a run, for --requests-out. */
function requestLines(policy: string, requests: readonly RequestResult[]): string {
  return requests.map((r) => JSON.stringify({ policy, ...r })).join('\n') + '\n';
}

function layoutLine(g: LayoutResult): string {
  const at = g.best ? `  (at it: TTFT p90 ${fmt(g.best.ttft.p90 * 1e3, 0)} ms, TPOT p90 ${fmt(g.best.tpot.p90 * 1e3, 1)} ms)` : '';
  return `  ${g.placement.padEnd(22)} ${String(g.gpus).padStart(2)} GPUs  ${fmt(g.ratePerGpu, 3)} req/s per GPU (${fmt(g.ratePerGpu * g.gpus, 2)} in all)${at}  limit: ${g.limit}  [${g.probes.length} runs]`;
}

/** Why the best layout wins: its margin over the next, what limits it, and the phase estimates. */
function whyBest(results: readonly LayoutResult[], gpus: number): string {
  const [best, next] = results;
  const e = best.estimate;
  const margin = next && next.ratePerGpu > 0 ? `, ${fmt((best.ratePerGpu / next.ratePerGpu - 1) * 100, 0)}% over the next, ${next.placement} (${fmt(next.ratePerGpu, 3)})` : '';
  const spare = best.gpus < gpus ? `; it uses ${best.gpus} of the ${gpus} GPUs` : '';
  return (
    `  best: ${best.placement}, ${fmt(best.ratePerGpu, 3)} req/s per GPU${margin}${spare}. ` +
    `Beyond it the misses are mostly ${best.limit}. Upper estimates from step times alone: ${fmt(e.prefill, 2)} req/s of prefill, ${fmt(e.decode, 2)} req/s of decode within the TPOT`
  );
}

function line(s: SimSummary): string {
  return (
    `${s.policy.padEnd(5)} ${s.placement.padEnd(13)} rate ${fmt(s.rate, 2).padStart(7)}/s (${fmt(s.rate / s.gpus, 2)}/GPU)  attainment ${fmt(s.attainment * 100)}%  ` +
    `goodput ${fmt(s.goodputRps, 2)} req/s/GPU ${fmt(s.goodputTokensPerSecond, 0)} tok/s/GPU  ` +
    `TTFT p50/p90/p99 ${fmt(s.ttft.p50 * 1e3, 0)}/${fmt(s.ttft.p90 * 1e3, 0)}/${fmt(s.ttft.p99 * 1e3, 0)} ms  TPOT ${fmt(s.tpot.p50 * 1e3, 1)}/${fmt(s.tpot.p90 * 1e3, 1)}/${fmt(s.tpot.p99 * 1e3, 1)} ms` +
    (s.rejected + s.refused + s.unfinished ? `  (rejected ${s.rejected}, refused ${s.refused}, unfinished ${s.unfinished})` : '') +
    `  [${s.requests} requests, ${fmt(s.wallSeconds, 2)} s wall, ${Math.round(s.requests / Math.max(s.wallSeconds, 1e-9))} req/s simulated]`
  );
}

/**
 * The head-wise KV layout --retrieval-fraction asks for (the same number of full KV heads in every
 * layer), else the one a cost model was profiled with (`profile --head-pattern`).
 */
function headwiseOf(o: SimulateCliOptions, cost: CostModel): SimOptions['headwise'] {
  if (o.retrievalFraction === undefined) {
    if (o.kvHeads !== undefined) throw new Error('--kv-heads is for --retrieval-fraction');
    if (o.sink !== undefined || o.recent !== undefined) throw new Error('--sink / --recent are for --retrieval-fraction');
    return cost instanceof FittedCostModel ? cost.json.headwise : undefined;
  }
  const profiled = cost instanceof FittedCostModel ? cost.json.headwise?.nKvHeads : undefined;
  const nKvHeads = o.kvHeads ?? profiled ?? (o.costModel ? undefined : MODEL_SHAPES[o.modelShape]?.nKvHeads);
  if (nKvHeads === undefined) throw new Error('--retrieval-fraction with --cost-model needs --kv-heads N (the model\'s KV heads per layer)');
  return { nKvHeads, fullColumns: Math.round(o.retrievalFraction * nKvHeads), sink: o.sink ?? DEFAULT_SINK, recent: o.recent ?? DEFAULT_RECENT };
}

/** `wgserve simulate`: see docs/simulator.md. */
export async function simulateCli(o: SimulateCliOptions): Promise<void> {
  const print = o.print ?? ((l: string) => console.log(l));
  if (!o.trace === !o.synthetic) throw new Error('give exactly one of --trace FILE or --synthetic poisson|gamma');
  if (o.plan && !o.gpus) throw new Error('--plan needs --gpus G');
  if (o.gpusPerNode !== undefined && !o.plan) throw new Error('--gpus-per-node is for --plan');
  if (o.plan && [o.tp, o.pp, o.tpDecode, o.ppDecode].some((v) => v !== undefined)) throw new Error('--plan tries the degrees itself: drop --tp / --pp / --tp-decode / --pp-decode');
  if ((o.tpDecode !== undefined || o.ppDecode !== undefined) && o.prefill === undefined) throw new Error('--tp-decode / --pp-decode are for --prefill P --decode D');
  if (o.requestsOut && (o.plan || o.sweep || o.rates)) throw new Error('--requests-out records single runs: drop --plan / --sweep / --rates');
  if (o.plan && (o.instances !== undefined || o.prefill !== undefined || o.decode !== undefined)) throw new Error('--plan tries the placements itself: drop --instances / --prefill / --decode');
  if ((o.prefill === undefined) !== (o.decode === undefined)) throw new Error('give --prefill P and --decode D together');
  if (o.instances !== undefined && o.prefill !== undefined) throw new Error('give --instances N or --prefill P --decode D, not both');
  const cost: CostModel = o.costModel ? loadCostModel(o.costModel) : analyticalCostModel(o.hardware, o.modelShape);
  const headwise = headwiseOf(o, cost);
  // the instances' degrees: as asked, else the cost model's own
  const own = parallelOf(cost);
  const atDegree = (d: Parallelism): CostModel => {
    if (d.tp === own.tp && d.pp === own.pp) return cost;
    const c = degreesOf(cost).at(d);
    if (typeof c === 'string') throw new Error(`tp ${d.tp}, pp ${d.pp}: ${c}`);
    return c;
  };
  const frontDegree = { tp: o.tp ?? own.tp, pp: o.pp ?? own.pp };
  const frontCost = atDegree(frontDegree);
  const backDegree = { tp: o.tpDecode ?? frontDegree.tp, pp: o.ppDecode ?? frontDegree.pp };
  const backCost = atDegree(backDegree);
  const placement: Placement =
    o.prefill !== undefined
      ? { kind: 'disaggregated', prefill: o.prefill, decode: o.decode!, prefillDegree: frontDegree, decodeDegree: backDegree }
      : { kind: 'colocated', instances: o.instances ?? 1, degree: frontDegree };
  const slo = o.slo ? parseSlo(o.slo) : undefined;

  // the workload at a whole-cluster rate (sweeps and plans give it; undefined: a single run at
  // --rate, or the trace's own rate, times --rate-scale)
  let workloadAt: (rate: number | undefined) => SimRequest[];
  let describeWorkload: string;
  if (o.burst !== undefined && !o.synthetic) throw new Error('--burst N groups synthetic arrivals: give it with --synthetic (a trace groups with --arrival-step)');
  if (o.arrivalStep !== undefined && !o.trace) throw new Error('--arrival-step S quantizes a trace\'s arrivals: give it with --trace (synthetic arrivals group with --burst)');
  if (o.trace) {
    const all = readTrace(o.trace).requests;
    const reqs = o.requests !== undefined ? all.slice(0, o.requests) : all;
    workloadAt = (rate) =>
      traceWorkload(reqs, { arrivalStep: o.arrivalStep, ...(rate !== undefined ? { rate } : o.rate !== undefined ? { rate: o.rate * (o.rateScale ?? 1) } : { rateScale: o.rateScale ?? 1 }) });
    describeWorkload = `trace ${o.trace} (${reqs.length} requests${o.arrivalStep !== undefined ? `, arrivals floored to ${o.arrivalStep} s steps` : ''})`;
  } else {
    const input = parseLength(o.inputLen, 'input');
    const output = parseLength(o.outputLen, 'output');
    const pairs = input.file && input.file === output.file ? input.trace : undefined;
    const count = o.requests ?? 2000;
    workloadAt = (rate) => {
      const r = rate ?? (o.rate !== undefined ? o.rate * (o.rateScale ?? 1) : undefined);
      if (r === undefined) throw new Error('--synthetic needs --rate R (or --rates, --sweep, --plan)');
      return syntheticWorkload({ arrivals: o.synthetic!, rate: r, cv: o.cv, burst: o.burst, count, input: input.dist, output: output.dist, pairs, seed: o.seed });
    };
    const burst = (o.burst ?? 1) > 1 ? ` in bursts of ${o.burst}` : '';
    describeWorkload = `${o.synthetic} arrivals${o.synthetic === 'gamma' ? ` (CV ${o.cv ?? 1})` : ''}${burst}, ${count} requests, input ${o.inputLen}, output ${o.outputLen}${pairs ? ' (pairs drawn together)' : ''}, seed ${o.seed}`;
  }
  const at: WorkloadAt = (rate) => workloadAt(rate);
  const common = (policy: PolicyName): Omit<SimOptions, 'placement' | 'cost'> => ({
    scheduler: (c: CostModel) => makeScheduler(policy, c),
    limits: { tokenBudget: o.tokenBudget, maxBatch: o.maxBatch },
    blockSize: o.blockSize,
    headwise,
    maxTokens: o.maxTokens,
    maxWaiting: o.maxWaiting,
    slo,
  });
  const base = (policy: PolicyName): Omit<SimOptions, 'placement'> => ({ ...common(policy), cost: frontCost, ...(placement.kind === 'disaggregated' ? { costs: { prefill: frontCost, decode: backCost } } : {}) });
  if (o.plan) print(`cost models: ${degreesOf(cost).describe()}`);
  else {
    print(`cost model: ${frontCost.describe()}`);
    if (backCost !== frontCost && placement.kind === 'disaggregated') print(`decode cost model: ${backCost.describe()}`);
  }
  if (headwise) print(`head-wise KV: ${describeLayout(headwise)}`);
  print(`workload: ${describeWorkload}; SLO ${slo ? JSON.stringify(slo) : 'none (every finished request counts)'}`);

  const runs: ReturnType<typeof record>[] = [];
  const series: AttainmentSeries[] = [];
  let xTitle = 'request rate (req/s)';
  const goodputs: GoodputResult[] = [];

  const bars: LayoutBar[] = [];
  if (o.plan) {
    for (const policy of o.policy) {
      const nodes = o.gpusPerNode !== undefined ? `, nodes of ${o.gpusPerNode}` : '';
      print(`\nlayouts of at most ${o.gpus} GPUs${nodes}, policy ${policy} (highest rate per GPU with >= ${o.target * 100}% attainment):`);
      const t0 = performance.now();
      const res = planSearch(at, degreesOf(cost), common(policy), { gpus: o.gpus!, gpusPerNode: o.gpusPerNode, target: o.target });
      const wall = (performance.now() - t0) / 1e3;
      for (const g of res.results) {
        goodputs.push(g);
        print(layoutLine(g));
        for (const p of g.probes) runs.push(record(p, 'bisection', g.layout.placement));
        bars.push({ label: o.policy.length > 1 ? `${policy} ${g.placement}` : g.placement, ratePerGpu: g.ratePerGpu, limit: g.ratePerGpu > 0 ? g.limit.split(' (')[0] : 'misses the target at every rate' });
      }
      for (const p of res.pruned) print(`  ${p.label.padEnd(22)} pruned: estimated at most ${fmt(p.estimate.perGpu, 3)} req/s per GPU, below the best ${Math.min(3, res.results.length)} found`);
      for (const s of res.skipped) print(`  skipped ${s.what}: ${s.reason}`);
      const runCount = res.results.reduce((a, r) => a + r.probes.length, 0);
      print(`  searched ${res.results.length} layouts (${runCount} runs, ${res.pruned.length} pruned, ${res.skipped.length} skipped) in ${fmt(wall, 1)} s`);
      print(res.results.length ? whyBest(res.results, o.gpus!) : '  no layout fits: see the reasons above');
    }
  } else if (o.sweep || o.rates) {
    xTitle = `request rate (req/s, ${placementLabel(placement)})`;
    let rates = o.rates;
    if (o.sweep) {
      for (const policy of o.policy) {
        const g = maxGoodRate(at, { ...base(policy), placement }, { target: o.target });
        goodputs.push(g);
        print(`${policy} ${g.placement}: highest rate with >= ${o.target * 100}% attainment: ${fmt(g.ratePerGpu, 3)} req/s per GPU (${fmt(g.ratePerGpu * g.gpus, 3)} req/s in all) [${g.probes.length} runs]`);
        for (const p of g.probes) runs.push(record(p, 'bisection', placement));
      }
      if (!rates) {
        // a common grid around the best policy's knee, for the table and the plot
        const top = Math.max(...goodputs.map((g) => g.ratePerGpu * g.gpus));
        const hi = top > 0 ? top * 1.6 : (o.rate ?? 1);
        rates = Array.from({ length: 8 }, (_, i) => +((hi * (i + 1)) / 8).toPrecision(4));
      }
    }
    for (const policy of o.policy) {
      const sums = sweepRates(at, rates!, { ...base(policy), placement });
      print('');
      for (const s of sums) {
        print(line(s));
        print(missLine(s));
        runs.push(record(s, 'sweep', placement));
      }
      series.push({ label: policy, points: sums.map((s) => ({ rate: s.rate, attainment: s.attainment })) });
    }
  } else {
    let perRequest = '';
    for (const policy of o.policy) {
      const w = workloadAt(undefined);
      const { summary: s, requests } = simulate(w, { ...base(policy), placement });
      print(line(s));
      print(missLine(s));
      runs.push(record(s, 'single', placement));
      series.push({ label: policy, points: [{ rate: s.rate, attainment: s.attainment }] });
      if (o.requestsOut) perRequest += requestLines(policy, requests);
    }
    if (o.requestsOut) {
      writeOutput(o.requestsOut, perRequest);
      print(`wrote ${o.requestsOut}`);
    }
  }

  if (o.json) {
    writeOutput(o.json, JSON.stringify(runs, null, 2) + '\n');
    print(`wrote ${o.json}`);
  }
  if (o.plot) {
    if (o.plan && bars.length === 0) print(`no layout was simulated: nothing to plot in ${o.plot}`);
    else {
      if (o.plan) await writeLayoutPlot(o.plot, bars, { title: `Goodput per GPU by layout (at most ${o.gpus} GPUs, ${o.target * 100}% attainment)` });
      else await writeAttainmentPlot(o.plot, series, { title: `SLO attainment (${placementLabel(placement)})`, xTitle, target: o.target });
      print(`wrote ${o.plot}`);
    }
  }
}

/**
 * SLO scheduling under bursts of long prompts (issue 11): fcfs, edf and slo on long-context
 * workloads with smooth and bursty arrivals, against the two ceilings (src/sim/ceilings.ts), with
 * the misses broken down and the simulation's wall time.
 *
 *     npx tsx bench/sim_bursts.ts [--requests 12000] [--json bench/results/sim/bursts.json] [--markdown bench/results/sim/bursts.md] [--update-docs]
 *
 * `--update-docs` puts the table in docs/simulator.md (its `bursts` section).
 *
 * Llama-3-8B on the analytical H100 model, one GPU, SLO TTFT 3 s / TPOT 50 ms. Rates are fractions
 * of 3.33 req/s (12,000 requests an hour, the long-context production trace issue 11 describes).
 * Workloads (all generated; the arrivals in bursts of 10 stand for a trace recorded in 3 s steps):
 *  - lognormal: prompts median 7K, mean 12K, max 126K tokens; answers lognormal median 300 (mean ~340);
 *  - pareto: prompts Pareto(min 2K, alpha 1.2, max 126K); the same answers; also Gamma arrivals, CV 4;
 *  - conv x8: the Azure conv trace (first N requests) with prompts 8x longer, answers as recorded;
 *    bursty = its arrivals floored to 3 s steps of its own time.
 */
import { join } from 'node:path';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { EdfScheduler } from '../src/scheduler/edf.ts';
import type { Scheduler } from '../src/scheduler/scheduler.ts';
import { SloScheduler } from '../src/scheduler/slo.ts';
import { analyticalCostModel } from '../src/sim/cost/analytical.ts';
import { simulate, type SimSummary } from '../src/sim/simulator.ts';
import { readTrace } from '../src/sim/trace.ts';
import { type LengthDist, type SimRequest, syntheticWorkload, traceWorkload } from '../src/sim/workload.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { updateDocSection, writeResult } from './results.ts';

const arg = (name: string, fallback: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const count = Number(arg('requests', '12000'));
const jsonOut = arg('json', 'bench/results/sim/bursts.json');
const mdOut = arg('markdown', 'bench/results/sim/bursts.md');

const cost = analyticalCostModel('h100', 'llama-3-8b');
const slo = { ttftMs: 3000, tpotMs: 50 };
const FULL_RATE = 12_000 / 3600;
const LOADS = [0.1, 0.3, 1];
const POLICIES: [string, () => Scheduler][] = [
  ['fcfs', () => new FcfsScheduler()],
  ['edf', () => new EdfScheduler(cost)],
  ['slo', () => new SloScheduler(cost)],
];

const answers: LengthDist = { kind: 'lognormal', median: 300, sigma: 0.5, max: 2000 };
const lognormal: LengthDist = { kind: 'lognormal', median: 7000, sigma: Math.sqrt(2 * Math.log(12 / 7)), max: 126_000 };
const pareto: LengthDist = { kind: 'pareto', min: 2000, alpha: 1.2, max: 126_000 };
const synthetic = (input: LengthDist, arrivals: 'poisson' | 'gamma', burst: number, cv?: number) => (rate: number) =>
  syntheticWorkload({ arrivals, cv, rate, burst, count, input, output: answers, seed: 1 });
const conv = readTrace(join(repoRoot, '..', 'shared', 'traces', 'azure-llm-2023', 'AzureLLMInferenceTrace_conv.csv'))
  .requests.slice(0, count)
  .map((r) => ({ ...r, inputTokens: r.inputTokens * 8 }));
const convAt = (arrivalStep?: number) => (rate: number) => traceWorkload(conv, { rate, arrivalStep });

const WORKLOADS: { name: string; arrivals: string; at: (rate: number) => SimRequest[] }[] = [
  { name: 'lognormal', arrivals: 'smooth (Poisson)', at: synthetic(lognormal, 'poisson', 1) },
  { name: 'lognormal', arrivals: 'bursts of 10', at: synthetic(lognormal, 'poisson', 10) },
  { name: 'pareto', arrivals: 'smooth (Poisson)', at: synthetic(pareto, 'poisson', 1) },
  { name: 'pareto', arrivals: 'Gamma, CV 4', at: synthetic(pareto, 'gamma', 1, 4) },
  { name: 'pareto', arrivals: 'bursts of 10', at: synthetic(pareto, 'poisson', 10) },
  { name: 'conv x8', arrivals: 'as recorded', at: convAt() },
  { name: 'conv x8', arrivals: '3 s steps', at: convAt(3) },
];

interface Row {
  workload: string;
  arrivals: string;
  load: number;
  rate: number;
  mean_input: number;
  policy: string;
  attainment: number;
  rejected: number;
  refused: number;
  ceiling_idle: number;
  ceiling_shortest_first: number;
  misses: SimSummary['misses'];
  ttft_p50_ms: number;
  tpot_p99_ms: number;
  wall_seconds: number;
  requests: number;
}

const rows: Row[] = [];
for (const w of WORKLOADS) {
  for (const load of LOADS) {
    const reqs = w.at(load * FULL_RATE);
    const meanInput = reqs.reduce((a, r) => a + r.inputTokens, 0) / reqs.length;
    for (const [policy, make] of POLICIES) {
      const s = simulate(reqs, { cost, scheduler: make, placement: { kind: 'colocated', instances: 1 }, slo }).summary;
      rows.push({
        workload: w.name,
        arrivals: w.arrivals,
        load,
        rate: load * FULL_RATE,
        mean_input: meanInput,
        policy,
        attainment: s.attainment,
        rejected: s.rejected,
        refused: s.refused,
        ceiling_idle: s.ceilings.idle,
        ceiling_shortest_first: s.ceilings.shortestFirst,
        misses: s.misses,
        ttft_p50_ms: s.ttft.p50 * 1e3,
        tpot_p99_ms: s.tpot.p99 * 1e3,
        wall_seconds: s.wallSeconds,
        requests: s.requests,
      });
      console.log(`${w.name} ${w.arrivals} ${load * 100}%: ${policy} ${(s.attainment * 100).toFixed(1)}% (ceilings ${(s.ceilings.idle * 100).toFixed(1)} / ${(s.ceilings.shortestFirst * 100).toFixed(1)}), ${s.wallSeconds.toFixed(2)} s`);
    }
  }
}

const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
const lines = [
  `Llama-3-8B, analytical H100 model, one GPU, SLO TTFT 3 s / TPOT 50 ms, ${count} requests per run; load = fraction of 3.33 req/s.`,
  '',
  '| workload | arrivals | load | fcfs | edf | slo | slo rejected | ceiling: idle | ceiling: shortest first | slo / ceiling | slo misses | wall s fcfs / slo |',
  '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|',
];
for (const w of WORKLOADS) {
  for (const load of LOADS) {
    const at = (p: string) => rows.find((r) => r.workload === w.name && r.arrivals === w.arrivals && r.load === load && r.policy === p)!;
    const [f, e, s] = [at('fcfs'), at('edf'), at('slo')];
    const misses = Object.entries(s.misses)
      .sort((a, b) => b[1] - a[1])
      .map(([k, n]) => `${k} ${n}`)
      .join(', ');
    lines.push(
      `| ${w.name} | ${w.arrivals} | ${load * 100}% | ${pct(f.attainment)} | ${pct(e.attainment)} | ${pct(s.attainment)} | ${pct(s.rejected / s.requests)} | ${pct(s.ceiling_idle)} | ${pct(s.ceiling_shortest_first)} | ${pct(s.attainment / s.ceiling_shortest_first)} | ${misses || 'none'} | ${f.wall_seconds.toFixed(2)} / ${s.wall_seconds.toFixed(2)} |`,
    );
  }
}
writeResult(jsonOut, JSON.stringify(rows, null, 2) + '\n');
writeResult(mdOut, lines.join('\n') + '\n');
console.log(`wrote ${jsonOut} and ${mdOut}`);
if (process.argv.includes('--update-docs')) updateDocSection('bursts', () => `\n${lines.join('\n')}\n`, 'simulator.md');

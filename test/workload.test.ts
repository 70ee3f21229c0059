import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDistSpec, parseLength, simulateCli, type SimulateCliOptions } from '../src/cli/simulate.ts';
import { arrivalTimes, checkLengthDist, type LengthDist, syntheticWorkload, traceWorkload, workloadRate } from '../src/sim/workload.ts';
import { useTmpDirs } from './helpers/tmp.ts';

/** Standard normal CDF (Abramowitz and Stegun 7.1.26 for erf: absolute error < 1.5e-7, far below the tolerances here). */
function phi(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * x);
  const erf = 1 - t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * Math.exp(-x * x);
  return z >= 0 ? (1 + erf) / 2 : (1 - erf) / 2;
}

const N = 100_000;
const lengths = (d: LengthDist, seed = 1) => syntheticWorkload({ arrivals: 'poisson', rate: 1, count: N, input: d, output: { kind: 'fixed', value: 1 }, seed }).map((r) => r.inputTokens);
const fractionAbove = (xs: number[], t: number) => xs.filter((x) => x > t).length / xs.length;
/** 5 binomial standard errors of a fraction with probability p over N draws */
const tol = (p: number) => 5 * Math.sqrt((p * (1 - p)) / N);

describe('heavy-tailed lengths', () => {
  // a draw rounds to an integer, so "more than t tokens" (t an integer) is "the real draw >= t + 0.5"
  it('lognormal median 7000, mean 12000, max 126000 (100,000 draws): fractions over 7K, 16K, 32K and at the cap within 5 binomial standard errors; mean within 5 standard errors', () => {
    const d = parseLength('lognormal:median=7000,mean=12000,max=126000', 'input').dist as Extract<LengthDist, { kind: 'lognormal' }>;
    const mu = Math.log(7000);
    const s = d.sigma;
    expect(Math.exp(mu + (s * s) / 2)).toBeCloseTo(12000, 6); // the uncapped mean is the one asked for
    const above = (t: number) => 1 - phi((Math.log(t + 0.5) - mu) / s);
    const xs = lengths(d);
    for (const t of [7000, 16000, 32000]) expect(Math.abs(fractionAbove(xs, t) - above(t))).toBeLessThan(tol(above(t)));
    // ~21% over 16K, ~7% over 32K (the issue's shape)
    expect(above(16000)).toBeGreaterThan(0.2);
    expect(above(16000)).toBeLessThan(0.23);
    expect(above(32000)).toBeGreaterThan(0.065);
    expect(above(32000)).toBeLessThan(0.075);
    // capped: nothing over max, and max takes the whole tail from max - 0.5
    expect(Math.max(...xs)).toBe(126000);
    const atCap = xs.filter((x) => x === 126000).length / N;
    expect(Math.abs(atCap - above(125999))).toBeLessThan(tol(above(125999)));
    // E[min(X, c)] = e^(mu + s^2/2) Phi((ln c - mu - s^2) / s) + c P(X > c); rounding moves it by far less than the tolerance
    const c = 126000;
    const cappedMean = Math.exp(mu + (s * s) / 2) * phi((Math.log(c) - mu - s * s) / s) + c * (1 - phi((Math.log(c) - mu) / s));
    const mean = xs.reduce((a, b) => a + b, 0) / N;
    const sd = Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (N - 1));
    expect(cappedMean).toBeLessThan(12000);
    expect(Math.abs(mean - cappedMean)).toBeLessThan((5 * sd) / Math.sqrt(N));
  });

  it('Pareto min 2000, alpha 1.5, max 126000 (100,000 draws): P(X > t) = (min / t)^alpha within 5 binomial standard errors; nothing under min or over max', () => {
    const d: LengthDist = { kind: 'pareto', min: 2000, alpha: 1.5, max: 126000 };
    const above = (t: number) => (2000 / (t + 0.5)) ** 1.5;
    const xs = lengths(d, 5);
    for (const t of [Math.round(2000 * 2 ** (1 / 1.5)), 4000, 20000, 125999]) expect(Math.abs(fractionAbove(xs, t) - above(t))).toBeLessThan(tol(above(t)));
    expect(Math.min(...xs)).toBe(2000);
    expect(Math.max(...xs)).toBe(126000);
    expect(xs.every(Number.isInteger)).toBe(true);
  });

  it('clamps small draws to 1 and keeps uncapped draws integers', () => {
    // median 1, sigma 2: a draw below 1.5 rounds to 0 or 1 and becomes 1
    const xs = lengths({ kind: 'lognormal', median: 1, sigma: 2 }, 2);
    expect(Math.min(...xs)).toBe(1);
    const p = phi(Math.log(1.5) / 2);
    expect(Math.abs(xs.filter((x) => x === 1).length / N - p)).toBeLessThan(tol(p));
    expect(xs.every(Number.isSafeInteger)).toBe(true);
    expect(lengths({ kind: 'pareto', min: 1, alpha: 0.2 }, 3).every(Number.isSafeInteger)).toBe(true);
  });

  it('refuses invalid parameters with a RangeError naming them', () => {
    const bad: [LengthDist, RegExp][] = [
      [{ kind: 'lognormal', median: 0, sigma: 1 }, /median must be a finite number > 0, not 0/],
      [{ kind: 'lognormal', median: 7000, sigma: -1 }, /sigma must be a finite number >= 0/],
      [{ kind: 'lognormal', median: 7000, sigma: NaN }, /sigma .* not NaN/],
      [{ kind: 'lognormal', median: 7000, sigma: 1, max: 1.5 }, /max must be an integer >= 1, not 1.5/],
      [{ kind: 'pareto', min: 0.5, alpha: 1 }, /min must be a finite number >= 1/],
      [{ kind: 'pareto', min: 2000, alpha: 0 }, /alpha must be a finite number > 0, not 0/],
      [{ kind: 'pareto', min: 2000, alpha: Infinity }, /alpha/],
      [{ kind: 'pareto', min: 2000, alpha: 1, max: 1999 }, /max must be an integer >= 2000, not 1999/],
      [{ kind: 'uniform', min: 5, max: 4 }, /1 <= min <= max/],
    ];
    for (const [d, re] of bad) {
      expect(() => checkLengthDist(d, 'x')).toThrow(RangeError);
      expect(() => syntheticWorkload({ arrivals: 'poisson', rate: 1, count: 1, input: d, output: { kind: 'fixed', value: 1 }, seed: 1 })).toThrow(re);
    }
    expect(() => checkLengthDist({ kind: 'pareto', min: 2000, alpha: 1.5, max: 2000 }, 'x')).not.toThrow();
  });
});

describe('length specs on the command line', () => {
  it('parses lognormal (mean or sigma) and Pareto specs', () => {
    const sigma = Math.sqrt(2 * Math.log(12000 / 7000));
    expect(parseLength('lognormal:median=7000,mean=12000,max=126000', 'input').dist).toEqual({ kind: 'lognormal', median: 7000, sigma, max: 126000 });
    expect(parseLength(' lognormal: median = 100, sigma = 0.5 ', 'output').dist).toEqual({ kind: 'lognormal', median: 100, sigma: 0.5 });
    expect(parseLength('pareto:min=2000,alpha=1.5,max=126000', 'input').dist).toEqual({ kind: 'pareto', min: 2000, alpha: 1.5, max: 126000 });
    expect(parseDistSpec('1024', '--input-len')).toBeUndefined();
  });

  it('names the option and the accepted form in every error', () => {
    const lognormalForm = /--input-len: .*; give lognormal:median=M,mean=X\[,max=K\] or lognormal:median=M,sigma=S\[,max=K\]$/;
    const paretoForm = /--output-len: .*; give pareto:min=M,alpha=A\[,max=K\]$/;
    const cases: [string, 'input' | 'output', RegExp, RegExp][] = [
      ['lognormal:median=7000', 'input', /give median and one of mean or sigma/, lognormalForm],
      ['lognormal:mean=12000,sigma=1', 'input', /give median and one of mean or sigma/, lognormalForm],
      ['lognormal:median=7000,mean=12000,sigma=1', 'input', /give median and one of mean or sigma/, lognormalForm],
      ['lognormal:median=7000,mean=7000', 'input', /the mean \(7000\) must exceed the median \(7000\)/, lognormalForm],
      ['lognormal:median=7000,mean=12000,cap=9', 'input', /"cap=9" is not one of median=, mean=, sigma=, max=/, lognormalForm],
      ['lognormal:median=7000,median=8000,mean=9000', 'input', /median is given twice/, lognormalForm],
      ['lognormal:median=7k,mean=12000', 'input', /median=7k is not a number/, lognormalForm],
      ['pareto:min=2000', 'output', /give min and alpha/, paretoForm],
      ['pareto:min=2000,alpha=1.5,median=3', 'output', /"median=3" is not one of min=, alpha=, max=/, paretoForm],
      ['pareto:min=2000,alpha=1.5,', 'output', /"" is not one of/, paretoForm],
    ];
    for (const [spec, column, why, form] of cases) {
      expect(() => parseLength(spec, column)).toThrow(why);
      expect(() => parseLength(spec, column)).toThrow(form);
    }
    // parameters out of range: the distribution's own check, under the option's name
    expect(() => parseLength('pareto:min=2000,alpha=-1', 'output')).toThrow(/^--output-len: pareto lengths: alpha must be a finite number > 0, not -1$/);
    expect(() => parseLength('lognormal:median=7000,sigma=1,max=0', 'input')).toThrow(/^--input-len: lognormal lengths: max must be an integer >= 1, not 0$/);
    expect(() => parseLength('weibull:k=1', 'input')).toThrow(/--input-len: "weibull:k=1" is not N, A:B or a trace file, nor lognormal:median=M,mean=X.*, nor pareto:min=M,alpha=A\[,max=K\]/);
  });
});

/** Sizes of the runs of equal consecutive values. */
function groupSizes(times: number[]): number[] {
  const sizes: number[] = [];
  times.forEach((t, i) => (i > 0 && t === times[i - 1] ? sizes[sizes.length - 1]++ : sizes.push(1)));
  return sizes;
}

describe('bursty synthetic arrivals', () => {
  // 50,002 requests in groups of 4: 12,501 groups; the mean group gap's relative standard error is
  // cv / sqrt(groups) (0.9% at cv 1, 1.8% at cv 2): the bounds are 5 of them
  for (const [arrivals, cv] of [['poisson', 1], ['gamma', 2]] as const) {
    it(`${arrivals}${arrivals === 'gamma' ? `, CV ${cv}` : ''}, bursts of 4: groups of exactly 4 (the last 2), request rate within 5 standard errors`, () => {
      const count = 50_002;
      const times = arrivalTimes({ arrivals, cv, rate: 6, burst: 4, count, seed: 4 });
      const groups = Array.from({ length: 12_501 }, (_, g) => times.slice(4 * g, 4 * g + 4));
      expect(groups.map((g) => g.length)).toEqual([...Array<number>(12_500).fill(4), 2]);
      expect(groups.every((g) => g.every((t) => t === g[0]))).toBe(true);
      // groups follow one another; a Gamma gap at CV 2 (shape 1/4, mean 2/3 s) is below half an ulp
      // of t (~5e-13 s) with probability ~(5e-13 / 2.67)^(1/4) / Gamma(5/4) ~ 7e-4, so ~9 of the
      // 12,500 gaps leave two groups at one instant: the bound allows 1%
      const apart = groups.filter((g, i) => i > 0 && g[0] > groups[i - 1][0]).length;
      expect(groups.every((g, i) => i === 0 || g[0] >= groups[i - 1][0])).toBe(true);
      if (arrivals === 'poisson') expect(groupSizes(times)).toEqual([...Array<number>(12_500).fill(4), 2]);
      else expect(apart).toBeGreaterThan(12_500 * 0.99);
      // the last group's time is the sum of 12,501 group gaps of mean 4 / 6 s
      const meanGap = times[count - 1] / groups.length;
      expect(Math.abs(meanGap / (4 / 6) - 1)).toBeLessThan((5 * cv) / Math.sqrt(groups.length));
    });
  }

  it('burst 1 is the plain arrival process; a burst must be an integer >= 1', () => {
    const o = { arrivals: 'gamma', cv: 2, rate: 3, count: 500, seed: 8 } as const;
    expect(arrivalTimes({ ...o, burst: 1 })).toEqual(arrivalTimes(o));
    for (const burst of [0, 1.5, NaN]) expect(() => arrivalTimes({ ...o, burst })).toThrow(/burst must be an integer >= 1/);
  });

  it('a seeded bursty workload at a higher rate is the same requests closer together', () => {
    const at = (rate: number) => syntheticWorkload({ arrivals: 'gamma', cv: 2, rate, burst: 3, count: 1000, input: { kind: 'lognormal', median: 700, sigma: 1, max: 8000 }, output: { kind: 'pareto', min: 10, alpha: 1.2, max: 2000 }, seed: 6 });
    const slow = at(2);
    const fast = at(5);
    expect(fast.map((r) => [r.inputTokens, r.outputTokens])).toEqual(slow.map((r) => [r.inputTokens, r.outputTokens]));
    // one division per gap and a sum of them: the ratio is 2.5 up to a few ulps
    for (let i = 0; i < slow.length; i++) expect(Math.abs((slow[i].arrival / fast[i].arrival) / 2.5 - 1)).toBeLessThan(1e-12);
    expect(groupSizes(fast.map((r) => r.arrival))).toEqual(groupSizes(slow.map((r) => r.arrival)));
  });
});

describe('trace arrivals in coarse steps', () => {
  // arrivals 10 .. 16.1 s: relative 0, 1, 2.9, 3, 5.5, 6.1; floored to 3 s steps: 0, 0, 0, 3, 3, 6
  const trace = [10, 11, 12.9, 13, 15.5, 16.1].map((arrival, i) => ({ arrival, inputTokens: i + 1, outputTokens: 1 }));

  it('floors arrivals to the step in the trace\'s own time, keeping the order', () => {
    const w = traceWorkload(trace, { arrivalStep: 3 });
    expect(w.map((r) => r.arrival)).toEqual([0, 0, 0, 3, 3, 6]);
    expect(w.map((r) => r.inputTokens)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(traceWorkload(trace).map((r) => r.arrival)).toEqual(trace.map((r) => r.arrival - 10));
  });

  it('quantizes before rate scaling: at 10% of the rate the same groups 30 s apart, at twice the rate 1.5 s apart', () => {
    expect(traceWorkload(trace, { arrivalStep: 3, rateScale: 2 }).map((r) => r.arrival)).toEqual([0, 0, 0, 1.5, 1.5, 3]);
    const scaled = traceWorkload(trace, { arrivalStep: 3, rateScale: 0.1 }).map((r) => r.arrival);
    [0, 0, 0, 30, 30, 60].forEach((t, i) => expect(scaled[i]).toBeCloseTo(t, 9));
    // the quantized trace's own rate is 5 gaps over 6 s; at a tenth of it, the same times
    const byRate = traceWorkload(trace, { arrivalStep: 3, rate: 5 / 60 }).map((r) => r.arrival);
    byRate.forEach((t, i) => expect(t).toBeCloseTo(scaled[i], 9));
  });

  it('keeps an arrival recorded on a decimal step on it, and refuses a step that is not > 0', () => {
    // in binary, 0.3 / 0.1 and 0.7 / 0.1 fall just short of 3 and 7
    const decimal = [0, 0.3, 0.7, 0.75, 1.1].map((arrival) => ({ arrival, inputTokens: 1, outputTokens: 1 }));
    const w = traceWorkload(decimal, { arrivalStep: 0.1 }).map((r) => r.arrival);
    [0, 0.3, 0.7, 0.7, 1.1].forEach((t, i) => expect(w[i]).toBeCloseTo(t, 12));
    for (const arrivalStep of [0, -3, NaN, Infinity]) expect(() => traceWorkload(trace, { arrivalStep })).toThrow(/arrival step must be a finite number of seconds > 0/);
  });
});

describe('wgserve simulate with heavy tails and bursts', () => {
  const tmp = useTmpDirs('wgworkload-');
  const common: SimulateCliOptions = {
    inputLen: '128', outputLen: '16', hardware: 'h100', modelShape: 'llama-3-8b', policy: ['fcfs'], sweep: false, plan: false,
    tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 4096, maxWaiting: 1024, target: 0.9, seed: 2,
  };

  it('runs synthetic bursts with lognormal prompts and Pareto responses', async () => {
    const dir = tmp();
    const lines: string[] = [];
    await simulateCli({
      ...common, synthetic: 'poisson', rate: 4, burst: 5, requests: 60, inputLen: 'lognormal:median=2000,mean=3000,max=16000', outputLen: 'pareto:min=10,alpha=1.5,max=1000',
      json: join(dir, 'runs.json'), print: (l) => lines.push(l),
    });
    const workload = lines.find((l) => l.startsWith('workload: '));
    expect(workload).toMatch(/poisson arrivals in bursts of 5, 60 requests, input lognormal:median=2000,mean=3000,max=16000, output pareto:min=10,alpha=1.5,max=1000/);
    const [run] = JSON.parse(readFileSync(join(dir, 'runs.json'), 'utf8')) as { requests: number; finished: number; rate: number }[];
    expect(run.requests).toBe(60);
    expect(run.finished).toBe(60);
    // the run's workload is the library's bursty one (its rate, (n - 1) / span, tells it from the plain one)
    const o = { arrivals: 'poisson', rate: 4, count: 60, input: { kind: 'fixed', value: 1 }, output: { kind: 'fixed', value: 1 }, seed: 2 } as const;
    expect(run.rate).toBe(workloadRate(syntheticWorkload({ ...o, burst: 5 })));
    expect(run.rate).not.toBe(workloadRate(syntheticWorkload(o)));
  });

  it('floors a trace\'s arrivals with --arrival-step (the span, so the rate, follows)', async () => {
    const dir = tmp();
    // 11 requests one second apart: span 10 s; floored to 4 s steps: 0, 0, 0, 0, 4, ..., 8: span 8 s
    const trace = join(dir, 'steps.csv');
    writeFileSync(trace, 'arrival,input_tokens,output_tokens\n' + Array.from({ length: 11 }, (_, i) => `${i},64,4`).join('\n') + '\n');
    const lines: string[] = [];
    const rateOf = async (arrivalStep: number | undefined, name: string) => {
      await simulateCli({ ...common, trace, arrivalStep, json: join(dir, name), print: (l) => lines.push(l) });
      return (JSON.parse(readFileSync(join(dir, name), 'utf8')) as { rate: number }[])[0].rate;
    };
    expect(await rateOf(undefined, 'a.json')).toBeCloseTo(10 / 10, 12);
    expect(await rateOf(4, 'b.json')).toBeCloseTo(10 / 8, 12);
    expect(lines.filter((l) => l.startsWith('workload: '))[1]).toMatch(/\(11 requests, arrivals floored to 4 s steps\)/);
  });

  it('takes --burst only with --synthetic and --arrival-step only with --trace', async () => {
    await expect(simulateCli({ ...common, trace: 'unused.csv', burst: 2, print: () => {} })).rejects.toThrow(/--burst N .* give it with --synthetic/);
    await expect(simulateCli({ ...common, synthetic: 'poisson', rate: 1, arrivalStep: 3, print: () => {} })).rejects.toThrow(/--arrival-step S .* give it with --trace/);
  });
});

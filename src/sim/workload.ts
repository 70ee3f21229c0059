import type { Slo } from '../scheduler/scheduler.ts';
import { mulberry32 } from '../util/rng.ts';
import type { TraceRequest } from './trace.ts';

/**
 * Workloads for the simulator: who arrives when, with how many prompt tokens, and how many tokens
 * the response will really have (the simulator knows it; the scheduler sees only maxTokens).
 */

export interface SimRequest {
  /** seconds from the start of the workload */
  arrival: number;
  inputTokens: number;
  /** the response's real length (known to the simulator, not to the scheduler) */
  outputTokens: number;
  /** what the scheduler is told (default: the simulation's maxTokens, at least outputTokens) */
  maxTokens?: number;
  slo?: Slo;
  priority?: number;
}

/**
 * A length distribution: one value, uniform integers in [min, max], draws from observed values, or
 * a heavy tail: log-normal (round(median * exp(sigma * Z)), at least 1) or Pareto (round(min *
 * U^(-1/alpha))), both capped at `max` (a model's context) when given.
 */
export type LengthDist =
  | { kind: 'fixed'; value: number }
  | { kind: 'uniform'; min: number; max: number }
  | { kind: 'empirical'; values: readonly number[] }
  | { kind: 'lognormal'; median: number; sigma: number; max?: number }
  | { kind: 'pareto'; min: number; alpha: number; max?: number };

export interface SyntheticOptions {
  /** Poisson (exponential gaps, CV 1) or Gamma gaps with the given coefficient of variation */
  arrivals: 'poisson' | 'gamma';
  /** mean requests per second */
  rate: number;
  /** Gamma gaps' coefficient of variation (std / mean); > 1 is burstier than Poisson */
  cv?: number;
  /**
   * requests per group arriving at one instant (default 1); groups arrive at `rate / burst`, so
   * the request rate stays `rate`
   */
  burst?: number;
  /** how many requests (the last group may be partial) */
  count: number;
  input: LengthDist;
  output: LengthDist;
  /**
   * (input, output) pairs drawn together (e.g. a trace's requests), overriding `input` and
   * `output`: keeps the correlation between prompt and response lengths
   */
  pairs?: readonly Pick<TraceRequest, 'inputTokens' | 'outputTokens'>[];
  seed: number;
}

/** A standard normal draw (Box-Muller). */
function normal(next: () => number): number {
  const u = Math.max(next(), 1e-300);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * next());
}

/**
 * A Gamma(shape, 1) draw: Marsaglia and Tsang's squeeze method for shape >= 1; for shape < 1 a
 * Gamma(shape + 1) draw scaled by U^(1/shape).
 */
export function gammaSample(shape: number, next: () => number): number {
  if (!(shape > 0)) throw new RangeError(`gamma shape must be > 0, not ${shape}`);
  if (shape < 1) return gammaSample(shape + 1, next) * Math.pow(Math.max(next(), 1e-300), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = normal(next);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = next();
    if (u < 1 - 0.0331 * x * x * x * x) return d * v;
    if (Math.log(Math.max(u, 1e-300)) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v;
  }
}

/**
 * `count` arrival times (seconds, sorted, the first after one gap) at mean `rate` per second, in
 * groups of `burst` simultaneous requests. Every gap is a unit draw divided by the rate, so the
 * same seed at another rate gives the same arrivals scaled by 1 / rate.
 */
export function arrivalTimes(o: Pick<SyntheticOptions, 'arrivals' | 'rate' | 'cv' | 'burst' | 'count' | 'seed'>): number[] {
  if (!(o.rate > 0 && Number.isFinite(o.rate))) throw new RangeError(`rate must be a finite number > 0, not ${o.rate}`);
  const burst = o.burst ?? 1;
  if (!(Number.isInteger(burst) && burst >= 1)) throw new RangeError(`burst must be an integer >= 1, not ${burst}`);
  const next = mulberry32(o.seed);
  const cv = o.arrivals === 'poisson' ? 1 : (o.cv ?? 1);
  if (!(cv > 0 && Number.isFinite(cv))) throw new RangeError(`cv must be a finite number > 0, not ${cv}`);
  // group gaps ~ Gamma(k, theta) with k = 1 / cv^2 and mean k * theta = 1 / groupRate; k = 1 is exponential
  const groupRate = o.rate / burst;
  const shape = 1 / (cv * cv);
  const scale = 1 / (groupRate * shape);
  const out = new Array<number>(o.count);
  let t = 0;
  for (let i = 0; i < o.count; i++) {
    if (i % burst === 0) t += o.arrivals === 'poisson' ? -Math.log(1 - next()) / groupRate : gammaSample(shape, next) * scale;
    out[i] = t;
  }
  return out;
}

/** A drawn length rounded to an integer in [1, max] (without max, in the safe integers). */
const clampLength = (x: number, max = Number.MAX_SAFE_INTEGER) => Math.min(Math.max(1, Math.round(x)), max);

function drawLength(d: LengthDist, next: () => number): number {
  switch (d.kind) {
    case 'fixed':
      return d.value;
    case 'uniform':
      return d.min + Math.floor(next() * (d.max - d.min + 1));
    case 'empirical':
      return d.values[Math.floor(next() * d.values.length)];
    case 'lognormal':
      return clampLength(d.median * Math.exp(d.sigma * normal(next)), d.max);
    case 'pareto':
      // 1 - U is in (0, 1]: the draw is at least min
      return clampLength(d.min * Math.pow(1 - next(), -1 / d.alpha), d.max);
  }
}

/** Why `d` is not a valid length distribution, or undefined when it is. */
function distProblem(d: LengthDist): string | undefined {
  const finite = (v: number, what: string, min: number, strict: boolean) =>
    Number.isFinite(v) && (strict ? v > min : v >= min) ? undefined : `${what} must be a finite number ${strict ? '>' : '>='} ${min}, not ${v}`;
  const cap = (max: number | undefined, min: number) => (max === undefined || (Number.isInteger(max) && max >= min) ? undefined : `max must be an integer >= ${min}, not ${max}`);
  switch (d.kind) {
    case 'fixed':
      return Number.isInteger(d.value) && d.value >= 1 ? undefined : `the value must be an integer >= 1, not ${d.value}`;
    case 'uniform':
      return Number.isInteger(d.min) && Number.isInteger(d.max) && d.min >= 1 && d.max >= d.min ? undefined : `min and max must be integers with 1 <= min <= max, not ${d.min}:${d.max}`;
    case 'empirical':
      return d.values.length > 0 ? undefined : 'no values to draw from';
    case 'lognormal':
      return finite(d.median, 'median', 0, true) ?? finite(d.sigma, 'sigma', 0, false) ?? cap(d.max, 1);
    case 'pareto':
      return finite(d.min, 'min', 1, false) ?? finite(d.alpha, 'alpha', 0, true) ?? cap(d.max, Math.ceil(d.min));
  }
}

/** Throws a RangeError, prefixed with `what` (e.g. `--input-len`), when `d` is not a valid length distribution. */
export function checkLengthDist(d: LengthDist, what: string): void {
  const problem = distProblem(d);
  if (problem) throw new RangeError(`${what}: ${d.kind} lengths: ${problem}`);
}

/** A seeded synthetic workload (arrivals and lengths from separate streams of the same seed). */
export function syntheticWorkload(o: SyntheticOptions): SimRequest[] {
  checkLengthDist(o.input, 'input length');
  checkLengthDist(o.output, 'output length');
  if (o.pairs && o.pairs.length === 0) throw new RangeError('no (input, output) pairs to draw from');
  const times = arrivalTimes(o);
  const next = mulberry32((o.seed ^ 0x5bd1e995) >>> 0);
  return times.map((arrival) => {
    if (o.pairs) {
      const p = o.pairs[Math.floor(next() * o.pairs.length)];
      return { arrival, inputTokens: Math.max(1, p.inputTokens), outputTokens: Math.max(1, p.outputTokens) };
    }
    return { arrival, inputTokens: drawLength(o.input, next), outputTokens: drawLength(o.output, next) };
  });
}

/**
 * A trace's requests (sorted by arrival) as a workload. `arrivalStep` first floors every arrival,
 * relative to the first, to a multiple of that many seconds: a trace recorded in coarse steps, whose
 * requests arrive in groups. `rateScale` then multiplies the arrival rate (divides every arrival
 * time); `rate` instead rescales the trace to that mean rate (requests/s). Lengths of 0 become 1
 * (an empty prompt cannot run; every request yields at least one token).
 */
export function traceWorkload(requests: readonly TraceRequest[], o: { rateScale?: number; rate?: number; arrivalStep?: number } = {}): SimRequest[] {
  const step = o.arrivalStep;
  if (step !== undefined && !(step > 0 && Number.isFinite(step))) throw new RangeError(`arrival step must be a finite number of seconds > 0, not ${step}`);
  const t0 = requests.length ? requests[0].arrival : 0;
  // flooring is monotone, so the order (and the trace's order among equal times) stays; the 1e-9
  // keeps an arrival recorded on a step (0.6 s at 0.3 s steps) on it despite binary rounding
  const times = requests.map((r) => (step === undefined ? r.arrival - t0 : Math.floor((r.arrival - t0) / step + 1e-9) * step));
  const n = times.length;
  const span = n > 1 ? times[n - 1] : 0;
  let factor = o.rateScale ?? 1;
  if (o.rate !== undefined) {
    if (!(span > 0)) throw new RangeError('the trace has no span to rescale to a rate');
    factor = o.rate / ((n - 1) / span);
  }
  if (!(factor > 0 && Number.isFinite(factor))) throw new RangeError(`rate scale must be a finite number > 0, not ${factor}`);
  return requests.map((r, i) => ({ arrival: times[i] / factor, inputTokens: Math.max(1, r.inputTokens), outputTokens: Math.max(1, r.outputTokens) }));
}

/** Mean rate of a workload: (n - 1) / span (0 when it has no span). */
export function workloadRate(reqs: readonly SimRequest[]): number {
  const n = reqs.length;
  const span = n > 1 ? reqs[n - 1].arrival - reqs[0].arrival : 0;
  return span > 0 ? (n - 1) / span : 0;
}

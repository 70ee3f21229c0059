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

/** A length distribution: one value, uniform integers in [min, max], or draws from observed values. */
export type LengthDist = { kind: 'fixed'; value: number } | { kind: 'uniform'; min: number; max: number } | { kind: 'empirical'; values: readonly number[] };

export interface SyntheticOptions {
  /** Poisson (exponential gaps, CV 1) or Gamma gaps with the given coefficient of variation */
  arrivals: 'poisson' | 'gamma';
  /** mean requests per second */
  rate: number;
  /** Gamma gaps' coefficient of variation (std / mean); > 1 is burstier than Poisson */
  cv?: number;
  /** how many requests */
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

/** `count` arrival times (seconds, sorted, the first after one gap) at mean `rate` per second. */
export function arrivalTimes(o: { arrivals: 'poisson' | 'gamma'; rate: number; cv?: number; count: number; seed: number }): number[] {
  if (!(o.rate > 0 && Number.isFinite(o.rate))) throw new RangeError(`rate must be a finite number > 0, not ${o.rate}`);
  const next = mulberry32(o.seed);
  const cv = o.arrivals === 'poisson' ? 1 : (o.cv ?? 1);
  if (!(cv > 0 && Number.isFinite(cv))) throw new RangeError(`cv must be a finite number > 0, not ${cv}`);
  // gaps ~ Gamma(k, theta) with k = 1 / cv^2 and mean k * theta = 1 / rate; k = 1 is exponential
  const shape = 1 / (cv * cv);
  const scale = 1 / (o.rate * shape);
  const out = new Array<number>(o.count);
  let t = 0;
  for (let i = 0; i < o.count; i++) {
    t += o.arrivals === 'poisson' ? -Math.log(1 - next()) / o.rate : gammaSample(shape, next) * scale;
    out[i] = t;
  }
  return out;
}

function drawLength(d: LengthDist, next: () => number): number {
  switch (d.kind) {
    case 'fixed':
      return d.value;
    case 'uniform':
      return d.min + Math.floor(next() * (d.max - d.min + 1));
    case 'empirical':
      return d.values[Math.floor(next() * d.values.length)];
  }
}

function checkDist(d: LengthDist, what: string): void {
  const ok =
    d.kind === 'fixed'
      ? Number.isInteger(d.value) && d.value >= 1
      : d.kind === 'uniform'
        ? Number.isInteger(d.min) && Number.isInteger(d.max) && d.min >= 1 && d.max >= d.min
        : d.values.length > 0;
  if (!ok) throw new RangeError(`${what} length: ${JSON.stringify(d.kind === 'empirical' ? { kind: 'empirical', values: d.values.length } : d)} is not a valid distribution (integers >= 1)`);
}

/** A seeded synthetic workload (arrivals and lengths from separate streams of the same seed). */
export function syntheticWorkload(o: SyntheticOptions): SimRequest[] {
  checkDist(o.input, 'input');
  checkDist(o.output, 'output');
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
 * A trace's requests as a workload. `rateScale` multiplies the arrival rate (divides every
 * arrival time); `rate` instead rescales the trace to that mean rate (requests/s). Lengths of 0
 * become 1 (an empty prompt cannot run; every request yields at least one token).
 */
export function traceWorkload(requests: readonly TraceRequest[], o: { rateScale?: number; rate?: number } = {}): SimRequest[] {
  const n = requests.length;
  const span = n > 1 ? requests[n - 1].arrival - requests[0].arrival : 0;
  let factor = o.rateScale ?? 1;
  if (o.rate !== undefined) {
    if (!(span > 0)) throw new RangeError('the trace has no span to rescale to a rate');
    factor = o.rate / ((n - 1) / span);
  }
  if (!(factor > 0 && Number.isFinite(factor))) throw new RangeError(`rate scale must be a finite number > 0, not ${factor}`);
  const t0 = n ? requests[0].arrival : 0;
  return requests.map((r) => ({ arrival: (r.arrival - t0) / factor, inputTokens: Math.max(1, r.inputTokens), outputTokens: Math.max(1, r.outputTokens) }));
}

/** Mean rate of a workload: (n - 1) / span (0 when it has no span). */
export function workloadRate(reqs: readonly SimRequest[]): number {
  const n = reqs.length;
  const span = n > 1 ? reqs[n - 1].arrival - reqs[0].arrival : 0;
  return span > 0 ? (n - 1) / span : 0;
}

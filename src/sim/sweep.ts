import { gpusOf, type Placement, placementLabel, type SimOptions, type SimSummary, simulate } from './simulator.ts';
import type { SimRequest } from './workload.ts';

/**
 * Rate sweeps and DistServe's goodput metric over the simulator: the highest request rate per GPU
 * at which at least a target fraction (90%) of requests meet their SLO, found by bisection, and
 * the placement search that compares colocated serving with every prefill/decode split of a
 * number of GPUs by that metric.
 */

/** The workload at a mean arrival rate (requests/s for the whole cluster). */
export type WorkloadAt = (rate: number) => SimRequest[];

/** One run per rate (whole-cluster requests/s). */
export function sweepRates(workloadAt: WorkloadAt, rates: readonly number[], o: SimOptions): SimSummary[] {
  return rates.map((rate) => ({ ...simulate(workloadAt(rate), o).summary, rate }));
}

export interface GoodputOptions {
  /** attainment a rate must reach (default 0.9) */
  target?: number;
  /** first per-GPU rate tried (default 1 request/s per GPU) */
  start?: number;
  /** stop bisecting when hi / lo is within 1 + this (default 0.02) */
  tolerance?: number;
  /** simulations at most (default 40) */
  maxProbes?: number;
  /** give up (rate 0) once a per-GPU rate this low still misses the target (default 1e-4) */
  minRate?: number;
}

export interface GoodputResult {
  placement: string;
  policy: string;
  gpus: number;
  /** the highest per-GPU rate found that meets the target (0 when even the lowest tried misses it) */
  ratePerGpu: number;
  /** the run at that rate (null when none met the target) */
  best: SimSummary | null;
  /** every run, in the order tried, with `rate` the whole-cluster rate */
  probes: SimSummary[];
}

/**
 * The highest per-GPU rate with attainment >= target: from `start`, doubles (or halves) until the
 * target is bracketed, then bisects. Attainment is taken to fall with rate (for a seeded workload,
 * a higher rate is the same requests closer together).
 */
export function maxGoodRate(workloadAt: WorkloadAt, o: SimOptions, g: GoodputOptions = {}): GoodputResult {
  const target = g.target ?? 0.9;
  const tol = g.tolerance ?? 0.02;
  const maxProbes = g.maxProbes ?? 40;
  const gpus = gpusOf(o.placement);
  const probes: SimSummary[] = [];
  const run = (perGpu: number): SimSummary => {
    const rate = perGpu * gpus;
    const s = { ...simulate(workloadAt(rate), o).summary, rate };
    probes.push(s);
    return s;
  };
  let lo = 0;
  let loRun: SimSummary | null = null;
  let hi = Infinity;
  let r = g.start ?? 1;
  // bracket: lo meets the target, hi does not
  while (probes.length < maxProbes) {
    const s = run(r);
    if (s.attainment >= target) {
      lo = r;
      loRun = s;
      if (hi !== Infinity) break;
      r *= 2;
    } else {
      hi = r;
      if (lo > 0) break;
      r /= 2;
      if (r < (g.minRate ?? 1e-4)) break;
    }
  }
  while (lo > 0 && hi !== Infinity && hi / lo > 1 + tol && probes.length < maxProbes) {
    const mid = Math.sqrt(lo * hi);
    const s = run(mid);
    if (s.attainment >= target) {
      lo = mid;
      loRun = s;
    } else hi = mid;
  }
  return { placement: placementLabel(o.placement), policy: probes[0]?.policy ?? '', gpus, ratePerGpu: lo, best: loRun, probes };
}

/** Colocated on all `gpus`, then every prefill + decode split of them (P from 1 to gpus - 1). */
export function candidatePlacements(gpus: number): Placement[] {
  if (!(Number.isInteger(gpus) && gpus >= 1)) throw new RangeError(`gpus must be an integer >= 1, not ${gpus}`);
  const out: Placement[] = [{ kind: 'colocated', instances: gpus }];
  for (let p = 1; p < gpus; p++) out.push({ kind: 'disaggregated', prefill: p, decode: gpus - p });
  return out;
}

/** Goodput per GPU of every candidate placement of `gpus`, best first (ties: the earlier candidate). */
export function planPlacement(workloadAt: WorkloadAt, gpus: number, o: Omit<SimOptions, 'placement'>, g: GoodputOptions = {}): GoodputResult[] {
  const results = candidatePlacements(gpus).map((placement) => maxGoodRate(workloadAt, { ...o, placement }, g));
  return results.map((r, i) => ({ r, i })).sort((a, b) => b.r.ratePerGpu - a.r.ratePerGpu || a.i - b.i).map(({ r }) => r);
}

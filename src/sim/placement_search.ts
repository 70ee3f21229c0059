import type { BatchShape, CostModel } from '../scheduler/cost_model.ts';
import { stepSeconds } from '../scheduler/service_time.ts';
import { idleFeasible } from './ceilings.ts';
import { kvTokensOf } from './headwise.ts';
import { type DegreeCosts, type Parallelism, degreeLabel, gpusOfDegree, linkTransferSeconds, pipelineFill } from './cost/parallel.ts';
import { type MissReason, type Placement, type SimOptions, type SimSummary, placementLabel } from './simulator.ts';
import { type GoodputOptions, type GoodputResult, maxGoodRate, type WorkloadAt } from './sweep.ts';
import type { SimRequest } from './workload.ts';

/**
 * The placement search over tensor and pipeline parallelism (DistServe's question: how should G
 * GPUs be laid out for a workload and an SLO?). Every layout of at most G GPUs is a candidate:
 * colocated instances of one degree, or prefill instances of one degree plus decode instances of
 * another, each instance inside one node. Degrees whose weights do not fit, or whose KV cannot
 * hold enough of the workload's requests, are skipped with the reason. Each remaining layout gets
 * a capacity estimate per phase (tokens per second an instance can prefill, and can decode within
 * the TPOT, over the workload's mean lengths); layouts are simulated in the order of that estimate,
 * each bisected to its highest rate per GPU meeting the attainment target, until the estimate of
 * the next falls below the `keep`-th best found (those are reported as pruned).
 */

export interface SearchOptions extends GoodputOptions {
  gpus: number;
  /** GPUs per node: an instance stays inside one; KV moves over the interconnect inside a node and the network across. Undefined: one node, KV over the cost model's own link. */
  gpusPerNode?: number;
  /** exact results for at least this many of the best layouts; the rest may be pruned by their estimate (default 3; Infinity: simulate every layout) */
  keep?: number;
}

export interface Layout {
  placement: Placement;
  label: string;
  gpus: number;
  /** cost model of each role (colocated: `front` only) */
  front: CostModel;
  back?: CostModel;
  /** node of each prefill / colocated instance, and of each decode instance */
  nodes: { front: number[]; back: number[] };
}

/** Requests per second an estimate allows, per phase, for the whole layout. */
export interface CapacityEstimate {
  prefill: number;
  decode: number;
  /** min of the two, over the attainment target (up to 1 - target of requests may be turned away), per GPU */
  perGpu: number;
}

export interface LayoutResult extends GoodputResult {
  layout: Layout;
  estimate: CapacityEstimate;
  /** what ran out first: from the misses of the lowest failing rate */
  limit: string;
}

export interface PlanSearchResult {
  /** best first */
  results: LayoutResult[];
  /** degrees or layouts not simulated, and why */
  skipped: { what: string; reason: string }[];
  /** layouts whose estimate fell below the best found */
  pruned: { label: string; gpus: number; estimate: CapacityEstimate }[];
}

/** Workload statistics the estimates need (lengths do not depend on the rate). */
interface WorkloadStats {
  meanInput: number;
  meanOutput: number;
  /** mean context a decode step reads per sequence, over all output tokens */
  decodeContext: number;
  /** prompt + max tokens of each request, what admission checks against the KV pool */
  admitTokens: number[];
}

function workloadStats(w: readonly SimRequest[], defaultMaxTokens: number): WorkloadStats {
  let input = 0;
  let output = 0;
  let ctx = 0;
  const admitTokens: number[] = [];
  for (const r of w) {
    const out = Math.max(1, Math.min(r.outputTokens, r.maxTokens ?? Infinity));
    const inp = Math.max(1, r.inputTokens);
    input += inp;
    output += out;
    ctx += out * (inp + out / 2);
    admitTokens.push(inp + (r.maxTokens ?? Math.max(defaultMaxTokens, out)));
  }
  const n = Math.max(1, w.length);
  return { meanInput: input / n, meanOutput: output / n, decodeContext: ctx / Math.max(1, output), admitTokens };
}

/** Seconds from one step's start to the next's: a pipeline starts its next step before this one's tokens are all out. */
function interval(cost: CostModel, b: BatchShape): number {
  return stepSeconds(cost, b) - pipelineFill(cost, b);
}

/** Prompt tokens per second one instance can prefill at most: full token-budget chunks. */
function prefillTokensPerSecond(cost: CostModel, tokenBudget: number): number {
  const t = interval(cost, { prefillTokens: tokenBudget, prefillAttention: 0, decodeSeqs: 0, decodeContext: 0 });
  return t > 0 ? tokenBudget / t : Infinity;
}

/**
 * Decode tokens per second one instance can reach: the largest batch whose step keeps the TPOT and
 * whose KV fits, at the workload's mean decode context; or why it cannot decode at all.
 */
function decodeTokensPerSecond(cost: CostModel, maxBatch: number, context: number, tpotMs: number | undefined, headwise: SimOptions['headwise']): number | string {
  const kvBatch = Math.floor(cost.kvCapacityTokens / Math.max(1, kvTokensOf(context, headwise)));
  if (kvBatch < 1) return `KV holds ${cost.kvCapacityTokens} tokens, not one sequence of the mean decode context (${Math.round(context)})`;
  const step = (b: number) => interval(cost, { prefillTokens: 0, prefillAttention: 0, decodeSeqs: b, decodeContext: b * kvTokensOf(context, headwise) });
  for (let b = Math.min(maxBatch, kvBatch); b >= 1; b--) {
    const t = step(b);
    if (tpotMs === undefined || t * 1e3 <= tpotMs) return t > 0 ? b / t : Infinity;
  }
  return `one decode step takes ${(step(1) * 1e3).toFixed(1)} ms, over the ${tpotMs} ms TPOT`;
}

interface Candidate {
  degree: Parallelism;
  cost: CostModel;
  prefillTps: number;
  /** 0 when it cannot decode within the SLO */
  decodeTps: number;
}

/** First-fit decreasing of instance sizes into nodes, prefill and decode alternating among equals so they share nodes. Null when they do not fit. */
export function packNodes(front: number[], back: number[], gpusPerNode: number, nodes: number): { front: number[]; back: number[] } | null {
  const items = [...front.map((g, i) => ({ g, role: 0, i })), ...back.map((g, i) => ({ g, role: 1, i }))];
  items.sort((a, b) => b.g - a.g || a.i - b.i || a.role - b.role);
  const free = new Array<number>(nodes).fill(gpusPerNode);
  const out = { front: new Array<number>(front.length), back: new Array<number>(back.length) };
  for (const it of items) {
    const n = free.findIndex((f) => f >= it.g);
    if (n < 0) return null;
    free[n] -= it.g;
    (it.role === 0 ? out.front : out.back)[it.i] = n;
  }
  return out;
}

export interface LayoutCandidates {
  /** highest estimate first */
  layouts: { layout: Layout; estimate: CapacityEstimate }[];
  skipped: PlanSearchResult['skipped'];
}

/** Every layout of at most `o.gpus` GPUs worth simulating, with its estimate, and what was skipped and why. */
export function layoutCandidates(workload: readonly SimRequest[], costs: DegreeCosts, base: Omit<SimOptions, 'placement' | 'cost' | 'costs'>, o: SearchOptions): LayoutCandidates {
  const G = o.gpus;
  if (!(Number.isInteger(G) && G >= 1)) throw new RangeError(`gpus must be an integer >= 1, not ${G}`);
  const perNode = o.gpusPerNode ?? G;
  if (!(Number.isInteger(perNode) && perNode >= 1)) throw new RangeError(`gpus per node must be an integer >= 1, not ${perNode}`);
  const nodes = Math.ceil(G / perNode);
  const target = o.target ?? 0.9;
  const tokenBudget = base.limits?.tokenBudget ?? 2048;
  const maxBatch = base.limits?.maxBatch ?? 128;
  const blockSize = base.blockSize ?? 16;
  const stats = workloadStats(workload, base.maxTokens ?? 1024);
  const skipped: PlanSearchResult['skipped'] = [];
  // the share of requests that could meet their SLO alone on idle instances of these degrees: below the target, no rate reaches it
  const idleShare = (front: CostModel, back: CostModel) => {
    let ok = 0;
    for (const r of workload) {
      const out = Math.max(1, Math.min(r.outputTokens, r.maxTokens ?? Infinity));
      if (idleFeasible(front, tokenBudget, Math.max(1, r.inputTokens), out, { ...base.slo, ...r.slo }, back)) ok++;
    }
    return ok / Math.max(1, workload.length);
  };
  const idleOk = (what: string, front: CostModel, back: CostModel) => {
    const share = idleShare(front, back);
    if (share >= target) return true;
    skipped.push({ what, reason: `only ${(share * 100).toFixed(1)}% of requests could meet the SLO even alone on idle instances` });
    return false;
  };

  // the degrees that can run at all
  const candidates: Candidate[] = [];
  for (const degree of costs.degrees(G)) {
    const what = `${degreeLabel(degree) || 'one-GPU'} instances`;
    const g = gpusOfDegree(degree);
    if (g > perNode) {
      skipped.push({ what, reason: `${g} GPUs do not fit in a node of ${perNode}` });
      continue;
    }
    const cost = costs.at(degree);
    if (typeof cost === 'string') {
      skipped.push({ what, reason: cost });
      continue;
    }
    const blocks = Math.floor(cost.kvCapacityTokens / blockSize);
    const tooLarge = stats.admitTokens.filter((t) => Math.ceil(kvTokensOf(t, base.headwise) / blockSize) > blocks).length / Math.max(1, stats.admitTokens.length);
    if (1 - tooLarge < target) {
      skipped.push({ what, reason: `KV holds ${cost.kvCapacityTokens} tokens: ${(tooLarge * 100).toFixed(1)}% of requests (prompt + max tokens) do not fit, more than the ${((1 - target) * 100).toFixed(0)}% the target allows` });
      continue;
    }
    const decode = decodeTokensPerSecond(cost, maxBatch, stats.decodeContext, base.slo?.tpotMs, base.headwise);
    if (typeof decode === 'string') skipped.push({ what: `${what} for decoding`, reason: `${decode} (still tried for prefill)` });
    candidates.push({ degree, cost, prefillTps: prefillTokensPerSecond(cost, tokenBudget), decodeTps: typeof decode === 'string' ? 0 : decode });
  }

  // every layout of at most G GPUs that packs into the nodes
  const layouts: { layout: Layout; estimate: CapacityEstimate }[] = [];
  const estimate = (prefillTps: number, decodeTps: number, gpus: number): CapacityEstimate => {
    const prefill = prefillTps / stats.meanInput;
    const decode = decodeTps / stats.meanOutput;
    return { prefill, decode, perGpu: Math.min(prefill, decode) / target / gpus };
  };
  const add = (placement: Placement, sizes: { front: number[]; back: number[] }, front: Candidate, back: Candidate | undefined, est: CapacityEstimate) => {
    const label = placementLabel(placement);
    const gpus = [...sizes.front, ...sizes.back].reduce((a, b) => a + b, 0);
    const packed = packNodes(sizes.front, sizes.back, perNode, nodes);
    if (!packed) {
      skipped.push({ what: label, reason: `its instances do not pack into ${nodes} nodes of ${perNode} GPUs` });
      return;
    }
    if (est.perGpu === 0) return; // a decode side that cannot decode: already reported per degree
    layouts.push({ layout: { placement, label, gpus, front: front.cost, back: back?.cost, nodes: packed }, estimate: est });
  };
  const named = (d: Parallelism) => degreeLabel(d) || 'one-GPU';
  for (const c of candidates) {
    const g = gpusOfDegree(c.degree);
    if (!idleOk(`colocated ${named(c.degree)} instances`, c.cost, c.cost)) continue;
    for (let n = 1; n * g <= G; n++) {
      const placement: Placement = { kind: 'colocated', instances: n, degree: c.degree };
      add(placement, { front: new Array(n).fill(g), back: [] }, c, undefined, estimate(n * c.prefillTps, n * c.decodeTps, n * g));
    }
  }
  for (const p of candidates) {
    for (const d of candidates) {
      const gp = gpusOfDegree(p.degree);
      const gd = gpusOfDegree(d.degree);
      if (gp + gd > G || d.decodeTps === 0 || !idleOk(`prefill on ${named(p.degree)}, decode on ${named(d.degree)} instances`, p.cost, d.cost)) continue;
      for (let np = 1; np * gp + gd <= G; np++) {
        for (let nd = 1; np * gp + nd * gd <= G; nd++) {
          const placement: Placement = { kind: 'disaggregated', prefill: np, decode: nd, prefillDegree: p.degree, decodeDegree: d.degree };
          add(placement, { front: new Array(np).fill(gp), back: new Array(nd).fill(gd) }, p, d, estimate(np * p.prefillTps, nd * d.decodeTps, np * gp + nd * gd));
        }
      }
    }
  }
  // highest estimate first; among equals, the one with more GPUs (pooling helps), then enumeration order
  const order = layouts.map((l, i) => ({ ...l, i })).sort((a, b) => b.estimate.perGpu - a.estimate.perGpu || b.layout.gpus - a.layout.gpus || a.i - b.i);
  return { layouts: order.map(({ layout, estimate }) => ({ layout, estimate })), skipped };
}

/** The search: candidates by estimate, each bisected, until the next estimate falls below the `keep`-th best rate found. */
export function planSearch(workloadAt: WorkloadAt, costs: DegreeCosts, base: Omit<SimOptions, 'placement' | 'cost' | 'costs'>, o: SearchOptions): PlanSearchResult {
  const target = o.target ?? 0.9;
  const keep = o.keep ?? 3;
  // lengths do not depend on the rate
  const { layouts: order, skipped } = layoutCandidates(workloadAt(1), costs, base, o);
  const results: LayoutResult[] = [];
  const pruned: PlanSearchResult['pruned'] = [];
  for (const { layout, estimate: est } of order) {
    const ranked = results.map((r) => r.ratePerGpu).sort((a, b) => b - a);
    if (ranked.length >= keep && est.perGpu < ranked[keep - 1]) {
      pruned.push({ label: layout.label, gpus: layout.gpus, estimate: est });
      continue;
    }
    // a layout that misses the target at 1/64 of its estimate is not worth halving further
    const g = maxGoodRate(workloadAt, simOptions(layout, base, costs, o.gpusPerNode !== undefined, target), { ...o, minRate: o.minRate ?? est.perGpu / 64 });
    results.push({ ...g, layout, estimate: est, limit: limitOf(g) });
  }
  results.sort((a, b) => b.ratePerGpu - a.ratePerGpu || b.gpus - a.gpus);
  return { results, skipped, pruned };
}

/** The simulator's options for one layout: per-role cost models, KV transfers by node, failed probes cut short. */
function simOptions(layout: Layout, base: Omit<SimOptions, 'placement' | 'cost' | 'costs'>, costs: DegreeCosts, byNode: boolean, target: number): SimOptions {
  const p = layout.placement;
  const o: SimOptions = { ...base, placement: p, cost: layout.front, stopBelow: target };
  if (p.kind === 'colocated') return o;
  o.costs = { prefill: layout.front, decode: layout.back };
  const links = costs.links;
  if (byNode && links) {
    const { nodes } = layout;
    const from = p.prefillDegree!;
    const to = p.decodeDegree!;
    o.kvTransferSeconds = (tokens, i, j) => linkTransferSeconds(nodes.front[i] === nodes.back[j] ? links.intraNode : links.interNode, links.kvBytesPerToken, tokens, from, to);
  }
  return o;
}

const PHASE_OF: Partial<Record<MissReason, string>> = {
  queueing: 'prefill',
  'prefill-interference': 'prefill',
  'refused-queue-full': 'prefill',
  'decode-pace': 'decode',
  preemption: 'KV memory',
  'refused-too-large': 'KV memory',
};

/** The phase behind most misses at the lowest rate that failed the target ("prefill (TTFT)", ...). */
export function limitOf(g: GoodputResult): string {
  const failing = g.probes.filter((p) => p.rate / p.gpus > g.ratePerGpu && p.attainment < 1).sort((a, b) => a.rate - b.rate)[0];
  if (!failing) return 'unknown (no failing rate was tried)';
  return phaseOfMisses(failing);
}

export function phaseOfMisses(s: SimSummary): string {
  const by = new Map<string, number>();
  let total = 0;
  for (const [why, n] of Object.entries(s.misses) as [MissReason, number][]) {
    const phase = PHASE_OF[why] ?? why;
    by.set(phase, (by.get(phase) ?? 0) + n);
    total += n;
  }
  const top = [...by.entries()].sort((a, b) => b[1] - a[1])[0];
  return top ? `${top[0]} (${Math.round((top[1] / total) * 100)}% of misses at ${(s.rate / s.gpus).toFixed(3)} req/s per GPU)` : 'none';
}

import type { BatchShape, CostModel } from '../../scheduler/cost_model.ts';

/**
 * Tensor and pipeline parallelism of one serving instance, as the step-time models and the
 * placement search see it. An instance of degree (tp, pp) occupies tp x pp GPUs: pp pipeline
 * stages of tp GPUs each.
 */
export interface Parallelism {
  /** tensor-parallel degree: GPUs that split every layer */
  tp: number;
  /** pipeline-parallel degree: stages, each holding a slice of the layers */
  pp: number;
}

export const ONE_GPU: Parallelism = { tp: 1, pp: 1 };

/** A link between GPUs: NVLink or PCIe inside a node, a NIC across nodes. */
export interface Link {
  name: string;
  /** bytes/s per direction, as the datasheet gives it */
  bytesPerSecond: number;
  /** fixed seconds per transfer or collective */
  latencySeconds: number;
}

export const gpusOfDegree = (d: Parallelism) => d.tp * d.pp;

/** `tp2`, `pp2`, `tp2pp2`; empty for one GPU (so one-GPU labels read as before). */
export function degreeLabel(d: Parallelism): string {
  return `${d.tp > 1 ? `tp${d.tp}` : ''}${d.pp > 1 ? `pp${d.pp}` : ''}`;
}

export function checkDegree(d: Parallelism, what = 'degree'): void {
  for (const [k, v] of Object.entries(d)) if (!(Number.isInteger(v) && v >= 1)) throw new RangeError(`${what}: ${k} must be an integer >= 1, not ${v}`);
}

/** A cost model that knows the degree of the instance it times. */
export interface ParallelCostModel extends CostModel {
  readonly parallel: Parallelism;
  /** pipelines: how much sooner than stepSeconds (when its tokens come) the next step can start (see pipelineStep) */
  pipelineFillSeconds?(b: BatchShape): number;
}

/** The pipeline fill of a step under `cost` (0 without pipelining). */
export function pipelineFill(cost: CostModel, b: BatchShape): number {
  return (cost as Partial<ParallelCostModel>).pipelineFillSeconds?.(b) ?? 0;
}

/** The degree a cost model was made for (one GPU when it does not say). */
export function parallelOf(c: CostModel): Parallelism {
  const p = (c as Partial<ParallelCostModel>).parallel;
  return p ?? ONE_GPU;
}

/**
 * The step of a pp-stage pipeline from the time of one whole pass at pp = 1. The step's tokens are
 * split into m = min(pp, tokens) micro-batches; each stage takes 1/pp of a pass over its
 * micro-batch and sends its activations on (`hopSeconds` of a micro-batch's tokens). Micro-batch
 * k enters the first stage k - 1 stage times after the first and leaves the last pp stage times
 * after it entered, so the step's tokens are all out `step` = m + pp - 1 stage times after it
 * began (what schedulers and ceilings wait for). Its first micro-batch's sequences can enter their
 * next step after pp stage times, `fill` = m - 1 stage times before the end: every live sequence
 * advances once per pass over 1/m of the batch (with m < pp, as for a lone decode, the other
 * stages idle). pp = 1 is the pass itself.
 */
export function pipelineStep(pass: (b: BatchShape) => number, pp: number, hopSeconds: (tokens: number) => number): { step: (b: BatchShape) => number; fill: (b: BatchShape) => number } {
  if (pp === 1) return { step: pass, fill: () => 0 };
  const stage = (b: BatchShape) => {
    const tokens = b.prefillTokens + b.decodeSeqs;
    const m = Math.max(1, Math.min(pp, tokens));
    const micro: BatchShape = { prefillTokens: b.prefillTokens / m, prefillAttention: b.prefillAttention / m, decodeSeqs: b.decodeSeqs / m, decodeContext: b.decodeContext / m };
    return { m, seconds: pass(micro) / pp + hopSeconds(tokens / m) };
  };
  return {
    step: (b) => {
      const { m, seconds } = stage(b);
      return (m + pp - 1) * seconds;
    },
    fill: (b) => {
      const { m, seconds } = stage(b);
      return (m - 1) * seconds;
    },
  };
}

/** Powers of two from 1 up to `max`. */
export function powersOfTwo(max: number): number[] {
  const out: number[] = [];
  for (let v = 1; v <= max; v *= 2) out.push(v);
  return out;
}

/**
 * What the placement search needs of a step-time source: the cost model of an instance at each
 * degree (or why it cannot run), and the links KV moves over between instances.
 */
export interface DegreeCosts {
  describe(): string;
  /** the degrees worth trying for instances of at most `maxGpus` GPUs, fewest GPUs first */
  degrees(maxGpus: number): Parallelism[];
  /** the cost model of an instance of degree d, or the reason it cannot run (does not fit in memory, no coefficients) */
  at(d: Parallelism): CostModel | string;
  /**
   * Links for KV transfers inside a node and across nodes, and the KV bytes per token (all layers)
   * a transfer moves; absent: the cost model's own kvTransferSeconds.
   */
  links?: { intraNode: Link; interNode: Link; kvBytesPerToken: number };
}

/**
 * Seconds to move `tokens` tokens of KV between two instances over `link`: each GPU of the smaller
 * instance sends or receives its shard over its own link, in parallel.
 */
export function linkTransferSeconds(link: Link, kvBytesPerToken: number, tokens: number, from: Parallelism, to: Parallelism): number {
  const lanes = Math.min(gpusOfDegree(from), gpusOfDegree(to));
  return link.latencySeconds + (tokens * kvBytesPerToken) / (link.bytesPerSecond * lanes);
}

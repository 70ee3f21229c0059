import { readFileSync, writeFileSync } from 'node:fs';
import type { BatchShape, CostModel } from '../../scheduler/cost_model.ts';
import { DTYPE_BYTES, analyticalCostModel, type AnalyticalOptions } from './analytical.ts';
import { type HeadwiseLayout, checkLayout } from '../headwise.ts';
import { type DegreeCosts, type Parallelism, type ParallelCostModel, ONE_GPU, checkDegree, degreeLabel, pipelineStep, powersOfTwo } from './parallel.ts';

/** Seconds per unit of each BatchShape term, plus a constant per step. All >= 0. */
export interface FittedCoefficients {
  /** seconds per step whatever the batch (c0) */
  base: number;
  /** per prompt token (c1) */
  prefillTokens: number;
  /** per prefill attention (query, key) pair (c2) */
  prefillAttention: number;
  /** per decoding sequence (c3) */
  decodeSeqs: number;
  /** per context token read by decoding sequences (c4) */
  decodeContext: number;
  /**
   * Not fitted by `wgserve profile`; for coefficients fitted per phase elsewhere (DistServe fits
   * prefill and decode with separate constants): seconds added to a step with prompt tokens, and
   * to a step with decoding sequences.
   */
  prefillBase?: number;
  decodeBase?: number;
}

export const TERMS = ['base', 'prefillTokens', 'prefillAttention', 'decodeSeqs', 'decodeContext'] as const;
const PHASE_TERMS = ['prefillBase', 'decodeBase'] as const;

export interface StepSample {
  shape: BatchShape;
  seconds: number;
}

export interface FitQuality {
  /** coefficient of determination of the predicted step times (1 = exact) */
  r2: number;
  /** mean over samples of |predicted - measured| / measured */
  meanRelativeError: number;
  /** the largest such error */
  maxRelativeError: number;
}

/** The JSON file `wgserve profile` writes. */
export interface FittedCostModelJson {
  kind: 'fitted';
  coefficients: FittedCoefficients;
  kvCapacityTokens: number;
  kvTransferBytesPerSecond: number;
  /** bytes of KV cache per token, for kvTransferSeconds */
  kvBytesPerToken: number;
  device: string;
  model: string;
  /** ISO time */
  fittedAt: string;
  /** fit quality (absent for coefficients taken from elsewhere) */
  r2?: number;
  meanRelativeError?: number;
  /** how the step times were measured: GPU timestamps, wall clock, or a live engine's loop periods */
  clock?: 'gpu' | 'wall' | 'engine';
  samples: StepSample[];
  /** the degree the top-level coefficients were measured at (default one GPU) */
  parallel?: Parallelism;
  /** coefficients measured at other degrees, each with its instance's KV capacity */
  degrees?: FittedDegree[];
  /** KV transfers across nodes, bytes/s per direction (default kvTransferBytesPerSecond, which is the link inside a node) */
  interNodeBytesPerSecond?: number;
  /** pipeline stages derived from a measured degree: seconds to send one micro-batch to the next stage (default 0, as DistServe's simulator) */
  pipelineHopSeconds?: number;
  /**
   * Profiled with a head pattern (`profile --head-pattern`): its layout. kvCapacityTokens stays in
   * tokens of the full cache, the samples' attention terms count what the rings read; `simulate`
   * takes this layout unless --retrieval-fraction says otherwise.
   */
  headwise?: HeadwiseLayout;
}

export interface FittedDegree {
  tp: number;
  /** default 1 */
  pp?: number;
  coefficients: FittedCoefficients;
  kvCapacityTokens: number;
}

/** A preset: the analytical roofline of a hardware preset and a model shape. */
export interface AnalyticalCostModelJson extends Omit<AnalyticalOptions, 'weightBytes' | 'kvBytes'> {
  kind: 'analytical';
  /** HARDWARE key */
  hardware: string;
  /** MODEL_SHAPES key */
  model: string;
  /** weight format (DTYPE_BYTES key; default f16) */
  dtype?: string;
  /** KV cache element format (default f16) */
  kvDtype?: string;
}

export function features(b: BatchShape): number[] {
  return [1, b.prefillTokens, b.prefillAttention, b.decodeSeqs, b.decodeContext];
}

export function predict(c: FittedCoefficients, b: BatchShape): number {
  const x = features(b);
  const phases = (b.prefillTokens > 0 ? (c.prefillBase ?? 0) : 0) + (b.decodeSeqs > 0 ? (c.decodeBase ?? 0) : 0);
  return TERMS.reduce((sum, t, i) => sum + c[t] * x[i], phases);
}

/**
 * DistServe's fitted step time, generalised to mixed batches:
 * step = c0 + c1 * prefillTokens + c2 * prefillAttention + c3 * decodeSeqs + c4 * decodeContext.
 */
export class FittedCostModel implements ParallelCostModel {
  readonly parallel: Parallelism;
  private readonly pipeline: ReturnType<typeof pipelineStep>;

  /** `pipeline`: stages derived from these coefficients (measured at pp 1), see pipelineStep */
  constructor(
    readonly json: FittedCostModelJson,
    pipeline = 1,
  ) {
    const measured = json.parallel ?? ONE_GPU;
    this.parallel = { tp: measured.tp, pp: measured.pp * pipeline };
    const hop = json.pipelineHopSeconds ?? 0;
    this.pipeline = pipelineStep((b) => predict(json.coefficients, b), pipeline, () => hop);
  }

  get kvCapacityTokens(): number {
    return this.json.kvCapacityTokens;
  }

  stepSeconds(b: BatchShape): number {
    return this.pipeline.step(b);
  }

  pipelineFillSeconds(b: BatchShape): number {
    return this.pipeline.fill(b);
  }

  kvTransferSeconds(tokens: number): number {
    return (tokens * this.json.kvBytesPerToken) / this.json.kvTransferBytesPerSecond;
  }

  describe(): string {
    const c = this.json.coefficients;
    const us = (v: number) => `${(v * 1e6).toPrecision(3)} us`;
    const degree = degreeLabel(this.parallel);
    return (
      `fitted on ${this.json.device}, ${this.json.model}${degree ? ` (${degree})` : ''}: ${us(c.base)} + ${us(c.prefillTokens)}/prompt token + ${us(c.prefillAttention)}/attention pair + ` +
      `${us(c.decodeSeqs)}/decode seq + ${us(c.decodeContext)}/decode context token` +
      `${c.prefillBase ? ` + ${us(c.prefillBase)} with prompt tokens` : ''}${c.decodeBase ? ` + ${us(c.decodeBase)} with decodes` : ''}` +
      (this.json.r2 !== undefined && this.json.meanRelativeError !== undefined ? ` (R2 ${this.json.r2.toFixed(3)}, mean rel. error ${(this.json.meanRelativeError * 100).toFixed(1)}%)` : '')
    );
  }

  save(file: string): void {
    writeFileSync(file, `${JSON.stringify(this.json, null, 2)}\n`);
  }
}

/**
 * The degrees a fitted file covers: its own coefficients and those under `degrees` as measured,
 * and deeper pipelines derived from any degree measured at pp 1 (each stage a 1/pp share of a
 * pass, as DistServe's simulator does; KV capacity pp times the measured one, a lower bound since
 * each stage also holds fewer weights). Tensor parallelism is not derived: it needs coefficients
 * measured at that degree.
 */
export function fittedDegrees(model: FittedCostModel): DegreeCosts {
  const j = model.json;
  const key = (d: Parallelism) => `${d.tp}x${d.pp}`;
  const measured = new Map<string, FittedCostModelJson>([[key(j.parallel ?? ONE_GPU), { ...j, degrees: undefined }]]);
  for (const d of j.degrees ?? []) {
    const parallel = { tp: d.tp, pp: d.pp ?? 1 };
    measured.set(key(parallel), { ...j, parallel, coefficients: d.coefficients, kvCapacityTokens: d.kvCapacityTokens, degrees: undefined });
  }
  const list = [...measured.values()].map((m) => m.parallel ?? ONE_GPU);
  return {
    describe: () => `fitted on ${j.device}, ${j.model}: measured at ${list.map((d) => degreeLabel(d) || 'one GPU').join(', ')}; deeper pipelines derived`,
    degrees: (maxGpus) => {
      const out = new Map<string, Parallelism>();
      for (const d of list) {
        if (d.tp * d.pp <= maxGpus) out.set(key(d), d);
        if (d.pp === 1) for (const pp of powersOfTwo(Math.floor(maxGpus / d.tp))) out.set(key({ tp: d.tp, pp }), { tp: d.tp, pp });
      }
      return [...out.values()].sort((a, b) => a.tp * a.pp - b.tp * b.pp || a.pp - b.pp);
    },
    at: (d) => {
      const exact = measured.get(key(d));
      if (exact) return new FittedCostModel(exact);
      const base = measured.get(key({ tp: d.tp, pp: 1 }));
      if (base) return new FittedCostModel({ ...base, kvCapacityTokens: base.kvCapacityTokens * d.pp }, d.pp);
      return `no coefficients measured at tp${d.tp} (measured: ${list.map((m) => degreeLabel(m) || 'one GPU').join(', ')})`;
    },
    links: {
      intraNode: { name: 'the profile\'s KV link', bytesPerSecond: j.kvTransferBytesPerSecond, latencySeconds: 0 },
      interNode: { name: 'the profile\'s network', bytesPerSecond: j.interNodeBytesPerSecond ?? j.kvTransferBytesPerSecond, latencySeconds: 0 },
      kvBytesPerToken: j.kvBytesPerToken,
    },
  };
}

export interface FitOptions {
  /**
   * `relative` (default) minimises the squared relative error (each row divided by its measured
   * time), so millisecond decode steps count as much as second-long prefills; `absolute` is plain
   * least squares.
   */
  weighting?: 'relative' | 'absolute';
}

/** Non-negative least-squares coefficients of the step-time form, and how well they fit. */
export function fitCostModel(samples: readonly StepSample[], options: FitOptions = {}): { coefficients: FittedCoefficients } & FitQuality {
  if (samples.length === 0) throw new Error('fitCostModel: no samples');
  for (const s of samples) if (!(s.seconds > 0 && Number.isFinite(s.seconds))) throw new RangeError(`fitCostModel: step time must be positive: ${s.seconds}`);
  const relative = (options.weighting ?? 'relative') === 'relative';
  const rows = samples.map((s) => features(s.shape).map((v) => (relative ? v / s.seconds : v)));
  const y = samples.map((s) => (relative ? 1 : s.seconds));
  const x = nnls(rows, y);
  const coefficients = Object.fromEntries(TERMS.map((t, i) => [t, x[i]])) as unknown as FittedCoefficients;
  return { coefficients, ...fitQuality(coefficients, samples) };
}

export function fitQuality(c: FittedCoefficients, samples: readonly StepSample[]): FitQuality {
  const mean = samples.reduce((s, p) => s + p.seconds, 0) / samples.length;
  let ssRes = 0;
  let ssTot = 0;
  let rel = 0;
  let maxRel = 0;
  for (const p of samples) {
    const e = predict(c, p.shape) - p.seconds;
    ssRes += e * e;
    ssTot += (p.seconds - mean) ** 2;
    const r = Math.abs(e) / p.seconds;
    rel += r;
    maxRel = Math.max(maxRel, r);
  }
  return { r2: ssTot > 0 ? 1 - ssRes / ssTot : ssRes === 0 ? 1 : 0, meanRelativeError: rel / samples.length, maxRelativeError: maxRel };
}

/**
 * Non-negative least squares, min |A x - b| subject to x >= 0, by the Lawson-Hanson active-set
 * method. Columns are scaled to unit norm first (the terms differ by orders of magnitude); a column
 * that is all zero gets coefficient 0.
 */
export function nnls(a: readonly (readonly number[])[], b: readonly number[]): number[] {
  const m = a.length;
  const n = a[0]?.length ?? 0;
  const scale = new Array<number>(n).fill(0);
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let i = 0; i < m; i++) s += a[i][j] * a[i][j];
    scale[j] = Math.sqrt(s);
  }
  const A = a.map((row) => row.map((v, j) => (scale[j] > 0 ? v / scale[j] : 0)));
  const x = new Array<number>(n).fill(0);
  const passive = new Array<boolean>(n).fill(false);
  const usable = scale.map((s) => s > 0);
  const bNorm = Math.sqrt(b.reduce((s, v) => s + v * v, 0));
  const tol = 1e-12 * Math.max(1, bNorm) * Math.max(1, Math.sqrt(m));

  const gradient = () => {
    const r = b.map((bi, i) => bi - A[i].reduce((s, v, j) => s + v * x[j], 0));
    return Array.from({ length: n }, (_, j) => A.reduce((s, row, i) => s + row[j] * r[i], 0));
  };
  for (let outer = 0; outer < 3 * n + 10; outer++) {
    const w = gradient();
    let best = -1;
    for (let j = 0; j < n; j++) if (!passive[j] && usable[j] && w[j] > tol && (best < 0 || w[j] > w[best])) best = j;
    if (best < 0) break;
    passive[best] = true;
    for (let inner = 0; inner < 3 * n + 10; inner++) {
      const idx = passive.flatMap((p, j) => (p ? [j] : []));
      const zSub = leastSquares(A.map((row) => idx.map((j) => row[j])), b);
      const z = new Array<number>(n).fill(0);
      idx.forEach((j, k) => (z[j] = zSub[k]));
      if (idx.every((j) => z[j] > 0)) {
        for (let j = 0; j < n; j++) x[j] = z[j];
        break;
      }
      // step from x toward z as far as feasibility allows, and drop the variables that hit zero
      let alpha = Infinity;
      for (const j of idx) if (z[j] <= 0) alpha = Math.min(alpha, x[j] / (x[j] - z[j]));
      for (let j = 0; j < n; j++) x[j] += alpha * (z[j] - x[j]);
      for (const j of idx) if (x[j] <= 1e-15) {
        x[j] = 0;
        passive[j] = false;
      }
    }
  }
  return x.map((v, j) => (scale[j] > 0 ? v / scale[j] : 0));
}

/** Least squares by the normal equations (small, well-scaled systems), Gaussian elimination with pivoting. */
function leastSquares(a: readonly (readonly number[])[], b: readonly number[]): number[] {
  const n = a[0]?.length ?? 0;
  const M = Array.from({ length: n }, (_, r) => {
    const row = new Array<number>(n + 1).fill(0);
    for (let i = 0; i < a.length; i++) {
      for (let c = 0; c < n; c++) row[c] += a[i][r] * a[i][c];
      row[n] += a[i][r] * b[i];
    }
    row[r] += 1e-14; // keeps an exactly collinear pair solvable
    return row;
  });
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r][c]) > Math.abs(M[p][c])) p = r;
    [M[c], M[p]] = [M[p], M[c]];
    for (let r = 0; r < n; r++) {
      if (r === c || M[c][c] === 0) continue;
      const f = M[r][c] / M[c][c];
      for (let k = c; k <= n; k++) M[r][k] -= f * M[c][k];
    }
  }
  return M.map((row, r) => (row[r] !== 0 ? row[n] / row[r] : 0));
}

/** A cost model from a JSON file: a fitted profile (`wgserve profile`) or an analytical preset. */
export function loadCostModel(file: string): CostModel {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: cannot read a cost model: ${err instanceof Error ? err.message : String(err)}`);
  }
  return costModelFromJson(json, file);
}

export function costModelFromJson(json: unknown, source = 'cost model'): CostModel {
  const o = json as Partial<FittedCostModelJson> & Partial<AnalyticalCostModelJson> & { kind?: string };
  if (o?.kind === 'fitted') {
    const checkCoefficients = (c: FittedCoefficients | undefined, where: string) => {
      for (const t of TERMS) if (!(typeof c?.[t] === 'number' && c[t] >= 0)) throw new Error(`${source}: ${where}.${t} must be a number >= 0`);
      for (const t of PHASE_TERMS) if (c?.[t] !== undefined && !(typeof c[t] === 'number' && c[t] >= 0)) throw new Error(`${source}: ${where}.${t} must be a number >= 0`);
    };
    checkCoefficients(o.coefficients, 'coefficients');
    for (const k of ['kvCapacityTokens', 'kvTransferBytesPerSecond', 'kvBytesPerToken'] as const) {
      if (!(typeof o[k] === 'number' && o[k] > 0)) throw new Error(`${source}: ${k} must be a positive number`);
    }
    if (o.parallel) checkDegree(o.parallel, `${source}: parallel`);
    if (o.headwise !== undefined) checkLayout(o.headwise, `${source}: headwise`);
    (o.degrees ?? []).forEach((d, i) => {
      checkDegree({ tp: d.tp, pp: d.pp ?? 1 }, `${source}: degrees[${i}]`);
      checkCoefficients(d.coefficients, `degrees[${i}].coefficients`);
      if (!(typeof d.kvCapacityTokens === 'number' && d.kvCapacityTokens > 0)) throw new Error(`${source}: degrees[${i}].kvCapacityTokens must be a positive number`);
    });
    return new FittedCostModel(o as FittedCostModelJson);
  }
  if (o?.kind === 'analytical') {
    if (typeof o.hardware !== 'string' || typeof o.model !== 'string') throw new Error(`${source}: an analytical preset needs "hardware" and "model"`);
    const bytes = (name: string | undefined, what: string) => {
      const b = DTYPE_BYTES[(name ?? 'f16').toLowerCase()];
      if (b === undefined) throw new Error(`${source}: unknown ${what} "${name}" (known: ${Object.keys(DTYPE_BYTES).join(', ')})`);
      return b;
    };
    const { kind: _k, hardware, model, dtype, kvDtype, ...rest } = o as AnalyticalCostModelJson;
    return analyticalCostModel(hardware, model, { ...rest, weightBytes: bytes(dtype, 'dtype'), kvBytes: bytes(kvDtype, 'kvDtype') });
  }
  throw new Error(`${source}: "kind" must be "fitted" or "analytical"`);
}

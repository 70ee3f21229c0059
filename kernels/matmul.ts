import { Params } from '../src/gpu/params.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { GPU_TARGET_WORKGROUPS, grid1d } from './grid.ts';
import { rmsScale } from './rmsnorm.ts';
import { useSubgroups } from './subgroups.ts';
import { QK, WFMT, type WeightFormat, checkRowLength, weightGroup } from './weights.ts';

export type MatmulVariant = 'auto' | 'decode' | 'tiled';

/** RMSNorm applied to X's rows on the way in: x[m, k] * scale[m] * weight[k] (scales from rmsScale). */
export interface MatmulNorm {
  /** [k] f32 norm weight */
  weight: Binding;
  /** [m] f32 row scales 1 / sqrt(mean(x^2) + eps), from rmsScale() */
  scale: Binding;
}

/**
 * What the kernel does with each dot product before it stores it:
 * - bias: y[m, n] = acc + bias[n]
 * - residual: y[m, n] = residual[m, n] + acc (`residual` must not alias `out`)
 * - swiglu: W is [gate; up], 2n rows (gate rows 0..n-1, up rows n..2n-1), and y[m, n] =
 *   silu(gate[m, n]) * up[m, n]
 */
export type MatmulEpilogue = { kind: 'bias'; bias: Binding } | { kind: 'residual'; residual: Binding } | { kind: 'swiglu' };

export interface MatmulArgs {
  /** [m, k] f32 activations */
  x: Binding;
  /** [n, k] weight matrix as uploaded (repackWeights, rows of k; array<vec4<u32>>); [2n, k] for swiglu */
  w: Binding;
  /** [m, n] f32; must not alias x */
  out: Binding;
  m: number;
  n: number;
  k: number;
  format: WeightFormat;
  /** Kernel choice; 'auto' (default) takes decode for m <= MATMUL_DECODE_MAX_M, tiled above. */
  variant?: MatmulVariant;
  norm?: MatmulNorm;
  epilogue?: MatmulEpilogue;
  /**
   * Also each output row's RMS scale 1 / sqrt(mean(y^2) + eps) into `out` (f32 [m]), the scales the
   * next matmul's norm prologue takes (rmsScale's). A split tiled matmul writes them as it adds its
   * splits (split_sum_rows: no dispatch of its own); otherwise rmsScale runs after it. Not with swiglu.
   */
  rowScales?: { out: Binding; eps: number };
  /**
   * Tiled kernel only: splits over K (default matmulSplits: on a GPU, small batches too narrow
   * to fill it); 1 never splits.
   */
  splitK?: number;
  /**
   * Decode kernel only: force its subgroup variant (matmul_subgroup.wgsl: subgroupAdd reductions)
   * on or off; default: the device's mode (kernels/subgroups.ts).
   */
  subgroups?: boolean;
}

/** Largest M the decode (matrix-vector) kernel takes in one dispatch, and the auto threshold. */
export const MATMUL_DECODE_MAX_M = 8;

/** Tiled kernel: TN columns per tile; rows per tile from matmulTileRows(m). */
export const MATMUL_TILE_N = 64;

/** Tiled kernel rows per tile: the narrowest of 16, 32, 64 that holds M (64 beyond), so batches up to 64 rows read each weight once. */
export function matmulTileRows(m: number): 16 | 32 | 64 {
  return m <= 16 ? 16 : m <= 32 ? 32 : 64;
}

/** Decode kernel: W rows (outputs) per workgroup. */
export const MATMUL_DECODE_ROWS = 4;

/** Decode kernel threads: enough to cover K in groups of weightGroup(format) elements, between 32 and 128. */
export function decodeThreads(k: number, format: WeightFormat): number {
  const groups = Math.ceil(k / weightGroup(format));
  return Math.min(128, Math.max(32, 2 ** Math.ceil(Math.log2(Math.max(groups, 1)))));
}

export function matmulVariant(m: number, variant: MatmulVariant = 'auto'): 'decode' | 'tiled' {
  if (variant !== 'auto') return variant;
  return m <= MATMUL_DECODE_MAX_M ? 'decode' : 'tiled';
}

const EPI = { none: 0, bias: 1, residual: 2, swiglu: 3 } as const;

/** Y[m, n] = X[m, k] . W[n, k]^T with W in `format`, with the optional norm prologue and epilogue. */
export function matmul(step: Step, a: MatmulArgs): void {
  checkRowLength(a.format, a.k);
  if (a.m === 0 || a.n === 0) return;
  const epi = a.epilogue?.kind ?? 'none';
  if (a.rowScales && epi === 'swiglu') throw new Error('matmul: rowScales with a swiglu epilogue');
  if (!dispatchMatmul(step, a, epi) && a.rowScales) rmsScale(step, { x: a.out, out: a.rowScales.out, rows: a.m, dim: a.n, eps: a.rowScales.eps });
}

type EpilogueKind = MatmulEpilogue['kind'] | 'none';

/** matmul_io.wgsl's Params. `kchunk`: K per split (K unsplit); `splits`, `eps`: split_sum's. */
function matmulParams(p: { m: number; n: number; k: number; row0?: number; epi: EpilogueKind; norm: boolean; kchunk?: number; splits?: number; eps?: number }): Params {
  return new Params()
    .u32(p.m)
    .u32(p.n)
    .u32(p.k)
    .u32(p.row0 ?? 0)
    .u32(EPI[p.epi])
    .u32(p.norm ? 1 : 0)
    .u32(p.kchunk ?? p.k)
    .u32(p.splits ?? 1)
    .f32(p.eps ?? 0);
}

/** Records the matmul; whether it also wrote rowScales (a split one does). */
function dispatchMatmul(step: Step, a: MatmulArgs, epi: EpilogueKind): boolean {
  const params = (m: number, row0: number) => matmulParams({ m, n: a.n, k: a.k, row0, epi, norm: a.norm !== undefined });
  // Bindings the variant does not read are bound to x (read-only, so aliasing it is allowed).
  const aux = a.epilogue?.kind === 'bias' ? a.epilogue.bias : a.epilogue?.kind === 'residual' ? a.epilogue.residual : a.x;
  const buffers = [a.x, a.w, a.out, aux, a.norm?.weight ?? a.x, a.norm?.scale ?? a.x];
  // outputs per tile / workgroup: swiglu spends half its weight rows on the up projection
  const share = epi === 'swiglu' ? 2 : 1;
  if (matmulVariant(a.m, a.variant) === 'tiled') {
    const TM = matmulTileRows(a.m);
    const TN = MATMUL_TILE_N;
    const gx = Math.ceil(a.n / (TN / share));
    const gy = Math.ceil(a.m / TM);
    const max = step.gpu.limits.maxComputeWorkgroupsPerDimension;
    if (gx > max || gy > max) throw new RangeError(`matmul: [${a.m} x ${a.n}] needs ${gx} x ${gy} tiles, over this device's ${max} per dimension`);
    const splits = a.splitK ?? matmulSplits(step.gpu, a.m, a.k, gx * gy);
    if (splits > 1) {
      tiledSplit(step, a, epi, splits, TM, buffers);
      return a.rowScales !== undefined;
    }
    step.dispatch({
      pipeline: step.gpu.pipelines.get('matmul', 'tiled', { WFMT: WFMT[a.format], TM, TN }),
      params: params(a.m, 0),
      buffers,
      workgroups: [gx, gy],
    });
    return false;
  }
  const workgroups = grid1d(step.gpu, Math.ceil(a.n / (MATMUL_DECODE_ROWS / share)));
  const MV_WG = decodeThreads(a.k, a.format);
  const shader = useSubgroups(step.gpu, a.subgroups) ? 'matmul_subgroup' : 'matmul';
  // One dispatch per 8 rows of X: each re-reads W, so only forced decode on larger M does that.
  for (let row0 = 0; row0 < a.m; row0 += MATMUL_DECODE_MAX_M) {
    const rows = Math.min(MATMUL_DECODE_MAX_M, a.m - row0);
    step.dispatch({
      pipeline: step.gpu.pipelines.get(shader, 'decode', { WFMT: WFMT[a.format], MV_M: rows, MV_ROWS: MATMUL_DECODE_ROWS, MV_WG }),
      params: params(rows, row0),
      buffers,
      workgroups,
    });
  }
  return false;
}

/** K elements a split over K covers at least: shorter splits would move more partial sums than weights. */
export const MATMUL_MIN_SPLIT_K = 256;

/**
 * Splits over K for a tiled matmul: on a GPU, a batch of at most 64 rows (one row of tiles) whose
 * `tiles` fall short of a GPU's workgroup target is split until they reach it, each split at least
 * MATMUL_MIN_SPLIT_K long; 1 (no split) otherwise and on a software device, whose few cores gain
 * nothing from it.
 */
export function matmulSplits(gpu: Gpu, m: number, k: number, tiles: number): number {
  if (gpu.adapter.isSoftware || m > 64 || tiles >= GPU_TARGET_WORKGROUPS) return 1;
  return Math.max(1, Math.min(Math.ceil(GPU_TARGET_WORKGROUPS / tiles), Math.floor(k / MATMUL_MIN_SPLIT_K)));
}

/**
 * The tiled kernel split over K into `splits` (each a whole number of 32-element steps): raw
 * partial sums per split into scratch, then split_sum adds them and applies the epilogue
 * (split_sum_rows, a workgroup per row, when the rows' RMS scales are asked for too).
 */
function tiledSplit(step: Step, a: MatmulArgs, epi: EpilogueKind, splits: number, TM: number, buffers: Binding[]): void {
  const kchunk = Math.ceil(a.k / splits / QK) * QK;
  const parts = Math.ceil(a.k / kchunk);
  // SwiGLU's W = [gate; up] is multiplied as a plain [2n, k] matrix; split_sum pairs the halves
  const nw = epi === 'swiglu' ? 2 * a.n : a.n;
  const partial = step.scratch(parts * a.m * nw * 4, 'matmul partial sums');
  const [x, w, out, aux, g, rs] = buffers;
  step.dispatch({
    pipeline: step.gpu.pipelines.get('matmul', 'tiled', { WFMT: WFMT[a.format], TM, TN: MATMUL_TILE_N }),
    params: matmulParams({ m: a.m, n: nw, k: a.k, epi: 'none', norm: a.norm !== undefined, kchunk, splits: parts }),
    buffers: [x, w, partial, x, g, rs],
    workgroups: [Math.ceil(nw / MATMUL_TILE_N), Math.ceil(a.m / TM), parts],
  });
  const sumParams = matmulParams({ m: a.m, n: a.n, k: a.k, epi, norm: false, kchunk, splits: parts, eps: a.rowScales?.eps });
  // the sums read no weights: one pipeline for every format
  step.dispatch(
    a.rowScales
      ? { pipeline: step.gpu.pipelines.get('matmul', 'split_sum_rows'), params: sumParams, buffers: [partial, w, out, aux, g, a.rowScales.out], workgroups: grid1d(step.gpu, a.m) }
      : { pipeline: step.gpu.pipelines.get('matmul', 'split_sum'), params: sumParams, buffers: [partial, w, out, aux, g, rs], workgroups: grid1d(step.gpu, Math.ceil((a.m * a.n) / SPLIT_WG)) },
  );
}

/** split_sum's workgroup size (matmul.wgsl SPLIT_WG) */
const SPLIT_WG = 256;

/** CPU reference with float64 accumulation; `w` is the dequantised [n, k] matrix. */
export function matmulRef(x: ArrayLike<number>, w: ArrayLike<number>, m: number, n: number, k: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += x[i * k + t] * w[j * k + t];
      y[i * n + j] = s;
    }
  }
  return y;
}

import { Params } from '../src/gpu/params.ts';
import type { Binding, Step } from '../src/gpu/step.ts';
import { grid1d } from './grid.ts';
import { WFMT, type WeightFormat, checkRowLength } from './weights.ts';

export type MatmulVariant = 'auto' | 'decode' | 'tiled';

export interface MatmulArgs {
  /** [m, k] f32 activations */
  x: Binding;
  /** [n, k] weight matrix in GGUF layout (array<u32>, padded to 4 bytes) */
  w: Binding;
  /** [m, n] f32; must not alias x */
  out: Binding;
  m: number;
  n: number;
  k: number;
  format: WeightFormat;
  /** Kernel choice; 'auto' (default) takes decode for m <= MATMUL_DECODE_MAX_M, tiled above. */
  variant?: MatmulVariant;
}

/** Largest M the decode (matrix-vector) kernel takes in one dispatch, and the auto threshold. */
export const MATMUL_DECODE_MAX_M = 8;

/** Tiled kernel: Y tile of TM x TN per workgroup, (TM/4)*(TN/4) threads with 4x4 micro-tiles. */
export const MATMUL_TILE = { TM: 64, TN: 64 } as const;

/** Decode kernel: W rows (outputs) per workgroup. */
export const MATMUL_DECODE_ROWS = 4;

/** Decode kernel threads: enough to cover K in groups of 8, between 32 and 128. */
export function decodeThreads(k: number): number {
  const groups = Math.ceil(k / 8);
  return Math.min(128, Math.max(32, 2 ** Math.ceil(Math.log2(Math.max(groups, 1)))));
}

export function matmulVariant(m: number, variant: MatmulVariant = 'auto'): 'decode' | 'tiled' {
  if (variant !== 'auto') return variant;
  return m <= MATMUL_DECODE_MAX_M ? 'decode' : 'tiled';
}

/** Y[m, n] = X[m, k] . W[n, k]^T with W in `format`. */
export function matmul(step: Step, a: MatmulArgs): void {
  checkRowLength(a.format, a.k);
  if (a.m === 0 || a.n === 0) return;
  const wfmt = WFMT[a.format];
  if (matmulVariant(a.m, a.variant) === 'tiled') {
    const { TM, TN } = MATMUL_TILE;
    const gx = Math.ceil(a.n / TN);
    const gy = Math.ceil(a.m / TM);
    const max = step.gpu.limits.maxComputeWorkgroupsPerDimension;
    if (gx > max || gy > max) throw new RangeError(`matmul: [${a.m} x ${a.n}] needs ${gx} x ${gy} tiles, over this device's ${max} per dimension`);
    step.dispatch({
      pipeline: step.gpu.pipelines.get('matmul', 'tiled', { WFMT: wfmt, TM, TN }),
      params: new Params().u32(a.m).u32(a.n).u32(a.k).u32(0),
      buffers: [a.x, a.w, a.out],
      workgroups: [gx, gy],
    });
    return;
  }
  const workgroups = grid1d(step.gpu, Math.ceil(a.n / MATMUL_DECODE_ROWS));
  const MV_WG = decodeThreads(a.k);
  // One dispatch per 8 rows of X: each re-reads W, so only forced decode on larger M does that.
  for (let row0 = 0; row0 < a.m; row0 += MATMUL_DECODE_MAX_M) {
    const rows = Math.min(MATMUL_DECODE_MAX_M, a.m - row0);
    step.dispatch({
      pipeline: step.gpu.pipelines.get('matmul', 'decode', { WFMT: wfmt, MV_M: rows, MV_ROWS: MATMUL_DECODE_ROWS, MV_WG }),
      params: new Params().u32(rows).u32(a.n).u32(a.k).u32(row0),
      buffers: [a.x, a.w, a.out],
      workgroups,
    });
  }
}

/** CPU reference with float64 accumulation; `w` is the dequantised [n, k] matrix. */
export function matmulRef(x: Float32Array, w: Float32Array, m: number, n: number, k: number): Float64Array {
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

import { describe, it } from 'vitest';
import type { Gpu } from '../src/gpu/gpu.ts';
import { rmsNorm, rmsNormRef, rmsScale, rmsScaleRef } from '../kernels/rmsnorm.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// The two variants: workgroup-memory tree (plain) and subgroup reductions (rmsnorm_subgroup.wgsl),
// the latter skipped on a device without the `subgroups` feature, and run on the shapes marked `sg`.
const variants = (sg: boolean) => (sg ? [false, true] : [false]);
const variantName = (sg: boolean) => (sg ? 'subgroup' : 'plain');

/**
 * Additions on the longest path of the row's sum of squares: each of the 256 lanes adds its
 * ceil(dim/256) strided terms, then the plain kernel's tree takes 8 more; the subgroup kernel's
 * lanes take 256/L values each serially and subgroupAdd combines L of them (at worst serially,
 * L - 1 more), worst over the device's subgroup sizes L.
 */
function sumChain(gpu: Gpu, dim: number, subgroups: boolean): number {
  const lanes = Math.ceil(dim / 256);
  if (!subgroups) return lanes + 8;
  let worst = 0;
  for (let l = Math.max(1, gpu.adapter.subgroupMinSize); l <= Math.max(1, gpu.adapter.subgroupMaxSize); l *= 2) worst = Math.max(worst, 256 / l + l - 1);
  return lanes + worst;
}

// f32 sum of squares over dim terms has relative error ~ dim * 2^-24 at worst (~5e-4 at 8192,
// far less in practice with the tree reduction); the output is one multiply-chain further.
// rtol 2e-5 with a small atol for values near zero is comfortably above that and far below any bug;
// the subgroup variant's sum has at most sumChain additions on its path (< 200 for any subgroup size
// from 4 to 128 at dim <= 8191), 1.2e-5 relative, halved by the square root: also within it.
const TOL = { atol: 1e-6, rtol: 2e-5 };

describe('rmsnorm', () => {
  const getGpu = useGpu();
  for (const [rows, dim, sg] of [
    [1, 1, true],
    [1, 64, false],
    [3, 173, true],
    [7, 4096, false],
    [2, 8191, true],
    [300, 37, true],
  ] as const) {
    for (const subgroups of variants(sg)) it(`${variantName(subgroups)} rows=${rows} dim=${dim}`, async (ctx) => {
      const gpu = getGpu();
      if (subgroups && !gpu.features.subgroups) ctx.skip();
      const x = normalArray(rows * dim, rows * 1000 + dim, 2);
      const w = normalArray(dim, dim);
      const xb = gpu.upload(x);
      const wb = gpu.upload(w);
      const yb = gpu.createBuffer(rows * dim * 4);
      const step = gpu.step();
      rmsNorm(step, { x: xb, weight: wb, out: yb, rows, dim, eps: 1e-5, subgroups });
      await step.submit();
      expectClose(await gpu.readF32(yb, rows * dim), rmsNormRef(x, w, rows, dim, 1e-5), TOL, 'rmsnorm');
      for (const b of [xb, wb, yb]) b.destroy();
    });
  }
});

// The row scale alone (the norm prologue of matmul applies it; matmul.test.ts checks that the fused
// product equals rmsNorm -> matmul bit for bit). Its relative error: the sum of squares is one
// product and sumChain additions of positive terms, the mean and + eps one rounding each, so
// (sumChain + 3) u relative before the square root halves it;
// inverseSqrt adds at most 2 ulp (4u). u = 2^-24.
describe('rmsnorm scale', () => {
  const getGpu = useGpu();
  for (const [rows, dim, sg] of [
    [1, 1, false],
    [3, 173, true],
    [2, 8191, true],
    [300, 37, false],
  ] as const) {
    for (const subgroups of variants(sg)) it(`${variantName(subgroups)} rows=${rows} dim=${dim}`, async (ctx) => {
      const gpu = getGpu();
      if (subgroups && !gpu.features.subgroups) ctx.skip();
      const x = normalArray(rows * dim, rows * 1000 + dim, 2);
      const xb = gpu.upload(x);
      const sb = gpu.createBuffer(rows * 4);
      const step = gpu.step();
      rmsScale(step, { x: xb, out: sb, rows, dim, eps: 1e-5, subgroups });
      await step.submit();
      const rtol = ((sumChain(gpu, dim, subgroups) + 3) / 2 + 4) * 2 ** -24;
      expectClose(await gpu.readF32(sb, rows), rmsScaleRef(x, rows, dim, 1e-5), { atol: 0, rtol }, 'rmsnorm scale');
      for (const b of [xb, sb]) b.destroy();
    });
  }
});

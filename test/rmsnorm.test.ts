import { describe, it } from 'vitest';
import { rmsNorm, rmsNormRef, rmsScale, rmsScaleRef } from '../kernels/rmsnorm.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// f32 sum of squares over dim terms has relative error ~ dim * 2^-24 at worst (~5e-4 at 8192,
// far less in practice with the tree reduction); the output is one multiply-chain further.
// rtol 2e-5 with a small atol for values near zero is comfortably above that and far below any bug.
const TOL = { atol: 1e-6, rtol: 2e-5 };

describe('rmsnorm', () => {
  const getGpu = useGpu();
  for (const [rows, dim] of [
    [1, 1],
    [1, 64],
    [3, 173],
    [7, 4096],
    [2, 8191],
    [300, 37],
  ]) {
    it(`rows=${rows} dim=${dim}`, async () => {
      const gpu = getGpu();
      const x = normalArray(rows * dim, rows * 1000 + dim, 2);
      const w = normalArray(dim, dim);
      const xb = gpu.upload(x);
      const wb = gpu.upload(w);
      const yb = gpu.createBuffer(rows * dim * 4);
      const step = gpu.step();
      rmsNorm(step, { x: xb, weight: wb, out: yb, rows, dim, eps: 1e-5 });
      await step.submit();
      expectClose(await gpu.readF32(yb, rows * dim), rmsNormRef(x, w, rows, dim, 1e-5), TOL, 'rmsnorm');
      for (const b of [xb, wb, yb]) b.destroy();
    });
  }
});

// The row scale alone (the norm prologue of matmul applies it; matmul.test.ts checks that the fused
// product equals rmsNorm -> matmul bit for bit). Its relative error: the sum of squares is one
// product and ceil(dim/256) + 8 additions of positive terms (256 lanes, then a tree), the mean and
// + eps one rounding each, so (ceil(dim/256) + 11) u relative before the square root halves it;
// inverseSqrt adds at most 2 ulp (4u). u = 2^-24.
describe('rmsnorm scale', () => {
  const getGpu = useGpu();
  for (const [rows, dim] of [
    [1, 1],
    [3, 173],
    [2, 8191],
    [300, 37],
  ]) {
    it(`rows=${rows} dim=${dim}`, async () => {
      const gpu = getGpu();
      const x = normalArray(rows * dim, rows * 1000 + dim, 2);
      const xb = gpu.upload(x);
      const sb = gpu.createBuffer(rows * 4);
      const step = gpu.step();
      rmsScale(step, { x: xb, out: sb, rows, dim, eps: 1e-5 });
      await step.submit();
      const rtol = ((Math.ceil(dim / 256) + 11) / 2 + 4) * 2 ** -24;
      expectClose(await gpu.readF32(sb, rows), rmsScaleRef(x, rows, dim, 1e-5), { atol: 0, rtol }, 'rmsnorm scale');
      for (const b of [xb, sb]) b.destroy();
    });
  }
});

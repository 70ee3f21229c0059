import { describe, it } from 'vitest';
import { rmsNorm, rmsNormRef } from '../kernels/rmsnorm.ts';
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

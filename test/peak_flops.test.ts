import { describe, it } from 'vitest';
import { PEAK_WG, peakFlops, peakFlopsRef } from '../kernels/peak_flops.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// The probe's value only guards against the compiler dropping the work, but it must be right:
// 32 chains of `iters` f32 multiply-adds converging to add/(1-mul); f32 rounding (fused or not)
// stays within ~iters * 2^-24 relative per chain, so rtol 1e-4 at iters=300 is ample.
describe('peak_flops probe', () => {
  const getGpu = useGpu();
  it('computes its FMA chains', async () => {
    const gpu = getGpu();
    const workgroups = 3;
    const iters = 300;
    const out = gpu.createBuffer(workgroups * PEAK_WG * 4);
    const step = gpu.step();
    peakFlops(step, { out, workgroups, iters });
    await step.submit();
    const got = await gpu.readF32(out, workgroups * PEAK_WG);
    const want = Array.from({ length: got.length }, (_, id) => peakFlopsRef(id, iters));
    expectClose(got, want, { atol: 0, rtol: 1e-4 }, 'peak_flops');
    out.destroy();
  });
});

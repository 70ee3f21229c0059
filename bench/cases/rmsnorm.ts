import type { CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { rmsNorm } from '../../kernels/rmsnorm.ts';
import { normalArray } from '../../src/util/rng.ts';

/**
 * Row counts, each with the plain kernel, and one row (the decode step) also with the subgroup
 * variant (`subgroups`; on a device without the feature that row repeats the plain kernel).
 */
export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    [
      { rows: 1, subgroups: false },
      { rows: 1, subgroups: true },
      { rows: scale === 'full' ? 512 : 64, subgroups: false },
    ].map(({ rows, subgroups }) => ({
      family: 'rmsnorm',
      name: `${shape.name} rows=${rows} dim=${shape.dim}${subgroups ? ' subgroups' : ''}`,
      setup(gpu) {
        const x = gpu.upload(normalArray(rows * shape.dim, 1));
        const w = gpu.upload(normalArray(shape.dim, 2));
        const out = gpu.createBuffer(rows * shape.dim * 4);
        return {
          run: (step) => rmsNorm(step, { x, weight: w, out, rows, dim: shape.dim, eps: 1e-5, subgroups: subgroups && gpu.features.subgroups }),
          // x read twice (sum of squares, then scale) but the second read hits cache on a GPU: count once.
          bytes: (2 * rows * shape.dim + shape.dim) * 4,
          flops: 4 * rows * shape.dim,
          dispose: () => [x, w, out].forEach((b) => b.destroy()),
        };
      },
    })),
  );

import type { BenchCase, CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { add, siluMul } from '../../kernels/elementwise.ts';
import { normalArray } from '../../src/util/rng.ts';

export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    [1, scale === 'full' ? 512 : 64].flatMap((tokens): BenchCase[] => [
      {
        family: 'elementwise',
        name: `silu_mul ${shape.name} tokens=${tokens} ffn=${shape.ffn}`,
        setup(gpu) {
          const count = tokens * shape.ffn;
          const gate = gpu.upload(normalArray(count, 1, 3));
          const up = gpu.upload(normalArray(count, 2));
          const out = gpu.createBuffer(count * 4);
          return {
            run: (step) => siluMul(step, { gate, up, out, count }),
            bytes: 3 * count * 4, // gate and up read, out written
            // 1 + e, the division, g * sigmoid, * up; exp (a transcendental) not counted
            flops: 4 * count,
            dispose: () => [gate, up, out].forEach((b) => b.destroy()),
          };
        },
      },
      {
        family: 'elementwise',
        name: `add ${shape.name} tokens=${tokens} dim=${shape.dim}`,
        setup(gpu) {
          const count = tokens * shape.dim;
          const a = gpu.upload(normalArray(count, 3));
          const b = gpu.upload(normalArray(count, 4));
          const out = gpu.createBuffer(count * 4);
          return {
            run: (step) => add(step, { a, b, out, count }),
            bytes: 3 * count * 4,
            flops: count,
            dispose: () => [a, b, out].forEach((x) => x.destroy()),
          };
        },
      },
    ]),
  );

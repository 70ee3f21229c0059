import type { CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { dequantize } from '../../kernels/dequant.ts';
import { WEIGHT_FORMATS, encodeWeights, repackWeights, weightBytes } from '../../kernels/weights.ts';
import { normalArray } from '../../src/util/rng.ts';

/** Whole-matrix dequantisation to f32 (ffn_up-sized), per weight format. */
export const cases: CaseFactory = (scale) =>
  benchShapes(scale)
    .slice(-1)
    .flatMap((shape) =>
      WEIGHT_FORMATS.map((format) => ({
        family: 'dequant',
        name: `${format} ${shape.name} ffn_up ${shape.dim}x${shape.ffn}`,
        setup(gpu) {
          const count = shape.dim * shape.ffn;
          const w = gpu.upload(repackWeights(format, encodeWeights(format, normalArray(count, 1, 0.02), shape.ffn, shape.dim), shape.dim));
          const out = gpu.createBuffer(count * 4);
          return {
            run: (step) => dequantize(step, { w, out, count, k: shape.dim, format }),
            bytes: weightBytes(format, shape.ffn, shape.dim) + count * 4,
            flops: 0,
            dispose: () => [w, out].forEach((b) => b.destroy()),
          };
        },
      })),
    );

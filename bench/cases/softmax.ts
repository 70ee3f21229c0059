import type { BenchCase, CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { softmax } from '../../kernels/softmax.ts';
import { normalArray } from '../../src/util/rng.ts';

/**
 * Logits rows of each model's vocabulary, at batch 1, 8 and 32 (one workgroup per row); batch 1
 * also with the subgroup variant (`subgroups`; on a device without the feature that row repeats the
 * plain kernel).
 */
const RUNS = [
  { batch: 1, subgroups: false },
  { batch: 1, subgroups: true },
  { batch: 8, subgroups: false },
  { batch: 32, subgroups: false },
];

export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    RUNS.map(
      ({ batch, subgroups }): BenchCase => ({
        family: 'softmax',
        name: `${shape.name} batch=${batch} vocab=${shape.vocab}${subgroups ? ' subgroups' : ''}`,
        setup(gpu) {
          const count = batch * shape.vocab;
          const x = gpu.upload(normalArray(count, 1, 3));
          const out = gpu.createBuffer(count * 4);
          return {
            run: (step) => softmax(step, { x, out, rows: batch, cols: shape.vocab, subgroups: subgroups && gpu.features.subgroups }),
            // logits read and probabilities written once; the kernel's second read of the row
            // (to normalise) hits cache on a GPU and is not counted.
            bytes: 2 * count * 4,
            // per element: max/compare, subtract, exp, add (online sum), subtract, exp, multiply;
            // the two exps (transcendentals) not counted
            flops: 5 * count,
            dispose: () => [x, out].forEach((b) => b.destroy()),
          };
        },
      }),
    ),
  );

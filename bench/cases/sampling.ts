import type { BenchCase, CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { SAMPLE_PARAMS_BYTES, argmax, packSampleParams, sample } from '../../kernels/sampling.ts';
import { normalArray } from '../../src/util/rng.ts';

/**
 * Greedy (argmax) and sampled (temperature 0.7, top-k 40, top-p 0.9) token selection over each
 * model's vocabulary at batch 1, 8 and 32. Logits are N(0, 3) per element: a realistic spread, so
 * the top-k / top-p searches take a typical number of steps.
 */
const BATCHES = [1, 8, 32];

export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    BATCHES.flatMap((batch): BenchCase[] => [
      {
        family: 'sampling',
        name: `argmax ${shape.name} batch=${batch} vocab=${shape.vocab}`,
        setup(gpu) {
          const count = batch * shape.vocab;
          const logits = gpu.upload(normalArray(count, 2, 3));
          const out = gpu.createBuffer(batch * 4);
          return {
            run: (step) => argmax(step, { logits, out, rows: batch, cols: shape.vocab }),
            // logits read once, one u32 token written per row
            bytes: count * 4 + batch * 4,
            // one compare per element
            flops: count,
            dispose: () => [logits, out].forEach((b) => b.destroy()),
          };
        },
      },
      {
        family: 'sampling',
        name: `sample T=0.7 top-k 40 top-p 0.9 ${shape.name} batch=${batch} vocab=${shape.vocab}`,
        setup(gpu) {
          const count = batch * shape.vocab;
          const logits = gpu.upload(normalArray(count, 3, 3));
          const params = gpu.upload(
            packSampleParams(Array.from({ length: batch }, (_, r) => ({ temperature: 0.7, topK: 40, topP: 0.9, seed: 1234 + r, counter: 17 }))),
          );
          const out = gpu.createBuffer(batch * 4);
          const probs = gpu.createBuffer(batch * 4);
          return {
            run: (step) => sample(step, { logits, params, out, outProbs: probs, rows: batch, cols: shape.vocab }),
            // The minimum traffic: logits read once, parameters read, token and probability written.
            // The kernel re-reads the row during the top-k search until the candidate set fits in
            // workgroup memory (about ten passes at 128k-152k columns, mostly from L2) and once to
            // compact it; those re-reads are not counted, so the GB/s figure is the effective rate.
            bytes: count * 4 + batch * (SAMPLE_PARAMS_BYTES + 8),
            // per element of the first pass: compare (max) and count, then per search pass a key
            // transform and compare; counted as 4 per element, exps of the small candidate set not counted
            flops: 4 * count,
            dispose: () => [logits, params, out, probs].forEach((b) => b.destroy()),
          };
        },
      },
    ]),
  );

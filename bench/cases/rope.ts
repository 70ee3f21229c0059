import type { CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { type RopeMode, rope, ropeFrequencies } from '../../kernels/rope.ts';
import { normalArray } from '../../src/util/rng.ts';

export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    [1, scale === 'full' ? 512 : 64].map((tokens) => {
      // Qwen2 rotates NeoX-style halves; the Llama family (and llama2.c's stories) adjacent pairs.
      const mode: RopeMode = /qwen/i.test(shape.name) ? 'neox' : 'normal';
      const { headDim } = shape;
      // reduced shapes divide head counts by 8, which leaves Qwen2.5-7B's 28 at 3.5: round
      const heads = Math.max(1, Math.round(shape.nHeads));
      const ropeDim = headDim;
      return {
        family: 'rope',
        name: `${mode} q ${shape.name} tokens=${tokens} heads=${heads} headDim=${headDim}`,
        setup(gpu) {
          const x = gpu.upload(normalArray(tokens * heads * headDim, 1));
          const positions = gpu.upload(Uint32Array.from({ length: tokens }, (_, t) => 1000 + t));
          const freqs = gpu.upload(ropeFrequencies({ ropeDim, base: 500000 }));
          const pairs = (tokens * heads * ropeDim) / 2;
          return {
            // in place; repeated runs keep rotating the same q, which costs the same
            run: (step) => rope(step, { x, positions, freqs, tokens, heads, headDim, ropeDim, mode }),
            // rotated elements read and written, positions and the frequency table read once
            bytes: 2 * tokens * heads * ropeDim * 4 + tokens * 4 + (ropeDim / 2) * 4,
            // per pair: angle (1 mul) and the rotation (4 mul, 2 add); cos/sin evaluation not counted
            flops: 7 * pairs,
            dispose: () => [x, positions, freqs].forEach((b) => b.destroy()),
          };
        },
      };
    }),
  );

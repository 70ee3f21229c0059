import type { BenchCase, CaseFactory } from '../case.ts';
import { benchShapes } from '../shapes.ts';
import { BIAS_ENTRY_BYTES, NO_SLOT, PENALTY_ROW_BYTES, applyBias, countTokens, packBiasEntries, packPenaltyRows, penalize } from '../../kernels/penalties.ts';
import { normalArray } from '../../src/util/rng.ts';

/**
 * The logit processors of a step where every row uses them: 300 logit_bias entries per row
 * (OpenAI's maximum) and the penalties over a count row with ~1 in 8 tokens seen, then the count
 * update from the sampled ids; over each model's vocabulary at batch 1, 8 and 32.
 */
const BATCHES = [1, 8, 32];
const BIAS_PER_ROW = 300;

export const cases: CaseFactory = (scale) =>
  benchShapes(scale).flatMap((shape) =>
    BATCHES.map(
      (batch): BenchCase => ({
        family: 'penalties',
        name: `bias x${BIAS_PER_ROW} + penalties + count update ${shape.name} batch=${batch} vocab=${shape.vocab}`,
        setup(gpu) {
          const cols = shape.vocab;
          const count = batch * cols;
          const logits = gpu.upload(normalArray(count, 5, 3));
          const seen = new Uint32Array(count).map((_, i) => (Math.imul(i, 0x9e3779b1) >>> 29 === 0 ? 1 + (i % 3) : 0));
          const counts = gpu.upload(seen);
          const entries = Array.from({ length: batch * BIAS_PER_ROW }, (_, e) => ({ row: Math.floor(e / BIAS_PER_ROW), token: ((e % BIAS_PER_ROW) * 97) % cols, bias: 1 }));
          const bias = gpu.upload(packBiasEntries(entries));
          const rows = gpu.upload(packPenaltyRows(Array.from({ length: batch }, (_, r) => ({ slot: r, presence: 0.5, frequency: 0.5, repetition: 1.2 }))));
          const slots = gpu.upload(Uint32Array.from({ length: batch }, (_, r) => (r % 2 ? r : NO_SLOT)));
          const sampled = gpu.upload(Uint32Array.from({ length: batch }, (_, r) => (r * 131) % cols));
          return {
            run: (step) => {
              applyBias(step, { logits, entries: bias, count: entries.length, cols });
              penalize(step, { logits, penalties: rows, counts, rows: batch, cols });
              countTokens(step, { counts, slots, sampled, rows: batch, cols });
            },
            // counts read once and logits read and written once by the penalty pass (the bias
            // entries and their logits, and the count update, are small beside them)
            bytes: count * 12 + entries.length * (BIAS_ENTRY_BYTES + 8) + batch * PENALTY_ROW_BYTES,
            // per seen element: a multiply or divide, a multiply-add and a subtraction (counted over all)
            flops: count,
            dispose: () => [logits, counts, bias, rows, slots, sampled].forEach((b) => b.destroy()),
          };
        },
      }),
    ),
  );

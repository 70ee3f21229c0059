import { describe, expect, it } from 'vitest';
import { f32ToF16Bits, f16BitsToF32 } from '../kernels/weights.ts';
import { stepLogits } from '../src/engine/generate.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { GpuModel, type KvLayer, type SeqChunk } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, cpuLogits, relativeLogitError, roundingTolerance } from './helpers/logits.ts';

/**
 * The f16 KV cache (`--kv-dtype f16`, ModelOptions.kvDtype): values packed in pairs with
 * pack2x16float, so it runs on devices without shader-f16 and is tested here.
 */
describe('f16 KV cache', () => {
  const getGpu = useGpu();
  const KV_MEMORY = 2 << 20;

  it('a prompt chunk and decode steps stay within the f16 bound of the float64 oracle; twice the tokens in the same memory; exported rows are the f32 rows rounded to f16', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const c = src.config;
    const tokens = src.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog. One day she saw a big red ball.');
    const PROMPT = 20;
    // the prompt in one chunk (prefill attention over f16 KV), then one decode step per token
    const steps: SeqChunk[][] = [[{ seq: 0, tokens: tokens.slice(0, PROMPT) }], ...tokens.slice(PROMPT).map((t) => [{ seq: 0, tokens: [t] }])];
    const f16 = GpuModel.load(getGpu(), src, { kvMemoryBytes: KV_MEMORY, kvDtype: 'f16' });
    const f32 = GpuModel.load(getGpu(), src, { kvMemoryBytes: KV_MEMORY });
    try {
      // a block: K and V of every layer, blockSize tokens of headDim values of 2 or 4 bytes
      const blocks = (bytes: number) => Math.floor(KV_MEMORY / (2 * c.nLayers * f16.blockSize * c.headDim * bytes));
      expect([f16.kv.pool.numBlocks, f32.kv.pool.numBlocks]).toEqual([blocks(2), blocks(4)]);
      const got = (await stepLogits(f16, steps)).get(0)!;
      // The f32 chain's roundings (roundingTolerance) plus one f16 rounding of every K and V element
      // the logit reads: per layer headDim of them in each score (q·k) and one per position in P·V,
      // random-walk summed like the rest: sqrt(N32 u32^2 + layers (headDim + positions) u16^2).
      // stories260K over 38 positions: 7.6e-3 relative to the largest |logit|.
      const f32Bound = roundingTolerance(c, tokens.length, UNIT_ROUNDOFF.f32);
      const bound = Math.sqrt(f32Bound ** 2 + c.nLayers * (c.headDim + tokens.length) * UNIT_ROUNDOFF.f16 ** 2);
      const err = relativeLogitError(got, cpuLogits(src, tokens));
      expect(err, 'f16-KV logit error relative to the largest |logit|').toBeLessThan(bound);

      // the KV as stored: f16 values; in layer 0, f32's rows rounded to f16 (WGSL's f32 -> f16 conversion may round either
      // way: within one f16 ulp, 2 u16 relative, or one subnormal step near zero)
      await stepLogits(f32, steps);
      const exported = async (m: GpuModel): Promise<KvLayer[]> => {
        const step = m.gpu.step();
        const ex = m.kvExporter(step, 0);
        const layers = Array.from({ length: c.nLayers }, (_, l) => ex.layer(l));
        await step.submit();
        return Promise.all(layers);
      };
      const [a, b] = [await exported(f16), await exported(f32)];
      let worst = 0;
      for (let l = 0; l < c.nLayers; l++) {
        for (const part of ['k', 'v'] as const) {
          const x = new Float32Array(a[l][part]);
          const y = new Float32Array(b[l][part]);
          expect(x.length).toBe(tokens.length * c.nKvHeads * c.headDim);
          for (let i = 0; i < x.length; i++) {
            expect(x[i], `layer ${l} ${part}[${i}] is an f16 value`).toBe(f16BitsToF32(f32ToF16Bits(x[i])));
            // layer 0's K and V come from the same f32 arithmetic on the same inputs in both models
            // (later layers read attention over the rounded cache)
            if (l === 0) worst = Math.max(worst, Math.abs(x[i] - y[i]) / Math.max(Math.abs(y[i]), 2 ** -14));
          }
        }
      }
      expect(worst).toBeLessThanOrEqual(2 * UNIT_ROUNDOFF.f16);
    } finally {
      f16.destroy();
      f32.destroy();
    }
  });
});

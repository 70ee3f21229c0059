import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { dequantizeRef, type WeightFormat } from '../kernels/weights.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { useGpu } from './helpers/gpu.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');
const FORMAT: Record<string, WeightFormat> = { F32: 'f32', F16: 'f16', Q8_0: 'q8_0', Q4_0: 'q4_0' };

async function cpuWeightsOf(file: string): Promise<CpuWeights> {
  const src = await openModel(file);
  const w: CpuWeights = new Map();
  for (const t of src.tensors.values()) w.set(t.name, dequantizeRef(FORMAT[t.typeName], t.read(), t.dims.reduce((a, b) => a * b, 1)));
  return w;
}

describe('GPU forward pass vs the float64 CPU forward pass', () => {
  const getGpu = useGpu();
  for (const file of ['stories260K.gguf', 'stories260K-F16.gguf', 'stories260K-Q8_0.gguf', 'stories260K-Q4_0.gguf']) {
    it(`${file}: logits of every position`, async () => {
      const gpu = getGpu();
      const src = await openModel(join(STORIES, file));
      const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
      const tokens = src.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play');
      const step = gpu.step();
      const { logits, rows } = model.forward(step, [{ seq: 0, tokens }], { allPositions: true });
      const read = step.readback(logits, 0, rows * src.config.vocabSize * 4);
      await step.submit();
      const got = new Float32Array(await read);
      // the reference uses the same dequantised weights, so only f32 vs f64 arithmetic differs
      const want = cpuForward(src.config, await cpuWeightsOf(join(STORIES, file)), tokens);
      let maxErr = 0;
      let maxRef = 0;
      for (let t = 0; t < rows; t++) {
        for (let v = 0; v < src.config.vocabSize; v++) {
          maxErr = Math.max(maxErr, Math.abs(got[t * src.config.vocabSize + v] - want[t][v]));
          maxRef = Math.max(maxRef, Math.abs(want[t][v]));
        }
      }
      expect(maxErr / maxRef).toBeLessThan(1e-4);
      model.destroy();
    });
  }
});

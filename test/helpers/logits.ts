import type { Gpu } from '../../src/gpu/gpu.ts';
import { cpuForward } from '../../src/model/cpu_reference.ts';
import { GpuModel } from '../../src/model/gpu_model.ts';
import type { ModelSource } from '../../src/model/source.ts';
import { cpuWeightsOf } from './cpu_weights.ts';

/** Logits of every position of `tokens`, from one GPU forward pass of a freshly loaded model. */
export async function gpuLogits(gpu: Gpu, src: ModelSource, tokens: number[]): Promise<Float32Array[]> {
  const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
  try {
    const step = gpu.step();
    const { logits, rows } = model.forward(step, [{ seq: 0, tokens }], { allPositions: true });
    const read = step.readback(logits, 0, rows * src.config.vocabSize * 4);
    await step.submit();
    const all = new Float32Array(await read);
    return Array.from({ length: rows }, (_, t) => all.subarray(t * src.config.vocabSize, (t + 1) * src.config.vocabSize));
  } finally {
    model.destroy();
  }
}

/** The float64 CPU oracle's logits of every position, on the weights as the GPU decodes them. */
export function cpuLogits(src: ModelSource, tokens: number[]): Float64Array[] {
  return cpuForward(src.config, cpuWeightsOf(src), tokens);
}

/** max |a - b| over every position's logits, relative to max |b|. */
export function relativeLogitError(a: ArrayLike<number>[], b: ArrayLike<number>[]): number {
  let err = 0;
  let ref = 0;
  for (let t = 0; t < b.length; t++) {
    for (let v = 0; v < b[t].length; v++) {
      err = Math.max(err, Math.abs(a[t][v] - b[t][v]));
      ref = Math.max(ref, Math.abs(b[t][v]));
    }
  }
  return err / ref;
}

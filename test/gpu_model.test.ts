import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { dequantizeRef, type WeightFormat } from '../kernels/weights.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import { KvPoolExhausted } from '../src/kv/paged_kv.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');
const FORMAT: Record<string, WeightFormat> = { F32: 'f32', F16: 'f16', Q8_0: 'q8_0', Q4_0: 'q4_0' };

async function cpuWeightsOf(file: string): Promise<CpuWeights> {
  const src = await openModel(file);
  const w: CpuWeights = new Map();
  for (const t of src.tensors.values()) w.set(t.name, dequantizeRef(FORMAT[t.typeName], t.read(), t.dims.reduce((a, b) => a * b, 1)));
  return w;
}

// Tolerance: max |GPU - CPU| logit error relative to the largest |logit| < 1e-4. The GPU runs in f32
// (sums of at most 172 terms per dot product, 5 layers, softmax), the oracle in f64 on the same
// dequantised weights; f32 rounding through the stack gives ~1e-6 relative in the worst case and
// 3.5e-7 was measured for every format, so 1e-4 leaves a wide margin yet fails on any real bug
// (a wrong rotation, mask or scale moves logits by O(1)).
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

describe('architecture variants through the whole forward pass', () => {
  const getGpu = useGpu();

  /** stories260K's weights with extra tensors and config changes, as another architecture would have them. */
  async function variant(extra: Record<string, Float32Array>, config: Partial<ModelSource['config']>): Promise<ModelSource> {
    const src = await openModel(join(STORIES, 'stories260K.gguf'));
    const tensors = new Map(src.tensors);
    for (const [name, data] of Object.entries(extra)) {
      const bytes = new Uint8Array(data.buffer.slice(0));
      tensors.set(name, { name, typeName: 'F32', dims: [data.length], bytes: bytes.byteLength, read: () => bytes });
    }
    return { ...src, config: { ...src.config, ...config }, tensors };
  }

  async function compare(src: ModelSource): Promise<number> {
    const gpu = getGpu();
    const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
    const tokens = src.tokenizer.encode('Once upon a time, there was a little girl');
    const step = gpu.step();
    const { logits, rows } = model.forward(step, [{ seq: 0, tokens }], { allPositions: true });
    const read = step.readback(logits, 0, rows * src.config.vocabSize * 4);
    await step.submit();
    const got = new Float32Array(await read);
    const w: CpuWeights = new Map();
    for (const t of src.tensors.values()) {
      const b = t.read();
      w.set(t.name, new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
    }
    const want = cpuForward(src.config, w, tokens);
    let maxErr = 0;
    let maxRef = 0;
    want.forEach((row, t) => row.forEach((v, i) => {
      maxErr = Math.max(maxErr, Math.abs(got[t * src.config.vocabSize + i] - v));
      maxRef = Math.max(maxRef, Math.abs(v));
    }));
    model.destroy();
    return maxErr / maxRef;
  }

  it('Qwen2-style: q/k/v biases and NeoX RoPE', async () => {
    const biases: Record<string, Float32Array> = {};
    for (let l = 0; l < 5; l++) {
      biases[`blk.${l}.attn_q.bias`] = normalArray(64, 10 + l, 0.5);
      biases[`blk.${l}.attn_k.bias`] = normalArray(32, 20 + l, 0.5);
      biases[`blk.${l}.attn_v.bias`] = normalArray(32, 30 + l, 0.5);
    }
    const src = await variant(biases, { architecture: 'qwen2', ropeMode: 'neox', qkvBias: true });
    expect(await compare(src)).toBeLessThan(1e-4);
  });

  it('Llama-3-style rope_freqs divisors', async () => {
    const src = await variant({ 'rope_freqs.weight': new Float32Array([1, 1.5, 4, 8]) }, {});
    expect(await compare(src)).toBeLessThan(1e-4);
  });

  it('a model that needs biases but lacks them is refused clearly', async () => {
    const src = await variant({}, { architecture: 'qwen2', qkvBias: true });
    expect(() => GpuModel.load(getGpu(), src)).toThrow(/needs q\/k\/v biases; missing blk\.0\.attn_q\.bias/);
  });
});

describe('KV pool exhaustion', () => {
  const getGpu = useGpu();
  it('a forward pass that does not fit appends nothing and says so; freed sequences make room', async () => {
    const src = await openModel(join(STORIES, 'stories260K.gguf'));
    // 2 layers x K,V x 16 slots x 8 dims x 4 bytes x 5 layers = one block = 5120 bytes: budget 12 blocks
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 12 * 5120, blockSize: 16 });
    expect(model.kv.pool.numBlocks).toBe(12);
    const gpu = getGpu();
    const ok = gpu.step();
    model.forward(ok, [{ seq: 1, tokens: Array(20).fill(5) }]); // 2 blocks x 4 KV heads = 8 blocks
    await ok.submit();
    expect(model.kv.pool.free).toBe(4);
    const tooBig = gpu.step();
    expect(() => model.forward(tooBig, [{ seq: 1, tokens: [7] }, { seq: 2, tokens: Array(20).fill(6) }])).toThrow(KvPoolExhausted);
    await tooBig.discard();
    expect(model.kv.length(1)).toBe(20); // the first chunk's append was rolled back too
    expect(model.kv.has(2)).toBe(false);
    model.release(1);
    const again = gpu.step();
    model.forward(again, [{ seq: 2, tokens: Array(20).fill(6) }]);
    await again.submit();
    expect(model.kv.pool.free).toBe(4);
    model.destroy();
  });
});

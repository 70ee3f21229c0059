import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import type { Gpu } from '../src/gpu/gpu.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { Step } from '../src/gpu/step.ts';
import { KvPoolExhausted } from '../src/kv/paged_kv.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { syntheticModel } from '../src/model/synthetic.ts';
import { normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';
import { expectGpuLogits } from './helpers/logits.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');

// The GPU runs in f32, the oracle in float64 on the same decoded weights, so only f32 rounding
// separates them: the logit error relative to the largest |logit| stays within roundingTolerance
// (expectGpuLogits, test/helpers/logits.ts: u·√N, 3.0e-6 for 21 positions, 2.98e-6 for 13).
// Measured: 3.5e-7 (F32), 3.6e-7 (F16), 3.5e-7 (Q8_0), 3.7e-7 (Q4_0; both before their repack at upload reordered the additions), 3.5e-7 (Qwen2 variant),
// 3.9e-7 (rope_freqs variant): a margin of 8x. RMSNorm with eps/10 gives 4e-5; a wrong rotation,
// mask or scale O(1).
describe('GPU forward pass vs the float64 CPU forward pass', () => {
  const getGpu = useGpu();
  for (const file of ['stories260K.gguf', 'stories260K-F16.gguf', 'stories260K-Q8_0.gguf', 'stories260K-Q4_0.gguf']) {
    it(`${file}: logits of every position`, async () => {
      const src = await openModel(join(STORIES, file));
      const tokens = src.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play');
      await expectGpuLogits(getGpu(), src, tokens);
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

  const expectOracleLogits = (src: ModelSource) => expectGpuLogits(getGpu(), src, src.tokenizer.encode('Once upon a time, there was a little girl'));

  it('Qwen2-style: q/k/v biases and NeoX RoPE', async () => {
    const biases: Record<string, Float32Array> = {};
    for (let l = 0; l < 5; l++) {
      biases[`blk.${l}.attn_q.bias`] = normalArray(64, 10 + l, 0.5);
      biases[`blk.${l}.attn_k.bias`] = normalArray(32, 20 + l, 0.5);
      biases[`blk.${l}.attn_v.bias`] = normalArray(32, 30 + l, 0.5);
    }
    const src = await variant(biases, { architecture: 'qwen2', ropeMode: 'neox', qkvBias: true });
    await expectOracleLogits(src);
  });

  it('Llama-3-style rope_freqs divisors', async () => {
    const src = await variant({ 'rope_freqs.weight': new Float32Array([1, 1.5, 4, 8]) }, {});
    await expectOracleLogits(src);
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

// Per layer the forward pass records: one q/k/v matmul (norm in its prologue, biases in its
// epilogue), RoPE + KV write, attention, the output projection with the residual add in its
// epilogue, the FFN norm's row scales, one gate/up matmul (norm prologue, SwiGLU epilogue), the
// down projection with the residual add, and the next layer's attention norm row scales (the
// first layer's come before it, with the embedding; the last layer's are the output norm's): 7 dispatches besides
// attention's (1 or 2 for decode tokens, 1 for prompt chunks). Before the fusions it was 15 (18
// with biases). On a GPU a split matmul writes the row scales itself (split_sum_rows).
describe('dispatches per layer', () => {
  const getGpu = useGpu();
  it('decode, prefill and mixed steps: 7 besides attention, at most 10 in all (q/k/v biases too)', async () => {
    const plain = await openModel(join(STORIES, 'stories260K.gguf'));
    const biases = new Map(plain.tensors);
    for (let l = 0; l < plain.config.nLayers; l++) {
      for (const [n, len] of [['q', 64], ['k', 32], ['v', 32]] as const) {
        const bytes = new Uint8Array(normalArray(len, l).buffer);
        biases.set(`blk.${l}.attn_${n}.bias`, { name: `blk.${l}.attn_${n}.bias`, typeName: 'F32', dims: [len], bytes: bytes.byteLength, read: () => bytes });
      }
    }
    const qwen = { ...plain, config: { ...plain.config, qkvBias: true }, tensors: biases };
    for (const src of [plain, qwen]) {
      const gpu = getGpu();
      const model = GpuModel.load(gpu, src, { kvMemoryBytes: 1 << 20 });
      const steps = [[{ seq: 0, tokens: [1, 2, 3, 4, 5] }], [{ seq: 0, tokens: [6] }], [{ seq: 0, tokens: [7] }, { seq: 1, tokens: [8, 9, 10] }]];
      for (const chunks of steps) {
        const step = gpu.step();
        const labels: string[] = [];
        const dispatch = step.dispatch.bind(step);
        step.dispatch = (d) => {
          labels.push(d.pipeline.label);
          dispatch(d);
        };
        const perLayer: string[][] = [];
        let from = 0;
        model.forward(step, chunks, {
          afterLayer: () => {
            perLayer.push(labels.slice(from));
            from = labels.length;
          },
        });
        await step.submit();
        // layer 0's list also holds the embedding gather and the first norm's scales
        for (const layer of perLayer.slice(1)) {
          const other = layer.filter((label) => !label.startsWith('attention'));
          const names = other.map((label) => {
            const [shader, entry] = label.split('|');
            return shader === 'matmul' ? shader : `${shader} ${entry}`;
          });
          const what = `${src.config.architecture}${src.config.qkvBias ? ' with biases' : ''} ${JSON.stringify(chunks)}`;
          expect(names, what).toEqual(['matmul', 'rope rope_kv', 'matmul', 'rmsnorm scale', 'matmul', 'matmul', 'rmsnorm scale']);
          expect(layer.length).toBeLessThanOrEqual(10);
        }
      }
      model.destroy();
    }
  });
});

describe("a GPU's matmul plan", () => {
  const getGpu = useGpu();
  // Small batches split the tiled matmul over K on a GPU (matmulSplits), and the o and down
  // projections then write the next norm's row scales as they add the splits (split_sum_rows). The
  // kernels are checked against their references in matmul.test.ts; this runs the whole forward
  // pass that way, on this device taken for a GPU, against the float64 oracle.
  it('splits over K and row scales from the split sums: the oracle logits within the f32 bound', async () => {
    const gpu = getGpu();
    const asGpu = Object.create(gpu, { adapter: { value: { ...gpu.adapter, isSoftware: false } } }) as Gpu;
    // K of 512 and more: every projection splits (at least 256 of K each); 12 tokens, one row of 16-row tiles
    const src = syntheticModel({ name: 'split', dim: 512, ffn: 1024, nHeads: 8, nKvHeads: 2, headDim: 64, vocab: 300, nLayers: 2 }, 'f32', { seed: 3 });
    const tokens = Array.from({ length: 12 }, (_, i) => (i * 37) % 300);
    const entries: string[] = [];
    const dispatch = Step.prototype.dispatch;
    vi.spyOn(Step.prototype, 'dispatch').mockImplementation(function (this: Step, d) {
      entries.push(d.pipeline.label);
      dispatch.call(this, d);
    });
    await expectGpuLogits(asGpu, src, tokens);
    const count = (entry: string) => entries.filter((l) => l.startsWith(`matmul|${entry}|`)).length;
    // per layer: q/k/v and gate/up through split_sum, o and down through split_sum_rows; then the output head through split_sum
    expect({ split_sum: count('split_sum'), split_sum_rows: count('split_sum_rows') }).toEqual({ split_sum: 2 * 2 + 1, split_sum_rows: 2 * 2 });
  });
});

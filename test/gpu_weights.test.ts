import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WEIGHT_FORMATS, type WeightFormat, dequantizeRef, encodeWeights, isQuantized, repackWeights } from '../kernels/weights.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { uploadWeights } from '../src/model/gpu_weights.ts';
import { type ModelSource, type TensorSource, type TensorTypeName, openModel } from '../src/model/source.ts';
import { normalArray } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';
import { expectGpuLogits } from './helpers/logits.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');

const FORMAT_OF: Record<TensorTypeName, WeightFormat> = { F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_0: 'q4_0' };
const TYPE_OF: Record<WeightFormat, TensorTypeName> = { f32: 'F32', f16: 'F16', bf16: 'BF16', q8_0: 'Q8_0', q4_0: 'Q4_0' };

/** An in-memory tensor in `format` holding `values` (dims[0] contiguous). */
function memTensor(name: string, format: WeightFormat, dims: number[], values: Float32Array): TensorSource {
  const k = dims[0];
  const bytes = encodeWeights(format, values, values.length / k, k);
  return { name, typeName: TYPE_OF[format], dims, bytes: bytes.byteLength, read: () => bytes };
}

/** The model with every tensor (matrices and norms) re-encoded from its f32 values in `format`. */
async function reencoded(format: WeightFormat): Promise<ModelSource> {
  const src = await openModel(STORIES);
  const tensors = new Map<string, TensorSource>();
  for (const t of src.tensors.values()) {
    expect(t.typeName, t.name).toBe('F32');
    const count = t.dims.reduce((a, b) => a * b, 1);
    tensors.set(t.name, memTensor(t.name, format, t.dims, dequantizeRef('f32', t.read(), count)));
  }
  return { ...src, tensors };
}

/**
 * 96 vector values `format` holds exactly, so widening must give them back bit for bit. Multiples of
 * 2^-4 up to ±127·2^-4 have 7 significant bits (bf16 keeps 8, f16 11) and, with 127·2^-4 in every
 * 32-block, are Q8_0 quants of scale 2^-4 exactly; Q4_0 gets multiples of 2^-3 in -8..7 with -8 in
 * every block (scale 2^-3). The float formats also get -0 and a subnormal (bf16 shares f32's
 * exponent range: 2^-130; f16's smallest is 2^-24); the quantised formats have no -0.
 */
function exactVector(format: WeightFormat): Float32Array {
  const [scale, lo, hi] = format === 'q4_0' ? [8, -8, 7] : [16, -127, 127];
  const step = (x: number) => Math.max(lo, Math.min(hi, Math.round(x * hi * 0.3))) + 0; // + 0: never -0
  const v = normalArray(96, 3).map((x) => step(x) / scale);
  for (let b = 0; b < 3; b++) v[b * 32 + 31] = (format === 'q4_0' ? lo : hi) / scale;
  if (!isQuantized(format)) {
    v[0] = -0;
    v[1] = format === 'f16' ? 2 ** -24 : 2 ** -130;
  }
  return v;
}

describe('uploadWeights', () => {
  const getGpu = useGpu();

  it('keeps matrices in their format (bf16 too) and widens f16/bf16/quantised vectors to the exact f32 values', async () => {
    const gpu = getGpu();
    const src = await openModel(STORIES);
    const tensors = new Map<string, TensorSource>();
    const exact = new Map<string, Float32Array>();
    const add = (t: TensorSource) => tensors.set(t.name, t);
    add(memTensor('m.bf16', 'bf16', [5, 3], normalArray(15, 1)));
    add(memTensor('m.f16', 'f16', [5, 3], normalArray(15, 2)));
    add(memTensor('m.q8_0', 'q8_0', [32, 2], normalArray(64, 4)));
    for (const f of WEIGHT_FORMATS) {
      const v = exactVector(f);
      add(memTensor(`norm.${f}`, f, [96], v));
      add(memTensor(`col.${f}`, f, [96, 1], v)); // a [96, 1] tensor is one row too
      exact.set(`norm.${f}`, v).set(`col.${f}`, v);
    }
    const w = uploadWeights(gpu, { ...src, tensors });
    try {
      for (const [name, t] of tensors) {
        const g = w.get(name)!;
        const bytes = repackWeights(FORMAT_OF[t.typeName], t.read(), t.dims[0]); // as the kernels read them
        const want = exact.get(name);
        expect(g.dims, name).toEqual(t.dims);
        if (!want || t.typeName === 'F32') {
          expect(g.format, name).toBe(FORMAT_OF[t.typeName]);
          const got = new Uint8Array(await gpu.read(g.buffer, 0, Math.ceil(bytes.byteLength / 4) * 4)).subarray(0, bytes.byteLength);
          expect(Buffer.compare(Buffer.from(got), Buffer.from(bytes)), `${name}: bytes changed`).toBe(0);
        } else {
          expect(g.format, name).toBe('f32');
          expect([...(await gpu.readU32(g.buffer, want.length))], name).toEqual([...new Uint32Array(want.buffer)]);
        }
      }
    } finally {
      for (const g of w.values()) g.buffer.destroy();
    }
  });
});

describe('GPU forward pass with bf16 weights (matrices bf16 on the GPU, norms widened)', () => {
  const getGpu = useGpu();

  it('stories260K re-encoded to bf16: logits of every position match the float64 CPU forward pass', async () => {
    const src = await reencoded('bf16');
    const tokens = src.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play');
    // The oracle decodes the same bf16 bytes, so as in gpu_model.test.ts only f32 rounding differs:
    // bound 3.0e-6 relative; measured 3.6e-7.
    await expectGpuLogits(getGpu(), src, tokens);
  });
});

describe('fused projections (q/k/v and gate/up concatenated at load)', () => {
  const getGpu = useGpu();

  /**
   * stories260K as Qwen2 (q/k/v biases, NeoX RoPE) with layer 2's attn_v in f16 and layer 3's
   * ffn_up in q8_0: those layers' parts differ in format, so they stay separate tensors.
   */
  async function mixed(): Promise<ModelSource> {
    const src = await openModel(STORIES);
    const tensors = new Map(src.tensors);
    const f32 = (t: TensorSource) => dequantizeRef('f32', t.read(), t.dims.reduce((a, b) => a * b, 1));
    const reencode = (name: string, format: WeightFormat) => {
      const t = tensors.get(name)!;
      tensors.set(name, memTensor(name, format, t.dims, f32(t)));
    };
    reencode('blk.2.attn_v.weight', 'f16');
    reencode('blk.3.ffn_up.weight', 'q8_0');
    for (let l = 0; l < src.config.nLayers; l++) {
      for (const [p, len] of [['q', 64], ['k', 32], ['v', 32]] as const) tensors.set(`blk.${l}.attn_${p}.bias`, memTensor(`blk.${l}.attn_${p}.bias`, 'f32', [len], normalArray(len, l * 3 + len, 0.5)));
    }
    return { ...src, config: { ...src.config, architecture: 'qwen2', ropeMode: 'neox', qkvBias: true }, tensors };
  }

  it('a layer whose parts share a format gets one tensor of their rows back to back; others keep their parts', async () => {
    const gpu = getGpu();
    const src = await mixed();
    const w = uploadWeights(gpu, src);
    try {
      const bytesOf = async (name: string) => {
        const g = w.get(name)!;
        return new Uint8Array(await gpu.read(g.buffer, 0, g.buffer.size));
      };
      const concat = (names: string[]) => Buffer.concat(names.map((n) => src.tensors.get(n)!.read()));
      const expectFused = async (name: string, parts: string[], dims: number[]) => {
        expect(w.get(name)?.dims, name).toEqual(dims);
        const want = concat(parts);
        expect(Buffer.compare(Buffer.from((await bytesOf(name)).subarray(0, want.byteLength)), want), `${name}: bytes`).toBe(0);
        for (const p of parts) expect(w.has(p), p).toBe(false);
      };
      const parts = (l: number, names: string[], suffix: string) => names.map((n) => `blk.${l}.${n}.${suffix}`);
      await expectFused('blk.0.attn_qkv.weight', parts(0, ['attn_q', 'attn_k', 'attn_v'], 'weight'), [64, 128]);
      await expectFused('blk.0.attn_qkv.bias', parts(0, ['attn_q', 'attn_k', 'attn_v'], 'bias'), [128]);
      await expectFused('blk.0.ffn_gate_up.weight', parts(0, ['ffn_gate', 'ffn_up'], 'weight'), [64, 344]);
      for (const name of [...parts(2, ['attn_q', 'attn_k', 'attn_v'], 'weight'), ...parts(2, ['attn_q', 'attn_k', 'attn_v'], 'bias'), ...parts(3, ['ffn_gate', 'ffn_up'], 'weight')]) {
        expect(w.has(name), name).toBe(true);
      }
      expect(w.get('blk.2.attn_v.weight')!.format).toBe('f16');
      expect(w.has('blk.2.attn_qkv.weight') || w.has('blk.3.ffn_gate_up.weight')).toBe(false);
      expect(w.has('blk.3.attn_qkv.weight') && w.has('blk.2.ffn_gate_up.weight')).toBe(true);
    } finally {
      for (const g of w.values()) g.buffer.destroy();
    }
  });

  it('the forward pass over fused and separate layers matches the float64 CPU forward pass', async () => {
    // as in gpu_model.test.ts: only f32 rounding separates the two (bound 3.0e-6 relative)
    const src = await mixed();
    await expectGpuLogits(getGpu(), src, src.tokenizer.encode('Once upon a time, there was a little girl'));
  });
});

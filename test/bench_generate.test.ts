import { describe, expect, it } from 'vitest';
import { type GenerateBenchReport, checkFits, decodeWeightBytes, generateBenchMarkdown, mergeDocSection, runGenerateBench, runKey } from '../bench/generate.ts';
import { MODEL_SHAPES, type ModelShape } from '../src/model/shapes.ts';
import { type WeightFormat, dequantizeRef, rowBytes, weightBytes } from '../kernels/weights.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { ByteTokenizer, syntheticModel, syntheticShape } from '../src/model/synthetic.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { useGpu } from './helpers/gpu.ts';

const FORMAT: Record<string, WeightFormat> = { F32: 'f32', F16: 'f16', BF16: 'bf16', Q8_0: 'q8_0', Q4_0: 'q4_0' };

/** Small enough for the software device, with every row length a multiple of 32 for q8_0/q4_0. */
const TINY: ModelShape = { name: 'tiny', dim: 64, ffn: 96, nHeads: 4, nKvHeads: 2, headDim: 16, vocab: 320, nLayers: 2 };

describe('synthetic models', () => {
  it('have the tensors, types and byte sizes a GGUF file of the model would have', () => {
    for (const key of ['llama-3.2-1b', 'llama-3-8b', 'qwen2.5-7b']) {
      for (const dtype of ['f16', 'bf16', 'q8_0', 'q4_0'] as const) {
        const shape = MODEL_SHAPES[key];
        const m = syntheticModel(key, dtype); // full size: nothing is generated until read()
        const c = m.config;
        expect(m.format).toBe('synthetic');
        expect(c).toMatchObject({ dim: shape.dim, ffn: shape.ffn, nLayers: shape.nLayers, nHeads: shape.nHeads, nKvHeads: shape.nKvHeads, headDim: shape.headDim, vocabSize: shape.vocab });
        const qkv = key === 'qwen2.5-7b' ? 3 : 0;
        const tied = key === 'llama-3.2-1b';
        expect(m.tensors.size).toBe(2 + (tied ? 0 : 1) + shape.nLayers * (9 + qkv));
        expect(m.tensors.has('output.weight')).toBe(!tied);
        expect(c.qkvBias).toBe(key === 'qwen2.5-7b');
        let total = 0;
        for (const t of m.tensors.values()) {
          total += t.bytes;
          if (t.dims.length === 1) {
            expect(t.typeName).toBe('F32'); // norms and biases
            expect(t.bytes).toBe(t.dims[0] * 4);
            continue;
          }
          const [k, n] = t.dims;
          expect(FORMAT[t.typeName]).toBe(dtype);
          expect(t.bytes).toBe(weightBytes(dtype, n, k));
          expect(t.bytes).toBe(n * rowBytes(dtype, k));
        }
        // every matrix of the model in dtype: dims checked against the shape
        const qDim = shape.nHeads * shape.headDim;
        const kvDim = shape.nKvHeads * shape.headDim;
        const dims = (name: string) => m.tensors.get(name)!.dims;
        expect(dims('token_embd.weight')).toEqual([shape.dim, shape.vocab]);
        expect(dims('blk.0.attn_q.weight')).toEqual([shape.dim, qDim]);
        expect(dims('blk.0.attn_k.weight')).toEqual([shape.dim, kvDim]);
        expect(dims('blk.0.attn_output.weight')).toEqual([qDim, shape.dim]);
        expect(dims('blk.0.ffn_down.weight')).toEqual([shape.ffn, shape.dim]);
        // Llama-3-8B by hand: 2 x 128256 x 4096 (embedding, head) + 32 layers x 4096 x (4096 + 1024 +
        // 1024 + 4096 + 3 x 14336) = 8,029,995,008 weights; norms 65 x 4096 f32 = 1,064,960 bytes.
        // Q4_0 stores 32 weights in 18 bytes, f16 one in 2.
        if (key === 'llama-3-8b' && dtype === 'q4_0') expect(total).toBe((8_029_995_008 / 32) * 18 + 1_064_960);
        if (key === 'llama-3-8b' && dtype === 'f16') expect(total).toBe(8_029_995_008 * 2 + 1_064_960);
      }
    }
  });

  it('read() gives exactly `bytes` of finite, small, row-varying values, the same for the same seed', () => {
    const shape = syntheticShape('llama-3-8b', 'reduced');
    expect(shape.name).toContain('(reduced)');
    for (const dtype of ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'] as const) {
      const m = syntheticModel(shape, dtype);
      const t = m.tensors.get('blk.1.ffn_up.weight')!;
      const bytes = t.read();
      expect(bytes.byteLength).toBe(t.bytes);
      const [k, n] = t.dims;
      const values = dequantizeRef(dtype, bytes, n * k);
      let max = 0;
      let finite = true;
      for (const v of values) {
        finite &&= Number.isFinite(v);
        max = Math.max(max, Math.abs(v));
      }
      expect(finite).toBe(true);
      expect(max).toBeGreaterThan(0);
      // uniform in +-sqrt(3/K) (std 1/sqrt(K)); stored values round up by at most bf16's 2^-8
      // relative (q8_0/q4_0 scales are f16: 2^-11). Measured: bf16 1.5e-3 over, the rest under; allowed 1%
      expect(max).toBeLessThanOrEqual(Math.sqrt(3 / k) * 1.01);
      const same = (a: ArrayBufferView, b: ArrayBufferView) => Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
      expect(same(values.subarray(0, k), values.subarray(k, 2 * k))).toBe(false);
      expect(same(syntheticModel(shape, dtype).tensors.get('blk.1.ffn_up.weight')!.read(), bytes)).toBe(true);
      expect(same(m.tensors.get('blk.1.ffn_gate.weight')!.read(), bytes)).toBe(false);
      const norm = new Float32Array(m.tensors.get('output_norm.weight')!.read().buffer);
      expect([...norm].every((x) => x === 1)).toBe(true);
    }
  });

  it('refuses quantised formats for rows that are not whole blocks', () => {
    expect(() => syntheticModel('stories260k', 'q4_0')).toThrow(/multiple of 32/);
    expect(() => syntheticModel('no-such-model', 'f16')).toThrow(/unknown synthetic model/);
  });

  it('has a byte-level tokenizer', () => {
    const tok = new ByteTokenizer(320);
    const ids = tok.encode('héllo');
    expect(ids).toEqual([ByteTokenizer.BOS, 0x68, 0xc3, 0xa9, 0x6c, 0x6c, 0x6f]);
    expect(decode(tok, ids)).toBe('héllo');
    expect(tok.encode('a<|synthetic_eos|>', { addSpecial: false, parseSpecial: true })).toEqual([0x61, ByteTokenizer.EOS]);
    expect(tok.encode('a', { addSpecial: false })).toEqual([0x61]);
    expect(tok.tokenBytes(300)).toEqual(new Uint8Array(0)); // unused ids decode to nothing
    expect(() => tok.tokenBytes(320)).toThrow(RangeError);
  });

  it('decode steps read every layer, the head and one embedding row per sequence', () => {
    const untied = syntheticModel(TINY, 'q8_0');
    expect(untied.tensors.has('output.weight')).toBe(true); // custom shapes: untied
    const all = [...untied.tensors.values()].reduce((n, t) => n + t.bytes, 0);
    const emb = untied.tensors.get('token_embd.weight')!;
    expect(decodeWeightBytes(untied, 3)).toBe(all - emb.bytes + 3 * rowBytes('q8_0', TINY.dim));
    const oneB = syntheticModel('llama-3.2-1b', 'q4_0', { scale: 'reduced' }); // tied: the embedding is the head
    expect(decodeWeightBytes(oneB, 8)).toBe([...oneB.tensors.values()].reduce((n, t) => n + t.bytes, 0));
  });

  it('checks tensors and activations against the device limits before generating anything', () => {
    const fake = (limit: number) => ({ limits: { maxBufferSize: limit, maxStorageBufferBindingSize: limit } }) as unknown as Gpu;
    const m = syntheticModel('llama-3-8b', 'f16');
    expect(() => checkFits(fake(2 ** 29), m, { maxBatch: 1, promptTokens: 1, kvPoolBytes: 0 })).toThrow(/token_embd.weight.*maxStorageBufferBindingSize/);
    expect(() => checkFits(fake(2 ** 31), m, { maxBatch: 1, promptTokens: 1, kvPoolBytes: 0 })).not.toThrow();
    expect(() => checkFits(fake(2 ** 31), m, { maxBatch: 64, promptTokens: 1024, kvPoolBytes: 0 })).toThrow(/activation buffers/);
  });
});

describe('bench generate', () => {
  const getGpu = useGpu();

  it('reports finite prefill/decode speeds and roofline fractions for every batch size', async () => {
    const report: GenerateBenchReport = await runGenerateBench(getGpu(), [
      { model: TINY, dtype: 'q4_0', scale: 'reduced', batches: [1, 2], promptTokens: 4, decodeTokens: 2, warmup: false },
    ]);
    expect(report.copyBandwidthGBs).toBeGreaterThan(0);
    expect(report.runs).toHaveLength(1);
    const run = report.runs[0];
    expect(run.results.map((r) => r.batch)).toEqual([1, 2]);
    for (const r of run.results) {
      for (const v of [r.prefillSeconds, r.prefillTokensPerSecond, r.decodeSeconds, r.decodeTokensPerSecond, r.meanDecodeStepMs, r.wallDecodeTokensPerSecond, r.decodeGBs, r.rooflineFraction]) {
        expect(Number.isFinite(v) && v > 0).toBe(true);
      }
      expect(r.decodeSteps).toBe(2);
      expect(r.decodeTokensPerSecond).toBeCloseTo((r.batch * 2) / r.decodeSeconds, 6);
      expect(r.weightBytesPerStep).toBe(decodeWeightBytes(syntheticModel(TINY, 'q4_0'), r.batch));
      // after a 4-token prompt, decode steps see 5 and 6 cached positions: K and V, f32, per layer and KV head
      expect(r.meanKvBytesPerStep).toBe(r.batch * 5.5 * 2 * TINY.nLayers * TINY.nKvHeads * TINY.headDim * run.kvBytesPerElement);
    }
    const md = generateBenchMarkdown(report);
    expect(md).toContain('REDUCED');
    expect(md.split('\n').filter((l) => /^\| [12] \|/.test(l))).toHaveLength(2);
  });

  it('merges runs into the docs section: same key replaced, new keys appended', () => {
    const doc = 'intro\n<!-- generate-software:begin -->\n<!-- generate-software:end -->\nafter\n';
    const a = mergeDocSection(doc, 'generate-software', [{ key: 'm-reduced-q4_0', markdown: 'table A1\n' }]);
    const b = mergeDocSection(a, 'generate-software', [{ key: 'm-reduced-f16', markdown: 'table B\n' }]);
    const c = mergeDocSection(b, 'generate-software', [{ key: 'm-reduced-q4_0', markdown: 'table A2\n' }]);
    expect(c).not.toContain('table A1');
    expect(c.indexOf('table A2')).toBeLessThan(c.indexOf('table B'));
    expect(c.startsWith('intro\n<!-- generate-software:begin -->\n')).toBe(true);
    expect(c.endsWith('<!-- generate-software:end -->\nafter\n')).toBe(true);
    expect(() => mergeDocSection('no markers', 'generate-gpu', [])).toThrow(/generate-gpu:begin/);
    expect(runKey({ model: 'Llama-3.2-1B/8 (reduced)', scale: 'reduced', dtype: 'q4_0' } as never)).toBe('llama-3.2-1b-reduced-q4_0');
  });
});

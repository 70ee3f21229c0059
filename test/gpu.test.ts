import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { rmsNorm } from '../kernels/rmsnorm.ts';
import { softmax } from '../kernels/softmax.ts';
import { sample } from '../kernels/sampling.ts';
import { precompile } from '../src/engine/generate.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { openModel } from '../src/model/source.ts';
import { countsSince } from '../src/gpu/counters.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { parseDeviceMode } from '../src/gpu/adapter.ts';
import { BufferPool, Usage } from '../src/gpu/buffers.ts';
import { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import type { Step } from '../src/gpu/step.ts';
import { useGpu } from './helpers/gpu.ts';

describe('gpu device layer', () => {
  const getGpu = useGpu({ own: true }); // counts what a fresh device compiles

  it('reports the adapter and its features', () => {
    const gpu = getGpu();
    expect(gpu.adapter.description.length).toBeGreaterThan(0);
    expect(typeof gpu.features.subgroups).toBe('boolean');
    // the model needs storage bindings far above WebGPU's 128 MiB default
    expect(gpu.limits.maxStorageBufferBindingSize).toBeGreaterThan(128 * 1024 * 1024);
  });

  it('parses device modes and rejects unknown ones', () => {
    expect(parseDeviceMode(undefined)).toBe('auto');
    expect(parseDeviceMode('CPU')).toBe('cpu');
    expect(() => parseDeviceMode('tpu')).toThrow(/auto, gpu or cpu/);
  });

  it('forced software mode yields the software adapter', async () => {
    const cpu = await Gpu.open({ mode: 'cpu' });
    expect(cpu.adapter.isSoftware).toBe(true);
    cpu.destroy();
  });

  it('pool: released buffers are reused by size class; steady-state steps allocate nothing', async () => {
    const gpu = getGpu();
    expect(BufferPool.sizeClass(1)).toBe(256);
    expect(BufferPool.sizeClass(1000)).toBe(1024);
    const a = gpu.pool.acquire(1000);
    gpu.pool.release(a);
    expect(gpu.pool.acquire(700)).toBe(a);
    gpu.pool.release(a);

    const x = gpu.upload(new Float32Array(64 * 8).fill(1));
    const w = gpu.upload(new Float32Array(64).fill(1));
    const runStep = async () => {
      const step = gpu.step({ timestamps: true });
      const out = step.scratch(64 * 8 * 4);
      rmsNorm(step, { x, weight: w, out, rows: 8, dim: 64, eps: 1e-5 });
      const result = step.readback(out, 0, 16);
      await step.submit();
      return new Float32Array(await result);
    };
    expect(Array.from(await runStep())).toEqual([1, 1, 1, 1].map((v) => Math.fround(v / Math.sqrt(1 + 1e-5))));
    const before = gpu.pool.allocations;
    for (let i = 0; i < 3; i++) await runStep();
    expect(gpu.pool.allocations).toBe(before);
    x.destroy();
    w.destroy();
  });

  it('timestamps: a timed step reports its GPU time when the feature exists', async () => {
    const gpu = getGpu();
    const x = gpu.upload(new Float32Array(4096));
    const w = gpu.upload(new Float32Array(4096));
    const out = gpu.createBuffer(4096 * 4);
    const step = gpu.step({ timestamps: true });
    rmsNorm(step, { x, weight: w, out, rows: 1, dim: 4096, eps: 1e-5 });
    const { gpuTimeNs } = await step.submit();
    if (gpu.features.timestampQuery) expect(gpuTimeNs).toBeGreaterThan(0);
    else expect(gpuTimeNs).toBeUndefined();
    [x, w, out].forEach((b) => b.destroy());
  });

  it('a step with an invalid dispatch rejects with the driver message, and the device keeps working', async () => {
    const gpu = getGpu();
    const notStorage = gpu.createBuffer(256, 'uniform-only', Usage.UNIFORM | Usage.COPY_DST);
    const w = gpu.upload(new Float32Array(64));
    const out = gpu.createBuffer(64 * 4);
    const bad = gpu.step();
    rmsNorm(bad, { x: notStorage, weight: w, out, rows: 1, dim: 64, eps: 1e-5 });
    await expect(bad.submit()).rejects.toThrow(/WebGPU error in step/);

    const x = gpu.upload(new Float32Array(64).fill(2));
    const good = gpu.step();
    rmsNorm(good, { x, weight: gpu.upload(new Float32Array(64).fill(1)), out, rows: 1, dim: 64, eps: 0 });
    await good.submit();
    expect((await gpu.readF32(out, 1))[0]).toBeCloseTo(1, 6);
  });

  it('a discarded step closes its error scopes: the next invalid step still reports its own error', async () => {
    const gpu = getGpu();
    const x = gpu.upload(new Float32Array(64).fill(3));
    const w = gpu.upload(new Float32Array(64).fill(1));
    const out = gpu.createBuffer(64 * 4);
    const abandoned = gpu.step();
    rmsNorm(abandoned, { x, weight: w, out, rows: 1, dim: 64, eps: 0 });
    const never = abandoned.readback(out, 0, 4);
    await abandoned.discard();
    await expect(never).rejects.toThrow(/discarded/);
    const bad = gpu.step();
    rmsNorm(bad, { x: gpu.createBuffer(256, 'uniform-only', Usage.UNIFORM | Usage.COPY_DST), weight: w, out, rows: 1, dim: 64, eps: 0 });
    await expect(bad.submit()).rejects.toThrow(/WebGPU error in step/);
    const good = gpu.step();
    rmsNorm(good, { x, weight: w, out, rows: 1, dim: 64, eps: 0 });
    await good.submit();
    expect((await gpu.readF32(out, 1))[0]).toBeCloseTo(1, 6);
  });

  it('params: out-of-range values are refused before they reach the GPU', () => {
    expect(() => new Params().u32(-1)).toThrow(RangeError);
    expect(() => new Params().u32(1.5)).toThrow(RangeError);
    expect(() => new Params().i32(2 ** 31)).toThrow(RangeError);
    expect(new Params().u32(1).f32(0.5).bytes().byteLength).toBe(16);
  });

  it('steady state: a repeated step creates no bind group or buffer, and reads its buffers\' and uniforms\' current contents', async () => {
    const gpu = getGpu();
    const dim = 64;
    const x = gpu.upload(new Float32Array(dim).fill(1));
    const x2 = gpu.upload(new Float32Array(dim).fill(2));
    const w = gpu.upload(new Float32Array(dim).fill(1));
    const out = gpu.createBuffer(dim * 4);
    // two dispatches with different uniforms, so the second sits at a later offset of the arena
    const run = async (input: GPUBuffer, eps: number) => {
      const before = gpu.counters.snapshot();
      const step = gpu.step();
      const tmp = step.scratch(dim * 4);
      rmsNorm(step, { x: input, weight: w, out: tmp, rows: 1, dim, eps: 0 });
      rmsNorm(step, { x: tmp, weight: w, out, rows: 1, dim, eps });
      await step.submit();
      return { y: (await gpu.readF32(out, 1))[0], counts: countsSince(before, gpu.counters.snapshot()) };
    };
    // rmsnorm of ones with eps: 1 / sqrt(1 + eps), rounded once to f32 (tolerance: a few ulps of sqrt and division)
    const expected = (eps: number) => 1 / Math.sqrt(1 + eps);
    const first = await run(x, 0);
    expect(first.y).toBeCloseTo(expected(0), 6);
    const again = await run(x, 3); // same buffers, new eps in the same uniform slot
    expect(again.y).toBeCloseTo(expected(3), 6);
    expect(again.counts).toMatchObject({ bindGroupsCreated: 0, buffersCreated: 0, dispatches: 2, computePasses: 1, submits: 2, pipelinesCreated: 0 });
    // one uniform writeBuffer for the step (readF32 submits its own copy)
    expect(again.counts.writeBufferCalls).toBe(1);
    // another input buffer: one new bind group (the first dispatch's), and the result is the new input's
    x.destroy();
    const other = await run(x2, 3);
    expect(other.y).toBeCloseTo(expected(3), 6);
    expect(other.counts.bindGroupsCreated).toBe(1);
    [x2, w, out].forEach((b) => b.destroy());
  });

  it('pipelines: one per constants whatever their order; the counter counts compilations', () => {
    const gpu = getGpu();
    const before = gpu.counters.pipelinesCreated;
    const a = gpu.pipelines.get('elementwise', 'add', { WG: 128 });
    expect(gpu.pipelines.get('elementwise', 'add', { WG: 128 })).toBe(a);
    expect(gpu.pipelines.get('elementwise', 'add', { WG: 64 })).not.toBe(a);
    const b = gpu.pipelines.get('rope', 'main_scalar', { WG: 64, NEOX: 1 });
    expect(gpu.pipelines.get('rope', 'main_scalar', { NEOX: 1, WG: 64 })).toBe(b);
    expect(gpu.counters.pipelinesCreated - before).toBe(3);
  });

  it('precompile: pipelines a dry-run step asks for are compiled asynchronously; the real step then compiles none', async () => {
    const gpu = getGpu();
    const x = gpu.upload(new Float32Array(3 * 40).fill(1));
    const out = gpu.createBuffer(3 * 40 * 4);
    const record = (step: Step) => softmax(step, { x, out, rows: 3, cols: 40 });
    const compiled = await gpu.precompile(record);
    expect(compiled).toBeGreaterThan(0);
    expect(await gpu.precompile(record)).toBe(0);
    const before = gpu.counters.snapshot();
    const step = gpu.step();
    record(step);
    await step.submit();
    expect(countsSince(before, gpu.counters.snapshot())).toMatchObject({ pipelinesCreated: 0, dispatches: 1 });
    // a constant row: every exp(0) = 1 and the sum 40 are exact, the division rounds once (half an ulp of 0.025 is 1e-9)
    const y = await gpu.readF32(out, 3 * 40);
    for (const v of y) expect(Math.abs(v - 1 / 40)).toBeLessThan(1e-8);
    [x, out].forEach((b) => b.destroy());
  });

  it('start-up precompile asks for every pipeline that steps within its limits record (nothing compiled: keys compared)', async () => {
    const gpu = getGpu();
    const src = await openModel(join(repoRoot, 'models', 'stories260K', 'stories260K.bin'));
    const model = GpuModel.load(gpu, src, { kvMemoryBytes: 4 << 20 });
    // collected pipelines are noted, not compiled (SwiftShader takes seconds per pipeline)
    const asked = new Set<string>();
    const spy = vi.spyOn(gpu.pipelines, 'compileAsync').mockImplementation((shader, entry = 'main', constants = {}) => {
      asked.add(`${shader}|${entry}|${JSON.stringify(Object.entries(constants).sort())}`);
      return Promise.resolve({} as GPUComputePipeline);
    });
    try {
      const limits = { maxBatch: 12, tokenBudget: 80 };
      await precompile(model, limits);
      const precompiled = new Set(asked);
      asked.clear();
      // random steps within the limits: decode sequences at random contexts, prompt chunks, both
      const random = mulberry32(7);
      const int = (n: number) => 1 + Math.floor(random() * n);
      let seq = 1;
      await gpu.precompile((step) => {
        for (let i = 0; i < 40; i++) {
          const seqs: number[] = [];
          const chunks: SeqChunk[] = [];
          let tokens = 0;
          for (let d = int(limits.maxBatch) - 1; d > 0 && tokens < limits.tokenBudget; d--) {
            const s = seq++;
            seqs.push(s);
            model.kv.append(s, int(300)); // its context so far
            chunks.push({ seq: s, tokens: [1] });
            tokens++;
          }
          if (chunks.length === 0 || (random() < 0.5 && tokens < limits.tokenBudget)) {
            const s = seq++;
            seqs.push(s);
            chunks.push({ seq: s, tokens: new Array<number>(int(limits.tokenBudget - tokens)).fill(1) });
          }
          const { logits, rows } = model.forward(step, chunks);
          sample(step, { logits, params: step.scratch(rows * 32), out: step.scratch(rows * 4), rows, cols: src.config.vocabSize });
          for (const s of seqs) model.release(s);
        }
      });
      expect(asked.size).toBeGreaterThan(0);
      expect([...asked].filter((k) => !precompiled.has(k))).toEqual([]);
    } finally {
      spy.mockRestore();
      model.destroy();
    }
  });
});

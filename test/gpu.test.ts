import { describe, expect, it } from 'vitest';
import { rmsNorm } from '../kernels/rmsnorm.ts';
import { parseDeviceMode } from '../src/gpu/adapter.ts';
import { BufferPool, Usage } from '../src/gpu/buffers.ts';
import { Gpu } from '../src/gpu/gpu.ts';
import { Params } from '../src/gpu/params.ts';
import { useGpu } from './helpers/gpu.ts';

describe('gpu device layer', () => {
  const getGpu = useGpu();

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
});

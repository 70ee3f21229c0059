import { describe, expect, it, vi } from 'vitest';
import { add, addRef, siluMul, siluMulRef } from '../kernels/elementwise.ts';
import { normalArray, uniformArray } from '../src/util/rng.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// silu(g) * u: WGSL bounds exp(x) to (3 + 2|x|) ulp (exp is exp2 of x * log2(e), whose rounding
// grows with |x|); the division is within 2.5 ulp and the two multiplies 0.5 ulp each, and sigmoid
// never amplifies a relative error. So relative error <= (8 + 2|g|) * 2^-23, with |g| capped at 104:
// beyond, e^-|g| is 0 in f32 whatever the implementation, and the result is exactly g*u or 0.
// GPUs flush subnormals, so e^-|g| below 2^-126 (|g| > 87.3) may read as 0: the true output there
// is below 104 * 2^-126 * |u| ~ 1e-35 for |u| < 8, hence atol 1e-35.
function siluTol(gate: Float32Array): { atol: number; rtol: number } {
  let m = 0;
  for (const g of gate) m = Math.max(m, Math.abs(g));
  return { atol: 1e-35, rtol: (8 + 2 * Math.min(m, 104)) * 2 ** -23 };
}

// f32 addition is correctly rounded (WGSL requires it): relative error <= 2^-24 of the exact sum.
const ADD_TOL = { atol: 0, rtol: 2 ** -24 };

const COUNTS = [1, 3, 4, 5, 1027, 1000003];

async function runSiluMul(gpu: Gpu, gate: Float32Array, up: Float32Array): Promise<Float32Array> {
  const count = gate.length;
  const gb = gpu.upload(gate);
  const ub = gpu.upload(up);
  const ob = gpu.createBuffer(count * 4);
  const step = gpu.step();
  siluMul(step, { gate: gb, up: ub, out: ob, count });
  await step.submit();
  const out = await gpu.readF32(ob, count);
  for (const b of [gb, ub, ob]) b.destroy();
  return out;
}

describe('silu_mul', () => {
  const getGpu = useGpu();

  for (const count of COUNTS) {
    it(`count=${count}`, async () => {
      const gate = normalArray(count, count, 3);
      const up = normalArray(count, count + 1);
      const out = await runSiluMul(getGpu(), gate, up);
      expectClose(out, siluMulRef(gate, up), siluTol(gate), 'silu_mul');
    });
  }

  it('large-magnitude gates stay finite and exact-ish', async () => {
    // where a naive g / (1 + exp(-g)) or exp(g) / (1 + exp(g)) overflows to inf or NaN
    const special = [90, -90, 88.72, -88.72, 87, -87, 100, -100, 1000, -1000, 1e30, -1e30, 20, -20, 0, -0];
    const count = 4099;
    const gate = uniformArray(count, 99, -90, 90);
    gate.set(special);
    // place the specials in the scalar tail too
    gate.set(special.slice(0, 3), count - 3);
    const up = uniformArray(count, 100, -4, 4);
    const out = await runSiluMul(getGpu(), gate, up);
    for (let i = 0; i < count; i++) if (!Number.isFinite(out[i])) expect.fail(`element ${i}: silu(${gate[i]}) * ${up[i]} = ${out[i]}`);
    expectClose(out, siluMulRef(gate, up), siluTol(gate), 'silu_mul large');
    // silu(g) = g to f32 precision for g >= 90, and 0 for g <= -90
    expect(out[0]).toBe(Math.fround(90 * up[0]));
    expect(Math.abs(out[1])).toBeLessThan(1e-35);
  });
});

describe('add', () => {
  const getGpu = useGpu();

  for (const count of COUNTS) {
    it(`count=${count}`, async () => {
      const gpu = getGpu();
      const a = normalArray(count, 2 * count, 10);
      const b = normalArray(count, 2 * count + 1);
      const ab = gpu.upload(a);
      const bb = gpu.upload(b);
      const ob = gpu.createBuffer(count * 4);
      const step = gpu.step();
      add(step, { a: ab, b: bb, out: ob, count });
      await step.submit();
      expectClose(await gpu.readF32(ob, count), addRef(a, b), ADD_TOL, 'add');
      for (const buf of [ab, bb, ob]) buf.destroy();
    });
  }

  it('writes exactly count values (inputs bound as byte ranges, larger output)', async () => {
    const gpu = getGpu();
    const count = 7;
    // a lives at byte 256 of a larger buffer (storage offsets must be 256-aligned)
    const aAll = uniformArray(64 + count, 1);
    const a = aAll.slice(64);
    const b = uniformArray(count, 2);
    const ab = gpu.upload(aAll);
    const bb = gpu.upload(b);
    const sentinel = new Float32Array(16).fill(-123);
    const ob = gpu.upload(sentinel);
    const step = gpu.step();
    add(step, { a: { buffer: ab, offset: 256, size: count * 4 }, b: bb, out: ob, count });
    await step.submit();
    const out = await gpu.readF32(ob, 16);
    expectClose(out.subarray(0, count), addRef(a, b), ADD_TOL, 'add');
    expect(Array.from(out.subarray(count))).toEqual(Array.from(sentinel.subarray(count)));
    for (const buf of [ab, bb, ob]) buf.destroy();
  });

  it('rejects out aliasing an input', () => {
    const gpu = getGpu();
    const a = gpu.createBuffer(64);
    const b = gpu.createBuffer(64);
    const step = gpu.step();
    expect(() => add(step, { a, b, out: a, count: 16 })).toThrow(/overlaps/);
    expect(() => siluMul(step, { gate: a, up: b, out: { buffer: b, offset: 0, size: 16 }, count: 4 })).toThrow(/overlaps/);
    a.destroy();
    b.destroy();
  });

  it('count 0 records nothing', async () => {
    const gpu = getGpu();
    const [a, b, out] = [gpu.createBuffer(16), gpu.createBuffer(16), gpu.createBuffer(16)];
    // empty ranges: WebGPU rejects a zero-size binding, so submit() throws if anything was recorded
    const empty = (buffer: GPUBuffer) => ({ buffer, offset: 0, size: 0 });
    const step = gpu.step();
    const dispatch = vi.spyOn(step, 'dispatch');
    add(step, { a: empty(a), b: empty(b), out: empty(out), count: 0 });
    siluMul(step, { gate: empty(a), up: empty(b), out: empty(out), count: 0 });
    expect(dispatch).not.toHaveBeenCalled();
    await step.submit();
    for (const buf of [a, b, out]) buf.destroy();
  });
});

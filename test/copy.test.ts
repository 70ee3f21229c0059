import { describe, expect, it, vi } from 'vitest';
import { copyBuffer, copyRef } from '../kernels/copy.ts';
import { mulberry32 } from '../src/util/rng.ts';
import type { Binding } from '../src/gpu/step.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { useGpu } from './helpers/gpu.ts';

// A copy is exact: every byte is compared, with no tolerance.

function randomBytes(n: number, seed: number): Uint8Array {
  const next = mulberry32(seed);
  const words = new Uint32Array(Math.ceil(n / 4));
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(next() * 4294967296);
  return new Uint8Array(words.buffer, 0, n);
}

function expectBytesEqual(actual: Uint8Array, expected: Uint8Array, label: string): void {
  expect(actual.length, `${label} length`).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) expect.fail(`${label}: byte ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

/**
 * Copies `bytes` from a random source into a destination that holds other random bytes (and is 20
 * bytes longer), then checks dst is copyRef's result, so bytes past `bytes` must survive.
 */
async function checkCopy(gpu: Gpu, bytes: number, opts: { maxWorkgroups?: number; offset?: number } = {}): Promise<void> {
  const offset = opts.offset ?? 0;
  const dstBytes = bytes + 20;
  const src = randomBytes(offset + bytes, bytes + 1);
  const dst = randomBytes(offset + dstBytes, bytes + 2);
  const sb = gpu.upload(src);
  const db = gpu.upload(dst);
  // with an offset, bind byte ranges (the sizes cover `bytes` rounded up to 4, as copyBuffer asks)
  const srcBinding: Binding = offset ? { buffer: sb, offset, size: Math.ceil(bytes / 4) * 4 } : sb;
  const dstBinding: Binding = offset ? { buffer: db, offset, size: Math.ceil(dstBytes / 4) * 4 } : db;
  const step = gpu.step();
  copyBuffer(step, { src: srcBinding, dst: dstBinding, bytes, maxWorkgroups: opts.maxWorkgroups });
  await step.submit();
  const out = new Uint8Array(await gpu.read(db, 0, offset + dstBytes));
  const expected = Uint8Array.from(dst);
  expected.set(copyRef(src.subarray(offset), dst.subarray(offset), bytes), offset);
  expectBytesEqual(out, expected, `copy ${bytes} bytes`);
  sb.destroy();
  db.destroy();
}

describe('copy', () => {
  const getGpu = useGpu();

  // tail only (< 16), partial words, exactly one vec4, a vec4 plus tail, one full tile
  // (256 * 4 vec4s = 16 KiB) plus tail, several tiles with a partial last tile, and a few MB.
  for (const bytes of [1, 3, 4, 5, 12, 15, 16, 17, 30, 100, 16384, 16384 + 13, 3 * 16384 + 4004, 5 * 1024 * 1024 + 12, 3 * 1024 * 1024 + 7]) {
    it(`${bytes} bytes`, async () => {
      await checkCopy(getGpu(), bytes);
    });
  }

  it('grid-stride loop: more tiles than workgroups', async () => {
    // 2 MiB + 36 bytes = 128 full tiles, a partial one and a tail, over 3 workgroups
    await checkCopy(getGpu(), 2 * 1024 * 1024 + 1000 * 16 + 36, { maxWorkgroups: 3 });
    await checkCopy(getGpu(), 64 * 1024, { maxWorkgroups: 1 });
  });

  it('byte-range bindings', async () => {
    await checkCopy(getGpu(), 40000 + 9, { offset: 512 });
  });

  it('rejects overlapping src and dst', () => {
    const gpu = getGpu();
    const b = gpu.createBuffer(1024);
    const step = gpu.step();
    expect(() => copyBuffer(step, { src: b, dst: { buffer: b, offset: 256 }, bytes: 300 })).toThrow(/overlap/);
    b.destroy();
  });

  it('0 bytes records nothing', async () => {
    const gpu = getGpu();
    const b = gpu.createBuffer(16);
    const c = gpu.createBuffer(16);
    const step = gpu.step();
    const dispatch = vi.spyOn(step, 'dispatch');
    // empty ranges: WebGPU rejects a zero-size binding, so submit() throws if anything was recorded
    copyBuffer(step, { src: { buffer: b, offset: 0, size: 0 }, dst: { buffer: c, offset: 0, size: 0 }, bytes: 0 });
    expect(dispatch).not.toHaveBeenCalled();
    await step.submit();
    b.destroy();
    c.destroy();
  });
});

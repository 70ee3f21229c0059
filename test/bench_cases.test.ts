import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { L2_BYTES } from '../bench/case.ts';
import { CASE_FACTORIES } from '../bench/cases/index.ts';
import { weightCopies } from '../bench/cases/matmul.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { repoRoot } from '../src/gpu/paths.ts';

describe('kernel benchmark cases', () => {
  it('every bench/cases module is registered, and each lists uniquely named cases', () => {
    const modules = readdirSync(join(repoRoot, 'bench', 'cases'))
      .filter((f) => f.endsWith('.ts') && f !== 'index.ts')
      .map((f) => f.slice(0, -3).replaceAll('-', '_'))
      .sort();
    expect(Object.keys(CASE_FACTORIES).sort()).toEqual(modules);
    for (const scale of ['reduced', 'full'] as const) {
      const names = Object.values(CASE_FACTORIES).flatMap((f) => f(scale).map((c) => `${c.family} ${c.name}`));
      expect(names.length).toBeGreaterThan(50);
      expect(new Set(names).size).toBe(names.length);
    }
  });

  it('matmul weights rotate among copies that together exceed the largest L2, within the device buffer size', () => {
    const gpu = (maxBufferSize: number) => ({ limits: { minStorageBufferOffsetAlignment: 256, maxBufferSize } }) as unknown as Gpu;
    const big = 2 ** 40;
    for (const bytes of [1000, 4096, 3 << 20, 50e6, L2_BYTES - 1]) {
      const n = weightCopies(gpu(big), bytes);
      const stride = Math.ceil(bytes / 256) * 256;
      expect(n * stride).toBeGreaterThan(L2_BYTES);
      expect((n - 1) * stride).toBeLessThanOrEqual(L2_BYTES); // no more copies than needed
    }
    expect(weightCopies(gpu(big), L2_BYTES + 1)).toBe(1);
    expect(weightCopies(gpu(64 << 20), 3 << 20)).toBe(21); // as many as 64 MiB holds
  });
});

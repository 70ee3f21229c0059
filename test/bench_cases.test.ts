import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CASE_FACTORIES } from '../bench/cases/index.ts';
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
});

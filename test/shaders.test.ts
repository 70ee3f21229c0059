import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot, shaderDir } from '../src/gpu/paths.ts';
import { listCommonShaders, listShaders, shaderSource } from '../src/gpu/shaders.ts';
import { useGpu } from './helpers/gpu.ts';

const read = (dir: string) =>
  readdirSync(join(repoRoot, dir))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => ({ file: f, text: readFileSync(join(repoRoot, dir, f), 'utf8') }));

function entryPoints(source: string): string[] {
  return [...source.matchAll(/@compute[^{]*?fn\s+(\w+)/g)].map((m) => m[1]);
}

describe('every shader compiles and is covered by a test', () => {
  const getGpu = useGpu();
  const kernels = read('kernels');
  const tests = read('test');

  for (const shader of listShaders()) {
    it(`${shader}.wgsl compiles on the device (every entry point, default overrides)`, async () => {
      const gpu = getGpu();
      const source = shaderSource(shader);
      const module = gpu.device.createShaderModule({ code: source });
      const info = await module.getCompilationInfo();
      const errors = info.messages.filter((m) => m.type === 'error');
      // a variant for a device feature (enable subgroups;) must be refused where the feature is absent
      const needs = [...source.matchAll(/^enable\s+(\w+)\s*;/gm)].map((m) => m[1]).filter((f) => !gpu.device.features.has(f === 'f16' ? 'shader-f16' : f));
      if (needs.length) {
        expect(errors.length, `${shader} needs ${needs.join(', ')}, which this device lacks`).toBeGreaterThan(0);
        return;
      }
      expect(errors.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`)).toEqual([]);
      const entries = entryPoints(source);
      expect(entries.length).toBeGreaterThan(0);
      for (const entryPoint of entries) {
        await gpu.device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint } });
      }
    });

    it(`${shader}.wgsl is dispatched by a kernel module that a test imports`, () => {
      const owners = kernels.filter((k) => k.text.includes(`'${shader}'`));
      expect(owners.map((o) => o.file), `no kernels/*.ts names '${shader}'`).not.toEqual([]);
      const tested = owners.filter((o) => tests.some((t) => t.file.endsWith('.test.ts') && t.text.includes(`kernels/${o.file}`)));
      expect(tested.map((o) => o.file), `no test imports the kernel module of ${shader}`).not.toEqual([]);
    });
  }

  it('every common/ helper is included by some shader', () => {
    const kernelSources = listShaders().map((s) => readFileSync(join(shaderDir, `${s}.wgsl`), 'utf8'));
    for (const lib of listCommonShaders()) {
      const name = lib.slice('common/'.length);
      expect(kernelSources.some((src) => new RegExp(`//#include\\s+${name}\\s*$`, 'm').test(src)), lib).toBe(true);
    }
  });
});

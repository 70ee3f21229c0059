import { execFile } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';

const run = async (...args: string[]) => {
  try {
    const { stdout, stderr } = await promisify(execFile)('node', [join(repoRoot, 'bin', 'wgserve.mjs'), ...args], { cwd: repoRoot });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
};

describe('wgserve CLI', () => {
  it('--help lists every command', async () => {
    const { code, stdout } = await run('--help');
    expect(code).toBe(0);
    for (const cmd of ['doctor', 'tokenize', 'bench']) expect(stdout).toContain(cmd);
  });

  it('tokenize prints ids as JSON, BOS included, on the embedded model by default', async () => {
    const { code, stdout } = await run('tokenize', '--text', 'Once upon a time');
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toEqual([1, 403, 407, 261, 378]);
    const spm = await run('tokenize', '--model', join(repoRoot, '..', 'shared', 'models', 'llama.cpp-vocab', 'ggml-vocab-llama-spm.gguf'), '--text', 'Hello world');
    expect(JSON.parse(spm.stdout)).toEqual([1, 15043, 3186]);
  });

  it('a bad model file: a clear error and exit code 1, fast', async () => {
    const bad = join(mkdtempSync(join(tmpdir(), 'wgserve-cli-')), 'bad.gguf');
    writeFileSync(bad, 'GGUF\x03\x00\x00\x00garbage');
    const t0 = performance.now();
    const { code, stderr } = await run('tokenize', '--model', bad, '--text', 'x');
    expect(performance.now() - t0).toBeLessThan(3000); // node + tsx start-up included
    expect(code).toBe(1);
    expect(stderr).toMatch(/^wgserve: .*bad\.gguf: /);
  });

  it('doctor prints the adapter and passes its kernel check', async () => {
    const { code, stdout } = await run('doctor');
    expect(code).toBe(0);
    expect(stdout).toMatch(/adapter: /);
    expect(stdout).toMatch(/kernel: .* ok/);
  });
});

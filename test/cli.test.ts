import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { continuesReference, STORIES_PROMPT } from './helpers/stories.ts';
import { useTmpDirs } from './helpers/tmp.ts';

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
  const tmpDir = useTmpDirs('wgserve-cli-');

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

  it('a bad model file: a clear error and exit code 1', async () => {
    const bad = join(tmpDir(), 'bad.gguf');
    writeFileSync(bad, 'GGUF\x03\x00\x00\x00garbage');
    const { code, stderr } = await run('tokenize', '--model', bad, '--text', 'x');
    expect(code).toBe(1);
    expect(stderr).toMatch(/^wgserve: .*bad\.gguf: /);
  });

  it('generate: greedy continuation of the embedded model on stdout, speeds on stderr', async () => {
    const { code, stdout, stderr } = await run('generate', '--prompt', STORIES_PROMPT, '--max-tokens', '20', '--temperature', '0');
    expect(code).toBe(0);
    expect(stdout.trimEnd().length).toBeGreaterThan(50);
    expect(continuesReference(stdout.trimEnd())).toBe(true);
    expect(stderr).toMatch(/load .* s \| prefill 5 tokens, .* tokens\/s \| decode 20 tokens, .* tokens\/s/);
  });

  it('generate with corrupt model files: a clear error and exit code 1', async () => {
    const dir = tmpDir();
    const original = readFileSync(join(repoRoot, 'models', 'stories260K', 'stories260K.gguf'));
    const files: [string, Uint8Array, RegExp][] = [
      ['truncated.gguf', original.subarray(0, original.length / 2), /truncated/],
      ['magic.gguf', Buffer.concat([Buffer.from('XXXX'), original.subarray(4)]), /not a GGUF file/],
      ['huge.gguf', (() => { const b = Buffer.from(original); b.writeBigUInt64LE(1n << 62n, 8); return b; })(), /malformed GGUF header/],
    ];
    for (const [name, bytes, message] of files) {
      writeFileSync(join(dir, name), bytes);
      const { code, stderr } = await run('generate', '--model', join(dir, name), '--prompt', 'x', '--max-tokens', '1');
      expect(code, name).toBe(1);
      expect(stderr, name).toMatch(message);
    }
  });

  it('rejects bad option values', async () => {
    const { code, stderr } = await run('generate', '--prompt', 'x', '--top-p', '1.5');
    expect(code).toBe(1);
    expect(stderr).toMatch(/--top-p must be a number in \[0, 1\]/);
  });

  it('doctor prints the adapter and passes its kernel check', async () => {
    const { code, stdout } = await run('doctor');
    expect(code).toBe(0);
    expect(stdout).toMatch(/adapter: /);
    expect(stdout).toMatch(/kernel: .* ok/);
  });
});

import { writeFileSync, readFileSync, mkdtempSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import { openModel } from '../src/model/source.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');

function f32Weights(tensors: Awaited<ReturnType<typeof openModel>>['tensors']): CpuWeights {
  const w: CpuWeights = new Map();
  for (const t of tensors.values()) {
    const b = t.read();
    w.set(t.name, new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4));
  }
  return w;
}

describe('model sources', () => {
  it('the llama2.c checkpoint and the GGUF file are the same model', async () => {
    const bin = await openModel(join(STORIES, 'stories260K.bin'));
    const gguf = await openModel(join(STORIES, 'stories260K.gguf'));
    expect(bin.format).toBe('llama2c');
    expect(bin.config).toMatchObject({ dim: 64, ffn: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512 });
    const tokens = gguf.tokenizer.encode('Once upon a time, there was');
    expect(bin.tokenizer.encode('Once upon a time, there was')).toEqual(tokens);
    const a = cpuForward(bin.config, f32Weights(bin.tensors), tokens);
    const b = cpuForward(gguf.config, f32Weights(gguf.tensors), tokens);
    // same fp32 weights, same float64 arithmetic: only rms eps (1e-5 vs the GGUF's f32-rounded 1e-5) differs
    for (let t = 0; t < tokens.length; t++) for (let v = 0; v < 512; v++) expect(Math.abs(a[t][v] - b[t][v])).toBeLessThan(1e-4);
  });

  it('clear errors: missing file, truncated checkpoint, missing tokenizer', async () => {
    await expect(openModel('/nonexistent/model.gguf')).rejects.toThrow(/model file not found/);
    const dir = mkdtempSync(join(tmpdir(), 'wgserve-l2c-'));
    const cut = join(dir, 'cut.bin');
    writeFileSync(cut, readFileSync(join(STORIES, 'stories260K.bin')).subarray(0, 50_000));
    copyFileSync(join(STORIES, 'tok512.bin'), join(dir, 'tok512.bin'));
    await expect(openModel(cut)).rejects.toThrow(/cut\.bin: truncated: tensor "token_embd\.weight" needs bytes 28\.\.131100/);
    const lonely = mkdtempSync(join(tmpdir(), 'wgserve-l2c-'));
    copyFileSync(join(STORIES, 'stories260K.bin'), join(lonely, 'm.bin'));
    await expect(openModel(join(lonely, 'm.bin'))).rejects.toThrow(/without a tokenizer/);
  });
});

import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { openModel } from '../src/model/source.ts';
import { UNIT_ROUNDOFF, cpuLogits, relativeLogitError, roundingTolerance } from './helpers/logits.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');

describe('model sources', () => {
  const tempDir = useTmpDirs('wgserve-l2c-');

  it('the llama2.c checkpoint and the GGUF file are the same model', async () => {
    const bin = await openModel(join(STORIES, 'stories260K.bin'));
    const gguf = await openModel(join(STORIES, 'stories260K.gguf'));
    expect(bin.format).toBe('llama2c');
    expect(bin.config).toMatchObject({ dim: 64, ffn: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512 });
    const tokens = gguf.tokenizer.encode('Once upon a time, there was');
    expect(bin.tokenizer.encode('Once upon a time, there was')).toEqual(tokens);
    // Same f32 weights, same float64 oracle; only rms eps differs: 1e-5 in the checkpoint's
    // config, the f32-rounded 1e-5 in the GGUF (a relative difference δ = 2.5e-9). Each RMSNorm
    // scale (ms + eps)^-1/2 then moves by at most δ/2 relative, and 2·nLayers + 1 norms lie on
    // the path; with float64 rounding the bound is 1.4e-8. Measured: 1.3e-12.
    const δ = Math.abs(bin.config.rmsEps - gguf.config.rmsEps) / gguf.config.rmsEps;
    const bound = ((2 * bin.config.nLayers + 1) * δ) / 2 + roundingTolerance(bin.config, tokens.length, UNIT_ROUNDOFF.f64);
    expect(relativeLogitError(cpuLogits(bin, tokens), cpuLogits(gguf, tokens))).toBeLessThan(bound);
  });

  it('clear errors: missing file, truncated checkpoint, missing tokenizer', async () => {
    await expect(openModel('/nonexistent/model.gguf')).rejects.toThrow(/model file not found/);
    const dir = tempDir();
    const cut = join(dir, 'cut.bin');
    writeFileSync(cut, readFileSync(join(STORIES, 'stories260K.bin')).subarray(0, 50_000));
    copyFileSync(join(STORIES, 'tok512.bin'), join(dir, 'tok512.bin'));
    await expect(openModel(cut)).rejects.toThrow(/cut\.bin: truncated: tensor "token_embd\.weight" needs bytes 28\.\.131100/);
    const lonely = tempDir();
    copyFileSync(join(STORIES, 'stories260K.bin'), join(lonely, 'm.bin'));
    await expect(openModel(join(lonely, 'm.bin'))).rejects.toThrow(/without a tokenizer/);
  });
});

import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import type { SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { useGpu } from './helpers/gpu.ts';
import { continuesReference, STORIES_PROMPT } from './helpers/stories.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');
const greedy = (maxTokens: number, stop: string[] = []): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop });

describe('generation on the GPU', () => {
  const getGpu = useGpu();
  const load = async (file: string): Promise<{ src: ModelSource; model: GpuModel }> => {
    const src = await openModel(join(STORIES, file));
    return { src, model: GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 }) };
  };

  for (const [file, n] of [
    ['stories260K.gguf', 60],
    ['stories260K.bin', 30],
    ['stories260K-F16.gguf', 30],
    ['stories260K-Q8_0.gguf', 30],
  ] as const) {
    it(`${file}: greedy continuation is a prefix of llama2.c's (${n} tokens)`, async () => {
      const { src, model } = await load(file);
      const { results } = await generate(model, src.tokenizer, [{ tokens: src.tokenizer.encode(STORIES_PROMPT), options: greedy(n) }]);
      expect(results[0].tokens.length).toBe(n);
      expect(continuesReference(results[0].text)).toBe(true);
      expect(model.kv.pool.used).toBe(0); // finished sequences give their KV back
      model.destroy();
    });
  }

  it('batch invariance: the same greedy output alone, batched with 7 others, and with chunked prefill', async () => {
    const { src, model } = await load('stories260K.gguf');
    const prompts = ['Once upon a time', 'The cat', 'Lily and Ben went to the park to play with a ball', 'One day', 'Tom had a red', 'She was', 'A little bird flew over the big tree and saw', 'Mom said'];
    const tok = (p: string) => src.tokenizer.encode(p);
    const alone = await generate(model, src.tokenizer, [{ tokens: tok(prompts[2]), options: greedy(16) }]);
    const batched = await generate(model, src.tokenizer, prompts.map((p) => ({ tokens: tok(p), options: greedy(16) })));
    const chunked = await generate(model, src.tokenizer, [{ tokens: tok(prompts[2]), options: greedy(16) }], { tokenBudget: 3 });
    expect(batched.results[2].tokens).toEqual(alone.results[0].tokens);
    expect(chunked.results[0].tokens).toEqual(alone.results[0].tokens);
    // every batched sequence produced text of its own
    expect(new Set(batched.results.map((r) => r.text)).size).toBe(prompts.length);
    model.destroy();
  });

  it('sampling: same seed, same output; stop strings end generation and are not emitted', async () => {
    const { src, model } = await load('stories260K.gguf');
    const tokens = src.tokenizer.encode('Once upon a time');
    const hot = (seed: number): SamplingOptions => ({ maxTokens: 12, temperature: 1, topK: 40, topP: 0.95, seed, stop: [] });
    const runs = await generate(model, src.tokenizer, [hot(7), hot(7), hot(8), hot(9)].map((options) => ({ tokens, options })));
    expect(runs.results[1].tokens).toEqual(runs.results[0].tokens);
    expect(new Set(runs.results.map((r) => r.tokens.join())).size).toBeGreaterThan(1);

    const stopped = await generate(model, src.tokenizer, [{ tokens, options: greedy(40, [' Lily.']) }]);
    expect(stopped.results[0]).toMatchObject({ text: ', there was a little girl named', finishReason: 'stop' });
    const limited = await generate(model, src.tokenizer, [{ tokens, options: greedy(3) }]);
    expect(limited.results[0]).toMatchObject({ finishReason: 'length' });
    expect(limited.results[0].tokens.length).toBe(3);
    await expect(generate(model, src.tokenizer, [{ tokens: [], options: greedy(3) }])).rejects.toThrow(/prompt is empty/);
    await expect(generate(model, src.tokenizer, [{ tokens, options: greedy(5000) }])).rejects.toThrow(/exceeds the context length/);
    model.destroy();
  });
});

import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Engine, QueueFullError, RequestTooLargeError, type SamplingOptions, type StepStats } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { useGpu } from './helpers/gpu.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });
const BLOCK = 2 * 5 * 16 * 8 * 4; // bytes of one KV block of stories260K at block size 16

describe('engine', () => {
  const getGpu = useGpu();

  it('preempts when the KV pool runs out and still gives every sequence its own greedy output', async () => {
    const src = await openModel(STORIES);
    const prompts = ['Once upon a time', 'The little dog', 'Tom and Sue', 'One day a bird'].map((p) => src.tokenizer.encode(p));
    // with room for all (batching does not change greedy outputs: see generate.test.ts)
    const roomy = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const alone = (await generate(roomy, src.tokenizer, prompts.map((tokens) => ({ tokens, options: greedy(14) })))).results.map((r) => r.tokens);
    roomy.destroy();

    // 12 blocks: a sequence takes one block per KV head (4) until 16 tokens, then 8; four such cannot all stay
    const tight = GpuModel.load(getGpu(), src, { kvMemoryBytes: 12 * BLOCK });
    const engine = new Engine(tight, src.tokenizer);
    const steps: StepStats[] = [];
    engine.onStep = (s) => steps.push(s);
    const outputs = await Promise.all(
      prompts.map(
        (p) =>
          new Promise<number[]>((resolve, reject) => {
            const tokens: number[] = [];
            engine.submit({ prompt: p, sampling: greedy(14), events: { onToken: (e) => tokens.push(e.token), onFinish: (_r, _u, err) => (err ? reject(err) : resolve(tokens)) } });
          }),
      ),
    );
    expect(engine.counters.preemptions).toBeGreaterThan(0);
    // every step reports its batch shape and its loop period (compute plus host work, never less);
    // a step's report follows its tokens by one turn of the event loop
    await engine.idle();
    expect(steps.length).toBe(engine.counters.steps);
    for (const s of steps) {
      expect(s.shape.prefillTokens + s.shape.decodeSeqs).toBe(s.promptTokens + s.decodeTokens);
      expect(s.periodSeconds).toBeGreaterThanOrEqual(s.seconds);
    }
    expect(steps.reduce((n, s) => n + s.shape.prefillTokens, 0)).toBeGreaterThan(prompts.reduce((n, p) => n + p.length, 0)); // recomputes after preemption
    expect(outputs).toEqual(alone);
    expect(tight.kv.pool.used).toBe(0);
    tight.destroy();
  });

  it('a cancelled sequence stops and frees its KV at the next step; others go on', async () => {
    const src = await openModel(STORIES);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    const reasons: string[] = [];
    let tokensOfCancelled = 0;
    const handle = engine.submit({
      prompt: src.tokenizer.encode('Once upon a time'),
      sampling: greedy(200),
      events: {
        onToken: () => {
          if (++tokensOfCancelled === 3) handle.cancel();
        },
        onFinish: (r) => reasons.push(`a:${r}`),
      },
    });
    engine.submit({ prompt: src.tokenizer.encode('The cat'), sampling: greedy(10), events: { onFinish: (r) => reasons.push(`b:${r}`) } });
    await engine.idle();
    expect(reasons.sort()).toEqual(['a:cancelled', 'b:length']);
    expect(tokensOfCancelled).toBe(3);
    expect(model.kv.pool.used).toBe(0);
    model.destroy();
  });

  it('refuses what can never run, and more than the waiting queue holds', async () => {
    const src = await openModel(STORIES);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 8 * BLOCK });
    const engine = new Engine(model, src.tokenizer, { maxWaiting: 2 });
    expect(() => engine.submit({ prompt: [], sampling: greedy(1) })).toThrow(RequestTooLargeError);
    expect(() => engine.submit({ prompt: [1, 99999], sampling: greedy(1) })).toThrow(/outside the vocabulary/);
    expect(() => engine.submit({ prompt: [1], sampling: greedy(3000) })).toThrow(/exceeds the context length of 2048 tokens/);
    expect(() => engine.submit({ prompt: [1], sampling: greedy(40) })).toThrow(/needs more KV cache than the server has/);
    engine.submit({ prompt: [1, 403], sampling: greedy(2) });
    engine.submit({ prompt: [1, 403], sampling: greedy(2) });
    expect(() => engine.submit({ prompt: [1, 403], sampling: greedy(2) })).toThrow(QueueFullError);
    await engine.idle();
    model.destroy();
  });

  it('logprobs: the chosen token and the top alternatives, most likely first', async () => {
    const src = await openModel(STORIES);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    const events: { token: number; logprob?: number; topLogprobs?: { token: number; logprob: number }[] }[] = [];
    engine.submit({ prompt: src.tokenizer.encode('Once upon a time'), sampling: { ...greedy(4), logprobs: 3 }, events: { onToken: (e) => events.push(e) } });
    await engine.idle();
    expect(events).toHaveLength(4);
    for (const e of events) {
      expect(e.topLogprobs).toHaveLength(3);
      expect(e.topLogprobs![0].token).toBe(e.token); // greedy picks the most likely token
      expect(e.logprob).toBeCloseTo(e.topLogprobs![0].logprob, 6);
      expect(e.logprob!).toBeLessThanOrEqual(0);
      expect(e.topLogprobs![1].logprob).toBeLessThanOrEqual(e.topLogprobs![0].logprob);
    }
    model.destroy();
  });
});

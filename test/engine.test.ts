import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Engine, QueueFullError, RequestTooLargeError, type SamplingOptions, type StepStats, type TokenEvent } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, oracleGreedy } from './helpers/logits.ts';

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
    // submitted in one turn of the event loop, the prompts run together: 3 fit in 12 blocks at once
    expect(Math.max(...steps.map((s) => s.shape.decodeSeqs))).toBe(3);
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

  it('logprobs are the log-softmax of the float64 CPU logits; asked for all of them, they sum to 1', async () => {
    const src = await openModel(STORIES);
    const V = src.config.vocabSize;
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    const run = (text: string, logprobs: number) => {
      const prompt = src.tokenizer.encode(text);
      const events: TokenEvent[] = [];
      engine.submit({ prompt, sampling: { ...greedy(4), logprobs }, events: { onToken: (e) => events.push(e) } });
      return { prompt, logprobs, events };
    };
    // batched: each sequence must get its own row of logits; one asks for the whole distribution
    const runs = [run('Once upon a time', V), run('The little dog', 3)];
    await engine.idle();
    model.destroy();
    for (const { prompt, logprobs, events } of runs) {
      // oracle.tolerance 1.2e-4 and 9.5e-5 (measured 5.5e-6 and 5.0e-6); the oracle's top two differ
      // by >= 0.28 at every step, so greedy picks the same tokens; a logZ taken as the max logit
      // would be off by -log(p of the top token) >= 7.8e-4
      const oracle = oracleGreedy(src, prompt, 4);
      expect(events.map((e) => e.token)).toEqual(oracle.tokens);
      events.forEach((e, i) => {
        const lp = oracle.logprobs[i];
        const top = e.topLogprobs!;
        expect(top).toHaveLength(logprobs);
        expect(Math.abs(e.logprob! - lp[e.token])).toBeLessThanOrEqual(oracle.tolerance);
        for (const a of top) expect(Math.abs(a.logprob - lp[a.token]), `token ${a.token}`).toBeLessThanOrEqual(oracle.tolerance);
        for (let j = 1; j < top.length; j++) expect(top[j].logprob).toBeLessThanOrEqual(top[j - 1].logprob);
        // nothing the oracle ranks clearly above the last alternative was left out
        const nth = [...lp].sort((a, b) => b - a)[logprobs - 1];
        expect(top.at(-1)!.logprob).toBeGreaterThanOrEqual(nth - oracle.tolerance);
        if (logprobs === V) {
          expect(new Set(top.map((a) => a.token)).size).toBe(V);
          // logsumexp of the whole distribution is 0: float64 sums of V terms in the engine and
          // here, each within V·2^-53 relative: bound 1.1e-13, measured 2.5e-15
          const max = top[0].logprob;
          const lse = max + Math.log(top.reduce((s, a) => s + Math.exp(a.logprob - max), 0));
          expect(Math.abs(lse)).toBeLessThanOrEqual(2 * V * UNIT_ROUNDOFF.f64);
        }
      });
    }
  });
});

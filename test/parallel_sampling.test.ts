import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type FinishReason, type SamplingOptions, type Usage, choiceSeed } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { BlockPool } from '../src/kv/block_pool.ts';
import { PagedKvTables } from '../src/kv/paged_kv.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, cpuLogits, logSoftmax, maxAbs, roundingTolerance } from './helpers/logits.ts';

/**
 * n > 1 (and best_of): a request's choices share its prompt's KV blocks. The expectations are
 * independent of the fork: requests of one choice with the derived seeds, the float64 CPU
 * oracle's logprobs, and block counts derived by hand from the prompt length and block size.
 */
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';
/** bytes of one KV block of stories260K (2 x 5 layers x 16 tokens x headDim 8 x f32) */
const BLOCK = 2 * 5 * 16 * 8 * 4;
const BLOCK_TOKENS = 16;
/**
 * 41 tokens: two whole blocks (32 tokens) the choices share, then 9 tokens in a partly filled
 * block that each choice computes for itself (and writes its first generated tokens after).
 */
const PROMPT = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her big red ball. One day';
const PROMPT_TOKENS = 41;
const SHARED_TOKENS = 32;
const MAX_TOKENS = 20;
const SEED = 1234;
const sampled = (seed: number): SamplingOptions => ({ maxTokens: MAX_TOKENS, temperature: 1, topK: 0, topP: 1, seed, stop: [], logprobs: 1 });

interface ChoiceOut {
  tokens: number[];
  logprobs: number[];
  reason?: FinishReason;
  usage?: Usage;
}

/** Submits one request of `n` choices; `outs[i]` fills with choice i's tokens and finish. */
function submitChoices(engine: Engine, prompt: number[], sampling: SamplingOptions, n: number) {
  const outs: ChoiceOut[] = Array.from({ length: n }, () => ({ tokens: [], logprobs: [] }));
  const handle = engine.submit({
    prompt,
    sampling,
    choices: outs.map((o) => ({
      onToken: (e) => {
        o.tokens.push(e.token);
        o.logprobs.push(e.logprob!);
      },
      onFinish: (reason, usage) => Object.assign(o, { reason, usage }),
    })),
  });
  return { handle, outs };
}

describe('choice seeds', () => {
  it('are seed + i, wrapping past 2^53 - 1 to -(2^53 - 1) so that they stay distinct safe integers', () => {
    const MAX = Number.MAX_SAFE_INTEGER;
    expect([0, 1, 2].map((i) => choiceSeed(SEED, i))).toEqual([SEED, SEED + 1, SEED + 2]);
    expect(choiceSeed(-3, 2)).toBe(-1);
    expect([0, 1, 2, 3].map((i) => choiceSeed(MAX - 1, i))).toEqual([MAX - 1, MAX, -MAX, -MAX + 1]);
    const wrapped = Array.from({ length: 128 }, (_, i) => choiceSeed(MAX - 5, i));
    expect(new Set(wrapped).size).toBe(128);
    for (const x of wrapped) expect(Number.isSafeInteger(x)).toBe(true);
  });
});

describe('block pool and tables: shared blocks', () => {
  const layout = { nLayers: 1, nKvHeads: 2, headDim: 4, blockSize: 4, bytesPerElement: 4 };

  it('a fork shares whole blocks, counted once and free only when the last holder gives them back', () => {
    const kv = new PagedKvTables(layout, 20);
    kv.append(1, 10); // 3 blocks per head row: 6
    kv.fork(1, 2, 8); // the 2 full blocks per head row
    expect(kv.pool.used).toBe(6);
    // what freeing returns: the parent holds 1 block per row alone, the child none
    expect(kv.blocksHeld(1)).toBe(2);
    expect(kv.blocksHeld(2)).toBe(0);
    const parent = kv.slotsOf(1);
    const child = kv.slotsOf(2);
    expect(Array.from(child)).toEqual(Array.from(parent.subarray(0, 8 * 2))); // tokens 0..7 at the same slots
    // the child's next tokens go to a block of its own per head row, not into the parent's third block
    const next = kv.append(2, 3);
    expect(kv.pool.used).toBe(8);
    for (const s of next) expect(parent.includes(s)).toBe(false);
    kv.free(1);
    expect(kv.pool.used).toBe(6); // the parent's own blocks only: the shared ones stay with the child
    expect(Array.from(kv.slotsOf(2).subarray(0, 16))).toEqual(Array.from(parent.subarray(0, 16)));
    kv.free(2);
    expect(kv.pool.used).toBe(0);
  });

  it('refuses to share a partly filled block, to write into a shared one, or to give a block back twice', () => {
    const kv = new PagedKvTables(layout, 20);
    kv.append(1, 10);
    expect(() => kv.fork(1, 2, 10)).toThrow(/not whole blocks/);
    expect(() => kv.fork(1, 2, 12)).toThrow(/not whole blocks/);
    kv.fork(1, 2, 8);
    kv.truncate(2, 6); // now its last block is shared and partly filled
    expect(() => kv.append(2, 1)).toThrow(/shared KV block/);
    const pool = new BlockPool(2);
    const b = pool.take(1)!;
    pool.give(b);
    expect(() => pool.give(b)).toThrow(/given back while free/);
  });
});

describe('choices on the engine', () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let prompt: number[];
  /** choice i alone: a request of one choice with seed choiceSeed(SEED, i) */
  let alone: ChoiceOut[];

  beforeAll(async () => {
    src = await openModel(STORIES);
    prompt = src.tokenizer.encode(PROMPT);
    expect(prompt.length).toBe(PROMPT_TOKENS);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    alone = [0, 1, 2].map((i) => submitChoices(engine, prompt, sampled(choiceSeed(SEED, i)), 1).outs[0]);
    await engine.idle();
    model.destroy();
  });

  /**
   * Each choice's logprobs against the float64 oracle run on the choice's own tokens: a choice
   * reading another's KV (a block written by two sequences) would be off by far more. Bound:
   * 2 x roundingTolerance x the largest |logit| (see OracleGreedy.tolerance), 1.2e-4 to 1.3e-4
   * here; measured at most 3.0e-6.
   */
  const expectOracleLogprobs = (out: ChoiceOut, label: string) => {
    const rows = cpuLogits(src, [...prompt, ...out.tokens]).slice(prompt.length - 1, -1);
    const tolerance = 2 * roundingTolerance(src.config, prompt.length + out.tokens.length, UNIT_ROUNDOFF.f32) * maxAbs(rows);
    out.tokens.forEach((t, j) => expect(Math.abs(out.logprobs[j] - logSoftmax(rows[j])[t]), `${label} token ${j}`).toBeLessThanOrEqual(tolerance));
  };

  it('n = 3 with a seed: choice i is what a request with seed + i gives; the forks share the prompt’s whole blocks', async () => {
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    // serial steps: a pipelined step appends the next token's KV before this step's onStep, one row
    // ahead of the tokens counted here
    const engine = new Engine(model, src.tokenizer, { pipeline: false });
    const { nKvHeads } = src.config;
    const { outs } = submitChoices(engine, prompt, sampled(SEED), 3);
    // blocks in use after each step in which all three choices decode, and what they should be:
    // per KV head, the shared blocks once plus each choice's blocks past them (a choice that has
    // generated g tokens holds the KV of prompt + g - 1)
    const checked: { used: number; shared: number; separate: number }[] = [];
    engine.onStep = () => {
      if (!outs.every((o) => o.tokens.length > 0 && !o.reason)) return;
      const blocks = outs.map((o) => Math.ceil((PROMPT_TOKENS + o.tokens.length - 1) / BLOCK_TOKENS));
      checked.push({
        used: model.kv.pool.used,
        shared: nKvHeads * (SHARED_TOKENS / BLOCK_TOKENS + blocks.reduce((n, b) => n + b - SHARED_TOKENS / BLOCK_TOKENS, 0)),
        separate: nKvHeads * blocks.reduce((n, b) => n + b, 0),
      });
    };
    await engine.idle();
    expect(checked.length).toBeGreaterThan(MAX_TOKENS / 2);
    for (const c of checked) {
      expect(c.used).toBe(c.shared);
      expect(c.used).toBe(c.separate - 2 * nKvHeads * (SHARED_TOKENS / BLOCK_TOKENS)); // two forks' copies of the shared prefix saved
    }
    expect(model.kv.pool.used).toBe(0);
    // tokens compared exactly: the same seed and counter draw the same token from the same logits,
    // and the logits do not depend on the batch here (measured: this run's logprobs equal the
    // n = 1 runs' bit for bit)
    outs.forEach((o, i) => {
      expect(o.tokens, `choice ${i}`).toEqual(alone[i].tokens);
      expect(o.reason, `choice ${i}`).toBe(alone[i].reason);
      expect(o.usage, `choice ${i}`).toEqual(alone[i].usage);
      expectOracleLogprobs(o, `choice ${i}`);
    });
    // different seeds, different choices
    expect(new Set(outs.map((o) => o.tokens.join())).size).toBe(3);
    model.destroy();
  });

  it('preempting a fork frees only its own blocks: outputs unchanged in a pool too small for all three', async () => {
    // 20 blocks: one choice needs at most 4 per KV head (prompt + 20 tokens = 61 tokens), the
    // three together 4 x (2 shared + 3 x 2) = 32
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 20 * BLOCK });
    const engine = new Engine(model, src.tokenizer);
    const { outs } = submitChoices(engine, prompt, sampled(SEED), 3);
    await engine.idle();
    expect(engine.counters.preemptions).toBeGreaterThan(0);
    outs.forEach((o, i) => {
      expect(o.tokens, `choice ${i}`).toEqual(alone[i].tokens);
      expectOracleLogprobs(o, `choice ${i}`);
    });
    expect(model.kv.pool.used).toBe(0);
    model.destroy();
  });

  it('cancelling the request cancels every choice, started or not, and frees all their blocks', async () => {
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer);
    // before the prompt is computed (the other choices have not forked yet)
    const early = submitChoices(engine, prompt, sampled(SEED), 3);
    early.handle.cancel();
    // after a few tokens of every choice
    const late = submitChoices(engine, prompt, sampled(SEED), 3);
    engine.onStep = () => {
      if (late.outs.every((o) => o.tokens.length >= 2)) late.handle.cancel();
    };
    await engine.idle();
    expect(early.outs.map((o) => [o.reason, o.tokens.length])).toEqual([0, 1, 2].map(() => ['cancelled', 0]));
    expect(late.outs.map((o) => o.reason)).toEqual(['cancelled', 'cancelled', 'cancelled']);
    for (const o of late.outs) expect(o.tokens.length).toBeLessThan(MAX_TOKENS);
    expect(model.kv.pool.used).toBe(0);
    model.destroy();
  });
});

describe('n and best_of over HTTP', () => {
  const getGpu = useGpu();
  let model: GpuModel;
  let server: WgServer & { url: string };
  let client: OpenAI;

  beforeAll(async () => {
    const src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    server = await startServer({ engine: new Engine(model, src.tokenizer), modelId: MODEL, port: 0, processMetrics: false });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  const params = { model: MODEL, prompt: PROMPT, max_tokens: 10, temperature: 1, seed: SEED };
  const chatParams = { model: MODEL, messages: [{ role: 'user' as const, content: 'Tell me a story.' }], max_tokens: 8, temperature: 1, seed: SEED };

  it('n = 3: choice i is the n = 1 answer with seed + i; usage counts the prompt once and every choice’s tokens', async () => {
    const [many, ...ones] = await Promise.all([
      client.completions.create({ ...params, n: 3 }),
      ...[0, 1, 2].map((i) => client.completions.create({ ...params, seed: SEED + i })),
    ]);
    expect(many.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(many.choices.map((c) => [c.text, c.finish_reason])).toEqual(ones.map((o) => [o.choices[0].text, o.choices[0].finish_reason]));
    expect(new Set(many.choices.map((c) => c.text)).size).toBe(3);
    expect(many.usage).toEqual({
      prompt_tokens: PROMPT_TOKENS,
      completion_tokens: ones.reduce((n, o) => n + o.usage!.completion_tokens, 0),
      total_tokens: PROMPT_TOKENS + ones.reduce((n, o) => n + o.usage!.completion_tokens, 0),
    });
  });

  it('chat with n = 2: choice i is the n = 1 reply with seed + i', async () => {
    const [chat, ...chatOnes] = await Promise.all([
      client.chat.completions.create({ ...chatParams, n: 2 }),
      ...[0, 1].map((i) => client.chat.completions.create({ ...chatParams, seed: SEED + i })),
    ]);
    expect(chat.choices.map((c) => [c.index, c.message.content, c.finish_reason])).toEqual(chatOnes.map((o, i) => [i, o.choices[0].message.content, o.choices[0].finish_reason]));
    expect(chat.usage!.completion_tokens).toBe(chatOnes.reduce((n, o) => n + o.usage!.completion_tokens, 0));
  });

  it('streamed, every chunk carries its choice’s index and each choice gets one finish of its own', async () => {
    // choice 1 meets the stop string (its last token then has no text: its finish needs a chunk of
    // its own) while the others go on in the same steps
    const stopping = { ...params, n: 3, stop: [' doll'] };
    const whole = await client.completions.create(stopping);
    expect(whole.choices.map((c) => c.finish_reason)).toEqual(['length', 'stop', 'length']);
    const chunks = [];
    for await (const c of await client.completions.create({ ...stopping, stream: true, stream_options: { include_usage: true } })) chunks.push(c);
    const usage = chunks.pop()!;
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual(whole.usage);
    const texts = ['', '', ''];
    const finishes: (string | null)[][] = [[], [], []];
    for (const c of chunks) {
      expect(c.choices).toHaveLength(1);
      const { index, text, finish_reason } = c.choices[0];
      expect(finishes[index].at(-1) ?? null, `choice ${index}: a chunk after its finish`).toBeNull();
      texts[index] += text;
      finishes[index].push(finish_reason);
    }
    expect(texts).toEqual(whole.choices.map((c) => c.text));
    expect(finishes.map((f) => f.filter((r) => r !== null))).toEqual(whole.choices.map((c) => [c.finish_reason]));

    // chat: a role chunk per choice first
    const chatChunks = [];
    for await (const c of await client.chat.completions.create({ ...chatParams, n: 2, stream: true })) chatChunks.push(c);
    expect(chatChunks.slice(0, 2).map((c) => [c.choices[0].index, c.choices[0].delta.role])).toEqual([
      [0, 'assistant'],
      [1, 'assistant'],
    ]);
    expect(chatChunks.filter((c) => c.choices[0].finish_reason !== null).map((c) => c.choices[0].index).sort()).toEqual([0, 1]);
  });

  it('best_of returns the n candidates with the highest cumulative logprob, best first', async () => {
    // all four candidates with their logprobs (best_of = n: no ranking, the engine's order)
    const all = await client.completions.create({ ...params, n: 4, best_of: 4, logprobs: 0 });
    const ranked = all.choices.map((c) => ({ text: c.text, logprobs: c.logprobs!.token_logprobs!, sum: c.logprobs!.token_logprobs!.reduce((s, x) => s + x, 0) })).sort((a, b) => b.sum - a.sum);
    const best = await client.completions.create({ ...params, n: 2, best_of: 4, logprobs: 0 });
    expect(best.choices.map((c) => [c.index, c.text, c.logprobs!.token_logprobs])).toEqual(ranked.slice(0, 2).map((r, i) => [i, r.text, r.logprobs]));
    // not simply the first two candidates, so the ranking is what picked them
    expect(ranked.slice(0, 2).map((r) => r.text)).not.toEqual(all.choices.slice(0, 2).map((c) => c.text));
    // without logprobs asked: the same choices, logprobs null; usage counts the returned choices
    const plain = await client.completions.create({ ...params, n: 2, best_of: 4 });
    expect(plain.choices.map((c) => [c.text, c.logprobs])).toEqual(ranked.slice(0, 2).map((r) => [r.text, null]));
    expect(plain.usage!.completion_tokens).toBe(best.usage!.completion_tokens);
  });

  it('invalid n and best_of get a 400 in OpenAI’s error shape', async () => {
    const cases: [string, Record<string, unknown>, string, string][] = [
      ['n = 0', { n: 0 }, 'n', 'integer_below_min_value'],
      ['n above 128', { n: 129 }, 'n', 'integer_above_max_value'],
      ['n a string', { n: '2' }, 'n', 'invalid_type'],
      ['n not an integer', { n: 1.5 }, 'n', 'invalid_type'],
      ['best_of below n', { n: 3, best_of: 2 }, 'best_of', 'invalid_value'],
      ['best_of above 128', { best_of: 129 }, 'best_of', 'integer_above_max_value'],
      ['best_of > n streamed', { n: 1, best_of: 2, stream: true }, 'best_of', 'unsupported_value'],
    ];
    for (const [what, extra, param, code] of cases) {
      const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...params, ...extra }) });
      expect(res.status, what).toBe(400);
      expect(await res.json(), what).toEqual({ error: { message: expect.any(String), type: 'invalid_request_error', param, code } });
    }
  });
});

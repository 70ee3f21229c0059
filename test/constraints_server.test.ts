import { join } from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compileGuide } from '../src/constraints/guide.ts';
import { Engine, type SamplingOptions } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { decode } from '../src/model/tokenizer/index.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { useGpu } from './helpers/gpu.ts';
import { post, readSse } from './helpers/http.ts';

// Structured output end to end (issue 12): OpenAI / vLLM fields -> guide -> token automaton ->
// masks and state updates inside the GPU step. stories260K on SwiftShader: ~0.1-0.2 s a decode step,
// so outputs are kept short and batched (n) where possible.
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';
const PROMPT = 'Once upon a time';

interface Choice {
  text: string;
  finish_reason: string;
  logprobs?: { tokens: string[]; top_logprobs: Record<string, number>[] } | null;
}

describe('structured output through the OpenAI API', () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let model: GpuModel;
  let engine: Engine;
  let server: WgServer & { url: string };

  beforeAll(async () => {
    src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    engine = new Engine(model, src.tokenizer);
    server = await startServer({ engine, modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false });
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  const complete = async (body: Record<string, unknown>) => {
    const res = await post(server.url, '/v1/completions', { model: MODEL, prompt: PROMPT, ...body });
    const json = (await res.json()) as { choices: Choice[]; error?: { param: string; code: string; message: string } };
    return { status: res.status, ...json };
  };

  it('guided_choice: every choice, greedy or sampled, is one of the strings, ended by the constraint', async () => {
    const choices = ['cat', 'dog', 'a red bird', 'the sun'];
    const greedy = await complete({ guided_choice: choices, max_tokens: 20, temperature: 0 });
    expect(greedy.status).toBe(200);
    const sampled = await complete({ guided_choice: choices, max_tokens: 20, temperature: 1.5, n: 4, seed: 7 });
    expect(sampled.status).toBe(200);
    for (const c of [...greedy.choices, ...sampled.choices]) {
      expect(choices).toContain(c.text);
      expect(c.finish_reason).toBe('stop');
    }
  });

  it('guided_regex: sampled outputs fully match; streamed too', async () => {
    const pattern = '[a-z]{1,6}( [a-z]{1,6}){0,2}\\.';
    const full = new RegExp(`^(?:${pattern})$`);
    const r = await complete({ guided_regex: pattern, max_tokens: 40, temperature: 1.2, n: 3, seed: 11 });
    expect(r.status).toBe(200);
    for (const c of r.choices) expect(c.text, JSON.stringify(c)).toMatch(full);
    const res = await post(server.url, '/v1/completions', { model: MODEL, prompt: PROMPT, guided_regex: pattern, max_tokens: 40, temperature: 0, stream: true });
    const events = (await readSse(res)).filter((e) => e !== '[DONE]').map((e) => JSON.parse(e) as { choices: Choice[] });
    const text = events.map((e) => e.choices[0]?.text ?? '').join('');
    expect(text).toMatch(full);
    expect(events.at(-1)!.choices[0].finish_reason).toBe('stop');
  });

  it('response_format json_schema: outputs parse and validate (ajv), on /v1/chat/completions too', async () => {
    const schema = {
      type: 'object',
      properties: { name: { type: 'string', maxLength: 6 }, age: { type: 'integer', minimum: 0, maximum: 99 }, pet: { enum: ['cat', 'dog'] } },
      required: ['name', 'age'],
    };
    const validate = new Ajv().compile(schema);
    const rf = { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } };
    const r = await complete({ response_format: rf, max_tokens: 80, temperature: 1, n: 2, seed: 3 });
    expect(r.status).toBe(200);
    for (const c of r.choices) {
      expect(c.finish_reason).toBe('stop');
      expect(validate(JSON.parse(c.text)), c.text).toBe(true);
    }
    const chat = await post(server.url, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Who is it?' }], response_format: rf, max_tokens: 80, temperature: 0 });
    expect(chat.status).toBe(200);
    const msg = ((await chat.json()) as { choices: { message: { content: string } }[] }).choices[0].message.content;
    expect(validate(JSON.parse(msg)), msg).toBe(true);
  });

  it('log-probabilities are of the masked distribution: only allowed tokens, and they sum to one', async () => {
    const choices = ['cat', 'dog', 'bird'];
    const r = await complete({ guided_choice: choices, max_tokens: 10, temperature: 0, logprobs: 5 });
    expect(r.status).toBe(200);
    const lp = r.choices[0].logprobs!;
    let prefix = '';
    for (let i = 0; i < lp.tokens.length; i++) {
      const top = Object.entries(lp.top_logprobs[i]);
      // every alternative continues the text so far towards one of the strings
      for (const [t] of top) expect(choices.some((c) => c.startsWith(prefix + t)), `${JSON.stringify(prefix)} + ${JSON.stringify(t)}`).toBe(true);
      const mass = top.reduce((a, [, l]) => a + Math.exp(l), 0);
      expect(mass).toBeLessThanOrEqual(1 + 1e-6);
      prefix += lp.tokens[i];
    }
    // the first position has fewer than 5 allowed tokens only if the strings start alike: here all of them are listed
    const first = Object.values(lp.top_logprobs[0]);
    if (first.length < 5) expect(first.reduce((a, l) => a + Math.exp(l), 0)).toBeCloseTo(1, 5);
  });

  it('an unconstrained request gives the same tokens whether or not constrained ones share its steps', async () => {
    const plain = { prompt: PROMPT, max_tokens: 12, temperature: 0 };
    const alone = await complete(plain);
    const [together] = await Promise.all([complete(plain), complete({ guided_choice: ['cat', 'dog'], max_tokens: 12, temperature: 0 }), complete({ guided_regex: '[a-z ]{1,30}', max_tokens: 12, temperature: 0.8, seed: 1 })]);
    expect(together.choices[0].text).toBe(alone.choices[0].text);
  });

  it('constrained sequences keep their automaton state through preemption and recompute', async () => {
    // 12 KV blocks of 16 tokens per KV head: four sequences growing past 16 tokens cannot all stay
    const block = 2 * src.config.nLayers * 16 * src.config.headDim * 4;
    const tight = GpuModel.load(getGpu(), src, { kvMemoryBytes: 12 * block });
    const crowded = new Engine(tight, src.tokenizer);
    const roomy = new Engine(model, src.tokenizer);
    const tokens = src.tokenizer.encode(PROMPT);
    const constraint = compileGuide({ kind: 'regex', pattern: '[a-z]{2,5}( [a-z]{2,5}){3,5}\\.' }, src.tokenizer, false);
    const sampling = (i: number): SamplingOptions => ({ maxTokens: 40, temperature: i === 0 ? 0 : 1, topK: 0, topP: 1, seed: 50 + i, stop: [] });
    const runOn = (engine: Engine) =>
      Promise.all(
        [0, 1, 2, 3].map(
          (i) =>
            new Promise<number[]>((resolve, reject) => {
              const out: number[] = [];
              engine.submit({ prompt: tokens, sampling: sampling(i), constraint, events: { onToken: (e) => out.push(e.token), onFinish: (_r, _u, err) => (err ? reject(err) : resolve(out)) } });
            }),
        ),
      );
    const alone = await runOn(roomy);
    const preempted = await runOn(crowded);
    expect(crowded.counters.preemptions).toBeGreaterThan(0);
    expect(preempted).toEqual(alone);
    for (const t of alone) expect(decode(src.tokenizer, t, tokens.at(-1))).toMatch(/^[a-z]{2,5}( [a-z]{2,5}){3,5}\.$/);
    await crowded.idle();
    tight.destroy();
  });

  it('bad constraints are 400s that name the field; nothing else breaks', async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ guided_regex: '(' }, 'guided_regex', 'invalid_constraint'],
      [{ guided_choice: [] }, 'guided_choice', 'empty_array'],
      [{ guided_choice: 'cat' }, 'guided_choice', 'invalid_type'],
      [{ guided_json: { type: 'object', patternProperties: { a: {} } } }, 'guided_json', 'invalid_constraint'],
      [{ guided_regex: 'a', guided_choice: ['a'] }, 'guided_regex', 'unsupported_value'],
      [{ response_format: { type: 'xml' } }, 'response_format.type', 'invalid_value'],
      [{ guided_regex: '[a-z]{60}', max_tokens: 5 }, 'max_tokens', 'constraint_unsatisfiable'],
    ];
    for (const [body, param, code] of cases) {
      const r = await complete({ max_tokens: 8, ...body });
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.error, JSON.stringify(body)).toMatchObject({ param, code });
    }
    expect((await complete({ guided_json: { type: 'object', patternProperties: { a: {} } } })).error!.message).toMatch(/patternProperties/);
    const ok = await complete({ max_tokens: 3, temperature: 0 });
    expect(ok.status).toBe(200);
  });
});

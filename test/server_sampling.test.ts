import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RowPenaltiesRef, penaltiesRef } from '../kernels/penalties.ts';
import { type SampleParams, filterRowRef, sampleRef } from '../kernels/sampling.ts';
import { Engine, type SamplingOptions } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { cpuForward } from '../src/model/cpu_reference.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { FrameDecoder, type RequestSpec, encodeFrame } from '../src/workers/protocol.ts';
import { cpuWeightsOf } from '../src/model/cpu_weights.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, logSoftmax, maxAbs, roundingTolerance } from './helpers/logits.ts';

// Sampling options end to end: OpenAI request -> validation -> engine -> GPU kernels, checked
// against the float64 CPU oracle (forward pass, penalties and sampler references). stories260K on
// SwiftShader takes ~0.1-0.2 s per decode step: max_tokens stay small.
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';
const PROMPT = 'Once upon a time';

type Completion = OpenAI.CompletionCreateParamsNonStreaming & Record<string, unknown>;

/** The request options an oracle step applies (the OpenAI fields, in the engine's terms). */
interface OracleOptions {
  temperature: number;
  topK?: number;
  seed?: number;
  minP?: number;
  bias?: [number, number][];
  presence?: number;
  frequency?: number;
  repetition?: number;
  minTokens?: number;
}

interface OracleRun {
  tokens: number[];
  /** the smallest distance of a step's outcome from a decision the GPU's f32 logits could flip */
  slack: number;
}

describe('sampling options through the OpenAI API', () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let model: GpuModel;
  let server: WgServer & { url: string };
  let client: OpenAI;
  let promptIds: number[];
  let eos: number;
  const tok = () => src.tokenizer;
  const textOf = (id: number) => Buffer.from(tok().tokenBytes(id)).toString();

  beforeAll(async () => {
    src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    server = await startServer({ engine: new Engine(model, src.tokenizer), modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    promptIds = tok().encode(PROMPT);
    eos = tok().vocab.eos!;
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  /**
   * Decoding by the float64 oracle with the request's options applied by their definitions
   * (penaltiesRef, then sampleRef's temperature / min-p / top-k and Philox draw on the f32-rounded
   * row), up to EOS or n tokens. `slack` says how decisive each step was against the GPU's own
   * rounding: the GPU's raw logits are within E = roundingTolerance x max|logit| of the oracle's;
   * after penalties within E x max(r, 1/r) plus 8 f32 ULPs of the largest term (penalties.test.ts).
   * A greedy step is decisive when its top two processed logits differ by more than twice that; a
   * sampled step when its top-k and min-p edges do, and its draw lies further than the CDF can move from a
   * step (probabilities move by at most 2 x the logit bound / T, relative, summed over the kept set).
   * Tests assert slack > 1 so that a GPU/oracle difference is a bug, never rounding.
   */
  function oracle(o: OracleOptions, n: number, prompt = promptIds): OracleRun {
    const weights = cpuWeightsOf(src);
    const vocab = src.config.vocabSize;
    const tokens = [...prompt];
    const r = o.repetition ?? 1;
    let slack = Infinity;
    for (let i = 0; i < n; i++) {
      const raw = cpuForward(src.config, weights, tokens).at(-1)!;
      const bias = new Map(o.bias ?? []);
      if (i < (o.minTokens ?? 0)) bias.set(eos, -Infinity);
      const q: RowPenaltiesRef = { bias: [...bias], presence: o.presence, frequency: o.frequency, repetition: r, prompt, output: tokens.slice(prompt.length) };
      const row = penaltiesRef(raw, 1, vocab, [q]);
      const e = roundingTolerance(src.config, tokens.length, UNIT_ROUNDOFF.f32) * maxAbs([raw]) * Math.max(r, 1 / r) + 8 * 2 ** -24 * (maxAbs([row].map((x) => x.filter(Number.isFinite))) + 100 + 2 * n);
      const sorted = [...row].filter(Number.isFinite).sort((a, b) => b - a);
      let token: number;
      if (o.temperature === 0) {
        token = row.indexOf(sorted[0]);
        slack = Math.min(slack, (sorted[0] - sorted[1]) / (2 * e));
      } else {
        const p: SampleParams = { temperature: o.temperature, topK: o.topK ?? 0, topP: 1, minP: o.minP, seed: o.seed ?? 0, counter: i };
        const f32 = Float32Array.from(row);
        const s = sampleRef(f32, [p], 1, vocab);
        token = s.tokens[0];
        const kept = filterRowRef(f32, p).kept.length;
        if (p.topK && kept < sorted.length) slack = Math.min(slack, (sorted[kept - 1] - sorted[kept]) / (2 * e));
        if (o.minP) {
          const cut = sorted[0] + o.temperature * Math.log(o.minP); // min-p's edge, on the logits
          slack = Math.min(slack, Math.min(...sorted.map((l) => Math.abs(l - cut))) / (2 * e));
        }
        slack = Math.min(slack, s.margin[0] / ((2 * e) / o.temperature + 1e-5));
      }
      tokens.push(token);
      if (token === eos) break;
    }
    return { tokens: tokens.slice(prompt.length), slack };
  }

  /** A completion of the prompt's token ids; its tokens' texts (from logprobs) and usage. */
  async function complete(body: Record<string, unknown>, prompt = promptIds) {
    const c = await client.completions.create({ model: MODEL, prompt, max_tokens: 12, logprobs: 0, ...body } as Completion);
    const lp = c.choices[0].logprobs!;
    return { texts: lp.tokens!, logprobs: lp.token_logprobs!, text: c.choices[0].text, finish: c.choices[0].finish_reason, completion: c.usage!.completion_tokens };
  }
  /** The texts the API reports for oracle tokens (EOS is not part of the completion). */
  const textsOf = (ids: number[]) => ids.filter((t) => t !== eos).map(textOf);

  it('seeds: the whole 64-bit range keys the RNG (1 and 2^32 + 1 differ), each reproducible; beyond +-(2^53 - 1) refused', async () => {
    // temperature 2 over the whole vocabulary: two independent 12-token draws from stories260K
    // agree with negligible probability, while an RNG keyed by the low 32 bits (seed >>> 0) makes
    // each pair below identical
    const pairs = [[1, 2 ** 32 + 1], [-1, 2 ** 32 - 1], [2 ** 53 - 1, -(2 ** 53 - 1)]];
    const runs = await Promise.all(pairs.flat().flatMap((seed) => [0, 1].map(() => complete({ temperature: 2, seed, max_tokens: 8 }))));
    for (let i = 0; i < pairs.length; i++) {
      const [a1, a2, b1, b2] = runs.slice(4 * i, 4 * i + 4);
      expect(a1.texts, `seed ${pairs[i][0]} twice`).toEqual(a2.texts);
      expect(b1.texts, `seed ${pairs[i][1]} twice`).toEqual(b2.texts);
      expect(a1.texts, `seeds ${pairs[i][0]} and ${pairs[i][1]}`).not.toEqual(b1.texts);
    }
    // refused: the JSON text 9007199254740993 parses to 2^53, already another number than was sent
    for (const raw of ['9007199254740992', '9007199254740993', '-9007199254740992', '18446744073709551615']) {
      const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `{"model": "${MODEL}", "prompt": "Hi", "max_tokens": 1, "seed": ${raw}}` });
      expect(res.status, raw).toBe(400);
      const { error } = (await res.json()) as { error: Record<string, unknown> };
      expect(error, raw).toMatchObject({ type: 'invalid_request_error', param: 'seed', code: raw.startsWith('-') ? 'integer_below_min_value' : 'integer_above_max_value', message: expect.stringContaining('2^53') });
    }
    await expect(client.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 1, seed: 2 ** 53 })).rejects.toMatchObject({ status: 400, param: 'seed' });
  });

  it('requests without the new options decode as the oracle does, alone, beside penalised requests, and with every option at its neutral value', async () => {
    const greedy = oracle({ temperature: 0 }, 12);
    const seeded = oracle({ temperature: 1, topK: 40, seed: 4 }, 12);
    // measured slack (see `oracle`): greedy 3591, seeded 9.4
    expect(greedy.slack).toBeGreaterThan(1);
    expect(seeded.slack).toBeGreaterThan(1);
    expect(seeded.tokens).not.toEqual(greedy.tokens); // the draws matter
    const neutral = { presence_penalty: 0, frequency_penalty: 0, repetition_penalty: 1, min_p: 0, min_tokens: 0, logit_bias: {} };
    const g = { temperature: 0 };
    const s = { temperature: 1, top_k: 40, seed: 4 };
    const busy = { temperature: 1, seed: 9, frequency_penalty: 1, presence_penalty: 1, repetition_penalty: 1.5, min_p: 0.1, logit_bias: { 13: 5 }, min_tokens: 4 };
    const [alone, aloneS] = [await complete(g), await complete(s)];
    const [withG, withS, , , neutralG, neutralS] = await Promise.all([complete(g), complete(s), complete(busy), complete({ ...busy, seed: 10 }), complete({ ...g, ...neutral }), complete({ ...s, ...neutral })]);
    for (const [what, got] of [['alone', alone], ['batched with penalised requests', withG], ['neutral options', neutralG]] as const) expect(got.texts, `greedy ${what}`).toEqual(textsOf(greedy.tokens));
    for (const [what, got] of [['alone', aloneS], ['batched with penalised requests', withS], ['neutral options', neutralS]] as const) expect(got.texts, `seeded ${what}`).toEqual(textsOf(seeded.tokens));
  });

  it('logit_bias: +100 forces a token at temperature 0, -100 bans one, small biases shift the choice as the oracle does', async () => {
    const forced = 100;
    const f = await complete({ temperature: 0, max_tokens: 5, logit_bias: { [forced]: 100 } });
    expect(f.texts).toEqual(new Array(5).fill(textOf(forced)));
    // logprobs stay those of the model (before the bias): the oracle's log-softmax at the first step,
    // within its f32 bound (2 x roundingTolerance x max|logit| = 1.0e-4, as in server.test.ts; measured 9e-7)
    const raw = cpuForward(src.config, cpuWeightsOf(src), promptIds).at(-1)!;
    const tol = 2 * roundingTolerance(src.config, promptIds.length, UNIT_ROUNDOFF.f32) * maxAbs([raw]);
    expect(Math.abs(f.logprobs[0] - logSoftmax(raw)[forced])).toBeLessThanOrEqual(tol);
    expect(f.logprobs[0]).toBeLessThan(-1); // far from the ~0 of the biased distribution
    // ban the greedy first token: decoding takes the oracle's best alternative, and never the banned token
    const greedy = oracle({ temperature: 0 }, 12).tokens;
    const first = greedy[0];
    const banned = oracle({ temperature: 0, bias: [[first, -100]] }, 12);
    // greedy says "a little girl" (298 after 376); sampled runs also tell of "a little boy" (268)
    const small: [number, number][] = [[268, 3], [first, -0.5], [eos, 1]];
    const shifted = oracle({ temperature: 0, bias: small }, 12);
    // measured slack: 2621 and 3238
    expect(banned.slack).toBeGreaterThan(1);
    expect(shifted.slack).toBeGreaterThan(1);
    expect(banned.tokens).not.toContain(first);
    expect(shifted.tokens).not.toEqual(greedy);
    const [b, sh] = await Promise.all([complete({ temperature: 0, logit_bias: { [first]: -100 } }), complete({ temperature: 0, logit_bias: Object.fromEntries(small) })]);
    expect(b.texts).toEqual(textsOf(banned.tokens));
    expect(sh.texts).toEqual(textsOf(shifted.tokens));
  });

  it('presence, frequency and repetition penalties decode as the float64 oracle applies them', async () => {
    // "The dog" makes stories260K repeat itself ("He liked to play with his ball. He liked to play")
    const dog = tok().encode('The dog');
    const n = 24;
    const cases: [Record<string, number>, OracleOptions][] = [
      [{ presence_penalty: 0.5, frequency_penalty: 1.5 }, { temperature: 0, presence: 0.5, frequency: 1.5 }],
      [{ repetition_penalty: 1.8 }, { temperature: 0, repetition: 1.8 }],
      [{ presence_penalty: -1, repetition_penalty: 0.6 }, { temperature: 0, presence: -1, repetition: 0.6 }], // both favour repeats
      [{ frequency_penalty: 2, temperature: 0.9, seed: 4, top_k: 20 }, { temperature: 0.9, frequency: 2, seed: 4, topK: 20 }],
    ];
    const want = cases.map(([, o]) => oracle(o, n, dog));
    // measured slack: 270, 211, 1841, 15
    want.forEach((w, i) => expect(w.slack, `case ${i}`).toBeGreaterThan(1));
    // the penalties change decoding here (else these would test nothing)
    const plain = [oracle({ temperature: 0 }, n, dog), oracle({ temperature: 0.9, seed: 4, topK: 20 }, n, dog)];
    want.forEach((w, i) => expect(w.tokens, `case ${i}`).not.toEqual(plain[i < 3 ? 0 : 1].tokens));
    const got = await Promise.all(cases.map(([body]) => complete({ temperature: 0, max_tokens: n, ...body }, dog)));
    got.forEach((g, i) => expect(g.texts, `case ${i} ${JSON.stringify(cases[i][0])}`).toEqual(textsOf(want[i].tokens)));
  });

  it('min_tokens holds back EOS until that many tokens exist; min_p 1 keeps only the most likely token', async () => {
    // EOS biased to +100 ends a completion at once, unless min_tokens masks it first
    const [now, after3] = await Promise.all([complete({ temperature: 0, logit_bias: { [eos]: 100 } }), complete({ temperature: 0, logit_bias: { [eos]: 100 }, min_tokens: 3 })]);
    expect(now).toMatchObject({ completion: 0, text: '', finish: 'stop' });
    const greedy = oracle({ temperature: 0 }, 3);
    expect(after3).toMatchObject({ completion: 3, finish: 'stop' });
    expect(after3.texts).toEqual(textsOf(greedy.tokens));
    // min_p 1 at any temperature and seed: the greedy tokens (stories260K's top two never tie)
    const hot = await complete({ temperature: 2, seed: 5, min_p: 1 });
    expect(hot.texts).toEqual(textsOf(oracle({ temperature: 0 }, 12).tokens));
    // a milder min_p against the oracle's sampler
    const mild = oracle({ temperature: 1.2, seed: 1, minP: 0.2 }, 12);
    expect(mild.slack).toBeGreaterThan(1); // measured 83
    expect(mild.tokens).not.toEqual(oracle({ temperature: 0 }, 12).tokens);
    expect((await complete({ temperature: 1.2, seed: 1, min_p: 0.2 })).texts).toEqual(textsOf(mild.tokens));
  });

  it('penalised and seeded sequences keep their outputs through preemption (counts rebuilt, RNG keyed by token index)', async () => {
    // 12 KV blocks of 16 tokens per KV head (4 heads): four sequences growing past 16 tokens cannot
    // all stay, so the engine preempts and recomputes (as in engine.test.ts)
    const block = 2 * src.config.nLayers * 16 * src.config.headDim * 4;
    const tight = GpuModel.load(getGpu(), src, { kvMemoryBytes: 12 * block });
    const engine = new Engine(tight, src.tokenizer);
    const base: SamplingOptions = { maxTokens: 16, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] };
    const jobs: [string, SamplingOptions, OracleOptions][] = [
      ['The dog', { ...base, presencePenalty: 0.5, frequencyPenalty: 1.5 }, { temperature: 0, presence: 0.5, frequency: 1.5 }],
      ['Once upon a time', { ...base, temperature: 0.9, topK: 20, seed: 2 ** 32 + 5, repetitionPenalty: 1.3 }, { temperature: 0.9, topK: 20, seed: 2 ** 32 + 5, repetition: 1.3 }],
      ['Tom and Sue', { ...base, logitBias: [[268, 3]], minTokens: 5 }, { temperature: 0, bias: [[268, 3]], minTokens: 5 }],
      ['One day a bird', { ...base, temperature: 1.1, seed: -77, minP: 0.1, frequencyPenalty: 0.8 }, { temperature: 1.1, seed: -77, minP: 0.1, frequency: 0.8 }],
    ];
    const want = jobs.map(([text, , o]) => oracle(o, 16, tok().encode(text)));
    // measured slack: 289, 3.4, 1530, 37
    want.forEach((w, i) => expect(w.slack, `job ${i}`).toBeGreaterThan(1));
    const outputs = await Promise.all(
      jobs.map(
        ([text, sampling]) =>
          new Promise<number[]>((resolve, reject) => {
            const tokens: number[] = [];
            engine.submit({ prompt: tok().encode(text), sampling, events: { onToken: (e) => tokens.push(e.token), onFinish: (_r, _u, err) => (err ? reject(err) : resolve(tokens)) } });
          }),
      ),
    );
    expect(engine.counters.preemptions).toBeGreaterThan(0);
    outputs.forEach((o, i) => expect(o, `job ${i}`).toEqual(want[i].tokens));
    await engine.idle();
    tight.destroy();
  });

  it('invalid values get 400 in OpenAI’s error shape, naming the parameter', async () => {
    const ok = { model: MODEL, prompt: 'Hi', max_tokens: 2 };
    const vocab = tok().vocab.tokens.length;
    const cases: [string, Record<string, unknown>, string, string][] = [
      ['logit_bias an array', { logit_bias: [1, 2] }, 'logit_bias', 'invalid_type'],
      ['logit_bias key not a number', { logit_bias: { abc: 1 } }, 'logit_bias', 'invalid_value'],
      ['logit_bias key not canonical', { logit_bias: { '07': 1 } }, 'logit_bias', 'invalid_value'],
      ['logit_bias key negative', { logit_bias: { '-1': 1 } }, 'logit_bias', 'invalid_value'],
      ['logit_bias key beyond the vocabulary', { logit_bias: { [vocab]: 1 } }, 'logit_bias', 'invalid_value'],
      ['logit_bias value above 100', { logit_bias: { 5: 100.5 } }, 'logit_bias.5', 'invalid_value'],
      ['logit_bias value a string', { logit_bias: { 5: '1' } }, 'logit_bias.5', 'invalid_type'],
      ['logit_bias with 301 entries', { logit_bias: Object.fromEntries(Array.from({ length: 301 }, (_, i) => [i, 1])) }, 'logit_bias', 'invalid_value'],
      ['presence_penalty above 2', { presence_penalty: 2.5 }, 'presence_penalty', 'invalid_value'],
      ['frequency_penalty below -2', { frequency_penalty: -3 }, 'frequency_penalty', 'invalid_value'],
      ['frequency_penalty a string', { frequency_penalty: '1' }, 'frequency_penalty', 'invalid_type'],
      ['repetition_penalty 0', { repetition_penalty: 0 }, 'repetition_penalty', 'invalid_value'],
      ['repetition_penalty negative', { repetition_penalty: -1 }, 'repetition_penalty', 'invalid_value'],
      ['min_tokens negative', { min_tokens: -1 }, 'min_tokens', 'integer_below_min_value'],
      ['min_tokens fractional', { min_tokens: 1.5 }, 'min_tokens', 'invalid_type'],
      ['min_tokens above max_tokens', { min_tokens: 3 }, 'min_tokens', 'invalid_value'],
      ['min_p above 1', { min_p: 1.5 }, 'min_p', 'invalid_value'],
      ['seed fractional', { seed: 1.5 }, 'seed', 'invalid_type'],
    ];
    for (const [what, extra, param, code] of cases) {
      const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...ok, ...extra }) });
      expect(res.status, what).toBe(400);
      expect(((await res.json()) as { error: unknown }).error, what).toEqual({ message: expect.any(String), type: 'invalid_request_error', param, code });
    }
    // the chat route validates the same fields, and the official client sees typed errors
    await expect(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], logit_bias: { [vocab + 5]: 1 } })).rejects.toMatchObject({ status: 400, param: 'logit_bias' });
    await expect(client.completions.create({ model: MODEL, prompt: 'Hi', presence_penalty: 3 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    // limits themselves are accepted
    const edge = await client.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 2, seed: -(2 ** 53 - 1), presence_penalty: -2, frequency_penalty: 2, logit_bias: { 0: -100, [vocab - 1]: 100 }, min_tokens: 2, min_p: 1, repetition_penalty: 100 } as Completion);
    expect(edge.usage!.completion_tokens).toBe(2);
  });
});

describe('sampling options on the disaggregated wire', () => {
  it('a request spec keeps 64-bit seeds and the penalty options through a frame', () => {
    const sampling: SamplingOptions = {
      maxTokens: 9,
      temperature: 0.5,
      topK: 0,
      topP: 1,
      seed: -(2 ** 53 - 1),
      stop: [],
      logitBias: [[3, -100], [7, 0.25]],
      presencePenalty: -2,
      frequencyPenalty: 1.5,
      repetitionPenalty: 1.1,
      minTokens: 4,
      minP: 0.05,
    };
    for (const seed of [-(2 ** 53 - 1), 2 ** 53 - 1, 2 ** 32 + 1, -1]) {
      const request: RequestSpec = { rid: 1, attempt: 1, prompt: [1, 2], generated: [3], sampling: { ...sampling, seed } };
      const [m] = new FrameDecoder().push(encodeFrame({ type: 'kv-done', seq: 1, tokens: 2, request }));
      expect(m).toEqual({ type: 'kv-done', seq: 1, tokens: 2, request });
    }
  });
});

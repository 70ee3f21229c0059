import { spawn } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine, type SamplingOptions } from '../src/engine/engine.ts';
import { generate } from '../src/engine/generate.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { ChatTemplate } from '../src/model/chat_template.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { buildServer, startServer, type WgServer } from '../src/server/app.ts';
import { MAX_CHUNK_TOKENS, MsgpackFrameReader, packMsgpack, unpackMsgpack } from '../src/server/stream.ts';
import { useGpu } from './helpers/gpu.ts';
import { metric, post, readSse, until } from './helpers/http.ts';
import { continuesReference, STORIES_PROMPT } from './helpers/stories.ts';
import { useTmpDirs } from './helpers/tmp.ts';

// SwiftShader runs a decode step of stories260K in ~0.1-0.2 s: max_tokens stay small, except for
// requests that must outlast a test's checks on any device (as many as the context allows, 2043;
// they are cancelled) and the slow reader's stream.
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';
const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });
const MSGPACK = 'application/msgpack';
/**
 * Tokens of the slow reader's stream: the kernel's socket buffers and the server's high-water mark
 * take the first ~105 (measured: the server fell behind at the 103rd), the rest it must hold back.
 */
const SLOW_TOKENS = 140;

/** The last chunk of a body in chunked transfer encoding (SSE data never holds a CR). */
const CHUNKED_END = '\r\n0\r\n\r\n';

/** Reads an HTTP/1.1 response in chunked transfer encoding from a raw socket, up to its last chunk; then closes the socket. */
async function readChunked(sock: Socket): Promise<Buffer> {
  let bytes = Buffer.alloc(0);
  for await (const b of sock.resume()) {
    bytes = Buffer.concat([bytes, b as Buffer]);
    if (bytes.subarray(-CHUNKED_END.length).toString() === CHUNKED_END) break;
  }
  return bytes;
}

/** The body of an HTTP/1.1 message in chunked transfer encoding, from the bytes after its head. */
function dechunk(bytes: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; ; ) {
    const eol = bytes.indexOf('\r\n', i);
    const n = parseInt(bytes.subarray(i, eol).toString(), 16);
    if (!n) return Buffer.concat(parts);
    parts.push(bytes.subarray(eol + 2, eol + 2 + n));
    i = eol + 4 + n;
  }
}

describe('OpenAI-compatible server', () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let model: GpuModel;
  let engine: Engine;
  let server: WgServer & { url: string };
  let client: OpenAI;
  const tok = () => src.tokenizer;
  const chatTokens = (messages: { role: 'user' | 'system'; content: string }[]) => tok().encode(new ChatTemplate().render(messages), { parseSpecial: true });

  beforeAll(async () => {
    src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    engine = new Engine(model, src.tokenizer);
    server = await startServer({ engine, modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  it('completions and chat, whole and streamed, give generate()’s greedy output', async () => {
    const prompt = 'Once upon a time';
    const messages = [{ role: 'user' as const, content: 'Hi' }];
    const [text, chat] = (await generate(model, tok(), [{ tokens: tok().encode(prompt), options: greedy(10) }, { tokens: chatTokens(messages), options: greedy(6) }])).results;

    // all at once (batched: greedy outputs do not depend on the batch)
    const collect = async <T>(s: AsyncIterable<T>) => {
      const out: T[] = [];
      for await (const x of s) out.push(x);
      return out;
    };
    const [c, ids, chunks, cc, deltas] = await Promise.all([
      client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0 }),
      client.completions.create({ model: MODEL, prompt: tok().encode(prompt), max_tokens: 10, temperature: 0 }), // token ids
      client.completions.create({ model: MODEL, prompt, max_tokens: 10, temperature: 0, stream: true, stream_options: { include_usage: true } }).then(collect),
      client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 6, temperature: 0, user: 'tester' }),
      client.chat.completions.create({ model: MODEL, messages, max_tokens: 6, temperature: 0, stream: true }).then(collect),
    ]);

    expect(c.object).toBe('text_completion');
    expect(c.choices[0]).toMatchObject({ index: 0, text: text.text, finish_reason: 'length', logprobs: null });
    expect(c.usage).toEqual({ prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 });
    expect(ids.choices[0].text).toBe(text.text);

    expect(chunks.flatMap((ch) => ch.choices.map((x) => x.text)).join('')).toBe(text.text);
    expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 10, total_tokens: 15 } });
    expect(chunks.at(-2)!.choices[0].finish_reason).toBe('length');
    expect(chunks.slice(0, -2).every((ch) => ch.choices[0].finish_reason === null && ch.usage === null)).toBe(true);

    expect(cc.object).toBe('chat.completion');
    expect(cc.choices[0]).toMatchObject({ message: { role: 'assistant', content: chat.text }, finish_reason: 'length' });
    expect(cc.usage).toMatchObject({ prompt_tokens: chatTokens(messages).length, completion_tokens: 6 });

    expect(deltas[0].object).toBe('chat.completion.chunk');
    expect(deltas[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const content = deltas.slice(1);
    expect(content.map((ch) => ch.choices[0].delta.content).join('')).toBe(chat.text);
    // finish_reason rides on the last content chunk
    expect(content.at(-1)!.choices[0]).toMatchObject({ finish_reason: 'length', delta: { content: expect.any(String) } });
    expect(content.slice(0, -1).every((ch) => ch.choices[0].finish_reason === null)).toBe(true);
  });

  it('logprobs, stop strings and seeds', async () => {
    const prompt = 'Once upon a time';
    const hot = () => client.completions.create({ model: MODEL, prompt, max_tokens: 6, temperature: 1, top_p: 0.95, seed: 7, top_k: 40 } as OpenAI.CompletionCreateParamsNonStreaming);
    const [lp, chat, stopped, a, b] = await Promise.all([
      client.completions.create({ model: MODEL, prompt, max_tokens: 3, temperature: 0, logprobs: 5 }),
      client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, temperature: 0, logprobs: true, top_logprobs: 5 }),
      client.completions.create({ model: MODEL, prompt, max_tokens: 20, temperature: 0, stop: [' Lily.', 'never'] }),
      hot(),
      hot(),
    ]);
    // Log-probabilities against the float64 CPU oracle (test/helpers/logits.ts): its greedy tokens,
    // and every reported logprob within oracle.tolerance (1.1e-4 and 8.7e-5; measured 3.7e-6 and
    // 1.0e-5) of its log-softmax. The oracle's top two differ by >= 0.76 at every step; a logZ taken
    // as the max logit would be off by >= 1.6e-2.
    const { oracleGreedy } = await import('./helpers/logits.ts');
    const textOf = (id: number) => Buffer.from(tok().tokenBytes(id)).toString();
    /** reported [text, logprob] alternatives: each some token's oracle logprob, none left out */
    const expectTop = (lp: Float64Array, tol: number, alts: [string, number][], n: number) => {
      expect(alts.length).toBeGreaterThan(0);
      expect(alts.length).toBeLessThanOrEqual(n); // completions merge alternatives with the same text
      for (const [t, v] of alts) expect(lp.some((x, id) => textOf(id) === t && Math.abs(v - x) <= tol), `${JSON.stringify(t)}: ${v}`).toBe(true);
      expect(Math.min(...alts.map(([, v]) => v))).toBeGreaterThanOrEqual([...lp].sort((a, b) => b - a)[n - 1] - tol);
    };
    const l = lp.choices[0].logprobs!;
    const o = oracleGreedy(src, tok().encode(prompt), 3);
    expect(l.tokens).toEqual(o.tokens.map(textOf));
    expect(l.tokens!.join('')).toBe(lp.choices[0].text);
    expect(l.text_offset).toEqual([0, l.tokens![0].length, l.tokens![0].length + l.tokens![1].length]);
    l.top_logprobs!.forEach((top, i) => {
      expect(Math.abs(l.token_logprobs![i] - o.logprobs[i][o.tokens[i]])).toBeLessThanOrEqual(o.tolerance);
      expectTop(o.logprobs[i], o.tolerance, Object.entries(top), 5);
    });

    const entries = chat.choices[0].logprobs!.content!;
    const oc = oracleGreedy(src, chatTokens([{ role: 'user', content: 'Hi' }]), 3);
    expect(entries.map((e) => e.token)).toEqual(oc.tokens.map(textOf));
    entries.forEach((e, i) => {
      expect(Math.abs(e.logprob - oc.logprobs[i][oc.tokens[i]])).toBeLessThanOrEqual(oc.tolerance);
      expect(e.top_logprobs).toHaveLength(5);
      expect(e.top_logprobs[0].token).toBe(e.token);
      expectTop(oc.logprobs[i], oc.tolerance, e.top_logprobs.map((a) => [a.token, a.logprob]), 5);
      expect(Buffer.from(e.bytes!).toString()).toBe(e.token);
    });

    expect(stopped.choices[0]).toMatchObject({ text: ', there was a little girl named', finish_reason: 'stop' });
    expect(a.choices[0].text).toBe(b.choices[0].text); // same seed, same sample
  });

  it('a continuation keeps its leading space: prompt + completion reads as one text, whole, streamed, echoed and in logprobs', async () => {
    // llama2.c and llama.cpp continue "The little dog" greedily with " was a little gir..." (issue 10)
    const prompt = 'The little dog';
    const ask = { model: MODEL, prompt, max_tokens: 6, temperature: 0 };
    const whole = await client.completions.create({ ...ask, logprobs: 1 });
    const text = whole.choices[0].text;
    expect(text.startsWith(' was a little')).toBe(true);
    expect(whole.choices[0].logprobs!.tokens!.join('')).toBe(text);
    const echoed = await client.completions.create({ ...ask, echo: true });
    expect(echoed.choices[0].text).toBe(prompt + text);
    let streamed = '';
    for await (const c of await client.completions.create({ ...ask, stream: true })) streamed += c.choices[0].text;
    expect(streamed).toBe(text);
    // chat: the reply's text is its tokens' text, the first one's space included
    const chat = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0, logprobs: true });
    expect(chat.choices[0].logprobs!.content!.map((e) => e.token).join('')).toBe(chat.choices[0].message.content);
  });

  it('control-token text in a completions prompt is parsed; in a chat message it stays text', async () => {
    const once = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
    // "<s>" is BOS, not three characters, and no second BOS is added before it
    const withBos = await client.completions.create({ model: MODEL, prompt: '<s>Once upon a time', max_tokens: 5, temperature: 0 });
    expect(withBos.usage!.prompt_tokens).toBe(once.usage!.prompt_tokens);
    expect(withBos.choices[0].text).toBe(once.choices[0].text);
    const eos = await client.completions.create({ model: MODEL, prompt: 'Once upon a time</s>', max_tokens: 1, temperature: 0 });
    expect(eos.usage!.prompt_tokens).toBe(once.usage!.prompt_tokens + 1);
    // in chat, "</s>" typed by a user is spelled out: more than one token, and not the EOS id
    const chatUsage = async (content: string) => (await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 1, temperature: 0 })).usage!.prompt_tokens;
    const plain = tok().encode('</s>', { addSpecial: false });
    expect(plain).not.toContain(tok().vocab.eos);
    expect((await chatUsage('a</s>')) - (await chatUsage('a'))).toBe(plain.length);
  });

  it('32 concurrent streaming requests of different lengths each get their own greedy output', async () => {
    // short prompts (prefill on a software device is slow); every 8th a chat request
    const names = ['Lily', 'Tom', 'Sue', 'Ben', 'The dog', 'A bird', 'Mom', 'The cat'];
    const verbs = ['was', 'saw', 'said', 'had a'];
    const jobs = Array.from({ length: 32 }, (_, i) => {
      const text = `${names[i % 8]} ${verbs[i >> 3]}`;
      const chat = i % 8 === 3;
      const messages = [{ role: 'user' as const, content: text }];
      return { text, chat, messages, maxTokens: 4 + (i % 5), tokens: chat ? chatTokens(messages) : tok().encode(text) };
    });
    // generate() is batch-invariant: one batched call gives every sequence's output alone. How many
    // of them share a step depends on arrival timing (engine.test.ts checks batching as such).
    const expected = (await generate(model, tok(), jobs.map((j) => ({ tokens: j.tokens, options: greedy(j.maxTokens) })))).results;

    const outputs = await Promise.all(
      jobs.map(async (j) => {
        let out = '';
        let finish: string | null = null;
        if (j.chat) {
          for await (const ch of await client.chat.completions.create({ model: MODEL, messages: j.messages, max_tokens: j.maxTokens, temperature: 0, stream: true })) {
            out += ch.choices[0]?.delta.content ?? '';
            finish = ch.choices[0]?.finish_reason ?? finish;
          }
        } else {
          for await (const ch of await client.completions.create({ model: MODEL, prompt: j.text, max_tokens: j.maxTokens, temperature: 0, stream: true })) {
            out += ch.choices[0]?.text ?? '';
            finish = ch.choices[0]?.finish_reason ?? finish;
          }
        }
        return { out, finish };
      }),
    );
    outputs.forEach((o, i) => {
      expect(o.out, `request ${i}`).toBe(expected[i].text);
      expect(o.finish, `request ${i}`).toBe(expected[i].finishReason);
    });
  });

  it('malformed requests get the right 4xx in OpenAI’s error shape, and the server keeps serving', async () => {
    const ok = { model: MODEL, prompt: 'Hi', max_tokens: 1 };
    const chatOk = { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 };
    const cases: [string, string, unknown, number, string | null, Record<string, string>?][] = [
      ['bad JSON', '/v1/completions', '{"model": "stories260K", "prompt": ', 400, 'invalid_json'],
      ['empty JSON body', '/v1/completions', '', 400, 'invalid_json'],
      ['body not an object', '/v1/completions', '[1, 2]', 400, 'invalid_body'],
      ['max_tokens a string', '/v1/completions', { ...ok, max_tokens: '5' }, 400, 'invalid_type'],
      ['temperature a string', '/v1/completions', { ...ok, temperature: 'hot' }, 400, 'invalid_type'],
      ['stream a string', '/v1/chat/completions', { ...chatOk, stream: 'yes' }, 400, 'invalid_type'],
      ['prompt a number', '/v1/completions', { ...ok, prompt: 5 }, 400, 'invalid_type'],
      ['stop a number', '/v1/completions', { ...ok, stop: 3 }, 400, 'invalid_type'],
      ['negative max_tokens', '/v1/completions', { ...ok, max_tokens: -5 }, 400, 'integer_below_min_value'],
      ['temperature out of range', '/v1/completions', { ...ok, temperature: 3 }, 400, 'invalid_value'],
      ['token id outside the vocabulary', '/v1/completions', { ...ok, prompt: [1, 9999] }, 400, 'invalid_value'],
      ['prompt + max_tokens beyond the context', '/v1/completions', { ...ok, prompt: new Array(3000).fill(403) }, 400, 'context_length_exceeded'],
      ['body over the size limit', '/v1/completions', { ...ok, prompt: 'x'.repeat(2 << 20) }, 413, 'request_too_large'],
      ['messages a string', '/v1/chat/completions', { ...chatOk, messages: 'hi' }, 400, 'invalid_type'],
      ['empty messages', '/v1/chat/completions', { ...chatOk, messages: [] }, 400, 'empty_array'],
      ['a message without a role', '/v1/chat/completions', { ...chatOk, messages: [{ content: 'hi' }] }, 400, 'invalid_value'],
      ['unknown model', '/v1/completions', { ...ok, model: 'gpt-4' }, 404, 'model_not_found'],
      ['missing model', '/v1/chat/completions', { messages: chatOk.messages }, 400, 'missing_required_parameter'],
      ['n above 128 (parallel_sampling.test.ts has the rest of n and best_of)', '/v1/completions', { ...ok, n: 129 }, 400, 'integer_above_max_value'],
      ['top_logprobs without logprobs', '/v1/chat/completions', { ...chatOk, top_logprobs: 2 }, 400, 'invalid_value'],
      ['stream_options without stream', '/v1/completions', { ...ok, stream_options: { include_usage: true } }, 400, 'invalid_value'],
      ['unknown route', '/v1/embeddings', ok, 404, 'not_found'],
      ['a form body (curl -d without a Content-Type)', '/v1/completions', 'prompt=hi', 415, 'unsupported_media_type', { 'content-type': 'application/x-www-form-urlencoded' }],
    ];
    for (const [what, path, body, status, code, headers] of cases) {
      const res = await post(server.url, path, body, headers);
      expect(res.status, what).toBe(status);
      const err = ((await res.json()) as { error: Record<string, unknown> }).error;
      expect(err, what).toMatchObject({ message: expect.any(String), type: expect.any(String), code });
      expect('param' in err, what).toBe(true);
    }
    // through the official client: typed errors
    await expect(client.completions.create({ model: 'gpt-4', prompt: 'Hi', max_tokens: 1 })).rejects.toMatchObject({ status: 404, code: 'model_not_found' });
    await expect(client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], n: 0 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    // unknown fields are ignored, as OpenAI does; the server still serves
    const res = await post(server.url, '/v1/completions', { ...ok, max_tokens: 2, frobnicate: true, presence_penalty: 0 });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(2);
    expect((await client.models.list()).data.map((m) => m.id)).toEqual([MODEL]);
    expect(await (await fetch(`${server.url}/health`)).json()).toEqual({ status: 'ready' });
  });

  it('a client that disconnects mid-stream has its sequence cancelled and its KV freed', async () => {
    const running = () => metric(server.url, 'wgserve_requests_running');
    const kvUsed = () => metric(server.url, 'wgserve_kv_blocks_used');
    expect(await kvUsed()).toBe(0);
    const abort = new AbortController();
    const res = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 1000, temperature: 0, stream: true }, {}, abort.signal);
    await readSse(res, (events) => events.length >= 3);
    expect(await running()).toBe(1);
    expect(await kvUsed()).toBeGreaterThan(0);
    abort.abort(); // the client goes away mid-stream
    await until(async () => (await running()) === 0 && (await kvUsed()) === 0, 'the cancelled sequence to free its KV', 10_000);
    expect(await metric(server.url, 'wgserve_requests_finished_total{finish_reason="cancelled"}')).toBe(1);
  });

  it('a client that disconnects before its whole response is ready has its sequence cancelled and its KV freed', async () => {
    const cancelled = () => metric(server.url, 'wgserve_requests_finished_total{finish_reason="cancelled"}', 0);
    const before = await cancelled();
    const prompt = 'Once upon a time';
    // as many tokens as the context allows: 2043 steps unless cancelled
    const body = { model: MODEL, prompt, max_tokens: src.config.contextLength - tok().encode(prompt).length, temperature: 0 };
    const abort = new AbortController();
    const res = post(server.url, '/v1/completions', body, {}, abort.signal);
    await until(async () => (await metric(server.url, 'wgserve_requests_running')) === 1, 'the request to run');
    abort.abort(); // the client goes away before any byte of the answer
    await expect(res).rejects.toThrow(/abort/i);
    await until(
      async () => (await cancelled()) === before + 1 && (await metric(server.url, 'wgserve_requests_running')) === 0 && (await metric(server.url, 'wgserve_kv_blocks_used')) === 0,
      'the cancelled sequence to free its KV',
    );
  });

  const tmpDir = useTmpDirs('wgserve-server-');
  it(
    'slow SSE readers: the server buffers at most its high-water mark and one chunk; a reader gets every token once, in order; the drain waits for it',
    async () => {
      // A second server on this engine, on a Unix socket: there the kernel holds ~150 KiB of a
      // stalled response (the sender's buffer, net.core.wmem_default), so the server's own buffer
      // fills after ~100 tokens. Over TCP on loopback the kernel takes up to 4 MiB (tcp_wmem).
      const path = join(tmpDir(), 'wgserve.sock');
      const s2 = buildServer({ engine, modelId: MODEL, processMetrics: false });
      const responses = new Map<string | undefined, ServerResponse>(); // by URL
      s2.app.server.on('request', (req: IncomingMessage, r: ServerResponse) => responses.set(req.url, r));
      await s2.app.listen({ path });
      try {
        // sampled, with 20 alternatives per token: ~1.5 KB of SSE per token
        const body = { model: MODEL, messages: [{ role: 'user' as const, content: 'Hi' }], max_tokens: SLOW_TOKENS, temperature: 1, seed: 11, logprobs: true, top_logprobs: 20 };
        const json = JSON.stringify({ ...body, stream: true });
        /** A raw HTTP client that reads nothing until resumed. */
        const stalled = (url: string) => {
          const sock = connect(path).pause();
          sock.write(`POST ${url} HTTP/1.1\r\nhost: wgserve\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(json)}\r\nconnection: close\r\n\r\n${json}`);
          return sock;
        };
        const slow = stalled('/v1/chat/completions');
        const never = stalled('/v1/chat/completions?never-reads'); // the same stream, to a client that never reads
        // the same request whole, on the main server: batched beside the streams, the same seed, the same tokens
        const whole = client.chat.completions.create(body);
        let queued = 0; // the most the server held for the slow reader
        await until(
          () => {
            queued = Math.max(queued, responses.get('/v1/chat/completions')?.writableLength ?? 0);
            return responses.size === 2 && [...responses.values()].every((r) => r.headersSent) && s2.inFlight === 0;
          },
          'the engine to generate the streams’ tokens',
          SLOW_TOKENS * 2000, // 2 s a step: 10x the 0.2 s measured alone, 4x the 0.5 s beside other test files
        );
        const hwm = responses.get('/v1/chat/completions')!.writableHighWaterMark;
        // the drain waits for responses still being written (its deadline is an hour away)
        const drained = s2.drain(3_600_000);
        const raw = await readChunked(slow);
        const stateAfterRead = s2.state;
        await s2.close(); // ends the drain's wait: the other reader's connection is closed, its stream cut
        const drainResult = await drained;
        const cut = Buffer.concat(await never.resume().toArray()).toString();

        const head = raw.subarray(0, raw.indexOf('\r\n\r\n')).toString();
        expect(head).toMatch(/^HTTP\/1\.1 200 [^]*transfer-encoding: chunked/i);
        const events = await readSse(new Response(dechunk(raw.subarray(head.length + 4))));
        const reference = await whole;
        expect(reference.usage?.completion_tokens).toBe(SLOW_TOKENS);
        expect(events.at(-1)).toBe('[DONE]');
        const chunks = events.slice(0, -1).map((e) => JSON.parse(e) as OpenAI.ChatCompletionChunk);
        expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
        const content = chunks.slice(1).map((c) => c.choices[0]);
        expect(content.map((c) => c.delta.content).join('')).toBe(reference.choices[0].message.content);
        expect(content.map((c) => c.finish_reason)).toEqual([...new Array<null>(content.length - 1).fill(null), 'length']);
        // each token once, in order. Its logprob is f32 arithmetic whose rounding depends on the
        // batch: measured within 1 ulp (5e-7 at -4) of the other run's; allowed 1e-5
        const streamed = content.flatMap((c) => c.logprobs!.content!);
        const expected = reference.choices[0].logprobs!.content!;
        expect(streamed.map((e) => e.token)).toEqual(expected.map((e) => e.token));
        streamed.forEach((e, i) => expect(Math.abs(e.logprob - expected[i].logprob), `token ${i}`).toBeLessThanOrEqual(1e-5));
        // coalesced while the reader was behind, up to MAX_CHUNK_TOKENS a chunk
        const perChunk = content.map((c) => c.logprobs!.content!.length);
        expect(Math.max(...perChunk)).toBeLessThanOrEqual(MAX_CHUNK_TOKENS);
        expect(Math.max(...perChunk)).toBeGreaterThan(1);
        // The server writes only while its buffer is under the high-water mark: what it queued for the
        // stalled reader is at least that mark (the reader did fall behind) and less than the mark plus
        // one write (one event in chunked framing: at most 8 hex digits of length and two CRLFs).
        const largestWrite = Math.max(...events.map((e) => Buffer.byteLength(`data: ${e}\n\n`))) + 12;
        expect(queued).toBeGreaterThanOrEqual(hwm);
        expect(queued).toBeLessThan(hwm + largestWrite);

        // the drain waited while a response was still being written: the reader that never reads
        // held the listener open until close() cut its stream
        expect(stateAfterRead).toBe('draining');
        expect(drainResult).toEqual({ cancelled: 0 });
        expect(cut).toMatch(/^HTTP\/1\.1 200 /);
        expect(cut.endsWith(CHUNKED_END)).toBe(false);
      } finally {
        await s2.close();
      }
    },
    SLOW_TOKENS * 2500,
  );

  it('MessagePack requests and responses, whole and as length-prefixed frames', async () => {
    const body = { model: MODEL, prompt: 'Once upon a time', max_tokens: 5, temperature: 0 };
    const expected = (await generate(model, tok(), [{ tokens: tok().encode(body.prompt), options: greedy(5) }])).results[0].text;

    const res = await post(server.url, '/v1/completions', packMsgpack(body), { 'content-type': MSGPACK, accept: MSGPACK });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(MSGPACK);
    const whole = unpackMsgpack(new Uint8Array(await res.arrayBuffer())) as { choices: { text: string }[]; usage: { completion_tokens: number } };
    expect(whole.choices[0].text).toBe(expected);

    const streamed = await post(server.url, '/v1/chat/completions', packMsgpack({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0, stream: true, stream_options: { include_usage: true } }), {
      'content-type': MSGPACK,
    });
    expect(streamed.headers.get('content-type')).toBe(MSGPACK);
    const frames = new MsgpackFrameReader();
    const chunks = frames.push(new Uint8Array(await streamed.arrayBuffer())) as { choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[]; usage: unknown }[];
    expect(frames.pending).toBe(0);
    expect(chunks[0].choices[0].delta.role).toBe('assistant');
    expect(chunks.at(-2)!.choices[0].finish_reason).toBe('length');
    expect(chunks.at(-1)!.usage).toMatchObject({ completion_tokens: 4 });
    const chat = (await generate(model, tok(), [{ tokens: chatTokens([{ role: 'user', content: 'Hi' }]), options: greedy(4) }])).results[0].text;
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(chat);

    // errors come back in the format asked for
    const bad = await post(server.url, '/v1/completions', new Uint8Array([0x82, 0xa1]), { 'content-type': MSGPACK });
    expect(bad.status).toBe(400);
    expect(unpackMsgpack(new Uint8Array(await bad.arrayBuffer()))).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_body' } });
  });

  it('API key, 429 with Retry-After when the queue is full, and draining', async () => {
    // a second server: one sequence per step, one waiting at most, an API key
    const m2 = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const s2 = await startServer({ engine: new Engine(m2, src.tokenizer, { maxBatch: 1, maxWaiting: 1 }), modelId: MODEL, port: 0, apiKey: 'sekrit', processMetrics: false });
    try {
      const auth = { authorization: 'Bearer sekrit' };
      const none = await post(s2.url, '/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 1 });
      expect(none.status).toBe(401);
      expect(((await none.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
      await expect(new OpenAI({ baseURL: `${s2.url}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      const c2 = new OpenAI({ baseURL: `${s2.url}/v1`, apiKey: 'sekrit', maxRetries: 0 });
      expect((await c2.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 1 })).usage?.completion_tokens).toBe(1);
      expect((await fetch(`${s2.url}/health`)).status).toBe(200); // probes need no key

      // as many tokens as the context allows: A runs for 2043 steps unless cancelled
      const long = { model: MODEL, prompt: 'Once upon a time', max_tokens: src.config.contextLength - tok().encode('Once upon a time').length, stream: true };
      const a = await post(s2.url, '/v1/completions', long, auth);
      await readSse(a.clone(), (e) => e.length >= 1); // A runs
      const abortB = new AbortController();
      const b = await post(s2.url, '/v1/completions', long, auth, abortB.signal); // B waits (one sequence per step)
      expect(b.status).toBe(200);
      const c = await post(s2.url, '/v1/completions', long, auth);
      expect(c.status).toBe(429);
      expect(c.headers.get('retry-after')).toBe('1');
      expect(((await c.json()) as { error: { code: string } }).error.code).toBe('queue_full');
      abortB.abort();
      await until(async () => s2.inFlight === 1, 'B to be cancelled');

      // drain: new requests 503, health says draining; close() ends the drain's wait (its deadline
      // is an hour away), so A, still running, is cancelled and told so
      const events = readSse(a);
      const drained = s2.drain(3_600_000);
      expect(s2.state).toBe('draining');
      const health = await fetch(`${s2.url}/health`);
      expect([health.status, await health.json()]).toEqual([503, { status: 'draining' }]);
      const refused = await post(s2.url, '/v1/completions', long, auth);
      expect(refused.status).toBe(503);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('server_draining');
      expect(s2.inFlight).toBe(1);
      await s2.close();
      expect(await drained).toEqual({ cancelled: 1 });
      const tail = (await events).slice(-2);
      expect(JSON.parse(tail[0]).error.code).toBe('server_shutdown');
      expect(tail[1]).toBe('[DONE]');
      expect(m2.kv.pool.used).toBe(0);
    } finally {
      await s2.close();
      m2.destroy();
    }
  });
});

describe('wgserve serve (the CLI process)', () => {
  it('SIGTERM drains: health says draining, new requests get 503, a request in flight is answered in full, exit 0', async () => {
    // One sequence per step, so B waits while A runs and both are in flight at SIGTERM. The drain
    // deadline, 60 s, is 4x B's 16 steps at 1 s (5x the measured 0.2 s on SwiftShader).
    const proc = spawn('node', [join(repoRoot, 'bin', 'wgserve.mjs'), 'serve', '--port', '0', '--max-batch', '1', '--drain-timeout', '60', '--no-warmup'], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
    try {
      const printed = /wgserve: serving .* \(\w+, context (\d+)\) .* at (http:\/\/[\w.:[\]-]+)/;
      // start-up (load, compile, warm-up) takes ~10 s here; the two lines may arrive apart
      await until(() => printed.test(out) && /curl http:\/\/\S+\/v1\/completions/.test(out), 'the server to print its URL and a curl line', 60_000);
      const [, context, url] = printed.exec(out)!;
      // A: as many tokens as the context allows (the prompt is 5 tokens with BOS), 2043 steps
      const abortA = new AbortController();
      const a = await post(url, '/v1/completions', { model: MODEL, prompt: STORIES_PROMPT, max_tokens: Number(context) - 5, temperature: 0, stream: true }, {}, abortA.signal);
      await readSse(a, (events) => events.length >= 1); // A runs
      const b = post(url, '/v1/completions', { model: MODEL, prompt: STORIES_PROMPT, max_tokens: 16, temperature: 0 });
      await until(async () => (await metric(url, 'wgserve_requests_waiting')) === 1, 'B to wait behind A');
      proc.kill('SIGTERM');
      await until(async () => (await fetch(`${url}/health`)).status === 503, 'health to say draining');
      await until(() => /SIGTERM: draining \(2 in flight/.test(out), 'the server to say it drains A and B');
      expect((await post(url, '/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 1 })).status).toBe(503);
      abortA.abort(); // A's client leaves; B, in flight before SIGTERM, runs now and is answered in full
      const res = await b;
      expect(res.status).toBe(200);
      const whole = (await res.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
      expect(whole.usage.completion_tokens).toBe(16);
      expect(continuesReference(whole.choices[0].text)).toBe(true);
      expect(await exited).toBe(0);
      expect(out).toMatch(/wgserve: drained; bye/); // nothing cancelled at the deadline
    } finally {
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
  });
});

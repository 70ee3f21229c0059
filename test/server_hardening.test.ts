import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { openTokenizer } from '../src/model/source.ts';
import { SLICE_CHARS } from '../src/model/tokenizer/index.ts';
import { metric, parseResponses, post, rawExchange, readSse } from './helpers/http.ts';
import { startServeProcess, type ServeProcess } from '../bench/serve_process.ts';
import { STORIES_REFERENCE } from './helpers/stories.ts';

const MODEL = 'stories260K';
/** --body-timeout and --keep-alive-timeout of the server under test, seconds */
const TIMEOUT_S = 1;
/**
 * How long a connection the server should close may stay open: Node finds an expired request at
 * its next connections check (every 250 ms for a 1 s timeout) and closes an idle keep-alive
 * connection 1 s after its timeout (measured: 2.03 s for 1 s), so about 2 s; eight times that
 * leaves room for a loaded 2-core machine.
 */
const CLOSE_LIMIT_MS = 16_000;
const PAUSES = 'wgserve_prompt_tokenize_pauses_total';

/** `body` is OpenAI's error body, `{error: {message, type, param, code}}`, with this code and param. */
function expectOpenAiError(body: string, code: string, param: string | null = null): void {
  const parsed = JSON.parse(body) as { error: unknown };
  expect(Object.keys(parsed)).toEqual(['error']);
  expect(parsed.error).toEqual({ message: expect.any(String), type: 'invalid_request_error', param, code });
}

/** Stories prose of `chars` characters (ASCII: as many bytes). */
const prose = (chars: number) => STORIES_REFERENCE.repeat(Math.ceil(chars / STORIES_REFERENCE.length)).slice(0, chars);

describe('wgserve serve: slow clients, huge prompts and malformed requests', () => {
  let serve: ServeProcess;
  beforeAll(async () => {
    serve = await startServeProcess(['--body-timeout', String(TIMEOUT_S), '--keep-alive-timeout', String(TIMEOUT_S)]);
  }, 180_000);
  afterAll(() => serve?.stop());

  it('a request not received in full within --body-timeout gets 408 and its connection is closed; others are served meanwhile', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 1 });
    const head = `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
    // headers and half the body; half the headers; nothing at all; 20 of each
    const slow = [head + body.slice(0, body.length / 2), head.slice(0, 30), ''].flatMap((request) => Array.from({ length: 20 }, () => rawExchange(serve.url, request, CLOSE_LIMIT_MS)));
    const health = await fetch(`${serve.url}/health`);
    expect(health.status).toBe(200);
    for (const exchange of await Promise.all(slow)) {
      const responses = parseResponses(exchange.bytes);
      expect(responses.map((r) => r.status)).toEqual([408]);
      expectOpenAiError(responses[0].body, 'request_timeout');
      // never before the timeout (the server's clock starts when the bytes arrive, after ours)
      expect(exchange.closedAfterMs).toBeGreaterThanOrEqual(TIMEOUT_S * 1000);
    }
    expect((await fetch(`${serve.url}/health`)).status).toBe(200);
  });

  it('an idle keep-alive connection is closed after --keep-alive-timeout, with nothing more sent', async () => {
    const exchange = await rawExchange(serve.url, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n', CLOSE_LIMIT_MS);
    const responses = parseResponses(exchange.bytes);
    expect(responses.map((r) => [r.status, r.headers.connection])).toEqual([[200, 'keep-alive']]);
    expect(exchange.closedAfterMs).toBeGreaterThanOrEqual(TIMEOUT_S * 1000);
  });

  it('responses are not timed: a stream that outlasts both timeouts runs to its end', async () => {
    // 24 decode steps at 0.1-0.33 s each on the software device (measured, loaded machine): the
    // stream lasts several times the 1 s timeouts there; min_tokens keeps EOS away
    const res = await post(serve.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 24, min_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } });
    expect(res.status).toBe(200);
    const events = await readSse(res);
    expect(events.at(-1)).toBe('[DONE]');
    const usage = JSON.parse(events.at(-2)!) as { usage: { completion_tokens: number } };
    expect(usage.usage.completion_tokens).toBe(24);
  });

  it('malformed or unsupported HTTP gets a 4xx in OpenAI’s error shape, then the connection closes', async () => {
    const post1 = 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n';
    const cases: [string, string, number, string][] = [
      ['a garbage request line', 'GARBAGE\r\n\r\n', 400, 'invalid_http_request'],
      ['a chunk size that is not hex', `${post1}Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n`, 400, 'invalid_http_request'],
      ['a Content-Length that is not a number', `${post1}Content-Length: abc\r\n\r\n{}`, 400, 'invalid_http_request'],
      ['Content-Length and chunked together', `${post1}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n`, 400, 'invalid_http_request'],
      // without a length the body is no body: its bytes are read as the next request line
      ['a body without a length', `${post1}\r\n{"model": "${MODEL}", "prompt": "Hi"}`, 400, 'invalid_http_request'],
      ['headers over 16 KiB (Node’s limit)', `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\n\r\n`, 431, 'request_header_fields_too_large'],
      ['HTTP/1.1 without Host', 'GET /health HTTP/1.1\r\nConnection: close\r\n\r\n', 400, 'invalid_http_request'],
      ['an Expect other than 100-continue', `${post1}Expect: 200-ok\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`, 417, 'expectation_failed'],
    ];
    for (const [what, request, status, code] of cases) {
      const responses = parseResponses((await rawExchange(serve.url, request, CLOSE_LIMIT_MS)).bytes);
      expect(responses.at(-1)?.status, what).toBe(status);
      for (const r of responses) expect(r.headers['content-type'], what).toMatch(/^application\/json/);
      expectOpenAiError(responses.at(-1)!.body, code);
    }
  });

  it('bodies and fields it cannot honour are refused, each with its code and param', async () => {
    const ok = { model: MODEL, prompt: 'Hi', max_tokens: 1 };
    const chat = { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 };
    const badUtf8 = Buffer.concat([Buffer.from(`{"model": "${MODEL}", "max_tokens": 1, "prompt": "H`), Buffer.from([0xff, 0xfe]), Buffer.from('i"}')]);
    const C = '/v1/chat/completions';
    const cases: [string, string, unknown, Record<string, string>, number, string, string | null][] = [
      ['JSON sent as text/plain', '/v1/completions', JSON.stringify(ok), { 'content-type': 'text/plain' }, 415, 'unsupported_media_type', null],
      ['JSON in another charset', '/v1/completions', JSON.stringify(ok), { 'content-type': 'application/json; charset=latin1' }, 415, 'unsupported_media_type', null],
      ['bytes that are not UTF-8 inside a JSON string', '/v1/completions', badUtf8, {}, 400, 'invalid_json', null],
      ['a lone surrogate escape in the prompt', '/v1/completions', '{"model": "stories260K", "max_tokens": 1, "prompt": "H\\ud800i"}', {}, 400, 'invalid_value', 'prompt'],
      ['a lone surrogate escape in a stop string', '/v1/completions', `{"model": "stories260K", "max_tokens": 1, "prompt": "Hi", "stop": ["a", "\\udc00"]}`, {}, 400, 'invalid_value', 'stop[1]'],
      ['a lone surrogate escape in a message', C, '{"model": "stories260K", "max_tokens": 1, "messages": [{"role": "user", "content": "\\ud83d"}]}', {}, 400, 'invalid_value', 'messages[0].content'],
      ['tool_choice not a mode', C, { ...chat, tool_choice: 'sometimes' }, {}, 400, 'invalid_value', 'tool_choice'],
      ['tool_choice a number', C, { ...chat, tool_choice: 5 }, {}, 400, 'invalid_type', 'tool_choice'],
      ['tool_choice of an unknown type', C, { ...chat, tool_choice: { type: 'banana' } }, {}, 400, 'invalid_value', 'tool_choice.type'],
      ['tool_choice naming no function', C, { ...chat, tool_choice: { type: 'function', function: {} } }, {}, 400, 'invalid_type', 'tool_choice.function.name'],
      ['tool_choice required: there are no tools', C, { ...chat, tool_choice: 'required' }, {}, 400, 'invalid_value', 'tool_choice'],
      ['tool_choice naming a function that is not a tool', C, { ...chat, tool_choice: { type: 'function', function: { name: 'f' } } }, {}, 400, 'invalid_value', 'tool_choice.function.name'],
      ['function_call not a mode', C, { ...chat, function_call: 'required' }, {}, 400, 'invalid_value', 'function_call'],
      ['function_call naming a function', C, { ...chat, function_call: { name: 'f' } }, {}, 400, 'unsupported_value', 'function_call'],
      ['parallel_tool_calls not a boolean', C, { ...chat, parallel_tool_calls: 'yes' }, {}, 400, 'invalid_type', 'parallel_tool_calls'],
      ['tools not an array', C, { ...chat, tools: {} }, {}, 400, 'invalid_type', 'tools'],
      ['functions not an array, beside empty tools', C, { ...chat, tools: [], functions: 'f' }, {}, 400, 'invalid_type', 'functions'],
      ['a tool that is no function', C, { ...chat, tools: [{ type: 'retrieval' }] }, {}, 400, 'unsupported_value', 'tools[0].type'],
      ['functions given', C, { ...chat, functions: [{ name: 'f' }] }, {}, 400, 'unsupported_parameter', 'functions'],
      ['max_tokens junk beside max_completion_tokens', C, { ...chat, max_completion_tokens: 1, max_tokens: 'many' }, {}, 400, 'invalid_type', 'max_tokens'],
      ['a message name not a string', C, { ...chat, messages: [{ role: 'user', content: 'Hi', name: 5 }] }, {}, 400, 'invalid_type', 'messages[0].name'],
      ['tool call arguments that are not JSON', C, { ...chat, messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: '{' } }] }] }, {}, 400, 'invalid_value', 'messages[0].tool_calls[0].function.arguments'],
      ['response_format not an object', C, { ...chat, response_format: 'json' }, {}, 400, 'invalid_type', 'response_format'],
    ];
    for (const [what, path, body, headers, status, code, param] of cases) {
      const res = await post(serve.url, path, body, headers);
      expect(res.status, what).toBe(status);
      expectOpenAiError(await res.text(), code, param);
    }
    // what asks for no tool call is accepted (tool calling itself: test/tools.test.ts)
    for (const fields of [{ tool_choice: 'none' }, { tool_choice: 'auto', parallel_tool_calls: false, tools: [] }, { function_call: 'auto', functions: [] }, { messages: [{ role: 'user', content: 'Hi', name: 'ann' }, { role: 'assistant', content: 'Hello', tool_calls: [] }, { role: 'user', content: 'Hi' }] }]) {
      const res = await post(serve.url, C, { ...chat, ...fields });
      expect(res.status, JSON.stringify(fields)).toBe(200);
    }
  });

  it('a 1 MB prompt is refused before tokenizing; a prompt over the context is tokenized only up to it; a long one that fits is tokenized in slices', async () => {
    const tok = await openTokenizer(join(repoRoot, 'models', 'stories260K', 'stories260K.gguf'));
    const pauses = () => metric(serve.url, PAUSES);
    // 1 MB: at least 1e6 / 7 tokens (7 bytes per token at most), far over the 2048 of the context:
    // refused from its size alone, so its tokenization never hands the loop back even once
    let before = await pauses();
    for (const [path, body] of [
      ['/v1/completions', { model: MODEL, prompt: prose(1e6), max_tokens: 1 }],
      ['/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: prose(1e6) }] }],
    ] as const) {
      const res = await post(serve.url, path, body);
      expect(res.status).toBe(400);
      expectOpenAiError(await res.text(), 'context_length_exceeded', path === '/v1/completions' ? 'max_tokens' : 'messages');
    }
    expect(await pauses()).toBe(before);

    // 14 000 bytes may hold 2047 tokens (14 000 / 7 = 2000 at least), so they are tokenized; this
    // prose has 2.58 bytes per token (measured: 5435 in all), ~790 per 2048-character slice, so
    // the 2047 tokens that fit are passed in the third slice: 2 pauses (before slices 2 and 3),
    // where the whole text takes 7 slices (7 pauses)
    before = await pauses();
    const over = await post(serve.url, '/v1/completions', { model: MODEL, prompt: prose(14_000), max_tokens: 1 });
    expect(over.status).toBe(400);
    expectOpenAiError(await over.text(), 'context_length_exceeded', 'max_tokens');
    const paused = (await pauses()) - before;
    expect(paused).toBeGreaterThanOrEqual(1);
    expect(paused).toBeLessThanOrEqual(3); // one slice of margin for where the cuts fall

    // 2100 characters fit (813 tokens in one pass): two slices of 2048 characters or so, a pause
    // before the second and one before finding the end, and the same ids as one pass
    before = await pauses();
    const text = prose(2100);
    const fits = await post(serve.url, '/v1/completions', { model: MODEL, prompt: text, max_tokens: 1 });
    expect(fits.status).toBe(200);
    expect(((await fits.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(tok.encode(text, { parseSpecial: true }).length);
    expect((await pauses()) - before).toBe(Math.ceil(text.length / SLICE_CHARS));
  });
});

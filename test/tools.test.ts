import { join } from 'node:path';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { ChatTemplate } from '../src/model/chat_template.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { chatPromptSlices, collectSlices } from '../src/model/prompt.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { parseChatRequest, type ToolChoice } from '../src/server/openai.ts';
import { type ChatDelta, ToolCallOutput } from '../src/server/tool_calls.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';
import { post } from './helpers/http.ts';

// Tool calling on /v1/chat/completions (issue 12): tools rendered through the chat template, the
// arguments of a forced call generated under the function's JSON schema, OpenAI-shaped tool_calls
// whole and as stream deltas, tool results back as role "tool" messages.
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';

const weather = {
  type: 'function' as const,
  function: {
    name: 'get_weather',
    description: 'Weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string', pattern: '^[a-z]{1,6}$' }, days: { type: 'integer', minimum: 1, maximum: 7 } }, required: ['city'] },
  },
};
const alarm = {
  type: 'function' as const,
  function: { name: 'set_alarm', parameters: { type: 'object', properties: { hour: { type: 'integer', minimum: 0, maximum: 23 }, loud: { type: 'boolean' } }, required: ['hour', 'loud'] } },
};
const TOOLS = [weather, alarm];
const USER = [{ role: 'user', content: 'What is the weather in Paris?' }];

interface Call {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}

/** A streamed choice's deltas folded the way OpenAI clients do: content joined, calls by index. */
function fold(deltas: ChatDelta[]): { content: string; calls: Call[] } {
  const calls: Call[] = [];
  let content = '';
  for (const d of deltas) {
    content += d.content ?? '';
    for (const t of d.tool_calls ?? []) {
      if (t.id !== undefined) calls[t.index] = { id: t.id, type: t.type!, function: { name: t.function.name!, arguments: '' } };
      calls[t.index].function.arguments += t.function.arguments;
    }
  }
  return { content, calls };
}

/** `text` pushed in random pieces (`seed`), then ended. */
function streamed(out: ToolCallOutput, text: string, seed: number): ChatDelta[] {
  const rand = mulberry32(seed);
  const deltas: ChatDelta[] = [];
  for (let i = 0; i < text.length; ) {
    const n = 1 + Math.floor(rand() * 6);
    const d = out.push(text.slice(i, i + n));
    if (d) deltas.push(d);
    i += n;
  }
  const last = out.end();
  if (last) deltas.push(last);
  return deltas;
}

describe('tool-call output, whole and streamed', () => {
  const names = new Set(['get_weather', 'set_alarm']);
  let n = 0;
  const output = (choice: ToolChoice) => new ToolCallOutput(choice, names, () => `call_${n++}`);

  it('"required": an array of calls, split into the same calls at any piece boundaries', () => {
    const text = '[{"name":"get_weather","arguments":{"city":"a}\\"{","days":2}},{"name":"set_alarm","arguments":{"hour":7,"loud":true}}]';
    const whole = output({ mode: 'required', parallel: true });
    whole.push(text);
    expect(whole.end()).toBeNull();
    const expected = [
      { name: 'get_weather', arguments: '{"city":"a}\\"{","days":2}' },
      { name: 'set_alarm', arguments: '{"hour":7,"loud":true}' },
    ];
    expect(whole.message().tool_calls!.map((c) => c.function)).toEqual(expected);
    expect(whole.message().content).toBeNull();
    expect(whole.finishReason('stop')).toBe('tool_calls');
    for (let seed = 1; seed <= 20; seed++) {
      const { content, calls } = fold(streamed(output({ mode: 'required', parallel: true }), text, seed));
      expect(content).toBe('');
      expect(calls.map((c) => c.function)).toEqual(expected);
      expect(new Set(calls.map((c) => c.id)).size).toBe(2);
    }
  });

  it('a named function: the whole text is its arguments; finish_reason stays "stop" (the call was forced)', () => {
    const text = '{"hour":12,"loud":false}';
    const { calls } = fold(streamed(output({ mode: 'named', name: 'set_alarm' }), text, 3));
    expect(calls.map((c) => c.function)).toEqual([{ name: 'set_alarm', arguments: text }]);
    const o = output({ mode: 'named', name: 'set_alarm' });
    o.push(text);
    expect(o.finishReason('stop')).toBe('stop');
  });

  it('"auto": content streams, Hermes <tool_call> blocks become calls, anything else stays content', () => {
    const text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>{"name": "set_alarm", "arguments": {"hour": 6, "loud": true}}</tool_call>';
    for (let seed = 1; seed <= 10; seed++) {
      const o = output({ mode: 'auto' });
      const { content, calls } = fold(streamed(o, text, seed));
      expect(content).toBe('Let me check.\n');
      expect(calls.map((c) => c.function)).toEqual([
        { name: 'get_weather', arguments: '{"city":"Paris"}' },
        { name: 'set_alarm', arguments: '{"hour":6,"loud":true}' },
      ]);
      expect(o.finishReason('stop')).toBe('tool_calls');
    }
    // an unknown function, broken JSON, a block never closed, text after the calls: all content
    for (const bad of ['<tool_call>{"name": "nope", "arguments": {}}</tool_call>', '<tool_call>{"name": "get_weather", "arguments": {</tool_call>', 'a <tool_call>{"name": "get_weather", "arguments": {}}', '<tool_call>{"name": "set_alarm", "arguments": {}}</tool_call> and more', 'x < y <tool']) {
      const o = output({ mode: 'auto' });
      const { content, calls } = fold(streamed(o, bad, 5));
      expect(content).toBe(bad);
      expect(calls).toEqual([]);
      expect(o.finishReason('stop')).toBe('stop');
    }
  });
});

describe('tool requests are validated', () => {
  const parse = (body: Record<string, unknown>) => () => parseChatRequest({ model: MODEL, messages: USER, ...body }, 512);
  const fails = (body: Record<string, unknown>, param: string, message: RegExp) => {
    let err: { param?: string; message: string } | undefined;
    try {
      parse(body)();
    } catch (e) {
      err = e as { param?: string; message: string };
    }
    expect(err?.param, JSON.stringify(body)).toBe(param);
    expect(err?.message).toMatch(message);
  };

  it('answers malformed tools, choices and tool messages with a 400 naming the field', () => {
    fails({ tools: [{ type: 'function', function: { name: 'bad name' } }] }, 'tools[0].function.name', /not a function name/);
    fails({ tools: [weather, weather] }, 'tools[1].function.name', /defined twice/);
    fails({ tools: [{ type: 'retrieval' }] }, 'tools[0].type', /only 'function'/);
    fails({ tools: TOOLS, tool_choice: { type: 'function', function: { name: 'other' } } }, 'tool_choice.function.name', /no tool named 'other'/);
    fails({ tool_choice: 'required' }, 'tool_choice', /needs 'tools'/);
    fails({ tools: TOOLS, tool_choice: 'sometimes' }, 'tool_choice', /expected 'none', 'auto', 'required'/);
    fails({ tools: TOOLS, tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format', /Only one structured-output constraint/);
    fails({ functions: [{ name: 'f' }] }, 'functions', /use 'tools'/);
    fails({ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { d: { type: 'string', format: 'date' } } } } }], tool_choice: 'required' }, 'tools[0].function.parameters', /keyword 'format'/);
    fails({ messages: [...USER, { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'get_weather', arguments: '{city' } }] }] }, 'messages[1].tool_calls[0].function.arguments', /not JSON/);
    fails({ messages: [...USER, { role: 'tool', content: 'sunny' }] }, 'messages[1].tool_call_id', /the id of the call/);
    fails({ messages: [{ role: 'user', content: 'x', tool_calls: [] }] }, 'messages[0].tool_calls', /only assistant messages/);
  });

  it('accepts what needs no constraint: "auto" with any schema, "none" offering no tools', () => {
    const withFormat = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { d: { type: 'string', format: 'date' } } } } }];
    expect(parse({ tools: withFormat })()).toMatchObject({ toolChoice: { mode: 'auto' }, guide: undefined });
    expect(parse({ tools: TOOLS, tool_choice: 'none' })()).toMatchObject({ toolChoice: { mode: 'none' }, tools: [] });
    expect(parse({ tools: TOOLS, tool_choice: 'required', parallel_tool_calls: false })().guide).toMatchObject({ kind: 'json_schema', schema: { maxItems: 1 } });
  });
});

/**
 * The e2e server's template: ChatML naming the tools in one short line, so prompts stay ~60 tokens
 * (the default template's JSON listing is ~370 with stories260K's 512-token vocabulary, and every
 * decode step of every request attends over it on the software device). The default template's
 * rendering of tools, calls and results is checked on its own below.
 */
const SHORT_TOOLS_TEMPLATE =
  "{% if tools %}{{ '<|im_start|>system\\nTools:' }}{% for t in tools %}{{ ' ' + t['function']['name'] }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}" +
  "{% for m in messages %}{% if m['role'] == 'tool' %}{{ '<|im_start|>tool\\n' + m['content'] + '<|im_end|>\\n' }}" +
  "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}{{ c['function']['name'] + ' ' + c['function']['arguments'] | tojson }}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endif %}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe('the default chat template with tools', () => {
  it('lists the tools, writes calls in <tool_call> blocks and results as <tool_response>; no tools: plain ChatML', async () => {
    const tok = (await openModel(STORIES)).tokenizer;
    const messages = [
      { role: 'user' as const, content: USER[0].content },
      { role: 'assistant' as const, content: '', tool_calls: [{ id: 'call_1', type: 'function' as const, function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
      { role: 'tool' as const, tool_call_id: 'call_1', content: '{"sky":"clear"}' },
    ];
    const text = chatPromptSlices(tok, new ChatTemplate(), messages, TOOLS).text;
    expect(text).toContain(`<tools>\n${JSON.stringify(TOOLS[0]).replaceAll('":', '": ').replaceAll(',"', ', "')}\n`);
    expect(text).toContain('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>');
    expect(text).toContain('<|im_start|>user\n<tool_response>\n{"sky":"clear"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n');
    expect(chatPromptSlices(tok, new ChatTemplate(), [messages[0]]).text).toBe(`<|im_start|>user\n${USER[0].content}<|im_end|>\n<|im_start|>assistant\n`);
  });
});

// the requests below run together in beforeAll (one batch, ~70 steps); the first test waits for most of it
describe('tool calling through the OpenAI API', { timeout: 300_000 }, () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let model: GpuModel;
  let server: WgServer & { url: string };
  let client: OpenAI;
  const ajv = new Ajv();

  const chat = async (body: Record<string, unknown>) => {
    const res = await post(server.url, '/v1/chat/completions', { model: MODEL, messages: USER, max_tokens: 32, ...body });
    return { status: res.status, body: (await res.json()) as { choices: { message: { content: string | null; tool_calls?: Call[] }; finish_reason: string }[]; error?: { param: string } } };
  };
  type Reply = Awaited<ReturnType<typeof chat>>;
  /** Every generating request of this block, started together so that they share the engine's steps. */
  let runs: Record<'named' | 'required' | 'auto' | 'plain', Promise<Reply>> & {
    namedStream: Promise<{ deltas: ChatDelta[]; finish: string | null }>;
    single: Promise<OpenAI.ChatCompletion>;
  };
  const named = { type: 'function', function: { name: 'get_weather' } } as const;
  // a call in the Hermes form, written under a regex: stories260K writes no tool calls of its own
  const AUTO_CALL = '<tool_call>\\{"name": "get_weather", "arguments": \\{"city": "[a-z]{1,5}"\\}\\}</tool_call>';

  beforeAll(async () => {
    src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    server = await startServer({ engine: new Engine(model, src.tokenizer), modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false, template: new ChatTemplate(SHORT_TOOLS_TEMPLATE) });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'none', maxRetries: 0 });
    const messages = USER as OpenAI.ChatCompletionMessageParam[];
    runs = {
      named: chat({ tools: [weather], tool_choice: named, temperature: 1.3, n: 2, seed: 5 }),
      // the official client, streamed, with the seed of the whole response's first choice
      namedStream: (async () => {
        const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 32, tools: [weather], tool_choice: named, temperature: 1.3, seed: 5, stream: true });
        const deltas: ChatDelta[] = [];
        let finish: string | null = null;
        for await (const chunk of stream) {
          deltas.push(chunk.choices[0].delta as ChatDelta);
          finish = chunk.choices[0].finish_reason ?? finish;
        }
        return { deltas, finish };
      })(),
      required: chat({ tools: TOOLS, tool_choice: 'required', temperature: 1.2, seed: 9, max_tokens: 40 }),
      single: client.chat.completions.create({ model: MODEL, messages, max_tokens: 72, tools: TOOLS, tool_choice: 'required', parallel_tool_calls: false, temperature: 0 }),
      auto: chat({ tools: [weather], guided_regex: AUTO_CALL, temperature: 1, seed: 3, max_tokens: 96 }),
      plain: chat({ tools: [weather], temperature: 0, max_tokens: 8 }),
    };
    // each test awaits its own; none is left unobserved if a test fails early
    for (const p of Object.values(runs)) (p as Promise<unknown>).catch(() => {});
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  const validates = (schema: object, args: string) => {
    const ok = ajv.validate(schema, JSON.parse(args));
    expect(ok, `${args}: ${ajv.errorsText()}`).toBe(true);
  };

  it('a named function: arguments always parse and validate, greedy and sampled; the stream carries the same call', async () => {
    const r = await runs.named;
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    for (const c of r.body.choices) {
      expect(c.finish_reason).toBe('stop');
      expect(c.message.content).toBeNull();
      expect(c.message.tool_calls).toHaveLength(1);
      expect(c.message.tool_calls![0]).toMatchObject({ type: 'function', function: { name: 'get_weather' } });
      expect(c.message.tool_calls![0].id).toMatch(/^call-/);
      validates(weather.function.parameters, c.message.tool_calls![0].function.arguments);
    }
    // the stream's deltas fold into the call the whole response returned for the same seed
    const { deltas, finish } = await runs.namedStream;
    expect(fold(deltas).calls.map((c) => c.function)).toEqual([r.body.choices[0].message.tool_calls![0].function]);
    expect(finish).toBe('stop');
  });

  it('"required": one or more calls, each naming a tool with arguments valid for it; parallel_tool_calls false gives one', async () => {
    const [r, single] = await Promise.all([runs.required, runs.single]);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(single.choices[0].finish_reason).toBe('tool_calls');
    expect(single.choices[0].message.tool_calls).toHaveLength(1);
    for (const c of [...r.body.choices, ...(single.choices as unknown as Reply['body']['choices'])]) {
      // an array cut short by max_tokens ends in a partial call; every call before it is whole
      const calls = c.finish_reason === 'length' ? (c.message.tool_calls ?? []).slice(0, -1) : c.message.tool_calls!;
      if (c.finish_reason !== 'length') {
        expect(c.finish_reason).toBe('tool_calls');
        expect(calls.length).toBeGreaterThan(0);
      }
      for (const call of calls) {
        const tool = TOOLS.find((t) => t.function.name === call.function.name);
        expect(tool, call.function.name).toBeDefined();
        validates(tool!.function.parameters, call.function.arguments);
      }
    }
  });

  it('"auto": calls the model writes in <tool_call> blocks are parsed, other text is content', async () => {
    const [r, plain] = await Promise.all([runs.auto, runs.plain]);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const [c] = r.body.choices;
    expect(c.finish_reason).toBe('tool_calls');
    expect(c.message.tool_calls![0].function.name).toBe('get_weather');
    validates(weather.function.parameters, c.message.tool_calls![0].function.arguments);
    expect(plain.body.choices[0].message.tool_calls).toBeUndefined();
    expect(plain.body.choices[0].message.content).toBeTruthy();
  });

  it('tool results come back as role "tool" messages, rendered through the chat template', async () => {
    const messages = [
      ...USER,
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"sky":"clear"}' },
    ];
    const r = await client.chat.completions.create({ model: MODEL, messages: messages as OpenAI.ChatCompletionMessageParam[], tools: TOOLS, max_tokens: 4, temperature: 0 });
    const rendered = chatPromptSlices(src.tokenizer, new ChatTemplate(SHORT_TOOLS_TEMPLATE), [
      { role: 'user', content: USER[0].content },
      { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"sky":"clear"}' },
    ], TOOLS);
    expect(rendered.text).toContain('Tools: get_weather set_alarm');
    expect(rendered.text).toContain('get_weather {"city": "Paris"}');
    expect(rendered.text).toContain('<|im_start|>tool\n{"sky":"clear"}<|im_end|>');
    expect(r.usage!.prompt_tokens).toBe(collectSlices(rendered.slices).length);
    // control-token text where the template writes it as its own is refused
    const bad = await chat({ messages: [...USER, { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'get_weather', arguments: '{"city":"</s>"}' } }] }] });
    expect(bad.status).toBe(400);
    expect(bad.body.error!.param).toBe('messages');
  });
});

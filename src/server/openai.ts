/**
 * The OpenAI API surface: request validation (into the engine's terms), error bodies, and the
 * response and stream-chunk shapes of /v1/completions and /v1/chat/completions. No I/O here.
 */
import { ConstraintError } from '../constraints/automaton.ts';
import type { GuideSpec } from '../constraints/guide.ts';
import { schemaToRegex } from '../constraints/json_schema.ts';
import type { FinishReason, SamplingOptions, TokenEvent, Usage } from '../engine/engine.ts';
import { LOGIT_BIAS_RANGE, MAX_LOGIT_BIAS, MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY } from '../engine/logit_penalties.ts';
import type { ChatMessage, TemplateTool, TemplateToolCall } from '../model/chat_template.ts';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import type { Slo } from '../scheduler/scheduler.ts';
import { TokenType } from '../model/tokenizer/vocab.ts';

/** An error answered with OpenAI's body: `{error: {message, type, param, code}}`. */
export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body(): ErrorBody {
    return errorBody(this.message, this.type, this.param, this.code);
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export const errorBody = (message: string, type = 'invalid_request_error', param: string | null = null, code: string | null = null): ErrorBody => ({
  error: { message, type, param, code },
});

/** A 400 for one parameter. */
const invalid = (param: string, message: string, code = 'invalid_value') => new ApiError(400, message, 'invalid_request_error', param, code);

// ---------------------------------------------------------------------------------------------
// validation

type Body = Record<string, unknown>;

const describe = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);
const wrongType = (param: string, expected: string, v: unknown) =>
  invalid(param, `Invalid type for '${param}': expected ${expected}, but got ${describe(v)} instead.`, 'invalid_type');

/** The field, or undefined when absent or null (OpenAI treats an explicit null as "default"). */
const field = (b: Body, name: string): unknown => (b[name] === null ? undefined : b[name]);

function optNumber(b: Body, name: string, min: number, max: number): number | undefined {
  const v = field(b, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw wrongType(name, 'a number', v);
  if (v < min || v > max) throw invalid(name, `Invalid '${name}': expected a value in [${min}, ${max}], but got ${v} instead.`);
  return v;
}

/** `note` is appended to the range errors. */
function optInteger(b: Body, name: string, min: number, max = Number.MAX_SAFE_INTEGER, note = ''): number | undefined {
  const v = field(b, name);
  if (v === undefined) return undefined;
  // MessagePack's 64-bit integer formats decode as BigInt: compared exactly, never rounded
  if (!(typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v)))) throw wrongType(name, 'an integer', v);
  if (v < min) throw invalid(name, `Invalid '${name}': integer below minimum value. Expected a value >= ${min}, but got ${v} instead.${note}`, 'integer_below_min_value');
  if (v > max) throw invalid(name, `Invalid '${name}': integer above maximum value. Expected a value <= ${max}, but got ${v} instead.${note}`, 'integer_above_max_value');
  return Number(v);
}

function optBoolean(b: Body, name: string): boolean | undefined {
  const v = field(b, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw wrongType(name, 'a boolean', v);
  return v;
}

function optString(b: Body, name: string): string | undefined {
  const v = field(b, name);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw wrongType(name, 'a string', v);
  return v;
}

/** A lone UTF-16 surrogate: JSON's \uD800-\uDFFF escapes without their pair, which no UTF-8 text holds. */
const LONE_SURROGATE = /\p{Cs}/u;

/** `s`, refused when it is not Unicode text (a tokenizer would see U+FFFD in its place). */
export function text(param: string, s: string): string {
  if (LONE_SURROGATE.test(s)) throw invalid(param, `Invalid '${param}': the text holds a lone UTF-16 surrogate (a \\uD800-\\uDFFF escape without its pair), which is not Unicode text.`);
  return s;
}

function isObject(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

const SLO_FIELDS: Record<string, keyof Slo> = { ttft_ms: 'ttftMs', tpot_ms: 'tpotMs', deadline_ms: 'deadlineMs' };

/** The `slo` extension: `{ttft_ms, tpot_ms, deadline_ms}`, each optional, positive milliseconds. */
function optSlo(b: Body): Slo | undefined {
  const v = field(b, 'slo');
  if (v === undefined) return undefined;
  if (!isObject(v)) throw wrongType('slo', 'an object', v);
  const slo: Slo = {};
  for (const [k, x] of Object.entries(v)) {
    const key = SLO_FIELDS[k];
    const param = `slo.${k}`;
    if (!key) throw invalid(param, `Unknown parameter '${param}': an slo has ${Object.keys(SLO_FIELDS).join(', ')}.`, 'unknown_parameter');
    if (x === null || x === undefined) continue;
    if (typeof x !== 'number' || !Number.isFinite(x)) throw wrongType(param, 'a number (milliseconds)', x);
    if (x <= 0) throw invalid(param, `Invalid '${param}': expected a positive number of milliseconds, but got ${x} instead.`);
    slo[key] = x;
  }
  return slo;
}

/**
 * OpenAI's `logit_bias`: an object from token ids (decimal strings) to biases in [-100, 100], at
 * most 300 entries, each id in the vocabulary; as [id, bias] pairs (undefined when empty).
 */
function optLogitBias(b: Body, vocabSize: number): [number, number][] | undefined {
  const v = field(b, 'logit_bias');
  if (v === undefined) return undefined;
  if (!isObject(v)) throw wrongType('logit_bias', 'an object mapping token ids to biases', v);
  const entries = Object.entries(v);
  if (entries.length > MAX_LOGIT_BIAS) throw invalid('logit_bias', `Invalid 'logit_bias': at most ${MAX_LOGIT_BIAS} entries, got ${entries.length}.`);
  const out: [number, number][] = entries.map(([key, bias]) => {
    const param = `logit_bias.${key}`;
    // canonical decimal ids only, so that two keys never name one token ("7" and "07")
    if (!/^(0|[1-9][0-9]*)$/.test(key) || Number(key) >= vocabSize) {
      throw invalid('logit_bias', `Invalid 'logit_bias': key ${JSON.stringify(key)} is not a token id of this model (integers 0..${vocabSize - 1}, written in decimal).`);
    }
    if (typeof bias !== 'number' || !Number.isFinite(bias)) throw wrongType(param, 'a number', bias);
    if (Math.abs(bias) > LOGIT_BIAS_RANGE) throw invalid(param, `Invalid '${param}': expected a value in [-${LOGIT_BIAS_RANGE}, ${LOGIT_BIAS_RANGE}], but got ${bias} instead.`);
    return [Number(key), bias];
  });
  return out.length ? out : undefined;
}

/** Top log-probabilities per token at most (vLLM's limit; OpenAI's is 5 for completions, 20 for chat). */
export const MAX_TOP_LOGPROBS = 20;
/** Stop strings per request at most. */
export const MAX_STOP = 16;
/** Choices per request (`n`, and completions' `best_of`) at most: OpenAI's limit on `n`. */
export const MAX_CHOICES = 128;

/**
 * A structured-output request (src/constraints/guide.ts builds its token automaton, or it names a
 * set registered with POST /v1/constraints); `param` is the field it came from, for errors.
 */
export type Guide = (GuideSpec | { kind: 'registered'; id: string }) & { param: string };

const MAX_CHOICE_STRINGS = 10_000;

/**
 * vLLM's guided_choice / guided_regex / guided_json, OpenAI's response_format (json_schema,
 * json_object; text is no constraint), and `constraint` (a registered set's id). At most one of them.
 */
function optGuide(b: Body): Guide | undefined {
  const found: Guide[] = [];
  const choice = field(b, 'guided_choice');
  if (choice !== undefined) {
    if (!Array.isArray(choice) || !choice.every((c) => typeof c === 'string')) throw wrongType('guided_choice', 'an array of strings', choice);
    if (choice.length === 0) throw invalid('guided_choice', "Invalid 'guided_choice': empty array; give at least one allowed output.", 'empty_array');
    if (choice.length > MAX_CHOICE_STRINGS) throw invalid('guided_choice', `Invalid 'guided_choice': at most ${MAX_CHOICE_STRINGS} strings here; register larger sets with POST /v1/constraints.`);
    choice.forEach((c, i) => text(`guided_choice[${i}]`, c));
    found.push({ param: 'guided_choice', kind: 'choice', choices: choice });
  }
  const regex = field(b, 'guided_regex');
  if (regex !== undefined) {
    if (typeof regex !== 'string') throw wrongType('guided_regex', 'a string', regex);
    found.push({ param: 'guided_regex', kind: 'regex', pattern: text('guided_regex', regex) });
  }
  let json = field(b, 'guided_json');
  if (json !== undefined) {
    if (typeof json === 'string') {
      try {
        json = JSON.parse(json) as unknown;
      } catch {
        throw invalid('guided_json', "Invalid 'guided_json': a string must hold a JSON schema.");
      }
    }
    if (!isObject(json)) throw wrongType('guided_json', 'a JSON schema object', json);
    found.push({ param: 'guided_json', kind: 'json_schema', schema: json });
  }
  const rf = field(b, 'response_format');
  if (rf !== undefined) {
    if (!isObject(rf)) throw wrongType('response_format', 'an object', rf);
    if (rf.type === 'json_object') found.push({ param: 'response_format', kind: 'json_object' });
    else if (rf.type === 'json_schema') {
      const js = rf.json_schema;
      if (!isObject(js)) throw wrongType('response_format.json_schema', 'an object with a schema', js);
      if (typeof js.name !== 'string') throw wrongType('response_format.json_schema.name', 'a string', js.name);
      if (!isObject(js.schema)) throw wrongType('response_format.json_schema.schema', 'a JSON schema object', js.schema);
      if (js.strict !== undefined && js.strict !== null && typeof js.strict !== 'boolean') throw wrongType('response_format.json_schema.strict', 'a boolean', js.strict);
      found.push({ param: 'response_format.json_schema.schema', kind: 'json_schema', schema: js.schema });
    } else if (rf.type !== 'text') throw invalid('response_format.type', `Invalid 'response_format.type': expected 'text', 'json_object' or 'json_schema', got ${JSON.stringify(rf.type ?? null)}.`);
  }
  const id = field(b, 'constraint');
  if (id !== undefined) {
    if (typeof id !== 'string') throw wrongType('constraint', 'a string (the id of a registered set)', id);
    found.push({ param: 'constraint', kind: 'registered', id });
  }
  if (found.length > 1) throw invalid(found[1].param, `Only one structured-output constraint per request: got ${found.map((g) => `'${g.param.split('.')[0]}'`).join(' and ')}.`, 'unsupported_value');
  return found[0];
}

/** What both endpoints share, validated. */
/** repetition_penalty, min_tokens and min_p are vLLM's extensions; logitBias is undefined when absent or empty */
export interface CommonRequest extends Pick<SamplingOptions, 'logitBias' | 'presencePenalty' | 'frequencyPenalty' | 'repetitionPenalty' | 'minTokens' | 'minP'> {
  model: string;
  /** undefined: the endpoint's default */
  maxTokens?: number;
  temperature: number;
  topP: number;
  topK: number;
  /** undefined: a random seed */
  seed?: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
  /** choices to return */
  n: number;
  user?: string;
  /** extension: latency objectives (override those of the class) */
  slo?: Slo;
  /** extension: a server-side SLO class (`--slo-class`) */
  sloClass?: string;
  /** extension: larger first among otherwise equal requests */
  priority?: number;
  /** structured output (guided_*, response_format or constraint) */
  guide?: Guide;
}

export interface CompletionRequest extends CommonRequest {
  prompt: { text: string } | { tokens: number[] };
  /** candidates generated, of which the n with the highest cumulative logprob are returned (>= n) */
  bestOf: number;
  echo: boolean;
  /** top alternatives per token (0: only the chosen token's); null: no logprobs */
  logprobs: number | null;
}

/** How the answer may call tools: not at all, as the model decides, at least once, or one named function. */
export type ToolChoice = { mode: 'none' } | { mode: 'auto' } | { mode: 'required'; parallel: boolean } | { mode: 'named'; name: string };

export interface ChatRequest extends CommonRequest {
  messages: ChatMessage[];
  /** offered to the model (none with tool_choice "none") */
  tools: TemplateTool[];
  toolChoice: ToolChoice;
  /** top alternatives per token; null: no logprobs */
  logprobs: number | null;
}

function common(body: unknown, vocabSize: number): { b: Body; req: CommonRequest } {
  if (!isObject(body)) throw new ApiError(400, 'The request body must be a JSON (or MessagePack) object.', 'invalid_request_error', null, 'invalid_body');
  const b = body;
  const model = field(b, 'model');
  if (model === undefined) throw invalid('model', "Missing required parameter: 'model'.", 'missing_required_parameter');
  if (typeof model !== 'string') throw wrongType('model', 'a string', model);

  const n = optInteger(b, 'n', 1, MAX_CHOICES) ?? 1;

  const stream = optBoolean(b, 'stream') ?? false;
  let includeUsage = false;
  const so = field(b, 'stream_options');
  if (so !== undefined) {
    if (!stream) throw invalid('stream_options', "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
    if (!isObject(so)) throw wrongType('stream_options', 'an object', so);
    const iu = so.include_usage ?? undefined;
    if (iu !== undefined && iu !== null && typeof iu !== 'boolean') throw wrongType('stream_options.include_usage', 'a boolean', iu);
    includeUsage = iu === true;
  }


  const stopField = field(b, 'stop');
  let stop: string[] = [];
  if (typeof stopField === 'string') stop = [stopField];
  else if (Array.isArray(stopField)) {
    if (!stopField.every((s) => typeof s === 'string')) throw wrongType('stop', 'a string or an array of strings', stopField);
    if (stopField.length > MAX_STOP) throw invalid('stop', `Invalid 'stop': at most ${MAX_STOP} stop strings, got ${stopField.length}.`);
    stop = stopField as string[];
  } else if (stopField !== undefined) throw wrongType('stop', 'a string or an array of strings', stopField);
  stop.forEach((s, i) => text(`stop[${i}]`, s));

  const sloClass = optString(b, 'slo_class');
  const priority = optInteger(b, 'priority', -(2 ** 31), 2 ** 31 - 1);
  const topK = field(b, 'top_k') === -1 ? 0 : optInteger(b, 'top_k', 0); // vLLM's -1 = off too
  const seed = optInteger(b, 'seed', Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, ' Seeds are integers within +-(2^53 - 1), which a JSON number carries exactly (beyond that, different seeds would arrive as the same number).');
  return {
    b,
    req: {
      model,
      temperature: optNumber(b, 'temperature', 0, 2) ?? 1,
      topP: optNumber(b, 'top_p', 0, 1) ?? 1,
      topK: topK ?? 0,
      seed,
      stop: stop.filter((s) => s.length > 0),
      stream,
      includeUsage,
      n,
      user: optString(b, 'user'),
      slo: optSlo(b),
      sloClass,
      priority,
      logitBias: optLogitBias(b, vocabSize),
      presencePenalty: optNumber(b, 'presence_penalty', -2, 2),
      frequencyPenalty: optNumber(b, 'frequency_penalty', -2, 2),
      repetitionPenalty: optNumber(b, 'repetition_penalty', MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY),
      minTokens: optInteger(b, 'min_tokens', 0),
      minP: optNumber(b, 'min_p', 0, 1),
      guide: optGuide(b),
    },
  };
}

/** Validates a /v1/completions body. `vocabSize` bounds token-id prompts. */
export function parseCompletionRequest(body: unknown, vocabSize: number): CompletionRequest {
  const { b, req } = common(body, vocabSize);
  const maxTokens = optInteger(b, 'max_tokens', 1);

  let p = field(b, 'prompt');
  if (p === undefined) throw invalid('prompt', "Missing required parameter: 'prompt'.", 'missing_required_parameter');
  // a batch of one prompt is that prompt
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0];
  let prompt: CompletionRequest['prompt'];
  if (typeof p === 'string') prompt = { text: text('prompt', p) };
  else if (Array.isArray(p) && p.every((t) => typeof t === 'number')) {
    for (const t of p as number[]) {
      if (!Number.isInteger(t) || t < 0 || t >= vocabSize) throw invalid('prompt', `Invalid 'prompt': token id ${t} is outside the vocabulary (0..${vocabSize - 1}).`);
    }
    prompt = { tokens: p as number[] };
  } else if (Array.isArray(p) && p.length > 1 && p.every((x) => typeof x === 'string' || Array.isArray(x))) {
    throw invalid('prompt', `Invalid 'prompt': this server takes one prompt per request, got ${p.length}.`, 'unsupported_value');
  } else throw wrongType('prompt', 'a string or an array of token ids', p);

  const bestOf = optInteger(b, 'best_of', 1, MAX_CHOICES) ?? req.n;
  if (bestOf < req.n) throw invalid('best_of', `Invalid 'best_of': it must be at least 'n' (${req.n}), got ${bestOf}.`);
  if (bestOf > req.n && req.stream) throw invalid('best_of', "'best_of' greater than 'n' cannot be streamed (the best choices are known only at the end).", 'unsupported_value');
  const suffix = optString(b, 'suffix');
  if (suffix) throw invalid('suffix', "'suffix' is not supported by this server.", 'unsupported_parameter');
  const echo = optBoolean(b, 'echo') ?? false;
  const logprobs = optInteger(b, 'logprobs', 0, MAX_TOP_LOGPROBS) ?? null;
  if (echo && logprobs !== null) throw invalid('echo', "'echo' together with 'logprobs' is not supported by this server (no prompt log-probabilities).", 'unsupported_value');
  return { ...req, maxTokens, prompt, echo, logprobs, bestOf };
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

/** OpenAI's rule for function names; the chat template writes them into the prompt unescaped. */
const FUNCTION_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
const MAX_TOOLS = 128;

function functionName(param: string, v: unknown): string {
  if (typeof v !== 'string') throw wrongType(param, 'a string', v);
  if (!FUNCTION_NAME.test(v)) throw invalid(param, `Invalid '${param}': ${JSON.stringify(v)} is not a function name (1-64 letters, digits, '_' or '-').`);
  return v;
}

/** `tools`: functions only; their parameters are JSON schemas (an absent one takes no arguments). */
function optTools(b: Body): TemplateTool[] {
  const v = field(b, 'tools');
  if (v === undefined) return [];
  if (!Array.isArray(v)) throw wrongType('tools', 'an array', v);
  if (v.length > MAX_TOOLS) throw invalid('tools', `Invalid 'tools': at most ${MAX_TOOLS} tools, got ${v.length}.`);
  const names = new Set<string>();
  return v.map((t, i): TemplateTool => {
    const param = `tools[${i}]`;
    if (!isObject(t)) throw wrongType(param, 'an object', t);
    if (t.type !== 'function') throw invalid(`${param}.type`, `Invalid '${param}.type': only 'function' tools are supported, got ${JSON.stringify(t.type ?? null)}.`, 'unsupported_value');
    const fn = t.function;
    if (!isObject(fn)) throw wrongType(`${param}.function`, 'an object', fn);
    const name = functionName(`${param}.function.name`, fn.name);
    if (names.has(name)) throw invalid(`${param}.function.name`, `Invalid '${param}.function.name': the function '${name}' is defined twice.`);
    names.add(name);
    const description = fn.description ?? undefined;
    if (description !== undefined && typeof description !== 'string') throw wrongType(`${param}.function.description`, 'a string', description);
    const parameters = fn.parameters ?? { type: 'object', properties: {} };
    if (!isObject(parameters)) throw wrongType(`${param}.function.parameters`, 'a JSON schema object', parameters);
    return { type: 'function', function: { name, ...(description === undefined ? {} : { description }), parameters } };
  });
}

/**
 * `tool_choice`: "none", "auto" (the default with tools), "required", or {type: "function",
 * function: {name}}; `parallel_tool_calls` (default true) lets "required" answer with several calls.
 */
function optToolChoice(b: Body, tools: TemplateTool[]): ToolChoice {
  const parallel = optBoolean(b, 'parallel_tool_calls') ?? true;
  const v = field(b, 'tool_choice') ?? (tools.length ? 'auto' : 'none');
  const needsTools = (what: string) => invalid('tool_choice', `'tool_choice' ${what} needs 'tools' to choose from.`);
  if (typeof v === 'string') {
    if (v !== 'none' && v !== 'auto' && v !== 'required') throw invalid('tool_choice', `Invalid 'tool_choice': expected 'none', 'auto', 'required' or an object naming a function, got ${JSON.stringify(v)}.`);
    if (v === 'required' && !tools.length) throw needsTools("'required'");
    return v === 'required' ? { mode: 'required', parallel } : { mode: v };
  }
  if (!isObject(v)) throw wrongType('tool_choice', 'a string or an object', v);
  if (v.type === 'allowed_tools' || v.type === 'custom') throw invalid('tool_choice.type', `'tool_choice' of type '${v.type}' is not supported by this server; name a function or use 'required'.`, 'unsupported_value');
  if (v.type !== 'function') throw invalid('tool_choice.type', `Invalid 'tool_choice.type': expected 'function', got ${JSON.stringify(v.type ?? null)}.`);
  if (!isObject(v.function)) throw wrongType('tool_choice.function', 'an object naming the function', v.function);
  const name = functionName('tool_choice.function.name', v.function.name);
  if (!tools.some((t) => t.function.name === name)) throw invalid('tool_choice.function.name', `Invalid 'tool_choice.function.name': no tool named '${name}' is in 'tools'.`);
  return { mode: 'named', name };
}

/**
 * The deprecated `functions` / `function_call`: accepted where they ask for nothing (no functions;
 * "none" or "auto"), otherwise pointed to `tools` and `tool_choice`.
 */
function checkLegacyFunctions(b: Body): void {
  const use = (name: string) => invalid(name, `'${name}' (the deprecated form of function calling) is not supported by this server; use 'tools' and 'tool_choice'.`, name === 'functions' ? 'unsupported_parameter' : 'unsupported_value');
  const fns = field(b, 'functions');
  if (fns !== undefined && !Array.isArray(fns)) throw wrongType('functions', 'an array', fns);
  if (Array.isArray(fns) && fns.length) throw use('functions');
  const call = field(b, 'function_call');
  if (call === undefined || call === 'none' || call === 'auto') return;
  if (typeof call === 'string') throw invalid('function_call', `Invalid 'function_call': expected 'none', 'auto' or an object naming a function, got ${JSON.stringify(call)}.`);
  throw use('function_call');
}

/** An assistant message's `tool_calls`: arguments must be JSON (templates receive them parsed). */
function toolCalls(param: string, v: unknown): TemplateToolCall[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw wrongType(param, 'an array', v);
  return v.map((c, j): TemplateToolCall => {
    const at = `${param}[${j}]`;
    if (!isObject(c)) throw wrongType(at, 'an object', c);
    if (typeof c.id !== 'string') throw wrongType(`${at}.id`, 'a string', c.id);
    if (c.type !== undefined && c.type !== 'function') throw invalid(`${at}.type`, `Invalid '${at}.type': expected 'function', got ${JSON.stringify(c.type)}.`);
    if (!isObject(c.function)) throw wrongType(`${at}.function`, 'an object', c.function);
    const name = functionName(`${at}.function.name`, c.function.name);
    const args = c.function.arguments;
    if (typeof args !== 'string') throw wrongType(`${at}.function.arguments`, 'a string of JSON', args);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text(`${at}.function.arguments`, args)) as unknown;
    } catch {
      throw invalid(`${at}.function.arguments`, `Invalid '${at}.function.arguments': not JSON.`);
    }
    return { id: c.id, type: 'function', function: { name, arguments: parsed } };
  });
}

/**
 * The JSON schema a tool choice constrains the output to: a named function's arguments, or for
 * "required" an array of calls (at most one without parallel_tool_calls), each an object
 * {"name": <one of the tools>, "arguments": <its parameters>}. Null: the output is free.
 */
function toolGuide(tools: TemplateTool[], choice: ToolChoice): Guide | undefined {
  const check = (i: number) => {
    try {
      schemaToRegex(tools[i].function.parameters);
    } catch (err) {
      if (err instanceof ConstraintError) throw invalid(`tools[${i}].function.parameters`, `Invalid 'tools[${i}].function.parameters': ${err.message}.`, 'invalid_constraint');
      throw err;
    }
  };
  if (choice.mode === 'named') {
    const i = tools.findIndex((t) => t.function.name === choice.name);
    check(i);
    return { param: `tools[${i}].function.parameters`, kind: 'json_schema', schema: tools[i].function.parameters };
  }
  if (choice.mode !== 'required') return undefined;
  tools.forEach((_, i) => check(i));
  const call = (t: TemplateTool) => ({ type: 'object', properties: { name: { const: t.function.name }, arguments: t.function.parameters }, required: ['name', 'arguments'] });
  return { param: 'tools', kind: 'json_schema', schema: { type: 'array', items: { anyOf: tools.map(call) }, minItems: 1, ...(choice.parallel ? {} : { maxItems: 1 }) } };
}

/** Validates a /v1/chat/completions body. `vocabSize` bounds logit_bias token ids. */
export function parseChatRequest(body: unknown, vocabSize: number): ChatRequest {
  const { b, req } = common(body, vocabSize);
  // both are validated; max_completion_tokens wins
  const [maxCompletionTokens, legacyMaxTokens] = [optInteger(b, 'max_completion_tokens', 1), optInteger(b, 'max_tokens', 1)];
  const maxTokens = maxCompletionTokens ?? legacyMaxTokens;

  const ms = field(b, 'messages');
  if (ms === undefined) throw invalid('messages', "Missing required parameter: 'messages'.", 'missing_required_parameter');
  if (!Array.isArray(ms)) throw wrongType('messages', 'an array', ms);
  if (ms.length === 0) throw invalid('messages', "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", 'empty_array');
  const messages = ms.map((m, i): ChatMessage => {
    const param = `messages[${i}]`;
    if (!isObject(m)) throw wrongType(param, 'an object', m);
    if (typeof m.role !== 'string' || !ROLES.has(m.role)) {
      throw invalid(`${param}.role`, `Invalid '${param}.role': expected one of ${[...ROLES].join(', ')}, got ${JSON.stringify(m.role ?? null)}.`);
    }
    const role = (m.role === 'developer' ? 'system' : m.role) as ChatMessage['role'];
    const name = m.name ?? undefined;
    if (name !== undefined && typeof name !== 'string') throw wrongType(`${param}.name`, 'a string', name);
    const calls = role === 'assistant' ? toolCalls(`${param}.tool_calls`, m.tool_calls) : undefined;
    if (role !== 'assistant' && m.tool_calls !== undefined && m.tool_calls !== null) throw invalid(`${param}.tool_calls`, `Invalid '${param}.tool_calls': only assistant messages carry tool calls.`);
    const callId = m.tool_call_id ?? undefined;
    if (role === 'tool' && typeof callId !== 'string') throw wrongType(`${param}.tool_call_id`, 'a string (the id of the call this message answers)', callId);
    const c = m.content ?? null;
    let content: string;
    if (typeof c === 'string') content = text(`${param}.content`, c);
    else if (c === null && role === 'assistant') content = '';
    else if (Array.isArray(c)) {
      content = c
        .map((part, j) => {
          if (!isObject(part) || part.type !== 'text' || typeof part.text !== 'string') {
            throw invalid(`${param}.content[${j}]`, `Invalid '${param}.content[${j}]': only text parts ({"type": "text", "text": "..."}) are supported.`);
          }
          return text(`${param}.content[${j}].text`, part.text);
        })
        .join('\n');
    } else throw wrongType(`${param}.content`, 'a string or an array of text parts', c);
    return { role, content, ...(name === undefined ? {} : { name }), ...(calls?.length ? { tool_calls: calls } : {}), ...(role === 'tool' ? { tool_call_id: callId as string } : {}) };
  });

  checkLegacyFunctions(b);
  const tools = optTools(b);
  const toolChoice = optToolChoice(b, tools);
  const guide = toolGuide(tools, toolChoice);
  if (guide && req.guide) throw invalid(req.guide.param, `Only one structured-output constraint per request: 'tool_choice' ${toolChoice.mode === 'named' ? 'naming a function' : "'required'"} constrains the output already.`, 'unsupported_value');

  const logprobs = optBoolean(b, 'logprobs') ?? false;
  const top = optInteger(b, 'top_logprobs', 0, MAX_TOP_LOGPROBS);
  if (top !== undefined && !logprobs) throw invalid('top_logprobs', "'top_logprobs' requires 'logprobs' to be true.");
  return { ...req, maxTokens, messages, logprobs: logprobs ? (top ?? 0) : null, tools: toolChoice.mode === 'none' ? [] : tools, toolChoice, guide: guide ?? req.guide };
}

// ---------------------------------------------------------------------------------------------
// responses

export const openAiFinishReason = (r: FinishReason): 'stop' | 'length' => (r === 'length' ? 'length' : 'stop');

export const usageBody = (u: Usage) => ({ prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens });

/** Text and bytes of single tokens for log-probability entries (control tokens by their name). */
export class TokenTexts {
  private readonly utf8 = new TextDecoder('utf-8');
  constructor(private readonly tokenizer: Tokenizer) {}

  bytes(id: number): Uint8Array {
    return this.tokenizer.tokenBytes(id);
  }

  text(id: number): string {
    const b = this.tokenizer.tokenBytes(id);
    const v = this.tokenizer.vocab;
    if (b.length === 0 && (v.types[id] === TokenType.CONTROL || v.types[id] === TokenType.USER_DEFINED)) return v.tokens[id] ?? '';
    return this.utf8.decode(b);
  }
}

type TopLogprobs = NonNullable<TokenEvent['topLogprobs']>;

/** Completions' logprobs object for a run of tokens. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[];
  text_offset: number[];
}

export function completionLogprobs(texts: TokenTexts, events: TokenEvent[], top: number, offset: number): CompletionLogprobs {
  const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for (const e of events) {
    const t = texts.text(e.token);
    out.tokens.push(t);
    out.token_logprobs.push(e.logprob ?? 0);
    const alt: Record<string, number> = {};
    for (const a of (e.topLogprobs ?? ([] as TopLogprobs)).slice(0, top)) {
      const k = texts.text(a.token);
      if (!(k in alt)) alt[k] = a.logprob;
    }
    out.top_logprobs.push(alt);
    out.text_offset.push(offset);
    offset += t.length;
  }
  return out;
}

export interface ChatLogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export function chatLogprobs(texts: TokenTexts, events: TokenEvent[], top: number): { content: ChatLogprobEntry[]; refusal: null } {
  const entry = (id: number, logprob: number) => ({ token: texts.text(id), logprob, bytes: [...texts.bytes(id)] });
  return {
    content: events.map((e) => ({
      ...entry(e.token, e.logprob ?? 0),
      top_logprobs: (e.topLogprobs ?? []).slice(0, top).map((a) => entry(a.token, a.logprob)),
    })),
    refusal: null,
  };
}

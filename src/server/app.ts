/**
 * The OpenAI-compatible HTTP server (fastify) over one Engine. Routes and behaviour: docs/api.md.
 *
 * API for embedding the server (the CLI's `serve`, tests, load generators):
 *
 *     const server = buildServer({ engine, modelId: 'stories260K', template });
 *     // server.app is the fastify instance: server.app.inject(...) needs no port
 *     const live = await startServer({ engine, modelId: 'stories260K', host: '127.0.0.1', port: 0 });
 *     live.url;            // "http://127.0.0.1:PORT", the port actually bound
 *     await live.drain(5000); // refuse new requests (503), let running ones finish for up to 5 s,
 *                             // cancel the rest, close the listener
 *     await live.close();  // or close now, cancelling what runs
 *
 * The caller owns the engine (and its GpuModel and Gpu): build it with
 * `new Engine(GpuModel.load(gpu, source, { kvMemoryBytes }), source.tokenizer, { maxBatch, tokenBudget, maxWaiting })`
 * and destroy the model and device after closing the server. Several servers may share one engine.
 * `server.metrics` is the server's Prometheus registry (`GET /metrics` renders it).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import type { EngineHandle, FinishReason, SamplingOptions, TokenEvent, Usage } from '../engine/engine.ts';
import type { ServingEngine } from '../engine/serving.ts';
import { QueueFullError, RequestTooLargeError } from '../engine/engine.ts';
import { ConstraintError, type TokenAutomaton } from '../constraints/automaton.ts';
import { compileGuideOffThread } from '../constraints/guide.ts';
import { ConstraintRegistry } from '../constraints/registry.ts';
import { ChatTemplate } from '../model/chat_template.ts';
import { chatPromptSlices, promptTextSlices } from '../model/prompt.ts';
import { decode, type Tokenizer } from '../model/tokenizer/index.ts';
import type { Slo } from '../scheduler/scheduler.ts';
import { constraintRoutes } from './constraint_routes.ts';
import { clientErrorHandler, DEFAULT_BODY_TIMEOUT_S, DEFAULT_KEEP_ALIVE_TIMEOUT_S, guardRequests, missingHost, serverOptions } from './http_limits.ts';
import { ServerMetrics } from './metrics.ts';
import { tokenizePrompt } from './prompt_limits.ts';
import {
  ApiError,
  chatLogprobs,
  completionLogprobs,
  errorBody,
  openAiFinishReason,
  type Guide,
  parseChatRequest,
  parseCompletionRequest,
  TokenTexts,
  usageBody,
  type CommonRequest,
  type ToolChoice,
} from './openai.ts';
import { MAX_CHUNK_TOKENS, MSGPACK_TYPES, openChunkStream, packMsgpack, unpackMsgpack, type ChunkStream } from './stream.ts';
import { ToolCallOutput, type ChatDelta, type ToolCall } from './tool_calls.ts';

export interface ServerOptions {
  /** the colocated Engine or the disaggregated front */
  engine: ServingEngine;
  /** the id clients pass as `model` and /v1/models lists */
  modelId: string;
  /** default: the engine's tokenizer */
  tokenizer?: Tokenizer;
  /** chat template; default ChatML */
  template?: ChatTemplate;
  /** default: the model's context length */
  contextLength?: number;
  /** when set, /v1/* requires `Authorization: Bearer <apiKey>` */
  apiKey?: string;
  /** request body limit in bytes (413 beyond); default 1 MiB */
  bodyLimit?: number;
  /** body limit of POST /v1/constraints (registered sets), bytes; default 256 MiB */
  constraintBodyLimit?: number;
  /** bytes all registered constraint sets may take together (413 beyond); default 1 GiB */
  constraintMemory?: number;
  /** seconds to receive a whole request, headers and body (408 beyond); default 30 */
  bodyTimeoutSeconds?: number;
  /** seconds an idle keep-alive connection stays open; default 5 */
  keepAliveTimeoutSeconds?: number;
  /** fastify's logger option (pino): false (default), true, or pino options such as { level: 'info' } */
  logger?: FastifyServerOptions['logger'];
  /** the Retry-After of a 429 (queue full), seconds; default 1 */
  retryAfterSeconds?: number;
  /** Node process metrics (CPU, memory, event loop) in /metrics too; default true */
  processMetrics?: boolean;
  /** SLO classes requests select with `slo_class` (`--slo-class`); a request's own `slo` fields override its class's */
  sloClasses?: Record<string, Slo>;
}

export type ServerState = 'ready' | 'draining' | 'closed';

export interface WgServer {
  app: FastifyInstance;
  metrics: ServerMetrics;
  readonly state: ServerState;
  /** generation requests in flight */
  readonly inFlight: number;
  /**
   * Graceful shutdown: /health answers draining and new requests 503; running requests get up
   * to `timeoutMs` (default 30 s) to finish, then the rest are cancelled; responses still being
   * written to slow readers get until then too, then their connections are closed; then the
   * listener closes.
   */
  drain(timeoutMs?: number): Promise<{ cancelled: number }>;
  /** drain(0): cancels what runs, then closes; during a drain, cancels what still runs now */
  close(): Promise<void>;
}

export interface StartOptions extends ServerOptions {
  /** default 127.0.0.1 */
  host?: string;
  /** default 8080; 0 picks a free port */
  port?: number;
}

const MiB = 1024 * 1024;

/** Per-request details for the one log line each request gets. */
interface RequestInfo {
  t0: number;
  gen?: Record<string, unknown>;
}

/** A generation request in the engine's terms, with what the response needs. */
interface Job {
  kind: 'text' | 'chat';
  id: string;
  created: number;
  prompt: number[];
  sampling: SamplingOptions;
  stream: boolean;
  includeUsage: boolean;
  /** choices returned (OpenAI's `n`) */
  n: number;
  /** candidates generated (completions' `best_of`; n otherwise): the n with the highest cumulative logprob are returned */
  bestOf: number;
  /** top alternatives per token, or null for no logprobs */
  topLogprobs: number | null;
  /** completions' echo: the prompt text in front of the completion */
  echo: string;
  user?: string;
  /** the parameter a "too long" error points at */
  lengthParam: string;
  slo?: Slo;
  /** the metrics label of a request with an SLO: its class, or `custom` */
  sloClass: string;
  priority?: number;
  /** chat: how the answer may call the request's tools */
  tools?: { choice: ToolChoice; names: ReadonlySet<string> };
  /** structured output: the token automaton the output must follow */
  constraint?: TokenAutomaton;
}

/**
 * What a stream has yet to send, in order: tokens of one choice for one chunk (one token while
 * the client keeps up, up to MAX_CHUNK_TOKENS while it is behind), or a chunk ready to write.
 */
type Tokens = { index: number; text: string; events: TokenEvent[]; tokens: number; finish: 'stop' | 'length' | null };
type Piece = Tokens | { chunk: unknown };

/** One choice (candidate) of a request as its response is assembled. */
interface Choice {
  index: number;
  /** whole responses: the text so far (after the echo) and the events whose logprobs it returns */
  text: string;
  lpEvents: TokenEvent[];
  /** streams: completions' text_offset of the next chunk */
  textOffset: number;
  tokens: number;
  lastToken: number;
  /** sum of the logprobs of the tokens it returns (best_of's ranking) */
  cumulativeLogprob: number;
  finish: { reason: FinishReason; usage: Usage } | null;
  /** chat with tools: the text as content and tool calls */
  toolOutput?: ToolCallOutput;
}

/** A chat choice's text as a tool-call stream delta, with what was held back when it is the last. */
function toolDelta(out: ToolCallOutput, text: string, last: boolean): ChatDelta | null {
  const now = out.push(text);
  const held = last ? out.end() : null;
  if (!held) return now;
  if (!now) return held;
  return { ...(now.content || held.content ? { content: (now.content ?? '') + (held.content ?? '') } : {}), ...(now.tool_calls || held.tool_calls ? { tool_calls: [...(now.tool_calls ?? []), ...(held.tool_calls ?? [])] } : {}) };
}

/** A whole chat choice's message: its text, or its content and tool calls. */
function wholeMessage(c: Choice): { content: string | null; tool_calls?: ToolCall[] } {
  if (!c.toolOutput) return { content: c.text };
  c.toolOutput.push(c.text);
  c.toolOutput.end();
  return c.toolOutput.message();
}

/** How a request ended: the reason of the choice that ended it, usage over all its choices. */
type Outcome = { reason: FinishReason; usage: Usage; error?: Error };

const wantsMsgpack = (request: FastifyRequest): boolean => {
  const accept = request.headers.accept ?? '';
  if (MSGPACK_TYPES.some((t) => accept.includes(t))) return true;
  if (accept.includes('json') || accept.includes('text/event-stream')) return false;
  const ct = request.headers['content-type'] ?? '';
  return MSGPACK_TYPES.some((t) => ct.includes(t));
};

function send(request: FastifyRequest, reply: FastifyReply, status: number, body: unknown): FastifyReply {
  reply.code(status);
  if (wantsMsgpack(request)) return reply.type(MSGPACK_TYPES[0]).send(packMsgpack(body));
  return reply.send(body);
}

function sendError(request: FastifyRequest, reply: FastifyReply, e: ApiError): FastifyReply {
  for (const [k, v] of Object.entries(e.headers)) reply.header(k, v);
  return send(request, reply, e.status, e.body());
}

/** A request the scheduler rejected: it can no longer meet its SLO (429, so clients may retry later); `why` is the scheduler's estimate. */
const sloRejection = (why?: string) =>
  new ApiError(
    429,
    `The request was rejected by the scheduler: it can no longer meet its SLO at the current load${why ? ` (${why})` : ''}. Relax the SLO or retry later.`,
    'rate_limit_error',
    'slo',
    'slo_unattainable',
  );

const sameKey = (given: string, key: string): boolean => {
  const a = Buffer.from(given);
  const b = Buffer.from(key);
  return a.length === b.length && timingSafeEqual(a, b);
};

/** Builds the fastify instance and its routes; does not listen (see startServer). */
export function buildServer(o: ServerOptions): WgServer {
  const { engine, modelId } = o;
  const tokenizer = o.tokenizer ?? engine.tokenizer;
  const template = o.template ?? new ChatTemplate();
  const texts = new TokenTexts(tokenizer);
  const vocab = tokenizer.vocab;
  const contextLength = o.contextLength ?? engine.config.contextLength;
  // the most tokens one sequence can hold: the context, and the KV pool when that is smaller
  const maxSequence = Math.min(contextLength, engine.maxSequenceTokens);
  const bodyLimit = o.bodyLimit ?? MiB;
  const bodyTimeout = o.bodyTimeoutSeconds ?? DEFAULT_BODY_TIMEOUT_S;
  const retryAfter = String(o.retryAfterSeconds ?? 1);
  const created = Math.floor(Date.now() / 1000);

  const constraints = new ConstraintRegistry(o.constraintMemory ?? 1024 * MiB);
  const metrics = new ServerMetrics(engine, { processMetrics: o.processMetrics, constraints });
  const previousOnStep = engine.onStep;
  const onStep: NonNullable<ServingEngine['onStep']> = (s) => {
    previousOnStep?.(s);
    metrics.observeStep(s);
  };
  engine.onStep = onStep;

  let state: ServerState = 'ready';
  const active = new Set<EngineHandle>();
  let emptyWaiters: (() => void)[] = [];
  const whenEmpty = () => (active.size === 0 ? Promise.resolve() : new Promise<void>((r) => emptyWaiters.push(r)));
  const info = new WeakMap<FastifyRequest, RequestInfo>();
  const fail = (request: FastifyRequest, reply: FastifyReply, e: ApiError) => {
    const rec = info.get(request);
    if (rec) rec.gen = { ...rec.gen, error: e.code ?? e.type, message: e.message };
    return sendError(request, reply, e);
  };

  // fastify's two lines per request are replaced by one (the onRequest hook below)
  const app = Fastify({
    logger: o.logger ?? false,
    bodyLimit,
    logController: new LogController({ disableRequestLogging: true }),
    // slow or idle clients cannot hold connections open indefinitely; malformed HTTP gets OpenAI's body
    ...serverOptions(bodyTimeout, o.keepAliveTimeoutSeconds ?? DEFAULT_KEEP_ALIVE_TIMEOUT_S),
    clientErrorHandler: clientErrorHandler(bodyTimeout),
    // errors before routing (a URL that does not decode) in OpenAI's body too
    frameworkErrors: (err, request, reply) => {
      sendError(request, reply, new ApiError(err.statusCode ?? 400, err.message, 'invalid_request_error', null, 'invalid_url'));
    },
  });

  guardRequests(app);
  app.addContentTypeParser(MSGPACK_TYPES, { parseAs: 'buffer' }, (_req, body, done) => {
    try {
      done(null, unpackMsgpack(body as Buffer));
    } catch (err) {
      done(new ApiError(400, `We could not parse the MessagePack body of your request: ${err instanceof Error ? err.message : String(err)}`, 'invalid_request_error', null, 'invalid_body'), undefined);
    }
  });

  // one log line and one metrics count per request, when its response closes (streams included)
  app.addHook('onRequest', async (request, reply) => {
    const rec: RequestInfo = { t0: performance.now() };
    info.set(request, rec);
    reply.raw.once('close', () => {
      const status = reply.raw.statusCode;
      const route = request.routeOptions.url ?? 'unmatched';
      metrics.http.inc({ method: request.method, route, status: String(status) });
      const line = { method: request.method, url: request.url, status, ms: Math.round(performance.now() - rec.t0), ...(reply.raw.writableFinished ? {} : { aborted: true }), ...rec.gen };
      if (route === '/health' || route === '/metrics') request.log.debug(line, 'request');
      else request.log.info(line, 'request');
    });
    const noHost = missingHost(request);
    if (noHost) return fail(request, reply, noHost);
    // by the matched route, not the raw URL (percent-encoded paths route too)
    if (!request.routeOptions.url?.startsWith('/v1/')) return;
    if (state !== 'ready') {
      return fail(request, reply, new ApiError(503, 'The server is shutting down and accepts no new requests.', 'server_error', null, 'server_draining'));
    }
    if (o.apiKey !== undefined) {
      const auth = request.headers.authorization ?? '';
      const m = /^Bearer\s+(.+)$/i.exec(auth);
      if (!m || !sameKey(m[1].trim(), o.apiKey)) {
        return fail(request, reply, new ApiError(401, auth ? 'Incorrect API key provided.' : "You didn't provide an API key: pass it as 'Authorization: Bearer KEY'.", 'invalid_request_error', null, 'invalid_api_key'));
      }
    }
  });

  app.setErrorHandler((err: Error & { code?: string; statusCode?: number }, request, reply) => {
    let e: ApiError;
    if (err instanceof ApiError) e = err;
    else if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      e = new ApiError(413, `The request body is too large: the limit is ${request.routeOptions.bodyLimit ?? bodyLimit} bytes.`, 'invalid_request_error', null, 'request_too_large');
    } else if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      e = new ApiError(415, `Unsupported Content-Type '${request.headers['content-type'] ?? ''}': send application/json or application/msgpack.`, 'invalid_request_error', null, 'unsupported_media_type');
    } else if (err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || (err instanceof SyntaxError && err.statusCode === 400)) {
      e = new ApiError(400, `We could not parse the JSON body of your request: ${err.message}`, 'invalid_request_error', null, 'invalid_json');
    } else if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      e = new ApiError(err.statusCode, err.message, 'invalid_request_error', null, err.code ?? null);
    } else {
      request.log.error({ err }, 'internal error');
      e = new ApiError(500, `Internal server error: ${err.message}`, 'server_error', null, 'internal_error');
    }
    return fail(request, reply, e);
  });

  app.setNotFoundHandler((request, reply) => fail(request, reply, new ApiError(404, `Unknown route: ${request.method} ${request.url.split('?')[0]}`, 'invalid_request_error', null, 'not_found')));

  const checkModel = (model: string) => {
    if (model !== modelId) throw new ApiError(404, `The model '${model}' does not exist: this server serves '${modelId}'.`, 'invalid_request_error', 'model', 'model_not_found');
  };

  constraintRoutes(app, { registry: constraints, tokenizer, bodyLimit: o.constraintBodyLimit ?? 256 * MiB, send });

  const modelCard = () => ({ id: modelId, object: 'model', created, owned_by: 'wgserve', max_model_len: contextLength });

  app.get('/health', async (request, reply) => {
    // head-wise KV: bytes in use by head kind
    const kv = engine.kvBytesByKind?.();
    const ann = engine.annBytes?.() ?? null;
    if (!engine.workers) return send(request, reply, state === 'ready' ? 200 : 503, { status: state === 'ready' ? 'ready' : 'draining', ...(kv ? { kv_bytes: kv } : {}), ...(ann !== null ? { ann_bytes: ann } : {}) });
    // disaggregated: ready while at least one prefill and one decode worker answer
    const workers = engine.workers();
    const serving = (['prefill', 'decode'] as const).every((role) => workers.some((w) => w.role === role && w.state === 'up'));
    const status = state !== 'ready' ? 'draining' : serving ? 'ready' : 'degraded';
    return send(request, reply, status === 'ready' ? 200 : 503, { status, workers, ...(kv ? { kv_bytes: kv } : {}), ...(ann !== null ? { ann_bytes: ann } : {}) });
  });

  app.get('/metrics', async (_request, reply) => reply.type(metrics.contentType).send(await metrics.render()));

  app.get('/v1/models', async (request, reply) => send(request, reply, 200, { object: 'list', data: [modelCard()] }));

  app.get('/v1/models/*', async (request, reply) => {
    checkModel((request.params as { '*': string })['*']); // ids may contain '/'
    return send(request, reply, 200, modelCard());
  });

  const sampling = (r: CommonRequest, maxTokens: number, topLogprobs: number | null): SamplingOptions => {
    if ((r.minTokens ?? 0) > maxTokens) {
      throw new ApiError(400, `Invalid 'min_tokens': ${r.minTokens} is more than the ${maxTokens} tokens this request may generate (max_tokens).`, 'invalid_request_error', 'min_tokens', 'invalid_value');
    }
    return {
      maxTokens,
      temperature: r.temperature,
      topK: r.topK,
      topP: r.topP,
      seed: r.seed ?? Math.floor(Math.random() * 2 ** 32),
      stop: r.stop,
      logprobs: topLogprobs === null ? 0 : Math.max(1, topLogprobs),
      logitBias: r.logitBias,
      presencePenalty: r.presencePenalty,
      frequencyPenalty: r.frequencyPenalty,
      repetitionPenalty: r.repetitionPenalty,
      minTokens: r.minTokens,
      minP: r.minP,
    };
  };

  const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString('hex')}`;

  const sloClasses = o.sloClasses ?? {};
  /** The request's SLO: its class's objectives overridden by its own `slo` fields. */
  const sloOf = (r: CommonRequest): Pick<Job, 'slo' | 'sloClass' | 'priority'> => {
    let base: Slo = {};
    if (r.sloClass !== undefined) {
      if (!Object.hasOwn(sloClasses, r.sloClass)) {
        const known = Object.keys(sloClasses);
        throw new ApiError(400, `Unknown 'slo_class' '${r.sloClass}': this server has ${known.length ? known.map((k) => `'${k}'`).join(', ') : 'no SLO classes (see --slo-class)'}.`, 'invalid_request_error', 'slo_class', 'invalid_value');
      }
      base = sloClasses[r.sloClass];
    }
    const slo: Slo = { ...base, ...r.slo };
    const has = slo.ttftMs !== undefined || slo.tpotMs !== undefined || slo.deadlineMs !== undefined;
    return { slo: has ? slo : undefined, sloClass: r.sloClass ?? 'custom', priority: r.priority };
  };

  const countPause = () => metrics.tokenizePauses.inc();

  /** The guide's token automaton (cached; compiled off the event loop), or a 400 naming the field when it cannot be built. */
  const constraintOf = async (guide: Guide | undefined, prompt: readonly number[]): Promise<TokenAutomaton | undefined> => {
    if (!guide) return undefined;
    if (guide.kind === 'registered') {
      const set = constraints.get(guide.id);
      // the body names something that does not exist (as an unknown slo_class): a 400, not a 404 of the route
      if (!set) throw new ApiError(400, `Unknown 'constraint' '${guide.id}': no set is registered under this id (POST /v1/constraints registers one; sets live until deleted or the server stops).`, 'invalid_request_error', 'constraint', 'invalid_value');
      return set.automaton;
    }
    try {
      // the output starts a text only after BOS (or nothing): a SentencePiece first token then loses its space
      return await compileGuideOffThread(guide, tokenizer, prompt.length === 0 || prompt[prompt.length - 1] === vocab.bos);
    } catch (err) {
      if (err instanceof ConstraintError) throw new ApiError(400, `Invalid '${guide.param}': ${err.message}`, 'invalid_request_error', guide.param, 'invalid_constraint');
      throw err;
    }
  };

  app.post('/v1/completions', async (request, reply) => {
    const r = parseCompletionRequest(request.body, vocab.tokens.length);
    checkModel(r.model);
    const maxTokens = r.maxTokens ?? 16;
    const budget = { contextLength, maxSequence, reserve: maxTokens, reserveName: `max_tokens (${maxTokens})`, param: r.maxTokens === undefined ? 'prompt' : 'max_tokens' };
    const prompt = 'text' in r.prompt ? await tokenizePrompt(tokenizer, promptTextSlices(tokenizer, r.prompt.text), budget, countPause) : r.prompt.tokens;
    const echo = r.echo ? ('text' in r.prompt ? r.prompt.text : decode(tokenizer, r.prompt.tokens)) : '';
    return run(request, reply, {
      kind: 'text',
      id: newId('cmpl'),
      created: Math.floor(Date.now() / 1000),
      prompt,
      // best_of ranks candidates by their logprobs: computed even when not returned
      sampling: sampling(r, maxTokens, r.bestOf > r.n ? (r.logprobs ?? 0) : r.logprobs),
      stream: r.stream,
      includeUsage: r.includeUsage,
      n: r.n,
      bestOf: r.bestOf,
      topLogprobs: r.logprobs,
      echo,
      user: r.user,
      lengthParam: r.maxTokens === undefined ? 'prompt' : 'max_tokens',
      ...sloOf(r),
      constraint: await constraintOf(r.guide, prompt),
    });
  });

  app.post('/v1/chat/completions', async (request, reply) => {
    const r = parseChatRequest(request.body, vocab.tokens.length);
    checkModel(r.model);
    let prompt: number[];
    try {
      // the template's special tokens become ids, control-token text in contents stays text
      const reserveName = r.maxTokens === undefined ? 'at least one token to generate' : `max_completion_tokens (${r.maxTokens})`;
      const budget = { contextLength, maxSequence, reserve: r.maxTokens ?? 1, reserveName, param: r.maxTokens === undefined ? 'messages' : 'max_completion_tokens' };
      prompt = await tokenizePrompt(tokenizer, chatPromptSlices(tokenizer, template, r.messages, r.tools), budget, countPause);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      throw new ApiError(400, err instanceof Error ? err.message : String(err), 'invalid_request_error', 'messages', 'invalid_value');
    }
    let maxTokens = r.maxTokens;
    if (maxTokens === undefined) {
      maxTokens = maxSequence - prompt.length; // until the context (or what the KV cache holds for one sequence) is full
      if (maxTokens < 1) {
        throw new ApiError(400, `The messages (${prompt.length} tokens) leave no room to generate: one sequence holds at most ${maxSequence} tokens (context length ${contextLength}${maxSequence < contextLength ? ', less in this KV cache' : ''}).`, 'invalid_request_error', 'messages', 'context_length_exceeded');
      }
    }
    return run(request, reply, {
      kind: 'chat',
      id: newId('chatcmpl'),
      created: Math.floor(Date.now() / 1000),
      prompt,
      sampling: sampling(r, maxTokens, r.logprobs),
      stream: r.stream,
      includeUsage: r.includeUsage,
      n: r.n,
      bestOf: r.n,
      topLogprobs: r.logprobs,
      echo: '',
      user: r.user,
      lengthParam: r.maxTokens === undefined ? 'messages' : 'max_completion_tokens',
      ...sloOf(r),
      constraint: await constraintOf(r.guide, prompt),
      tools: r.toolChoice.mode === 'none' ? undefined : { choice: r.toolChoice, names: new Set(r.tools.map((t) => t.function.name)) },
    });
  });

  /** Submits a job to the engine and answers it, whole or streamed. */
  async function run(request: FastifyRequest, reply: FastifyReply, job: Job): Promise<FastifyReply | void> {
    const rec = info.get(request)!;
    const eos = vocab.eos;
    const format = wantsMsgpack(request) ? 'msgpack' : 'sse';
    const base = { id: job.id, object: job.kind === 'text' ? 'text_completion' : job.stream ? 'chat.completion.chunk' : 'chat.completion', created: job.created, model: modelId };
    const usageField = job.includeUsage ? { usage: null } : {};
    const top = job.topLogprobs;

    let handle: EngineHandle | undefined;
    /** the request is over: every choice finished, or one ended it (failed, rejected, cancelled) and took the others along */
    let finished = false;
    let clientGone = false;
    let firstToken: number | null = null;
    let lastToken = 0;
    /** the candidates (best_of, else n of them), in the engine's order: candidate i is sampled with choiceSeed(seed, i) */
    const toolOutput = () => job.tools && new ToolCallOutput(job.tools.choice, job.tools.names, () => newId('call'));
    const choices: Choice[] = Array.from({ length: job.bestOf }, (_, index) => ({ index, text: job.echo, textOffset: job.echo.length, lpEvents: [], tokens: 0, lastToken: 0, cumulativeLogprob: 0, finish: null, toolOutput: toolOutput() }));
    let unfinished = choices.length;
    let stream: ChunkStream | null = null;
    /** what the stream has yet to send; filled before the stream opens too (a request may end inside submit) */
    const backlog: Piece[] = [];
    /** the last piece is queued: the response ends after it */
    let ending = false;
    let pumpQueued = false;
    let settle!: (o: Outcome) => void;
    const done = new Promise<Outcome>((r) => (settle = r));

    /**
     * The chunk of a piece's tokens; called in stream order (completions' text_offset runs on per
     * choice). Null when a chat choice's tool calls hold the piece back and there is nothing else to say.
     */
    const chunk = ({ index, text: content, events, finish }: Tokens) => {
      const c = choices[index];
      const lp = top === null ? null : job.kind === 'text' ? completionLogprobs(texts, events, top, c.textOffset) : chatLogprobs(texts, events, top);
      for (const e of events) c.textOffset += texts.text(e.token).length;
      if (job.kind === 'text') return { ...base, choices: [{ index, text: content, logprobs: lp, finish_reason: finish }], ...usageField };
      const delta = c.toolOutput ? toolDelta(c.toolOutput, content, finish !== null) : content || finish === null ? { content } : {};
      if (delta === null && lp === null && finish === null) return null;
      const finishReason = finish && c.toolOutput ? c.toolOutput.finishReason(finish) : finish;
      return { ...base, choices: [{ index, delta: delta ?? {}, logprobs: lp, finish_reason: finishReason }], ...usageField };
    };
    /**
     * Writes pieces while the client keeps up (backpressure: the response buffers at most its
     * high-water mark plus one chunk); the rest waits for it to catch up, coalescing.
     */
    const pump = () => {
      pumpQueued = false;
      if (!stream) return;
      while (backlog.length && stream.ready) {
        const p = backlog.shift()!;
        const out = 'chunk' in p ? p.chunk : chunk(p);
        if (out) stream.write(out);
      }
      if (!backlog.length && ending && stream.ready) stream.end();
    };

    const onToken = (c: Choice) => (e: TokenEvent) => {
      const now = performance.now();
      if (firstToken === null) {
        metrics.ttft.observe((now - rec.t0) / 1e3);
        firstToken = now;
      }
      if (c.tokens > 0) metrics.interToken.observe((now - c.lastToken) / 1e3);
      c.lastToken = lastToken = now;
      c.tokens++;
      metrics.generationTokens.inc();
      // best_of's ranking: the tokens the choice returns (the end-of-sequence token is not one)
      if (e.token !== eos) c.cumulativeLogprob += e.logprob ?? 0;
      const withLogprobs = top !== null && e.token !== eos;
      if (!job.stream) {
        c.text += e.text;
        if (withLogprobs) c.lpEvents.push(e);
        return;
      }
      if (!e.text && !withLogprobs) return;
      const tail = backlog.at(-1);
      if (tail && 'text' in tail && tail.index === c.index && tail.tokens < MAX_CHUNK_TOKENS) {
        tail.text += e.text;
        if (withLogprobs) tail.events.push(e);
        tail.tokens++;
      } else backlog.push({ index: c.index, text: e.text, events: withLogprobs ? [e] : [], tokens: 1, finish: null });
      // written a microtask later: when this is the choice's last token, onFinish (called right
      // after, in the same engine step) puts finish_reason into its chunk
      if (!pumpQueued) queueMicrotask(pump);
      pumpQueued = true;
    };

    const onFinish = (c: Choice) => (reason: FinishReason, usage: Usage, error?: Error) => {
      metrics.observeFinish(reason);
      if (finished) return; // cancelled along with a choice that ended the request
      c.finish = { reason, usage };
      const ok = reason === 'stop' || reason === 'length';
      if (ok && job.stream) {
        // finish_reason on the choice's last content chunk, or a chunk of its own when that one is gone
        const last = backlog.findLast((p): p is Tokens => 'text' in p && p.index === c.index);
        if (last) last.finish = openAiFinishReason(reason);
        else backlog.push({ index: c.index, text: '', events: [], tokens: 0, finish: openAiFinishReason(reason) });
      }
      if (ok && --unfinished > 0) return;
      finished = true;
      if (!ok) handle?.cancel(); // the request ends with this choice: the others are cancelled
      if (handle) active.delete(handle);
      if (active.size === 0) {
        const w = emptyWaiters;
        emptyWaiters = [];
        for (const f of w) f();
      }
      const total: Usage = { promptTokens: usage.promptTokens, completionTokens: choices.reduce((n, x) => n + (x.finish?.usage.completionTokens ?? 0), 0) };
      metrics.e2e.observe((performance.now() - rec.t0) / 1e3);
      if (job.slo && reason !== 'cancelled') metrics.observeSlo(job.sloClass, sloMissed(reason), total.completionTokens);
      rec.gen = { id: job.id, prompt_tokens: total.promptTokens, completion_tokens: total.completionTokens, finish_reason: reason, ...(job.user ? { user: job.user } : {}) };
      if (job.stream && !clientGone) {
        if (ok) {
          if (job.includeUsage) backlog.push({ chunk: { ...base, choices: [], usage: usageBody(total) } });
        } else {
          backlog.push({
            chunk:
              reason === 'error'
                ? errorBody(`Generation failed: ${error?.message ?? 'unknown error'}`, 'server_error', null, 'generation_error')
                : reason === 'rejected'
                  ? sloRejection(error?.message).body()
                  : errorBody('The server shut down before the request finished.', 'server_error', null, 'server_shutdown'),
          });
        }
        ending = true;
        pump();
      }
      settle({ reason, usage: total, error });
    };

    /** null when the finished request met its SLO, else the first objective it missed (TPOT over its longest choice). */
    const sloMissed = (reason: FinishReason): string | null => {
      if (reason === 'rejected' || reason === 'error') return reason;
      const slo = job.slo!;
      const tokens = Math.max(...choices.map((c) => c.tokens));
      if (firstToken === null) return null;
      if (slo.ttftMs !== undefined && firstToken - rec.t0 > slo.ttftMs) return 'ttft';
      if (slo.tpotMs !== undefined && tokens > 1 && (lastToken - firstToken) / (tokens - 1) > slo.tpotMs) return 'tpot';
      if (slo.deadlineMs !== undefined && lastToken - rec.t0 > slo.deadlineMs) return 'deadline';
      return null;
    };

    try {
      handle = engine.submit({ prompt: job.prompt, sampling: job.sampling, choices: choices.map((c) => ({ onToken: onToken(c), onFinish: onFinish(c) })), slo: job.slo, priority: job.priority, constraint: job.constraint });
    } catch (err) {
      if (err instanceof QueueFullError) {
        throw new ApiError(429, `The server is busy: ${err.message}. Retry later.`, 'rate_limit_error', null, 'queue_full', { 'retry-after': retryAfter });
      }
      if (err instanceof RequestTooLargeError) throw new ApiError(400, err.message, 'invalid_request_error', job.lengthParam, 'context_length_exceeded');
      if (err instanceof ConstraintError) throw new ApiError(400, `The structured-output constraint cannot be met: ${err.message}.`, 'invalid_request_error', job.lengthParam, 'constraint_unsatisfiable');
      throw err;
    }
    if (!finished) active.add(handle);
    metrics.promptTokens.inc(job.prompt.length);
    reply.raw.once('close', () => {
      if (finished) return;
      clientGone = true;
      handle!.cancel(); // the engine frees its KV at the next step
    });

    if (job.stream) {
      reply.hijack();
      stream = openChunkStream(reply.raw, format);
      stream.onReady(pump);
      for (const { index } of choices) {
        if (job.kind === 'chat') stream.write({ ...base, choices: [{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }], ...usageField });
        else if (job.echo) stream.write({ ...base, choices: [{ index, text: job.echo, logprobs: null, finish_reason: null }], ...usageField });
      }
      pump(); // what came before the stream opened (a request that ended inside submit)
      return;
    }

    const { reason, error } = await done;
    if (clientGone) {
      reply.hijack(); // nobody to answer
      return;
    }
    if (reason === 'error') throw new ApiError(500, `Generation failed: ${error?.message ?? 'unknown error'}`, 'server_error', null, 'generation_error');
    if (reason === 'rejected') throw sloRejection(error?.message);
    if (reason === 'cancelled') throw new ApiError(503, 'The server shut down before the request finished.', 'server_error', null, 'server_shutdown');
    // best_of: the n candidates with the highest cumulative logprob, best first (ties: the earlier candidate)
    const returned = job.bestOf > job.n ? [...choices].sort((a, b) => b.cumulativeLogprob - a.cumulativeLogprob || a.index - b.index).slice(0, job.n) : choices;
    const body = returned.map((c, index) => {
      const finish = openAiFinishReason(c.finish!.reason);
      return job.kind === 'text'
        ? { index, text: c.text, logprobs: top === null ? null : completionLogprobs(texts, c.lpEvents, top, job.echo.length), finish_reason: finish }
        : { index, message: { role: 'assistant', ...wholeMessage(c), refusal: null }, logprobs: top === null ? null : chatLogprobs(texts, c.lpEvents, top), finish_reason: c.toolOutput?.finishReason(finish) ?? finish };
    });
    const usage: Usage = { promptTokens: job.prompt.length, completionTokens: returned.reduce((n, c) => n + c.finish!.usage.completionTokens, 0) };
    return send(request, reply, 200, { ...base, choices: body, usage: usageBody(usage) });
  }

  let drained: Promise<{ cancelled: number }> | null = null;
  /** ends a drain's wait for running requests now (close() during a drain) */
  let cutShort = () => {};
  const server: WgServer = {
    app,
    metrics,
    get state() {
      return state;
    },
    get inFlight() {
      return active.size;
    },
    drain(timeoutMs = 30_000) {
      drained ??= (async () => {
        state = 'draining';
        let timer: NodeJS.Timeout | undefined;
        const deadline = new Promise<void>((r) => {
          timer = setTimeout(r, timeoutMs);
          cutShort = r;
        });
        await Promise.race([whenEmpty(), deadline]);
        const cancelled = active.size;
        for (const h of active) h.cancel();
        await whenEmpty();
        if (engine.onStep === onStep) engine.onStep = previousOnStep;
        // the listener closes once every connection has; a response still being written (to a slow
        // reader) may finish until the deadline, then its connection is closed
        void deadline.then(() => app.server.closeAllConnections());
        await app.close();
        clearTimeout(timer);
        state = 'closed';
        return { cancelled };
      })();
      return drained;
    },
    async close() {
      cutShort();
      await server.drain(0);
    },
  };
  return server;
}

/** buildServer, then listen; `url` has the port actually bound (port 0 picks a free one). */
export async function startServer(o: StartOptions): Promise<WgServer & { url: string }> {
  const server = buildServer(o);
  const host = o.host ?? '127.0.0.1';
  await server.app.listen({ host, port: o.port ?? 8080 });
  const addr = server.app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (o.port ?? 8080);
  const shown = host === '0.0.0.0' || host === '::' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return Object.assign(server, { url: `http://${shown}:${port}` });
}

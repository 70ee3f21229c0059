import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { TokenType } from '../src/model/tokenizer/vocab.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { TokenTexts } from '../src/server/openai.ts';
import { packMsgpack } from '../src/server/stream.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';
import { metric, post } from './helpers/http.ts';

// Registered constraint sets (issue 12): POST /v1/constraints builds a set into a token automaton
// kept under an id; `constraint: "<id>"` on both generation routes. stories260K on SwiftShader:
// ~0.1-0.2 s a decode step, so sets are short (at most 6 tokens) and sampled requests use n.
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';
const PROMPT = 'Once upon a time';
const MiB = 1024 * 1024;
/** POST /v1/constraints body limit of the main server: the 2 MiB body passes, a 4 MiB one does not */
const ROUTE_LIMIT = 3 * MiB;

interface SetCard {
  id: string;
  object: string;
  sequences: number;
  states: number;
  edges: number;
  bytes: number;
  build_ms: number;
}
interface ErrorBody {
  error: { message: string; param: string | null; code: string | null };
}
interface Choice {
  text: string;
  finish_reason: string;
  logprobs: { tokens: string[] } | null;
}

const json = async <T>(res: Response) => ({ status: res.status, body: (await res.json()) as T & Partial<ErrorBody> });

/** POSTs a MessagePack body; the answer in JSON. */
const postMsgpack = (url: string, path: string, body: unknown) =>
  fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/msgpack', accept: 'application/json' }, body: packMsgpack(body) });

/**
 * The trie's size counted independently of the builder: one state per distinct prefix (the empty
 * one included), one edge into every state but the start; bytes as automaton.ts lays them out
 * (u32 indptr [states + 1], u32 (token, next) pairs, u8 accepting flags).
 */
function trieSize(seqs: readonly (readonly number[])[]) {
  const prefixes = new Set<string>();
  for (const s of seqs) for (let i = 0; i <= s.length; i++) prefixes.add(s.slice(0, i).join(','));
  const states = prefixes.size;
  return { states, edges: states - 1, bytes: 4 * (states + 1) + 8 * (states - 1) + states };
}

/** `count` random sequences of 1..maxLen tokens drawn from `pool` (small, so prefixes are shared). */
function randomSet(seed: number, count: number, maxLen: number, pool: readonly number[]): number[][] {
  const rnd = mulberry32(seed);
  const pick = () => pool[Math.floor(rnd() * pool.length)];
  return Array.from({ length: count }, () => Array.from({ length: 1 + Math.floor(rnd() * maxLen) }, pick));
}

describe('registered constraint sets', () => {
  const getGpu = useGpu();
  let src: ModelSource;
  let model: GpuModel;
  let engine: Engine;
  let server: WgServer & { url: string };
  let texts: TokenTexts;
  /** NORMAL tokens whose texts no other token of the pool shares: an output's token texts name its ids */
  let pool: number[];
  const registered: SetCard[] = [];

  beforeAll(async () => {
    src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    engine = new Engine(model, src.tokenizer);
    server = await startServer({ engine, modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false, constraintBodyLimit: ROUTE_LIMIT });
    texts = new TokenTexts(src.tokenizer);
    const { types } = src.tokenizer.vocab;
    const byText = new Map<string, number[]>();
    for (let id = 0; id < types.length; id++) if (types[id] === TokenType.NORMAL) byText.set(texts.text(id), [...(byText.get(texts.text(id)) ?? []), id]);
    pool = [...byText.values()].filter((ids) => ids.length === 1).map(([id]) => id).slice(0, 40);
  });
  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  const register = async (body: unknown, msgpack = false) => {
    const r = await json<SetCard>(msgpack ? await postMsgpack(server.url, '/v1/constraints', body) : await post(server.url, '/v1/constraints', body));
    if (r.status === 200) registered.push(r.body);
    return r;
  };
  const complete = async (body: Record<string, unknown>) => json<{ choices: Choice[] }>(await post(server.url, '/v1/completions', { model: MODEL, prompt: PROMPT, ...body }));

  it('token sequences (JSON): the stats count the trie; greedy and sampled outputs are members', async () => {
    expect(pool.length).toBe(40);
    const set = randomSet(1, 60, 6, pool.slice(0, 8));
    const r = await register({ token_sequences: set });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const distinct = new Set(set.map((s) => s.join(','))).size;
    expect(r.body).toMatchObject({ object: 'constraint', sequences: distinct, ...trieSize(set) });
    expect(r.body.id).toMatch(/^cset-/);
    const got = await json<SetCard>(await fetch(`${server.url}/v1/constraints/${r.body.id}`));
    expect(got.body).toEqual(r.body);

    // the output's tokens, by their texts (unique within the pool), against the members'
    const members = new Set(set.map((s) => JSON.stringify(s.map((t) => texts.text(t)))));
    const greedy = await complete({ constraint: r.body.id, max_tokens: 8, temperature: 0, logprobs: 0 });
    const sampled = await complete({ constraint: r.body.id, max_tokens: 8, temperature: 1.5, n: 4, seed: 5, logprobs: 0 });
    for (const res of [greedy, sampled]) {
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      for (const c of res.body.choices) {
        expect(members.has(JSON.stringify(c.logprobs!.tokens)), JSON.stringify(c)).toBe(true);
        expect(c.finish_reason).toBe('stop');
      }
    }
  });

  it('MessagePack: the packed {flat, offsets} form builds the same automaton as the arrays', async () => {
    const set = randomSet(2, 30, 5, pool);
    const flat = Uint32Array.from(set.flat());
    const offsets = new Uint32Array(set.length + 1);
    set.forEach((s, i) => (offsets[i + 1] = offsets[i] + s.length));
    const bin = (a: Uint32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    const packed = await register({ token_sequences: { flat: bin(flat), offsets: bin(offsets) } }, true);
    const arrays = await register({ token_sequences: set }, true);
    expect(packed.status, JSON.stringify(packed.body)).toBe(200);
    expect(arrays.status).toBe(200);
    for (const card of [packed.body, arrays.body]) expect(card).toMatchObject(trieSize(set));
    expect(packed.body.id).not.toBe(arrays.body.id);
    const badOffsets = await register({ token_sequences: { flat: bin(flat), offsets: bin(offsets.subarray(1)) } }, true);
    expect(badOffsets.status).toBe(400);
    expect(badOffsets.body.error).toMatchObject({ param: 'token_sequences.offsets' });
  });

  it('strings (MessagePack) are tokenized as texts of their own: after a prompt each output is " " + a member, on chat too', async () => {
    const words = ['red', 'blue bird', 'a happy cat', 'the big tree', 'sun', 'little girl ran'];
    const r = await register({ sequences: words }, true);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.sequences).toBe(words.length);
    const spaced = words.map((w) => ` ${w}`);
    const res = await complete({ constraint: r.body.id, max_tokens: 12, temperature: 1.2, n: 3, seed: 9 });
    expect(res.status).toBe(200);
    for (const c of res.body.choices) expect(spaced).toContain(c.text);
    const chat = await json<{ choices: { message: { content: string } }[] }>(
      await post(server.url, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'A color?' }], constraint: r.body.id, max_tokens: 12, temperature: 0 }),
    );
    expect(chat.status).toBe(200);
    expect(spaced).toContain(chat.body.choices[0].message.content);
    // max_tokens is checked against the set as for any guide: one short of its shortest member
    const shortest = Math.min(...words.map((w) => src.tokenizer.encode(w, { addSpecial: false }).length));
    expect(shortest).toBeGreaterThan(1);
    const tooShort = await complete({ constraint: r.body.id, max_tokens: shortest - 1 });
    expect(tooShort.status).toBe(400);
    expect(tooShort.body.error).toMatchObject({ param: 'max_tokens', code: 'constraint_unsatisfiable' });
  });

  it('DELETE drops a set: GET, DELETE and use then fail', async () => {
    const r = await register({ token_sequences: [[pool[0], pool[1]]] });
    expect(r.status).toBe(200);
    const url = `${server.url}/v1/constraints/${r.body.id}`;
    const del = await json<{ id: string; deleted: boolean }>(await fetch(url, { method: 'DELETE' }));
    expect(del).toMatchObject({ status: 200, body: { id: r.body.id, deleted: true } });
    registered.splice(registered.findIndex((c) => c.id === r.body.id), 1);
    expect((await fetch(url)).status).toBe(404);
    const again = await json<object>(await fetch(url, { method: 'DELETE' }));
    expect(again).toMatchObject({ status: 404, body: { error: { code: 'constraint_not_found' } } });
    const use = await complete({ constraint: r.body.id, max_tokens: 4 });
    expect(use.status).toBe(400);
    expect(use.body.error).toMatchObject({ param: 'constraint', code: 'invalid_value' });
  });

  it('bad sets and bad uses are 400s naming the field', async () => {
    const vocab = src.tokenizer.vocab.tokens.length;
    const cases: [unknown, string | null, string, RegExp?][] = [
      [{ sequences: [] }, 'sequences', 'empty_array'],
      [{ token_sequences: [] }, 'token_sequences', 'empty_array'],
      [{ sequences: ['cat', ''] }, 'sequences', 'invalid_value', /string 1 \(""\) encodes to no tokens/],
      [{ sequences: ['cat', 7] }, 'sequences', 'invalid_type'],
      [{ token_sequences: [[pool[0]], [pool[1], vocab]] }, 'token_sequences', 'invalid_value', new RegExp(`sequence 1: token ${vocab} at position 1`)],
      [{ token_sequences: [[pool[0]], [-1]] }, 'token_sequences', 'invalid_value', /sequence 1: token -1/],
      [{ token_sequences: [[pool[0]], 5] }, 'token_sequences[1]', 'invalid_type'],
      [{ sequences: ['a'], token_sequences: [[pool[0]]] }, 'token_sequences', 'unsupported_value'],
      [{}, null, 'missing_required_parameter'],
    ];
    for (const [body, param, code, message] of cases) {
      const r = await register(body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error, JSON.stringify(body)).toMatchObject({ param, code });
      if (message) expect(r.body.error!.message).toMatch(message);
    }
    const first = registered[0].id;
    for (const [body, param, code] of [
      [{ constraint: 'cset-nope' }, 'constraint', 'invalid_value'],
      [{ constraint: 7 }, 'constraint', 'invalid_type'],
      [{ constraint: first, guided_choice: ['a'] }, 'constraint', 'unsupported_value'],
    ] as const) {
      const r = await complete({ max_tokens: 4, ...body });
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.error).toMatchObject({ param, code });
    }
  });

  it('takes bodies over the generation routes’ 1 MiB, up to its own limit (413 beyond)', async () => {
    // ~2 MiB of JSON: distinct sequences of 5 pool tokens
    const seqs: number[][] = [];
    for (let i = 0, bytes = 0; bytes < 2 * MiB; i++) {
      seqs.push([0, 1, 2, 3, 4].map((d) => pool[Math.floor(i / pool.length ** d) % pool.length]));
      bytes += JSON.stringify(seqs[i]).length + 1;
    }
    const body = JSON.stringify({ token_sequences: seqs });
    expect(body.length).toBeGreaterThan(2 * MiB);
    expect((await post(server.url, '/v1/completions', body)).status).toBe(413);
    const ok = await register(body);
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    expect(ok.body.sequences).toBe(seqs.length);
    const big = await register(JSON.stringify({ token_sequences: [...seqs, ...seqs] }));
    expect(big.status).toBe(413);
    expect(big.body.error!.message).toContain(String(ROUTE_LIMIT));
  });

  it('/metrics counts the registered sets and their bytes', async () => {
    expect(await metric(server.url, 'wgserve_constraint_sets')).toBe(registered.length);
    expect(await metric(server.url, 'wgserve_constraint_bytes')).toBe(registered.reduce((n, c) => n + c.bytes, 0));
  });

  it('a set beyond --constraint-memory is a 413; DELETE frees its share', async () => {
    const a = randomSet(3, 50, 6, pool);
    const b = randomSet(4, 40, 6, pool);
    const [sa, sb] = [trieSize(a).bytes, trieSize(b).bytes];
    // room for either set alone, not for both
    const limited = await startServer({ engine, modelId: MODEL, host: '127.0.0.1', port: 0, processMetrics: false, constraintMemory: Math.max(sa, sb) + 1 });
    try {
      const reg = async (set: number[][]) => json<SetCard>(await post(limited.url, '/v1/constraints', { token_sequences: set }));
      const first = await reg(a);
      expect(first.status).toBe(200);
      const refused = await reg(b);
      expect(refused.status).toBe(413);
      expect(refused.body.error).toMatchObject({ param: 'token_sequences', code: 'constraint_memory_exceeded' });
      expect(refused.body.error!.message).toContain(`${sb} bytes`);
      expect((await fetch(`${limited.url}/v1/constraints/${first.body.id}`, { method: 'DELETE' })).status).toBe(200);
      expect((await reg(b)).status).toBe(200);
      expect(await metric(limited.url, 'wgserve_constraint_bytes')).toBe(sb);
    } finally {
      await limited.close();
    }
  });
});

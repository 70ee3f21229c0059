import { describe, expect, it } from 'vitest';
import type { AnnAttentionOptions } from '../src/ann/ann_attention.ts';
import { Engine, type EngineRequest, type SamplingOptions } from '../src/engine/engine.ts';
import { stepLogits } from '../src/engine/generate.ts';
import { headPattern } from '../src/kv/head_pattern.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { buildServer } from '../src/server/app.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { useGpu } from './helpers/gpu.ts';
import { handOverInProcess } from './helpers/handoff.ts';
import { UNIT_ROUNDOFF, relativeLogitError, roundingTolerance } from './helpers/logits.ts';

// Decode attention with a key index in the model (docs/ann.md): stories260K (5 layers, 8 query
// heads over 4 KV heads of dim 8) with a threshold of 32 keys and a static window of 2 + 4, so
// that a few tokens cross it (a software device takes ~0.2 s per decode step, ~1 s per prompt).
const WINDOW = { sink: 2, recent: 4 };
/** an index that finds every key (one list per centroid holding all keys, every list scanned, k above the context): attention over every key */
const FULL_RECALL: AnnAttentionOptions = { threshold: 32, ...WINDOW, extendEvery: 32, topK: 64, nprobe: 4, index: { clusters: 4, listFraction: 1 } };
/** a sparse index: 2 middle keys per query head from lists of a quarter of the keys, extended every 2 tokens */
const SPARSE: AnnAttentionOptions = { threshold: 32, ...WINDOW, extendEvery: 2, topK: 2, nprobe: 1, index: { clusters: 4, listFraction: 0.25 } };

const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [], minTokens: maxTokens });
const seeded = (maxTokens: number, seed: number): SamplingOptions => ({ ...greedy(maxTokens), temperature: 1, seed });

/** `n` tokens of text the model reads naturally: a story, repeated as needed. */
function storyTokens(src: ModelSource, n: number): number[] {
  const text =
    'Once upon a time, there was a little girl named Lily. She loved to play in the park with her dog, Max. One day, Lily saw a big red ball under a tree. ' +
    'She ran to the ball and threw it to Max. Max ran fast and brought the ball back. Lily was very happy. Then the sun went down and the sky turned orange. ' +
    'Lily and Max walked home together. Her mom made warm soup for dinner. Lily told her mom about the red ball and the tree. Her mom smiled and gave her a hug. ';
  const tokens = src.tokenizer.encode(text.repeat(4));
  if (tokens.length < n) throw new Error(`story of ${tokens.length} tokens, ${n} wanted`);
  return tokens.slice(0, n);
}

/** Runs requests through one engine; returns each choice's tokens and the most indexes and index bytes held at once (seen at every token). */
async function serve(model: GpuModel, src: ModelSource, requests: EngineRequest[]): Promise<{ engine: Engine; outputs: number[][]; maxIndexes: number; maxBytes: number }> {
  const engine = new Engine(model, src.tokenizer);
  let maxIndexes = 0;
  let maxBytes = 0;
  const probe = () => {
    maxIndexes = Math.max(maxIndexes, model.ann?.indexCount() ?? 0);
    maxBytes = Math.max(maxBytes, engine.annBytes() ?? 0);
  };
  const done: Promise<number[]>[] = [];
  for (const r of requests) {
    const events = Array.from({ length: r.choices?.length ?? 1 }, () => {
      const tokens: number[] = [];
      let settle!: { resolve: (t: number[]) => void; reject: (e: Error) => void };
      done.push(new Promise<number[]>((resolve, reject) => (settle = { resolve, reject })));
      return {
        onToken: (e: { token: number }) => {
          tokens.push(e.token);
          probe();
        },
        onFinish: (reason: string, _u: unknown, err?: Error) => (err ? settle.reject(err) : reason === 'length' ? settle.resolve(tokens) : settle.reject(new Error(`finished: ${reason}`))),
      };
    });
    engine.submit(r.choices ? { ...r, choices: events } : { ...r, events: events[0] });
  }
  const result = await Promise.all(done);
  await engine.idle();
  expect(model.kv.pool.used, 'KV blocks left after every request finished').toBe(0);
  expect(model.ann?.bytes() ?? 0, 'key index bytes left after every request finished').toBe(0);
  return { engine, outputs: result, maxIndexes, maxBytes };
}

describe('decode attention with a key index in the model', () => {
  const getGpu = useGpu();

  // Teacher-forced through a head pattern (only its retrieval heads get an index): sequence 0
  // crosses the threshold at its first decode step; sequence 1 is forked from it then, sharing its
  // first block as Engine.fork does, and computes the prompt's last token in the same decode batch;
  // sequence 2 stays below the threshold, its queries sampled (past threshold / 2), in the same batches.
  it('an index that finds every key gives full attention\'s logits, a sparse one others, a row below the threshold bit for bit the same; forks build from their parent\'s samples', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const c = src.config;
    const rand = mulberry32(3);
    // rings long enough to hold the shared prompt (so that it can be forked); the index's own window is WINDOW
    const pattern = headPattern(Array.from({ length: c.nLayers }, () => Array.from({ length: c.nKvHeads }, () => rand())), { retrievalFraction: 0.5, sink: 4, recent: 40 });
    const retrievalHeads = pattern.kinds.flat().filter((k) => k === 'retrieval').length;
    const story = storyTokens(src, 40);
    const [prompt, shared, short, decode] = [33, 32, 17, 2];
    const run = async (ann?: AnnAttentionOptions) => {
      const m = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, headPattern: pattern, ann });
      const first = await stepLogits(m, [[{ seq: 0, tokens: story.slice(0, prompt) }, { seq: 2, tokens: story.slice(0, short) }]]);
      expect(m.fork(0, 1, shared)).toBe(true);
      const steps: SeqChunk[][] = [];
      for (let t = 0; t <= decode; t++) steps.push([0, 1, 2].map((seq) => ({ seq, tokens: [story[[prompt, shared, short][seq] + t]] })));
      const rest = await stepLogits(m, steps);
      const logits = [[...first.get(0)!, ...rest.get(0)!].slice(prompt), rest.get(1)!.slice(prompt - shared), [...first.get(2)!, ...rest.get(2)!].slice(short)];
      const indexes = [0, 1, 2].map((seq) => m.ann?.indexCount(seq));
      for (const seq of [0, 1, 2]) m.release(seq);
      expect(m.ann?.bytes() ?? 0, 'index bytes after release').toBe(0);
      m.destroy();
      return { logits, indexes };
    };
    const want = await run();
    const full = await run(FULL_RECALL);
    // the child's copy of its parent's 33 samples lets it build at once; from its own queries it would wait for 32 (minBuildTokens)
    expect(full.indexes).toEqual([retrievalHeads, retrievalHeads, 0]);
    // attention over every key summed in another order: both within the f32 rounding bound of the exact logits, so within twice it of each other
    const tol = 2 * roundingTolerance(c, prompt + decode + 1, UNIT_ROUNDOFF.f32);
    for (const seq of [0, 1]) expect(relativeLogitError(full.logits[seq], want.logits[seq]), `sequence ${seq}`).toBeLessThan(tol);
    // so greedy and seeded sampling below the threshold are those without an index
    expect(full.logits[2]).toEqual(want.logits[2]);
    const sparse = await run(SPARSE);
    expect(sparse.indexes).toEqual([retrievalHeads, retrievalHeads, 0]);
    for (const seq of [0, 1]) expect(relativeLogitError(sparse.logits[seq], want.logits[seq]), `sequence ${seq}`).toBeGreaterThan(tol);
    expect(sparse.logits[2]).toEqual(want.logits[2]);
  });

  it('through the engine with a sparse index: preemption (small KV pool) and n = 2 forks run to the end and free every index', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const story = storyTokens(src, 40);
    // prompts of 33 tokens: a fork shares 32 and computes the last one in a decode batch; every prompt chunk (and every
    // recomputation) has 33 to 64 rows, as in the test above (the same matmul tiles: no more pipelines to compile)
    // 3 sequences of 36 tokens need 3 x 4 x 3 blocks (5120 bytes each at block size 16; the fork shares 2 of each row's); the pool holds 24
    const requests: EngineRequest[] = [
      { prompt: story.slice(0, 33), sampling: greedy(3) },
      { prompt: story.slice(2, 35), sampling: seeded(3, 9), choices: [{}, {}] },
    ];
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 24 * 5120, ann: SPARSE });
    const got = await serve(model, src, requests);
    expect(got.engine.counters.preemptions).toBeGreaterThan(0);
    expect(got.outputs.map((o) => o.length)).toEqual([3, 3, 3]);
    expect(got.maxIndexes).toBeGreaterThan(0);
    expect(got.maxBytes).toBeGreaterThan(0);
    // what the server reports (0 now that every sequence has finished)
    const server = buildServer({ engine: got.engine, modelId: 'stories260K' });
    expect((await server.app.inject({ method: 'GET', url: '/health' })).json()).toMatchObject({ ann_bytes: 0 });
    expect((await server.app.inject({ method: 'GET', url: '/metrics' })).body).toContain('wgserve_ann_bytes 0');
    await server.close();
    model.destroy();
  });

  it('a sequence handed over without its samples builds on the decode side from its decode queries', async () => {
    const src = await openModel(DEFAULT_MODEL);
    const c = src.config;
    const prompt = storyTokens(src, 33);
    const ann = { ...SPARSE, minBuildTokens: 2 };
    const prefillModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, ann });
    const decodeModel = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, ann });
    const prefill = new Engine(prefillModel, src.tokenizer);
    // serial steps: a pipelined step (and its index build) would be recorded before the token of the step before it is emitted
    const decode = new Engine(decodeModel, src.tokenizer, { pipeline: false });
    const sampling = greedy(5);
    const indexesAt: number[] = [];
    const { tokens } = await handOverInProcess(prefill, decode, { prompt, sampling, onToken: () => indexesAt.push(decodeModel.ann!.indexCount()) });
    await decode.idle();
    expect(tokens.length).toBe(5);
    // token 0 came from the prefill side (which hands over no samples); the decode side samples from its first decode step and builds in its second (minBuildTokens 2)
    expect(indexesAt).toEqual([0, 0, 1, 1, 1].map((x) => x * c.nLayers * c.nKvHeads));
    expect(prefillModel.ann!.bytes()).toBe(0);
    expect(decodeModel.ann!.bytes()).toBe(0);
    prefillModel.destroy();
    decodeModel.destroy();
  });
});

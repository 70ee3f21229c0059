import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Engine, type EngineRequest, type SamplingOptions } from '../src/engine/engine.ts';
import { stepLogits } from '../src/engine/generate.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { type HeadPattern, headColumns, headPattern } from '../src/kv/head_pattern.ts';
import { cpuForward } from '../src/model/cpu_reference.ts';
import { cpuWeightsOf } from '../src/model/cpu_weights.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { mulberry32 } from '../src/util/rng.ts';
import type { BatchShape, CostModel } from '../src/scheduler/cost_model.ts';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { type SimOptions, simulate } from '../src/sim/simulator.ts';
import { useGpu } from './helpers/gpu.ts';
import { handOverInProcess } from './helpers/handoff.ts';
import { UNIT_ROUNDOFF, relativeLogitError, roundingTolerance } from './helpers/logits.ts';

// Head-wise KV through the whole model (docs/headwise.md): the forward pass's split KV writes, the
// attention kernels' columns and rings, forks, preemption. stories260K: 5 layers, 8 query heads
// over 4 KV heads (GQA groups of 2).
const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const BLOCK = 2 * 5 * 16 * 8 * 4; // bytes of one KV block at block size 16
const greedy = (maxTokens: number): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] });
const seeded = (maxTokens: number, seed: number): SamplingOptions => ({ ...greedy(maxTokens), temperature: 1, seed });

/** Random gates (seeded) binarised as asked: a mix of kinds per layer, and columns out of head order. */
function randomPattern(src: ModelSource, seed: number, o: { retrievalFraction?: number; gateThreshold?: number; sink: number; recent: number }): HeadPattern {
  const rand = mulberry32(seed);
  const gates = Array.from({ length: src.config.nLayers }, () => Array.from({ length: src.config.nKvHeads }, () => rand()));
  return headPattern(gates, o);
}

/** Every token each request (each choice) generates, run through a new engine together; every block freed after. */
async function run(model: GpuModel, src: ModelSource, requests: EngineRequest[]): Promise<number[][]> {
  const outs = await runOn(new Engine(model, src.tokenizer), requests);
  expect(model.kv.pool.used).toBe(0);
  return outs;
}

describe('head-wise KV in the model', () => {
  const getGpu = useGpu();
  /** a batch of greedy and seeded requests with choices, within sink + recent = 48 of the patterns below */
  const requests = (prompt: number[]): EngineRequest[] => [
    { prompt, sampling: greedy(8) },
    { prompt: prompt.slice(0, 4), sampling: seeded(8, 11), choices: [{}, {}] },
  ];
  let plainOutputs: Promise<number[][]> | undefined;
  /** the batch's outputs without a pattern (computed once) */
  const plain = (src: ModelSource, prompt: number[]) =>
    (plainOutputs ??= (async () => {
      const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20 });
      const outs = await run(model, src, requests(prompt));
      model.destroy();
      return outs;
    })());

  it('every head a retrieval head: the same logits bit for bit and the same greedy and seeded outputs as without a pattern', async () => {
    const src = await openModel(STORIES);
    // every gate >= 0: every head retrieval, but columns permuted by gate (heads not in their own column)
    const pattern = randomPattern(src, 3, { gateThreshold: 0, sink: 2, recent: 3 });
    expect(headColumns(pattern).columnOf.some((col, i) => col !== i % src.config.nKvHeads)).toBe(true);
    const prompt = src.tokenizer.encode('Once upon a time, there was a little girl');
    const without = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20 });
    const headwise = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, headPattern: pattern });
    const steps: SeqChunk[][] = [[{ seq: 1, tokens: prompt.slice(0, 5) }], [{ seq: 1, tokens: prompt.slice(5) }, { seq: 2, tokens: prompt.slice(0, 7) }], [{ seq: 1, tokens: [42] }, { seq: 2, tokens: [7] }]];
    expect(await stepLogits(headwise, steps)).toEqual(await stepLogits(without, steps));
    without.destroy();
    for (const s of [1, 2]) headwise.release(s);
    expect(await run(headwise, src, requests(prompt))).toEqual(await plain(src, prompt));
    headwise.destroy();
  });

  it('contexts shorter than sink + recent: the same outputs with a mixed pattern', async () => {
    const src = await openModel(STORIES);
    const prompt = src.tokenizer.encode('Once upon a time, there was a little girl');
    // a quarter of each layer's heads retrieval (one of 4), the others rings of 8 + 40 slots: more than prompt + 8 tokens
    const headwise = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, headPattern: randomPattern(src, 2, { retrievalFraction: 0.25, sink: 8, recent: 40 }) });
    expect(await run(headwise, src, requests(prompt))).toEqual(await plain(src, prompt));
    headwise.destroy();
  });

  // The GPU's f32 against the float64 forward pass with the same windowed attention: the bound of
  // test/helpers/logits.ts (u·√N over the longest chain, roundingTolerance), as for full attention.
  // The window changes the logits far more than that (checked below), so a ring read wrongly (a
  // stale slot, a key outside the window, a chunk's key missing) cannot pass.
  it('a windowed pattern: every position against the float64 windowed reference (chunks across the window, rings wrapping, decode beside prefill, a fork)', async () => {
    const src = await openModel(STORIES);
    const pattern = randomPattern(src, 7, { retrievalFraction: 0.5, sink: 3, recent: 8 });
    // block size 4: a ring of 11 slots spans 3 blocks, the last partly used
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20, blockSize: 4, headPattern: pattern });
    const a = src.tokenizer.encode('Once upon a time, there was a little girl named Lily. She loved to play outside in the sun with her friends and her dog');
    const b = src.tokenizer.encode('Tom had a red ball. He threw it');
    expect(a.length).toBeGreaterThan(30);
    // A: chunks of 5 (within the window), 9 (crossing it), 13 (longer than recent: overwrites its own slots), then decodes;
    // C: a fork of A's first 4 tokens after A's first chunk (its ring blocks copied), then a chunk past its window and decodes
    const first: SeqChunk[] = [{ seq: 1, tokens: a.slice(0, 5) }, { seq: 2, tokens: b }];
    const steps: SeqChunk[][] = [
      [{ seq: 2, tokens: [9] }, { seq: 1, tokens: a.slice(5, 14) }, { seq: 3, tokens: a.slice(4, 19) }],
      [{ seq: 2, tokens: [17] }, { seq: 1, tokens: a.slice(14, 27) }, { seq: 3, tokens: [a[19]] }],
      ...a.slice(27).map((t, i) => [{ seq: 1, tokens: [t] }, { seq: 2, tokens: [20 + i] }, { seq: 3, tokens: [a[20 + i]] }]),
    ];
    const got = await stepLogits(model, [first]);
    expect(model.fork(1, 3, 4)).toBe(true);
    for (const [seq, logits] of await stepLogits(model, steps)) got.set(seq, [...(got.get(seq) ?? []), ...logits]);
    const weights = cpuWeightsOf(src);
    const window = { kinds: headColumns(pattern).kinds, sink: pattern.sink, recent: pattern.recent };
    const fed = (seq: number) => [first, ...steps].flatMap((chunks) => chunks.filter((c) => c.seq === seq).flatMap((c) => c.tokens));
    for (const [seq, shared] of [[1, 0], [2, 0], [3, 4]]) {
      const tokens = [...a.slice(0, shared), ...fed(seq)];
      const ref = cpuForward(src.config, weights, tokens, { window }).slice(shared);
      const tol = roundingTolerance(src.config, tokens.length, UNIT_ROUNDOFF.f32);
      expect(relativeLogitError(got.get(seq)!, ref), `sequence ${seq}`).toBeLessThan(tol);
      if (seq === 1) expect(relativeLogitError(cpuForward(src.config, weights, tokens), ref), 'the window matters').toBeGreaterThan(100 * tol);
    }
    model.destroy();
  });

  it('a windowed pattern under preemption and recompute, and forked choices: the outputs the requests have with room for all', async () => {
    const src = await openModel(STORIES);
    // block size 4, 2 full columns + 2 rings of 2 + 10 slots (3 blocks)
    const headPattern = randomPattern(src, 5, { retrievalFraction: 0.5, sink: 2, recent: 10 });
    const long = src.tokenizer.encode('Once upon a time, there was a little girl named Lily');
    const requests = (): EngineRequest[] => [
      ...['Once upon a time', 'The little dog'].map((p) => ({ prompt: src.tokenizer.encode(p), sampling: greedy(12) })),
      // choices over a 6-token prompt (rings not yet wrapped: shared blocks and ring copies) and a longer one (rings past the shared tokens: no fork)
      { prompt: long.slice(0, 6), sampling: seeded(6, 3), choices: [{}, {}] },
      { prompt: long, sampling: seeded(4, 4), choices: [{}, {}] },
    ];
    const opts = { blockSize: 4, headPattern };
    const roomy = GpuModel.load(getGpu(), src, { ...opts, kvMemoryBytes: 1 << 20 });
    const forks: boolean[] = [];
    const fork = roomy.fork.bind(roomy);
    roomy.fork = (...a) => (forks.push(fork(...a)), forks[forks.length - 1]);
    const expected = await run(roomy, src, requests());
    expect(forks).toEqual([true, false]);
    roomy.destroy();
    // a sequence of 17 to 20 tokens takes 2 * 5 + 2 * 3 = 16 blocks of 4 slots (1280 bytes): 40 blocks hold two
    const tight = GpuModel.load(getGpu(), src, { ...opts, kvMemoryBytes: 40 * (BLOCK / 4) });
    const engine = new Engine(tight, src.tokenizer);
    expect(engine.maxSequenceTokens).toBe(((40 - 2 * 3) / 2) * 4);
    expect(await runOn(engine, requests())).toEqual(expected);
    expect(engine.counters.preemptions).toBeGreaterThan(0);
    expect(tight.kv.pool.used).toBe(0);
    tight.destroy();
  });

  // The handover ships each head row's kept tokens only (a ring's sink and latest tokens); the
  // receiver writes them where its own append puts them, so decoding goes on as on one engine.
  it('a windowed pattern, prefill on one engine and decode on another: the outputs of one engine, fewer rows shipped', async () => {
    const src = await openModel(STORIES);
    const headPattern = randomPattern(src, 4, { retrievalFraction: 0.25, sink: 2, recent: 6 });
    const prompt = src.tokenizer.encode('Once upon a time, there was a little girl named Lily');
    const sampling = seeded(6, 2);
    const opts = { kvMemoryBytes: 1 << 20, blockSize: 4, headPattern };
    const one = GpuModel.load(getGpu(), src, opts);
    const [expected] = await run(one, src, [{ prompt, sampling }]);
    one.destroy();
    const [prefillModel, decodeModel] = [GpuModel.load(getGpu(), src, opts), GpuModel.load(getGpu(), src, opts)];
    const [prefill, decode] = [new Engine(prefillModel, src.tokenizer), new Engine(decodeModel, src.tokenizer)];
    const { tokens, shipped: kv } = await handOverInProcess(prefill, decode, { prompt, sampling });
    expect(kv.importRows).toBe(kv.rows);
    const shipped = kv.layers.reduce((n, l) => n + l.k.byteLength + l.v.byteLength, 0);
    expect(tokens).toEqual(expected);
    // one full column of 4 with the prompt's tokens, three rings of sink + recent
    const { nLayers, nKvHeads, headDim } = src.config;
    expect(shipped).toBe(2 * nLayers * headDim * 4 * (prompt.length + (nKvHeads - 1) * 8));
    await Promise.all([prefill.idle(), decode.idle()]);
    prefillModel.destroy();
    decodeModel.destroy();
  });
});

/** run() on a given engine (its counters stay readable). */
async function runOn(engine: Engine, requests: EngineRequest[]): Promise<number[][]> {
  const outs: number[][] = [];
  const done: Promise<void>[] = [];
  for (const req of requests) {
    const n = req.choices?.length ?? 1;
    const events = Array.from({ length: n }, () => {
      const tokens: number[] = [];
      outs.push(tokens);
      let finish!: (err?: Error) => void;
      done.push(new Promise<void>((resolve, reject) => (finish = (err) => (err ? reject(err) : resolve()))));
      return { onToken: (e: { token: number }) => tokens.push(e.token), onFinish: (_r: unknown, _u: unknown, err?: Error) => finish(err) };
    });
    engine.submit(req.choices ? { ...req, choices: events } : { ...req, events: events[0] });
  }
  await Promise.all(done);
  await engine.idle();
  return outs;
}

// The simulator's capacity model takes the engine's head-wise tables (no device needed).
describe('head-wise KV in the simulator', () => {
  const cost: CostModel = {
    kvCapacityTokens: 4096,
    stepSeconds: (b: BatchShape) => 0.004 + 2e-5 * b.prefillTokens + 1e-4 * b.decodeSeqs + 2e-7 * b.decodeContext,
    kvTransferSeconds: (tokens) => 1e-3 + tokens * 1e-6,
    describe: () => 'toy linear model',
  };
  // 40 requests of 900 prompt + 100 output tokens at once: the full cache holds 4 at a time
  const workload = Array.from({ length: 40 }, () => ({ arrival: 0, inputTokens: 900, outputTokens: 100 }));
  const sim = (headwise?: SimOptions['headwise']) => {
    let peak = 0;
    const { summary } = simulate(workload, { cost, scheduler: new FcfsScheduler(), placement: { kind: 'colocated', instances: 1 }, limits: { tokenBudget: 2048, maxBatch: 64 }, headwise, onStep: (s) => (peak = Math.max(peak, s.shape.decodeSeqs)) });
    return { summary, peak };
  };

  it('every column full: the same run as without; a quarter full: as many more sequences at once as the rings save', () => {
    const full = sim();
    const allFull = sim({ nKvHeads: 8, fullColumns: 8, sink: 64, recent: 256 });
    expect({ ...allFull.summary, wallSeconds: 0 }).toEqual({ ...full.summary, wallSeconds: 0 });
    const quarter = sim({ nKvHeads: 8, fullColumns: 2, sink: 64, recent: 256 });
    expect(full.summary.finished).toBe(40);
    expect(quarter.summary.finished).toBe(40);
    // 1000 tokens take 8 * 63 = 504 blocks of 16 in full, 2 * 63 + 6 * 20 = 246 with rings; the pool holds 8 * 256
    expect(full.peak).toBe(4);
    expect(quarter.peak).toBe(Math.floor((256 * 8) / (2 * 63 + 6 * 20)));
    expect(quarter.summary.makespan).toBeLessThan(full.summary.makespan);
  });
});

import { packSampleParams, sample } from '../../kernels/sampling.ts';
import type { GpuModel, SeqChunk } from '../model/gpu_model.ts';
import type { BatchShape } from '../scheduler/cost_model.ts';
import { mulberry32 } from '../util/rng.ts';
import { type HeadwiseLayout, kvTokensOf, prefillPairsOf } from './headwise.ts';
import type { StepSample } from './cost/fitted.ts';

/** One cell of the profiling grid: decode sequences at a context, and prompt chunks at an offset. */
export interface ProfileCase {
  /** decoding sequences and the KV length each has before the step */
  decode: { seqs: number; context: number };
  /** prompt chunks: tokens fed, and KV tokens the sequence already has */
  prefill: { tokens: number; offset: number }[];
}

export interface ProfileOptions {
  /** a short grid (a couple of minutes on a software device for the embedded model) */
  quick?: boolean;
  /** timed runs per case; the median is kept (default 3) */
  repeats?: number;
  /** `gpu`: timestamp queries, `wall`: host clock around record + submit + readback; `auto`: gpu where supported */
  clock?: 'auto' | 'gpu' | 'wall';
  /** per-step token cap (default 512, like the engine's token budget) */
  tokenBudget?: number;
  seed?: number;
  onCase?: (done: number, total: number, sample: ProfiledStep) => void;
}

export interface ProfiledStep extends StepSample {
  /** every timed repeat, seconds */
  runs: number[];
}

export interface ProfileResult {
  samples: ProfiledStep[];
  clock: 'gpu' | 'wall';
}

/** The model's head-wise KV layout (undefined without a pattern). */
export function headwiseOf(model: Pick<GpuModel, 'kv' | 'config'>): HeadwiseLayout | undefined {
  const hw = model.kv.headwise;
  return hw && { nKvHeads: model.config.nKvHeads, fullColumns: hw.fullColumns, sink: hw.sink, recent: hw.recent };
}

/** The model's KV pool in tokens of the full cache (every KV head keeping every token), what CostModel.kvCapacityTokens counts. */
export function kvCapacityTokens(model: Pick<GpuModel, 'kv' | 'config' | 'blockSize'>): number {
  return Math.floor(model.kv.pool.numBlocks / model.config.nKvHeads) * model.blockSize;
}

/** The case's batch shape; with head-wise KV, attention as the rings read it (so the fitted terms stay per token read). */
export function shapeOf(c: ProfileCase, hw?: HeadwiseLayout): BatchShape {
  return {
    prefillTokens: c.prefill.reduce((s, p) => s + p.tokens, 0),
    prefillAttention: c.prefill.reduce((s, p) => s + prefillPairsOf(p.tokens, p.offset, hw), 0),
    decodeSeqs: c.decode.seqs,
    decodeContext: c.decode.seqs * kvTokensOf(c.decode.context, hw),
  };
}

/**
 * The grid of batch shapes to time, kept within the model's context length, the KV pool
 * (`capacityTokens`) and the token budget: prompt chunks of several lengths at several context
 * offsets, decode batches of several sizes and contexts, and mixed steps of both.
 */
export function profileGrid(o: { quick: boolean; contextLength: number; capacityTokens: number; tokenBudget: number; blockSize?: number; headwise?: HeadwiseLayout }): ProfileCase[] {
  const lengths = o.quick ? [16, 64] : [8, 32, 64, 128, 256, 512];
  const offsets = o.quick ? [0, 256] : [0, 128, 384];
  const batches = o.quick ? [1, 8] : [1, 2, 4, 8, 16, 32, 64];
  const contexts = o.quick ? [16, 256] : [16, 64, 192, 384];
  const cases: ProfileCase[] = [];
  const none = { seqs: 0, context: 0 };
  for (const tokens of lengths) for (const offset of offsets) cases.push({ decode: none, prefill: [{ tokens, offset }] });
  for (const seqs of batches) for (const context of contexts) cases.push({ decode: { seqs, context }, prefill: [] });
  const mixed: ProfileCase[] = o.quick
    ? [
        { decode: { seqs: 4, context: 64 }, prefill: [{ tokens: 32, offset: 0 }] },
        { decode: { seqs: 8, context: 96 }, prefill: [{ tokens: 64, offset: 64 }] },
      ]
    : [
        { decode: { seqs: 4, context: 64 }, prefill: [{ tokens: 64, offset: 0 }] },
        { decode: { seqs: 8, context: 128 }, prefill: [{ tokens: 128, offset: 64 }] },
        { decode: { seqs: 16, context: 256 }, prefill: [{ tokens: 256, offset: 128 }] },
        { decode: { seqs: 32, context: 64 }, prefill: [{ tokens: 64, offset: 256 }, { tokens: 128, offset: 0 }] },
        { decode: { seqs: 2, context: 384 }, prefill: [{ tokens: 384, offset: 0 }] },
      ];
  cases.push(...mixed);
  return cases.filter((c) => {
    const s = shapeOf(c);
    // KV is taken in whole blocks per sequence; rings stop at sink + recent (capacity: tokens of the full cache)
    const bs = o.blockSize ?? 16;
    const held = (tokens: number) => kvTokensOf(Math.ceil(tokens / bs) * bs, o.headwise);
    const kvTokens = c.decode.seqs * held(c.decode.context + 1) + c.prefill.reduce((n, p) => n + held(p.offset + p.tokens), 0);
    const longest = Math.max(c.decode.context + 1, ...c.prefill.map((p) => p.offset + p.tokens));
    return s.prefillTokens + s.decodeSeqs <= o.tokenBudget && kvTokens <= o.capacityTokens && longest <= o.contextLength;
  });
}

/**
 * Times real forward passes of `model` (plus greedy sampling and the readback of the sampled ids,
 * as an engine step does) over the profiling grid. Each case's sequences get their context first
 * (KV slots taken, see `fill`); each timed step is undone by truncating the KV back, so repeats see
 * the same shape. Sequences are released at the end.
 */
export async function profileSteps(model: GpuModel, options: ProfileOptions = {}): Promise<ProfileResult> {
  const gpu = model.gpu;
  const c = model.config;
  const quick = options.quick ?? false;
  const repeats = options.repeats ?? 3;
  const tokenBudget = options.tokenBudget ?? 512;
  const wantGpu = options.clock === 'gpu' || (options.clock !== 'wall' && gpu.features.timestampQuery);
  if (options.clock === 'gpu' && !gpu.features.timestampQuery) throw new Error('--clock gpu: this device has no timestamp queries');
  const clock: 'gpu' | 'wall' = wantGpu ? 'gpu' : 'wall';
  const headwise = headwiseOf(model);
  const capacityTokens = kvCapacityTokens(model);
  const cases = profileGrid({ quick, contextLength: c.contextLength, capacityTokens, tokenBudget, blockSize: model.blockSize, headwise });
  if (cases.length === 0) throw new Error('profile: no batch shape fits this model (context length, KV memory)');
  const rand = mulberry32(options.seed ?? 1);
  const randomTokens = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * c.vocabSize));
  let nextSeq = 1;

  const run = async (chunks: SeqChunk[], timed: boolean): Promise<number> => {
    const step = gpu.step({ label: 'profile step', timestamps: timed && wantGpu });
    try {
      const t0 = performance.now();
      const { logits, rows } = model.forward(step, chunks);
      const params = packSampleParams(chunks.map(() => ({ temperature: 0, topK: 0, topP: 1, seed: 0, counter: 0 })));
      const out = step.scratch(rows * 4, 'sampled');
      sample(step, { logits, params: step.upload(params, 'sample params'), out, rows, cols: c.vocabSize });
      const read = step.readback(out, 0, rows * 4);
      const result = await step.submit();
      await read;
      const wall = (performance.now() - t0) / 1e3;
      return wantGpu && result.gpuTimeNs !== undefined ? result.gpuTimeNs / 1e9 : wall;
    } catch (err) {
      await step.discard();
      throw err;
    }
  };

  /**
   * Gives each sequence a context of its length by taking KV slots in the block tables without
   * computing them: step time does not depend on the values attention reads (the slots hold zeros
   * or keys of earlier steps, all finite), and prompt passes to fill them would cost more than the
   * timed steps on a software device.
   */
  const fill = (contexts: { seq: number; tokens: number }[]) => {
    for (const x of contexts) if (x.tokens > 0) model.kv.append(x.seq, x.tokens);
  };

  // warm-up: compile the pipelines of every kernel path (prefill, decode, mixed) before timing
  {
    const a = nextSeq++;
    const b = nextSeq++;
    await run([{ seq: a, tokens: randomTokens(8) }], false);
    await run([{ seq: a, tokens: randomTokens(1) }, { seq: b, tokens: randomTokens(8) }], false);
    model.release(a);
    model.release(b);
  }

  const samples: ProfiledStep[] = [];
  for (const [i, cs] of cases.entries()) {
    const decodeSeqs = Array.from({ length: cs.decode.seqs }, () => nextSeq++);
    const prefillSeqs = cs.prefill.map(() => nextSeq++);
    try {
      fill([...decodeSeqs.map((seq) => ({ seq, tokens: cs.decode.context })), ...cs.prefill.map((p, k) => ({ seq: prefillSeqs[k], tokens: p.offset }))]);
      const before = new Map<number, number>();
      for (const s of [...decodeSeqs, ...prefillSeqs]) before.set(s, model.kv.has(s) ? model.kv.length(s) : 0);
      const chunks: SeqChunk[] = [
        ...decodeSeqs.map((seq) => ({ seq, tokens: randomTokens(1) })),
        ...cs.prefill.map((p, k) => ({ seq: prefillSeqs[k], tokens: randomTokens(p.tokens) })),
      ];
      const runs: number[] = [];
      for (let r = 0; r < repeats; r++) {
        runs.push(await run(chunks, true));
        for (const [seq, len] of before) {
          if (len === 0) model.release(seq);
          else model.kv.truncate(seq, len);
        }
      }
      const sample: ProfiledStep = { shape: shapeOf(cs, headwise), seconds: median(runs), runs };
      samples.push(sample);
      options.onCase?.(i + 1, cases.length, sample);
    } finally {
      for (const s of [...decodeSeqs, ...prefillSeqs]) if (model.kv.has(s)) model.release(s);
    }
  }
  return { samples, clock };
}

export function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

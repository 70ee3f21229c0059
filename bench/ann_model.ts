import { ropeFrequencies } from '../kernels/rope.ts';
import type { AnnAttentionOptions } from '../src/ann/ann_attention.ts';
import { generate, stepLogits } from '../src/engine/generate.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { type CpuWeights, cpuForward } from '../src/model/cpu_reference.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import type { ModelSource } from '../src/model/source.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { OPENINGS, argmax, logSoftmax } from './headwise_quality.ts';

/**
 * Decode attention with a key index in a real model (issue 15 item 5; docs/ann.md): the
 * full-attention model writes greedy continuations of a few story openings (end of text masked, so
 * every one reaches `length` tokens); each setting's model then reads the same tokens, the first
 * `prefix` as a prompt and every later one as a decode step (where the index is used), and is
 * scored at every decode position by greedy-token agreement (its argmax is the full model's next
 * token) and by KL(full || with index) of the next-token distribution. The reference runs the same
 * schedule without an index (so its step times compare).
 *
 * A synthetic model (random weights, src/model/synthetic.ts) has no continuation worth following:
 * it reads seeded random token ids instead, and agreement is with the full model's argmax at each
 * position. Its attention is near-uniform (logits of std ~1 over thousands of keys), so
 * `queryScale` (the CLI's --q-scale) can sharpen it, and `attentionMass` says how concentrated it is.
 */
export interface AnnModelOptions {
  sequences: number;
  /** tokens per sequence (prompt and continuation) */
  length: number;
  /** what is read: greedy continuations of story openings by the full model (default), or seeded random ids (synthetic models) */
  tokens?: 'greedy' | { random: number };
  /** prompt tokens per prefill step (default: the whole prompt in one) */
  chunk?: number;
  /** the index's settings besides threshold (sink, recent, topK, nprobe, index) */
  ann: AnnAttentionOptions;
  runs: AnnModelRun[];
}

export interface AnnModelRun {
  threshold: number;
  /** tokens read as the prompt (one prefill chunk); the rest are decode steps */
  prefix: number;
  /** where the index's build queries come from: this engine's prompt, or (a disaggregated decode worker) only the decode steps it runs */
  samples: 'prompt' | 'decode only';
}

export interface AnnModelRow extends AnnModelRun {
  positions: number;
  agreement: number;
  /** mean KL(full || with index), nats */
  meanKl: number;
  maxKl: number;
  /** the same from the first position where every run uses its index (past every threshold and every decode-side build) */
  latePositions: number;
  agreementLate: number;
  meanKlLate: number;
  /** per sequence: query samples held after the prompt (what a prefill worker would ship), and the indexes at the end */
  sampleBytes: number;
  indexBytes: number;
  /** decode step time, with the index and without (same schedule, same device) */
  msPerStep: number;
  msPerStepExact: number;
}

export interface AnnModelReport {
  model: string;
  /** attn_q scaled by this (1: the model as it is) */
  queryScale: number;
  /** how concentrated the full model's attention is at the scored positions, when measured */
  mass?: AttentionMass;
  device: string;
  isSoftware: boolean;
  options: AnnModelOptions;
  /** f32 K and V of one sequence of `length` tokens */
  kvBytesPerSequence: number;
  /** the later positions: from here on every run uses its index */
  lateFrom: number;
  rows: AnnModelRow[];
}

/**
 * Each sequence's logits at the decode positions [prefix, length - 1) (index t - prefix): the first
 * `prefix` tokens are the prompt, prefilled in chunks of `chunk` with no logits read (none is
 * scored), each later token a decode step; ms per decode step.
 */
async function readAll(model: GpuModel, seqs: number[][], prefix: number, chunk: number, afterPrompt?: () => void): Promise<{ logits: Float32Array[][]; msPerStep: number }> {
  for (let start = 0; start < prefix; start += chunk) {
    const step = model.gpu.step({ label: 'ann model prompt' });
    model.forward(step, seqs.map((s, seq) => ({ seq, tokens: s.slice(start, Math.min(prefix, start + chunk)) })));
    await step.submit();
  }
  afterPrompt?.();
  const steps: SeqChunk[][] = [];
  for (let t = prefix; t < seqs[0].length - 1; t++) steps.push(seqs.map((s, seq) => ({ seq, tokens: [s[t]] })));
  const t0 = performance.now();
  const rest = await stepLogits(model, steps);
  const msPerStep = (performance.now() - t0) / steps.length;
  return { logits: seqs.map((_, seq) => rest.get(seq)!), msPerStep };
}

/** The greedy continuations of story openings by `full` (end of text masked, so each reaches `length` tokens). */
async function greedyContinuations(full: GpuModel, src: ModelSource, sequences: number, length: number): Promise<number[][]> {
  if (sequences > OPENINGS.length) throw new Error(`at most ${OPENINGS.length} sequences`);
  const prompts = OPENINGS.slice(0, sequences).map((t) => src.tokenizer.encode(t));
  const { results } = await generate(
    full,
    src.tokenizer,
    prompts.map((tokens) => {
      const n = length - tokens.length;
      return { tokens, options: { maxTokens: n, minTokens: n, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] } };
    }),
  );
  return prompts.map((p, i) => [...p, ...results[i].tokens]);
}

/** Seeded random ids over the vocabulary after BOS. */
export function randomTokens(src: ModelSource, sequences: number, length: number, seed: number): number[][] {
  const next = mulberry32(seed);
  const { bos } = src.tokenizer.vocab;
  return Array.from({ length: sequences }, () => Array.from({ length }, (_, t) => (t === 0 && bos !== null ? bos : Math.floor(next() * src.config.vocabSize))));
}

/**
 * `src` with every attn_q.weight (F32) multiplied by `scale`: every attention logit is scaled by
 * it, a temperature (each query ranks the keys as before), so a random model's near-uniform
 * attention can be made as peaked as a trained model's. Nothing is planted per key or position.
 */
export function scaleQueries(src: ModelSource, scale: number): ModelSource {
  if (scale === 1) return src;
  const tensors = new Map(src.tensors);
  for (const [name, t] of src.tensors) {
    if (!name.endsWith('.attn_q.weight')) continue;
    if (t.typeName !== 'F32') throw new Error(`${src.path}: scaling queries needs F32 weights, ${name} is ${t.typeName}`);
    tensors.set(name, {
      ...t,
      read: () => {
        const b = t.read();
        const v = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
        for (let i = 0; i < v.length; i++) v[i] *= scale;
        return new Uint8Array(v.buffer);
      },
    });
  }
  return { ...src, path: `${src.path} (queries x${scale})`, tensors };
}

/** Mean over layers, query heads and positions of the softmax mass on a query's top key, its top `k` keys, and the static window. */
export interface AttentionMass {
  positions: number;
  k: number;
  top1: number;
  topK: number;
  /** the first `sink` and the latest `recent` keys */
  window: number;
}

/**
 * How concentrated the full model's attention is at positions [from, tokens.length) of one
 * sequence, from the float64 CPU forward pass (cpuForward's attention observer; F32 weights). No
 * logit is needed, so it computes one output row. Llama-3 RoPE scaling goes in as the per-frequency
 * divisors a GGUF file would carry, so the positions rotate as on the GPU.
 */
export function attentionMass(src: ModelSource, tokens: number[], from: number, o: { k: number; sink: number; recent: number }): AttentionMass {
  const c = src.config;
  const w: CpuWeights = new Map();
  for (const [name, t] of src.tensors) {
    if (t.typeName !== 'F32') throw new Error(`${src.path}: attention mass needs F32 weights, ${name} is ${t.typeName}`);
    const b = t.read();
    w.set(name, new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
  }
  if (c.ropeScaling?.type === 'llama3' && !w.has('rope_freqs.weight')) {
    const plain = ropeFrequencies({ ropeDim: c.ropeDim, base: c.ropeBase });
    const scaled = ropeFrequencies({ ropeDim: c.ropeDim, base: c.ropeBase, scaling: c.ropeScaling });
    w.set('rope_freqs.weight', plain.map((f, i) => f / scaled[i]));
  }
  const sum = { n: 0, top1: 0, topK: 0, window: 0 };
  cpuForward({ ...c, vocabSize: 1 }, w, tokens, {
    onAttention: (_layer, _head, t, probs) => {
      if (t < from) return;
      const sorted = Float64Array.from(probs).sort().reverse();
      let top = 0;
      for (let i = 0; i < Math.min(o.k, sorted.length); i++) top += sorted[i];
      let win = 0;
      probs.forEach((p, s) => (win += s < o.sink || s > t - o.recent ? p : 0));
      sum.n++;
      sum.top1 += sorted[0];
      sum.topK += top;
      sum.window += win;
    },
  });
  return { positions: tokens.length - from, k: o.k, top1: sum.top1 / sum.n, topK: sum.topK / sum.n, window: sum.window / sum.n };
}

export async function runAnnModelBench(
  gpu: Gpu,
  src: ModelSource,
  o: AnnModelOptions,
  onRow?: (r: AnnModelRow) => void,
  extra: { queryScale?: number; mass?: AttentionMass } = {},
): Promise<AnnModelReport> {
  const c = src.config;
  if (o.length > c.contextLength) throw new Error(`--length ${o.length} exceeds the model's context (${c.contextLength})`);
  const kvMemoryBytes = Math.max(16 << 20, 4 * o.sequences * o.length * c.nLayers * c.nKvHeads * c.headDim * 4);
  const full = GpuModel.load(gpu, src, { kvMemoryBytes });
  const tokens = o.tokens ?? 'greedy';
  const seqs = tokens === 'greedy' ? await greedyContinuations(full, src, o.sequences, o.length) : randomTokens(src, o.sequences, o.length, tokens.random);
  const exact = new Map<number, Awaited<ReturnType<typeof readAll>>>();
  const rows: AnnModelRow[] = [];
  const minBuild = o.ann.minBuildTokens ?? 32;
  const lateFrom = Math.max(...o.runs.map((r) => Math.max(r.threshold, r.prefix + (r.samples === 'decode only' ? minBuild : 0))));
  for (const run of o.runs) {
    if (run.prefix >= o.length - 1 || run.prefix < 1) throw new Error(`prefix ${run.prefix} leaves no decode step in ${o.length} tokens`);
    if (!exact.has(run.prefix)) {
      exact.set(run.prefix, await readAll(full, seqs, run.prefix, o.chunk ?? run.prefix));
      seqs.forEach((_, seq) => full.release(seq));
    }
    const reference = exact.get(run.prefix)!;
    const model = GpuModel.load(gpu, src, { kvMemoryBytes, ann: { ...o.ann, threshold: run.threshold } });
    const ann = model.ann!;
    let sampleBytes = 0;
    const got = await readAll(model, seqs, run.prefix, o.chunk ?? run.prefix, () => {
      sampleBytes = ann.bytes() / seqs.length;
      // a decode worker receives the KV without the prefill's samples
      if (run.samples === 'decode only') seqs.forEach((_, seq) => ann.free(seq));
    });
    const indexBytes = ann.bytes() / seqs.length;
    seqs.forEach((_, seq) => model.release(seq));
    model.destroy();
    const all = { n: 0, agree: 0, kl: 0 };
    const late = { n: 0, agree: 0, kl: 0 };
    let maxKl = 0;
    seqs.forEach((s, i) => {
      // position t (a decode step) predicts token t + 1: the continuation's, or (random ids) the full model's argmax
      for (let t = run.prefix; t < s.length - 1; t++) {
        const ref = reference.logits[i][t - run.prefix];
        const p = logSoftmax(ref);
        const q = logSoftmax(got.logits[i][t - run.prefix]);
        let d = 0;
        for (let v = 0; v < p.length; v++) d += Math.exp(p[v]) * (p[v] - q[v]);
        const agree = Number(argmax(got.logits[i][t - run.prefix]) === (tokens === 'greedy' ? s[t + 1] : argmax(ref)));
        for (const a of t >= lateFrom ? [all, late] : [all]) {
          a.n++;
          a.agree += agree;
          a.kl += d;
        }
        maxKl = Math.max(maxKl, d);
      }
    });
    const row: AnnModelRow = {
      ...run,
      positions: all.n,
      agreement: all.agree / all.n,
      meanKl: all.kl / all.n,
      maxKl,
      latePositions: late.n,
      agreementLate: late.agree / late.n,
      meanKlLate: late.kl / late.n,
      sampleBytes,
      indexBytes,
      msPerStep: got.msPerStep,
      msPerStepExact: reference.msPerStep,
    };
    rows.push(row);
    onRow?.(row);
  }
  full.destroy();
  return { model: src.path, queryScale: extra.queryScale ?? 1, mass: extra.mass, device: gpu.adapter.description, isSoftware: gpu.adapter.isSoftware, options: o, kvBytesPerSequence: 2 * o.length * c.nLayers * c.nKvHeads * c.headDim * 4, lateFrom, rows };
}

export function annModelMarkdown(r: AnnModelReport): string {
  const a = r.options.ann;
  const kib = (b: number) => `${(b / 1024).toFixed(1)}`;
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const random = typeof r.options.tokens === 'object';
  const read = random ? `seeded random token ids (seed ${(r.options.tokens as { random: number }).random})` : 'greedy continuations of the full-attention model';
  const m = r.mass;
  const name = r.model.startsWith('synthetic:') ? r.model.slice('synthetic:'.length) : r.model.split('/').pop();
  const lines = [
    `Decode attention with a key index on ${name}, ${r.device}${r.isSoftware ? ' (software device)' : ''}: ${r.options.sequences} sequences of ${read}, ${r.options.length} tokens each` +
      `${r.options.chunk ? ` (prompts prefilled in chunks of ${r.options.chunk})` : ''}; ` +
      `every KV head indexed, sink ${a.sink} + recent ${a.recent} exact, top-${a.topK} per query head from ${a.index?.clusters} centroids with lists of ${(100 * (a.index?.listFraction ?? 0.01)).toFixed(0)}% of the keys, nprobe ${a.nprobe}, extended every ${a.extendEvery}. ` +
      `Scored at every decode position (the first \`prefix\` tokens are the prompt), and from position ${r.lateFrom} on, where every run uses its index: greedy-token agreement with the full model${random ? "'s argmax" : ''} and KL(full || with index). ` +
      (r.queryScale !== 1 ? `Queries scaled by ${r.queryScale} (every attention logit x${r.queryScale}). ` : '') +
      (m ? `Full attention at the decode positions (float64 CPU pass, mean over ${m.positions} positions, every layer and query head): top key ${pct(m.top1)} of the mass, top ${m.k} keys ${pct(m.topK)}, static window ${pct(m.window)}. ` : '') +
      (r.rows.some((x) => x.samples === 'decode only') ? `"decode only": the samples the prompt gave are dropped after it (a disaggregated decode worker), so the index is built from the first ${a.minBuildTokens ?? 32} decode queries. ` : '') +
      `KV of one sequence: ${kib(r.kvBytesPerSequence)} KiB.`,
    '',
    `| threshold | prefix | build samples | positions (from ${r.lateFrom}) | agreement | mean KL (nats) | from ${r.lateFrom}: agreement | mean KL | max KL | samples after prompt KiB / seq | index KiB / seq | ms / step (exact) |`,
    '|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.rows.map(
      (x) =>
        `| ${x.threshold} | ${x.prefix} | ${x.samples} | ${x.positions} (${x.latePositions}) | ${pct(x.agreement)} | ${x.meanKl.toExponential(2)} | ${pct(x.agreementLate)} | ${x.meanKlLate.toExponential(2)} | ${x.maxKl.toExponential(2)} | ${kib(x.sampleBytes)} | ${kib(x.indexBytes)} | ${x.msPerStep.toFixed(0)} (${x.msPerStepExact.toFixed(0)}) |`,
    ),
  ];
  return lines.join('\n') + '\n';
}

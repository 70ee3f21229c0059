import type { AnnAttentionOptions } from '../src/ann/ann_attention.ts';
import { generate, stepLogits } from '../src/engine/generate.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import type { ModelSource } from '../src/model/source.ts';
import { OPENINGS, argmax, logSoftmax } from './headwise_quality.ts';

/**
 * Decode attention with a key index in a real model (issue 15 item 5; docs/ann.md): the
 * full-attention model writes greedy continuations of a few story openings (end of text masked, so
 * every one reaches `length` tokens); each setting's model then reads the same tokens, the first
 * `prefix` as a prompt and every later one as a decode step (where the index is used), and is
 * scored at every decode position by greedy-token agreement (its argmax is the full model's next
 * token) and by KL(full || with index) of the next-token distribution. The reference runs the same
 * schedule without an index (so its step times compare).
 */
export interface AnnModelOptions {
  sequences: number;
  /** tokens per sequence (prompt and continuation) */
  length: number;
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
  device: string;
  isSoftware: boolean;
  options: AnnModelOptions;
  /** f32 K and V of one sequence of `length` tokens */
  kvBytesPerSequence: number;
  /** the later positions: from here on every run uses its index */
  lateFrom: number;
  rows: AnnModelRow[];
}

/** Each sequence's logits at every position, the first `prefix` tokens as one prompt chunk and each later token as a decode step; ms per decode step. */
async function readAll(model: GpuModel, seqs: number[][], prefix: number, afterPrompt?: () => void): Promise<{ logits: Float32Array[][]; msPerStep: number }> {
  const first = await stepLogits(model, [seqs.map((s, seq) => ({ seq, tokens: s.slice(0, prefix) }))]);
  afterPrompt?.();
  const steps: SeqChunk[][] = [];
  for (let t = prefix; t < seqs[0].length - 1; t++) steps.push(seqs.map((s, seq) => ({ seq, tokens: [s[t]] })));
  const t0 = performance.now();
  const rest = await stepLogits(model, steps);
  const msPerStep = (performance.now() - t0) / steps.length;
  return { logits: seqs.map((_, seq) => [...first.get(seq)!, ...rest.get(seq)!]), msPerStep };
}

export async function runAnnModelBench(gpu: Gpu, src: ModelSource, o: AnnModelOptions, onRow?: (r: AnnModelRow) => void): Promise<AnnModelReport> {
  const c = src.config;
  if (o.length > c.contextLength) throw new Error(`--length ${o.length} exceeds the model's context (${c.contextLength})`);
  if (o.sequences > OPENINGS.length) throw new Error(`at most ${OPENINGS.length} sequences`);
  const kvMemoryBytes = Math.max(16 << 20, 4 * o.sequences * o.length * c.nLayers * c.nKvHeads * c.headDim * 4);
  const full = GpuModel.load(gpu, src, { kvMemoryBytes });
  const prompts = OPENINGS.slice(0, o.sequences).map((t) => src.tokenizer.encode(t));
  const { results } = await generate(
    full,
    src.tokenizer,
    prompts.map((tokens) => {
      const n = o.length - tokens.length;
      return { tokens, options: { maxTokens: n, minTokens: n, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] } };
    }),
  );
  const seqs = prompts.map((p, i) => [...p, ...results[i].tokens]);
  const exact = new Map<number, Awaited<ReturnType<typeof readAll>>>();
  const rows: AnnModelRow[] = [];
  const minBuild = o.ann.minBuildTokens ?? 32;
  const lateFrom = Math.max(...o.runs.map((r) => Math.max(r.threshold, r.prefix + (r.samples === 'decode only' ? minBuild : 0))));
  for (const run of o.runs) {
    if (run.prefix >= o.length - 1 || run.prefix < 1) throw new Error(`prefix ${run.prefix} leaves no decode step in ${o.length} tokens`);
    if (!exact.has(run.prefix)) {
      exact.set(run.prefix, await readAll(full, seqs, run.prefix));
      seqs.forEach((_, seq) => full.release(seq));
    }
    const reference = exact.get(run.prefix)!;
    const model = GpuModel.load(gpu, src, { kvMemoryBytes, ann: { ...o.ann, threshold: run.threshold } });
    const ann = model.ann!;
    let sampleBytes = 0;
    const got = await readAll(model, seqs, run.prefix, () => {
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
      // position t (a decode step) predicts token t + 1
      for (let t = run.prefix; t < s.length - 1; t++) {
        const p = logSoftmax(reference.logits[i][t]);
        const q = logSoftmax(got.logits[i][t]);
        let d = 0;
        for (let v = 0; v < p.length; v++) d += Math.exp(p[v]) * (p[v] - q[v]);
        const agree = Number(argmax(got.logits[i][t]) === s[t + 1]);
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
  return { model: src.path, device: gpu.adapter.description, isSoftware: gpu.adapter.isSoftware, options: o, kvBytesPerSequence: 2 * o.length * c.nLayers * c.nKvHeads * c.headDim * 4, lateFrom, rows };
}

export function annModelMarkdown(r: AnnModelReport): string {
  const a = r.options.ann;
  const kib = (b: number) => `${(b / 1024).toFixed(1)}`;
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  const lines = [
    `Decode attention with a key index on ${r.model.split('/').pop()}, ${r.device}${r.isSoftware ? ' (software device)' : ''}: ${r.options.sequences} greedy continuations of the full-attention model, ${r.options.length} tokens each; ` +
      `every KV head indexed, sink ${a.sink} + recent ${a.recent} exact, top-${a.topK} per query head from ${a.index?.clusters} centroids with lists of ${(100 * (a.index?.listFraction ?? 0.01)).toFixed(0)}% of the keys, nprobe ${a.nprobe}, extended every ${a.extendEvery}. ` +
      `Scored at every decode position (the first \`prefix\` tokens are the prompt), and from position ${r.lateFrom} on, where every run uses its index: greedy-token agreement with the full model and KL(full || with index). ` +
      `"decode only": the samples the prompt gave are dropped after it (a disaggregated decode worker), so the index is built from the first ${a.minBuildTokens ?? 32} decode queries. ` +
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

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { generate, stepLogits } from '../src/engine/generate.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { type HeadPattern, headPattern, loadHeadPattern } from '../src/kv/head_pattern.ts';
import { GpuModel, type SeqChunk } from '../src/model/gpu_model.ts';
import type { ModelSource } from '../src/model/source.ts';
import { mulberry32 } from '../src/util/rng.ts';

/**
 * Fidelity of head-wise KV on a real model (docs/headwise.md): the full-attention model writes
 * greedy continuations of a few story openings; each pattern's model then reads the same tokens
 * (teacher-forced, in prefill chunks that cross the window) and is scored at every position past
 * the prompt by greedy-token agreement (its argmax is the full model's next token) and by the KL
 * divergence of its next-token distribution from the full model's.
 */
export interface QualityOptions {
  fractions: number[];
  sink: number;
  recent: number;
  /** new tokens per continuation at most */
  maxTokens: number;
  /** random gate patterns per fraction besides the calibrated one */
  randomPatterns: number;
  seed: number;
  /** tokens per prefill chunk of the teacher-forced pass */
  chunk: number;
}

export interface QualityRow {
  /** 'calibrated' (bench/results/headwise-stories260k.heads.tsv) or 'random seed N' */
  pattern: string;
  fraction: number;
  retrievalHeads: number;
  kvHeads: number;
  /** positions scored (past the prompts), and those past sink + recent (where the window cuts) */
  positions: number;
  positionsPastWindow: number;
  agreement: number;
  agreementPastWindow: number;
  /** mean KL(full || head-wise) in nats */
  meanKl: number;
  meanKlPastWindow: number;
}

export interface QualityReport {
  model: string;
  device: string;
  options: QualityOptions;
  sequences: number;
  tokens: number;
  rows: QualityRow[];
}

export const OPENINGS = ['Once upon a time', 'One day, a little girl', 'Tom and his dog', 'There was a big tree', 'The sun was shining', 'Lily wanted to', 'A little bird', 'Sam had a red ball'];
export const CALIBRATED = join(repoRoot, 'bench', 'results', 'headwise-stories260k.heads.tsv');

/** Logits of every position of each sequence, teacher-forced through `model` in chunks. */
async function allLogits(model: GpuModel, seqs: number[][], chunk: number): Promise<Float32Array[][]> {
  const steps: SeqChunk[][] = [];
  for (let start = 0; seqs.some((s) => start < s.length); start += chunk) {
    steps.push(seqs.map((s, i) => ({ seq: i, tokens: s.slice(start, start + chunk) })).filter((c) => c.tokens.length > 0));
  }
  const bySeq = await stepLogits(model, steps);
  seqs.forEach((_, i) => model.release(i));
  return seqs.map((_, i) => bySeq.get(i) ?? []);
}

export function logSoftmax(x: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  let sum = 0;
  for (const v of x) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(x, (v) => v - logZ);
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** The patterns scored per fraction: the calibrated gates (when the file exists) and seeded random ones. */
function patternsFor(src: ModelSource, o: QualityOptions, fraction: number): { name: string; pattern: HeadPattern }[] {
  const shape = { nLayers: src.config.nLayers, nKvHeads: src.config.nKvHeads };
  const window = { retrievalFraction: fraction, sink: o.sink, recent: o.recent };
  const list = existsSync(CALIBRATED) ? [{ name: 'calibrated', pattern: loadHeadPattern(CALIBRATED, shape, window) }] : [];
  for (let r = 0; r < o.randomPatterns; r++) {
    const rand = mulberry32(o.seed + r);
    const gates = Array.from({ length: shape.nLayers }, () => Array.from({ length: shape.nKvHeads }, () => rand()));
    list.push({ name: `random seed ${o.seed + r}`, pattern: headPattern(gates, window) });
  }
  return list;
}

export async function runHeadwiseQuality(gpu: Gpu, src: ModelSource, o: QualityOptions, onRow?: (r: QualityRow) => void): Promise<QualityReport> {
  const kvMemoryBytes = 16 << 20;
  const full = GpuModel.load(gpu, src, { kvMemoryBytes });
  const prompts = OPENINGS.map((t) => src.tokenizer.encode(t));
  const sampling = { maxTokens: o.maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] };
  const { results } = await generate(full, src.tokenizer, prompts.map((tokens) => ({ tokens, options: sampling })));
  const seqs = prompts.map((p, i) => [...p, ...results[i].tokens]);
  const reference = await allLogits(full, seqs, o.chunk);
  full.destroy();
  const window = o.sink + o.recent;
  const rows: QualityRow[] = [];
  for (const fraction of o.fractions) {
    for (const { name, pattern } of patternsFor(src, o, fraction)) {
      const model = GpuModel.load(gpu, src, { kvMemoryBytes, headPattern: pattern });
      const got = await allLogits(model, seqs, o.chunk);
      model.destroy();
      const acc = { all: { n: 0, agree: 0, kl: 0 }, past: { n: 0, agree: 0, kl: 0 } };
      seqs.forEach((s, i) => {
        // position t predicts token t + 1: scored where that token was generated
        for (let t = prompts[i].length - 1; t < s.length - 1; t++) {
          const p = logSoftmax(reference[i][t]);
          const q = logSoftmax(got[i][t]);
          let kl = 0;
          for (let v = 0; v < p.length; v++) kl += Math.exp(p[v]) * (p[v] - q[v]);
          const agree = Number(argmax(got[i][t]) === s[t + 1]);
          for (const a of t >= window ? [acc.all, acc.past] : [acc.all]) {
            a.n++;
            a.agree += agree;
            a.kl += kl;
          }
        }
      });
      const retrievalHeads = pattern.kinds.flat().filter((k) => k === 'retrieval').length;
      const row: QualityRow = {
        pattern: name,
        fraction,
        retrievalHeads,
        kvHeads: pattern.kinds.flat().length,
        positions: acc.all.n,
        positionsPastWindow: acc.past.n,
        agreement: acc.all.agree / acc.all.n,
        agreementPastWindow: acc.past.n ? acc.past.agree / acc.past.n : NaN,
        meanKl: acc.all.kl / acc.all.n,
        meanKlPastWindow: acc.past.n ? acc.past.kl / acc.past.n : NaN,
      };
      rows.push(row);
      onRow?.(row);
    }
  }
  return { model: src.path, device: gpu.adapter.description, options: o, sequences: seqs.length, tokens: seqs.reduce((n, s) => n + s.length, 0), rows };
}

export function headwiseQualityMarkdown(r: QualityReport): string {
  const { sink, recent } = r.options;
  const pct = (x: number) => (Number.isNaN(x) ? 'n/a' : `${(100 * x).toFixed(1)}%`);
  const kl = (x: number) => (Number.isNaN(x) ? 'n/a' : x.toExponential(2));
  const lines = [
    `Head-wise KV fidelity on ${r.model.split('/').pop()} (sink ${sink}, recent ${recent}), ${r.device}: ${r.sequences} greedy continuations of the full-attention model (${r.tokens} tokens), teacher-forced through each pattern in chunks of ${r.options.chunk}; per position past the prompt, greedy-token agreement with the full model and mean KL(full || head-wise), overall and past sink + recent (where the window cuts).`,
    '',
    '| retrieval heads | pattern | positions (past window) | agreement | agreement past window | mean KL (nats) | mean KL past window |',
    '|---|---|---|---|---|---|---|',
    ...r.rows.map((x) => `| ${pct(x.fraction)} (${x.retrievalHeads}/${x.kvHeads}) | ${x.pattern} | ${x.positions} (${x.positionsPastWindow}) | ${pct(x.agreement)} | ${pct(x.agreementPastWindow)} | ${kl(x.meanKl)} | ${kl(x.meanKlPastWindow)} |`),
  ];
  return lines.join('\n') + '\n';
}

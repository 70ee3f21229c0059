import type { ModelConfig } from '../model/config.ts';
import { type CpuForwardOptions, cpuForward } from '../model/cpu_reference.ts';
import { cpuWeightsOf } from '../model/cpu_weights.ts';
import type { ModelSource } from '../model/source.ts';
import { TokenType, type Vocab } from '../model/tokenizer/vocab.ts';
import { mulberry32 } from '../util/rng.ts';

/**
 * Head calibration by the Retrieval Head paper's copy score: on needle-in-a-haystack prompts
 * whose end copies the needle, a head "copies" a token when its most attended key is the needle
 * token being reproduced next. A head's score is the fraction of copy steps where it does; a KV
 * head scores the best of its query heads (it must keep full history if any of them retrieves).
 * Computed with the float64 CPU forward pass (teacher-forced: the prompt holds the copy).
 */

export interface CopySample {
  tokens: number[];
  /** copy steps: the query at `query` is followed by the token at `source` (inside the needle) */
  steps: { query: number; source: number }[];
}

export interface CalibrationOptions {
  seed: number;
  /** prompts */
  samples: number;
  /** tokens per prompt (BOS, haystack with the needle, the needle again) */
  length: number;
  /** needle tokens */
  needle: number;
}

export const DEFAULT_CALIBRATION: Omit<CalibrationOptions, 'seed'> = { samples: 8, length: 256, needle: 16 };

export interface HeadScores {
  /** copy score [layer][kvHead] in [0,1]: the best of the KV head's query heads */
  kv: number[][];
  /** copy score [layer][queryHead] */
  query: number[][];
  /** mean attention probability on the token being copied [layer][queryHead] (a softer view of the same) */
  mass: number[][];
  /** copy steps scored (all samples) */
  steps: number;
}

/** Token ids a prompt may use: normal tokens (every id but BOS/EOS/UNK when the vocabulary has no types). */
export function plainTokens(vocab: Vocab, vocabSize: number): number[] {
  const special = new Set([vocab.bos, vocab.eos, vocab.unk]);
  const ids = Array.from({ length: vocabSize }, (_, id) => id).filter((id) => !special.has(id));
  const typed = ids.filter((id) => vocab.types[id] === TokenType.NORMAL);
  return typed.length >= 2 ? typed : ids;
}

/**
 * Seeded copy prompts: BOS, random haystack tokens with a needle of distinct tokens at a random
 * depth, then the needle again (the copy steps are that repeat's tokens after its first).
 */
export function copySamples(o: CalibrationOptions, tokens: readonly number[], bos: number | null): CopySample[] {
  const rand = mulberry32(o.seed);
  const pick = () => tokens[Math.floor(rand() * tokens.length)];
  const head = bos === null ? 0 : 1;
  const haystack = o.length - head - 2 * o.needle;
  if (o.needle < 2 || haystack < 0 || tokens.length < o.needle) throw new RangeError(`calibration prompts of ${o.length} tokens cannot hold a ${o.needle}-token needle twice (needle >= 2, distinct tokens from ${tokens.length})`);
  return Array.from({ length: o.samples }, () => {
    const needle: number[] = [];
    while (needle.length < o.needle) {
      const t = pick();
      if (!needle.includes(t)) needle.push(t);
    }
    const depth = Math.floor(rand() * (haystack + 1));
    const hay = Array.from({ length: haystack }, pick);
    const body = [...hay.slice(0, depth), ...needle, ...hay.slice(depth)];
    const prompt = [...(bos === null ? [] : [bos]), ...body, ...needle];
    const needleAt = head + depth;
    const copyAt = prompt.length - o.needle;
    return { tokens: prompt, steps: Array.from({ length: o.needle - 1 }, (_, i) => ({ query: copyAt + i, source: needleAt + i + 1 })) };
  });
}

/** Runs a forward pass over `tokens`, reporting every query head's attention (cpuForward's hook). */
export type AttentionObserver = (tokens: number[], onAttention: NonNullable<CpuForwardOptions['onAttention']>) => void;

/** Copy scores of every head over `samples`; `onSample` after each (progress). */
export function scoreHeads(samples: readonly CopySample[], observe: AttentionObserver, shape: Pick<ModelConfig, 'nLayers' | 'nHeads' | 'nKvHeads'>, onSample?: (done: number) => void): HeadScores {
  const grid = () => Array.from({ length: shape.nLayers }, () => new Array<number>(shape.nHeads).fill(0));
  const hits = grid();
  const mass = grid();
  let steps = 0;
  samples.forEach((sample, i) => {
    const sources = new Map(sample.steps.map((s) => [s.query, s.source]));
    observe(sample.tokens, (layer, head, position, probs) => {
      const source = sources.get(position);
      if (source === undefined) return;
      mass[layer][head] += probs[source];
      let top = 0;
      for (let k = 1; k < probs.length; k++) if (probs[k] > probs[top]) top = k;
      if (top === source) hits[layer][head]++;
    });
    steps += sample.steps.length;
    onSample?.(i + 1);
  });
  const mean = (g: number[][]) => g.map((row) => row.map((h) => (steps ? h / steps : 0)));
  const query = mean(hits);
  const group = shape.nHeads / shape.nKvHeads;
  const kv = query.map((row) => Array.from({ length: shape.nKvHeads }, (_, h) => Math.max(...row.slice(h * group, (h + 1) * group))));
  return { kv, query, mass: mean(mass), steps };
}

/** Calibrates a model's heads with the float64 CPU forward pass. */
export function calibrateHeads(src: ModelSource, o: CalibrationOptions, onSample?: (done: number) => void): HeadScores {
  const c = src.config;
  if (o.length > c.contextLength) throw new RangeError(`calibration prompts of ${o.length} tokens exceed the model's context (${c.contextLength})`);
  const samples = copySamples(o, plainTokens(src.tokenizer.vocab, c.vocabSize), src.tokenizer.vocab.addBos ? src.tokenizer.vocab.bos : null);
  const weights = cpuWeightsOf(src);
  return scoreHeads(samples, (tokens, onAttention) => cpuForward(c, weights, tokens, { onAttention }), c, onSample);
}

import { NO_TOKEN, packSampleParams, sample } from '../../kernels/sampling.ts';
import type { Step } from '../gpu/step.ts';
import type { GpuModel } from './gpu_model.ts';
import { StopMatcher } from './stop.ts';
import { StreamDecoder, type Tokenizer } from './tokenizer/index.ts';

export interface SamplingOptions {
  /** new tokens at most */
  maxTokens: number;
  /** 0 = greedy */
  temperature: number;
  /** 0 = off */
  topK: number;
  /** 1 = off */
  topP: number;
  /** same seed, same output */
  seed: number;
  /** strings that end generation; never emitted */
  stop: string[];
}

export const DEFAULT_SAMPLING: SamplingOptions = { maxTokens: 128, temperature: 0.8, topK: 40, topP: 0.95, seed: 0, stop: [] };

export type FinishReason = 'stop' | 'length';

export interface SequenceResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
}

/**
 * Runs between the forward pass and sampling, on the GPU, in the same step: the hook for logit
 * masks (constrained decoding) and biases. Rewrites `logits` [rows, vocab] in place.
 */
export type LogitsProcessor = (step: Step, logits: GPUBuffer, rows: number, seqs: readonly number[]) => void;

export interface GenerateOptions {
  /** prompt tokens per sequence per step (chunked prefill); default: whole prompts in one step */
  prefillChunk?: number;
  logitsProcessors?: LogitsProcessor[];
  /** called with each sequence's newly emitted text as it becomes safe to emit */
  onText?: (index: number, text: string) => void;
}

interface Active {
  index: number;
  seq: number;
  prompt: number[];
  prefilled: number;
  generated: number[];
  options: SamplingOptions;
  decoder: StreamDecoder;
  stops: StopMatcher;
  text: string;
  finish: FinishReason | null;
}

let nextSeqId = 1;

/**
 * Generates continuations of several prompts together: prompts are prefilled (whole or in chunks)
 * and then decoded in one batch, one forward pass and one GPU sampling dispatch per step, until
 * each sequence hits EOS, a stop string or its token limit. Tokens are sampled on the GPU; only
 * their ids come back.
 */
export async function generate(
  model: GpuModel,
  tokenizer: Tokenizer,
  prompts: { tokens: number[]; options: SamplingOptions }[],
  options: GenerateOptions = {},
): Promise<{ results: SequenceResult[]; stats: GenerationStats }> {
  const vocab = model.config.vocabSize;
  const eos = tokenizer.vocab.eos;
  const active: Active[] = prompts.map((p, index) => {
    if (p.tokens.length === 0) throw new Error('generate: empty prompt (it needs at least one token, e.g. BOS)');
    if (p.tokens.length + p.options.maxTokens > model.config.contextLength) {
      throw new Error(`prompt (${p.tokens.length} tokens) + max tokens (${p.options.maxTokens}) exceeds the context length ${model.config.contextLength}`);
    }
    return {
      index,
      seq: nextSeqId++,
      prompt: p.tokens,
      prefilled: 0,
      generated: [],
      options: p.options,
      decoder: new StreamDecoder(tokenizer),
      stops: new StopMatcher(p.options.stop),
      text: '',
      finish: p.options.maxTokens <= 0 ? 'length' : null,
    };
  });
  const stats: GenerationStats = { promptTokens: 0, generatedTokens: 0, prefillSeconds: 0, decodeSeconds: 0 };
  const emit = (a: Active, text: string) => {
    if (!text) return;
    a.text += text;
    options.onText?.(a.index, text);
  };

  try {
    for (;;) {
      const running = active.filter((a) => a.finish === null);
      if (running.length === 0) break;
      const chunkSize = options.prefillChunk ?? Infinity;
      const chunks = running.map((a) => {
        if (a.prefilled < a.prompt.length) {
          const n = Math.min(chunkSize, a.prompt.length - a.prefilled);
          return { seq: a.seq, tokens: a.prompt.slice(a.prefilled, a.prefilled + n) };
        }
        return { seq: a.seq, tokens: [a.generated[a.generated.length - 1]] };
      });
      const isPrefill = running.some((a) => a.prefilled < a.prompt.length);
      const t0 = performance.now();
      const step = model.gpu.step({ label: 'generate' });
      const { logits, rows } = model.forward(step, chunks);
      for (const p of options.logitsProcessors ?? []) p(step, logits, rows, chunks.map((c) => c.seq));
      const params = step.upload(
        packSampleParams(
          running.map((a) => ({
            temperature: a.options.temperature,
            topK: a.options.topK,
            topP: a.options.topP,
            seed: a.options.seed >>> 0,
            counter: a.generated.length,
          })),
        ),
        'sample params',
      );
      const out = step.scratch(rows * 4, 'sampled');
      sample(step, { logits, params, out, rows, cols: vocab });
      const read = step.readback(out, 0, rows * 4);
      await step.submit();
      const sampled = new Uint32Array(await read);
      const seconds = (performance.now() - t0) / 1e3;
      if (isPrefill) stats.prefillSeconds += seconds;
      else stats.decodeSeconds += seconds;

      running.forEach((a, i) => {
        const fed = chunks[i].tokens.length;
        if (a.prefilled < a.prompt.length) {
          a.prefilled += fed;
          stats.promptTokens += fed;
          if (a.prefilled < a.prompt.length) return; // mid-prompt chunk: its sample is not used
        }
        const token = sampled[i];
        if (token === NO_TOKEN) throw new Error('sampling found no valid token (every logit masked or not finite)');
        a.generated.push(token);
        stats.generatedTokens++;
        let stoppedByString = false;
        if (token === eos) {
          a.finish = 'stop';
        } else {
          const r = a.stops.push(a.decoder.push(token));
          emit(a, r.emit);
          if (r.stopped) {
            a.finish = 'stop';
            stoppedByString = true;
          } else if (a.generated.length >= a.options.maxTokens) {
            a.finish = 'length';
          }
        }
        if (a.finish !== null) {
          // the end of the text: bytes of an unfinished character, and text held back for a stop
          // string that never completed
          if (!stoppedByString) {
            const r = a.stops.push(a.decoder.flush());
            emit(a, r.emit + (r.stopped ? '' : a.stops.flush()));
          }
          model.release(a.seq);
        }
      });
    }
  } finally {
    for (const a of active) if (model.kv.has(a.seq)) model.release(a.seq);
  }
  return {
    results: active.map((a) => ({
      text: a.text,
      tokens: a.generated.filter((t) => t !== eos),
      promptTokens: a.prompt.length,
      finishReason: a.finish ?? 'length',
    })),
    stats,
  };
}

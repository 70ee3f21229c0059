import type { TokenAutomaton } from '../constraints/automaton.ts';
import type { GpuModel } from '../model/gpu_model.ts';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { Engine, type EngineOptions, type FinishReason, type SamplingOptions } from './engine.ts';

export interface SequenceResult {
  text: string;
  /** generated token ids (EOS excluded) */
  tokens: number[];
  promptTokens: number;
  finishReason: FinishReason;
}

export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  /** GPU steps that prefilled prompt tokens (possibly with decodes alongside) */
  prefillSeconds: number;
  /** steps that only decoded */
  decodeSeconds: number;
}

/**
 * Generates continuations of several prompts with one engine: they are batched together
 * (continuous batching), prompts prefilled in chunks of the token budget. For the CLI, tests and
 * benchmarks; the server drives the engine directly.
 */
export async function generate(
  model: GpuModel,
  tokenizer: Tokenizer,
  prompts: { tokens: number[]; options: SamplingOptions; constraint?: TokenAutomaton }[],
  options: EngineOptions & { onText?: (index: number, text: string) => void } = {},
): Promise<{ results: SequenceResult[]; stats: GenerationStats }> {
  const engine = new Engine(model, tokenizer, options);
  const stats: GenerationStats = { promptTokens: 0, generatedTokens: 0, prefillSeconds: 0, decodeSeconds: 0 };
  engine.onStep = (s) => {
    stats.promptTokens += s.promptTokens;
    if (s.promptTokens > 0) stats.prefillSeconds += s.seconds;
    else stats.decodeSeconds += s.seconds;
  };
  const results = await Promise.all(
    prompts.map(
      (p, index) =>
        new Promise<SequenceResult>((resolve, reject) => {
          const r: SequenceResult = { text: '', tokens: [], promptTokens: p.tokens.length, finishReason: 'length' };
          engine.submit({
            prompt: p.tokens,
            sampling: p.options,
            constraint: p.constraint,
            events: {
              onToken: (e) => {
                if (e.token !== tokenizer.vocab.eos) r.tokens.push(e.token);
                if (e.text) {
                  r.text += e.text;
                  options.onText?.(index, e.text);
                }
              },
              onFinish: (reason, _usage, error) => {
                r.finishReason = reason;
                if (error) reject(error);
                else resolve(r);
              },
            },
          });
        }),
    ),
  );
  stats.generatedTokens = engine.counters.generatedTokens;
  return { results, stats };
}

/**
 * Compiles the pipelines a server needs before its first request (WebGPU compiles them
 * synchronously, which would stall the event loop mid-request): a batch of prompts long enough
 * for the tiled matmul and prefill attention, then decode steps with several sequences.
 */
export async function warmUp(model: GpuModel, tokenizer: Tokenizer): Promise<void> {
  const prompts = ['Once upon a time, there was a little girl who liked to play in the park.', 'The dog ran.'].map((t) => tokenizer.encode(t));
  await generate(model, tokenizer, prompts.map((tokens) => ({ tokens, options: { maxTokens: 3, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] } })));
}

import type { TokenAutomaton } from '../constraints/automaton.ts';
import { advanceRows, maskRows, setStates } from '../../kernels/constraints.ts';
import { applyBias, countTokens, initCounts, penalize } from '../../kernels/penalties.ts';
import { sample } from '../../kernels/sampling.ts';
import { KvPoolExhausted } from '../kv/paged_kv.ts';
import type { GpuModel, SeqChunk } from '../model/gpu_model.ts';
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
 * Teacher forcing: runs `steps` (each a list of chunks, one forward pass) and returns the logits of
 * every token fed, per sequence in feeding order (benchmarks and tests of KV layouts). Sequences
 * are left holding their KV: the caller releases them.
 */
export async function stepLogits(model: GpuModel, steps: SeqChunk[][]): Promise<Map<number, Float32Array[]>> {
  const vocab = model.config.vocabSize;
  const bySeq = new Map<number, Float32Array[]>();
  for (const chunks of steps) {
    const step = model.gpu.step({ label: 'step logits' });
    const { logits, rows } = model.forward(step, chunks, { allPositions: true });
    const read = step.readback(logits, 0, rows * vocab * 4);
    await step.submit();
    const all = new Float32Array(await read);
    // allPositions rows are in packed order: decode tokens first, then prompt chunks (forward's order)
    const packed = [...chunks].sort((a, b) => Number(b.tokens.length === 1) - Number(a.tokens.length === 1));
    let row = 0;
    for (const ch of packed) {
      const list = bySeq.get(ch.seq) ?? [];
      for (let i = 0; i < ch.tokens.length; i++, row++) list.push(all.slice(row * vocab, (row + 1) * vocab));
      bySeq.set(ch.seq, list);
    }
  }
  return bySeq;
}

/** Batch limits the warm-up compiles for: the Engine's defaults (EngineOptions). */
export interface WarmUpLimits {
  maxBatch?: number;
  tokenBudget?: number;
}

/**
 * Prepares a server before its first request: on a GPU every pipeline a step can need is compiled
 * asynchronously (precompile), so no request waits on a synchronous compile; then a short batched
 * generation runs once (buffer pool filled, first touch of every buffer; on a software device,
 * where compiling the whole grid takes minutes and serving is for tests, it compiles what it uses).
 */
export async function warmUp(model: GpuModel, tokenizer: Tokenizer, limits: WarmUpLimits = {}): Promise<void> {
  if (!model.gpu.adapter.isSoftware) await precompile(model, limits);
  const text = 'Once upon a time, there was a little girl who liked to play in the park.';
  const prompts = [text, 'The dog ran.'].map((t) => tokenizer.encode(t));
  const options = { maxTokens: 3, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] };
  await generate(model, tokenizer, prompts.map((tokens) => ({ tokens, options })));
  if (!model.gpu.adapter.isSoftware) return;
  // Where precompiling every shape takes too long (a software adapter), prompts of 12 and 40 tokens
  // still compile the matmul tile heights that the prompts above miss (matmulTileRows: 16, 64), so
  // no first prompt of those sizes compiles them on the event loop while serving.
  const long = tokenizer.encode(`${text} ${text} ${text}`);
  for (const n of [12, 40].filter((n) => n <= long.length && n < model.config.contextLength)) {
    await generate(model, tokenizer, [{ tokens: long.slice(0, n), options: { ...options, maxTokens: 1 } }]);
  }
}

/**
 * Compiles the pipelines of every step shape the engine can meet, with createComputePipelineAsync
 * (Gpu.precompile: the steps are recorded dry, nothing runs): steps of every row count up to 64
 * (the matrix kernels are chosen by row count up to there; beyond, one tiled kernel), as one prompt
 * chunk and as that many decoding sequences, within the limits; prompt chunks and contexts of 2^k and 2^k + 1 tokens up
 * to the token budget and the context length, decoded at power-of-two batches (attention's split-K
 * plan depends on batch and context); sampling, logit penalties and constraint kernels. Sequences
 * are made up (negative ids) and released. Returns how many pipelines were compiled.
 */
export async function precompile(model: GpuModel, limits: WarmUpLimits = {}): Promise<number> {
  const c = model.config;
  const maxBatch = limits.maxBatch ?? 64;
  const budget = limits.tokenBudget ?? 512;
  const lengths = [1];
  for (let n = 2; n < c.contextLength; n *= 2) lengths.push(n, n + 1);
  const batches = [...new Set([1, 2, 4, 8, 16, 32, 64, maxBatch].filter((b) => b <= maxBatch))];
  let nextSeq = -1;
  return model.gpu.precompile((step) => {
    const pass = (chunks: { seq: number; tokens: number[] }[]) => {
      const { logits, rows } = model.forward(step, chunks);
      sample(step, { logits, params: step.scratch(rows * 32), out: step.scratch(rows * 4), rows, cols: c.vocabSize });
    };
    const fresh = (n: number) => Array.from({ length: n }, () => nextSeq--);
    /** Records, then releases `seqs`; false when the KV pool could not hold them. */
    const withSeqs = (seqs: number[], record: () => void): boolean => {
      try {
        record();
        return true;
      } catch (err) {
        if (!(err instanceof KvPoolExhausted)) throw err;
        return false;
      } finally {
        for (const s of seqs) if (model.kv.has(s)) model.release(s);
      }
    };
    // every row count up to 64 (matrix kernels are chosen by rows): one prompt chunk of t tokens, t decoding sequences
    for (let t = 1; t <= 64; t++) {
      if (t <= budget) {
        const [seq] = fresh(1);
        withSeqs([seq], () => pass([{ seq, tokens: new Array<number>(t).fill(0) }]));
      }
      if (t <= maxBatch) {
        const seqs = fresh(t);
        withSeqs(seqs, () => pass(seqs.map((seq) => ({ seq, tokens: [0] }))));
      }
    }
    for (const len of lengths) {
      const [long] = fresh(1);
      const held = withSeqs([long], () => {
        // one sequence's context is `len` tokens (prefilled in budget-sized chunks), the others' one
        for (let done = 0; done < len; done += budget) pass([{ seq: long, tokens: new Array<number>(Math.min(budget, len - done)).fill(0) }]);
        for (const b of batches) {
          const short = fresh(b - 1);
          withSeqs(short, () => pass([long, ...short].map((seq) => ({ seq, tokens: [0] }))));
          model.kv.truncate(long, len);
        }
      });
      if (!held) break; // longer contexts do not fit the KV pool either
    }
    const any = step.scratch(4);
    const a = { states: 1, edges: 0 };
    applyBias(step, { logits: any, entries: any, count: 1, cols: c.vocabSize });
    penalize(step, { logits: any, penalties: any, counts: any, rows: 1, cols: c.vocabSize });
    initCounts(step, { counts: any, seqs: [], cols: c.vocabSize });
    countTokens(step, { counts: any, slots: any, sampled: any, rows: 1, cols: c.vocabSize });
    maskRows(step, { logits: any, automaton: any, states: any, rows: any, count: 1, cols: c.vocabSize, a, eos: null });
    advanceRows(step, { automaton: any, states: any, rows: any, count: 1, sampled: any, status: any, cols: c.vocabSize, a });
    setStates(step, any, [[0, 0]]);
  });
}

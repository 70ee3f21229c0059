import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runStepBench } from '../bench/step.ts';
import { Engine, type EngineHandle, type FinishReason, type SamplingOptions, type Usage } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import type { Tokenizer } from '../src/model/tokenizer/index.ts';
import { compileGuide } from '../src/constraints/guide.ts';
import type { TokenAutomaton } from '../src/constraints/automaton.ts';
import { useGpu } from './helpers/gpu.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');

const greedy = (maxTokens: number, stop: string[] = []): SamplingOptions => ({ maxTokens, temperature: 0, topK: 0, topP: 1, seed: 0, stop });
const seeded = (maxTokens: number, seed: number, temperature: number, top: { topK?: number; topP?: number }): SamplingOptions => ({ maxTokens, temperature, topK: top.topK ?? 0, topP: top.topP ?? 1, seed, stop: [] });

/**
 * stories260K's tokenizer with "." as its end-of-sequence token: the model's stories reach a full
 * stop within a dozen tokens, so EOS arrives in the middle of decoding, one step ahead of the
 * pipelined step that follows it.
 */
function periodAsEos(tokenizer: Tokenizer): Tokenizer {
  const period = tokenizer.encode('.').at(-1)!;
  return Object.create(tokenizer, { vocab: { value: { ...tokenizer.vocab, eos: period } } }) as Tokenizer;
}

interface Outcome {
  tokens: number[];
  text: string;
  /** each token's log-probability and alternatives, where asked for */
  logprobs: unknown[];
  reason?: FinishReason;
  usage?: Usage;
  /** events received after onFinish (must stay 0) */
  late: number;
  /** positions of KV the sequence held when its last token was emitted */
  kvAtLast: number;
}

interface Run {
  outcomes: Map<string, Outcome>;
  counters: Engine['counters'];
  /** KV blocks the sequence that ends at EOS held last, and those the request started from its onFinish got */
  endedBlocks: number[];
  nextBlocks: number[];
  /** whether the EOS sequence still held KV when it finished (a following step had appended its extra token) */
  heldAfterEnd: boolean;
  /** pipelined steps so far when the sequence was cancelled */
  pipelinedAtCancel: number;
}

/**
 * One engine over a mix of concurrent requests: greedy and seeded, ending at EOS, at a stop
 * string, at max_tokens, and cancelled after its third token; when the EOS one finishes, a new
 * request starts from its onFinish, taking the blocks it freed.
 */
async function serve(model: GpuModel, tokenizer: Tokenizer, pipeline: boolean): Promise<Run> {
  const engine = new Engine(model, tokenizer, { pipeline });
  const outcomes = new Map<string, Outcome>();
  const run: Run = { outcomes, counters: engine.counters, endedBlocks: [], nextBlocks: [], heldAfterEnd: true, pipelinedAtCancel: -1 };
  const blocksOf = (h: EngineHandle) => Array.from(model.kv.batchTables([h.id]).table);
  const bos = tokenizer.vocab.bos!;
  const word = (w: string) => tokenizer.encode(w).at(-1)!;
  const submit = (
    name: string,
    prompt: number[],
    sampling: SamplingOptions,
    hooks: { token?: (o: Outcome, h: EngineHandle) => void; finish?: (h: EngineHandle) => void } = {},
    constraint?: TokenAutomaton,
  ) => {
    const o: Outcome = { tokens: [], text: '', logprobs: [], late: 0, kvAtLast: 0 };
    outcomes.set(name, o);
    const handle: EngineHandle = engine.submit({
      prompt,
      sampling,
      constraint,
      events: {
        onToken: (e) => {
          if (o.reason) o.late++;
          o.tokens.push(e.token);
          o.text += e.text;
          if (e.logprob !== undefined) o.logprobs.push([e.logprob, e.topLogprobs]);
          o.kvAtLast = model.kv.tokens(handle.id);
          hooks.token?.(o, handle);
        },
        onFinish: (reason, usage) => {
          if (o.reason) o.late++;
          Object.assign(o, { reason, usage });
          hooks.finish?.(handle);
        },
      },
    });
    return handle;
  };
  // one-token prompts: every step stays within the decode kernels (compiled once for the file)
  submit('eos', [word(' little')], greedy(16), {
    token: (_o, h) => (run.endedBlocks = blocksOf(h)),
    finish: (h) => {
      run.heldAfterEnd = model.kv.has(h.id);
      submit('next', [bos], seeded(4, 5, 1.2, { topP: 0.9 }), { token: (o, h) => o.tokens.length === 1 && (run.nextBlocks = blocksOf(h)) });
    },
  });
  submit('stop string', [bos], greedy(16, [' was']));
  submit('length', [bos], seeded(7, 9, 1.5, { topK: 40 }));
  // rows whose state between steps lives on the GPU: an automaton (a regex), penalties' token counts, and log-probabilities read with each step
  submit('constrained', [bos], seeded(24, 11, 1.0, {}), {}, compileGuide({ kind: 'regex', pattern: '[a-z]{1,5}( [a-z]{1,5}){2,6}' }, tokenizer, true));
  submit('penalties', [word(' Lily')], { ...seeded(20, 13, 0.9, { topK: 50 }), frequencyPenalty: 0.8, presencePenalty: 0.4, repetitionPenalty: 1.3 });
  submit('logprobs', [bos], { ...greedy(12), logprobs: 3 });
  submit('cancelled', [word(' Lily')], seeded(16, 3, 1.5, { topP: 0.95 }), {
    token: (o, h) => {
      if (o.tokens.length !== 3) return;
      run.pipelinedAtCancel = engine.counters.pipelinedSteps;
      h.cancel();
    },
  });
  await engine.idle();
  expect(model.kv.pool.used).toBe(0);
  return run;
}

describe('engine pipelining', () => {
  const getGpu = useGpu();

  it('gives exactly the serial outputs; a sequence that ended one step ago drops its extra token and KV; cancelling mid-pipeline', async () => {
    const src = await openModel(STORIES);
    const tokenizer = periodAsEos(src.tokenizer);
    const eos = tokenizer.vocab.eos!;
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    try {
      const serial = await serve(model, tokenizer, false);
      const piped = await serve(model, tokenizer, true);
      expect(serial.counters.pipelinedSteps).toBe(0);

      // the mix does what it is meant to (in both runs alike: compared below)
      const o = serial.outcomes;
      expect(o.get('eos')!.tokens.at(-1)).toBe(eos);
      expect(o.get('eos')!.tokens.length).toBeGreaterThan(2);
      expect(o.get('eos')!.reason).toBe('stop');
      expect(o.get('stop string')!).toMatchObject({ reason: 'stop' });
      expect(o.get('stop string')!.tokens.at(-1)).not.toBe(eos);
      expect(o.get('length')!).toMatchObject({ reason: 'length', tokens: { length: 7 } });
      expect(o.get('cancelled')!).toMatchObject({ reason: 'cancelled', tokens: { length: 3 } });
      expect(o.get('next')!.reason).toBeDefined();
      // the next request took blocks the EOS sequence had held (the pool is a stack)
      for (const r of [serial, piped]) {
        expect(r.heldAfterEnd).toBe(false);
        expect(r.nextBlocks.filter((b) => r.endedBlocks.includes(b)).length).toBeGreaterThan(0);
      }

      // pipelined: every output identical (tokens, text, finish reason, usage), nothing after a finish
      const withoutKv = (r: Run) => new Map([...r.outcomes].map(([k, { kvAtLast: _, ...x }]) => [k, x]));
      expect(withoutKv(piped)).toEqual(withoutKv(serial));
      for (const out of piped.outcomes.values()) expect(out.late).toBe(0);

      // KV when the last token came: serially, the context before it (prompt + tokens - 1); pipelined,
      // the sequences ending at EOS and the one cancelled also hold the token a following step appended (dropped
      // with the rest of their KV: heldAfterEnd, pool empty), while a sequence at max_tokens is known
      // to end there and no step follows it
      for (const x of o.values()) expect(x.kvAtLast).toBe(1 + x.tokens.length - 1);
      const kvAtLast = (r: Run) => new Map([...r.outcomes].map(([k, x]) => [k, x.kvAtLast]));
      const ahead = new Map([...kvAtLast(serial)].map(([k, n]) => [k, n + Number(k === 'cancelled' || o.get(k)!.tokens.at(-1) === eos)]));
      expect(kvAtLast(piped)).toEqual(ahead);
      expect(piped.counters.pipelinedSteps).toBeGreaterThan(0);
      expect(piped.pipelinedAtCancel).toBeGreaterThan(0);
      // the rule ran: rows of sequences that had ended (EOS, stop string) were computed and dropped, at
      // most one each (a sequence reaching max_tokens is known to end: no row follows it)
      const stopped = [...o.values()].filter((x) => x.reason === 'stop' && x.tokens.length > 1).length;
      expect(piped.counters.rolledBack).toBeGreaterThan(0);
      expect(piped.counters.rolledBack).toBeLessThanOrEqual(stopped);
      expect(piped.counters.generatedTokens).toBe(serial.counters.generatedTokens);
    } finally {
      model.destroy();
    }
  });

  it('constrained, penalised and log-probability rows are pipelined too, with the serial outputs', async () => {
    const src = await openModel(STORIES);
    const tokenizer = src.tokenizer;
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20 });
    const bos = tokenizer.vocab.bos!;
    const kinds: { name: string; sampling: SamplingOptions; constraint?: TokenAutomaton }[] = [
      { name: 'constrained', sampling: seeded(10, 11, 1.0, {}), constraint: compileGuide({ kind: 'regex', pattern: '[a-z]{1,4}( [a-z]{1,4}){3,5}' }, tokenizer, true) },
      { name: 'penalties', sampling: { ...seeded(10, 13, 0.9, { topK: 50 }), frequencyPenalty: 0.8, presencePenalty: 0.4, repetitionPenalty: 1.3 } },
      { name: 'logprobs', sampling: { ...greedy(10), logprobs: 3 } },
    ];
    try {
      for (const k of kinds) {
        const run = async (pipeline: boolean) => {
          const engine = new Engine(model, tokenizer, { pipeline });
          const out: { tokens: number[]; logprobs: unknown[]; reason?: FinishReason } = { tokens: [], logprobs: [] };
          await new Promise<void>((resolve) =>
            engine.submit({
              prompt: [bos],
              sampling: k.sampling,
              constraint: k.constraint,
              events: {
                onToken: (e) => {
                  out.tokens.push(e.token);
                  if (e.logprob !== undefined) out.logprobs.push([e.logprob, e.topLogprobs]);
                },
                onFinish: (reason) => {
                  out.reason = reason;
                  resolve();
                },
              },
            }),
          );
          await engine.idle();
          return { out, pipelined: engine.counters.pipelinedSteps };
        };
        const serial = await run(false);
        const piped = await run(true);
        expect(piped.out, k.name).toEqual(serial.out);
        expect(serial.out.tokens.length, k.name).toBeGreaterThan(3);
        if (k.name === 'logprobs') expect(serial.out.logprobs).toHaveLength(serial.out.tokens.length);
        // every decode step but the first follows the one before it
        expect(piped.pipelined, k.name).toBeGreaterThanOrEqual(serial.out.tokens.length - 2);
      }
      expect(model.kv.pool.used).toBe(0);
    } finally {
      model.destroy();
    }
  });

  it('min_tokens: the EOS mask lifts at the same token when the host count is a step behind', async () => {
    const src = await openModel(STORIES);
    const tokenizer = periodAsEos(src.tokenizer);
    const eos = tokenizer.vocab.eos!;
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20 });
    const run = async (sampling: SamplingOptions, pipeline: boolean) => {
      const engine = new Engine(model, tokenizer, { pipeline });
      const tokens: number[] = [];
      await new Promise<void>((resolve) => engine.submit({ prompt: [tokenizer.vocab.bos!], sampling, events: { onToken: (e) => tokens.push(e.token), onFinish: () => resolve() } }));
      await engine.idle();
      return { tokens, pipelined: engine.counters.pipelinedSteps };
    };
    try {
      // where greedy decoding ends at EOS on its own; min_tokens one short of it lifts the mask
      // exactly at that step, which a pipelined step records with the host one token behind
      const free = await run(greedy(30), false);
      expect(free.tokens.at(-1)).toBe(eos);
      const sampling = { ...greedy(30), minTokens: free.tokens.length - 1 };
      const serial = await run(sampling, false);
      const piped = await run(sampling, true);
      expect(serial.tokens).toEqual(free.tokens);
      expect(piped.tokens).toEqual(serial.tokens);
      expect(piped.pipelined).toBeGreaterThanOrEqual(serial.tokens.length - 2);
    } finally {
      model.destroy();
    }
  });

  it('a request that arrives while the loop is ending (after its last look for work) still runs', async () => {
    const src = await openModel(STORIES);
    const model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 1 << 20 });
    try {
      const engine = new Engine(model, src.tokenizer);
      const bos = src.tokenizer.vocab.bos!;
      // the loop's end is a few microtasks long; a submit k microtasks after the last step's stats lands at each point of it
      for (let k = 0; k < 12; k++) {
        let finished = 0;
        const submitted = new Promise<void>((resolve) => {
          engine.onStep = () => {
            engine.onStep = undefined;
            let chain = Promise.resolve();
            for (let i = 0; i < k; i++) chain = chain.then(() => {});
            void chain.then(() => {
              engine.submit({ prompt: [bos], sampling: greedy(1), events: { onFinish: () => finished++ } });
              resolve();
            });
          };
        });
        engine.submit({ prompt: [bos], sampling: greedy(1), events: { onFinish: () => finished++ } });
        await submitted;
        await engine.idle();
        expect({ k, finished }).toEqual({ k, finished: 2 });
      }
      expect(model.kv.pool.used).toBe(0);
    } finally {
      model.destroy();
    }
  });

  it('bench step --pipeline: step N+1 recorded before step N is read back, in a steady state that creates nothing', async () => {
    const steps = 3;
    const report = await runStepBench(getGpu(), [{ model: 'stories260k', dtype: 'f32', scale: 'full', layers: 2, batches: [2], warmup: 2, steps, recordRepeats: 1, context: 0, pipeline: true }], true);
    const [run] = report.runs;
    expect(run.pipeline).toBe(true);
    const r = run.results[0];
    expect(r.countsVaried).toBe(false);
    expect(r.measured).toMatchObject({ bindGroupsCreated: 0, buffersCreated: 0, submits: 1, readbacks: 1 });
    const at = (kind: string, s: number) => report.trace.find((e) => e.name === `${kind} decode b=2 step ${s}`)!;
    for (let s = 0; s + 1 < steps; s++) {
      const readEnd = at('read-back', s).ts + at('read-back', s).dur;
      expect(at('submit', s + 1).ts).toBeLessThan(readEnd);
    }
  });
});

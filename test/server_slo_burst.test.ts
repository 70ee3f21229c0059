import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { BatchShape, CostModel } from '../src/scheduler/cost_model.ts';
import { prefillSeconds } from '../src/scheduler/service_time.ts';
import { sloCeilings } from '../src/sim/ceilings.ts';
import { fitCostModel, predict } from '../src/sim/cost/fitted.ts';
import type { SimRequest } from '../src/sim/workload.ts';
import { post, readSse, until } from './helpers/http.ts';
import { type ServeProcess, startServeProcess } from '../bench/serve_process.ts';
import { STORIES_PROMPT, STORIES_REFERENCE } from './helpers/stories.ts';
import { useTmpDirs } from './helpers/tmp.ts';

/**
 * Issue 11: a burst of long and short prompts on a live `wgserve serve` (the embedded stories260K).
 * The longs are sent first. Under --policy slo the shorts still get their first token before any
 * long does (fcfs serves the longs first), and no request is rejected that the shortest-first
 * ceiling (src/sim/ceilings.ts, over a cost model fitted to the server's own recorded steps, as
 * `wgserve profile --from-steps` fits it) counts as servable.
 *
 * What makes the live burst the case the policy is built for:
 *  - the engine is busy when the burst comes (a request without an SLO is decoding), so the burst
 *    arrives during a step and the next plan sees it whole; an idle engine starts the first
 *    arrival at once;
 *  - the token budget is smaller than a long prompt (3 x STORIES_REFERENCE, ~245 tokens: 4
 *    chunks), so no long prompt completes in the step that carries the shorts.
 */

const MODEL = 'stories260K';
const BUDGET = 64;
const LONG_PROMPT = STORIES_REFERENCE.repeat(3);
const N_LONG = 2;
const N_SHORT = 4;
/** the first token and one more: the first token is what is measured */
const MAX_TOKENS = 2;

/** prompt tokens of the long and the short prompt */
interface Tokens {
  long: number;
  short: number;
}

interface Outcome {
  long: boolean;
  /** ms from the burst's start to its first streamed token (client side); undefined if rejected */
  firstMs?: number;
  /** the rejection's message (the 429 body, which a stream carries as its error event) */
  rejected?: string;
}

/** The steps the server recorded so far (each written right after the engine and its online fit saw it). */
const recorded = (file: string) =>
  existsSync(file)
    ? readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => JSON.parse(l) as { shape: BatchShape; periodSeconds: number })
    : [];

/** How much slower than the fit the tight case allows steps to run. */
const SLOWER = 1.5;

/** `cost` with every step `factor` times as long. */
const slowed = (cost: CostModel, factor: number): CostModel => ({ ...cost, stepSeconds: (b) => factor * cost.stepSeconds(b) });

/** A cost model fitted to the recorded steps' loop periods, as `wgserve profile --from-steps` fits it. */
function fittedFromSteps(file: string): CostModel {
  const { coefficients } = fitCostModel(recorded(file).map((r) => ({ shape: r.shape, seconds: r.periodSeconds })));
  return { stepSeconds: (b) => predict(coefficients, b), kvTransferSeconds: () => 0, kvCapacityTokens: Infinity, describe: () => 'fitted from the recorded steps' };
}

/**
 * While a request without an SLO decodes (started before, cancelled after), sends N_LONG long
 * prompts and then N_SHORT short ones, all at once, streaming, with a TTFT of `ttftMs`.
 */
async function burst(url: string, ttftMs: number): Promise<Outcome[]> {
  // 1500 decode steps (most of the 2048-token context): minutes at this machine's 0.11-0.16 s a
  // step, where a burst takes ~10 s; cancelled after
  const occupier = new AbortController();
  const busy = await post(url, '/v1/completions', { model: MODEL, prompt: STORIES_PROMPT, max_tokens: 1500, min_tokens: 1500, temperature: 0, stream: true }, {}, occupier.signal);
  expect(busy.status).toBe(200);
  try {
    await busy.body!.getReader().read(); // its first token: the engine now steps back to back
    const t0 = performance.now();
    const one = async (long: boolean): Promise<Outcome> => {
      // logprobs: every token is streamed, even one without text
      const res = await post(url, '/v1/completions', { model: MODEL, prompt: long ? LONG_PROMPT : STORIES_PROMPT, max_tokens: MAX_TOKENS, temperature: 0, logprobs: 1, stream: true, slo: { ttft_ms: ttftMs } });
      expect(res.status).toBe(200);
      const out: Outcome = { long };
      const events = await readSse(res, (e) => {
        if (e.length > 0 && out.firstMs === undefined) out.firstMs = performance.now() - t0;
        return false;
      });
      for (const e of events.filter((x) => x !== '[DONE]')) {
        const { error } = JSON.parse(e) as { error?: { code: string; message: string } };
        if (!error) continue;
        expect(error.code).toBe('slo_unattainable');
        out.rejected = error.message;
        out.firstMs = undefined;
      }
      return out;
    };
    return await Promise.all([...Array.from({ length: N_LONG }, () => one(true)), ...Array.from({ length: N_SHORT }, () => one(false))]);
  } finally {
    occupier.abort();
  }
}

/** Seconds to prefill the long and the short prompt alone, by `cost`. */
const alone = (cost: CostModel, tokens: Tokens) => ({ long: prefillSeconds(cost, 0, tokens.long, BUDGET).seconds, short: prefillSeconds(cost, 0, tokens.short, BUDGET).seconds });

/** A TTFT of 4x the whole burst served one prompt after another: all can be on time. */
const relaxedTtftMs = (cost: CostModel, tokens: Tokens) => {
  const t = alone(cost, tokens);
  return 4e3 * (N_SHORT * t.short + N_LONG * t.long);
};

/** The first-token times of the short and of the long prompts. */
const firstTokens = (o: readonly Outcome[]) => ({ shorts: o.filter((x) => !x.long).map((x) => x.firstMs!), longs: o.filter((x) => x.long).map((x) => x.firstMs!) });

const show = (o: readonly Outcome[]) => o.map((x) => `${x.long ? 'long' : 'short'} ${x.firstMs === undefined ? 'rejected' : `${x.firstMs.toFixed(0)} ms`}`).join(', ');

describe('a burst of long and short prompts on a live server (issue 11)', () => {
  const tmp = useTmpDirs('wgserve-slo-burst-');

  /** Starts a server and warms it up: the prompts' lengths, and >= 8 recorded steps (the online fit is in use). */
  async function withServer(policy: 'slo' | 'fcfs', body: (s: ServeProcess, steps: string, tokens: Tokens) => Promise<void>): Promise<void> {
    const steps = join(tmp(), 'steps.jsonl');
    const server = await startServeProcess(['--policy', policy, '--token-budget', String(BUDGET), '--record-steps', steps]);
    try {
      const promptTokens = async (prompt: string, max_tokens: number) => {
        const res = await post(server.url, '/v1/completions', { model: MODEL, prompt, max_tokens, temperature: 0 });
        expect(res.status).toBe(200);
        return ((await res.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens;
      };
      // the long prompt's 4 chunks, then 8 decode steps: two shapes of step for the fits
      const tokens = { long: await promptTokens(LONG_PROMPT, 8), short: await promptTokens(STORIES_PROMPT, 1) };
      expect(tokens.long).toBeGreaterThan(3 * BUDGET);
      await until(() => recorded(steps).length >= 8, 'the warm-up steps to be recorded');
      await body(server, steps, tokens);
    } finally {
      await server.stop();
    }
  }

  /** The burst as the ceilings see it: simultaneous arrivals, each with its SLO. */
  const workload = (tokens: Tokens, ttftMs: number): SimRequest[] =>
    [...Array<number>(N_LONG).fill(tokens.long), ...Array<number>(N_SHORT).fill(tokens.short)].map((inputTokens) => ({ arrival: 0, inputTokens, outputTokens: MAX_TOKENS, slo: { ttftMs } }));

  /**
   * The shortest-first ceiling counts k of the burst servable: the k shortest prompts (its order
   * keeps the most on time, and with one due time those are the shortest). None of them may be
   * rejected: for every prompt length, at least min(k, prompts that short) of the prompts that
   * short were served. Returns k.
   */
  function expectServableServed(outcomes: readonly Outcome[], cost: CostModel, tokens: Tokens, ttftMs: number): number {
    const w = workload(tokens, ttftMs);
    const k = Math.round(sloCeilings(w, cost, BUDGET, (r) => r.slo!).shortestFirst * w.length);
    for (const length of [tokens.short, tokens.long]) {
      const upTo = outcomes.filter((o) => (o.long ? tokens.long : tokens.short) <= length);
      expect(upTo.filter((o) => !o.rejected).length, `${length}-token prompts or shorter served; ceiling: ${k} servable; ${show(outcomes)}`).toBeGreaterThanOrEqual(Math.min(k, upTo.length));
    }
    return k;
  }

  it('slo: the shorts get their first token before any long, and nothing the ceiling counts as servable is rejected', async () => {
    await withServer('slo', async (server, steps, tokens) => {
      const warmFit = fittedFromSteps(steps);
      const n = N_LONG + N_SHORT;

      // 1. A relaxed TTFT (by the warm-up's fit): the shorts first, and nothing rejected
      const relaxed = relaxedTtftMs(warmFit, tokens);
      const a = await burst(server.url, relaxed);
      const fitA = fittedFromSteps(steps);
      expect(expectServableServed(a, fitA, tokens, relaxed)).toBe(n);
      const { shorts, longs } = firstTokens(a);
      expect(Math.max(...shorts), show(a)).toBeLessThan(Math.min(...longs));

      // 2. A TTFT halfway between the shorts and one long, and the shorts and both longs (served
      // alone, one after another, by the fit of the steps so far, which had bursts like this one):
      // the ceiling counts the shorts and one long servable
      const mid = alone(fitA, tokens);
      // Step times here vary up to ~2x between runs and while other test files share the two cores,
      // and the server decides on its own online fit: the TTFT and the ceiling below both assume
      // steps SLOWER times the fitted ones, so a run slower than the fit still counts as servable
      // only what the server can serve (the ceiling's count is the same by construction)
      const tight = SLOWER * 1e3 * (N_SHORT * mid.short + 1.5 * mid.long);
      const b = await burst(server.url, tight);
      const fitB = fittedFromSteps(steps);
      const k = expectServableServed(b, slowed(fitB, SLOWER), tokens, tight);
      expect(k, 'the ceiling (fitted after the burst) counts the shorts and some but not all longs servable').toBeGreaterThan(N_SHORT);
      expect(k).toBeLessThan(n);
      for (const o of b.filter((x) => x.rejected)) {
        // the scheduler's estimate, stated: more than the TTFT left, which is at most the TTFT
        const needed = Number(/needs at least (\d+) ms/.exec(o.rejected!)?.[1]);
        const left = Number(/leaves (\d+) ms/.exec(o.rejected!)?.[1]);
        expect(needed, o.rejected).toBeGreaterThan(left);
        expect(left, o.rejected).toBeLessThanOrEqual(tight);
      }
      for (const o of b.filter((x) => !x.long)) expect(o.firstMs, show(b)).toBeLessThan(tight);

      const fits = [alone(warmFit, tokens), mid, alone(fitB, tokens)].map((f) => `${f.long.toFixed(2)} s and ${f.short.toFixed(3)} s`).join(', ');
      console.log(
        `slo burst: ${tokens.long}- and ${tokens.short}-token prompts prefilled alone in (fits after the warm-up, burst 1, burst 2) ${fits}\n` +
          `  TTFT ${(relaxed / 1e3).toFixed(1)} s, ceiling ${n}/${n}: ${show(a)}\n  TTFT ${(tight / 1e3).toFixed(1)} s, ceiling ${k}/${n}: ${show(b)}\n` +
          b.flatMap((o) => (o.rejected ? [`  rejected: ${o.rejected}`] : [])).join('\n'),
      );
    });
  }, 240_000); // the start-up limit (120 s); all else took ~30 s on the 2-core software device

  it('fcfs: the same burst, a short prompt gets its first token after a long one', async () => {
    await withServer('fcfs', async (server, steps, tokens) => {
      const a = await burst(server.url, relaxedTtftMs(fittedFromSteps(steps), tokens));
      expect(a.every((o) => !o.rejected)).toBe(true);
      const { shorts, longs } = firstTokens(a);
      expect(Math.max(...shorts), show(a)).toBeGreaterThan(Math.min(...longs));
      console.log(`fcfs burst: ${show(a)}`);
    });
  }, 240_000);
});

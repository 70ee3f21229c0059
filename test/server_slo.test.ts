import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Engine } from '../src/engine/engine.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { GpuModel } from '../src/model/gpu_model.ts';
import { openModel } from '../src/model/source.ts';
import type { CostModel } from '../src/scheduler/cost_model.ts';
import { SloScheduler } from '../src/scheduler/slo.ts';
import { startServer, type WgServer } from '../src/server/app.ts';
import { useGpu } from './helpers/gpu.ts';
import { post } from './helpers/http.ts';
import { startServeProcess } from '../bench/serve_process.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const STORIES = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const MODEL = 'stories260K';

/** 20 ms a step whatever it holds: a 1 ms TTFT is hopeless, a minute is easy. */
const flatCost: CostModel = { stepSeconds: () => 0.02, kvTransferSeconds: () => 0, kvCapacityTokens: 1e6, describe: () => 'flat 20 ms' };

/** The value of the first /metrics series whose name starts with `name` and that has all the labels. */
async function series(url: string, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}{`) && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('SLO fields, classes, rejection and attainment metrics (slo policy)', () => {
  const getGpu = useGpu();
  let model: GpuModel;
  let server: WgServer & { url: string };

  beforeAll(async () => {
    const src = await openModel(STORIES);
    model = GpuModel.load(getGpu(), src, { kvMemoryBytes: 4 << 20 });
    const engine = new Engine(model, src.tokenizer, { scheduler: new SloScheduler(flatCost) });
    server = await startServer({
      engine,
      modelId: MODEL,
      port: 0,
      processMetrics: false,
      sloClasses: { interactive: { ttftMs: 60_000, tpotMs: 60_000 }, batch: { deadlineMs: 120_000 } },
    });
  });

  afterAll(async () => {
    await server?.close();
    model?.destroy();
  });

  it('validates the extension fields: wrong types and unknown classes are 400s in OpenAI shape', async () => {
    const cases: [unknown, string, string][] = [
      [{ slo: { ttft_ms: 'fast' } }, 'slo.ttft_ms', 'invalid_type'],
      [{ slo: 500 }, 'slo', 'invalid_type'],
      [{ slo: { tpot_ms: -1 } }, 'slo.tpot_ms', 'invalid_value'],
      [{ slo: { latency: 5 } }, 'slo.latency', 'unknown_parameter'],
      [{ priority: 1.5 }, 'priority', 'invalid_type'],
      [{ slo_class: 7 }, 'slo_class', 'invalid_type'],
      [{ slo_class: 'premium' }, 'slo_class', 'invalid_value'],
    ];
    for (const [extra, param, code] of cases) {
      const res = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 1, ...(extra as object) });
      expect(res.status, JSON.stringify(extra)).toBe(400);
      const body = (await res.json()) as { error: { type: string; param: string; code: string; message: string } };
      expect(body.error).toMatchObject({ type: 'invalid_request_error', param, code });
    }
  });

  it('serves feasible SLO requests, rejects hopeless ones (429 slo_unattainable; an error event in a stream), and counts attainment', async () => {
    const ok = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 3, temperature: 0, slo_class: 'interactive', priority: 2 });
    expect(ok.status).toBe(200);
    const okBody = (await ok.json()) as { usage: { completion_tokens: number } };
    const chat = await post(server.url, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0, slo: { deadline_ms: 90_000 } });
    expect(chat.status).toBe(200);

    const rejected = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 3, slo: { ttft_ms: 1 } });
    expect(rejected.status).toBe(429);
    expect(((await rejected.json()) as { error: { code: string; type: string } }).error).toMatchObject({ code: 'slo_unattainable', type: 'rate_limit_error' });

    const stream = await post(server.url, '/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, stream: true, slo_class: 'interactive', slo: { ttft_ms: 1 } });
    expect(stream.status).toBe(200);
    const text = await stream.text();
    expect(text).toContain('"code":"slo_unattainable"');
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);

    // a request without an SLO is not an SLO request
    expect((await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Hi', max_tokens: 1 })).status).toBe(200);

    const url = server.url;
    expect(await series(url, 'wgserve_slo_requests_total', { slo_class: 'interactive', result: 'met', reason: 'none' })).toBe(1);
    expect(await series(url, 'wgserve_slo_requests_total', { slo_class: 'custom', result: 'met', reason: 'none' })).toBe(1);
    expect(await series(url, 'wgserve_slo_requests_total', { slo_class: 'custom', result: 'missed', reason: 'rejected' })).toBe(1);
    expect(await series(url, 'wgserve_slo_requests_total', { slo_class: 'interactive', result: 'missed', reason: 'rejected' })).toBe(1);
    expect(await series(url, 'wgserve_requests_rejected_total', { slo_class: 'interactive' })).toBe(1);
    expect(await series(url, 'wgserve_goodput_requests_total', { slo_class: 'interactive' })).toBe(1);
    expect(await series(url, 'wgserve_goodput_tokens_total', { slo_class: 'interactive' })).toBe(okBody.usage.completion_tokens);
    expect(await series(url, 'wgserve_requests_finished_total', { finish_reason: 'rejected' })).toBe(2);
  });
});

describe('wgserve serve --policy slo: the online step-time fit learns from the real steps', () => {
  const tmp = useTmpDirs('wgserve-slo-');

  it('a TPOT no step can meet is served until 8 steps are measured, and rejected once the fit has learned them', async () => {
    const steps = join(tmp(), 'steps.jsonl');
    const server = await startServeProcess(['--policy', 'slo', '--record-steps', steps, '--kv-memory', String(4 << 20)]);
    try {
      expect(server.output()).toMatch(/scheduler slo, cost model: online step-time fit \(0\/8 steps measured/);
      // 1 us per token: any real step is longer, but the fit predicts 0 s until it has 8 steps
      const tooFast = { model: MODEL, prompt: 'Once upon a time', max_tokens: 4, temperature: 0, slo: { tpot_ms: 0.001 } };
      expect((await post(server.url, '/v1/completions', tooFast)).status).toBe(200);
      // 12 more steps (greedy output of this prompt has no end of text within 24 tokens)
      const learn = await post(server.url, '/v1/completions', { model: MODEL, prompt: 'Once upon a time', max_tokens: 12, temperature: 0 });
      expect(((await learn.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBe(12);
      // each step is recorded right after the fit observes it: 8 records mean the fit has 8 steps
      const recorded = () => (existsSync(steps) ? readFileSync(steps, 'utf8').split('\n').slice(0, -1).map((l) => JSON.parse(l) as { seconds: number; periodSeconds: number }) : []);
      const end = performance.now() + 10_000; // only the write stream's flush is awaited
      while (recorded().length < 8 && performance.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(recorded().length).toBeGreaterThanOrEqual(8);
      for (const r of recorded()) expect(r.seconds > 0 && r.periodSeconds >= r.seconds, JSON.stringify(r)).toBe(true);

      const rejected = await post(server.url, '/v1/completions', tooFast);
      expect(rejected.status, server.output()).toBe(429);
      expect(((await rejected.json()) as { error: { code: string } }).error.code).toBe('slo_unattainable');
      // the learned step times are finite and far below a minute: a relaxed SLO is served
      const relaxed = await post(server.url, '/v1/completions', { ...tooFast, slo: { ttft_ms: 60_000, tpot_ms: 60_000 } });
      expect(relaxed.status).toBe(200);
    } finally {
      await server.stop();
    }
  }, 240_000); // the start-up limit (120 s) and the requests
});

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseMetrics } from '../bench/headwise_serve.ts';
import { simulateCli } from '../src/cli/simulate.ts';
import { PagedKvTables } from '../src/kv/paged_kv.ts';
import { FcfsScheduler } from '../src/scheduler/fcfs.ts';
import { costModelFromJson, type FittedCostModelJson } from '../src/sim/cost/fitted.ts';
import { type HeadwiseLayout, kvTokensOf, prefillPairsOf } from '../src/sim/headwise.ts';
import { headwiseOf, kvCapacityTokens, profileGrid, shapeOf } from '../src/sim/profile.ts';
import { type StepRecord, simulate } from '../src/sim/simulator.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const tmp = useTmpDirs('wgserve-headwise-sim-');

// 4 KV heads, 1 keeping full history, the others sink 4 + recent 28 = a 32-token window
const hw: HeadwiseLayout = { nKvHeads: 4, fullColumns: 1, sink: 4, recent: 28 };

describe('head-wise KV in the capacity and step-time models', () => {
  it("kvTokensOf is the mean over a sequence's head rows of the slots the engine's tables give them", () => {
    for (const layout of [hw, { ...hw, fullColumns: 0 }, { ...hw, fullColumns: 4 }]) {
      const kv = new PagedKvTables({ nLayers: 1, nKvHeads: 4, headDim: 1, blockSize: 8, bytesPerElement: 1 }, 4096, layout);
      let tokens = 0;
      for (const n of [1, 3, 27, 1, 1, 40, 200, 700]) {
        kv.append(7, n);
        tokens += n;
        const held = [0, 1, 2, 3].map((h) => kv.length(7, h));
        expect(kvTokensOf(tokens, layout)).toBe(held.reduce((s, x) => s + x, 0) / 4);
      }
    }
    expect(kvTokensOf(1000, undefined)).toBe(1000);
  });

  it('prefill pairs: the causal square whole for full heads, at most the window per query for rings', () => {
    // no pattern, or every head full: BatchShape's own count, chunk x (context before + chunk)
    expect(prefillPairsOf(64, 1000, undefined)).toBe(64 * 1064);
    expect(prefillPairsOf(64, 1000, { ...hw, fullColumns: 4 })).toBe(64 * 1064);
    // 1 full head of 64 x 1064 pairs and 3 rings of 64 x 32, over 4 heads
    expect(prefillPairsOf(64, 1000, hw)).toBe((64 * 1064 + 3 * 64 * 32) / 4);
    // a chunk within the window: every head sees the whole context
    expect(prefillPairsOf(10, 5, hw)).toBe(10 * 15);
  });

  it('the simulator charges attention by what the rings read, and hands over only the rows they keep', () => {
    // a toy cost that charges only attention, so step times are the attention terms exactly
    const cost = {
      kvCapacityTokens: 8192,
      stepSeconds: (b: { prefillAttention: number; decodeContext: number }) => 1e-3 + 1e-9 * b.prefillAttention + 1e-6 * b.decodeContext,
      kvTransferSeconds: (tokens: number) => tokens * 1e-6,
      describe: () => 'attention only',
    };
    const run = (headwise?: HeadwiseLayout) => {
      const steps: StepRecord[] = [];
      const moved: number[] = [];
      simulate([{ arrival: 0, inputTokens: 1000, outputTokens: 20 }], {
        cost,
        scheduler: () => new FcfsScheduler(),
        placement: { kind: 'disaggregated', prefill: 1, decode: 1 },
        limits: { tokenBudget: 2048, maxBatch: 8 },
        headwise,
        kvTransferSeconds: (tokens) => (moved.push(tokens), tokens * 1e-6),
        onStep: (s) => steps.push(s),
      });
      return { steps, moved };
    };
    const full = run();
    const ring = run(hw);
    const prefill = (r: typeof full) => r.steps.filter((s) => s.shape.prefillTokens > 0).map((s) => s.shape.prefillAttention);
    expect(prefill(full)).toEqual([1000 * 1000]);
    // the full head's 1000 x 1000 and three 1000 x 32 rings, over 4 heads
    expect(prefill(ring)).toEqual([(1000 * 1000 + 3 * 1000 * 32) / 4]);
    const decode = (r: typeof full) => r.steps.filter((s) => s.shape.decodeSeqs > 0).map((s) => s.shape.decodeContext);
    expect(decode(full)).toHaveLength(19);
    // decode of the token at position c reads c + 1 tokens in full; with rings, the full head's c + 1 and 32 per ring
    expect(decode(ring)).toEqual(decode(full).map((c) => (c + 3 * 32) / 4));
    expect(full.moved).toEqual([1000]);
    expect(ring.moved).toEqual([(1000 + 3 * 32) / 4]);
  });

  it('profile: shapes count what the rings read; the grid fits the pool in tokens of the full cache; the layout and capacity come from the tables', () => {
    const c = { decode: { seqs: 8, context: 400 }, prefill: [{ tokens: 64, offset: 128 }] };
    expect(shapeOf(c)).toEqual({ prefillTokens: 64, prefillAttention: 64 * 192, decodeSeqs: 8, decodeContext: 8 * 400 });
    expect(shapeOf(c, hw)).toEqual({ prefillTokens: 64, prefillAttention: (64 * 192 + 3 * 64 * 32) / 4, decodeSeqs: 8, decodeContext: (8 * (400 + 3 * 32)) / 4 });
    // a pool of 1024 tokens of the full cache: 8 sequences of 384 do not fit in full, with rings they take 8 x 112 (rounded up to blocks)
    const grid = (headwise?: HeadwiseLayout) => profileGrid({ quick: false, contextLength: 512, capacityTokens: 1024, tokenBudget: 512, blockSize: 16, headwise });
    const has = (g: ReturnType<typeof grid>, seqs: number, context: number) => g.some((x) => x.decode.seqs === seqs && x.decode.context === context && x.prefill.length === 0);
    expect(has(grid(), 8, 384)).toBe(false);
    expect(has(grid(hw), 8, 384)).toBe(true);
    const layout = { nLayers: 2, nKvHeads: 4, headDim: 8, blockSize: 16, bytesPerElement: 4 };
    const model = (headwise?: HeadwiseLayout) => ({ kv: new PagedKvTables(layout, 1000, headwise), config: { nKvHeads: 4 }, blockSize: 16 }) as Parameters<typeof kvCapacityTokens>[0];
    expect(headwiseOf(model())).toBeUndefined();
    expect(headwiseOf(model(hw))).toEqual(hw);
    // 1000 blocks are 250 per head row, 4000 tokens of the full cache, pattern or not (the rings' saving is the simulator's to count)
    expect(kvCapacityTokens(model())).toBe(250 * 16);
    expect(kvCapacityTokens(model(hw))).toBe(250 * 16);
  });

  it("a profile's layout travels in its JSON: checked on load, and simulate takes it unless --retrieval-fraction says otherwise", async () => {
    const dir = tmp();
    const json: FittedCostModelJson = {
      kind: 'fitted',
      coefficients: { base: 1e-3, prefillTokens: 1e-5, prefillAttention: 1e-9, decodeSeqs: 1e-4, decodeContext: 1e-6 },
      kvCapacityTokens: 40_000,
      kvTransferBytesPerSecond: 1e9,
      kvBytesPerToken: 1024,
      device: 'toy',
      model: 'toy',
      fittedAt: '2026-01-01T00:00:00Z',
      samples: [],
    };
    expect(() => costModelFromJson({ ...json, headwise: { ...hw, fullColumns: 5 } }, 'x.json')).toThrow(/x\.json: headwise must be/);
    expect(() => costModelFromJson({ ...json, headwise: { ...hw, recent: 0 } }, 'x.json')).toThrow(/headwise must be/);
    const sim = async (file: string, extra: { retrievalFraction?: number } = {}) => {
      const lines: string[] = [];
      const out = join(dir, `${Math.random()}.json`);
      await simulateCli({
        synthetic: 'poisson', rate: 50, inputLen: '2000', outputLen: '200', requests: 60, costModel: file, hardware: 'h100', modelShape: 'llama-3-8b', policy: ['fcfs'],
        sweep: false, plan: false, tokenBudget: 2048, maxBatch: 128, blockSize: 16, maxTokens: 256, maxWaiting: 1024, target: 0.9, seed: 1, json: out, print: (l) => lines.push(l), ...extra,
      });
      return { lines, row: (JSON.parse(readFileSync(out, 'utf8')) as Record<string, number>[])[0] };
    };
    writeFileSync(join(dir, 'full.json'), JSON.stringify(json));
    writeFileSync(join(dir, 'hw.json'), JSON.stringify({ ...json, headwise: hw }));
    const full = await sim(join(dir, 'full.json'));
    const ring = await sim(join(dir, 'hw.json'));
    const asked = await sim(join(dir, 'hw.json'), { retrievalFraction: 1 });
    expect(full.lines.some((l) => l.startsWith('head-wise KV'))).toBe(false);
    expect(ring.lines).toContain('head-wise KV: 1 of 4 KV heads keep full history, the others sink 4 + recent 28');
    // --retrieval-fraction 1 with the profile's 4 KV heads: every head full, the run without a pattern
    expect(asked.lines).toContain('head-wise KV: 4 of 4 KV heads keep full history, the others sink 64 + recent 256');
    expect(asked.row.tpot_p50).toBe(full.row.tpot_p50);
    // 10,000 blocks of 16 hold 18 sequences of 2200 tokens in full (4 x 138 blocks) and 69 with rings
    // (138 + 3 x 2): batches four times larger, of decodes that read a quarter as much
    expect(ring.row.tpot_p50).not.toBe(full.row.tpot_p50);
  });

  it('parseMetrics reads Prometheus text series by series', () => {
    const m = parseMetrics('# HELP x y\n# TYPE x gauge\nwgserve_requests_running 3\nwgserve_kv_bytes{kind="retrieval"} 1024\nwgserve_step_sequences_sum 7.5\n');
    expect([...m]).toEqual([['wgserve_requests_running', 3], ['wgserve_kv_bytes{kind="retrieval"}', 1024], ['wgserve_step_sequences_sum', 7.5]]);
  });
});

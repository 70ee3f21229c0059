import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { calibrateHeadsCli } from '../src/cli/calibrate_heads.ts';
import { copySamples, scoreHeads, type CopySample } from '../src/kv/calibrate_heads.ts';
import { cpuWeightsOf } from '../src/model/cpu_weights.ts';
import { loadHeadPattern } from '../src/kv/head_pattern.ts';
import { cpuForward } from '../src/model/cpu_reference.ts';
import { DEFAULT_MODEL } from '../src/model/default_model.ts';
import { openModel, type ModelSource } from '../src/model/source.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const tmp = useTmpDirs('calibrate-heads-');

describe('copy prompts and scores', () => {
  const tokens = Array.from({ length: 50 }, (_, i) => 100 + i);

  it('are seeded: the same seed gives the same prompts; the end copies a needle of distinct tokens', () => {
    const o = { seed: 7, samples: 3, length: 40, needle: 6 };
    const a = copySamples(o, tokens, 1);
    expect(copySamples(o, tokens, 1)).toEqual(a);
    expect(copySamples({ ...o, seed: 8 }, tokens, 1)).not.toEqual(a);
    for (const s of a) {
      expect(s.tokens.length).toBe(40);
      expect(s.tokens[0]).toBe(1);
      expect(s.steps.length).toBe(5);
      const needle = s.tokens.slice(-6);
      expect(new Set(needle).size).toBe(6);
      for (const { query, source } of s.steps) {
        expect(s.tokens[query + 1]).toBe(s.tokens[source]); // the next token is the one at the source
        expect(source).toBeLessThan(34);
      }
    }
    expect(() => copySamples({ ...o, length: 12 }, tokens, 1)).toThrow(/cannot hold/);
  });

  it('count a head when its most attended key is the source of the copied token; a KV head scores its best query head', () => {
    const samples: CopySample[] = [
      { tokens: [1, 5, 6, 7, 5, 6], steps: [{ query: 4, source: 2 }] },
      { tokens: [1, 8, 9, 3, 8, 9, 3], steps: [{ query: 4, source: 2 }, { query: 5, source: 3 }] },
    ];
    const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2 };
    const seen: number[] = [];
    const scores = scoreHeads(
      samples,
      (toks, on) => {
        for (let l = 0; l < 2; l++) {
          for (let h = 0; h < 4; h++) {
            for (let t = 0; t < toks.length; t++) {
              const probs = new Float64Array(t + 1).fill(0.01);
              // layer 1 head 3 copies in every step; layer 0 head 0 only in the first sample; the others attend to BOS
              const copies = (l === 1 && h === 3) || (l === 0 && h === 0 && toks.length === 6);
              const source = samples.find((s) => s.tokens === toks)!.steps.find((s) => s.query === t)?.source;
              probs[copies && source !== undefined ? source : 0] = 0.9;
              on(l, h, t, probs);
            }
          }
        }
      },
      shape,
      (done) => seen.push(done),
    );
    expect(seen).toEqual([1, 2]);
    expect(scores.steps).toBe(3);
    expect(scores.query).toEqual([
      [1 / 3, 0, 0, 0],
      [0, 0, 0, 1],
    ]);
    expect(scores.kv).toEqual([
      [1 / 3, 0],
      [0, 1],
    ]);
    expect(scores.mass[1][3]).toBeCloseTo(0.9, 12);
  });
});

describe('calibration on the embedded model', () => {
  let src: ModelSource;
  beforeAll(async () => {
    src = await openModel(DEFAULT_MODEL);
  });

  it("observing attention changes no logit, and every observation is a query's distribution over keys 0..position", () => {
    const tokens = src.tokenizer.encode('Once upon a time, there was');
    const w = cpuWeightsOf(src);
    const plain = cpuForward(src.config, w, tokens);
    let calls = 0;
    const observed = cpuForward(src.config, w, tokens, {
      onAttention: (_l, _h, t, probs) => {
        calls++;
        expect(probs.length).toBe(t + 1);
        // a softmax sums to 1 up to float64 rounding over t + 1 terms
        expect(Math.abs(probs.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-12);
      },
    });
    expect(observed).toEqual(plain);
    expect(calls).toBe(src.config.nLayers * src.config.nHeads * tokens.length);
  });

  it('writes a pattern file the loader reads back, reproducibly for a seed, with a heat map', async () => {
    const dir = tmp();
    const o = { seed: 3, samples: 2, length: 48, needle: 8 };
    const out = join(dir, 'p.tsv');
    const scores = await calibrateHeadsCli({ ...o, out });
    const first = readFileSync(out, 'utf8');
    await calibrateHeadsCli({ ...o, out, report: join(dir, 'heat.svg') });
    expect(readFileSync(out, 'utf8')).toBe(first);
    expect(readFileSync(join(dir, 'p.svg'), 'utf8')).toMatch(/^<svg/);
    expect(readFileSync(join(dir, 'heat.svg'), 'utf8')).toMatch(/^<svg/);
    const p = loadHeadPattern(out, src.config, { retrievalFraction: 0.5 });
    // gates are written with 6 significant digits
    p.gates.forEach((row, l) => row.forEach((g, h) => expect(Math.abs(g - scores.kv[l][h])).toBeLessThanOrEqual(5e-6 * Math.max(g, 1e-6))));
    expect(scores.steps).toBe(2 * 7);
  });
});

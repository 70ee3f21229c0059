import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { benchShapes } from '../bench/shapes.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { MODEL_SHAPES } from '../src/model/shapes.ts';
import { syntheticShape } from '../src/model/synthetic.ts';
import type { BatchShape } from '../src/scheduler/cost_model.ts';
import { HARDWARE, analyticalCostModel, modelWeights } from '../src/sim/cost/analytical.ts';
import { FittedCostModel, type FittedCoefficients, type FittedCostModelJson, type StepSample, TERMS, fitCostModel, loadCostModel, nnls } from '../src/sim/cost/fitted.ts';
import { profileGrid, shapeOf } from '../src/sim/profile.ts';
import { mulberry32 } from '../src/util/rng.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const tmp = useTmpDirs('wgserve-cost-');
const decode = (seqs: number, context: number): BatchShape => ({ prefillTokens: 0, prefillAttention: 0, decodeSeqs: seqs, decodeContext: seqs * context });
const prefill = (tokens: number, offset = 0): BatchShape => ({ prefillTokens: tokens, prefillAttention: tokens * (offset + tokens), decodeSeqs: 0, decodeContext: 0 });

describe('model shapes in the runtime layer', () => {
  it('bench re-exports them and reduced shapes agree with synthetic models', () => {
    const reduced = benchShapes('reduced');
    expect(reduced[0]).toBe(MODEL_SHAPES['stories260k']);
    expect(syntheticShape('llama-3-8b', 'reduced')).toEqual(reduced.find((s) => s.name.startsWith('Llama-3-8B/')));
    expect(syntheticShape('stories260k', 'reduced')).toBe(MODEL_SHAPES['stories260k']);
  });
});

describe('NNLS fit', () => {
  it('solves a small problem whose unconstrained optimum is negative', () => {
    // min (x1-1)^2 + (x2+1)^2 + (x1+x2)^2 with x >= 0: x2 = 0, x1 = 1/2
    const x = nnls([[1, 0], [0, 1], [1, 1]], [1, -1, 0]);
    expect(x[0]).toBeCloseTo(0.5, 9);
    expect(x[1]).toBe(0);
  });

  it('recovers known coefficients from noisy samples (2% multiplicative noise)', () => {
    const truth: FittedCoefficients = { base: 4e-3, prefillTokens: 6e-5, prefillAttention: 2e-9, decodeSeqs: 1.5e-4, decodeContext: 3e-8 };
    // the step times, written out term by term rather than with the code under test (predict)
    const seconds = (b: BatchShape) => 4e-3 + 6e-5 * b.prefillTokens + 2e-9 * b.prefillAttention + 1.5e-4 * b.decodeSeqs + 3e-8 * b.decodeContext;
    const rand = mulberry32(7);
    const samples: StepSample[] = [];
    const shapes: BatchShape[] = [];
    for (const t of [16, 64, 256, 1024, 2048]) for (const off of [0, 512, 2048]) shapes.push(prefill(t, off));
    for (const b of [1, 4, 16, 64]) for (const c of [128, 1024, 4096]) shapes.push(decode(b, c));
    for (const b of [4, 32]) shapes.push({ ...decode(b, 512), prefillTokens: 256, prefillAttention: 256 * 768 });
    for (const shape of shapes) samples.push({ shape, seconds: seconds(shape) * (1 + 0.02 * (2 * rand() - 1)) });
    const fit = fitCostModel(samples);
    // Relative errors measured with this seed: base 0.25%, prefillTokens 0.24%, prefillAttention 8.0%,
    // decodeSeqs 1.1%, decodeContext 0.33%; over seeds 1-10 at most 0.73%, 1.6%, 23%, 2.4%, 5.3%.
    // Attention pairs are at most ~12% of any step's time here, so the noise moves their coefficient most.
    const bound: FittedCoefficients = { base: 0.01, prefillTokens: 0.02, prefillAttention: 0.3, decodeSeqs: 0.03, decodeContext: 0.08 };
    for (const t of TERMS) expect(Math.abs(fit.coefficients[t] / truth[t] - 1), t).toBeLessThan(bound[t]);
    // uniform +-2% noise has a mean |error| of 1%: the truth itself scores ~1%; measured 0.89% (0.78-1.09% over seeds 1-10)
    expect(fit.meanRelativeError).toBeLessThan(0.02);
    expect(fit.r2).toBeGreaterThan(0.999); // measured 0.99989 (>= 0.99974 over seeds 1-10)
  });

  it('keeps a coefficient at zero where least squares would make it negative', () => {
    const rand = mulberry32(3);
    const samples = [16, 32, 64, 128, 256].flatMap((t) =>
      [1, 2, 8].map((b) => {
        const shape = { ...decode(b, 100), prefillTokens: t, prefillAttention: t * t };
        // no decode cost at all, noise only: unconstrained c3/c4 would come out of either sign
        return { shape, seconds: (1e-3 + 1e-5 * t) * (1 + 0.05 * (2 * rand() - 1)) };
      }),
    );
    const fit = fitCostModel(samples);
    // unconstrained least squares gives -1.6e-7 s per decoding sequence here (numpy lstsq)
    expect(fit.coefficients.decodeSeqs).toBe(0);
    expect(fit.coefficients.decodeContext).toBe(0);
    for (const t of TERMS) expect(fit.coefficients[t]).toBeGreaterThanOrEqual(0);
    // uniform +-5% noise has a mean |error| of 2.5%; measured 1.9% (1.9-2.2% over seeds 1-4)
    expect(fit.meanRelativeError).toBeLessThan(0.05);
  });
});

describe('analytical roofline', () => {
  const h100 = analyticalCostModel('h100', 'llama-3-8b');

  it('Llama-3-8B at f16 has ~8.0 B parameters, ~15 GB read per step', () => {
    const w = modelWeights(MODEL_SHAPES['llama-3-8b']);
    expect(w.totalParams).toBeGreaterThan(7.9e9);
    expect(w.totalParams).toBeLessThan(8.1e9);
    expect(h100.weightBytesTotal / 1e9).toBeCloseTo(16.06, 1);
  });

  it('decode of batch 1 on an H100 is memory-bound at ~ weights / (0.7 x 3.35 TB/s) + overhead', () => {
    const e = h100.estimate(decode(1, 1024));
    expect(e.linear[0]).toBeGreaterThan(10 * e.linear[1]); // memory time >> compute time
    expect(e.decodeAttention[0]).toBeGreaterThan(e.decodeAttention[1]);
    expect(e.seconds).toBeGreaterThan(6e-3);
    expect(e.seconds).toBeLessThan(9e-3);
    // even batch 64 stays memory-bound on the linear layers (ridge point ~ 0.5*989e12 / (0.7*3.35e12) / 2 x 2 B ~ 210 tokens)
    const b64 = h100.estimate(decode(64, 1024));
    expect(b64.linear[0]).toBeGreaterThan(b64.linear[1]);
  });

  it('long prefill is compute-bound: 2048 tokens ~ 2 x 7.5e9 x 2048 FLOP / (0.5 x 989 TFLOP/s) ~ 65 ms', () => {
    const e = h100.estimate(prefill(2048));
    expect(e.linear[1]).toBeGreaterThan(5 * e.linear[0]);
    expect(e.prefillAttention[1]).toBeGreaterThan(e.prefillAttention[0]);
    expect(e.seconds).toBeGreaterThan(0.05);
    expect(e.seconds).toBeLessThan(0.09);
  });

  it('is monotonic in batch size, context and prompt length', () => {
    for (const model of [h100, analyticalCostModel('l4', 'llama-3.2-1b'), analyticalCostModel('rtx4090', 'qwen2.5-7b', { weightBytes: 18 / 32 })]) {
      let last = 0;
      for (const b of [1, 2, 4, 8, 16, 32, 64, 128, 256]) {
        const t = model.stepSeconds(decode(b, 1024));
        expect(t).toBeGreaterThan(last);
        last = t;
      }
      last = 0;
      for (const c of [0, 128, 1024, 8192, 32768]) {
        const t = model.stepSeconds(decode(8, c));
        expect(t).toBeGreaterThan(last);
        last = t;
      }
      last = 0;
      for (const t of [1, 16, 128, 1024, 4096, 16384]) {
        const s = model.stepSeconds(prefill(t));
        expect(s).toBeGreaterThan(last);
        last = s;
      }
    }
  });

  it('KV capacity from memory minus weights, transfer time from the link bandwidth', () => {
    // 80 GB x 0.9 - 16.06 GB of weights, 32 layers x 2 x 8 heads x 128 x 2 B = 128 KiB per token
    expect(h100.kvBytesPerToken).toBe(131072);
    expect(h100.kvCapacityTokens).toBeGreaterThan(4.2e5);
    expect(h100.kvCapacityTokens).toBeLessThan(4.35e5);
    const r4090 = analyticalCostModel(HARDWARE.rtx4090, MODEL_SHAPES['llama-3-8b']);
    expect(r4090.kvCapacityTokens).toBeGreaterThan(3.5e4);
    expect(r4090.kvCapacityTokens).toBeLessThan(5e4);
    expect(h100.kvTransferSeconds(1000)).toBeCloseTo(5.24288e-3, 12); // 1000 tokens x 128 KiB = 131.072 MB over the default 25 GB/s link
    expect(analyticalCostModel('h100', 'llama-3-8b', { tensorParallel: 2 }).stepSeconds(decode(1, 1024))).toBeLessThan(h100.stepSeconds(decode(1, 1024)));
    expect(() => analyticalCostModel('tpu', 'llama-3-8b')).toThrow(/unknown hardware/);
  });
});

describe('cost model files', () => {
  it('a fitted model and an analytical preset round-trip through JSON', () => {
    const dir = tmp();
    const json: FittedCostModelJson = {
      kind: 'fitted',
      coefficients: { base: 1e-3, prefillTokens: 2e-5, prefillAttention: 1e-9, decodeSeqs: 1e-4, decodeContext: 2e-8 },
      kvCapacityTokens: 50000,
      kvTransferBytesPerSecond: 25e9,
      kvBytesPerToken: 1280,
      device: 'test',
      model: 'test',
      fittedAt: new Date(0).toISOString(),
      r2: 0.99,
      meanRelativeError: 0.01,
      samples: [{ shape: decode(1, 10), seconds: 1.1e-3 }],
    };
    new FittedCostModel(json).save(join(dir, 'fitted.json'));
    const loaded = loadCostModel(join(dir, 'fitted.json'));
    const b = { ...decode(4, 300), prefillTokens: 64, prefillAttention: 64 * 128 };
    // 1 ms + 64 x 20 us + 8192 pairs x 1 ns + 4 x 100 us + 1200 x 20 ns = 2.712192 ms (f64 rounding ~1e-18)
    expect(loaded.stepSeconds(b)).toBeCloseTo(2.712192e-3, 15);
    expect(loaded.kvCapacityTokens).toBe(50000);
    expect(loaded.kvTransferSeconds(1000)).toBeCloseTo(5.12e-5, 15); // 1000 x 1280 B at 25 GB/s
    expect(JSON.parse(readFileSync(join(dir, 'fitted.json'), 'utf8'))).toEqual(json);

    // Decode of one sequence at context 1024 on the H100 preset is memory-bound (compute: 2 x 7.0e9
    // FLOP / 494.5 TFLOP/s = 28 us): 1 ms + (weights read + 1 token of KV) / 2.345 TB/s (70% of 3.35)
    // + 1024 tokens x 128 KiB of KV / 2.345 TB/s, with 7,504,658,432 weights read (32 layers x
    // 218,103,808 + the 525,336,576-weight output head) at 2 B (bf16) or 18/32 B (q4_0).
    const presetStep = (dtype: string) => {
      writeFileSync(join(dir, `${dtype}.json`), JSON.stringify({ kind: 'analytical', hardware: 'h100', model: 'llama-3-8b', dtype }));
      return loadCostModel(join(dir, `${dtype}.json`));
    };
    const preset = presetStep('bf16');
    expect(preset.stepSeconds(decode(1, 1024))).toBeCloseTo(7.4578532e-3, 9); // 1 + 6.4006175 + 0.0572357 ms (8 digits)
    expect(presetStep('q4_0').stepSeconds(decode(1, 1024))).toBeCloseTo(2.8574495e-3, 9); // 1 + 1.8002138 + 0.0572357 ms
    expect(preset.describe()).toMatch(/H100.*Llama-3-8B|Llama-3-8B.*H100/);

    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ kind: 'fitted', coefficients: { base: -1 } }));
    expect(() => loadCostModel(join(dir, 'bad.json'))).toThrow(/coefficients\.base/);
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ kind: 'analytical', hardware: 'h100', model: 'llama-3-8b', dtype: 'int3' }));
    expect(() => loadCostModel(join(dir, 'bad.json'))).toThrow(/unknown dtype/);
    writeFileSync(join(dir, 'bad.json'), '{"kind":"other"}');
    expect(() => loadCostModel(join(dir, 'bad.json'))).toThrow(/"kind"/);
  });
});

describe('wgserve profile', () => {
  it('the grid has prefill, decode and mixed steps, within the context, KV pool and token budget', () => {
    for (const quick of [true, false]) {
      const grid = profileGrid({ quick, contextLength: 512, capacityTokens: 4096, tokenBudget: 256, blockSize: 16 });
      const shapes = grid.map((c) => shapeOf(c));
      expect(shapes.some((b) => b.prefillTokens > 0 && b.decodeSeqs === 0)).toBe(true);
      expect(shapes.some((b) => b.decodeSeqs > 0 && b.prefillTokens === 0)).toBe(true);
      expect(shapes.some((b) => b.decodeSeqs > 0 && b.prefillTokens > 0)).toBe(true);
      expect(new Set(shapes.map((b) => b.decodeSeqs)).size).toBeGreaterThan(1);
      for (const c of grid) {
        expect(c.prefill.reduce((n, p) => n + p.tokens, 0) + c.decode.seqs).toBeLessThanOrEqual(256);
        for (const p of c.prefill) expect(p.offset + p.tokens).toBeLessThanOrEqual(512);
        const kv = c.decode.seqs * Math.ceil((c.decode.context + 1) / 16) * 16 + c.prefill.reduce((n, p) => n + Math.ceil((p.offset + p.tokens) / 16) * 16, 0);
        expect(kv).toBeLessThanOrEqual(4096);
      }
    }
  });

  it('--quick on the embedded model: real steps timed, fitted and written as a loadable cost model', async () => {
    const out = join(tmp(), 'stories.cost.json');
    // one timed run per shape: the measured times are not judged here (they depend on the machine's load)
    const { stdout } = await promisify(execFile)('node', [join(repoRoot, 'bin', 'wgserve.mjs'), 'profile', '--quick', '--repeats', '1', '--out', out], { cwd: repoRoot });
    expect(stdout).toMatch(/c0 base/);
    expect(stdout).toMatch(/R2 /);
    const json = JSON.parse(readFileSync(out, 'utf8')) as FittedCostModelJson;
    expect(json.kind).toBe('fitted');
    expect(json.samples.length).toBeGreaterThanOrEqual(8);
    expect(json.samples.some((s) => s.shape.prefillTokens > 0 && s.shape.decodeSeqs > 0)).toBe(true); // mixed steps
    expect(json.kvCapacityTokens).toBeGreaterThan(0);
    const model = loadCostModel(out);
    const rel = json.samples.reduce((s, p) => s + Math.abs(model.stepSeconds(p.shape) - p.seconds) / p.seconds, 0) / json.samples.length;
    expect(rel).toBeCloseTo(json.meanRelativeError!, 9);
    // Whatever the measured times, the coefficients must minimise the summed squared relative error
    // over c >= 0 (the profile's fit). At that minimum (the KKT conditions) the error's gradient along
    // each term's column is 0 where c > 0 and >= 0 where c = 0. As cosines between the column and the
    // residuals: measured |cos| <= 2e-14; scaling the base alone by 1.01 makes its cosine 9e-3.
    const features = (b: BatchShape) => [1, b.prefillTokens, b.prefillAttention, b.decodeSeqs, b.decodeContext];
    const residual = json.samples.map((p) => model.stepSeconds(p.shape) / p.seconds - 1);
    TERMS.forEach((t, k) => {
      const column = json.samples.map((p) => features(p.shape)[k] / p.seconds);
      if (column.every((v) => v === 0)) return;
      const cos = column.reduce((s, v, i) => s + v * residual[i], 0) / Math.hypot(...column) / Math.hypot(...residual);
      if (json.coefficients[t] > 0) expect(Math.abs(cos), t).toBeLessThan(1e-6);
      else expect(cos, t).toBeGreaterThan(-1e-6);
    });
  }, 300_000); // 18 s alone here; the grid is timed once per shape
});

describe('profile --from-steps (a live engine\'s recorded steps)', () => {
  it('fits the recorded loop periods and writes a loadable cost model', async () => {
    const { profileFromSteps } = await import('../src/cli/profile.ts');
    const { loadCostModel } = await import('../src/sim/cost/fitted.ts');
    const dir = tmp();
    const steps = join(dir, 'steps.jsonl');
    const rand = mulberry32(4);
    const lines: string[] = [];
    for (let i = 0; i < 60; i++) {
      const shape = { prefillTokens: rand() < 0.3 ? Math.floor(rand() * 64) : 0, prefillAttention: 0, decodeSeqs: Math.floor(rand() * 8), decodeContext: 0 };
      // loop period = 30 ms + 10 ms per prompt token + 20 ms per decoding sequence (compute time is ignored)
      const periodSeconds = 0.03 + 0.01 * shape.prefillTokens + 0.02 * shape.decodeSeqs;
      lines.push(JSON.stringify({ shape, seconds: periodSeconds / 2, periodSeconds }));
    }
    writeFileSync(steps, lines.join('\n') + '\n');
    const out = join(dir, 'cost.json');
    const json = await profileFromSteps({ fromSteps: steps, out, dtype: 'f16', scale: 'auto', device: 'cpu', kvMemory: 4 << 20, quick: true, clock: 'auto', linkBandwidth: 25e9 });
    expect(json.clock).toBe('engine');
    expect(json.coefficients.base).toBeCloseTo(0.03, 4);
    expect(json.coefficients.prefillTokens).toBeCloseTo(0.01, 5);
    expect(json.coefficients.decodeSeqs).toBeCloseTo(0.02, 5);
    expect(loadCostModel(out).stepSeconds({ prefillTokens: 10, prefillAttention: 0, decodeSeqs: 2, decodeContext: 0 })).toBeCloseTo(0.17, 4);
  });
});

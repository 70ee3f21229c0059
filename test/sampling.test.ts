import { describe, expect, it } from 'vitest';
import {
  NO_TOKEN,
  type SampleParams,
  type SamplingConfig,
  argmax,
  argmaxRef,
  drawHash,
  drawHashes,
  drawUniform,
  filterRowRef,
  packSampleParams,
  philox4x32,
  philoxBlocks,
  sample,
  sampleRef,
  seedWords,
} from '../kernels/sampling.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Kernel sizes that put 600-column rows through every path: bisection over global memory,
// compaction into workgroup memory (128 candidates), and the tiled draw over global memory when
// more than 128 tokens are kept. `undefined` is the production choice (rows this short then fit
// on chip from the start).
const SMALL: SamplingConfig = { workgroupSize: 64, candidates: 128, tileElems: 2 };
const CONFIGS: [string, SamplingConfig | undefined][] = [
  ['small tiles', SMALL],
  ['default', undefined],
];

// A GPU token may differ from the float64 reference only where the reference's outcome lies within
// EPS of a decision boundary (sampleRef's `margin`, in units of the kept mass: the distance of u
// from a CDF step, or of a top-p cumulative mass from topP). The GPU's CDF is made of f32 weights
// exp((l - M) / T), each within (3 + 2|x|) ULP (WGSL's exp bound, x = (l - M) / T; tokens that
// carry mass have |x| < 20, so < 45 ULP = 2.7e-6 relative), summed in f32 sequentially per
// invocation and then over a log2(WG)-deep tree: at worst (cols / WG + log2 WG) ULP, 16 ULP = 1e-6
// for the 600-column rows, 83 ULP = 5e-6 for the 19k-column rows (typical errors are far smaller).
// EPS = 1e-5 is above the sum of both bounds. A draw lands that close to a boundary with
// probability <= 2 * EPS * (tokens kept); such draws are counted, never skipped, and asserted to be
// no more frequent than that (compareWithRef).
const EPS = 1e-5;
// Probabilities reported for the chosen token: one f32 weight over one f32 sum, errors as above.
const PROB_TOL = { atol: 1e-9, rtol: 2e-5 };

const NEG_INF = -Infinity;

interface Run {
  tokens: Uint32Array;
  probs: Float32Array;
}

async function runSample(gpu: Gpu, logits: Float32Array, params: SampleParams[], cols: number, config?: SamplingConfig): Promise<Run> {
  const rows = params.length;
  const lb = gpu.upload(logits);
  const pb = gpu.upload(packSampleParams(params));
  const ob = gpu.createBuffer(rows * 4);
  const prb = gpu.createBuffer(rows * 4);
  const step = gpu.step();
  sample(step, { logits: lb, params: pb, out: ob, outProbs: prb, rows, cols, config });
  await step.submit();
  const run = { tokens: await gpu.readU32(ob, rows), probs: await gpu.readF32(prb, rows) };
  for (const b of [lb, pb, ob, prb]) b.destroy();
  return run;
}

async function runArgmax(gpu: Gpu, logits: Float32Array, rows: number, cols: number, config?: SamplingConfig): Promise<Uint32Array> {
  const lb = gpu.upload(logits);
  const ob = gpu.createBuffer(rows * 4);
  const step = gpu.step();
  argmax(step, { logits: lb, out: ob, rows, cols, config });
  await step.submit();
  const out = await gpu.readU32(ob, rows);
  lb.destroy();
  ob.destroy();
  return out;
}

/**
 * Compares GPU draws with sampleRef row by row. A differing token is accepted only where the
 * reference's outcome is within EPS of a decision boundary, and such draws must be as rare as
 * chance makes them: u lands within EPS of one of the kept tokens' CDF steps with probability at
 * most 2 * EPS * (kept tokens), plus rows whose top-p edge itself is within EPS. Allowed: that
 * expectation plus four standard deviations (Poisson) plus 2.
 */
function compareWithRef(run: Run, logits: Float32Array, params: SampleParams[], cols: number, label: string) {
  const rows = params.length;
  const ref = sampleRef(logits, params, rows, cols);
  let nearBoundary = 0;
  let mismatches = 0;
  let expectedNear = 0;
  const matchedGpu: number[] = [];
  const matchedRef: number[] = [];
  for (let r = 0; r < rows; r++) {
    const f = filterRowRef(logits.subarray(r * cols, (r + 1) * cols), params[r]);
    if (!f.greedy) expectedNear += f.topPMargin < EPS ? 1 : Math.min(1, 2 * EPS * f.kept.filter((i) => f.probs[i] > 0).length);
    const near = ref.margin[r] < EPS;
    if (near) nearBoundary++;
    if (run.tokens[r] !== ref.tokens[r]) {
      mismatches++;
      expect(near, `${label} row ${r}: GPU token ${run.tokens[r]} != reference ${ref.tokens[r]} with margin ${ref.margin[r]} (params ${JSON.stringify(params[r])})`).toBe(true);
      // Even then the token must be one the reference keeps (or sits at the top-p boundary).
      expect(f.kept.includes(run.tokens[r]) || f.topPMargin < EPS, `${label} row ${r}: token outside the kept set`).toBe(true);
    } else {
      matchedGpu.push(run.probs[r]);
      matchedRef.push(ref.probs[r]);
    }
  }
  expectClose(matchedGpu, matchedRef, PROB_TOL, `${label} token probabilities`);
  const allowed = expectedNear + 4 * Math.sqrt(expectedNear) + 2;
  expect(nearBoundary, `${label}: ${nearBoundary} of ${rows} draws within ${EPS} of a boundary (expected ${expectedNear.toFixed(2)})`).toBeLessThanOrEqual(allowed);
  return { nearBoundary, mismatches, expectedNear, rows };
}

describe('sampling', () => {
  const getGpu = useGpu();

  // Random123's known-answer vectors for Philox4x32-10 (kat_vectors, lines "philox4x32 10"):
  // counter (4 words), key (2 words) -> output (4 words).
  const PHILOX_KAT: [number[], number[], number[]][] = [
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
    [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
  ];
  /** Seeds that differ only in their high 32 bits (or only in sign), and the ends of the range. */
  const WIDE_SEEDS = [0, 1, 2 ** 32 + 1, 2 ** 32, -1, 2 ** 32 - 1, -(2 ** 32) + 1, 2 ** 53 - 1, -(2 ** 53 - 1), 0x80000000];

  it('RNG: Philox4x32-10 matches the Random123 known answers, on the CPU and on the GPU', async () => {
    for (const [ctr, key, want] of PHILOX_KAT) expect(philox4x32(ctr, key)).toEqual(want);
    // the GPU on the same vectors, plus random blocks against the CPU mirror
    const gpu = getGpu();
    const next = mulberry32(17);
    const blocks = [...PHILOX_KAT.map(([c, k]) => [...c, ...k]), ...Array.from({ length: 500 }, () => Array.from({ length: 6 }, () => (next() * 2 ** 32) >>> 0))];
    const io = new Uint32Array(blocks.length * 8);
    blocks.forEach((b, i) => io.set(b, i * 8));
    const buf = gpu.upload(io);
    const step = gpu.step();
    philoxBlocks(step, { io: buf, blocks: blocks.length });
    await step.submit();
    const out = await gpu.readU32(buf, io.length);
    buf.destroy();
    blocks.forEach((b, i) => {
      const want = i < PHILOX_KAT.length ? PHILOX_KAT[i][2] : philox4x32(b.slice(0, 4), b.slice(4));
      expect(Array.from(out.subarray(i * 8, i * 8 + 4)), `block ${i}`).toEqual(want);
    });
  });

  it('RNG: the GPU draw equals the TypeScript mirror bit for bit, over the whole 64-bit seed range', async () => {
    const gpu = getGpu();
    const next = mulberry32(99);
    const params: SampleParams[] = [];
    for (const seed of WIDE_SEEDS) for (let c = 0; c < 64; c++) params.push({ temperature: 1, topK: 0, topP: 1, seed, counter: c });
    for (let i = 0; i < 2000; i++) {
      // any safe integer: 21 high bits, 32 low bits, either sign
      const mag = Math.floor(next() * 2 ** 21) * 2 ** 32 + Math.floor(next() * 2 ** 32);
      params.push({ temperature: 1, topK: 0, topP: 1, seed: next() < 0.5 ? -mag : mag, counter: (next() * 2 ** 32) >>> 0 });
    }
    const rows = params.length;
    const pb = gpu.upload(packSampleParams(params));
    const hb = gpu.createBuffer(rows * 4);
    const ub = gpu.createBuffer(rows * 4);
    const step = gpu.step();
    drawHashes(step, { params: pb, outHashes: hb, outUniforms: ub, rows });
    await step.submit();
    const hashes = await gpu.readU32(hb, rows);
    const us = await gpu.readF32(ub, rows);
    for (let r = 0; r < rows; r++) {
      const { seed, counter } = params[r];
      if (hashes[r] !== drawHash(seed, counter)) expect.fail(`row ${r}: GPU hash ${hashes[r]} != ${drawHash(seed, counter)}`);
      if (us[r] !== drawUniform(seed, counter)) expect.fail(`row ${r}: GPU uniform ${us[r]} != ${drawUniform(seed, counter)}`);
    }
    for (const b of [pb, hb, ub]) b.destroy();
    // the seed's words as the kernel reads them: two's complement, low word first
    expect(seedWords(2 ** 32 + 1)).toEqual([1, 1]);
    expect(seedWords(-1)).toEqual([0xffffffff, 0xffffffff]);
    expect(seedWords(-(2 ** 53 - 1))).toEqual([1, 0xffe00000]);
    expect(() => seedWords(2 ** 53)).toThrow(RangeError);
  });

  it('RNG: uniform in [0, 1), and seeds differing only in the high word draw independently', () => {
    // Uniformity over 64 bins of 2^16 consecutive counters: chi-square with 63 degrees of freedom;
    // 120 is beyond its 1e-6 upper quantile (~117), so a fair generator fails with p < 1e-6.
    const n = 1 << 16;
    const chi2 = (bins: Float64Array, expected: number) => bins.reduce((acc, b) => acc + (b - expected) ** 2 / expected, 0);
    for (const seed of [12345, 2 ** 32 + 12345]) {
      const bins = new Float64Array(64);
      for (let c = 0; c < n; c++) {
        const u = drawUniform(seed, c);
        expect(u >= 0 && u < 1).toBe(true);
        bins[Math.floor(u * 64)]++;
      }
      expect(chi2(bins, n / 64), `seed ${seed}`).toBeLessThan(120);
    }
    // Pairs (a, b) of seeds equal in their low 32 bits: the joint histogram of their draws at the
    // same counters over 8 x 8 bins is uniform when b's draws do not follow from a's (chi-square,
    // 63 degrees of freedom, same bound). A generator keyed by the low word alone (the old
    // `seed >>> 0`) puts every pair on the diagonal. Also no counter gives both the same 32 bits.
    for (const [a, b] of [[1, 2 ** 32 + 1], [-1, 2 ** 32 - 1], [0, 2 ** 32], [7, -(2 ** 32) + 7], [2 ** 53 - 1, 2 ** 32 - 1]]) {
      const joint = new Float64Array(64);
      for (let c = 0; c < n; c++) {
        expect(drawHash(a, c) === drawHash(b, c), `seeds ${a} and ${b} at counter ${c}`).toBe(false);
        joint[Math.floor(drawUniform(a, c) * 8) * 8 + Math.floor(drawUniform(b, c) * 8)]++;
      }
      expect(chi2(joint, n / 64), `seeds ${a} and ${b}`).toBeLessThan(120);
    }
  });

  for (const [name, config] of CONFIGS) {
    it(`argmax (${name}): ties -> lowest index, -inf skipped, fully masked -> NO_TOKEN`, async () => {
      const gpu = getGpu();
      for (const [rows, cols] of [
        [1, 1],
        [3, 7],
        [9, 600],
        [2, 5003],
      ]) {
        const x = normalArray(rows * cols, rows * 31 + cols, 3);
        if (rows >= 3) {
          const big = 50;
          x[cols + cols - 1] = big; // row 1: the max at the last index
          x.fill(NEG_INF, 2 * cols, 3 * cols); // row 2: fully masked
        }
        if (rows >= 9) {
          for (const i of [500, 17, 333]) x[3 * cols + i] = 40; // row 3: a three-way tie -> 17
          x.fill(2.5, 4 * cols, 5 * cols); // row 4: all equal -> 0
          x.fill(NEG_INF, 5 * cols, 6 * cols);
          x[5 * cols + 599] = -1e30; // row 5: one finite logit, far below zero
          for (let i = 0; i < cols; i += 2) x[6 * cols + i] = NEG_INF; // row 6: masked max
          x[6 * cols + 10] = 100;
          x[6 * cols + 11] = 99;
          x[6 * cols + 10] = NEG_INF;
          x[7 * cols + 3] = Infinity; // row 7: +inf and NaN are masked too
          x[7 * cols + 4] = NaN;
          x[8 * cols + 0] = -0; // row 8: -0 and +0 tie -> lowest index
          x[8 * cols + 1] = 0;
          for (let i = 2; i < cols; i++) x[8 * cols + i] = -1;
        }
        const got = await runArgmax(gpu, x, rows, cols, config);
        const want = argmaxRef(x, rows, cols);
        expect(Array.from(got), `argmax ${rows}x${cols}`).toEqual(Array.from(want));
        if (rows >= 9) {
          expect(got[1]).toBe(cols - 1);
          expect(got[2]).toBe(NO_TOKEN);
          expect(got[3]).toBe(17);
          expect(got[4]).toBe(0);
          expect(got[5]).toBe(599);
          expect(got[6]).toBe(11);
          expect(got[8]).toBe(0);
        }
      }
    });
  }

  it('temperature <= 0 is argmax, with probability 1', async () => {
    const gpu = getGpu();
    const rows = 6;
    const cols = 700;
    const x = normalArray(rows * cols, 3, 2);
    x[2 * cols + 5] = x[2 * cols + 9] = 30; // a tie
    const params = [0, -1, 0, NaN, -0, 0].map((temperature, i) => ({ temperature, topK: i * 3, topP: 0.5, seed: i, counter: i }));
    for (const [name, config] of CONFIGS) {
      const run = await runSample(gpu, x, params, cols, config);
      expect(Array.from(run.tokens), name).toEqual(Array.from(argmaxRef(x, rows, cols)));
      expect(Array.from(run.probs)).toEqual(new Array(rows).fill(1));
    }
  });

  it('matches sampleRef over many (seed, counter) pairs and settings; top-k / top-p never leave their sets', async () => {
    const gpu = getGpu();
    const cols = 600;
    const settings: Omit<SampleParams, 'seed' | 'counter'>[] = [];
    for (const temperature of [0.7, 1, 1.5]) for (const topK of [0, 1, 5, 40]) for (const topP of [0.5, 0.9, 1]) settings.push({ temperature, topK, topP });
    const perSetting = 10;
    const next = mulberry32(2024);
    const params: SampleParams[] = [];
    // min-p cycles through off, mild and strong across the draws of each setting
    const minPs = [0, 0.05, 0.3];
    for (let d = 0; d < perSetting; d++) for (const s of settings) params.push({ ...s, minP: minPs[d % 3], seed: Math.floor((next() - 0.5) * 2 ** 53), counter: (next() * 1e6) >>> 0 });
    const rows = params.length;
    // Each row its own logits; std 2.5 gives peaked and flat-ish rows at these temperatures.
    const logits = normalArray(rows * cols, 77, 2.5);
    for (const [name, config] of CONFIGS) {
      const run = await runSample(gpu, logits, params, cols, config);
      const { nearBoundary, mismatches } = compareWithRef(run, logits, params, cols, name);
      // Besides the expectation-based bound inside compareWithRef: at most 2% of these draws.
      expect(nearBoundary, `${name}: ${nearBoundary} of ${rows} draws within ${EPS} of a boundary`).toBeLessThanOrEqual(Math.ceil(rows * 0.02));
      expect(mismatches).toBeLessThanOrEqual(nearBoundary);
      // Top-k: the token's logit is at least the k-th largest (exact: thresholds are on the f32 logits).
      // Top-p: the token is in the reference nucleus unless the nucleus edge is within EPS.
      let nucleusEdge = 0;
      for (let r = 0; r < rows; r++) {
        const q = params[r];
        const row = logits.subarray(r * cols, (r + 1) * cols);
        const tok = run.tokens[r];
        expect(tok).toBeLessThan(cols);
        if (q.topK > 0) {
          const kth = [...row].sort((a, b) => b - a)[q.topK - 1];
          expect(row[tok], `row ${r} top-${q.topK}`).toBeGreaterThanOrEqual(kth);
        }
        if (q.topP < 1) {
          const f = filterRowRef(row, q);
          if (f.topPMargin < EPS) nucleusEdge++;
          else expect(f.kept.includes(tok), `row ${r}: token outside the top-p nucleus`).toBe(true);
        }
        if (q.minP) {
          // Min-p from its definition: p(token) >= minP * p(max), i.e. (l - max) / T >= ln(minP),
          // up to the f32 roundings of the kernel's threshold max + T ln(minP) (two half-ULPs of
          // at most |max| + |T ln minP|, i.e. <= 2^-24 of that sum in logit units).
          const max = Math.max(...row);
          const slack = 2 ** -24 * (Math.abs(max) + Math.abs(q.temperature * Math.log(q.minP)));
          expect((row[tok] - max + slack) / q.temperature, `row ${r} min-p ${q.minP}`).toBeGreaterThanOrEqual(Math.log(q.minP));
        }
      }
      expect(nucleusEdge).toBeLessThanOrEqual(Math.ceil(rows * 0.01));
    }
  });

  it('same seed and counter -> same token; different counters -> different draws', async () => {
    const gpu = getGpu();
    const cols = 300;
    const rows = 64;
    const one = normalArray(cols, 8, 0.5); // flat: many tokens likely
    const logits = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) logits.set(one, r * cols);
    const q = { temperature: 1, topK: 0, topP: 1 };
    const same = Array.from({ length: rows }, () => ({ ...q, seed: 42, counter: 7 }));
    const steps = Array.from({ length: rows }, (_, c) => ({ ...q, seed: 42, counter: c }));
    for (const [name, config] of CONFIGS) {
      const a = await runSample(gpu, logits, same, cols, config);
      expect(new Set(a.tokens).size, name).toBe(1);
      const b = await runSample(gpu, logits, steps, cols, config);
      expect(b.tokens[7]).toBe(a.tokens[0]);
      // 64 draws from ~300 near-uniform tokens: far more than 20 distinct (expected ~57).
      expect(new Set(b.tokens).size).toBeGreaterThan(20);
      const c = await runSample(gpu, logits, steps, cols, config);
      expect(Array.from(c.tokens)).toEqual(Array.from(b.tokens)); // deterministic across dispatches
    }
  });

  it('empirical frequencies match the filtered distribution (chi-square, thousands of draws in one dispatch)', async () => {
    const gpu = getGpu();
    const row = Float32Array.from([2.0, 1.5, 1.2, 1.0, 0.5, 0.2, 0.0, -0.5, -1.0, NEG_INF, 1.5, -2.0]);
    const cols = row.length;
    const settings: Omit<SampleParams, 'seed' | 'counter'>[] = [
      { temperature: 1, topK: 0, topP: 1 },
      { temperature: 0.7, topK: 5, topP: 1 }, // 1.5 appears twice: both at ranks 2-3
      { temperature: 1.5, topK: 0, topP: 0.9 },
      { temperature: 1, topK: 6, topP: 0.8 },
      { temperature: 1, topK: 2, topP: 1 }, // the tie at the 2nd value keeps 3 tokens
      { temperature: 1, topK: 0, topP: 1, minP: 0.2 }, // exp(l - 2) >= 0.2: l >= 0.39, 6 tokens
      { temperature: 2, topK: 0, topP: 1, minP: 0.5 }, // exp((l - 2) / 2) >= 0.5: l >= 0.61, 5 tokens
    ];
    const draws = 4000;
    const params: SampleParams[] = [];
    for (const s of settings) for (let c = 0; c < draws; c++) params.push({ ...s, seed: 5, counter: c });
    const logits = new Float32Array(params.length * cols);
    for (let r = 0; r < params.length; r++) logits.set(row, r * cols);
    // 12-token rows: 32 invocations (one NVIDIA warp) are plenty, and a smaller reduction tree.
    const run = await runSample(gpu, logits, params, cols, { workgroupSize: 32, candidates: 32 });
    settings.forEach((s, si) => {
      const f = filterRowRef(row, { ...s, seed: 0, counter: 0 });
      const counts = new Float64Array(cols);
      for (let c = 0; c < draws; c++) counts[run.tokens[si * draws + c]]++;
      let chi2 = 0;
      for (let i = 0; i < cols; i++) {
        if (f.probs[i] === 0) expect(counts[i], `setting ${si}: token ${i} is filtered out`).toBe(0);
        else chi2 += (counts[i] - draws * f.probs[i]) ** 2 / (draws * f.probs[i]);
      }
      // Chi-square with df = kept - 1; critical value at p = 1e-6 by Wilson-Hilferty
      // (z = 4.753): a correct sampler fails with probability below 1e-6 per setting.
      const df = f.kept.length - 1;
      const z = 4.753;
      const crit = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
      expect(chi2, `setting ${si} ${JSON.stringify(s)}: chi2 ${chi2.toFixed(2)} (df ${df})`).toBeLessThan(crit);
    });
    // The tied pair at 1.5 (indices 1 and 10) is kept or dropped together.
    expect(filterRowRef(row, { ...settings[4], seed: 0, counter: 0 }).kept).toEqual([0, 1, 10]);
    // Min-p sets by hand: probability >= minP x the largest.
    expect(filterRowRef(row, { ...settings[5], seed: 0, counter: 0 }).kept).toEqual([0, 1, 2, 3, 4, 10]);
    expect(filterRowRef(row, { ...settings[6], seed: 0, counter: 0 }).kept).toEqual([0, 1, 2, 3, 10]);
  });

  it('a batch of rows with different parameters and edge cases', async () => {
    const gpu = getGpu();
    const cols = 257;
    const base = normalArray(cols, 21, 2);
    const cases: { logits: (r: Float32Array) => void; q: Omit<SampleParams, 'seed' | 'counter'>; check?: (tok: number, prob: number) => void }[] = [
      { logits: (r) => r.fill(NEG_INF), q: { temperature: 1, topK: 0, topP: 1 }, check: (t, p) => (expect(t).toBe(NO_TOKEN), expect(p).toBe(0)) },
      { logits: (r) => (r.fill(NEG_INF), (r[77] = -5)), q: { temperature: 0.8, topK: 10, topP: 0.5 }, check: (t, p) => (expect(t).toBe(77), expect(p).toBe(1)) },
      { logits: () => {}, q: { temperature: 1, topK: 1, topP: 1 }, check: (t) => expect(t).toBe(argmaxRef(base, 1, cols)[0]) },
      { logits: () => {}, q: { temperature: 1, topK: 0, topP: 0 }, check: (t) => expect(t).toBe(argmaxRef(base, 1, cols)[0]) },
      { logits: () => {}, q: { temperature: 1e-30, topK: 0, topP: 1 }, check: (t) => expect(t).toBe(argmaxRef(base, 1, cols)[0]) },
      { logits: (r) => ((r[3] = Infinity), (r[4] = NaN)), q: { temperature: 1, topK: 3, topP: 1 }, check: (t) => expect([3, 4]).not.toContain(t) },
      { logits: (r) => r.fill(1.25), q: { temperature: 2, topK: 0, topP: 0.3 } }, // all tied: nucleus is everything
      { logits: (r) => r.fill(1.25), q: { temperature: 2, topK: 7, topP: 1 } }, // all tied at the k-th: all kept
      { logits: () => {}, q: { temperature: 1e6, topK: 0, topP: 1 } }, // near-uniform
      { logits: (r) => r.forEach((_, i) => (r[i] = i % 2 ? NEG_INF : r[i])), q: { temperature: 0.5, topK: 40, topP: 0.95 } },
      { logits: () => {}, q: { temperature: 0, topK: 0, topP: 1 }, check: (t, p) => (expect(t).toBe(argmaxRef(base, 1, cols)[0]), expect(p).toBe(1)) },
      { logits: () => {}, q: { temperature: 1.5, topK: 300, topP: 0.99 } },
      // min-p 1: only the tie group of the maximum (three tokens at 9)
      { logits: (r) => ((r[5] = 9), (r[200] = 9), (r[256] = 9)), q: { temperature: 1, topK: 0, topP: 1, minP: 1 }, check: (t, p) => (expect([5, 200, 256]).toContain(t), expect(p).toBeCloseTo(1 / 3, 6)) }, // f32 1/3: 1e-8 off
      { logits: () => {}, q: { temperature: 0.9, topK: 0, topP: 1, minP: 1e-300 } }, // a cut below every logit: nothing removed
      { logits: (r) => r.fill(-3e38), q: { temperature: 2, topK: 0, topP: 1, minP: 0.1 } }, // max + offset near -FLT_MAX stays finite
      { logits: () => {}, q: { temperature: 0, topK: 0, topP: 1, minP: 0.5 }, check: (t) => expect(t).toBe(argmaxRef(base, 1, cols)[0]) }, // greedy ignores min-p
    ];
    const reps = 8;
    const params: SampleParams[] = [];
    const logits = new Float32Array(cases.length * reps * cols);
    for (let rep = 0; rep < reps; rep++) {
      cases.forEach((cs, ci) => {
        const r = rep * cases.length + ci;
        const row = logits.subarray(r * cols, (r + 1) * cols);
        row.set(base);
        cs.logits(row);
        params.push({ ...cs.q, seed: 1000 + ci + rep * 2 ** 40, counter: rep });
      });
    }
    for (const [name, config] of CONFIGS) {
      const run = await runSample(gpu, logits, params, cols, config);
      compareWithRef(run, logits, params, cols, `edge rows (${name})`);
      for (let r = 0; r < params.length; r++) cases[r % cases.length].check?.(run.tokens[r], run.probs[r]);
    }
  });

  it('vocabulary-sized rows with production sizes (topK 40 / topP 0.9 and full-vocabulary draws)', async () => {
    const gpu = getGpu();
    const cols = 19_000; // Qwen2.5's vocabulary / 8
    const settings = [
      { temperature: 0.7, topK: 40, topP: 0.9 },
      { temperature: 1, topK: 0, topP: 0.9 },
      { temperature: 1, topK: 0, topP: 1 },
      { temperature: 1.2, topK: 5000, topP: 1 },
    ];
    const params: SampleParams[] = [];
    for (let c = 0; c < 2; c++) settings.forEach((s, i) => params.push({ ...s, seed: 31 * i + c, counter: c }));
    const logits = normalArray(params.length * cols, 4242, 2);
    const run = await runSample(gpu, logits, params, cols);
    // Rows keeping all 19k tokens have CDF steps ~5e-5 apart, so a good share of their draws are
    // within EPS of one: compareWithRef bounds the count by its expectation.
    compareWithRef(run, logits, params, cols, 'vocab rows');
  });
});

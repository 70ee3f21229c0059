import { describe, expect, it } from 'vitest';
import type { KeySource } from '../kernels/ann.ts';
import { annCollect, reservoirPairs, reservoirSlot, slotPositionsRef } from '../kernels/ann_attention.ts';
import { type AttentionDecodeArgs, attentionDecode, attentionPartialRef } from '../kernels/attention.ts';
import { AnnAttention, type AnnAttentionOptions, type AnnDecodeInfo } from '../src/ann/ann_attention.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { mulberry32, normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// One layer, 8 query heads on 2 KV heads (GQA groups of 4), head dim 32, blocks of 16 slots.
const [H, KV, D, BS] = [8, 2, 32, 16];
const G = H / KV;
const SCALE = 1 / Math.sqrt(D);
// The decode kernel's tolerance against float64 (test/attention.test.ts): scores O(1..10), outputs
// p-weighted means of N(0, 1) values; f32 dot products, exp and sums over a few hundred slots stay
// within atol 3e-5 + rtol 1e-4 on any conforming device. A wrong slot or head mapping errs by 1e-2 .. 1.
const TOL = { atol: 3e-5, rtol: 1e-4 };
// small windows so that a few hundred keys cross the threshold
const OPTS: AnnAttentionOptions = { threshold: 256, sink: 16, recent: 32, extendEvery: 16, buildTokens: 64 };

/** Sequences' K/V in one pool, each head row in shuffled blocks, as the paged cache stores them. */
class Kv {
  readonly k: Float32Array;
  readonly v: Float32Array;
  readonly table: Uint32Array;
  readonly stride: number;
  constructor(
    readonly batch: number,
    readonly maxTokens: number,
    seed: number,
  ) {
    this.stride = Math.ceil(maxTokens / BS);
    const blocks = batch * KV * this.stride;
    const order = Array.from({ length: blocks }, (_, i) => i);
    const next = mulberry32(seed);
    for (let i = blocks - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j], order[i]];
    }
    this.table = Uint32Array.from(order);
    this.k = normalArray(blocks * BS * D, seed + 1, 1);
    this.v = normalArray(blocks * BS * D, seed + 2, 1);
  }
  slot(row: number, pos: number): number {
    return this.table[row * this.stride + Math.floor(pos / BS)] * BS + (pos % BS);
  }
  /** Sets key `pos` of head row `row`. */
  setKey(row: number, pos: number, key: ArrayLike<number>): void {
    this.k.set(key, this.slot(row, pos) * D);
  }
  host() {
    return { kPool: this.k, vPool: this.v, blockTable: this.table, tableStride: this.stride, blockSize: BS };
  }
}

interface Decoded {
  out: Float32Array;
  /** per indexed row: positions attended */
  positions: Map<string, number[]>;
  info?: AnnDecodeInfo;
}

/** One decode step of `seqs` (batch order) with lengths `n`: through the manager, or plain attentionDecode. */
async function decode(gpu: Gpu, kv: Kv, ann: AnnAttention | null, seqs: number[], n: number[], q: Float32Array): Promise<Decoded> {
  const step = gpu.step();
  const lengths = new Uint32Array(kv.batch * KV);
  seqs.forEach((_, b) => lengths.fill(n[b], b * KV, (b + 1) * KV));
  const out = step.scratch(seqs.length * H * D * 4);
  const a: AttentionDecodeArgs = {
    kPool: step.upload(kv.k),
    vPool: step.upload(kv.v),
    blockTable: step.upload(kv.table),
    tableStride: kv.stride,
    blockSize: BS,
    nHeads: H,
    nKvHeads: KV,
    headDim: D,
    batch: seqs.length,
    maxKvLen: Math.max(...n),
    q: step.upload(q),
    out,
    kvLen: step.upload(lengths),
  };
  let info: AnnDecodeInfo | undefined;
  if (ann) info = ann.attentionDecode(step, 0, a, { seqs, lengths });
  else attentionDecode(step, a);
  const reads = [step.readback(out)];
  if (info) reads.push(step.readback(info.table), step.readback(info.lengths));
  await step.submit();
  const [o, table, lens] = await Promise.all(reads);
  const positions = new Map<string, number[]>();
  if (info) {
    const t = new Uint32Array(table);
    const l = new Uint32Array(lens);
    // slot -> position of every head row
    const posOf = new Map<number, number>();
    for (let row = 0; row < kv.batch * KV; row++) for (let p = 0; p < kv.maxTokens; p++) posOf.set(kv.slot(row, p), p);
    for (const r of info.rows) positions.set(`${r.seq}/${r.kvHead}`, Array.from(t.subarray(r.dst * info.stride, r.dst * info.stride + l[r.dst]), (s) => posOf.get(s)!));
  }
  return { out: new Float32Array(o), positions, info };
}

/** Samples `count` prefill queries of `seq` (batch index b of a prefill step) into the manager. */
async function prefill(gpu: Gpu, ann: AnnAttention, seq: number, count: number, seed: number, chunks = 1): Promise<void> {
  const per = Math.ceil(count / chunks);
  for (let c0 = 0; c0 < count; c0 += per) {
    const c = Math.min(per, count - c0);
    const step = gpu.step();
    ann.collect(step, 0, step.upload(normalArray(c * H * D, seed + c0, 1.5)), [{ seq, row: 0, position: c0, count: c }]);
    await step.submit();
  }
}

/** float64 attention of query head h of batch entry b over the given positions of its head row. */
function refOver(kv: Kv, q: Float32Array, b: number, h: number, positions: readonly number[]): Float64Array {
  const row = b * KV + Math.floor(h / G);
  // one position at a time through the kernels' reference, merged exactly
  const parts = positions.map((p) => attentionPartialRef(kv.host(), q, (b * H + h) * D, row, p, p + 1, D));
  const m = Math.max(...parts.map((x) => x.m));
  const out = new Float64Array(D);
  let l = 0;
  for (const x of parts) {
    const w = x.l * Math.exp(x.m - m);
    l += w;
    for (let d = 0; d < D; d++) out[d] += w * x.out[d];
  }
  return out.map((x) => x / l);
}

/** Positions row r (KV head kvh of batch entry b) must attend when the search is exact (every list holds every key): each head's top (k + lo) keys below hi by float64 score, as slotPositionsRef orders them. */
function expectedPositions(kv: Kv, q: Float32Array, b: number, kvh: number, r: { n: number; lo: number; hi: number }, k: number): number[] {
  const found = range(G).flatMap((g) => {
    const h = kvh * G + g;
    const score = range(r.hi).map((p) => attentionPartialRef(kv.host(), q, (b * H + h) * D, b * KV + kvh, p, p + 1, D).m);
    return range(r.hi).sort((x, y) => score[y] - score[x]).slice(0, k + r.lo);
  });
  return slotPositionsRef(r, found);
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const rows = (out: Float32Array, b: number, h: number) => out.subarray((b * H + h) * D, (b * H + h + 1) * D);

describe('decode attention with a key index', () => {
  const gpu = useGpu();

  it('attends to the static window and the found keys; rows below the threshold are untouched, bit for bit', async () => {
    const kv = new Kv(2, 320, 1);
    const topK = 12;
    // every list holds every key (list fraction 1): the search is exact, so the attended set is known
    const ann = new AnnAttention(gpu(), { nLayers: 1, nHeads: H, nKvHeads: KV, headDim: D, blockSize: BS, dtype: 'f32', maxTokens: 320 }, { ...OPTS, topK, index: { clusters: 4, listFraction: 1 } });
    await prefill(gpu(), ann, 7, 299, 10, 3);
    await prefill(gpu(), ann, 9, 99, 20);
    expect(ann.bytes(9)).toBe(0); // below threshold / 2: nothing sampled
    const q = normalArray(2 * H * D, 3, 1.5);
    const n = [300, 100];
    const got = await decode(gpu(), kv, ann, [7, 9], n, q);
    const plain = await decode(gpu(), kv, null, [7, 9], n, q);
    expect(ann.indexCount(7)).toBe(KV);
    expect(got.info?.rows.map((r) => r.seq)).toEqual([7, 7]);
    for (const r of got.info!.rows) {
      const positions = got.positions.get(`7/${r.kvHead}`)!;
      expect(positions).toEqual(expectedPositions(kv, q, 0, r.kvHead, r, topK));
      expect(positions.length, 'a subset of the keys').toBeLessThan(r.n - 50);
      for (let g = 0; g < G; g++) expectClose(rows(got.out, 0, r.kvHead * G + g), refOver(kv, q, 0, r.kvHead * G + g, positions), TOL, `indexed head ${r.kvHead * G + g}`);
    }
    for (let h = 0; h < H; h++) expect(Array.from(rows(got.out, 1, h)), `head ${h} below the threshold`).toEqual(Array.from(rows(plain.out, 1, h)));
    // a batch with no indexed row is attentionDecode itself
    const alone = await decode(gpu(), new Kv(1, 320, 1), ann, [9], [101], q.subarray(H * D));
    expect(alone.info).toBeUndefined();
    expect(Array.from(alone.out)).toEqual(Array.from((await decode(gpu(), new Kv(1, 320, 1), null, [9], [101], q.subarray(H * D))).out));
    ann.free(7);
    ann.free(9);
  });

  it('attends to the union of the group\'s top keys; the error is bounded by the mass it drops', async () => {
    const n = 400;
    const kv = new Kv(1, n, 2);
    const topK = 6;
    // exact top-k from the search (every list holds every key), so the attended set is known
    const ann = new AnnAttention(gpu(), { nLayers: 1, nHeads: H, nKvHeads: KV, headDim: D, blockSize: BS, dtype: 'f32', maxTokens: n }, { ...OPTS, topK, index: { clusters: 4, listFraction: 1 } });
    await prefill(gpu(), ann, 1, n - 1, 30);
    const q = normalArray(H * D, 4, 1.5);
    // plant, for each query head, 3 middle keys along its query (scaled score 14, the others ~N(0, 2.25)):
    // they hold nearly all of its mass, and each head's are different keys
    const next = mulberry32(5);
    for (let h = 0; h < H; h++) {
      const qh = q.subarray(h * D, (h + 1) * D);
      const norm = Math.hypot(...qh);
      for (let j = 0; j < 3; j++) kv.setKey(Math.floor(h / G), 40 + Math.floor(next() * 300), Array.from(qh, (x) => (x / norm) * (14 / (SCALE * norm))));
    }
    const got = await decode(gpu(), kv, ann, [1], [n], q);
    for (let kvh = 0; kvh < KV; kvh++) {
      const r = got.info!.rows.find((x) => x.kvHead === kvh)!;
      const positions = got.positions.get(`1/${kvh}`)!;
      expect(positions).toEqual(expectedPositions(kv, q, 0, kvh, r, topK));
      expect(positions.length, 'the union is larger than one head\'s set').toBeGreaterThan(r.lo + (r.n - r.hi) + topK);
      for (let g = 0; g < G; g++) {
        const h = kvh * G + g;
        const o = rows(got.out, 0, h);
        expectClose(o, refOver(kv, q, 0, h, positions), TOL, `head ${h} over its set`);
        // Bound: with p the exact softmax over all n keys, A the attended set and P = sum_A p, the
        // output is o' = sum_A p_i v_i / P and the exact o = sum_A p_i v_i + sum_notA p_i v_i, so
        // o - o' = sum_notA p_i v_i - (1 - P) o', and |o - o'| <= (1 - P) (max_notA |v_i| + |o'|)
        // <= 2 (1 - P) max|v| elementwise: the dropped mass bounds the error.
        const inA = new Set(positions);
        const all = attentionPartialRef(kv.host(), q, h * D, kvh, 0, n, D);
        let dropped = 0;
        let vmax = 0;
        for (let p = 0; p < n; p++) {
          if (inA.has(p)) continue;
          const one = attentionPartialRef(kv.host(), q, h * D, kvh, p, p + 1, D);
          dropped += Math.exp(one.m - all.m) / all.l;
          for (let d = 0; d < D; d++) vmax = Math.max(vmax, Math.abs(kv.v[kv.slot(kvh, p) * D + d]));
        }
        expect(dropped, 'planted keys hold nearly all the mass').toBeLessThan(1e-3);
        const bound = dropped * (vmax + Math.max(...Array.from(o, Math.abs)));
        expectClose(o, all.out, { atol: bound + TOL.atol, rtol: TOL.rtol }, `head ${h} against exact attention`);
      }
    }
    ann.free(1);
  });

  it('equals exact attention when the index finds every key, after appends too; free releases its memory', async () => {
    const n0 = 260;
    const kv = new Kv(1, 360, 3);
    const ann = new AnnAttention(gpu(), { nLayers: 1, nHeads: H, nKvHeads: KV, headDim: D, blockSize: BS, dtype: 'f32', maxTokens: 360 }, { ...OPTS, topK: 400, index: { clusters: 4, listFraction: 1 } });
    await prefill(gpu(), ann, 5, n0 - 1, 40, 2);
    const sampling = ann.bytes(5);
    expect(sampling).toBe(KV * OPTS.buildTokens! * G * D * 4);
    const q = normalArray(H * D, 6, 1.5);
    let first = await decode(gpu(), kv, ann, [5], [n0], q);
    const index = ann.indexOf(5, 0, 1)!;
    expect(index.keyCount).toBe(n0 - OPTS.recent!);
    // every step until the recent window is extendEvery past the index, then one extension
    for (let n = n0 + 1; n <= n0 + OPTS.extendEvery!; n++) first = await decode(gpu(), kv, ann, [5], [n], q);
    const n = n0 + OPTS.extendEvery!;
    expect(index.keyCount).toBe(n - OPTS.recent!);
    for (let h = 0; h < KV; h++) expect([...first.positions.get(`5/${h}`)!].sort((a, b) => a - b)).toEqual(range(n));
    for (let h = 0; h < H; h++) expectClose(rows(first.out, 0, h), refOver(kv, q, 0, h, range(n)), TOL, `head ${h} after appends`);
    const held = ann.bytes(5);
    expect(held).toBe(ann.bytes());
    expect(held).toBe(KV * index.bytes);
    ann.free(5);
    expect(ann.bytes()).toBe(0);
    expect(ann.indexCount(5)).toBe(0);
    expect(() => index.rebind({} as KeySource)).toThrow(/after destroy/);
  });

  it('samples the same positions in chunks as in one pass, uniformly, and copies their group queries', async () => {
    const [slots, n] = [64, 4096];
    const keep = (chunks: number[]) => {
      const m = new Map<number, number>();
      let at = 0;
      for (const c of chunks) {
        const pr = reservoirPairs(0, at, c, slots, 7);
        for (let i = 0; i < pr.length; i += 2) m.set(pr[i + 1], at + pr[i]);
        at += c;
      }
      return m;
    };
    const whole = keep([n]);
    expect([...keep([1000, 17, 3000, 79])].sort((a, b) => a[0] - b[0])).toEqual([...whole].sort((a, b) => a[0] - b[0]));
    // a uniform sample of 4096 positions: mean 2048, standard error 1182 / sqrt(64) = 148; 4 of them
    const kept = [...whole.values()];
    expect(kept.length).toBe(slots);
    expect(Math.abs(kept.reduce((t, x) => t + x, 0) / slots - (n - 1) / 2)).toBeLessThan(4 * 148);
    expect(reservoirSlot(10, slots, 7)).toBe(10);

    // the kernel: tokens' group queries of KV heads [1, 0] into reservoir blocks 0 and 1
    const T = 5;
    const q = normalArray(T * H * D, 8, 1);
    const pairs = Uint32Array.of(3, 0, 1, 2, 4, 5);
    const step = gpu().step();
    const res = step.scratch(2 * 6 * G * D * 4);
    annCollect(step, { q: step.upload(q), nHeads: H, group: G, headDim: D, pairs, heads: [1, 0], reservoir: res, slots: 6 });
    const back = step.readback(res);
    await step.submit();
    const got = new Float32Array(await back);
    for (const [block, kvh] of [[0, 1], [1, 0]]) {
      for (let i = 0; i < pairs.length; i += 2) {
        const [t, slot] = [pairs[i], pairs[i + 1]];
        const at = ((block * 6 + slot) * G) * D;
        expect(Array.from(got.subarray(at, at + G * D))).toEqual(Array.from(q.subarray((t * H + kvh * G) * D, (t * H + kvh * G + G) * D)));
      }
    }
  });

  it('refuses options that leave no middle', () => {
    const shape = { nLayers: 1, nHeads: H, nKvHeads: KV, headDim: D, blockSize: BS, dtype: 'f32' as const, maxTokens: 100 };
    expect(() => new AnnAttention(gpu(), shape, { threshold: 320, sink: 64, recent: 256 })).toThrow(/threshold 320 must exceed/);
    expect(() => new AnnAttention(gpu(), shape, { recent: 0 })).toThrow(/recent must be a positive integer/);
  });
});

import { describe, expect, it } from 'vitest';
import { type PrefillSeq, attentionDecode, attentionPrefill, prefillMeta } from '../kernels/attention.ts';
import { type WindowedChunk, pagedWindowedAttentionRef, windowedAttentionRef } from '../kernels/attention_windowed_ref.ts';
import { kvPoolBytes, writeKv, writeKvRef } from '../kernels/kv_cache.ts';
import type { Gpu } from '../src/gpu/gpu.ts';
import { type HeadwiseKv, NO_SLOT, PagedKvTables } from '../src/kv/paged_kv.ts';
import { normalArray } from '../src/util/rng.ts';
import { expectClose } from './helpers/close.ts';
import { useGpu } from './helpers/gpu.ts';

// Head-wise attention kernels (docs/headwise.md) against the float64 references, through the write
// order the model follows: full columns (and decode tokens' ring slots) written before attention,
// the ring slots of prefill chunks after it.
//
// Tolerance, as in test/attention.test.ts (same kernels, same input statistics: q ~ N(0, 1.5^2),
// k, v ~ N(0, 1), scale 1/sqrt(headDim), at most ~60 visible keys): scores are f32 dot products
// (~sqrt(headDim) * 2^-24 relative), exp/exp2 within 3 + 2|x| ulp on a conforming Vulkan device
// (~3e-6 relative for |x| <~ 20), each moving the p-weighted mean of v rows (|v| <~ 4) by at most
// ~2e-5; the f32 sums over <= 60 keys add ~8 * 2^-24 relative. atol 3e-5 + rtol 1e-4 covers that;
// a key outside the window, a wrong ring position, column or new-row index errs by 1e-2 .. 1.
const TOL = { atol: 3e-5, rtol: 1e-4 };

interface Scenario {
  nKvHeads: number;
  group: number;
  headDim: number;
  blockSize: number;
  hw: HeadwiseKv;
  /** per layer, the column of each KV head (headColumns' columnOf rows) */
  columnOf: number[][];
  /** per step, the tokens each sequence feeds (0: none); 1-token items go to the decode kernel, as in GpuModel */
  steps: number[][];
  /** false: every item goes to the prefill kernel, 1-token ones too */
  decode?: boolean;
  /** split-K partition of the decode kernel (32: several partitions, so the merge runs too) */
  partitionSize?: number;
  /** prefill tile (16 x 8: 8 tokens per tile with GQA 2, so chunks span several tiles and later tiles skip keys) */
  tile?: { bm: number; bk: number };
}

interface Outputs {
  /** [layer][seq]: GPU attention output of every token, [tokens, nHeads, headDim] */
  got: Float32Array[][];
  /** [layer][seq]: the float64 definition over the whole history */
  want: Float64Array[][];
}

/**
 * Runs a scenario step by step through the real bookkeeping (PagedKvTables) and the kernels,
 * checking every step against pagedWindowedAttentionRef; returns all outputs with the definition.
 */
async function runScenario(gpu: Gpu, sc: Scenario, seed: number): Promise<Outputs> {
  const { nKvHeads: nKv, headDim: hd, blockSize: bs, hw } = sc;
  const nHeads = nKv * sc.group;
  const nLayers = sc.columnOf.length;
  const nSeqs = sc.steps[0].length;
  const total = Array.from({ length: nSeqs }, (_, s) => sc.steps.reduce((n, st) => n + st[s], 0));
  const layout = { nLayers, nKvHeads: nKv, headDim: hd, blockSize: bs, bytesPerElement: 4 };
  const numBlocks = nSeqs * nKv * Math.ceil(Math.max(...total) / bs) + 4;
  const kv = new PagedKvTables(layout, numBlocks, hw);
  const columnOfFlat = Uint32Array.from(sc.columnOf.flat());
  const columnBuf = gpu.upload(columnOfFlat);
  const data = (l: number, s: number, salt: number, heads: number, std = 1) => normalArray(total[s] * heads * hd, seed * 1000 + l * 100 + s * 10 + salt, std);
  const q = sc.columnOf.map((_, l) => total.map((_, s) => data(l, s, 1, nHeads, 1.5)));
  const k = sc.columnOf.map((_, l) => total.map((_, s) => data(l, s, 2, nKv)));
  const v = sc.columnOf.map((_, l) => total.map((_, s) => data(l, s, 3, nKv)));
  const got = sc.columnOf.map(() => total.map((n) => new Float32Array(n * nHeads * hd)));
  const poolBytes = kvPoolBytes(numBlocks, bs, hd);
  const pools = sc.columnOf.map(() => ({ k: gpu.createBuffer(poolBytes), v: gpu.createBuffer(poolBytes), hostK: new Float32Array(poolBytes / 4), hostV: new Float32Array(poolBytes / 4) }));
  const buffers: GPUBuffer[] = [columnBuf, ...pools.flatMap((p) => [p.k, p.v])];

  for (const step of sc.steps) {
    // decode tokens first (the decode kernel reads rows 0 .. nDecode-1), then prompt chunks
    const isDecode = (n: number) => sc.decode !== false && n === 1;
    const items = step.flatMap((n, seq) => (n > 0 ? [{ seq, n }] : [])).sort((a, b) => Number(isDecode(b.n)) - Number(isDecode(a.n)));
    const nDecode = items.filter((x) => isDecode(x.n)).length;
    const T = items.reduce((n, x) => n + x.n, 0);
    const chunks: (WindowedChunk & { seq: number })[] = [];
    const slots = new Uint32Array(T * nKv);
    let row = 0;
    for (const [b, x] of items.entries()) {
      const before = kv.has(x.seq) ? kv.tokens(x.seq) : 0;
      slots.set(kv.append(x.seq, x.n), row * nKv);
      chunks.push({ seq: x.seq, qStart: row, qLen: x.n, before, headRowBase: b * nKv });
      row += x.n;
    }
    const { table, lengths, stride } = kv.batchTables(items.map((x) => x.seq));
    const tableBuf = gpu.upload(table);
    const lengthBuf = gpu.upload(lengths);
    const prefill: PrefillSeq[] = chunks.slice(nDecode).map((c) => ({ qStart: c.qStart, qLen: c.qLen, ctxLen: c.before + c.qLen, headRowBase: c.headRowBase }));
    const metaBuf = prefill.length ? gpu.upload(prefillMeta(prefill, columnOfFlat)) : null;
    const gpuStep = gpu.step();
    const outs: GPUBuffer[] = [];
    const stepBuffers = [tableBuf, lengthBuf, ...(metaBuf ? [metaBuf] : [])];
    const refs: Float64Array[] = [];
    for (let l = 0; l < nLayers; l++) {
      // this step's rows of the layer, packed in batch order
      const rows = (src: Float32Array[][], heads: number) => {
        const out = new Float32Array(T * heads * hd);
        for (const c of chunks) out.set(src[l][c.seq].subarray(c.before * heads * hd, (c.before + c.qLen) * heads * hd), c.qStart * heads * hd);
        return out;
      };
      const [qRows, kRows, vRows] = [rows(q, nHeads), rows(k, nKv), rows(v, nKv)];
      // KV head h of layer l is stored at the slot of its column; ring slots of prefill chunks come after attention
      const early = new Uint32Array(T * nKv).fill(NO_SLOT);
      const late = new Uint32Array(T * nKv).fill(NO_SLOT);
      chunks.forEach((c, b) => {
        for (let t = c.qStart; t < c.qStart + c.qLen; t++) {
          for (let h = 0; h < nKv; h++) {
            const column = sc.columnOf[l][h];
            (b >= nDecode && column >= hw.fullColumns ? late : early)[t * nKv + h] = slots[t * nKv + column];
          }
        }
      });
      const pool = pools[l];
      refs.push(
        pagedWindowedAttentionRef({ kPool: pool.hostK, vPool: pool.hostV, blockTable: table, tableStride: stride, blockSize: bs }, qRows, kRows, vRows, chunks, {
          nHeads,
          nKvHeads: nKv,
          headDim: hd,
          rows: T,
          ...hw,
          columnOf: sc.columnOf[l],
        }),
      );
      const [qb, kb, vb, eb, lb] = [qRows, kRows, vRows, early, late].map((x) => gpu.upload(x));
      const out = gpu.createBuffer(qRows.byteLength);
      stepBuffers.push(qb, kb, vb, eb, lb);
      outs.push(out);
      const paged = { kPool: pool.k, vPool: pool.v, blockTable: tableBuf, tableStride: stride, blockSize: bs, nHeads, nKvHeads: nKv, headDim: hd };
      const write = (mapping: GPUBuffer) => writeKv(gpuStep, { k: kb, v: vb, kPool: pool.k, vPool: pool.v, slotMapping: mapping, tokens: T, nKvHeads: nKv, headDim: hd });
      write(eb);
      if (nDecode > 0) {
        const maxKvLen = Math.max(...chunks.slice(0, nDecode).map((c) => c.before + 1));
        attentionDecode(gpuStep, { ...paged, q: qb, out, kvLen: lengthBuf, batch: nDecode, maxKvLen, partitionSize: sc.partitionSize, columns: { columnOf: columnBuf, layer: l } });
      }
      if (metaBuf) {
        const maxQLen = Math.max(...prefill.map((s) => s.qLen));
        attentionPrefill(gpuStep, { ...paged, q: qb, out, meta: metaBuf, numSeqs: prefill.length, maxQLen, tile: sc.tile, headwise: { layer: l, ...hw, kNew: kb, vNew: vb } });
      }
      write(lb);
      writeKvRef(pool.hostK, pool.hostV, kRows, vRows, Uint32Array.from(early, (e, i) => (e === NO_SLOT ? late[i] : e)), T, nKv, hd);
    }
    await gpuStep.submit();
    for (let l = 0; l < nLayers; l++) {
      const out = await gpu.readF32(outs[l], T * nHeads * hd);
      expectClose(out, refs[l], TOL, `layer ${l}, step ${sc.steps.indexOf(step)}`);
      for (const c of chunks) got[l][c.seq].set(out.subarray(c.qStart * nHeads * hd, (c.qStart + c.qLen) * nHeads * hd), c.before * nHeads * hd);
    }
    for (const b of [...stepBuffers, ...outs]) b.destroy();
  }
  buffers.forEach((b) => b.destroy());
  const want = sc.columnOf.map((cols, l) =>
    total.map((tokens, s) => windowedAttentionRef(q[l][s], k[l][s], v[l][s], { nHeads, nKvHeads: nKv, headDim: hd, tokens, ...hw, streaming: cols.map((c) => c >= hw.fullColumns) })),
  );
  return { got, want };
}

function expectDefinition(o: Outputs): void {
  o.got.forEach((seqs, l) => seqs.forEach((g, s) => expectClose(g, o.want[l][s], TOL, `layer ${l} sequence ${s} against the definition`)));
}

describe('head-wise attention kernels', () => {
  const getGpu = useGpu();
  const base = { nKvHeads: 4, group: 2, headDim: 8, blockSize: 4, partitionSize: 32, tile: { bm: 16, bk: 8 } };

  it('ring wrap, chunked prefill across the window, decode and prefill in one step, GQA groups of mixed kinds, two layers', async () => {
    // W = 3 + 6 = 9 slots: rings wrap within a chunk (13, 20 tokens), across chunks and in decode;
    // 20-token chunks span 3 tiles of 8 tokens, whose later tiles read new keys before the sink and
    // from their window on; layer 0 keeps two full columns with its heads permuted, layer 1 in head order
    const o = await runScenario(
      getGpu(),
      {
        ...base,
        hw: { fullColumns: 2, sink: 3, recent: 6 },
        columnOf: [
          [2, 0, 3, 1],
          [0, 1, 2, 3],
        ],
        steps: [
          [1, 20],
          [1, 7],
          [6, 1],
          [1, 13],
          [20, 1],
          [1, 1],
          [1, 0],
          [0, 1],
        ],
      },
      1,
    );
    expectDefinition(o);
  });

  it('sink larger than the context, and contexts shorter than sink + recent: every query sees its whole causal history', async () => {
    const gpu = getGpu();
    const steps = [
      [4, 1],
      [1, 11],
      [9, 1],
      [1, 6],
    ];
    const full = await runScenario(gpu, { ...base, hw: { fullColumns: 4, sink: 3, recent: 6 }, columnOf: [[0, 1, 2, 3]], steps }, 2);
    // sink 40 > 19 tokens; sink 3 + recent 18 > 19 tokens: the window hides nothing
    for (const hw of [
      { fullColumns: 1, sink: 40, recent: 2 },
      { fullColumns: 0, sink: 3, recent: 18 },
    ]) {
      const o = await runScenario(gpu, { ...base, hw, columnOf: [[3, 0, 2, 1]], steps }, 2);
      expectDefinition(o);
      o.got[0].forEach((g, s) => expectClose(g, full.got[0][s], TOL, `sink ${hw.sink} recent ${hw.recent} against full attention, sequence ${s}`));
    }
  });

  it('one row: one sequence of single tokens around a chunk past the window, through decode and through prefill', async () => {
    const sc = { ...base, hw: { fullColumns: 1, sink: 1, recent: 2 }, columnOf: [[1, 0, 2, 3]], steps: [[1], [5], [1], [1]] };
    for (const decode of [true, false]) expectDefinition(await runScenario(getGpu(), { ...sc, decode }, 3));
  });

  it('without a pattern, and with every column full in head order, outputs are bit-identical to the plain kernels', async () => {
    const gpu = getGpu();
    const nKv = 4;
    const nHeads = 8;
    const hd = 8;
    const bs = 4;
    const lens = [37, 1, 70];
    const kv = new PagedKvTables({ nLayers: 1, nKvHeads: nKv, headDim: hd, blockSize: bs, bytesPerElement: 4 }, 128);
    const slots = lens.map((n, s) => kv.append(s, n));
    const T = lens.reduce((a, b) => a + b, 0);
    const kRows = normalArray(T * nKv * hd, 41);
    const vRows = normalArray(T * nKv * hd, 42);
    const q = normalArray(T * nHeads * hd, 43, 1.5);
    const { table, lengths, stride } = kv.batchTables([0, 1, 2]);
    const bytes = kvPoolBytes(128, bs, hd);
    const [kPool, vPool] = [gpu.createBuffer(bytes), gpu.createBuffer(bytes)];
    const [kb, vb, qb, mb, tb, lb, cb] = [kRows, vRows, q, Uint32Array.from(slots.flatMap((s) => [...s])), table, lengths, new Uint32Array([0, 1, 2, 3])].map((x) => gpu.upload(x));
    const seqs: PrefillSeq[] = [];
    lens.reduce((start, n, s) => (seqs.push({ qStart: start, qLen: n, ctxLen: n, headRowBase: s * nKv }), start + n), 0);
    const [plainMeta, hwMeta] = [prefillMeta(seqs), prefillMeta(seqs, [0, 1, 2, 3])].map((m) => gpu.upload(m));
    const outs = Array.from({ length: 4 }, () => gpu.createBuffer(q.byteLength));
    const step = gpu.step();
    writeKv(step, { k: kb, v: vb, kPool, vPool, slotMapping: mb, tokens: T, nKvHeads: nKv, headDim: hd });
    const paged = { kPool, vPool, blockTable: tb, tableStride: stride, blockSize: bs, nHeads, nKvHeads: nKv, headDim: hd };
    const decode = { ...paged, q: qb, kvLen: lb, batch: 3, maxKvLen: 70, partitionSize: 32 };
    attentionDecode(step, { ...decode, out: outs[0] });
    attentionDecode(step, { ...decode, out: outs[1], columns: { columnOf: cb, layer: 0 } });
    // the scenarios' tile, so the head-wise pipeline is the one they compiled
    const prefill = { ...paged, q: qb, numSeqs: 3, maxQLen: 70, tile: base.tile };
    attentionPrefill(step, { ...prefill, out: outs[2], meta: plainMeta });
    attentionPrefill(step, { ...prefill, out: outs[3], meta: hwMeta, headwise: { layer: 0, fullColumns: nKv, sink: 0, recent: 1, kNew: kb, vNew: vb } });
    await step.submit();
    const [d0, d1, p0, p1] = await Promise.all(outs.map((o) => gpu.readF32(o, q.length)));
    // decode wrote rows 0..2 only: compare those
    expect(d1.subarray(0, 3 * nHeads * hd)).toEqual(d0.subarray(0, 3 * nHeads * hd));
    expect(p1).toEqual(p0);
    expect(p0.some((x) => x !== 0)).toBe(true);
    for (const b of [kPool, vPool, kb, vb, qb, mb, tb, lb, cb, plainMeta, hwMeta, ...outs]) b.destroy();
  });
});

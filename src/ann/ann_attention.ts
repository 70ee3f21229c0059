/**
 * Decode attention with a key index (issue 15 item 1; docs/ann.md): for a retrieval head row whose
 * context has reached `threshold` keys, attention = exact attention over the static window (the
 * first `sink` keys and the latest keys not yet indexed) merged by log-sum-exp with attention over
 * the keys its index finds in the middle. One manager per model: it keeps, per (sequence, layer,
 * retrieval KV head), a sample of the prefill's queries until the index is built, then the index.
 *
 * GQA: the query heads of one KV head search its one index together (one centroid scoring and list
 * scan per query head), and every head of the group attends to the *union* of the group's found
 * keys. A head's set then contains its own top keys (its error is at most what it would be alone),
 * each K/V row is loaded once for the whole group (the decode kernel shares loads across the
 * group), and the union is small because the heads of a group mostly want the same keys.
 *
 * What the model calls (src/model/gpu_model.ts; see docs/ann.md "Wiring"):
 * - `collect(step, layer, q, chunks)` after the layer's q is computed (after RoPE), every step;
 * - `attentionDecode(step, layer, args, batch)` in place of kernels/attention.ts attentionDecode;
 * - `free(seq)` with the sequence's KV; `bytes(seq)` to account with it.
 */
import { type KeySource, annFill } from '../../kernels/ann.ts';
import { annCollect, annSlotTable, reservoirPairs, type SlotRow } from '../../kernels/ann_attention.ts';
import { type AttentionDecodeArgs, attentionDecode, attentionDecodePartials, attentionMerge, decodePlan } from '../../kernels/attention.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { Binding, Step } from '../gpu/step.ts';
import { KeyIndex, type KeyIndexOptions } from './key_index.ts';

export interface AnnAttentionOptions {
  /** keys a head row must hold before it is indexed (default 4096); below it, attention is exactly today's */
  threshold?: number;
  /** first keys always attended (default 64) */
  sink?: number;
  /** latest keys always attended (default 256) */
  recent?: number;
  /** keys that leave the recent window are indexed in batches of this many (default 64) */
  extendEvery?: number;
  /** middle keys found per query head (default 100) */
  topK?: number;
  /** index lists scanned per query head (default 2) */
  nprobe?: number;
  /** prefill tokens sampled per head row to build from (each gives its group's queries; default 256) */
  buildTokens?: number;
  /**
   * tokens that must be sampled before a build (default 32, at most buildTokens): a head row whose
   * prompt was not sampled here (a handed-over or forked sequence) attends exactly until that many
   * of its decode queries are sampled, then builds from them
   */
  minBuildTokens?: number;
  /** the index's own options (default: 64 centroids, lists of 1% of the keys) */
  index?: KeyIndexOptions;
  seed?: number;
}

export interface AnnModelShape {
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  blockSize: number;
  dtype: 'f32' | 'f16';
  /** most keys a head row can reach (the model's context): sizes each index's overflow list */
  maxTokens: number;
  /** head-wise KV: u32 [nLayers * nKvHeads] column of each KV head (default: its own index) ... */
  columnOf?: ArrayLike<number>;
  /** ... and the full columns (retrieval heads): only these are indexed (default: all) */
  fullColumns?: number;
}

/** Tokens of one sequence in this step's packed q: rows [row, row + count) at positions [position, position + count). */
export interface AnnChunk {
  seq: number;
  row: number;
  position: number;
  count: number;
}

/** The decode batch as the model packed it: sequence b's KV head h is head row b * nKvHeads + column, `lengths` its keys (host copy of kvLen). */
export interface AnnBatch {
  seqs: readonly number[];
  lengths: ArrayLike<number>;
}

/** What attentionDecode recorded for the indexed head rows (scratch buffers of the step: tests, benchmarks). */
export interface AnnDecodeInfo {
  rows: (SlotRow & { seq: number; kvHead: number })[];
  /** u32 [batch * nKvHeads, stride] pool slots attended, lengths u32 [batch * nKvHeads] */
  table: GPUBuffer;
  lengths: GPUBuffer;
  stride: number;
  /** per row: u32 [group] keys the search scored (at offset) */
  scored: { buffer: GPUBuffer; offset: number }[];
}

interface LayerState {
  /** f32 [heads, buildTokens, group, headDim] until the indexes are built */
  reservoir?: GPUBuffer;
  /** the first position sampled, and one past the last */
  from: number;
  to: number;
  /** per retrieval head of the layer (retrievalHeads order) */
  indexes?: KeyIndex[];
}

const bufferOf = (b: Binding): GPUBuffer => ('buffer' in b ? b.buffer : b);
const offsetOf = (b: Binding): number => ('buffer' in b ? (b.offset ?? 0) : 0);

export class AnnAttention {
  readonly threshold: number;
  readonly sink: number;
  readonly recent: number;
  readonly extendEvery: number;
  readonly topK: number;
  readonly nprobe: number;
  readonly buildTokens: number;
  readonly minBuildTokens: number;
  private readonly group: number;
  private readonly seed: number;
  /** per layer: its KV heads that get an index */
  private readonly retrievalHeads: number[][];
  private readonly seqs = new Map<number, LayerState[]>();
  /** reservoirs read by a step not yet submitted: destroyed once another step is seen */
  private retired: { step: Step; buffer: GPUBuffer }[] = [];

  constructor(
    readonly gpu: Gpu,
    readonly shape: AnnModelShape,
    private readonly options: AnnAttentionOptions = {},
  ) {
    const o = options;
    this.threshold = o.threshold ?? 4096;
    this.sink = o.sink ?? 64;
    this.recent = o.recent ?? 256;
    this.extendEvery = o.extendEvery ?? 64;
    this.topK = o.topK ?? 100;
    this.nprobe = o.nprobe ?? 2;
    this.buildTokens = o.buildTokens ?? 256;
    this.minBuildTokens = o.minBuildTokens ?? Math.min(32, this.buildTokens);
    this.seed = o.seed ?? 1;
    for (const [name, v] of Object.entries({ sink: this.sink, extendEvery: this.extendEvery - 1, recent: this.recent - 1, topK: this.topK - 1, nprobe: this.nprobe - 1, buildTokens: this.buildTokens - 1, minBuildTokens: this.minBuildTokens - 1 })) {
      if (!Number.isInteger(v) || v < 0) throw new Error(`ann attention: ${name} must be a ${name === 'sink' ? 'non-negative' : 'positive'} integer`);
    }
    if (this.minBuildTokens > this.buildTokens) throw new Error(`ann attention: minBuildTokens ${this.minBuildTokens} exceeds buildTokens ${this.buildTokens}`);
    if (!(Number.isInteger(this.threshold) && this.threshold > this.sink + this.recent)) {
      throw new Error(`ann attention: threshold ${this.threshold} must exceed sink + recent (${this.sink + this.recent}), or nothing is left to index`);
    }
    if (shape.nHeads % shape.nKvHeads !== 0) throw new Error(`ann attention: nHeads ${shape.nHeads} is not a multiple of nKvHeads ${shape.nKvHeads}`);
    this.group = shape.nHeads / shape.nKvHeads;
    const full = shape.fullColumns ?? shape.nKvHeads;
    this.retrievalHeads = Array.from({ length: shape.nLayers }, (_, l) => Array.from({ length: shape.nKvHeads }, (_, h) => h).filter((h) => this.column(l, h) < full));
  }

  /** GPU memory held for `seq` (every sequence's without one): indexes and query samples. */
  bytes(seq?: number): number {
    const states = seq === undefined ? [...this.seqs.values()] : [this.seqs.get(seq) ?? []];
    return states.flat().reduce((s, x) => s + (x.reservoir?.size ?? 0) + (x.indexes ?? []).reduce((t, i) => t + i.bytes, 0), 0);
  }

  /** Indexes built for `seq` (over all layers and heads; every sequence's without one). */
  indexCount(seq?: number): number {
    const states = seq === undefined ? [...this.seqs.values()] : [this.seqs.get(seq) ?? []];
    return states.flat().reduce((s, x) => s + (x?.indexes?.length ?? 0), 0);
  }

  /** The index of (seq, layer, kvHead), if built (tests). */
  indexOf(seq: number, layer: number, kvHead: number): KeyIndex | undefined {
    const i = this.retrievalHeads[layer].indexOf(kvHead);
    return i < 0 ? undefined : this.seqs.get(seq)?.[layer]?.indexes?.[i];
  }

  /**
   * Hook (a), once per layer after its q (after RoPE) is computed: samples the queries of
   * sequences not yet indexed into their reservoirs. A sequence starts being sampled with the
   * first chunk that reaches threshold / 2 keys, so short ones cost nothing.
   */
  collect(step: Step, layer: number, q: Binding, chunks: readonly AnnChunk[]): void {
    this.retire(step);
    const heads = this.retrievalHeads[layer];
    if (heads.length === 0) return;
    for (const ch of chunks) {
      let st = this.seqs.get(ch.seq)?.[layer];
      if (st?.indexes) continue;
      const end = ch.position + ch.count;
      if (!st) {
        if (end < this.threshold / 2) continue;
        st = this.state(ch.seq, layer, ch.position);
      }
      st.reservoir ??= this.gpu.createBuffer(heads.length * this.buildTokens * this.group * this.shape.headDim * 4, 'ann build queries');
      const pairs = reservoirPairs(ch.row, ch.position - st.from, ch.count, this.buildTokens, this.seed);
      annCollect(step, { q, nHeads: this.shape.nHeads, group: this.group, headDim: this.shape.headDim, pairs, heads, reservoir: st.reservoir, slots: this.buildTokens });
      st.to = Math.max(st.to, end);
    }
  }

  /**
   * Hook (b), in place of attentionDecode: builds the index of each retrieval head row that has
   * reached the threshold, indexes keys leaving the recent window, searches, and attends. A batch
   * without an indexed head row is attentionDecode itself (the same output, bit for bit); otherwise
   * the rows without an index get today's partitions, merged with the indexed rows' in one merge.
   */
  attentionDecode(step: Step, layer: number, a: AttentionDecodeArgs, batch: AnnBatch): AnnDecodeInfo | undefined {
    this.retire(step);
    const s = this.shape;
    if (batch.seqs.length !== a.batch) throw new Error(`ann attention: ${batch.seqs.length} sequences for a batch of ${a.batch}`);
    const rows: AnnDecodeInfo['rows'] = [];
    const searched: { ids: GPUBuffer; k: number; scored: { buffer: GPUBuffer; offset: number } }[] = [];
    const qBuf = bufferOf(a.q);
    const G = this.group;
    batch.seqs.forEach((seq, b) => {
      const st = this.seqs.get(seq)?.[layer];
      this.retrievalHeads[layer].forEach((h, hi) => {
        const row = b * s.nKvHeads + this.column(layer, h);
        const n = batch.lengths[row];
        if (!st || (!st.indexes && (n < this.threshold || !st.reservoir || st.to - st.from < this.minBuildTokens))) return;
        const keys: KeySource = { pool: a.kPool, table: a.blockTable, tableStride: a.tableStride, row, blockSize: a.blockSize, headDim: s.headDim, dtype: s.dtype };
        if (!st.indexes) this.build(step, st, layer, (r) => ({ ...keys, row: r }), b, batch);
        const index = st.indexes![hi];
        index.rebind(keys);
        if (n - index.keyCount >= this.recent + this.extendEvery) index.extend(step, n - this.recent);
        const hiKey = index.keyCount;
        const lo = Math.min(this.sink, hiKey);
        const k = Math.min(this.topK + lo, hiKey);
        // the group's query rows, bound in place where the offset allows it (a copy ends the compute pass)
        const qOffset = offsetOf(a.q) + (b * s.nHeads + h * G) * s.headDim * 4;
        let queries: Binding = { buffer: qBuf, offset: qOffset, size: G * s.headDim * 4 };
        if (qOffset % step.gpu.limits.minStorageBufferOffsetAlignment !== 0) {
          queries = step.scratch(G * s.headDim * 4, 'ann queries');
          step.copy(qBuf, qOffset, queries, 0, G * s.headDim * 4);
        }
        const r = index.search(step, { queries, count: G, k, nprobe: Math.min(this.nprobe, index.clusters) });
        searched.push({ ids: r.ids, k, scored: { buffer: r.touched, offset: r.touchedOffset } });
        rows.push({ seq, kvHead: h, row, n, lo, hi: hiKey, dst: b * s.nKvHeads + h });
      });
    });
    if (rows.length === 0) {
      attentionDecode(step, a);
      return undefined;
    }

    // the found ids of each row side by side ([rows, G * kMax], -1 where fewer), then the slot table
    const idsPerRow = G * Math.max(...searched.map((x) => x.k));
    const ids = step.scratch(rows.length * idsPerRow * 4, 'ann found ids');
    annFill(step, ids, rows.length * idsPerRow, 0xffffffff);
    searched.forEach((x, i) => step.copy(x.ids, 0, ids, i * idsPerRow * 4, G * x.k * 4));
    const stride = Math.max(...rows.map((x, i) => x.lo + (x.n - x.hi) + Math.min(x.hi - x.lo, G * searched[i].k)));
    const tableRows = a.batch * s.nKvHeads;
    const table = step.scratch(tableRows * stride * 4, 'ann slot table');
    const lengths = step.scratch(tableRows * 4, 'ann slot lengths');
    annFill(step, lengths, tableRows);
    annSlotTable(step, { rows, ids, idsPerRow, blockTable: a.blockTable, tableStride: a.tableStride, blockSize: a.blockSize, headDim: s.headDim, table, outStride: stride, lengths });

    // today's partitions for the other head rows (indexed rows' lengths 0), the slot table's after them, one merge
    const own = Uint32Array.from(batch.lengths);
    for (const x of rows) own[x.row] = 0;
    const shape = { nHeads: s.nHeads, nKvHeads: s.nKvHeads, headDim: s.headDim, scale: a.scale, batch: a.batch };
    const annArgs = { ...shape, q: a.q, kPool: a.kPool, vPool: a.vPool, blockTable: table, tableStride: stride, blockSize: 1, dtype: a.dtype, kvLen: lengths, maxKvLen: stride };
    // (a batch whose head rows are all indexed needs no pass of today's kernel)
    const others = own.some((x, row) => x > 0 && row < tableRows);
    const p1 = others ? decodePlan(step.gpu, a).numParts : 0;
    const parts = p1 + decodePlan(step.gpu, annArgs).numParts;
    const qRows = a.batch * s.nHeads;
    const partOut = step.scratch(qRows * parts * s.headDim * 4, 'ann attention partials');
    const partMl = step.scratch(qRows * parts * 8, 'ann attention partial stats');
    if (others) attentionDecodePartials(step, { ...a, kvLen: step.upload(own, 'kv lengths without indexed rows'), partOut, partMl, partStride: parts, partBase: 0 });
    attentionDecodePartials(step, { ...annArgs, partOut, partMl, partStride: parts, partBase: p1 });
    attentionMerge(step, { partOut, partMl, out: a.out, rows: qRows, parts, headDim: s.headDim });
    return { rows, table, lengths, stride, scored: searched.map((x) => x.scored) };
  }

  /** Hook (c): frees everything held for `seq` (with its KV; also on preemption). */
  free(seq: number): void {
    for (const st of this.seqs.get(seq) ?? []) {
      st?.reservoir?.destroy();
      for (const i of st?.indexes ?? []) i.destroy();
    }
    this.seqs.delete(seq);
  }

  /**
   * `child` starts as a copy of `parent` (GpuModel.fork: a choice over the parent's prompt): it gets
   * a copy of the parent's query samples, copied now on the queue (after the steps that wrote them;
   * the parent may be freed before the next step). Built indexes are not copied: a child forked
   * after its parent's build samples its own decode queries and builds from them (minBuildTokens).
   */
  fork(parent: number, child: number): void {
    this.free(child);
    const layers = this.seqs.get(parent);
    if (!layers?.some((st) => st?.reservoir)) return;
    const encoder = this.gpu.device.createCommandEncoder({ label: 'ann fork' });
    const copy: LayerState[] = [];
    layers.forEach((st, l) => {
      if (!st?.reservoir) return;
      const reservoir = this.gpu.createBuffer(st.reservoir.size, 'ann build queries');
      encoder.copyBufferToBuffer(st.reservoir, 0, reservoir, 0, st.reservoir.size);
      copy[l] = { reservoir, from: st.from, to: st.to };
    });
    this.gpu.submit(encoder.finish());
    this.seqs.set(child, copy);
  }

  /** Frees every sequence's samples and indexes (with the model). */
  destroy(): void {
    for (const seq of [...this.seqs.keys()]) this.free(seq);
    for (const x of this.retired.splice(0)) x.buffer.destroy();
  }

  /** Builds the indexes of (seq at batch index b, layer) over its keys short of the recent window, from its sampled queries. */
  private build(step: Step, st: LayerState, layer: number, keysOf: (row: number) => KeySource, b: number, batch: AnnBatch): void {
    const s = this.shape;
    const G = this.group;
    const sampled = Math.min(this.buildTokens, st.to - st.from) * G;
    const block = this.buildTokens * G * s.headDim * 4;
    st.indexes = this.retrievalHeads[layer].map((h, hi) => {
      const row = b * s.nKvHeads + this.column(layer, h);
      const count = batch.lengths[row] - this.recent;
      return KeyIndex.build(step, {
        keys: keysOf(row),
        count,
        buildQueries: { buffer: st.reservoir!, offset: hi * block, size: sampled * s.headDim * 4 },
        buildCount: sampled,
        capacity: Math.max(count, s.maxTokens),
        options: this.options.index,
      });
    });
    this.retired.push({ step, buffer: st.reservoir! });
    st.reservoir = undefined;
  }

  private column(layer: number, h: number): number {
    return this.shape.columnOf ? this.shape.columnOf[layer * this.shape.nKvHeads + h] : h;
  }

  private state(seq: number, layer: number, from: number): LayerState {
    let layers = this.seqs.get(seq);
    if (!layers) this.seqs.set(seq, (layers = []));
    return (layers[layer] = { from, to: from });
  }

  /** Destroys reservoirs whose last reader was an earlier (so submitted) step. */
  private retire(step: Step): void {
    if (this.retired.length === 0) return;
    const keep = this.retired.filter((x) => x.step === step);
    for (const x of this.retired) if (x.step !== step) x.buffer.destroy();
    this.retired = keep;
  }
}

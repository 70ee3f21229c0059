import { type AttentionDecodeArgs, type PrefillSeq, attentionDecode, attentionPrefill, prefillMeta } from '../../kernels/attention.ts';
import { siluMul } from '../../kernels/elementwise.ts';
import { type GpuTokenId, copyTokenIds, embedding, gatherRows } from '../../kernels/embedding.ts';
import { type KvDtype, type WriteKvArgs, kvPoolBytes, writeKv } from '../../kernels/kv_cache.ts';
import { type MatmulArgs, type MatmulNorm, matmul } from '../../kernels/matmul.ts';
import { rmsScale } from '../../kernels/rmsnorm.ts';
import { type RopeKvArgs, rope, ropeFrequencies, ropeKv } from '../../kernels/rope.ts';
import { AnnAttention, type AnnAttentionOptions, type AnnChunk } from '../ann/ann_attention.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { BufferRange } from '../gpu/buffers.ts';
import type { Step } from '../gpu/step.ts';
import { type HeadPattern, headColumns } from '../kv/head_pattern.ts';
import { type BlockCopy, type HeadwiseKv, NO_SLOT, PagedKvTables, blocksForBudget } from '../kv/paged_kv.ts';
import type { ModelConfig } from './config.ts';
import { ModelFileError } from './gguf.ts';
import { type GpuTensor, uploadWeights } from './gpu_weights.ts';
import { type Linear, type ModelWeights, resolveWeights } from './layer_weights.ts';
import type { ModelSource } from './source.ts';

/** New tokens for one sequence in a forward pass: a prompt chunk, or one decoded token. */
export interface SeqChunk {
  seq: number;
  tokens: number[];
  /** a decoded token still on the GPU (a step's sampled id, not read back yet): read there, tokens = [a placeholder id] */
  gpuToken?: GpuTokenId;
}

export interface ModelOptions {
  /** KV cache memory, bytes (default 64 MiB) */
  kvMemoryBytes?: number;
  /** tokens per KV block (default 16) */
  blockSize?: number;
  /** head-wise KV (docs/headwise.md): retrieval heads keep full history, streaming heads sink + recent */
  headPattern?: HeadPattern;
  /** KV cache element type (default f32): f16 halves the cache, values packed in pairs (pack2x16float: no shader-f16 needed) */
  kvDtype?: KvDtype;
  /**
   * decode attention with a key index for long contexts (docs/ann.md; off when absent): only
   * retrieval heads (all heads without a pattern) get one; the static window defaults to the
   * pattern's sink and recent
   */
  ann?: AnnAttentionOptions;
  onProgress?: (done: number, total: number) => void;
}

export interface ForwardOptions {
  /** logits for every token, not only each chunk's last */
  allPositions?: boolean;
  /** called once each layer is recorded (its KV written): where KV export is recorded */
  afterLayer?: (layer: number) => void;
}

/**
 * One layer of one sequence's KV on the CPU: K (after RoPE) and V rows of headDim f32, one per
 * (token, KV head row) the sequence holds, token-major: [tokens, nKvHeads, headDim] without a head
 * pattern; with one, a ring's tokens it no longer holds are left out (GpuModel.exportSlots).
 */
export interface KvLayer {
  k: ArrayBuffer;
  v: ArrayBuffer;
}

/** Records the export of a sequence's KV, layer by layer (GpuModel.kvExporter). */
export interface KvExporter {
  /** rows of headDim per layer in each KvLayer */
  rows: number;
  layer(layer: number): Promise<KvLayer>;
}

export interface ForwardOutput {
  /** f32 [rows, vocab]: the last token of each chunk (in the order given), or every token */
  logits: GPUBuffer;
  rows: number;
}

const F32 = 4;

/**
 * A Llama-family model on the GPU with its paged KV cache. One forward pass is one step: the
 * chunks' tokens are packed ([decode tokens..., prompt chunks...]), every linear layer runs once
 * over all of them, decode tokens use split-K paged attention and prompt chunks causal
 * FlashAttention-style prefill over the same cache (so chunked prefill equals one pass).
 */
export class GpuModel {
  readonly kv: PagedKvTables;
  private readonly kPools: GPUBuffer[] = [];
  private readonly vPools: GPUBuffer[] = [];
  private readonly freqs: GPUBuffer;
  readonly blockSize: number;
  /** the KV pools' element type */
  readonly kvDtype: KvDtype;
  /** the head pattern it was loaded with (docs/headwise.md) */
  readonly headPattern?: HeadPattern;
  /** head-wise KV: the layout and where each layer's KV heads live (columnOf [nLayers, nKvHeads], also on the GPU) */
  readonly headwise?: HeadwiseKv & { columnOf: Uint32Array; columnBuf: GPUBuffer };
  /** block copies a fork still needs (K and V, every layer), by child: recorded at the start of the next forward */
  private readonly pendingCopies = new Map<number, BlockCopy[]>();
  /** decode attention with a key index (ModelOptions.ann; docs/ann.md) */
  readonly ann?: AnnAttention;
  /** the weights by layer and role, resolved once (forward builds no names) */
  private readonly weights: ModelWeights;

  private constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    private readonly w: Map<string, GpuTensor>,
    options: ModelOptions,
    ropeFreqFactors: Float32Array | null,
  ) {
    const c = config;
    this.weights = resolveWeights(w, c);
    this.blockSize = options.blockSize ?? 16;
    this.kvDtype = options.kvDtype ?? 'f32';
    if (this.kvDtype === 'f16' && c.headDim % 8 !== 0) throw new Error(`f16 KV needs a head dim that is a multiple of 8, the model's is ${c.headDim}`);
    const layout = { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: this.blockSize, bytesPerElement: kvPoolBytes(1, 1, 1, this.kvDtype) };
    const numBlocks = blocksForBudget(layout, options.kvMemoryBytes ?? 64 * 1024 * 1024);
    if (numBlocks < c.nKvHeads) throw new Error(`KV memory budget too small: not even one block per KV head`);
    const pattern = options.headPattern;
    this.headPattern = pattern;
    if (pattern) {
      if (pattern.kinds.length !== c.nLayers || pattern.kinds.some((row) => row.length !== c.nKvHeads)) {
        throw new Error(`head pattern has ${pattern.kinds.length} layers x ${pattern.kinds[0]?.length ?? 0} KV heads, the model ${c.nLayers} x ${c.nKvHeads}`);
      }
      const { fullColumns, columnOf } = headColumns(pattern);
      this.headwise = { fullColumns, sink: pattern.sink, recent: pattern.recent, columnOf, columnBuf: gpu.upload(columnOf, 'kv head columns') };
    }
    this.kv = new PagedKvTables(layout, numBlocks, this.headwise && { fullColumns: this.headwise.fullColumns, sink: this.headwise.sink, recent: this.headwise.recent });
    const poolBytes = kvPoolBytes(numBlocks, this.blockSize, c.headDim, this.kvDtype);
    for (let l = 0; l < c.nLayers; l++) {
      this.kPools.push(gpu.createBuffer(poolBytes, `k pool ${l}`));
      this.vPools.push(gpu.createBuffer(poolBytes, `v pool ${l}`));
    }
    const freqs = ropeFrequencies({ ropeDim: c.ropeDim, base: c.ropeBase, scaling: c.ropeScaling });
    // Llama 3.x GGUF files carry their RoPE scaling as per-frequency divisors (rope_freqs.weight)
    if (ropeFreqFactors) for (let i = 0; i < freqs.length; i++) freqs[i] /= ropeFreqFactors[i];
    this.freqs = gpu.upload(freqs, 'rope frequencies');
    if (options.ann) {
      const window = pattern && { sink: pattern.sink, recent: pattern.recent };
      const hw = this.headwise && { columnOf: this.headwise.columnOf, fullColumns: this.headwise.fullColumns };
      const shape = { nLayers: c.nLayers, nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: this.blockSize, dtype: this.kvDtype, maxTokens: c.contextLength, ...hw };
      this.ann = new AnnAttention(gpu, shape, { ...window, ...options.ann });
    }
  }

  static load(gpu: Gpu, source: ModelSource, options: ModelOptions = {}): GpuModel {
    checkTensors(source);
    const factors = ropeFreqFactors(source);
    return new GpuModel(gpu, source.config, uploadWeights(gpu, source, options.onProgress), options, factors);
  }

  /** Forgets a sequence: its KV blocks go back to the pool. */
  release(seq: number): void {
    this.kv.free(seq);
    this.pendingCopies.delete(seq);
    this.ann?.free(seq);
  }

  /**
   * Makes `child` hold the first `tokens` tokens of `parent`'s KV (whole blocks: see
   * PagedKvTables.fork); false, changing nothing, when the parent's rings no longer hold them.
   * A ring's blocks are copied, in the step of the next forward pass.
   */
  fork(parent: number, child: number, tokens: number): boolean {
    if (!this.kv.canFork(parent, tokens)) return false;
    const copies = this.kv.fork(parent, child, tokens);
    if (copies.length) this.pendingCopies.set(child, copies);
    this.ann?.fork(parent, child);
    return true;
  }

  /** Records the forks' pending block copies (before anything in the step writes the parents' rings). */
  private recordCopies(step: Step): void {
    const copies = [...this.pendingCopies.values()].flat();
    this.pendingCopies.clear();
    if (!copies.length) return;
    const bytes = kvPoolBytes(1, this.blockSize, this.config.headDim, this.kvDtype);
    // WebGPU copies only between different buffers: through a staging buffer
    const staging = step.scratch(copies.length * bytes, 'fork blocks');
    for (const pool of [...this.kPools, ...this.vPools]) {
      copies.forEach(({ from }, i) => step.copy(pool, from * bytes, staging, i * bytes, bytes));
      copies.forEach(({ to }, i) => step.copy(staging, i * bytes, pool, to * bytes, bytes));
    }
  }

  /**
   * Records one forward pass into `step`. Appends the chunks' tokens to their sequences' KV
   * (all or nothing: on KvPoolExhausted nothing is appended) and returns logits on the GPU.
   */
  forward(step: Step, chunks: SeqChunk[], options: ForwardOptions = {}): ForwardOutput {
    const c = this.config;
    // decode tokens first (contiguous rows for the decode kernel), then prompt chunks
    const order = [...chunks.keys()].sort((a, b) => Number(chunks[b].tokens.length === 1) - Number(chunks[a].tokens.length === 1));
    const nDecode = order.filter((i) => chunks[i].tokens.length === 1).length;
    const T = chunks.reduce((n, ch) => n + ch.tokens.length, 0);
    if (T === 0) throw new Error('forward: no tokens');
    for (const ch of chunks) for (const t of ch.tokens) if (!(t >= 0 && t < c.vocabSize)) throw new RangeError(`token id ${t} outside the vocabulary (${c.vocabSize})`);
    if (chunks.some((ch) => ch.gpuToken && ch.tokens.length !== 1)) throw new RangeError('forward: a token on the GPU is one decode token');

    const tokens = new Uint32Array(T);
    const positions = new Uint32Array(T);
    const slots = new Uint32Array(T * c.nKvHeads);
    const rowOfChunk = new Array<number>(chunks.length);
    const prefill: PrefillSeq[] = [];
    const appended: { seq: number; before: number }[] = [];
    try {
      let row = 0;
      order.forEach((ci, batchIndex) => {
        const ch = chunks[ci];
        // the next position (a ring may hold fewer slots than the sequence has tokens)
        const before = this.kv.has(ch.seq) ? this.kv.tokens(ch.seq) : 0;
        const s = this.kv.append(ch.seq, ch.tokens.length);
        appended.push({ seq: ch.seq, before });
        tokens.set(ch.tokens, row);
        for (let i = 0; i < ch.tokens.length; i++) positions[row + i] = before + i;
        slots.set(s, row * c.nKvHeads);
        if (batchIndex >= nDecode) prefill.push({ qStart: row, qLen: ch.tokens.length, ctxLen: before + ch.tokens.length, headRowBase: batchIndex * c.nKvHeads });
        row += ch.tokens.length;
        rowOfChunk[ci] = row - 1;
      });
    } catch (err) {
      for (const a of appended.reverse()) {
        if (a.before === 0) this.kv.free(a.seq);
        else this.kv.truncate(a.seq, a.before);
      }
      throw err;
    }
    const { table, lengths, stride } = this.kv.batchTables(order.map((ci) => chunks[ci].seq));
    this.recordCopies(step);
    const hw = this.headwise;
    // key-index attention (docs/ann.md): each chunk's packed rows and positions (its queries may be sampled), the decode batch
    const annChunks: AnnChunk[] = order.map((ci, i) => ({ seq: chunks[ci].seq, row: rowOfChunk[ci] + 1 - chunks[ci].tokens.length, position: appended[i].before, count: chunks[ci].tokens.length }));
    const annBatch = { seqs: annChunks.slice(0, nDecode).map((ch) => ch.seq), lengths };

    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const buf = (elements: number, label: string) => step.scratch(elements * F32, label);
    const tokenBuf = step.upload(tokens, 'tokens');
    copyTokenIds(step, tokenBuf, order.flatMap((ci) => (chunks[ci].gpuToken ? [{ row: rowOfChunk[ci], id: chunks[ci].gpuToken! }] : [])));
    const positionBuf = step.upload(positions, 'positions');
    const slotBuf = step.upload(slots, 'slots');
    const tableBuf = step.upload(table, 'block table');
    const lengthBuf = step.upload(lengths, 'kv lengths');
    const metaBuf = prefill.length ? step.upload(prefillMeta(prefill, hw?.columnOf), 'prefill meta') : null;
    const layerSlots = hw ? this.layerSlotMappings(step, slots, nDecode, metaBuf !== null) : null;

    const x = buf(T * c.dim, 'residual');
    const x2 = buf(T * c.dim, 'residual 2');
    const rs = buf(T, 'norm scales');
    const q = buf(T * qDim, 'q');
    const att = buf(T * qDim, 'attention');
    const act = buf(T * c.ffn, 'ffn activation');

    const W = this.weights;
    embedding(step, { table: W.embedding.buffer, tokens: tokenBuf, out: x, count: T, dim: c.dim, rows: c.vocabSize, format: W.embedding.format });
    /** a linear layer over T rows: its bias (when the model has q/k/v biases) or the given epilogue. */
    const lin = (input: GPUBuffer, { weight, bias }: Linear, out: GPUBuffer, n: number, kIn: number, extra: Pick<MatmulArgs, 'norm' | 'epilogue' | 'rowScales'> = {}) => {
      const epilogue = bias ? { kind: 'bias' as const, bias: bias.buffer } : extra.epilogue;
      matmul(step, { x: input, w: weight.buffer, out, m: T, n, k: kIn, format: weight.format, norm: extra.norm, epilogue, rowScales: extra.rowScales });
    };
    // every norm takes the row scales (rs) that the matmul before it wrote
    const scaled = (weight: GpuTensor): MatmulNorm => ({ weight: weight.buffer, scale: rs });
    const ropeArgs = { positions: positionBuf, freqs: this.freqs, tokens: T, headDim: c.headDim, ropeDim: c.ropeDim, mode: c.ropeMode };
    const shape = { nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim };
    // the same for every layer: computed once
    // (column 0 is a full column whenever one exists, so kv.length bounds every head row)
    const maxKvLen = nDecode > 0 ? Math.max(...order.slice(0, nDecode).map((ci) => this.kv.length(chunks[ci].seq))) : 0;
    const maxQLen = prefill.length > 0 ? Math.max(...prefill.map((s) => s.qLen)) : 0;
    // q/k/v and gate/up are one matmul each where their weights were fused at load (gpu_weights.ts);
    // a layer whose parts differ in format runs them separately, into these buffers
    const once = (elements: number, label: string) => {
      let b: GPUBuffer | undefined;
      return () => (b ??= buf(elements, label));
    };
    const qkv = once(T * (qDim + 2 * kvDim), 'qkv');
    const [k, v] = [once(T * kvDim, 'k'), once(T * kvDim, 'v')];
    const [gate, up] = [once(T * c.ffn, 'ffn gate'), once(T * c.ffn, 'ffn up')];

    // every layer's arguments built once per step and pointed at the layer's pools (object spreads per
    // dispatch were a tenth of the host's recording time)
    const packed = this.kvDtype === 'f16';
    const fusedRows = { stride: qDim + 2 * kvDim, kOffset: qDim, vOffset: qDim + kvDim };
    const pools = { kPool: this.kPools[0], vPool: this.vPools[0], blockTable: tableBuf, tableStride: stride, blockSize: this.blockSize, dtype: this.kvDtype };
    const kvWrite: WriteKvArgs = { kPool: pools.kPool, vPool: pools.vPool, tokens: T, nKvHeads: c.nKvHeads, headDim: c.headDim, dtype: this.kvDtype, k: q, v: q, slotMapping: slotBuf };
    const ropeKvArgs: RopeKvArgs = { positions: positionBuf, freqs: this.freqs, tokens: T, nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, ropeDim: c.ropeDim, mode: c.ropeMode, qkv: q, q, kPool: pools.kPool, vPool: pools.vPool, slotMapping: slotBuf, keepK: false, writeKv: !packed };
    const columns = hw && { columnOf: hw.columnBuf, layer: 0 };
    const decodeArgs: AttentionDecodeArgs = { kPool: pools.kPool, vPool: pools.vPool, blockTable: tableBuf, tableStride: stride, blockSize: this.blockSize, dtype: this.kvDtype, nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim, q, out: att, kvLen: lengthBuf, batch: nDecode, maxKvLen, columns };
    const rowScales = { out: rs, eps: c.rmsEps };
    const residualIntoX2 = { epilogue: { kind: 'residual' as const, residual: x }, rowScales };
    const residualIntoX = { epilogue: { kind: 'residual' as const, residual: x2 }, rowScales };
    const swiglu = { kind: 'swiglu' as const };

    // the first layer's attention norm scales; the next layer's (or the output norm's) come with each down projection
    rmsScale(step, { x, out: rs, rows: T, dim: c.dim, eps: c.rmsEps });
    for (let l = 0; l < c.nLayers; l++) {
      const lw = W.layers[l];
      pools.kPool = kvWrite.kPool = ropeKvArgs.kPool = decodeArgs.kPool = this.kPools[l];
      pools.vPool = kvWrite.vPool = ropeKvArgs.vPool = decodeArgs.vPool = this.vPools[l];
      if (columns) columns.layer = l;
      // head-wise: the slots written before attention (all but the prompt chunks' ring entries, written after it)
      const ls = layerSlots?.(l);
      kvWrite.slotMapping = ropeKvArgs.slotMapping = ls?.before ?? slotBuf;
      // x -> q, and k, v into the cache; the rotated new K (and V) rows where a ring's prefill reads them
      let newRows: { k: GPUBuffer; v: GPUBuffer; source?: { stride: number; kOffset: number; vOffset: number } };
      const attnNorm = scaled(lw.attnNorm);
      if ('qkv' in lw.attn) {
        lin(x, lw.attn.qkv, qkv(), qDim + 2 * kvDim, c.dim, { norm: attnNorm });
        // f16 pools: the rotated rows stay in qkv and writeKv packs them (rope_kv writes f32 pools only)
        ropeKvArgs.qkv = qkv();
        ropeKvArgs.keepK = ls?.after !== undefined;
        ropeKv(step, ropeKvArgs);
        newRows = { k: qkv(), v: qkv(), source: fusedRows };
      } else {
        lin(x, lw.attn.q, q, qDim, c.dim, { norm: attnNorm });
        lin(x, lw.attn.k, k(), kvDim, c.dim, { norm: attnNorm });
        lin(x, lw.attn.v, v(), kvDim, c.dim, { norm: attnNorm });
        rope(step, { ...ropeArgs, x: q, heads: c.nHeads });
        rope(step, { ...ropeArgs, x: k(), heads: c.nKvHeads });
        newRows = { k: k(), v: v() };
      }
      kvWrite.k = newRows.k;
      kvWrite.v = newRows.v;
      kvWrite.source = newRows.source;
      if (!('qkv' in lw.attn) || packed) writeKv(step, kvWrite);
      this.ann?.collect(step, l, q, annChunks);
      if (nDecode > 0) {
        if (this.ann) this.ann.attentionDecode(step, l, decodeArgs, annBatch);
        else attentionDecode(step, decodeArgs);
      }
      if (metaBuf) {
        const src = newRows.source;
        const headwise = hw && { layer: l, fullColumns: hw.fullColumns, sink: hw.sink, recent: hw.recent, kNew: newRows.k, vNew: newRows.v, newStride: src?.stride, kOffset: src?.kOffset, vOffset: src?.vOffset };
        attentionPrefill(step, { ...pools, ...shape, q, out: att, meta: metaBuf, numSeqs: prefill.length, maxQLen, headwise });
      }
      // the prompt chunks' ring entries, now that the chunks' attention has read the rings as they were
      if (ls?.after) {
        kvWrite.slotMapping = ls.after;
        writeKv(step, kvWrite);
      }
      // x2 = x + attention . Wo
      lin(att, lw.output, x2, c.dim, qDim, residualIntoX2);
      // x = x2 + (silu(gate) * up) . Wdown, gate and up from normalised x2
      const ffnNorm = scaled(lw.ffnNorm);
      if ('gateUp' in lw.ffn) {
        lin(x2, lw.ffn.gateUp, act, c.ffn, c.dim, { norm: ffnNorm, epilogue: swiglu });
      } else {
        lin(x2, lw.ffn.gate, gate(), c.ffn, c.dim, { norm: ffnNorm });
        lin(x2, lw.ffn.up, up(), c.ffn, c.dim, { norm: ffnNorm });
        siluMul(step, { gate: gate(), up: up(), out: act, count: T * c.ffn });
      }
      lin(act, lw.down, x, c.dim, c.ffn, residualIntoX);
      options.afterLayer?.(l);
    }

    // logits only for the rows asked for (each chunk's last token, in the caller's chunk order):
    // gather them first with an f32 "embedding" lookup of the residual rows
    // (with their output norm's row scales, which the last down projection wrote as every layer's does)
    let rows = T;
    let final = x;
    let finalScales = rs;
    if (!options.allPositions) {
      rows = chunks.length;
      const rowIds = step.upload(Uint32Array.from(rowOfChunk), 'last rows');
      final = buf(rows * c.dim, 'last rows');
      finalScales = buf(rows, 'last rows norm scales');
      gatherRows(step, { table: x, tokens: rowIds, out: final, count: rows, dim: c.dim, rows: T, format: 'f32' });
      gatherRows(step, { table: rs, tokens: rowIds, out: finalScales, count: rows, dim: 1, rows: T, format: 'f32' });
    }
    const logits = buf(rows * c.vocabSize, 'logits');
    const headNorm = { weight: W.outputNorm.buffer, scale: finalScales };
    matmul(step, { x: final, w: W.head.buffer, out: logits, m: rows, n: c.vocabSize, k: c.dim, format: W.head.format, norm: headNorm });
    return { logits, rows };
  }

  /**
   * Head-wise KV: per layer, the step's slot mapping [token][KV head] split in two (docs/headwise.md):
   * `before` attention, every slot but the prompt chunks' (tokens from `nDecode` on) ring entries;
   * `after` it, only those (absent when there are none). Layers with the same columns share buffers.
   */
  private layerSlotMappings(step: Step, slots: Uint32Array, nDecode: number, prefill: boolean): (layer: number) => { before: BufferRange; after?: BufferRange } {
    const hw = this.headwise!;
    const nKv = this.config.nKvHeads;
    const T = slots.length / nKv;
    const byColumns = new Map<string, { before: BufferRange; after?: BufferRange }>();
    return (layer) => {
      const cols = hw.columnOf.subarray(layer * nKv, (layer + 1) * nKv);
      const key = cols.join(',');
      let m = byColumns.get(key);
      if (!m) {
        const before = new Uint32Array(slots.length);
        const after = new Uint32Array(slots.length).fill(NO_SLOT);
        for (let t = 0; t < T; t++) {
          for (let h = 0; h < nKv; h++) {
            const slot = slots[t * nKv + cols[h]];
            const late = t >= nDecode && cols[h] >= hw.fullColumns;
            before[t * nKv + h] = late ? NO_SLOT : slot;
            if (late) after[t * nKv + h] = slot;
          }
        }
        const ring = prefill && hw.fullColumns < nKv;
        m = { before: step.upload(before, 'slots before attention'), after: ring ? step.upload(after, 'slots after attention') : undefined };
        byColumns.set(key, m);
      }
      return m;
    };
  }

  /**
   * The pool slots of what `seq` holds, in KvLayer's order: for each token, for each head row
   * (column) that holds it. Without a pattern every row holds every token (kv.slotsOf); a ring
   * holds only its sink and latest tokens. A receiver with the same pattern appending as many
   * tokens gets the same rows in the same order (its append's slots, NO_SLOT left out).
   */
  exportSlots(seq: number): Uint32Array {
    if (!this.headwise) return this.kv.slotsOf(seq);
    const nKv = this.config.nKvHeads;
    const byToken = new Uint32Array(this.kv.tokens(seq) * nKv).fill(NO_SLOT);
    for (let col = 0; col < nKv; col++) {
      const { slots, positions } = this.kv.heldSlots(seq, col);
      positions.forEach((pos, i) => (byToken[pos * nKv + col] = slots[i]));
    }
    return byToken.filter((s) => s !== NO_SLOT);
  }

  /**
   * For exporting the KV `seq` holds now: records a copy of one layer's K and V (gathered from the
   * sequence's blocks with the f32 row-gather kernel) and a read-back that resolves when that much
   * of the step has run (see Step.flush). The slots are found and uploaded once, for every layer.
   */
  kvExporter(step: Step, seq: number): KvExporter {
    const c = this.config;
    const slots = this.exportSlots(seq);
    const rows = slots.length;
    const bytes = rows * c.headDim * F32;
    const slotBuf = step.upload(slots, 'export slots');
    const poolRows = this.kv.pool.numBlocks * this.blockSize;
    const gather = (pool: GPUBuffer, label: string) => {
      const out = step.scratch(bytes, label);
      gatherRows(step, { table: pool, tokens: slotBuf, out, count: rows, dim: c.headDim, rows: poolRows, format: this.kvDtype });
      return step.readback(out, 0, bytes);
    };
    return {
      rows,
      layer: (layer) => {
        const k = gather(this.kPools[layer], 'export k');
        const v = gather(this.vPools[layer], 'export v');
        const kvLayer = Promise.all([k, v]).then(([kb, vb]) => ({ k: kb, v: vb }));
        kvLayer.catch(() => {}); // a failed step throws from submit(); an unawaited export must not crash the process
        return kvLayer;
      },
    };
  }

  /**
   * Records the write of one layer of imported KV (rows of headDim f32, KvLayer's order) into the
   * slots `slots` that `kv.append` gave the receiving sequence (NO_SLOT entries left out).
   */
  importLayer(step: Step, slots: Uint32Array, layer: number, kv: { k: ArrayBufferView; v: ArrayBufferView }): void {
    const c = this.config;
    const expect = slots.length * c.headDim * F32;
    if (kv.k.byteLength !== expect || kv.v.byteLength !== expect) throw new RangeError(`imported KV layer ${layer}: ${kv.k.byteLength} bytes, expected ${expect} (${slots.length} rows)`);
    if (!(layer >= 0 && layer < c.nLayers)) throw new RangeError(`imported KV layer ${layer}: the model has ${c.nLayers} layers`);
    writeKv(step, {
      k: step.upload(kv.k, 'import k'),
      v: step.upload(kv.v, 'import v'),
      kPool: this.kPools[layer],
      vPool: this.vPools[layer],
      slotMapping: step.upload(slots, 'import slots'),
      // a row per entry: its slot says where it goes
      tokens: slots.length,
      nKvHeads: 1,
      headDim: c.headDim,
      dtype: this.kvDtype,
    });
  }

  destroy(): void {
    for (const t of this.w.values()) t.buffer.destroy();
    for (const b of [...this.kPools, ...this.vPools, this.freqs]) b.destroy();
    this.headwise?.columnBuf.destroy();
    this.ann?.destroy();
  }
}

const REQUIRED_PER_LAYER = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_up', 'ffn_down'];

function checkTensors(s: ModelSource): void {
  const need = ['token_embd.weight', 'output_norm.weight'];
  for (let l = 0; l < s.config.nLayers; l++) for (const n of REQUIRED_PER_LAYER) need.push(`blk.${l}.${n}.weight`);
  const missing = need.filter((n) => !s.tensors.has(n));
  if (missing.length) throw new ModelFileError(`${s.path}: missing tensors ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
  if (s.config.qkvBias) {
    const biases = [];
    for (let l = 0; l < s.config.nLayers; l++) for (const n of ['attn_q', 'attn_k', 'attn_v']) biases.push(`blk.${l}.${n}.bias`);
    const absent = biases.filter((n) => !s.tensors.has(n));
    if (absent.length) throw new ModelFileError(`${s.path}: ${s.config.architecture} needs q/k/v biases; missing ${absent.slice(0, 3).join(', ')}`);
  }
}

/** Per-frequency RoPE divisors (rope_freqs.weight, Llama 3.x GGUF), or null. */
export function ropeFreqFactors(s: ModelSource): Float32Array | null {
  const t = s.tensors.get('rope_freqs.weight');
  if (!t) return null;
  if (t.typeName !== 'F32' || t.dims[0] !== s.config.ropeDim / 2) {
    throw new ModelFileError(`${s.path}: rope_freqs.weight must be F32 [${s.config.ropeDim / 2}], got ${t.typeName} [${t.dims.join(', ')}]`);
  }
  const b = t.read();
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

import { type PrefillSeq, attentionDecode, attentionPrefill, prefillMeta } from '../../kernels/attention.ts';
import { siluMul } from '../../kernels/elementwise.ts';
import { embedding } from '../../kernels/embedding.ts';
import { writeKv } from '../../kernels/kv_cache.ts';
import { type MatmulEpilogue, type MatmulNorm, matmul } from '../../kernels/matmul.ts';
import { rmsScale } from '../../kernels/rmsnorm.ts';
import { rope, ropeFrequencies, ropeKv } from '../../kernels/rope.ts';
import type { Gpu } from '../gpu/gpu.ts';
import type { Step } from '../gpu/step.ts';
import { PagedKvTables, blocksForBudget } from '../kv/paged_kv.ts';
import type { ModelConfig } from './config.ts';
import { ModelFileError } from './gguf.ts';
import { type GpuTensor, uploadWeights } from './gpu_weights.ts';
import type { ModelSource } from './source.ts';

/** New tokens for one sequence in a forward pass: a prompt chunk, or one decoded token. */
export interface SeqChunk {
  seq: number;
  tokens: number[];
}

export interface ModelOptions {
  /** KV cache memory, bytes (default 64 MiB) */
  kvMemoryBytes?: number;
  /** tokens per KV block (default 16) */
  blockSize?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ForwardOptions {
  /** logits for every token, not only each chunk's last */
  allPositions?: boolean;
  /** called once each layer is recorded (its KV written): where KV export is recorded */
  afterLayer?: (layer: number) => void;
}

/** One layer of one sequence's KV on the CPU: K (after RoPE) and V rows [tokens, nKvHeads, headDim], f32. */
export interface KvLayer {
  k: ArrayBuffer;
  v: ArrayBuffer;
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

  private constructor(
    readonly gpu: Gpu,
    readonly config: ModelConfig,
    private readonly w: Map<string, GpuTensor>,
    options: ModelOptions,
    ropeFreqFactors: Float32Array | null,
  ) {
    const c = config;
    this.blockSize = options.blockSize ?? 16;
    const layout = { nLayers: c.nLayers, nKvHeads: c.nKvHeads, headDim: c.headDim, blockSize: this.blockSize, bytesPerElement: F32 };
    const numBlocks = blocksForBudget(layout, options.kvMemoryBytes ?? 64 * 1024 * 1024);
    if (numBlocks < c.nKvHeads) throw new Error(`KV memory budget too small: not even one block per KV head`);
    this.kv = new PagedKvTables(layout, numBlocks);
    const poolBytes = numBlocks * this.blockSize * c.headDim * F32;
    for (let l = 0; l < c.nLayers; l++) {
      this.kPools.push(gpu.createBuffer(poolBytes, `k pool ${l}`));
      this.vPools.push(gpu.createBuffer(poolBytes, `v pool ${l}`));
    }
    const freqs = ropeFrequencies({ ropeDim: c.ropeDim, base: c.ropeBase, scaling: c.ropeScaling });
    // Llama 3.x GGUF files carry their RoPE scaling as per-frequency divisors (rope_freqs.weight)
    if (ropeFreqFactors) for (let i = 0; i < freqs.length; i++) freqs[i] /= ropeFreqFactors[i];
    this.freqs = gpu.upload(freqs, 'rope frequencies');
  }

  static load(gpu: Gpu, source: ModelSource, options: ModelOptions = {}): GpuModel {
    checkTensors(source);
    const factors = ropeFreqFactors(source);
    return new GpuModel(gpu, source.config, uploadWeights(gpu, source, options.onProgress), options, factors);
  }

  /** Forgets a sequence: its KV blocks go back to the pool. */
  release(seq: number): void {
    this.kv.free(seq);
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
        const before = this.kv.has(ch.seq) ? this.kv.length(ch.seq) : 0;
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

    const qDim = c.nHeads * c.headDim;
    const kvDim = c.nKvHeads * c.headDim;
    const buf = (elements: number, label: string) => step.scratch(elements * F32, label);
    const tokenBuf = step.upload(tokens, 'tokens');
    const positionBuf = step.upload(positions, 'positions');
    const slotBuf = step.upload(slots, 'slots');
    const tableBuf = step.upload(table, 'block table');
    const lengthBuf = step.upload(lengths, 'kv lengths');
    const metaBuf = prefill.length ? step.upload(prefillMeta(prefill), 'prefill meta') : null;

    const x = buf(T * c.dim, 'residual');
    const x2 = buf(T * c.dim, 'residual 2');
    const rs = buf(T, 'norm scales');
    const q = buf(T * qDim, 'q');
    const att = buf(T * qDim, 'attention');
    const act = buf(T * c.ffn, 'ffn activation');

    const emb = this.w.get('token_embd.weight')!;
    embedding(step, { table: emb.buffer, tokens: tokenBuf, out: x, count: T, dim: c.dim, rows: c.vocabSize, format: emb.format });
    /** `name`'s matmul over T rows: its bias (when the model has q/k/v biases) or the given epilogue. */
    const lin = (input: GPUBuffer, name: string, out: GPUBuffer, n: number, kIn: number, extra: { norm?: MatmulNorm; epilogue?: MatmulEpilogue } = {}) => {
      const t = this.w.get(`${name}.weight`)!;
      const bias = c.qkvBias ? this.w.get(`${name}.bias`) : undefined;
      const epilogue = bias ? { kind: 'bias' as const, bias: bias.buffer } : extra.epilogue;
      matmul(step, { x: input, w: t.buffer, out, m: T, n, k: kIn, format: t.format, norm: extra.norm, epilogue });
    };
    const normOf = (input: GPUBuffer, weight: string, rows = T): MatmulNorm => {
      rmsScale(step, { x: input, out: rs, rows, dim: c.dim, eps: c.rmsEps });
      return { weight: this.w.get(weight)!.buffer, scale: rs };
    };
    const ropeArgs = { positions: positionBuf, freqs: this.freqs, tokens: T, headDim: c.headDim, ropeDim: c.ropeDim, mode: c.ropeMode };
    const shape = { nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim };
    // the same for every layer: computed once
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

    for (let l = 0; l < c.nLayers; l++) {
      const p = `blk.${l}.`;
      const pools = { kPool: this.kPools[l], vPool: this.vPools[l], blockTable: tableBuf, tableStride: stride, blockSize: this.blockSize };
      // x -> q, and k, v into the cache
      const attnNorm = normOf(x, `${p}attn_norm.weight`);
      if (this.w.has(`${p}attn_qkv.weight`)) {
        lin(x, `${p}attn_qkv`, qkv(), qDim + 2 * kvDim, c.dim, { norm: attnNorm });
        ropeKv(step, { ...ropeArgs, ...shape, qkv: qkv(), q, kPool: pools.kPool, vPool: pools.vPool, slotMapping: slotBuf });
      } else {
        lin(x, `${p}attn_q`, q, qDim, c.dim, { norm: attnNorm });
        lin(x, `${p}attn_k`, k(), kvDim, c.dim, { norm: attnNorm });
        lin(x, `${p}attn_v`, v(), kvDim, c.dim, { norm: attnNorm });
        rope(step, { ...ropeArgs, x: q, heads: c.nHeads });
        rope(step, { ...ropeArgs, x: k(), heads: c.nKvHeads });
        writeKv(step, { k: k(), v: v(), kPool: pools.kPool, vPool: pools.vPool, slotMapping: slotBuf, tokens: T, nKvHeads: c.nKvHeads, headDim: c.headDim });
      }
      if (nDecode > 0) attentionDecode(step, { ...pools, ...shape, q, out: att, kvLen: lengthBuf, batch: nDecode, maxKvLen });
      if (metaBuf) attentionPrefill(step, { ...pools, ...shape, q, out: att, meta: metaBuf, numSeqs: prefill.length, maxQLen });
      // x2 = x + attention . Wo
      lin(att, `${p}attn_output`, x2, c.dim, qDim, { epilogue: { kind: 'residual', residual: x } });
      // x = x2 + (silu(gate) * up) . Wdown, gate and up from normalised x2
      const ffnNorm = normOf(x2, `${p}ffn_norm.weight`);
      if (this.w.has(`${p}ffn_gate_up.weight`)) {
        lin(x2, `${p}ffn_gate_up`, act, c.ffn, c.dim, { norm: ffnNorm, epilogue: { kind: 'swiglu' } });
      } else {
        lin(x2, `${p}ffn_gate`, gate(), c.ffn, c.dim, { norm: ffnNorm });
        lin(x2, `${p}ffn_up`, up(), c.ffn, c.dim, { norm: ffnNorm });
        siluMul(step, { gate: gate(), up: up(), out: act, count: T * c.ffn });
      }
      lin(act, `${p}ffn_down`, x, c.dim, c.ffn, { epilogue: { kind: 'residual', residual: x2 } });
      options.afterLayer?.(l);
    }

    // logits only for the rows asked for (each chunk's last token, in the caller's chunk order):
    // gather them first with an f32 "embedding" lookup of the residual rows
    let rows = T;
    let final = x;
    if (!options.allPositions) {
      rows = chunks.length;
      final = buf(rows * c.dim, 'last rows');
      embedding(step, { table: x, tokens: step.upload(Uint32Array.from(rowOfChunk), 'last rows'), out: final, count: rows, dim: c.dim, rows: T, format: 'f32' });
    }
    const logits = buf(rows * c.vocabSize, 'logits');
    const head = this.w.get('output.weight') ?? emb;
    const headNorm = normOf(final, 'output_norm.weight', rows);
    matmul(step, { x: final, w: head.buffer, out: logits, m: rows, n: c.vocabSize, k: c.dim, format: head.format, norm: headNorm });
    return { logits, rows };
  }

  /**
   * For exporting the KV `seq` holds now: returns a function that records a copy of one layer's K
   * and V (gathered from the sequence's blocks with the f32 row-gather kernel) and a read-back
   * that resolves when that much of the step has run (see Step.flush). The slots are found and
   * uploaded once, for every layer.
   */
  kvExporter(step: Step, seq: number): (layer: number) => Promise<KvLayer> {
    const c = this.config;
    const slots = this.kv.slotsOf(seq);
    const rows = slots.length;
    const bytes = rows * c.headDim * F32;
    const slotBuf = step.upload(slots, 'export slots');
    const poolRows = this.kv.pool.numBlocks * this.blockSize;
    const gather = (pool: GPUBuffer, label: string) => {
      const out = step.scratch(bytes, label);
      embedding(step, { table: pool, tokens: slotBuf, out, count: rows, dim: c.headDim, rows: poolRows, format: 'f32' });
      return step.readback(out, 0, bytes);
    };
    return (layer) => {
      const k = gather(this.kPools[layer], 'export k');
      const v = gather(this.vPools[layer], 'export v');
      const kvLayer = Promise.all([k, v]).then(([kb, vb]) => ({ k: kb, v: vb }));
      kvLayer.catch(() => {}); // a failed step throws from submit(); an unawaited export must not crash the process
      return kvLayer;
    };
  }

  /**
   * Records the write of one layer of imported KV (rows [tokens, nKvHeads, headDim], f32) into the
   * slots `slots` that `kv.append` gave the receiving sequence.
   */
  importLayer(step: Step, slots: Uint32Array, layer: number, kv: { k: ArrayBufferView; v: ArrayBufferView }): void {
    const c = this.config;
    const tokens = slots.length / c.nKvHeads;
    const expect = slots.length * c.headDim * F32;
    if (kv.k.byteLength !== expect || kv.v.byteLength !== expect) throw new RangeError(`imported KV layer ${layer}: ${kv.k.byteLength} bytes, expected ${expect} (${tokens} tokens)`);
    if (!(layer >= 0 && layer < c.nLayers)) throw new RangeError(`imported KV layer ${layer}: the model has ${c.nLayers} layers`);
    writeKv(step, {
      k: step.upload(kv.k, 'import k'),
      v: step.upload(kv.v, 'import v'),
      kPool: this.kPools[layer],
      vPool: this.vPools[layer],
      slotMapping: step.upload(slots, 'import slots'),
      tokens,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
    });
  }

  destroy(): void {
    for (const t of this.w.values()) t.buffer.destroy();
    for (const b of [...this.kPools, ...this.vPools, this.freqs]) b.destroy();
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

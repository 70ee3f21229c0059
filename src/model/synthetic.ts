import { MODEL_SHAPES, type ModelShape, type ShapeScale, findModelShape, reducedShape } from './shapes.ts';
import type { RopeScaling } from '../../kernels/rope.ts';
import { QK, type WeightFormat, encodeWeights, isQuantized, weightBytes } from '../../kernels/weights.ts';
import { mulberry32 } from '../util/rng.ts';
import { type Architecture, type ModelConfig, validateConfig } from './config.ts';
import type { ModelSource, TensorSource, TensorTypeName } from './source.ts';
import type { EncodeOptions, Tokenizer } from './tokenizer/index.ts';
import { TokenType, type Vocab, partitionSpecial } from './tokenizer/vocab.ts';

/**
 * Synthetic models: the tensors of a real model's GGUF file (names, types, dims, byte layout)
 * filled with random values instead of trained ones, for benchmarks that need a model of a given
 * size and format but no file. Throughput does not depend on the values; the values are only kept
 * small enough (weights uniform with standard deviation 1/sqrt(K), RMSNorm weights 1) that every
 * activation and logit stays finite.
 *
 * Generating gigabytes with a JS PRNG would take minutes, so each tensor is a tiling of one encoded
 * random pattern of PATTERN_BLOCKS quantisation blocks (per format and value scale), started at a
 * block offset that depends on the tensor name. The pattern length is prime in blocks, so rows of
 * every width start at different points of it; filling a tensor is a few memcpy doublings.
 *
 * Like llama.cpp's `--pure` quantisation, every matrix, the token embedding and the output head
 * included, is stored in the requested format; norms (and Qwen2's q/k/v biases) are F32.
 */

export type SyntheticDtype = WeightFormat;

/** What a shape alone does not say about a model: architecture, tied head, RoPE, norms. */
interface ModelTraits {
  architecture: Architecture;
  /** no output.weight: the head is token_embd (Llama-3.2-1B, llama2.c's stories models) */
  tiedEmbeddings: boolean;
  ropeBase: number;
  ropeScaling?: RopeScaling;
  contextLength: number;
  rmsEps: number;
}

const TRAITS: Record<string, ModelTraits> = {
  'stories260K': { architecture: 'llama', tiedEmbeddings: true, ropeBase: 10000, contextLength: 512, rmsEps: 1e-5 },
  'Llama-3.2-1B': {
    architecture: 'llama',
    tiedEmbeddings: true,
    ropeBase: 500000,
    ropeScaling: { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
    contextLength: 131072,
    rmsEps: 1e-5,
  },
  'Llama-3-8B': { architecture: 'llama', tiedEmbeddings: false, ropeBase: 500000, contextLength: 8192, rmsEps: 1e-5 },
  'Qwen2.5-7B': { architecture: 'qwen2', tiedEmbeddings: false, ropeBase: 1000000, contextLength: 32768, rmsEps: 1e-6 },
};

const DEFAULT_TRAITS: ModelTraits = { architecture: 'llama', tiedEmbeddings: false, ropeBase: 10000, contextLength: 4096, rmsEps: 1e-5 };

/** Traits of a shape: by its model name (reduced shapes are named "<model>/8 (reduced)"). */
function traitsOf(shape: ModelShape): ModelTraits {
  const base = shape.name.split('/')[0];
  return TRAITS[base] ?? DEFAULT_TRAITS;
}

/** A model shape by MODEL_SHAPES key (case-insensitive), full or scaled down like `benchShapes('reduced')`. */
export function syntheticShape(name: string, scale: ShapeScale = 'full'): ModelShape {
  const full = findModelShape(name);
  if (!full) throw new Error(`unknown synthetic model "${name}" (known: ${Object.keys(MODEL_SHAPES).join(', ')})`);
  if (scale === 'full') return full;
  // like benchShapes: the test model stays as it is, the others are named "<name>/8 (reduced)"
  return full === MODEL_SHAPES['stories260k'] ? full : reducedShape(full);
}

export interface SyntheticOptions {
  /** for a shape given by name: full size or scaled down (default full) */
  scale?: ShapeScale;
  /** pattern seed (default 1): same seed, same bytes */
  seed?: number;
}

const TYPE_NAME: Record<WeightFormat, TensorTypeName> = { f32: 'F32', f16: 'F16', bf16: 'BF16', q8_0: 'Q8_0', q4_0: 'Q4_0' };

/** Elements per unit the pattern is counted in: a quantisation block, or 32 plain elements. */
const PATTERN_BLOCKS = 4093; // prime

/** FNV-1a, for a per-tensor pattern offset. */
function hashName(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/**
 * A model with random weights in `shape` and `dtype`, as a ModelSource that GpuModel.load takes like
 * a file. Tensor bytes are produced when read() is called (one tensor at a time during upload).
 */
export function syntheticModel(shape: ModelShape | string, dtype: SyntheticDtype, options: SyntheticOptions = {}): ModelSource {
  const s = typeof shape === 'string' ? syntheticShape(shape, options.scale ?? 'full') : shape;
  const traits = traitsOf(s);
  const seed = options.seed ?? 1;
  const config: ModelConfig = {
    architecture: traits.architecture,
    name: `${s.name} (synthetic ${dtype})`,
    dim: s.dim,
    ffn: s.ffn,
    nLayers: s.nLayers,
    nHeads: s.nHeads,
    nKvHeads: s.nKvHeads,
    headDim: s.headDim,
    vocabSize: s.vocab,
    contextLength: traits.contextLength,
    rmsEps: traits.rmsEps,
    ropeBase: traits.ropeBase,
    ropeDim: s.headDim,
    ropeMode: traits.architecture === 'qwen2' ? 'neox' : 'normal',
    ropeScaling: traits.ropeScaling,
    qkvBias: traits.architecture === 'qwen2',
  };
  const path = `synthetic:${s.name}:${dtype}`;
  validateConfig(config, path);
  const qDim = s.nHeads * s.headDim;
  const kvDim = s.nKvHeads * s.headDim;
  if (isQuantized(dtype)) {
    for (const k of new Set([s.dim, qDim, s.ffn])) {
      if (k % QK !== 0) throw new Error(`${path}: ${dtype} needs every matrix row length to be a multiple of ${QK}; this shape has rows of ${k}`);
    }
  }

  const patterns = new Map<string, Uint8Array>();
  /** The encoded pattern, twice over (so any rotation is one contiguous slice), for values of std 1/sqrt(k). */
  const pattern = (k: number): Uint8Array => {
    const key = `${dtype}:${k}`;
    let p = patterns.get(key);
    if (!p) {
      const next = mulberry32(seed + k);
      const half = Math.sqrt(3 / k); // uniform in [-half, half] has std 1/sqrt(k)
      const values = new Float32Array(PATTERN_BLOCKS * QK);
      for (let i = 0; i < values.length; i++) values[i] = (2 * next() - 1) * half;
      const once = encodeWeights(dtype, values, PATTERN_BLOCKS, QK);
      p = new Uint8Array(2 * once.length);
      p.set(once, 0);
      p.set(once, once.length);
      patterns.set(key, p);
    }
    return p;
  };

  const tensors = new Map<string, TensorSource>();
  /** A matrix of n rows of k elements in the model's dtype. */
  const matrix = (name: string, n: number, k: number) => {
    const bytes = weightBytes(dtype, n, k);
    tensors.set(name, {
      name,
      typeName: TYPE_NAME[dtype],
      dims: [k, n],
      bytes,
      read: () => {
        const doubled = pattern(k);
        const period = doubled.length / 2;
        const unit = period / PATTERN_BLOCKS; // bytes of one block (or of 32 plain elements)
        const start = (hashName(name) % PATTERN_BLOCKS) * unit;
        const out = new Uint8Array(bytes);
        // whole blocks throughout: bytes and period are both multiples of the block size
        out.set(doubled.subarray(start, start + Math.min(period, bytes)));
        for (let filled = Math.min(period, bytes); filled < bytes; filled *= 2) out.copyWithin(filled, 0, Math.min(filled, bytes - filled));
        return out;
      },
    });
  };
  /** An F32 vector: ones (norm weights) or small random values (biases). */
  const vector = (name: string, n: number, fill: 'ones' | 'random') => {
    tensors.set(name, {
      name,
      typeName: 'F32',
      dims: [n],
      bytes: n * 4,
      read: () => {
        const v = new Float32Array(n);
        if (fill === 'ones') v.fill(1);
        else {
          const next = mulberry32(seed ^ hashName(name));
          for (let i = 0; i < n; i++) v[i] = (2 * next() - 1) * 0.1;
        }
        return new Uint8Array(v.buffer);
      },
    });
  };

  // in llama.cpp's GGUF order
  matrix('token_embd.weight', s.vocab, s.dim);
  for (let l = 0; l < s.nLayers; l++) {
    const p = `blk.${l}.`;
    vector(`${p}attn_norm.weight`, s.dim, 'ones');
    matrix(`${p}attn_q.weight`, qDim, s.dim);
    matrix(`${p}attn_k.weight`, kvDim, s.dim);
    matrix(`${p}attn_v.weight`, kvDim, s.dim);
    if (config.qkvBias) {
      vector(`${p}attn_q.bias`, qDim, 'random');
      vector(`${p}attn_k.bias`, kvDim, 'random');
      vector(`${p}attn_v.bias`, kvDim, 'random');
    }
    matrix(`${p}attn_output.weight`, s.dim, qDim);
    vector(`${p}ffn_norm.weight`, s.dim, 'ones');
    matrix(`${p}ffn_gate.weight`, s.ffn, s.dim);
    matrix(`${p}ffn_up.weight`, s.ffn, s.dim);
    matrix(`${p}ffn_down.weight`, s.dim, s.ffn);
  }
  vector('output_norm.weight', s.dim, 'ones');
  if (!traits.tiedEmbeddings) matrix('output.weight', s.vocab, s.dim);

  return { path, format: 'synthetic', config, tensors, tokenizer: new ByteTokenizer(s.vocab) };
}

/**
 * The synthetic models' tokenizer: byte-level. Ids 0-255 are the bytes (`<0xXX>`, type BYTE), 256 is
 * BOS `<|synthetic_bos|>` and 257 EOS `<|synthetic_eos|>` (CONTROL; BOS is added, EOS not), and the
 * rest of the vocabulary, up to the model's size, is `<|unused_N|>` (UNUSED). Encoding is the text's
 * UTF-8 bytes, one token each (control-token text becomes its id with parseSpecial); decoding gives
 * a byte token its byte and every other token nothing, as llama.cpp renders control and unused
 * tokens. Random weights produce random ids, so generated text is mostly empty: benchmarks feed ids.
 */
export class ByteTokenizer implements Tokenizer {
  static readonly BOS = 256;
  static readonly EOS = 257;
  readonly vocab: Vocab;

  constructor(vocabSize: number) {
    if (!Number.isInteger(vocabSize) || vocabSize < 258) throw new RangeError(`a byte-level vocabulary needs at least 258 tokens, got ${vocabSize}`);
    const tokens = new Array<string>(vocabSize);
    const types = new Uint8Array(vocabSize).fill(TokenType.UNUSED);
    for (let b = 0; b < 256; b++) {
      tokens[b] = `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
      types[b] = TokenType.BYTE;
    }
    tokens[ByteTokenizer.BOS] = '<|synthetic_bos|>';
    tokens[ByteTokenizer.EOS] = '<|synthetic_eos|>';
    types[ByteTokenizer.BOS] = types[ByteTokenizer.EOS] = TokenType.CONTROL;
    for (let i = 258; i < vocabSize; i++) tokens[i] = `<|unused_${i - 258}|>`;
    this.vocab = {
      tokens,
      scores: new Float32Array(vocabSize),
      types,
      bos: ByteTokenizer.BOS,
      eos: ByteTokenizer.EOS,
      unk: null,
      addBos: true,
      addEos: false,
      addSpacePrefix: false,
    };
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (options.addSpecial !== false && this.vocab.addBos) ids.push(ByteTokenizer.BOS);
    const utf8 = new TextEncoder();
    for (const part of partitionSpecial(text, this.vocab, options.parseSpecial ?? false)) {
      if (typeof part === 'number') ids.push(part);
      else for (const b of utf8.encode(part)) ids.push(b);
    }
    return ids;
  }

  tokenBytes(id: number): Uint8Array {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocab.tokens.length) throw new RangeError(`token id ${id} outside the vocabulary (${this.vocab.tokens.length})`);
    return id < 256 ? Uint8Array.of(id) : new Uint8Array(0);
  }
}

import type { RopeMode, RopeScaling } from '../../kernels/rope.ts';
import { ModelFileError } from './gguf.ts';

/** Architectures the forward pass implements (Llama family incl. TinyStories/SmolLM/Mistral, and Qwen2). */
export const SUPPORTED_ARCHITECTURES = ['llama', 'qwen2'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];


export interface ModelConfig {
  architecture: Architecture;
  name: string;
  dim: number;
  ffn: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  contextLength: number;
  rmsEps: number;
  ropeBase: number;
  ropeDim: number;
  /** 'normal' rotates adjacent pairs (llama.cpp's LLAMA_ROPE_TYPE_NORM), 'neox' the two halves */
  ropeMode: RopeMode;
  ropeScaling?: RopeScaling;
  /** q/k/v projections carry biases (Qwen2) */
  qkvBias: boolean;
}

function num(md: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = md[key];
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (fallback !== undefined) return fallback;
  throw new ModelFileError(`${file}: metadata key ${key} is missing`);
}

/** The model's shape and hyperparameters from GGUF metadata (`<arch>.*` keys, llama.cpp's names). */
export function configFromGgufMetadata(md: Record<string, unknown>, file: string): ModelConfig {
  const arch = String(md['general.architecture'] ?? '');
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelFileError(`${file}: architecture "${arch}" is not supported (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`);
  }
  const architecture = arch as Architecture;
  const dim = num(md, `${arch}.embedding_length`, file);
  const nHeads = num(md, `${arch}.attention.head_count`, file);
  const headDim = num(md, `${arch}.attention.key_length`, file, dim / nHeads);
  const tokens = md['tokenizer.ggml.tokens'];
  const config: ModelConfig = {
    architecture,
    name: String(md['general.name'] ?? arch),
    dim,
    ffn: num(md, `${arch}.feed_forward_length`, file),
    nLayers: num(md, `${arch}.block_count`, file),
    nHeads,
    nKvHeads: num(md, `${arch}.attention.head_count_kv`, file, nHeads),
    headDim,
    vocabSize: num(md, `${arch}.vocab_size`, file, Array.isArray(tokens) ? tokens.length : NaN),
    contextLength: num(md, `${arch}.context_length`, file),
    rmsEps: num(md, `${arch}.attention.layer_norm_rms_epsilon`, file),
    ropeBase: num(md, `${arch}.rope.freq_base`, file, 10000),
    ropeDim: num(md, `${arch}.rope.dimension_count`, file, headDim),
    ropeMode: architecture === 'qwen2' ? 'neox' : 'normal',
    qkvBias: architecture === 'qwen2',
  };
  const scaling = md[`${arch}.rope.scaling.type`];
  if (scaling === 'linear') config.ropeScaling = { type: 'linear', factor: num(md, `${arch}.rope.scaling.factor`, file) };
  else if (scaling !== undefined && scaling !== 'none') throw new ModelFileError(`${file}: rope scaling "${String(scaling)}" is not supported (linear; Llama 3 scaling via rope_freqs)`);
  validateConfig(config, file);
  return config;
}

export function validateConfig(c: ModelConfig, file: string): void {
  const positive = ['dim', 'ffn', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'contextLength', 'ropeDim'] as const;
  for (const k of positive) {
    if (!Number.isInteger(c[k]) || c[k] <= 0 || c[k] > 2 ** 31) throw new ModelFileError(`${file}: ${k} = ${c[k]} is not a valid size`);
  }
  if (c.nHeads % c.nKvHeads !== 0) throw new ModelFileError(`${file}: ${c.nHeads} query heads cannot share ${c.nKvHeads} KV heads evenly`);
  if (c.ropeDim > c.headDim || c.ropeDim % 2 !== 0) throw new ModelFileError(`${file}: rope dimension ${c.ropeDim} does not fit head dimension ${c.headDim}`);
  if (!(c.rmsEps > 0 && c.rmsEps < 1)) throw new ModelFileError(`${file}: RMSNorm epsilon ${c.rmsEps} is out of range`);
}

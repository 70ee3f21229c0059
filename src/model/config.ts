import type { RopeMode, RopeScaling } from '../../kernels/rope.ts';
import { ModelFileError, quoted, shown } from './gguf.ts';
import type { Vocab } from './tokenizer/vocab.ts';

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

/** The ModelConfig values a file states (everything but the architecture's fixed traits). */
type ConfigValue = 'dim' | 'ffn' | 'nLayers' | 'nHeads' | 'nKvHeads' | 'headDim' | 'vocabSize' | 'contextLength' | 'ropeDim' | 'rmsEps' | 'ropeBase';

/**
 * Where each config value comes from in its model file (a GGUF metadata key, a config.json key, a
 * llama2.c header field), so that an error names what the user can look at in the file.
 */
export type ConfigFields = Record<ConfigValue, string>;

/** Config values named as ModelConfig names them (models that are not read from a file). */
export const CONFIG_NAMES: ConfigFields = {
  dim: 'dim',
  ffn: 'ffn',
  nLayers: 'nLayers',
  nHeads: 'nHeads',
  nKvHeads: 'nKvHeads',
  headDim: 'headDim',
  vocabSize: 'vocabSize',
  contextLength: 'contextLength',
  ropeDim: 'ropeDim',
  rmsEps: 'rmsEps',
  ropeBase: 'ropeBase',
};

/** The GGUF metadata keys a config read by configFromGgufMetadata comes from. */
export function ggufConfigFields(md: Record<string, unknown>): ConfigFields {
  const a = String(md['general.architecture'] ?? '');
  const has = (key: string) => md[`${a}.${key}`] !== undefined;
  const headDim = has('attention.key_length') ? `${a}.attention.key_length` : `${a}.embedding_length / ${a}.attention.head_count`;
  return {
    dim: `${a}.embedding_length`,
    ffn: `${a}.feed_forward_length`,
    nLayers: `${a}.block_count`,
    nHeads: `${a}.attention.head_count`,
    nKvHeads: has('attention.head_count_kv') ? `${a}.attention.head_count_kv` : `${a}.attention.head_count (no head_count_kv)`,
    headDim,
    vocabSize: has('vocab_size') ? `${a}.vocab_size` : 'tokenizer.ggml.tokens',
    contextLength: `${a}.context_length`,
    ropeDim: has('rope.dimension_count') ? `${a}.rope.dimension_count` : headDim,
    rmsEps: `${a}.attention.layer_norm_rms_epsilon`,
    ropeBase: `${a}.rope.freq_base`,
  };
}

function num(md: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = md[key];
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  if (v === undefined && fallback !== undefined) return fallback;
  if (v === undefined) throw new ModelFileError(`${file}: metadata key ${key} is missing`);
  throw new ModelFileError(`${file}: ${key}: expected a number, got ${shown(v)}`);
}

/** The model's shape and hyperparameters from GGUF metadata (`<arch>.*` keys, llama.cpp's names). */
export function configFromGgufMetadata(md: Record<string, unknown>, file: string): ModelConfig {
  const arch = String(md['general.architecture'] ?? '');
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ModelFileError(`${file}: architecture ${quoted(arch)} is not supported (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`);
  }
  const architecture = arch as Architecture;
  const dim = num(md, `${arch}.embedding_length`, file);
  const nHeads = num(md, `${arch}.attention.head_count`, file);
  const headDim = num(md, `${arch}.attention.key_length`, file, dim / nHeads);
  const tokens = md['tokenizer.ggml.tokens'];
  if (md[`${arch}.vocab_size`] === undefined && !Array.isArray(tokens)) {
    throw new ModelFileError(`${file}: tokenizer.ggml.tokens: missing (the vocabulary size comes from it; ${arch}.vocab_size is not set either)`);
  }
  const config: ModelConfig = {
    architecture,
    name: String(md['general.name'] ?? arch),
    dim,
    ffn: num(md, `${arch}.feed_forward_length`, file),
    nLayers: num(md, `${arch}.block_count`, file),
    nHeads,
    nKvHeads: num(md, `${arch}.attention.head_count_kv`, file, nHeads),
    headDim,
    vocabSize: num(md, `${arch}.vocab_size`, file, Array.isArray(tokens) ? tokens.length : 0),
    contextLength: num(md, `${arch}.context_length`, file),
    rmsEps: num(md, `${arch}.attention.layer_norm_rms_epsilon`, file),
    ropeBase: num(md, `${arch}.rope.freq_base`, file, 10000),
    ropeDim: num(md, `${arch}.rope.dimension_count`, file, headDim),
    ropeMode: architecture === 'qwen2' ? 'neox' : 'normal',
    qkvBias: architecture === 'qwen2',
  };
  const scaling = md[`${arch}.rope.scaling.type`];
  if (scaling === 'linear') {
    const key = `${arch}.rope.scaling.factor`;
    const factor = num(md, key, file);
    if (!(factor > 0 && Number.isFinite(factor))) throw new ModelFileError(`${file}: ${key}: ${shown(factor)} is not a valid scaling factor (expected a positive number)`);
    config.ropeScaling = { type: 'linear', factor };
  } else if (scaling !== undefined && scaling !== 'none') throw new ModelFileError(`${file}: rope scaling ${shown(scaling)} is not supported (linear; Llama 3 scaling via rope_freqs)`);
  validateConfig(config, file, ggufConfigFields(md));
  return config;
}

/**
 * Checks a config's sizes and hyperparameters; `fields` says where each value came from, and the
 * error (one line) names that field.
 */
export function validateConfig(c: ModelConfig, file: string, fields: ConfigFields = CONFIG_NAMES): void {
  const positive = ['dim', 'ffn', 'nLayers', 'nHeads', 'nKvHeads', 'headDim', 'vocabSize', 'contextLength', 'ropeDim'] as const;
  for (const k of positive) {
    if (Number.isInteger(c[k]) && c[k] > 0 && c[k] <= 2 ** 31) continue;
    // a head dimension derived as dim / heads: the head count is what fails to divide
    if (k === 'headDim' && fields.headDim.includes(' / ')) {
      throw new ModelFileError(`${file}: ${fields.nHeads}: ${c.nHeads} heads do not divide ${fields.dim} = ${c.dim} (expected a divisor of ${c.dim})`);
    }
    throw new ModelFileError(`${file}: ${fields[k]}: ${k} = ${shown(c[k])} is not a valid size (expected a whole number in 1..2^31)`);
  }
  if (c.nHeads % c.nKvHeads !== 0) {
    throw new ModelFileError(`${file}: ${fields.nKvHeads}: ${c.nHeads} query heads cannot share ${c.nKvHeads} KV heads evenly (expected a divisor of ${fields.nHeads} = ${c.nHeads})`);
  }
  if (c.ropeDim > c.headDim || c.ropeDim % 2 !== 0) {
    throw new ModelFileError(`${file}: ${fields.ropeDim}: rope dimension ${c.ropeDim} does not fit head dimension ${c.headDim} (expected an even number up to ${c.headDim})`);
  }
  if (!(c.rmsEps > 0 && c.rmsEps < 1)) throw new ModelFileError(`${file}: ${fields.rmsEps}: RMSNorm epsilon is ${shown(c.rmsEps)} (expected a number in (0, 1))`);
  if (!(c.ropeBase > 0 && Number.isFinite(c.ropeBase))) throw new ModelFileError(`${file}: ${fields.ropeBase}: RoPE base is ${shown(c.ropeBase)} (expected a positive number)`);
}

/** What a tensor dimension is made of. */
type DimSource = 'dim' | 'ffn' | 'vocab' | 'q' | 'kv' | 'ropeHalf';

/** Per tensor kind (the GGUF name without `blk.N.`), its dims in GGUF order (dims[0] contiguous). */
const TENSOR_DIMS: Record<string, DimSource[]> = {
  'token_embd.weight': ['dim', 'vocab'],
  'output.weight': ['dim', 'vocab'],
  'output_norm.weight': ['dim'],
  'rope_freqs.weight': ['ropeHalf'],
  'attn_norm.weight': ['dim'],
  'ffn_norm.weight': ['dim'],
  'attn_q.weight': ['dim', 'q'],
  'attn_k.weight': ['dim', 'kv'],
  'attn_v.weight': ['dim', 'kv'],
  'attn_output.weight': ['q', 'dim'],
  'ffn_gate.weight': ['dim', 'ffn'],
  'ffn_up.weight': ['dim', 'ffn'],
  'ffn_down.weight': ['ffn', 'dim'],
  'attn_q.bias': ['q'],
  'attn_k.bias': ['kv'],
  'attn_v.bias': ['kv'],
};
const LAYER_WEIGHTS = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate', 'ffn_up', 'ffn_down'];
const QKV_BIASES = ['attn_q.bias', 'attn_k.bias', 'attn_v.bias'];

/** Each dim of a tensor (GGUF order) and what the config says it is, or undefined for a name the forward pass does not use. */
export function expectedDims(name: string, c: ModelConfig): { size: number; source: DimSource }[] | undefined {
  const kind = name.replace(/^blk\.\d+\./, '');
  if (!c.qkvBias && QKV_BIASES.includes(kind)) return undefined;
  const sizes: Record<DimSource, number> = { dim: c.dim, ffn: c.ffn, vocab: c.vocabSize, q: c.nHeads * c.headDim, kv: c.nKvHeads * c.headDim, ropeHalf: c.ropeDim / 2 };
  return TENSOR_DIMS[kind]?.map((source) => ({ size: sizes[source], source }));
}

function describeSource(s: DimSource, c: ModelConfig, f: ConfigFields): string {
  switch (s) {
    case 'dim':
      return `${f.dim} = ${c.dim}`;
    case 'ffn':
      return `${f.ffn} = ${c.ffn}`;
    case 'vocab':
      return `${f.vocabSize} (${c.vocabSize} tokens)`;
    case 'q':
      return `${f.nHeads} = ${c.nHeads} heads of ${c.headDim}`;
    case 'kv':
      return `${f.nKvHeads} = ${c.nKvHeads} KV heads of ${c.headDim}`;
    case 'ropeHalf':
      return `${f.ropeDim} = ${c.ropeDim} (half of it)`;
  }
}

/**
 * Checks a model's tensor set against its config: every tensor the forward pass reads is there
 * with exactly the shape the config implies (embedding, per-layer attention with its head counts,
 * FFN, norms, biases where the architecture has them; output and rope_freqs when present), no layer
 * beyond the layer count, nothing the forward pass would silently ignore. `label` turns a GGUF
 * tensor name into the file's own name for messages.
 */
export function checkTensorShapes(
  file: string,
  c: ModelConfig,
  tensors: Map<string, { dims: number[] }>,
  fields: ConfigFields,
  label: (gguf: string) => string = (n) => n,
): void {
  const show = (d: number[]) => `[${d.join(', ')}]`;
  for (const [name, t] of tensors) {
    const layer = /^blk\.(\d+)\./.exec(name);
    if (layer && Number(layer[1]) >= c.nLayers) {
      throw new ModelFileError(`${file}: ${fields.nLayers}: tensor ${quoted(label(name))} belongs to layer ${layer[1]} but ${fields.nLayers} = ${c.nLayers} (expected layers 0..${c.nLayers - 1})`);
    }
    const want = expectedDims(name, c);
    if (!want) throw new ModelFileError(`${file}: tensor ${quoted(label(name))}: not part of a ${c.architecture} model as wgserve implements it`);
    // trailing dims of 1 carry no data (a [64, 1] norm is a [64] norm)
    const got = t.dims.length > 1 && t.dims.slice(1).every((d) => d === 1) ? t.dims.slice(0, 1) : t.dims;
    const sizes = want.map((w) => w.size);
    if (got.length !== want.length) throw new ModelFileError(`${file}: tensor ${quoted(label(name))}: ${got.length} dims where the config implies ${want.length} (expected ${show(sizes)}, got ${show(t.dims)})`);
    const i = want.findIndex((w, k) => w.size !== got[k]);
    if (i >= 0) {
      throw new ModelFileError(`${file}: tensor ${quoted(label(name))}: dimension ${i} is ${got[i]} but ${describeSource(want[i].source, c, fields)} implies ${want[i].size} (expected ${show(sizes)}, got ${show(t.dims)})`);
    }
  }
  const missing = (name: string, why: string) => new ModelFileError(`${file}: tensor ${quoted(label(name))}: missing (${why})`);
  for (const name of ['token_embd.weight', 'output_norm.weight']) if (!tensors.has(name)) throw missing(name, 'every model has one');
  // layer by layer, stopping at the first gap: a corrupt layer count must not make a list of that length
  const perLayer = [...LAYER_WEIGHTS.map((n) => `${n}.weight`), ...(c.qkvBias ? QKV_BIASES : [])];
  for (let l = 0; l < c.nLayers; l++) {
    for (const kind of perLayer) {
      const name = `blk.${l}.${kind}`;
      if (!tensors.has(name)) throw missing(name, `${fields.nLayers} = ${c.nLayers} implies layers 0..${c.nLayers - 1}${QKV_BIASES.includes(kind) ? `, and ${c.architecture} has q/k/v biases` : ''}`);
    }
  }
}

/** Checks a tokenizer against the config: one token per embedding row, BOS/EOS/UNK inside the vocabulary. */
export function checkVocabulary(file: string, c: ModelConfig, vocab: Pick<Vocab, 'tokens' | 'bos' | 'eos' | 'unk'>, fields: ConfigFields): void {
  const n = vocab.tokens.length;
  if (n !== c.vocabSize) throw new ModelFileError(`${file}: ${fields.vocabSize}: the model has ${c.vocabSize} tokens but its tokenizer has ${n} (expected ${n}, got ${c.vocabSize})`);
  for (const [which, id] of [['BOS', vocab.bos], ['EOS', vocab.eos], ['UNK', vocab.unk]] as const) {
    if (id !== null && !(Number.isInteger(id) && id >= 0 && id < n)) throw new ModelFileError(`${file}: tokenizer: the ${which} id is outside the vocabulary (expected 0..${n - 1}, got ${shown(id)})`);
  }
}

import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { RopeScaling } from '../../kernels/rope.ts';
import { type Architecture, type ConfigFields, type ModelConfig, checkTensorShapes, checkVocabulary, expectedDims, validateConfig } from './config.ts';
import { ModelFileError, quoted } from './gguf.ts';
import { type SafetensorsTensor, openSafetensorsDir, readSafetensorsBytes } from './safetensors.ts';
import type { ModelSource, TensorSource } from './source.ts';
import { readOptionalJson, tokenizerFromHfDir } from './tokenizer/hf.ts';

/** config.json `model_type`s wgserve runs, and the forward pass each maps to. */
const MODEL_TYPES: Record<string, Architecture> = { llama: 'llama', mistral: 'llama', qwen2: 'qwen2' };

/** Per-layer Hugging Face module names -> llama.cpp's GGUF tensor names. */
const LAYER_NAMES: Record<string, string> = {
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
};
const GLOBAL_NAMES: Record<string, string> = { 'model.embed_tokens': 'token_embd', 'model.norm': 'output_norm', lm_head: 'output' };

/** llama.cpp's GGUF name for a Hugging Face tensor name, or undefined when it is not one we map. */
export function ggufTensorName(hfName: string): string | undefined {
  const m = /^(.*)\.(weight|bias)$/.exec(hfName);
  if (!m) return undefined;
  const [, module, kind] = m;
  const global = GLOBAL_NAMES[module];
  if (global) return `${global}.${kind}`;
  const layer = /^model\.layers\.(\d+)\.(.+)$/.exec(module);
  const name = layer && LAYER_NAMES[layer[2]];
  return name ? `blk.${Number(layer[1])}.${name}.${kind}` : undefined;
}

/** The Hugging Face name of a GGUF tensor name (for messages; the inverse of ggufTensorName). */
export function hfTensorName(gguf: string): string {
  const m = /^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)$/.exec(gguf);
  const module = m && (m[1] === undefined ? Object.keys(GLOBAL_NAMES).find((k) => GLOBAL_NAMES[k] === m[2]) : Object.keys(LAYER_NAMES).find((k) => LAYER_NAMES[k] === m[2]));
  if (!m || !module) return gguf;
  return m[1] === undefined ? `${module}.${m[3]}` : `model.layers.${m[1]}.${module}.${m[3]}`;
}

/** The config.json keys a config read by configFromHf comes from. */
function hfConfigFields(hf: Record<string, unknown>): ConfigFields {
  const headDim = hf.head_dim !== undefined && hf.head_dim !== null ? 'head_dim' : 'hidden_size / num_attention_heads';
  return {
    dim: 'hidden_size',
    ffn: 'intermediate_size',
    nLayers: 'num_hidden_layers',
    nHeads: 'num_attention_heads',
    nKvHeads: 'num_key_value_heads',
    headDim,
    vocabSize: 'vocab_size',
    contextLength: 'max_position_embeddings',
    ropeDim: hf.partial_rotary_factor !== undefined ? `${headDim} x partial_rotary_factor` : headDim,
    rmsEps: 'rms_norm_eps',
    ropeBase: 'rope_theta',
  };
}

/** Buffers some checkpoints save that are not weights (recomputed from the config). */
const IGNORED = /^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/;

/**
 * A Hugging Face model directory: config.json (llama / mistral / qwen2), safetensors weights (one
 * file or shards listed by model.safetensors.index.json), tokenizer.json (+ tokenizer_config.json)
 * and the chat template. Tensors get llama.cpp's GGUF names; their data is used as stored
 * ([out, in] row-major = GGUF dims [in, out]). Hugging Face keeps q/k unpermuted and rotates the two
 * halves of each head, so RoPE runs in NeoX mode.
 */
export function openHfModel(dir: string): ModelSource {
  const configFile = join(dir, 'config.json');
  if (!existsSync(configFile)) throw new ModelFileError(`${configFile}: config.json not found (a Hugging Face model directory needs one)`);
  const hf = readOptionalJson(dir, 'config.json')!;
  const config = configFromHf(hf, configFile, basename(dir));
  const tokenizer = tokenizerFromHfDir(dir);
  const stored = openSafetensorsDir(dir);
  const tied = hf.tie_word_embeddings === true;

  const tensors = new Map<string, TensorSource>();
  for (const t of stored.values()) {
    if (IGNORED.test(t.name)) continue;
    const name = ggufTensorName(t.name);
    if (!name) throw new ModelFileError(`${t.file}: tensor ${quoted(t.name)} is not part of a ${String(hf.model_type)} model as wgserve implements it`);
    if (name === 'output.weight' && tied) continue; // tied: the embedding is the output projection
    const layer = /^blk\.(\d+)\./.exec(name);
    if (layer && Number(layer[1]) >= config.nLayers) throw new ModelFileError(`${t.file}: tensor ${quoted(t.name)} is beyond num_hidden_layers = ${config.nLayers}`);
    const want = expectedShape(name, config);
    if (want && (want.length !== t.shape.length || want.some((d, i) => d !== t.shape[i]))) {
      throw new ModelFileError(`${t.file}: tensor ${quoted(t.name)} has shape [${t.shape.join(', ')}] but config.json implies [${want.join(', ')}]`);
    }
    tensors.set(name, tensorSource(name, t));
  }
  if (!tied && !tensors.has('output.weight')) throw new ModelFileError(`${dir}: lm_head.weight is missing and tie_word_embeddings is not set`);
  if (!tensors.has('token_embd.weight')) throw new ModelFileError(`${dir}: model.embed_tokens.weight is missing`);
  const fields = hfConfigFields(hf);
  checkTensorShapes(dir, config, tensors, fields, hfTensorName);
  checkVocabulary(join(dir, 'tokenizer.json'), config, tokenizer.vocab, fields);

  return { path: dir, format: 'hf', config, tensors, tokenizer, chatTemplate: chatTemplate(dir) };
}

function tensorSource(name: string, t: SafetensorsTensor): TensorSource {
  const dims = t.shape.length ? [...t.shape].reverse() : [1];
  // 1-D tensors keep their dtype too: the GPU loader widens every non-f32 vector (src/model/gpu_weights.ts)
  return { name, typeName: t.dtype, dims, bytes: t.bytes, read: () => readSafetensorsBytes(t) };
}

/** The shape (row-major, as safetensors lists it) config.json implies for a mapped tensor. */
function expectedShape(name: string, c: ModelConfig): number[] | undefined {
  return expectedDims(name, c)
    ?.map((d) => d.size)
    .reverse();
}

function num(hf: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = hf[key];
  if (typeof v === 'number') return v;
  if ((v === undefined || v === null) && fallback !== undefined) return fallback;
  throw new ModelFileError(`${file}: ${key} is ${v === undefined ? 'missing' : `not a number (${JSON.stringify(v)})`}`);
}

/** ModelConfig from a Hugging Face config.json (transformers' defaults where a key is absent). */
export function configFromHf(hf: Record<string, unknown>, file: string, name = 'hf'): ModelConfig {
  const type = hf.model_type;
  const architecture = typeof type === 'string' ? MODEL_TYPES[type] : undefined;
  if (!architecture) {
    throw new ModelFileError(`${file}: model_type ${JSON.stringify(type ?? null)} is not supported (supported: ${Object.keys(MODEL_TYPES).join(', ')})`);
  }
  const act = hf.hidden_act ?? 'silu';
  if (act !== 'silu') throw new ModelFileError(`${file}: hidden_act "${String(act)}" is not supported (silu is)`);
  if (hf.mlp_bias === true) throw new ModelFileError(`${file}: mlp_bias is not supported`);
  if (architecture === 'llama' && hf.attention_bias === true) throw new ModelFileError(`${file}: attention_bias (a bias on o_proj too) is not supported`);

  const dim = num(hf, 'hidden_size', file);
  const nHeads = num(hf, 'num_attention_heads', file);
  const headDim = num(hf, 'head_dim', file, dim / nHeads);
  // transformers 5 moves rope_theta and rope_scaling into rope_parameters
  const ropeParams = (hf.rope_parameters ?? undefined) as Record<string, unknown> | undefined;
  const ropeBase = typeof ropeParams?.rope_theta === 'number' ? ropeParams.rope_theta : num(hf, 'rope_theta', file, 10000);
  const partial = num(hf, 'partial_rotary_factor', file, 1);
  let contextLength = num(hf, 'max_position_embeddings', file);
  // without sliding-window attention, a windowed model is only exact within its window
  const window = hf.sliding_window;
  const windowed = architecture === 'qwen2' ? hf.use_sliding_window === true : hf.use_sliding_window !== false;
  if (windowed && typeof window === 'number' && window > 0 && window < contextLength) contextLength = window;

  const config: ModelConfig = {
    architecture,
    name: typeof hf._name_or_path === 'string' && hf._name_or_path ? hf._name_or_path : name,
    dim,
    ffn: num(hf, 'intermediate_size', file),
    nLayers: num(hf, 'num_hidden_layers', file),
    nHeads,
    nKvHeads: num(hf, 'num_key_value_heads', file, nHeads),
    headDim,
    vocabSize: num(hf, 'vocab_size', file),
    contextLength,
    rmsEps: num(hf, 'rms_norm_eps', file, 1e-6),
    ropeBase,
    ropeDim: Math.floor(headDim * partial),
    ropeMode: 'neox',
    qkvBias: architecture === 'qwen2',
  };
  const scaling = ropeScaling(hf.rope_scaling ?? (ropeParams?.rope_type !== undefined ? ropeParams : undefined), file);
  if (scaling) config.ropeScaling = scaling;
  validateConfig(config, file, hfConfigFields(hf));
  return config;
}

function ropeScaling(s: unknown, file: string): RopeScaling | undefined {
  if (s === undefined || s === null) return undefined;
  if (typeof s !== 'object') throw new ModelFileError(`${file}: rope_scaling is not an object`);
  const r = s as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const n = (key: string) => {
    const v = r[key];
    if (typeof v !== 'number') throw new ModelFileError(`${file}: rope_scaling.${key} is missing`);
    return v;
  };
  if (type === 'default') return undefined;
  if (type === 'linear') return { type: 'linear', factor: n('factor') };
  if (type === 'llama3') {
    return { type: 'llama3', factor: n('factor'), lowFreqFactor: n('low_freq_factor'), highFreqFactor: n('high_freq_factor'), originalMaxPositions: n('original_max_position_embeddings') };
  }
  throw new ModelFileError(`${file}: rope_scaling type ${JSON.stringify(type ?? null)} is not supported (linear, llama3)`);
}

/**
 * The chat template: chat_template.jinja (newer transformers), chat_template.json, or
 * tokenizer_config.json's chat_template (a string, or named templates: "default" or the first).
 */
function chatTemplate(dir: string): string | undefined {
  const jinja = join(dir, 'chat_template.jinja');
  if (existsSync(jinja) && statSync(jinja).isFile()) return readFileSync(jinja, 'utf8');
  const fromJson = (j: Record<string, unknown> | undefined): string | undefined => {
    const t = j?.chat_template;
    if (typeof t === 'string') return t;
    if (Array.isArray(t)) {
      const named = t as { name?: unknown; template?: unknown }[];
      const pick = named.find((x) => x?.name === 'default') ?? named[0];
      return typeof pick?.template === 'string' ? pick.template : undefined;
    }
    return undefined;
  };
  return fromJson(readOptionalJson(dir, 'chat_template.json')) ?? fromJson(readOptionalJson(dir, 'tokenizer_config.json'));
}

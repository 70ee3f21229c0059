import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { type ConfigFields, type ModelConfig, validateConfig } from './config.ts';
import { ModelFileError } from './gguf.ts';
import type { TensorSource } from './source.ts';

/** The header fields (llama2.c's names) each config value comes from; eps and RoPE base are fixed. */
export const LLAMA2C_FIELDS: ConfigFields = {
  dim: 'dim',
  ffn: 'hidden_dim',
  nLayers: 'n_layers',
  nHeads: 'n_heads',
  nKvHeads: 'n_kv_heads',
  headDim: 'dim / n_heads',
  vocabSize: 'vocab_size',
  contextLength: 'seq_len',
  ropeDim: 'dim / n_heads',
  rmsEps: 'rms_norm_eps (fixed)',
  ropeBase: 'rope_theta (fixed)',
};

/**
 * llama2.c's legacy fp32 checkpoint: a 7 x int32 header (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size — negative when the classifier is stored separately — and seq_len), then
 * fp32 weights grouped by kind across layers. Tensors get llama.cpp's GGUF names so the loader
 * treats both formats alike. The header must describe the file exactly: its sizes imply the file's
 * length to the byte.
 */
export function openLlama2c(path: string): { config: ModelConfig; tensors: Map<string, TensorSource> } {
  const size = statSync(path).size;
  const header = Buffer.alloc(28);
  const fd = openSync(path, 'r');
  try {
    if (readSync(fd, header, 0, 28, 0) < 28) throw new ModelFileError(`${path}: too short for a llama2.c checkpoint header`);
  } finally {
    closeSync(fd);
  }
  const [dim, hidden, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = Array.from({ length: 7 }, (_, i) => header.readInt32LE(4 * i));
  const vocab = Math.abs(vocabRaw);
  const config: ModelConfig = {
    architecture: 'llama',
    name: 'llama2.c',
    dim,
    ffn: hidden,
    nLayers,
    nHeads,
    nKvHeads,
    headDim: dim / nHeads,
    vocabSize: vocab,
    contextLength: seqLen,
    rmsEps: 1e-5,
    ropeBase: 10000,
    ropeDim: dim / nHeads,
    ropeMode: 'normal',
    qkvBias: false,
  };
  validateConfig(config, path, LLAMA2C_FIELDS);
  const kvDim = nKvHeads * config.headDim;
  const tensors = new Map<string, TensorSource>();
  let offset = 28;
  const add = (name: string, dims: number[]) => {
    const bytes = dims.reduce((a, b) => a * b, 1) * 4;
    const at = offset;
    if (at + bytes > size) throw new ModelFileError(`${path}: truncated: tensor "${name}" needs bytes ${at}..${at + bytes} but the file has ${size} (or the header overstates a size)`);
    tensors.set(name, { name, typeName: 'F32', dims, bytes, read: () => readRange(path, at, bytes) });
    offset += bytes;
  };
  const perLayer = (suffix: string, dims: number[]) => {
    for (let l = 0; l < nLayers; l++) add(`blk.${l}.${suffix}`, dims);
  };
  add('token_embd.weight', [dim, vocab]);
  perLayer('attn_norm.weight', [dim]);
  perLayer('attn_q.weight', [dim, dim]);
  perLayer('attn_k.weight', [dim, kvDim]);
  perLayer('attn_v.weight', [dim, kvDim]);
  perLayer('attn_output.weight', [dim, dim]);
  perLayer('ffn_norm.weight', [dim]);
  perLayer('ffn_gate.weight', [dim, hidden]);
  perLayer('ffn_down.weight', [hidden, dim]);
  perLayer('ffn_up.weight', [dim, hidden]);
  add('output_norm.weight', [dim]);
  // precomputed RoPE tables (freq_cis real and imaginary halves): unused
  const ropeTables = seqLen * config.headDim * 4;
  if (offset + ropeTables > size) throw new ModelFileError(`${path}: truncated: the RoPE tables (seq_len = ${seqLen}) need bytes ${offset}..${offset + ropeTables} but the file has ${size}`);
  offset += ropeTables;
  if (vocabRaw < 0) add('output.weight', [dim, vocab]);
  // the header fixes the file's length: a wrong dim, layer count, seq_len or classifier sign shows here
  if (offset !== size) {
    const header = `dim ${dim}, hidden_dim ${hidden}, n_layers ${nLayers}, n_heads ${nHeads}, n_kv_heads ${nKvHeads}, vocab_size ${vocabRaw}, seq_len ${seqLen}`;
    throw new ModelFileError(`${path}: header: ${header} imply a ${offset}-byte file (expected ${offset} bytes, got ${size}; a negative vocab_size means a separate classifier follows)`);
  }
  return { config, tensors };
}

function readRange(path: string, offset: number, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, out, 0, bytes, offset);
  } finally {
    closeSync(fd);
  }
  return out;
}

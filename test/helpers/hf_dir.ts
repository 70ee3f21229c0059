import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { f32ToF16Bits } from '../../kernels/weights.ts';
import { type SafetensorsDtype, encodeSafetensors } from '../../src/model/safetensors.ts';
import type { ModelSource } from '../../src/model/source.ts';
import { TokenType, type Vocab } from '../../src/model/tokenizer/vocab.ts';

/** The chat template written into tokenizer_config.json. */
export const CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}";

// Writing a Hugging Face model directory from a GGUF model (the tests' converter)

/**
 * A tokenizer.json for a SentencePiece (llama) vocabulary, as Hugging Face's Llama tokenizers are
 * written: BPE with byte fallback, merges ranked by the merged piece's score (every split of a
 * piece into two vocabulary pieces), a ▁ prefix and space -> ▁ normalizer, BOS by the post-processor.
 */
export function spmTokenizerJson(v: Vocab): object {
  const ids: Record<string, number> = {};
  v.tokens.forEach((t, i) => (ids[t] = i));
  const merges: { pair: [string, string]; score: number; left: number; right: number }[] = [];
  v.tokens.forEach((piece, id) => {
    if (v.types[id] !== TokenType.NORMAL) return;
    const chars = Array.from(piece);
    for (let k = 1; k < chars.length; k++) {
      const left = chars.slice(0, k).join('');
      const right = chars.slice(k).join('');
      if (left in ids && right in ids) merges.push({ pair: [left, right], score: v.scores[id], left: ids[left], right: ids[right] });
    }
  });
  merges.sort((a, b) => b.score - a.score || a.left - b.left || a.right - b.right);
  const bos = v.tokens[v.bos!];
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: v.tokens
      .map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }))
      .filter(({ id }) => v.types[id] === TokenType.CONTROL || v.types[id] === TokenType.UNKNOWN),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { [bos]: { id: bos, ids: [v.bos], tokens: [bos] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'BPE', dropout: null, unk_token: v.tokens[v.unk!], fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab: ids, merges: merges.map((m) => m.pair) },
  };
}

/** A GPT-2 style byte-level BPE tokenizer.json from a GGUF `gpt2` vocabulary and its merges. */
export function byteLevelTokenizerJson(tokens: string[], merges: string[]): object {
  const ids: Record<string, number> = {};
  tokens.forEach((t, i) => (ids[t] = i));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    added_tokens: [{ id: ids['<|endoftext|>'], content: '<|endoftext|>', special: true, normalized: false }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: byteLevel,
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, fuse_unk: false, byte_fallback: false, vocab: ids, merges },
  };
}

/** Hugging Face tensor name for a GGUF one (the inverse of the loader's mapping). */
function hfName(gguf: string): string {
  const global: Record<string, string> = { token_embd: 'model.embed_tokens', output_norm: 'model.norm', output: 'lm_head' };
  const layer: Record<string, string> = {
    attn_q: 'self_attn.q_proj',
    attn_k: 'self_attn.k_proj',
    attn_v: 'self_attn.v_proj',
    attn_output: 'self_attn.o_proj',
    ffn_gate: 'mlp.gate_proj',
    ffn_up: 'mlp.up_proj',
    ffn_down: 'mlp.down_proj',
    attn_norm: 'input_layernorm',
    ffn_norm: 'post_attention_layernorm',
  };
  const m = /^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)$/.exec(gguf)!;
  return m[1] === undefined ? `${global[m[2]]}.${m[3]}` : `model.layers.${m[1]}.${layer[m[2]]}.${m[3]}`;
}

/**
 * Undoes llama.cpp's q/k permutation. The converter turns Hugging Face rows (head h, half j, index
 * i) into GGUF rows (h, i, j), so NeoX pairs (i, i + headDim/2) become adjacent pairs (2i, 2i + 1);
 * here GGUF row h*hd + 2i + j goes back to Hugging Face row h*hd + j*hd/2 + i.
 */
function unpermute(rows: Float32Array, nHeads: number, headDim: number, cols: number): Float32Array {
  const out = new Float32Array(rows.length);
  const half = headDim / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * headDim + 2 * i + j) * cols;
        out.set(rows.subarray(from, from + cols), (h * headDim + j * half + i) * cols);
      }
    }
  }
  return out;
}

function encodeAs(values: Float32Array, dtype: SafetensorsDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) {
    // bf16: round to nearest even on the f32 bits (no NaNs in these weights)
    out[i] = dtype === 'F16' ? f32ToF16Bits(values[i]) : ((bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return new Uint8Array(out.buffer);
}

export interface HfDirOptions {
  dtype?: SafetensorsDtype;
  /** split the tensors over this many shards with model.safetensors.index.json */
  shards?: number;
  config?: Record<string, unknown>;
}

/** Writes stories260K (from its GGUF) as a Hugging Face model directory. */
export function writeHfDir(src: ModelSource, dir: string, o: HfDirOptions = {}): string {
  mkdirSync(dir, { recursive: true });
  const c = src.config;
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.dim,
    intermediate_size: c.ffn,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.contextLength,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeBase,
    rope_scaling: null,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    bos_token_id: src.tokenizer.vocab.bos,
    eos_token_id: src.tokenizer.vocab.eos,
    torch_dtype: 'float32',
    ...o.config,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(spmTokenizerJson(src.tokenizer.vocab)));
  const v = src.tokenizer.vocab;
  writeFileSync(
    join(dir, 'tokenizer_config.json'),
    JSON.stringify({ add_bos_token: true, add_eos_token: false, bos_token: v.tokens[v.bos!], eos_token: { content: v.tokens[v.eos!], special: true }, chat_template: CHAT_TEMPLATE }),
  );

  const dtype = o.dtype ?? 'F32';
  const tensors = [...src.tensors.values()].map((t) => {
    const b = t.read();
    let values = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    const kind = t.name.replace(/^blk\.\d+\./, '');
    if (kind === 'attn_q.weight') values = unpermute(values, c.nHeads, c.headDim, c.dim);
    if (kind === 'attn_k.weight') values = unpermute(values, c.nKvHeads, c.headDim, c.dim);
    return { name: hfName(t.name), dtype, shape: [...t.dims].reverse(), data: encodeAs(values, dtype) };
  });
  const shards = o.shards ?? 1;
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
    return dir;
  }
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = tensors.filter((_, i) => i % shards === s);
    for (const t of part) weightMap[t.name] = file;
    writeFileSync(join(dir, file), encodeSafetensors(part, { format: 'pt' }));
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  return dir;
}


import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { f32ToF16Bits } from '../../kernels/weights.ts';
import { repoRoot } from '../../src/gpu/paths.ts';
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

export type HfDtype = 'F32' | 'F16' | 'BF16';

function encodeAs(values: Float32Array, dtype: HfDtype): Uint8Array {
  if (dtype === 'F32') return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
  const out = new Uint16Array(values.length);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0; i < values.length; i++) {
    // bf16: round to nearest even on the f32 bits (no NaNs in these weights)
    out[i] = dtype === 'F16' ? f32ToF16Bits(values[i]) : ((bits[i] + 0x7fff + ((bits[i] >>> 16) & 1)) >>> 16) & 0xffff;
  }
  return new Uint8Array(out.buffer);
}

export interface HfTensor {
  name: string;
  dtype: HfDtype;
  shape: number[];
  data: Uint8Array;
}

/** The safetensors crate's Dtype enum order (increasing alignment) for the dtypes written here. */
const DTYPE_RANK: Record<HfDtype, number> = { F16: 0, BF16: 1, F32: 2 };

/**
 * A safetensors file byte for byte as the reference implementation writes it (the safetensors
 * crate's `serialize`, behind safetensors.torch.save_file), built from the format's description
 * and independent of src/model/safetensors.ts: tensors sorted by dtype (larger alignment first) then
 * name, packed without gaps; a compact JSON header with "__metadata__" first, then each tensor's
 * dtype, shape and data_offsets (relative to the end of the header) in data order, padded with
 * spaces to a multiple of 8 bytes; before it, the header's byte length as a little-endian u64.
 */
export function safetensorsBytes(tensors: HfTensor[], metadata?: Record<string, string>): Buffer {
  const sorted = [...tensors].sort((a, b) => DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const entries: string[] = metadata ? [`"__metadata__":${JSON.stringify(metadata)}`] : [];
  let offset = 0;
  for (const t of sorted) {
    entries.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":${JSON.stringify(t.shape)},"data_offsets":[${offset},${offset + t.data.byteLength}]}`);
    offset += t.data.byteLength;
  }
  let header = `{${entries.join(',')}}`;
  header += ' '.repeat((8 - (Buffer.byteLength(header) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  return Buffer.concat([length, Buffer.from(header), ...sorted.map((t) => t.data)]);
}

/** JSON as transformers writes its files: json.dumps(obj, indent=2, sort_keys=True) + "\n". */
function pythonJson(value: unknown): string {
  const sortKeys = (v: unknown): unknown =>
    Array.isArray(v) ? v.map(sortKeys) : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, x]) => [k, sortKeys(x)])) : v;
  return `${JSON.stringify(sortKeys(value), null, 2)}\n`;
}

/** A real save_pretrained config.json (SmolLM2-135M-Instruct, transformers 4.42): the key set written for stories260K. */
export const SMOLLM_DIR = join(repoRoot, '..', 'shared', 'models', 'smollm2-135m-instruct');

const TORCH_DTYPE: Record<HfDtype, string> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

export interface HfDirOptions {
  dtype?: HfDtype;
  /** shard the weights (model.safetensors.index.json) with max_shard_size = total bytes / shards */
  shards?: number;
  /** config.json entries to override (tie_word_embeddings: true also leaves lm_head out, as save_pretrained does) */
  config?: Record<string, unknown>;
}

/**
 * Writes stories260K (from its GGUF) as transformers' LlamaForCausalLM.save_pretrained and the
 * tokenizer's save_pretrained lay a model directory out: config.json (SmolLM2's real key set with
 * stories260K's values), generation_config.json, the weights in Hugging Face names, state-dict order
 * and layout (q/k rows un-permuted back from llama.cpp's RoPE order) in model.safetensors, or in
 * model-0000i-of-0000n.safetensors shards filled in state-dict order up to max_shard_size with
 * model.safetensors.index.json (huggingface_hub's split_torch_state_dict_into_shards); tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json. Returns the directory.
 */
export function writeHfDir(src: ModelSource, dir: string, o: HfDirOptions = {}): string {
  mkdirSync(dir, { recursive: true });
  const c = src.config;
  const v = src.tokenizer.vocab;
  const dtype = o.dtype ?? 'F32';
  const config: Record<string, unknown> = {
    ...JSON.parse(readFileSync(join(SMOLLM_DIR, 'config.json'), 'utf8')),
    hidden_size: c.dim,
    intermediate_size: c.ffn,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.contextLength,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeBase,
    tie_word_embeddings: false,
    bos_token_id: v.bos,
    eos_token_id: v.eos,
    pad_token_id: null,
    torch_dtype: TORCH_DTYPE[dtype],
    ...o.config,
  };
  writeFileSync(join(dir, 'config.json'), pythonJson(config));
  writeFileSync(join(dir, 'generation_config.json'), pythonJson({ _from_model_config: true, bos_token_id: v.bos, eos_token_id: v.eos, transformers_version: config.transformers_version }));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(spmTokenizerJson(v)));
  const special = { bos_token: v.tokens[v.bos!], eos_token: v.tokens[v.eos!], unk_token: v.tokens[v.unk!] };
  writeFileSync(join(dir, 'tokenizer_config.json'), pythonJson({ add_bos_token: true, add_eos_token: false, ...special, chat_template: CHAT_TEMPLATE, tokenizer_class: 'LlamaTokenizer' }));
  writeFileSync(join(dir, 'special_tokens_map.json'), pythonJson(special));

  const tensors: HfTensor[] = [];
  for (const name of stateDictOrder(c.nLayers)) {
    const t = src.tensors.get(name)!;
    if (name === 'output.weight' && config.tie_word_embeddings === true) continue;
    const b = t.read();
    let values = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    const kind = name.replace(/^blk\.\d+\./, '');
    if (kind === 'attn_q.weight') values = unpermute(values, c.nHeads, c.headDim, c.dim);
    if (kind === 'attn_k.weight') values = unpermute(values, c.nKvHeads, c.headDim, c.dim);
    tensors.push({ name: hfName(name), dtype, shape: [...t.dims].reverse(), data: encodeAs(values, dtype) });
  }
  const metadata = { format: 'pt' };
  const total = tensors.reduce((n, t) => n + t.data.byteLength, 0);
  if (!o.shards || o.shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), safetensorsBytes(tensors, metadata));
    return dir;
  }
  const maxShard = Math.ceil(total / o.shards);
  const shards: HfTensor[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (size > 0 && size + t.data.byteLength > maxShard) {
      shards.push([]);
      size = 0;
    }
    shards.at(-1)!.push(t);
    size += t.data.byteLength;
  }
  const weightMap: Record<string, string> = {};
  shards.forEach((part, i) => {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    for (const t of part) weightMap[t.name] = file;
    writeFileSync(join(dir, file), safetensorsBytes(part, metadata));
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), pythonJson({ metadata: { total_size: total }, weight_map: weightMap }));
  return dir;
}

/** GGUF names of a Llama model's tensors in LlamaForCausalLM's state-dict order. */
function stateDictOrder(nLayers: number): string[] {
  const layer = ['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down', 'attn_norm', 'ffn_norm'];
  const layers = Array.from({ length: nLayers }, (_, l) => layer.map((k) => `blk.${l}.${k}.weight`));
  return ['token_embd.weight', ...layers.flat(), 'output_norm.weight', 'output.weight'];
}

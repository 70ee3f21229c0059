import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { configFromGgufMetadata } from '../src/model/config.ts';
import { readGguf } from '../src/model/gguf.ts';

describe('model config from GGUF metadata', () => {
  it('stories260K', async () => {
    const g = await readGguf(join(repoRoot, 'models', 'stories260K', 'stories260K.gguf'));
    expect(configFromGgufMetadata(g.metadata, g.path)).toMatchObject({
      architecture: 'llama',
      dim: 64,
      ffn: 172,
      nLayers: 5,
      nHeads: 8,
      nKvHeads: 4,
      headDim: 8,
      vocabSize: 512,
      ropeDim: 8,
      ropeBase: 10000,
      ropeMode: 'normal',
      qkvBias: false,
    });
  });

  it('refuses unknown architectures and inconsistent shapes, naming the file', () => {
    const base = {
      'general.architecture': 'llama',
      'llama.embedding_length': 64,
      'llama.feed_forward_length': 172,
      'llama.block_count': 2,
      'llama.attention.head_count': 8,
      'llama.attention.head_count_kv': 4,
      'llama.context_length': 512,
      'llama.attention.layer_norm_rms_epsilon': 1e-5,
      'tokenizer.ggml.tokens': ['a', 'b'],
    };
    expect(() => configFromGgufMetadata({ ...base, 'general.architecture': 'mamba' }, 'm.gguf')).toThrow(/m\.gguf: architecture "mamba" is not supported \(supported: llama, qwen2\)/);
    expect(() => configFromGgufMetadata({ ...base, 'llama.attention.head_count_kv': 3 }, 'm.gguf')).toThrow(/cannot share 3 KV heads/);
    expect(() => configFromGgufMetadata({ ...base, 'llama.block_count': undefined }, 'm.gguf')).toThrow(/llama\.block_count is missing/);
    expect(() => configFromGgufMetadata({ ...base, 'llama.embedding_length': 2 ** 40 }, 'm.gguf')).toThrow(/dim = .* is not a valid size/);
    expect(configFromGgufMetadata({ ...base, 'general.architecture': 'qwen2', ...Object.fromEntries(Object.entries(base).filter(([k]) => k.startsWith('llama.')).map(([k, v]) => [k.replace('llama.', 'qwen2.'), v])) }, 'q.gguf')).toMatchObject({ ropeMode: 'neox', qkvBias: true });
  });
});

import fs, { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { cpuForward } from '../src/model/cpu_reference.ts';
import { ModelFileError, readGguf } from '../src/model/gguf.ts';
import { configFromHf, ggufTensorName } from '../src/model/hf.ts';
import { readSafetensorsBytes, readSafetensorsHeader } from '../src/model/safetensors.ts';
import { type ModelSource, openModel, openTokenizer } from '../src/model/source.ts';
import { HfTokenizer, tokenizerFromHfDir } from '../src/model/tokenizer/hf.ts';
import { StreamDecoder, type Tokenizer, decode } from '../src/model/tokenizer/index.ts';
import { TokenType } from '../src/model/tokenizer/vocab.ts';
import { cpuWeightsOf } from '../src/model/cpu_weights.ts';
import { useGpu } from './helpers/gpu.ts';
import { UNIT_ROUNDOFF, cpuLogits, expectGpuLogits, relativeLogitError, roundingTolerance } from './helpers/logits.ts';
import { CHAT_TEMPLATE, SMOLLM_DIR, byteLevelTokenizerJson, safetensorsBytes, spmTokenizerJson, writeHfDir } from './helpers/hf_dir.ts';
import { useTmpDirs } from './helpers/tmp.ts';
import { VOCAB_DIR, loadVectors } from './helpers/vocab_vectors.ts';

const STORIES_GGUF = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
const PROMPT = 'Once upon a time, there was a little girl named Lily. She loved to play';

const tmpDir = useTmpDirs('wgserve-hf-');
let root: string;
let gguf: ModelSource;
/** stories260K as an F32 Hugging Face directory */
let f32Dir: string;
/** the float64 oracle's logits of the GGUF model for PROMPT */
let ggufRef: Float64Array[];
beforeAll(async () => {
  root = tmpDir();
  gguf = await openModel(STORIES_GGUF);
  f32Dir = writeHfDir(gguf, join(root, 'f32'));
  ggufRef = cpuLogits(gguf, gguf.tokenizer.encode(PROMPT));
});

// ------------------------------------------------------------------------------------------------

describe('Hugging Face model directory: stories260K as save_pretrained writes it', () => {
  const getGpu = useGpu();

  it('loads through openModel(dir): config, GGUF tensor names and shapes, tokenizer, chat template', async () => {
    const hf = await openModel(f32Dir);
    expect(hf.format).toBe('hf');
    expect(hf.config).toMatchObject({ ...gguf.config, name: 'f32', ropeMode: 'neox' });
    expect([...hf.tensors.keys()].sort()).toEqual([...gguf.tensors.keys()].sort());
    for (const t of gguf.tensors.values()) {
      const h = hf.tensors.get(t.name)!;
      expect(h.dims, t.name).toEqual(t.dims);
      expect(h.typeName).toBe('F32');
      // everything but q/k (unpermuted) is the GGUF's bytes unchanged
      if (!/attn_[qk]\.weight$/.test(t.name)) expect(Buffer.from(h.read()).equals(Buffer.from(t.read())), t.name).toBe(true);
    }
    expect(hf.chatTemplate).toBe(CHAT_TEMPLATE);
    // the SentencePiece vocabulary through tokenizer.json encodes like the GGUF's own tokenizer
    expect(hf.tokenizer.vocab).toMatchObject({ bos: 1, eos: 2, unk: 0, addBos: true, addEos: false, addSpacePrefix: true });
    for (const text of [PROMPT, 'Lily said, "Wow!"  Two  spaces.', 'naïve café ☕']) {
      expect(hf.tokenizer.encode(text), text).toEqual(gguf.tokenizer.encode(text));
      expect(decode(hf.tokenizer, hf.tokenizer.encode(text, { addSpecial: false }))).toBe(text);
    }
    expect(hf.tokenizer.vocab.types.slice(0, 4)).toEqual(Uint8Array.from([TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.BYTE]));
  });

  it('un-permuted q/k with NeoX RoPE is the GGUF model with adjacent-pair RoPE (float64 oracle)', async () => {
    const hf = await openModel(f32Dir);
    const tokens = gguf.tokenizer.encode(PROMPT);
    // the same weights, rows of q/k reordered: the same float64 sums in another order, within
    // roundingTolerance at float64's unit roundoff (5.6e-15; measured 1.1e-15)
    expect(relativeLogitError(cpuLogits(hf, tokens), ggufRef)).toBeLessThan(roundingTolerance(hf.config, tokens.length, UNIT_ROUNDOFF.f64));
  });

  it('F32: GPU logits of every position equal the GGUF model\'s float64 logits', async () => {
    const hf = await openModel(f32Dir);
    // f32 rounding only (gpu_model.test.ts): bound 3.0e-6, measured 2.6e-7
    await expectGpuLogits(getGpu(), hf, hf.tokenizer.encode(PROMPT), ggufRef);
  });

  for (const dtype of ['BF16', 'F16'] as const) {
    it(`${dtype}, sharded: GPU logits equal the float64 oracle on the rounded weights, and near the f32 model`, async () => {
      const dir = writeHfDir(gguf, join(root, dtype), { dtype, shards: 2 });
      const index = JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8'));
      expect(new Set(Object.values(index.weight_map)).size).toBeGreaterThan(1);
      const hf = await openModel(dir);
      expect(hf.tensors.get('blk.0.attn_q.weight')!.typeName).toBe(dtype);
      // norms keep the file's dtype here; the GPU loader widens vectors to f32 (see gpu_weights.test.ts)
      expect(hf.tensors.get('blk.0.attn_norm.weight')).toMatchObject({ typeName: dtype, bytes: gguf.config.dim * 2 });
      const tokens = hf.tokenizer.encode(PROMPT);
      const rounded = cpuLogits(hf, tokens);
      await expectGpuLogits(getGpu(), hf, tokens, rounded); // as above; measured 2.8e-7 (BF16), 3.4e-7 (F16)
      // Every weight is the f32 one rounded to 8 (bf16) or 11 (f16) significant bits: the same
      // random-walk bound at the weight format's unit roundoff, 0.20 (bf16) and 0.025 (f16);
      // measured 4.2e-3 and 7.6e-4. A misread tensor (wrong dtype, offset or order) is off by O(1).
      expect(relativeLogitError(rounded, ggufRef)).toBeLessThan(roundingTolerance(hf.config, tokens.length, UNIT_ROUNDOFF[dtype === 'BF16' ? 'bf16' : 'f16']));
    });
  }

  it('tie_word_embeddings: no lm_head in the file, the embedding is the output projection', async () => {
    const dir = writeHfDir(gguf, join(root, 'tied'), { config: { tie_word_embeddings: true } });
    const hf = await openModel(dir);
    expect(hf.tensors.has('output.weight')).toBe(false);
    const tokens = hf.tokenizer.encode(PROMPT);
    // the oracle: the GGUF model with the embedding as its output projection (stories260K's
    // output.weight is a copy of it: llama2.c's shared classifier)
    const weights = cpuWeightsOf(gguf);
    weights.set('output.weight', weights.get('token_embd.weight')!);
    await expectGpuLogits(getGpu(), hf, tokens, cpuForward(gguf.config, weights, tokens));
  });
});

describe('safetensors and model-directory errors name the file', () => {
  /** A fresh copy of the F32 directory to break. */
  function brokenDir(name: string): string {
    return writeHfDir(gguf, join(root, `broken-${name}`));
  }

  async function rejects(dir: string, pattern: RegExp): Promise<void> {
    const err = await openModel(dir).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ModelFileError);
    expect((err as Error).message).toMatch(pattern);
  }

  function header(file: string): { json: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>; data: Buffer } {
    const buf = readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    return { json: JSON.parse(buf.toString('utf8', 8, 8 + n)), data: buf.subarray(8 + n) };
  }

  function rewrite(file: string, json: object, data: Buffer): void {
    const head = Buffer.from(JSON.stringify(json));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(head.length));
    writeFileSync(file, Buffer.concat([len, head, data]));
  }

  it('truncated data, truncated header, too short for a header', async () => {
    const dir = brokenDir('truncated');
    const file = join(dir, 'model.safetensors');
    const full = readFileSync(file);
    writeFileSync(file, full.subarray(0, full.length - 1000));
    await rejects(dir, /model\.safetensors: tensor "[\w.]+" needs bytes \d+\.\.\d+ but the file has \d+ bytes \(truncated\?\)/);
    writeFileSync(file, full.subarray(0, 100));
    await rejects(dir, /model\.safetensors: truncated: the header needs bytes 8\.\.\d+ but the file has 100 bytes/);
    writeFileSync(file, full.subarray(0, 5));
    await rejects(dir, /model\.safetensors: truncated: 5 bytes is too short/);
  });

  it('absurd header length, malformed JSON header', async () => {
    const dir = brokenDir('header');
    const file = join(dir, 'model.safetensors');
    const full = readFileSync(file);
    const bad = Buffer.from(full);
    bad.writeBigUInt64LE(2n ** 62n, 0);
    writeFileSync(file, bad);
    await rejects(dir, /model\.safetensors: header length 4611686018427387904 is absurd/);
    const n = Number(full.readBigUInt64LE(0));
    const junk = Buffer.from(full);
    junk.write('{"x": [', 8, 'utf8');
    writeFileSync(file, junk);
    expect(n).toBeGreaterThan(8);
    await rejects(dir, /model\.safetensors: malformed safetensors header \(not JSON/);
  });

  it('unsupported dtype names the tensor and the supported dtypes', async () => {
    const dir = brokenDir('dtype');
    const file = join(dir, 'model.safetensors');
    const { json, data } = header(file);
    const e = json['model.norm.weight'];
    e.dtype = 'I32'; // same element size: only the dtype is wrong
    rewrite(file, json, data);
    await rejects(dir, /model\.safetensors: tensor "model\.norm\.weight" has dtype I32; supported dtypes: F32, F16, BF16/);
  });

  it('offsets that overlap, or disagree with the shape', async () => {
    const dir = brokenDir('offsets');
    const file = join(dir, 'model.safetensors');
    const { json, data } = header(file);
    const original = structuredClone(json);
    json['model.norm.weight'].data_offsets = [json['model.embed_tokens.weight'].data_offsets[0], json['model.embed_tokens.weight'].data_offsets[0] + 256];
    rewrite(file, json, data);
    await rejects(dir, /model\.safetensors: tensors "[\w.]+" \(bytes \d+\.\.\d+\) and "[\w.]+" \(bytes \d+\.\.\d+\) overlap/);
    const wrong = structuredClone(original);
    wrong['model.norm.weight'].shape = [65];
    rewrite(file, wrong, data);
    await rejects(dir, /tensor "model\.norm\.weight": data_offsets \d+\.\.\d+ hold 256 bytes but F32 \[65\] needs 260/);
  });

  it('unknown model_type, missing config.json, missing tokenizer.json, missing shard', async () => {
    const dir = brokenDir('config');
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, model_type: 'gpt2' }));
    await rejects(dir, /config\.json: model_type "gpt2" is not supported \(supported: llama, mistral, qwen2\)/);
    rmSync(join(dir, 'config.json'));
    await rejects(dir, /config\.json: config\.json not found/);

    const noTok = brokenDir('tokenizer');
    rmSync(join(noTok, 'tokenizer.json'));
    await rejects(noTok, /tokenizer\.json: tokenizer\.json not found/);
    await expect(openTokenizer(noTok)).rejects.toThrow(ModelFileError);

    const sharded = writeHfDir(gguf, join(root, 'broken-shard'), { shards: 2 });
    const last = Object.values(JSON.parse(readFileSync(join(sharded, 'model.safetensors.index.json'), 'utf8')).weight_map as Record<string, string>).sort().at(-1)!;
    expect(last).toMatch(/^model-0000(\d)-of-0000\1\.safetensors$/);
    rmSync(join(sharded, last));
    await rejects(sharded, new RegExp(`model\\.safetensors\\.index\\.json: shard ${last.replaceAll('.', '\\.')} \\(tensor "[\\w.]+"\\) is missing`));
  });

  it('a tensor the shape in config.json does not allow', async () => {
    const dir = brokenDir('shape');
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, intermediate_size: 128 }));
    await rejects(dir, /model\.safetensors: tensor "model\.layers\.\d+\.mlp\.\w+_proj\.weight" has shape \[\d+, \d+\] but config\.json implies/);
  });

  it("reads the safetensors crate's own serialization test vector, which the tests' writer reproduces", () => {
    // safetensors/src/tensor.rs, test_serialization_forced_alignement: "attn0", F32 [1, 1, 2, 3]
    // holding 0..5; a 65-byte header padded with 7 spaces to 72
    const header = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       ';
    const data = new Uint8Array(Float32Array.from([0, 1, 2, 3, 4, 5]).buffer);
    const bytes = Buffer.concat([Buffer.from([72, 0, 0, 0, 0, 0, 0, 0]), Buffer.from(header), data]);
    expect(safetensorsBytes([{ name: 'attn0', dtype: 'F32', shape: [1, 1, 2, 3], data }])).toEqual(bytes);
    const file = join(root, 'crate-vector.safetensors');
    writeFileSync(file, bytes);
    const t = readSafetensorsHeader(file).get('attn0')!;
    expect(t).toMatchObject({ dtype: 'F32', shape: [1, 1, 2, 3], elements: 6, offset: 80, bytes: 24 });
    expect(Array.from(new Float32Array(readSafetensorsBytes(t).buffer))).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('the header reader ignores __metadata__; tensors are read one at a time, never the whole file', () => {
    const tensors = readSafetensorsHeader(join(f32Dir, 'model.safetensors'));
    expect(tensors.has('__metadata__')).toBe(false);
    expect(tensors.get('model.embed_tokens.weight')).toMatchObject({ dtype: 'F32', shape: [512, 64], bytes: 512 * 64 * 4 });

    // a 4 GiB tensor in a sparse file before a small one: opening reads the header, reading the
    // small tensor its 16 bytes (counted at fs.readSync, which the reader reads through)
    const file = join(root, 'sparse.safetensors');
    const big = 2 ** 30;
    const head = Buffer.from(
      JSON.stringify({ __metadata__: { format: 'pt' }, big: { dtype: 'F32', shape: [big], data_offsets: [0, 4 * big] }, small: { dtype: 'F32', shape: [4], data_offsets: [4 * big, 4 * big + 16] } }),
    );
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(head.length));
    writeFileSync(file, Buffer.concat([len, head]));
    const fd = openSync(file, 'r+');
    writeSync(fd, new Uint8Array(Float32Array.from([1, 2, 3, 4]).buffer), 0, 16, 8 + head.length + 4 * big);
    closeSync(fd);
    const read = vi.spyOn(fs, 'readSync');
    syncBuiltinESMExports();
    try {
      const sparse = readSafetensorsHeader(file);
      expect(sparse.get('big')).toMatchObject({ elements: big, bytes: 4 * big });
      expect(Array.from(new Float32Array(readSafetensorsBytes(sparse.get('small')!).buffer))).toEqual([1, 2, 3, 4]);
      expect(read.mock.results.reduce((n, r) => n + (r.value as number), 0)).toBe(8 + head.length + 16);
    } finally {
      read.mockRestore();
      syncBuiltinESMExports();
      rmSync(file);
    }
  });
});

describe('config.json mapping', () => {
  const base = { hidden_size: 256, intermediate_size: 512, num_hidden_layers: 2, num_attention_heads: 8, vocab_size: 1000, max_position_embeddings: 4096, rms_norm_eps: 1e-5 };

  it('llama with Llama 3 rope scaling, mistral with head_dim and a sliding window, qwen2 with biases', () => {
    const llama = configFromHf(
      {
        ...base,
        model_type: 'llama',
        num_key_value_heads: 2,
        rope_theta: 500000,
        rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      },
      'config.json',
    );
    expect(llama).toMatchObject({ architecture: 'llama', nKvHeads: 2, headDim: 32, ropeDim: 32, ropeBase: 500000, ropeMode: 'neox', qkvBias: false });
    expect(llama.ropeScaling).toEqual({ type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 });

    const mistral = configFromHf({ ...base, model_type: 'mistral', head_dim: 64, sliding_window: 2048, rope_scaling: { type: 'linear', factor: 2 } }, 'config.json');
    expect(mistral).toMatchObject({ architecture: 'llama', nKvHeads: 8, headDim: 64, contextLength: 2048, rmsEps: 1e-5, ropeBase: 10000 });
    expect(mistral.ropeScaling).toEqual({ type: 'linear', factor: 2 });

    const qwen = configFromHf({ ...base, model_type: 'qwen2', sliding_window: 1024, use_sliding_window: false }, 'config.json');
    expect(qwen).toMatchObject({ architecture: 'qwen2', qkvBias: true, contextLength: 4096 });

    expect(() => configFromHf({ ...base, model_type: 'llama', rope_scaling: { rope_type: 'yarn', factor: 4 } }, 'x/config.json')).toThrow(/x\/config\.json: rope_scaling type "yarn" is not supported \(linear, llama3\)/);
    expect(() => configFromHf({ ...base, model_type: 'llama', hidden_act: 'gelu' }, 'config.json')).toThrow(ModelFileError);
  });

  it("SmolLM2-135M's config.json as save_pretrained wrote it", () => {
    const hf = JSON.parse(readFileSync(join(SMOLLM_DIR, 'config.json'), 'utf8'));
    // the model card's architecture: 30 layers of width 576, 9 query heads and 3 KV heads of 64, MLP 1536
    expect(configFromHf(hf, 'config.json', 'smollm2')).toEqual({
      architecture: 'llama',
      name: 'smollm2',
      dim: 576,
      ffn: 1536,
      nLayers: 30,
      nHeads: 9,
      nKvHeads: 3,
      headDim: 64,
      vocabSize: 49152,
      contextLength: 8192,
      rmsEps: 1e-5,
      ropeBase: 100000,
      ropeDim: 64,
      ropeMode: 'neox',
      qkvBias: false,
    });
  });

  it('tensor names: Hugging Face -> llama.cpp GGUF', () => {
    expect(ggufTensorName('model.embed_tokens.weight')).toBe('token_embd.weight');
    expect(ggufTensorName('model.layers.12.self_attn.q_proj.weight')).toBe('blk.12.attn_q.weight');
    expect(ggufTensorName('model.layers.3.self_attn.k_proj.bias')).toBe('blk.3.attn_k.bias');
    expect(ggufTensorName('model.layers.0.self_attn.o_proj.weight')).toBe('blk.0.attn_output.weight');
    expect(ggufTensorName('model.layers.0.mlp.down_proj.weight')).toBe('blk.0.ffn_down.weight');
    expect(ggufTensorName('model.layers.0.post_attention_layernorm.weight')).toBe('blk.0.ffn_norm.weight');
    expect(ggufTensorName('model.norm.weight')).toBe('output_norm.weight');
    expect(ggufTensorName('lm_head.weight')).toBe('output.weight');
    expect(ggufTensorName('model.layers.0.self_attn.q_norm.weight')).toBeUndefined();
  });
});

// ------------------------------------------------------------------------------------------------

describe('Hugging Face tokenizer.json', () => {
  let smol: Tokenizer;
  beforeAll(async () => {
    smol = await openTokenizer(SMOLLM_DIR);
  });

  it('SmolLM2: vocabulary, special tokens and ids checked against tokenizer.json', () => {
    const json = JSON.parse(readFileSync(join(SMOLLM_DIR, 'tokenizer.json'), 'utf8'));
    const vocab: Record<string, number> = json.model.vocab;
    expect(smol).toBeInstanceOf(HfTokenizer);
    expect((smol as HfTokenizer).style).toBe('byte-level');
    // config.json: bos 1, eos 2; no post-processor and no tokenizer_config.json: no BOS added
    expect(smol.vocab).toMatchObject({ bos: 1, eos: 2, addBos: false, addEos: false, addSpacePrefix: false });
    expect(smol.vocab.tokens.length).toBe(49152);
    expect(smol.vocab.tokens.slice(0, 3)).toEqual(['<|endoftext|>', '<|im_start|>', '<|im_end|>']);
    expect(Array.from(smol.vocab.types.slice(0, 17))).toEqual(new Array(17).fill(TokenType.CONTROL));
    expect(smol.vocab.types[vocab['Hello']]).toBe(TokenType.NORMAL);
    // ids read by hand from tokenizer.json: "Hello" 19556, "Ġworld" 905, "Ċ" 198, "user" 4093
    expect([vocab['Hello'], vocab['\u0120world'], vocab['\u010a'], vocab['user']]).toEqual([19556, 905, 198, 4093]);
    expect(smol.encode('Hello world')).toEqual([19556, 905]);
    expect(smol.encode('<|im_start|>user\nHello world<|im_end|>', { parseSpecial: true })).toEqual([1, 4093, 198, 19556, 905, 2]);
  });

  it('parseSpecial: special-token text is plain text unless asked for', () => {
    const text = '<|im_start|>user\nHi there<|im_end|>\n';
    const parsed = smol.encode(text, { parseSpecial: true });
    const plain = smol.encode(text);
    expect(parsed[0]).toBe(1);
    expect(parsed).toContain(2);
    expect(plain).not.toContain(1);
    expect(plain).not.toContain(2);
    expect(decode(smol, plain)).toBe(text);
    // control tokens contribute no text
    expect(decode(smol, parsed)).toBe('user\nHi there\n');
    expect(smol.tokenBytes(1).length).toBe(0);
  });

  it('round trips: encode then decode gives the text back', () => {
    const texts = [
      'Hello world',
      '  leading spaces and trailing  ',
      'Tabs\tand\nnewlines\r\n\n',
      'numbers 1234567 and 3.14159',
      "code: for (let i = 0; i < n; i++) { sum += a[i]; } // ok",
      'naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어',
      'emoji 🦙🎉👩‍👩‍👧 flags 🇫🇷',
    ];
    for (const text of texts) {
      const ids = smol.encode(text, { addSpecial: false });
      expect(decode(smol, ids), text).toBe(text);
    }
  });

  it('StreamDecoder never yields half a character of an emoji', () => {
    const text = 'I 🦙 llamas 👩‍👩‍👧 and ☕!';
    const ids = smol.encode(text);
    const d = new StreamDecoder(smol);
    const pieces = ids.map((id) => d.push(id));
    expect(pieces.join('') + d.flush()).toBe(text);
    for (const p of pieces) expect(p).not.toContain('\ufffd');
    // the emoji really is split over tokens (some tokens carry only part of its bytes)
    const partial = ids.filter((id) => {
      const b = smol.tokenBytes(id);
      return b.length > 0 && new TextDecoder('utf-8', { fatal: false }).decode(b).includes('\ufffd');
    });
    expect(partial.length).toBeGreaterThan(0);
    expect(pieces).toContain('');
  });

  // llama.cpp's vectors for the vocabularies they were made for, through tokenizer.json built from
  // the same vocabulary-only GGUF files
  for (const name of ['ggml-vocab-llama-spm.gguf', 'ggml-vocab-gpt-2.gguf']) {
    it(`llama.cpp's test vectors for ${name} through tokenizer.json`, async () => {
      const md = (await readGguf(join(VOCAB_DIR, name))).metadata;
      const tokens = md['tokenizer.ggml.tokens'] as string[];
      const json = name.includes('spm')
        ? spmTokenizerJson({
            tokens,
            scores: Float32Array.from(md['tokenizer.ggml.scores'] as number[]),
            types: Uint8Array.from(md['tokenizer.ggml.token_type'] as number[]),
            bos: 1,
            eos: 2,
            unk: 0,
            addBos: true,
            addEos: false,
            addSpacePrefix: true,
          })
        : byteLevelTokenizerJson(tokens, md['tokenizer.ggml.merges'] as string[]);
      const dir = join(root, name);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
      const tok = tokenizerFromHfDir(dir);
      const vectors = loadVectors(name);
      expect(vectors.length).toBeGreaterThan(40);
      for (const { text, ids } of vectors) {
        expect(tok.encode(text, { addSpecial: false }), JSON.stringify(text)).toEqual(ids);
        expect(decode(tok, ids), JSON.stringify(text)).toBe(text);
      }
    });
  }
});

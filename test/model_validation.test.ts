import { execFile } from 'node:child_process';
import { closeSync, copyFileSync, cpSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GGUFValueType } from '@huggingface/gguf';
import { beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { ModelFileError } from '../src/model/gguf.ts';
import { encodeSafetensors, readSafetensorsBytes, readSafetensorsHeader } from '../src/model/safetensors.ts';
import { type ModelSource, openModel } from '../src/model/source.ts';
import { type GgufParts, cloneParts, readGgufParts, setMeta, setTensor, writeGguf } from './helpers/gguf_edit.ts';
import { writeHfDir } from './helpers/hf_dir.ts';
import { useTmpDirs } from './helpers/tmp.ts';

// Model files that disagree with themselves must be refused before anything reaches the GPU, with
// one line that names the file and the field, never a JavaScript error from deep inside a parser.
// Every corrupt file here is made from the real stories260K files: one inconsistency each.

const STORIES = join(repoRoot, 'models', 'stories260K');
const F32 = join(STORIES, 'stories260K.gguf');
const Q8 = join(STORIES, 'stories260K-Q8_0.gguf');
const BIN = join(STORIES, 'stories260K.bin');
const TOK = join(STORIES, 'tok512.bin');
/** What a JavaScript error leaking through a model-file message looks like (issue #10's examples). */
const LEAK = /NaN|undefined|DataView|\bposition\b|\[object |Error:|[\r\n]/;

const tmpDir = useTmpDirs('wgserve-validate-');
let dir: string;
let f32: GgufParts;
let q8: GgufParts;
let f32Bytes: Buffer;
beforeAll(async () => {
  dir = tmpDir();
  f32 = await readGgufParts(F32);
  q8 = await readGgufParts(Q8);
  f32Bytes = readFileSync(F32);
});

/** Checks a refusal: a ModelFileError whose message is one line naming `file` and matching `field`. */
function expectRefusal(err: unknown, file: string, field: RegExp): string {
  expect(err, `${file}: accepted, or refused with another error`).toBeInstanceOf(ModelFileError);
  const message = (err as Error).message;
  expect(message).toContain(`${file}: `);
  expect(message).toMatch(field);
  // (the path is the test's own; only the words after it are the reader's)
  expect(message.replaceAll(file, '')).not.toMatch(LEAK);
  // one line a person reads: names from the file are cut to 80 characters, so a message stays well under this
  expect(message.length).toBeLessThan(400);
  return message;
}

async function refused(path: string, field: RegExp, o: { file?: string; tokenizer?: string } = {}): Promise<string> {
  const err = await openModel(path, { tokenizer: o.tokenizer }).then(
    () => undefined,
    (e: unknown) => e,
  );
  return expectRefusal(err, o.file ?? path, field);
}

const write = (name: string, bytes: Uint8Array): string => {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
};
const flipped = (bytes: Buffer, at: number): Buffer => {
  const b = Buffer.from(bytes);
  b[at] ^= 0xff;
  return b;
};
/** Where a tensor's table entry keeps its n_dims, dims, type and offset (found by its length-prefixed name). */
function entry(bytes: Buffer, parts: GgufParts, name: string): { nDims: number; dims: number; type: number; offset: number } {
  const key = Buffer.concat([Buffer.alloc(8), Buffer.from(name)]);
  key.writeBigUInt64LE(BigInt(name.length));
  const nDims = bytes.indexOf(key, parts.tableRange[0]) + key.length;
  const n = bytes.readUInt32LE(nDims);
  return { nDims, dims: nDims + 4, type: nDims + 4 + 8 * n, offset: nDims + 8 + 8 * n };
}
/** The tensor whose data ends stories260K.gguf (the last of its table, stored in table order) */
const LAST = 'blk.4.ffn_norm.weight';
const withTokens = (p: GgufParts, n: number): GgufParts => {
  const q = cloneParts(p);
  for (const key of ['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type']) {
    const e = q.metadata.get(key)!;
    e.value = (e.value as unknown[]).slice(0, n);
  }
  return q;
};
const without = (p: GgufParts, key: string): GgufParts => {
  const q = cloneParts(p);
  q.metadata.delete(key);
  return q;
};

describe('the real files still load', () => {
  it('every stories260K format, and GGUF files written back by the test writer unchanged', async () => {
    for (const file of ['stories260K.gguf', 'stories260K-F16.gguf', 'stories260K-Q8_0.gguf', 'stories260K-Q4_0.gguf', 'stories260K.bin']) {
      const m = await openModel(join(STORIES, file));
      expect(m.config).toMatchObject({ dim: 64, ffn: 172, nLayers: 5, nHeads: 8, nKvHeads: 4, vocabSize: 512 });
    }
    // the writer reproduces both files byte for byte, so each corruption below differs from a good file only where planted
    expect(writeGguf(f32).equals(f32Bytes)).toBe(true);
    expect(writeGguf(q8).equals(readFileSync(Q8))).toBe(true);
  });
});

describe('GGUF files that lie are refused, naming the field', () => {
  const table = (p: GgufParts) => p.tableRange;
  const cases: [string, () => Buffer, RegExp][] = [
    // truncations, from the fixed header to the last byte of tensor data
    ['truncated in the fixed header', () => f32Bytes.subarray(0, 20), /metadata key count: truncated/],
    // (halfway through the token list: a cut any earlier leaves too few bytes for the 48 tensors' table entries, refused as such)
    ['truncated in the token list', () => f32Bytes.subarray(0, (f32Bytes.indexOf('tokenizer.ggml.tokens') + f32Bytes.indexOf('tokenizer.ggml.scores')) / 2), /metadata key "tokenizer\.ggml\.tokens": truncated/],
    ['truncated before room for the tensor table', () => f32Bytes.subarray(0, 1000), /malformed GGUF header: Tensor count 48 is more than a 1000-byte file can hold .*truncated/],
    ['truncated in the token scores', () => f32Bytes.subarray(0, f32Bytes.indexOf('tokenizer.ggml.scores') + 40), /metadata key "tokenizer\.ggml\.scores": truncated/],
    ['truncated in the tensor table', () => f32Bytes.subarray(0, table(f32)[0] + 100), /tensor "output_norm\.weight" \(tensor table entry #1\): truncated/],
    ['truncated after the tensor table', () => f32Bytes.subarray(0, table(f32)[1]), /general\.alignment = 32: the tensor data would start at byte \d+, past the end of the file \(\d+ bytes; truncated/],
    ['truncated in the tensor data', () => f32Bytes.subarray(0, f32Bytes.length / 2), /tensor "[\w.]+" needs bytes \d+\.\.\d+ but the file has 592688 bytes \(truncated\?\)/],
    ['the last byte missing', () => f32Bytes.subarray(0, f32Bytes.length - 1), /tensor "blk\.4\.ffn_norm\.weight" needs bytes/],
    ['bytes after the last tensor', () => Buffer.concat([f32Bytes, Buffer.alloc(32)]), /tensor "blk\.4\.ffn_norm\.weight": the file goes on past the last tensor's data \(F32 \[64\]; expected the file to end by byte 1185376, got 1185408 bytes\)/],
    // single flipped bytes in the header
    ['a flipped magic byte', () => flipped(f32Bytes, 0), /not a GGUF file/],
    ['a flipped version byte', () => flipped(f32Bytes, 6), /GGUF version \d+ is not supported/],
    ['a flipped tensor count', () => flipped(f32Bytes, 15), /malformed GGUF header: Tensor count \d+ is more than/],
    ['a flipped metadata key count', () => flipped(f32Bytes, 23), /metadata key count \d+ is more than/],
    ['a flipped key length', () => flipped(f32Bytes, 24 + 5), /metadata entry #0 \(its key\): truncated/],
    ['a flipped value type', () => flipped(f32Bytes, f32Bytes.indexOf('general.architecture') + 20), /metadata key "general\.architecture": unknown GGUF value type 247/],
    ['a flipped tensor type', () => flipped(f32Bytes, entry(f32Bytes, f32, 'output.weight').type), /tensor "output\.weight" has type unknown type id 255/],
    ['a flipped tensor offset', () => flipped(f32Bytes, entry(f32Bytes, f32, 'output.weight').offset), /tensor "output\.weight": offset \d+ is not a multiple of general\.alignment = 32/],
    ['a flipped tensor dim', () => flipped(f32Bytes, entry(f32Bytes, f32, 'token_embd.weight').dims), /tensor "output_norm\.weight": bytes \d+\.\.\d+ overlap tensor "token_embd\.weight"/],
    ['a flipped n_dims', () => flipped(f32Bytes, entry(f32Bytes, f32, 'blk.0.attn_norm.weight').nDims), /tensor "blk\.0\.attn_norm\.weight" \(tensor table entry #\d+\): n_dims 254 is out of range/],
    // shapes that disagree with the metadata
    ['embedding_length 72', () => writeGguf(setMeta(f32, 'llama.embedding_length', 72)), /tensor "token_embd\.weight": dimension 0 is 64 but llama\.embedding_length = 72 implies 72 \(expected \[72, 512\], got \[64, 512\]\)/],
    ['feed_forward_length 176', () => writeGguf(setMeta(f32, 'llama.feed_forward_length', 176)), /dimension \d is 172 but llama\.feed_forward_length = 176 implies 176/],
    ['block_count 4 of 5 layers', () => writeGguf(setMeta(f32, 'llama.block_count', 4)), /llama\.block_count: tensor "blk\.4\.[\w.]+" belongs to layer 4 but llama\.block_count = 4 \(expected layers 0\.\.3\)/],
    ['block_count 6 of 5 layers', () => writeGguf(setMeta(f32, 'llama.block_count', 6)), /tensor "blk\.5\.attn_norm\.weight": missing \(llama\.block_count = 6 implies layers 0\.\.5\)/],
    ['head_count_kv 2 of 4', () => writeGguf(setMeta(f32, 'llama.attention.head_count_kv', 2)), /tensor "blk\.0\.attn_k\.weight": dimension 1 is 32 but llama\.attention\.head_count_kv = 2 KV heads of 8 implies 16/],
    ['head_count 7 for 64 wide', () => writeGguf(setMeta(f32, 'llama.attention.head_count', 7)), /llama\.attention\.head_count: 7 heads do not divide llama\.embedding_length = 64/],
    ['vocab_size 600 over 512 tokens', () => writeGguf(setMeta(f32, 'llama.vocab_size', 600)), /tensor "token_embd\.weight": dimension 1 is 512 but llama\.vocab_size \(600 tokens\) implies 600/],
    ['500 tokens for 512 embedding rows', () => writeGguf(withTokens(f32, 500)), /tensor "token_embd\.weight": dimension 1 is 512 but tokenizer\.ggml\.tokens \(500 tokens\) implies 500/],
    ['vocab_size 512 over 500 tokens', () => writeGguf(setMeta(withTokens(f32, 500), 'llama.vocab_size', 512)), /llama\.vocab_size: the model has 512 tokens but its tokenizer has 500 \(expected 500, got 512\)/],
    ['a transposed ffn_down', () => writeGguf(setTensor(f32, 'blk.0.ffn_down.weight', { shape: [64n, 172n] })), /tensor "blk\.0\.ffn_down\.weight": dimension 0 is 64 but llama\.feed_forward_length = 172/],
    ['a tensor the model has no use for', () => writeGguf(setTensor(f32, 'output.weight', { name: 'blk.0.attn_q_norm.weight' })), /tensor "blk\.0\.attn_q_norm\.weight": not part of a llama model/],
    ['a tensor name twice', () => writeGguf(setTensor(f32, 'blk.0.ffn_norm.weight', { name: 'blk.0.attn_norm.weight' })), /tensor "blk\.0\.attn_norm\.weight" appears twice/],
    // types whose byte size does not match the data region
    ['F16 over F32 data', () => writeGguf(setTensor(f32, 'output.weight', { dtype: 1 })), /tensor "output\.weight": its data region \(up to tensor "[\w.]+"\) does not match F16 \[64, 512\] \(expected 65536 bytes, got 131072\)/],
    ['F16 over the last F32 tensor', () => writeGguf(setTensor(f32, LAST, { dtype: 1 })), /the file goes on past the last tensor's data \(F16/],
    ['Q4_0 over Q8_0 data', () => writeGguf(setTensor(q8, 'token_embd.weight', { dtype: 2 })), /tensor "token_embd\.weight": its data region .* does not match Q4_0 \[64, 512\]/],
    ['Q8_0 over rows of 172', () => writeGguf(setTensor(q8, 'blk.0.ffn_down.weight', { dtype: 8 })), /tensor "blk\.0\.ffn_down\.weight": rows of 172 elements are not a multiple of the Q8_0 block \(32\)/],
    ['F32 over Q8_0 data', () => writeGguf(setTensor(q8, 'output.weight', { dtype: 0 })), /overlap tensor "output\.weight"/],
    // offsets
    ['two tensors at one offset', () => writeGguf(setTensor(f32, 'blk.0.attn_k.weight', { offset: f32.tensors.find((t) => t.name === 'blk.0.attn_q.weight')!.offset })), /tensor "blk\.0\.attn_k\.weight": bytes \d+\.\.\d+ overlap tensor "blk\.0\.attn_q\.weight"/],
    ['every offset zero', () => writeGguf({ ...cloneParts(f32), tensors: f32.tensors.map((t) => ({ ...t, offset: 0n })) }), /overlap tensor "token_embd\.weight"/],
    // general.alignment
    ['alignment 7', () => writeGguf(setMeta(f32, 'general.alignment', 7)), /general\.alignment: 7 is not a power of two/],
    ['alignment 0', () => writeGguf(setMeta(f32, 'general.alignment', 0)), /general\.alignment: 0 is not a power of two/],
    ['alignment 2^31', () => writeGguf(setMeta(f32, 'general.alignment', 2 ** 31)), /general\.alignment = 2147483648: the tensor data would start at byte 2147483648, past the end of the file/],
    ['alignment 2^32 - 1', () => writeGguf(setMeta(f32, 'general.alignment', 2 ** 32 - 1)), /general\.alignment: 4294967295 is not a power of two/],
    ['alignment as a string', () => writeGguf(setMeta(f32, 'general.alignment', '32', GGUFValueType.STRING)), /general\.alignment: expected an unsigned integer, got "32"/],
    // the tokenizer against the vocabulary
    ['bos_token_id 512 of 512 tokens', () => writeGguf(setMeta(f32, 'tokenizer.ggml.bos_token_id', 512)), /tokenizer\.ggml\.bos_token_id: 512 is outside the vocabulary \(expected 0\.\.511, got 512\)/],
    ['eos_token_id 100000', () => writeGguf(setMeta(f32, 'tokenizer.ggml.eos_token_id', 100000)), /tokenizer\.ggml\.eos_token_id: 100000 is outside the vocabulary/],
    ['unknown_token_id "none"', () => writeGguf(setMeta(f32, 'tokenizer.ggml.unknown_token_id', 0xffffffff)), /tokenizer\.ggml\.unknown_token_id: 4294967295 is outside the vocabulary/],
    ['padding_token_id 777', () => writeGguf(setMeta(f32, 'tokenizer.ggml.padding_token_id', 777)), /tokenizer\.ggml\.padding_token_id: 777 is outside the vocabulary/],
    ['no bos_token_id where BOS is added', () => writeGguf(without(f32, 'tokenizer.ggml.bos_token_id')), /tokenizer\.ggml\.bos_token_id: missing, but the tokenizer adds BOS/],
    ['no tokenizer.ggml.model', () => writeGguf(without(f32, 'tokenizer.ggml.model')), /tokenizer\.ggml\.model: missing \(expected "llama" or "gpt2"\)/],
    ['tokenizer.ggml.model "rwkv"', () => writeGguf(setMeta(f32, 'tokenizer.ggml.model', 'rwkv')), /tokenizer\.ggml\.model: "rwkv" is not supported/],
    ['no token list', () => writeGguf(without(f32, 'tokenizer.ggml.tokens')), /tokenizer\.ggml\.tokens: expected a list of token strings, got nothing/],
    ['fewer token types than tokens', () => writeGguf(setMeta(f32, 'tokenizer.ggml.token_type', (f32.metadata.get('tokenizer.ggml.token_type')!.value as number[]).slice(0, 500), GGUFValueType.ARRAY)), /tokenizer\.ggml\.token_type: expected one entry per token \(expected 512, got 500\)/],
    ['a NaN token score', () => writeGguf(setMeta(f32, 'tokenizer.ggml.scores', Object.assign([...(f32.metadata.get('tokenizer.ggml.scores')!.value as number[])], { 7: Number.NaN }), GGUFValueType.ARRAY)), /tokenizer\.ggml\.scores: entry 7 is not a finite number/],
    // hyperparameters
    ['a NaN RMSNorm epsilon', () => writeGguf(setMeta(f32, 'llama.attention.layer_norm_rms_epsilon', Number.NaN)), /llama\.attention\.layer_norm_rms_epsilon: RMSNorm epsilon is not a number \(expected a number in \(0, 1\)\)/],
    ['embedding_length as a string', () => writeGguf(setMeta(f32, 'llama.embedding_length', '64', GGUFValueType.STRING)), /llama\.embedding_length: expected a number, got "64"/],
    ['head_count 0', () => writeGguf(setMeta(f32, 'llama.attention.head_count', 0)), /llama\.attention\.head_count: nHeads = 0 is not a valid size/],
  ];
  for (const [what, make, field] of cases) {
    it(what, async () => {
      await refused(write(`${what.replace(/\W+/g, '_')}.gguf`, make()), field);
    });
  }

  it('every byte of the fixed header and the tensor table flipped (every 3rd of the Q8_0 table): refused, in one clean line', async () => {
    // (the padding after the table is not looked at, as in llama.cpp: those flips are harmless)
    await sweep(F32, [[0, 24], f32.tableRange], 1, true);
    await sweep(Q8, [q8.tableRange], 3, true);
  });

  it('metadata bytes flipped (every 7th): refused in one clean line, or a file that is still consistent', async () => {
    // a flip inside a token string or a score changes the vocabulary, not the file's structure:
    // those load; everything else is refused with a model-file message
    await sweep(F32, [[24, f32.tableRange[0]]], 7, false);
  });
});

/**
 * Flips each `stride`-th byte of the given ranges in a copy of `file` (written in place and flipped
 * back, so the copy is written once) and opens it: a refusal must be one clean ModelFileError line;
 * with `mustRefuse` an accepted file is a failure too. Failures are collected and reported together.
 */
async function sweep(file: string, ranges: [number, number][], stride: number, mustRefuse: boolean): Promise<void> {
  const path = join(dir, `sweep-${file.split('/').pop()}`);
  copyFileSync(file, path);
  const original = readFileSync(path);
  const fd = openSync(path, 'r+');
  const failures: string[] = [];
  let refusals = 0;
  try {
    for (const [from, to] of ranges) {
      for (let at = from; at < to; at += stride) {
        writeSync(fd, Buffer.from([original[at] ^ 0xff]), 0, 1, at);
        const err = await openModel(path).then(
          () => undefined,
          (e: unknown) => e,
        );
        writeSync(fd, original, at, 1, at);
        if (err === undefined) {
          if (mustRefuse) failures.push(`byte ${at}: accepted`);
          continue;
        }
        refusals++;
        const message = err instanceof Error ? err.message : String(err);
        if (!(err instanceof ModelFileError) || !message.startsWith(`${path}: `) || LEAK.test(message.replaceAll(path, '')) || message.length >= 400) failures.push(`byte ${at}: ${message.slice(0, 200)}`);
      }
    }
  } finally {
    closeSync(fd);
  }
  expect(failures.slice(0, 10)).toEqual([]);
  expect(refusals).toBeGreaterThan(0);
}

describe('llama2.c checkpoints that lie are refused, naming the field', () => {
  let bin: Buffer;
  let tok: Buffer;
  beforeAll(() => {
    bin = readFileSync(BIN);
    tok = readFileSync(TOK);
    copyFileSync(TOK, join(dir, 'tok512.bin'));
  });
  /** The checkpoint with header field i (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len) set to v. */
  const header = (i: number, v: number) => {
    const b = Buffer.from(bin);
    b.writeInt32LE(v, 4 * i);
    return b;
  };
  const cases: [string, () => Buffer, RegExp][] = [
    ['a header cut short', () => bin.subarray(0, 20), /too short for a llama2\.c checkpoint header/],
    ['truncated in the embedding', () => bin.subarray(0, 50_000), /truncated: tensor "token_embd\.weight" needs bytes 28\.\.131100 but the file has 50000/],
    ['truncated in the RoPE tables', () => bin.subarray(0, bin.length - 1000), /truncated: the RoPE tables \(seq_len = 512\) need bytes/],
    ['bytes after the weights', () => Buffer.concat([bin, Buffer.alloc(4)]), /header: dim 64, hidden_dim 172, n_layers 5, n_heads 8, n_kv_heads 4, vocab_size 512, seq_len 512 imply a 1056540-byte file \(expected 1056540 bytes, got 1056544/],
    ['vocab_size negative (a separate classifier that is not there)', () => header(5, -512), /truncated: tensor "output\.weight" needs bytes/],
    ['n_layers 4 of 5', () => header(2, 4), /header: .*n_layers 4.* imply a \d+-byte file \(expected \d+ bytes, got 1056540/],
    ['n_layers 6 of 5', () => header(2, 6), /truncated: tensor "blk\.\d\.[\w.]+" needs bytes .* \(or the header overstates a size\)/],
    ['hidden_dim 171', () => header(1, 171), /header: dim 64, hidden_dim 171,.* imply a/],
    ['seq_len 1024', () => header(6, 1024), /the RoPE tables \(seq_len = 1024\)/],
    ['dim 0', () => header(0, 0), /: dim: dim = 0 is not a valid size/],
    ['dim negative', () => header(0, -64), /: dim: dim = -64 is not a valid size/],
    ['n_heads 7 for dim 64', () => header(3, 7), /n_heads: 7 heads do not divide dim = 64/],
    ['n_kv_heads 3 for 8 heads', () => header(4, 3), /n_kv_heads: 8 query heads cannot share 3 KV heads evenly/],
    ['n_layers 2^31 - 1', () => header(2, 2 ** 31 - 1), /truncated: tensor "blk\.\d+\.attn_norm\.weight" needs bytes/],
  ];
  for (const [what, make, field] of cases) {
    it(what, async () => {
      await refused(write(`${what.replace(/\W+/g, '_')}.bin`, make()), field);
    });
  }

  it('a tokenizer with fewer or more tokens than vocab_size, or a corrupt token length', async () => {
    const model = write('good.bin', bin);
    const short = write('short-tok.bin', tok.subarray(0, 3000));
    await refused(model, /truncated after \d+ of 512 tokens \(vocab_size in the checkpoint header\)/, { tokenizer: short, file: short });
    const extra = Buffer.alloc(9);
    extra.writeInt32LE(1, 4);
    extra[8] = 0x78;
    const long = write('long-tok.bin', Buffer.concat([tok, extra]));
    await refused(model, /more than the checkpoint's 512 tokens \(vocab_size in its header\): expected the file to end at byte 6227, got 6236 bytes/, { tokenizer: long, file: long });
    const bad = write('bad-len-tok.bin', flipped(tok, 4 + 4 + 3));
    await refused(model, /token 0: bad length -\d+ \(truncated or corrupt\)/, { tokenizer: bad, file: bad });
  });
});

describe('safetensors directories that lie are refused, naming the file and the field', () => {
  let base: string;
  beforeAll(async () => {
    const gguf: ModelSource = await openModel(F32);
    base = writeHfDir(gguf, join(dir, 'hf-base'));
  });
  it('the unedited directory loads (each case below differs from it in one place)', async () => {
    expect((await openModel(base)).config).toMatchObject({ dim: 64, ffn: 172, nLayers: 5, vocabSize: 512 });
  });
  type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  /** Rewrites the JSON header (and, when `edit` returns one, the data section) of a safetensors file. */
  const rewrite = (edit: (h: Header, data: Buffer) => Buffer | void) => (st: Buffer) => {
    const len = Number(st.readBigUInt64LE(0));
    const h = JSON.parse(st.toString('utf8', 8, 8 + len)) as Header;
    const data = edit(h, st.subarray(8 + len)) ?? st.subarray(8 + len);
    const json = Buffer.from(JSON.stringify(h));
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.length));
    return Buffer.concat([prefix, json, data]);
  };
  const withoutTensor = (name: string) => (st: Buffer) => {
    const file = join(dir, 'drop.safetensors');
    writeFileSync(file, st);
    const kept = [...readSafetensorsHeader(file).values()].filter((t) => t.name !== name);
    return Buffer.from(encodeSafetensors(kept.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: readSafetensorsBytes(t) }))));
  };
  const holeBeforeLast = rewrite((h, data) => {
    const last = Object.values(h)
      .filter((t) => t.data_offsets)
      .reduce((a, t) => (t.data_offsets[1] > a.data_offsets[1] ? t : a));
    const [from, to] = last.data_offsets;
    last.data_offsets = [from + 4, to + 4];
    return Buffer.concat([data.subarray(0, from), Buffer.alloc(4), data.subarray(from)]);
  });
  /** weights: edits model.safetensors; config: keys merged into config.json; names: the file the message must name */
  const cases: { what: string; weights?: (st: Buffer) => Buffer; config?: Record<string, unknown>; field: RegExp; names?: 'config.json' | 'the directory' }[] = [
    { what: 'too short for a header length', weights: (b) => b.subarray(0, 5), field: /truncated: 5 bytes is too short/ },
    { what: 'truncated in the header', weights: (b) => b.subarray(0, 100), field: /truncated: the header needs bytes 8\.\.\d+ but the file has 100 bytes/ },
    { what: 'truncated in the data', weights: (b) => b.subarray(0, b.length - 1000), field: /tensor "[\w.]+" needs bytes \d+\.\.\d+ but the file has \d+ bytes \(truncated\?\)/ },
    { what: 'a flipped header length byte', weights: (b) => flipped(b, 7), field: /header length \d+ is absurd/ },
    { what: 'a flipped JSON byte', weights: (b) => flipped(b, 8), field: /malformed safetensors header \(not JSON/ },
    { what: 'F16 over F32 data', weights: rewrite((h) => void (h['model.norm.weight'].dtype = 'F16')), field: /tensor "model\.norm\.weight": data_offsets \d+\.\.\d+ hold 256 bytes but F16 \[64\] needs 128/ },
    { what: 'an unknown dtype', weights: rewrite((h) => void (h['model.norm.weight'].dtype = 'I8')), field: /tensor "model\.norm\.weight" has dtype I8; supported dtypes/ },
    { what: 'overlapping offsets', weights: rewrite((h) => void (h['model.norm.weight'].data_offsets = [0, 256])), field: /tensors "[\w.]+" \(bytes 0\.\.\d+\) and "[\w.]+" \(bytes 0\.\.\d+\) overlap/ },
    { what: 'a hole in the data section', weights: holeBeforeLast, field: /data_offsets leave bytes \d+\.\.\d+ of the data section to no tensor/ },
    { what: 'bytes after the last tensor', weights: rewrite((_, data) => Buffer.concat([data, Buffer.alloc(8)])), field: /data section: 8 bytes after the last tensor belong to no tensor/ },
    { what: 'a transposed down_proj', weights: rewrite((h) => void (h['model.layers.0.mlp.down_proj.weight'].shape = [172, 64])), field: /tensor "model\.layers\.0\.mlp\.down_proj\.weight" has shape \[172, 64\] but config\.json implies \[64, 172\]/ },
    { what: 'intermediate_size 176', config: { intermediate_size: 176 }, field: /has shape \[\d+, \d+\] but config\.json implies \[(176, 64|64, 176)\]/ },
    { what: 'num_key_value_heads 2 of 4', config: { num_key_value_heads: 2 }, field: /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[32, 64\] but config\.json implies \[16, 64\]/ },
    { what: 'vocab_size 600 over 512 rows', config: { vocab_size: 600 }, field: /tensor "(model\.embed_tokens|lm_head)\.weight" has shape \[512, 64\] but config\.json implies \[600, 64\]/ },
    { what: 'num_hidden_layers 4 of 5', config: { num_hidden_layers: 4 }, field: /tensor "model\.layers\.4\.[\w.]+" is beyond num_hidden_layers = 4/ },
    { what: 'num_attention_heads 7 for hidden_size 64', config: { num_attention_heads: 7 }, names: 'config.json', field: /num_attention_heads: 7 heads do not divide hidden_size = 64/ },
    { what: 'num_hidden_layers 6 of 5', config: { num_hidden_layers: 6 }, names: 'the directory', field: /tensor "model\.layers\.5\.input_layernorm\.weight": missing \(num_hidden_layers = 6 implies layers 0\.\.5\)/ },
    { what: 'a layer tensor left out', weights: withoutTensor('model.layers.2.mlp.up_proj.weight'), names: 'the directory', field: /tensor "model\.layers\.2\.mlp\.up_proj\.weight": missing \(num_hidden_layers = 5 implies layers 0\.\.4\)/ },
  ];
  cases.forEach(({ what, weights, config, field, names }, i) => {
    it(what, async () => {
      const d = join(dir, `hf-${i}`);
      cpSync(base, d, { recursive: true });
      const st = join(d, 'model.safetensors');
      if (weights) writeFileSync(st, weights(readFileSync(st)));
      const cfg = join(d, 'config.json');
      if (config) writeFileSync(cfg, JSON.stringify({ ...JSON.parse(readFileSync(cfg, 'utf8')), ...config }));
      await refused(d, field, { file: names === 'config.json' ? cfg : names === 'the directory' ? d : st });
    });
  });
});

describe('through the CLI', () => {
  it('generate with a lying model file exits non-zero with the one line on stderr, no stack trace', async () => {
    const bad = write('cli-align.gguf', writeGguf(setMeta(f32, 'general.alignment', 2 ** 31)));
    // the generous limit covers node + tsx start-up and opening the software device on a loaded machine
    const result = await promisify(execFile)('node', [join(repoRoot, 'bin', 'wgserve.mjs'), 'generate', '--model', bad, '--prompt', 'x', '--max-tokens', '1'], { cwd: repoRoot, timeout: 120_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    expect(result.code).not.toBe(0);
    const lines = result.stderr.split('\n').filter((l) => l.length > 0);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^wgserve: ${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: general\\.alignment = 2147483648: the tensor data would start at byte 2147483648`));
    expect(lines[0]).not.toMatch(LEAK);
  });
});

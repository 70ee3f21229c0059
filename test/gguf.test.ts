import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../src/gpu/paths.ts';
import { ModelFileError, readGguf, readTensorBytes } from '../src/model/gguf.ts';
import { useTmpDirs } from './helpers/tmp.ts';

const STORIES = join(repoRoot, 'models', 'stories260K');

describe('GGUF reader', () => {
  const tmpDir = useTmpDirs('wgserve-gguf-');
  let original: Buffer;
  let dir: string;
  beforeAll(() => {
    original = readFileSync(join(STORIES, 'stories260K.gguf'));
    dir = tmpDir();
  });
  const variant = (name: string, bytes: Uint8Array) => {
    const p = join(dir, name);
    writeFileSync(p, bytes);
    return p;
  };
  it('reads the stories260K files: metadata, tensor table, bytes', async () => {
    for (const [file, types] of [
      ['stories260K.gguf', ['F32']],
      ['stories260K-F16.gguf', ['F16', 'F32']],
      ['stories260K-Q8_0.gguf', ['F16', 'F32', 'Q8_0']],
      ['stories260K-Q4_0.gguf', ['F16', 'F32', 'Q4_0']],
    ] as const) {
      const g = await readGguf(join(STORIES, file));
      expect(g.metadata['general.architecture']).toBe('llama');
      expect(g.tensors.size).toBe(48);
      expect([...new Set([...g.tensors.values()].map((t) => t.typeName))].sort()).toEqual([...types]);
      const emb = g.tensors.get('token_embd.weight')!;
      expect(emb.dims).toEqual([64, 512]);
      expect(readTensorBytes(g, emb).byteLength).toBe(emb.bytes);
    }
  });

  // Each corrupt file must fail with a ModelFileError that names the file and the problem (not a
  // RangeError from an allocation its counts ask for, nor a read past the end).
  const corrupt: [string, () => Uint8Array, RegExp][] = [
    ['wrong magic', () => Buffer.concat([Buffer.from('GGUX'), original.subarray(4)]), /not a GGUF file/],
    ['empty file', () => new Uint8Array(0), /not a GGUF file/],
    ['unsupported version', () => { const b = Buffer.from(original); b.writeUInt32LE(7, 4); return b; }, /version 7/],
    ['truncated in the header', () => original.subarray(0, 100), /truncated/],
    ['truncated in the tensor table', () => original.subarray(0, 20000), /truncated/],
    ['truncated in the tensor data', () => original.subarray(0, original.length - 1000), /tensor ".*" needs bytes .* \(truncated\?\)/],
    ['absurd tensor count', () => { const b = Buffer.from(original); b.writeBigUInt64LE(1n << 60n, 8); return b; }, /malformed GGUF header.*Tensor count/],
    ['absurd metadata count', () => { const b = Buffer.from(original); b.writeBigUInt64LE(1n << 60n, 16); return b; }, /malformed GGUF header/],
    ['unknown tensor type', () => withTensorType(original, 'output.weight', 12), /tensor "output.weight" has type Q4_K; supported tensor types: F32, F16, BF16, Q8_0, Q4_0/],
    ['type id nobody knows', () => withTensorType(original, 'output.weight', 999), /unknown type id 999/],
  ];
  for (const [what, make, message] of corrupt) {
    it(`refuses a file with ${what}`, async () => {
      const path = variant(`${what.replaceAll(' ', '_')}.gguf`, make());
      const err = await readGguf(path).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ModelFileError);
      expect((err as Error).message).toContain(path);
      expect((err as Error).message).toMatch(message);
    });
  }

  it('refuses a missing file', async () => {
    await expect(readGguf(join(dir, 'nope.gguf'))).rejects.toThrow(/cannot open model file \(ENOENT\)/);
  });
});

/** Rewrites the GGML type id of one tensor in the tensor table (name, n_dims, dims, type, offset). */
function withTensorType(file: Buffer, tensorName: string, typeId: number): Buffer {
  const b = Buffer.from(file);
  const name = Buffer.from(tensorName);
  let at = -1;
  for (let i = b.indexOf(name); i >= 0; i = b.indexOf(name, i + 1)) {
    if (b.readBigUInt64LE(i - 8) === BigInt(name.length)) at = i + name.length;
  }
  if (at < 0) throw new Error(`tensor ${tensorName} not found`);
  const nDims = b.readUInt32LE(at);
  b.writeUInt32LE(typeId, at + 4 + nDims * 8);
  return b;
}

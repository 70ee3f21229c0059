import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { GGMLQuantizationType } from '@huggingface/gguf';

/** GGML tensor types wgserve keeps on the GPU in their own format (decoded in the kernels). */
export const SUPPORTED_TYPES: Record<number, { name: string; blockElems: number; blockBytes: number }> = {
  [GGMLQuantizationType.F32]: { name: 'F32', blockElems: 1, blockBytes: 4 },
  [GGMLQuantizationType.F16]: { name: 'F16', blockElems: 1, blockBytes: 2 },
  [GGMLQuantizationType.BF16]: { name: 'BF16', blockElems: 1, blockBytes: 2 },
  [GGMLQuantizationType.Q8_0]: { name: 'Q8_0', blockElems: 32, blockBytes: 34 },
  [GGMLQuantizationType.Q4_0]: { name: 'Q4_0', blockElems: 32, blockBytes: 18 },
};
const SUPPORTED_NAMES = 'F32, F16, BF16, Q8_0, Q4_0';

export interface GgufTensor {
  name: string;
  /** GGML type id and name */
  type: number;
  typeName: string;
  /** dims as GGUF lists them: dims[0] (ne0) is the contiguous one */
  dims: number[];
  elements: number;
  /** absolute byte offset in the file, and byte length */
  offset: number;
  bytes: number;
}

export interface GgufFile {
  path: string;
  version: number;
  metadata: Record<string, unknown>;
  tensors: Map<string, GgufTensor>;
}

/** A model file that cannot be used, with one line naming the file and what is wrong with it. */
export class ModelFileError extends Error {
  override name = 'ModelFileError';
}

/** A name or string from a file, quoted for a one-line message: control characters escaped, long ones cut. */
export function quoted(name: string): string {
  const q = JSON.stringify(name);
  return q.length <= 82 ? q : `${q.slice(0, 80)}..."`;
}

/** A metadata value for a message: strings quoted, never a bare NaN or undefined. */
export function shown(v: unknown): string {
  if (typeof v === 'string') return quoted(v);
  if (typeof v === 'number') return Number.isNaN(v) ? 'not a number' : String(v);
  if (typeof v === 'bigint' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  return v === undefined || v === null ? 'nothing' : typeof v;
}

const MAX_DIM = 2 ** 40;
/** GGML_MAX_DIMS */
const MAX_DIMS = 4;
const DEFAULT_ALIGNMENT = 32;
/** the smallest tensor-table entry (empty name, no dims) and metadata entry (empty key, a u8 value) */
const MIN_TENSOR_ENTRY = 8 + 4 + 4 + 8;
const MIN_KV_ENTRY = 8 + 4 + 1;

type Label = string | (() => string);
const text = (l: Label) => (typeof l === 'string' ? l : l());

/** GGUF metadata value types of fixed size (gguf.md): id -> size and reader. 8 is a string, 9 an array. */
const SCALARS: Record<number, { bytes: number; read: (b: Buffer, at: number) => unknown }> = {
  0: { bytes: 1, read: (b, at) => b.readUInt8(at) },
  1: { bytes: 1, read: (b, at) => b.readInt8(at) },
  2: { bytes: 2, read: (b, at) => b.readUInt16LE(at) },
  3: { bytes: 2, read: (b, at) => b.readInt16LE(at) },
  4: { bytes: 4, read: (b, at) => b.readUInt32LE(at) },
  5: { bytes: 4, read: (b, at) => b.readInt32LE(at) },
  6: { bytes: 4, read: (b, at) => b.readFloatLE(at) },
  7: { bytes: 1, read: (b, at) => b.readUInt8(at) !== 0 },
  10: { bytes: 8, read: (b, at) => b.readBigUInt64LE(at) },
  11: { bytes: 8, read: (b, at) => b.readBigInt64LE(at) },
  12: { bytes: 8, read: (b, at) => b.readDoubleLE(at) },
};
const STRING = 8;
const ARRAY = 9;

/**
 * Reads the header sequentially, loading the file in growing chunks. Every read is checked against
 * the file size first, so a length or count that runs past the end is reported (naming the field
 * being read) before anything is allocated from it.
 */
class HeaderReader {
  private buf = Buffer.alloc(0);
  pos = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly path: string,
  ) {}

  /** Claims the next n bytes for `what` and returns where they start in `this.bytes` (which it may replace: read it after). */
  take(n: number | bigint, what: Label): number {
    const at = this.pos;
    if (BigInt(n) > BigInt(this.size - at)) {
      throw new ModelFileError(`${this.path}: ${text(what)}: truncated or corrupt: needs bytes ${at}..${BigInt(at) + BigInt(n)} but the file has ${this.size} bytes`);
    }
    const end = at + Number(n);
    if (end > this.buf.length) {
      const grown = Buffer.alloc(Math.min(this.size, Math.max(end, 2 * this.buf.length, 1 << 20)));
      this.buf.copy(grown);
      for (let done = this.buf.length; done < grown.length; ) {
        const got = readSync(this.fd, grown, done, grown.length - done, done);
        if (got <= 0) throw new ModelFileError(`${this.path}: ${text(what)}: the file ended early (changed while reading?)`);
        done += got;
      }
      this.buf = grown;
    }
    this.pos = end;
    return at;
  }

  get bytes(): Buffer {
    return this.buf;
  }

  u32(what: Label): number {
    const at = this.take(4, what);
    return this.buf.readUInt32LE(at);
  }

  u64(what: Label): bigint {
    const at = this.take(8, what);
    return this.buf.readBigUInt64LE(at);
  }

  str(what: Label): string {
    const n = this.u64(() => `${text(what)} (its length)`);
    const at = this.take(n, what);
    return this.buf.toString('utf8', at, this.pos);
  }

  /** One metadata value of GGUF type `type` (arrays of scalars are read in one bulk take). */
  value(type: number, what: Label, nested = false): unknown {
    if (type === STRING) return this.str(what);
    const scalar = SCALARS[type];
    if (scalar) {
      const at = this.take(scalar.bytes, what);
      return scalar.read(this.buf, at);
    }
    if (type !== ARRAY) throw new ModelFileError(`${this.path}: ${text(what)}: unknown GGUF value type ${type} (malformed GGUF header)`);
    if (nested) throw new ModelFileError(`${this.path}: ${text(what)}: arrays of arrays are not supported`);
    const sub = this.u32(() => `${text(what)} (its element type)`);
    const count = this.u64(() => `${text(what)} (its length)`);
    const elem = sub === STRING ? 8 : (SCALARS[sub]?.bytes ?? 1);
    // refuse a count the rest of the file cannot hold before allocating for it
    if (count * BigInt(elem) > BigInt(this.size - this.pos)) {
      throw new ModelFileError(`${this.path}: ${text(what)}: truncated or corrupt: an array of ${count} elements cannot fit in the ${this.size - this.pos} bytes left in the file`);
    }
    const n = Number(count);
    const out = new Array<unknown>(n);
    const item = SCALARS[sub];
    if (item) {
      const at = this.take(n * item.bytes, what);
      for (let i = 0; i < n; i++) out[i] = item.read(this.buf, at + i * item.bytes);
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = this.value(sub, () => `${text(what)}[${i}]`, true);
    return out;
  }
}

/**
 * Reads a GGUF v2/v3 header (metadata and tensor table) and checks it against the file before
 * anything else uses it: magic and version, every count and length within the file, the alignment
 * (a power of two), every tensor's type, shape and byte range, and the data section packed as GGUF
 * writers pack it (tensors in offset order, each at the aligned end of the one before, the last
 * ending the file; so no overlaps, no zero or stray offsets, and a byte size that matches the data
 * region). Anything wrong raises one ModelFileError line naming the file and the field.
 */
export async function readGguf(path: string): Promise<GgufFile> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new ModelFileError(`${path}: cannot open model file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const fd = openSync(path, 'r');
  try {
    return parse(new HeaderReader(fd, size, path), path);
  } finally {
    closeSync(fd);
  }
}

function parse(r: HeaderReader, path: string): GgufFile {
  const size = r.size;
  const notGguf = () => new ModelFileError(`${path}: not a GGUF file (expected the magic "GGUF" at offset 0)`);
  if (size < 4) throw notGguf();
  const magic = r.take(4, 'magic');
  if (r.bytes.toString('latin1', magic, magic + 4) !== 'GGUF') throw notGguf();
  const version = r.u32('GGUF version');
  if (version !== 2 && version !== 3) throw new ModelFileError(`${path}: GGUF version ${version} is not supported (2 and 3 are)`);
  const tensorCount = r.u64('tensor count');
  const kvCount = r.u64('metadata key count');
  const left = BigInt(size - r.pos);
  if (tensorCount * BigInt(MIN_TENSOR_ENTRY) > left) {
    throw new ModelFileError(`${path}: malformed GGUF header: Tensor count ${tensorCount} is more than a ${size}-byte file can hold (${MIN_TENSOR_ENTRY} bytes per tensor at least; truncated, or a corrupt count)`);
  }
  if (kvCount * BigInt(MIN_KV_ENTRY) > left) {
    throw new ModelFileError(`${path}: malformed GGUF header: metadata key count ${kvCount} is more than a ${size}-byte file can hold (${MIN_KV_ENTRY} bytes per key at least; truncated, or a corrupt count)`);
  }

  const metadata: Record<string, unknown> = {};
  for (let i = 0; i < Number(kvCount); i++) {
    const key = r.str(() => `metadata entry #${i} (its key)`);
    if (Object.hasOwn(metadata, key)) throw new ModelFileError(`${path}: metadata key ${quoted(key)} appears twice`);
    const type = r.u32(() => `metadata key ${quoted(key)} (its type)`);
    metadata[key] = r.value(type, () => `metadata key ${quoted(key)}`);
  }

  const table: { name: string; dims: bigint[]; type: number; offset: bigint }[] = [];
  for (let i = 0; i < Number(tensorCount); i++) {
    const name = r.str(() => `tensor table entry #${i} (its name)`);
    const where = () => `tensor ${quoted(name)} (tensor table entry #${i})`;
    const nDims = r.u32(where);
    if (nDims < 1 || nDims > MAX_DIMS) throw new ModelFileError(`${path}: ${where()}: n_dims ${nDims} is out of range (expected 1..${MAX_DIMS})`);
    const dims = Array.from({ length: nDims }, () => r.u64(where));
    const type = r.u32(where);
    const offset = r.u64(where);
    table.push({ name, dims, type, offset });
  }

  const alignment = checkAlignment(metadata['general.alignment'], path);
  // the data section starts at the first aligned byte after the tensor table
  const dataStart = Math.ceil(r.pos / alignment) * alignment;
  if (table.length > 0 && dataStart > size) {
    throw new ModelFileError(`${path}: general.alignment = ${alignment}: the tensor data would start at byte ${dataStart}, past the end of the file (${size} bytes; truncated, or a wrong alignment)`);
  }

  const tensors = new Map<string, GgufTensor>();
  for (const info of table) {
    const where = `${path}: tensor ${quoted(info.name)}`;
    if (!info.name) throw new ModelFileError(`${path}: tensor table: a tensor without a name (truncated or corrupt tensor table)`);
    if (tensors.has(info.name)) throw new ModelFileError(`${where} appears twice`);
    const type = SUPPORTED_TYPES[info.type];
    if (!type) {
      const typeName = GGMLQuantizationType[info.type] ?? `unknown type id ${info.type}`;
      throw new ModelFileError(`${where} has type ${typeName}; supported tensor types: ${SUPPORTED_NAMES}`);
    }
    if (info.dims.some((d) => d < 1n || d > BigInt(MAX_DIM))) throw new ModelFileError(`${where} has an invalid shape [${info.dims.join(', ')}] (expected dims in 1..${MAX_DIM})`);
    const dims = info.dims.map(Number);
    const elements = dims.reduce((a, b) => a * b, 1);
    const bytes = (elements / type.blockElems) * type.blockBytes;
    if (!Number.isSafeInteger(bytes)) throw new ModelFileError(`${where} has an absurd shape [${dims.join(', ')}]`);
    if (dims[0] % type.blockElems !== 0) {
      throw new ModelFileError(`${where}: rows of ${dims[0]} elements are not a multiple of the ${type.name} block (${type.blockElems})`);
    }
    if (info.offset % BigInt(alignment) !== 0n) throw new ModelFileError(`${where}: offset ${info.offset} is not a multiple of general.alignment = ${alignment}`);
    if (info.offset + BigInt(dataStart + bytes) > BigInt(size)) {
      throw new ModelFileError(`${where} needs bytes ${BigInt(dataStart) + info.offset}..${BigInt(dataStart + bytes) + info.offset} but the file has ${size} bytes (truncated?)`);
    }
    tensors.set(info.name, { name: info.name, type: info.type, typeName: type.name, dims, elements, offset: dataStart + Number(info.offset), bytes });
  }
  checkPacking([...tensors.values()], dataStart, alignment, size, path);
  return { path, version, metadata, tensors };
}

function checkAlignment(raw: unknown, path: string): number {
  if (raw === undefined) return DEFAULT_ALIGNMENT;
  const a = typeof raw === 'bigint' ? raw : typeof raw === 'number' && Number.isInteger(raw) ? BigInt(raw) : undefined;
  if (a === undefined) throw new ModelFileError(`${path}: general.alignment: expected an unsigned integer, got ${shown(raw)}`);
  if (a < 1n || (a & (a - 1n)) !== 0n) throw new ModelFileError(`${path}: general.alignment: ${a} is not a power of two (expected 1, 2, 4, ..., 2^31)`);
  if (a > 2n ** 31n) throw new ModelFileError(`${path}: general.alignment: ${a} is beyond a uint32 (expected 1, 2, 4, ..., 2^31)`);
  return Number(a);
}

/**
 * GGUF writers store tensor data back to back in table order, each tensor padded to the alignment:
 * sorted by offset, the first starts the data section and each later one starts at the aligned end
 * of the one before, and the file ends within one alignment of the last. A tensor whose type or
 * shape claims more bytes than its region overlaps the next; one that claims fewer leaves a gap.
 */
function checkPacking(tensors: GgufTensor[], dataStart: number, alignment: number, size: number, path: string): void {
  const pad = (x: number) => Math.ceil(x / alignment) * alignment;
  const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
  const describe = (t: GgufTensor) => `${t.typeName} [${t.dims.join(', ')}]`;
  let prev: GgufTensor | undefined;
  for (const t of sorted) {
    const expected = prev ? pad(prev.offset + prev.bytes) : dataStart;
    if (prev && t.offset < prev.offset + prev.bytes) {
      throw new ModelFileError(`${path}: tensor ${quoted(t.name)}: bytes ${t.offset}..${t.offset + t.bytes} overlap tensor ${quoted(prev.name)} (bytes ${prev.offset}..${prev.offset + prev.bytes})`);
    }
    if (t.offset !== expected) {
      throw new ModelFileError(
        prev
          ? `${path}: tensor ${quoted(prev.name)}: its data region (up to tensor ${quoted(t.name)}) does not match ${describe(prev)} (expected ${expected - prev.offset} bytes, got ${t.offset - prev.offset})`
          : `${path}: tensor ${quoted(t.name)}: the first tensor does not start the data section (expected offset 0, got ${t.offset - dataStart})`,
      );
    }
    prev = t;
  }
  if (prev && size > pad(prev.offset + prev.bytes)) {
    throw new ModelFileError(`${path}: tensor ${quoted(prev.name)}: the file goes on past the last tensor's data (${describe(prev)}; expected the file to end by byte ${pad(prev.offset + prev.bytes)}, got ${size} bytes)`);
  }
}

const TOKENIZER_MODELS = ['llama', 'gpt2'];
/** llama.cpp's token types run 0 (undefined) .. 6 (byte) */
const MAX_TOKEN_TYPE = 6;
/** A special id that llama.cpp writes for "none" (-1 stored as a uint32) */
const NO_TOKEN = 0xffffffff;

/**
 * Checks the `tokenizer.ggml.*` metadata before a tokenizer is built from it: a known tokenizer
 * model, the token list, scores and token types of one length each (scores finite, types known),
 * merges for BPE, and every special token id inside the vocabulary. BOS, EOS and UNK are used as
 * they stand, so they must be real ids; other special ids may be "none" (0xffffffff).
 */
export function checkGgufTokenizer(md: Record<string, unknown>, file: string): void {
  const model = md['tokenizer.ggml.model'];
  if (typeof model !== 'string' || !TOKENIZER_MODELS.includes(model)) {
    throw new ModelFileError(`${file}: tokenizer.ggml.model: ${model === undefined ? 'missing' : `${shown(model)} is not supported`} (expected "llama" or "gpt2")`);
  }
  const tokens = md['tokenizer.ggml.tokens'];
  if (!Array.isArray(tokens) || tokens.length === 0) throw new ModelFileError(`${file}: tokenizer.ggml.tokens: expected a list of token strings, got ${shown(tokens)}`);
  const badToken = tokens.findIndex((t) => typeof t !== 'string');
  if (badToken >= 0) throw new ModelFileError(`${file}: tokenizer.ggml.tokens: entry ${badToken} is not a string (got ${shown(tokens[badToken])})`);
  const n = tokens.length;
  const perToken = (key: string, ok: (v: unknown) => boolean, what: string) => {
    const v = md[key];
    if (v === undefined) return;
    if (!Array.isArray(v) || v.length !== n) throw new ModelFileError(`${file}: ${key}: expected one entry per token (expected ${n}, got ${Array.isArray(v) ? v.length : shown(v)})`);
    const bad = v.findIndex((x) => !ok(x));
    if (bad >= 0) throw new ModelFileError(`${file}: ${key}: entry ${bad} is not ${what} (got ${shown(v[bad])})`);
  };
  perToken('tokenizer.ggml.scores', (x) => typeof x === 'number' && Number.isFinite(x), 'a finite number');
  perToken('tokenizer.ggml.token_type', (x) => Number.isInteger(x) && (x as number) >= 0 && (x as number) <= MAX_TOKEN_TYPE, `a token type (0..${MAX_TOKEN_TYPE})`);
  if (model === 'gpt2') {
    const merges = md['tokenizer.ggml.merges'];
    if (!Array.isArray(merges) || merges.some((m) => typeof m !== 'string')) throw new ModelFileError(`${file}: tokenizer.ggml.merges: expected a list of merge strings for a gpt2 tokenizer, got ${shown(merges)}`);
  }
  const addBos = md['tokenizer.ggml.add_bos_token'] ?? model === 'llama';
  const addEos = md['tokenizer.ggml.add_eos_token'] ?? false;
  for (const key of Object.keys(md)) {
    const m = /^tokenizer\.ggml\.(\w+)_token_id$/.exec(key);
    if (!m) continue;
    const v = md[key];
    const id = typeof v === 'bigint' ? Number(v) : v;
    if (typeof id !== 'number' || !Number.isInteger(id)) throw new ModelFileError(`${file}: ${key}: expected a token id, got ${shown(v)}`);
    const usedAsIs = ['bos', 'eos', 'unknown'].includes(m[1]);
    if (!usedAsIs && (id === NO_TOKEN || id === -1)) continue;
    if (id < 0 || id >= n) throw new ModelFileError(`${file}: ${key}: ${id} is outside the vocabulary (expected 0..${n - 1}, got ${id})`);
  }
  if (addBos === true && md['tokenizer.ggml.bos_token_id'] === undefined) throw new ModelFileError(`${file}: tokenizer.ggml.bos_token_id: missing, but the tokenizer adds BOS`);
  if (addEos === true && md['tokenizer.ggml.eos_token_id'] === undefined) throw new ModelFileError(`${file}: tokenizer.ggml.eos_token_id: missing, but the tokenizer adds EOS`);
}

/** Reads one tensor's raw bytes (as stored: GGUF block layout for quantised types). */
export function readTensorBytes(file: GgufFile, tensor: GgufTensor): Uint8Array {
  const out = new Uint8Array(tensor.bytes);
  const fd = openSync(file.path, 'r');
  try {
    let done = 0;
    while (done < tensor.bytes) {
      const n = readSync(fd, out, done, tensor.bytes - done, tensor.offset + done);
      if (n <= 0) throw new ModelFileError(`${file.path}: tensor ${quoted(tensor.name)} ends early (file changed while reading?)`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

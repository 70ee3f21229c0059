import { closeSync, existsSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ModelFileError, quoted } from './gguf.ts';

/** safetensors dtypes wgserve reads, with their element size in bytes. */
export const SAFETENSORS_DTYPES = { F32: 4, F16: 2, BF16: 2 } as const;
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPES;
const SUPPORTED_NAMES = Object.keys(SAFETENSORS_DTYPES).join(', ');

/** The safetensors format caps the JSON header at 100 MB; anything larger is corruption. */
const MAX_HEADER_BYTES = 100_000_000;
const MAX_DIM = 2 ** 40;

export interface SafetensorsTensor {
  name: string;
  /** the file that holds it (a shard of a sharded model) */
  file: string;
  dtype: SafetensorsDtype;
  /** as the header lists it: row-major, the last dimension contiguous (GGUF dims reversed) */
  shape: number[];
  elements: number;
  /** absolute byte offset in the file, and byte length */
  offset: number;
  bytes: number;
}

/**
 * Reads and checks one safetensors file's header: an 8-byte little-endian header length, a JSON
 * object of `name -> { dtype, shape, data_offsets: [begin, end] }` (offsets relative to the end
 * of the header; `__metadata__` is ignored), then the data. Only the header is read; every check
 * that could otherwise allocate or read out of bounds (header length, dtype, shape, byte ranges,
 * overlaps) raises a ModelFileError naming the file and the tensor.
 */
export function readSafetensorsHeader(path: string): Map<string, SafetensorsTensor> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new ModelFileError(`${path}: cannot open safetensors file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (size < 8) throw new ModelFileError(`${path}: truncated: ${size} bytes is too short for a safetensors header length (8 bytes)`);
  const fd = openSync(path, 'r');
  let headerText: string;
  let dataStart: number;
  try {
    const lenBuf = Buffer.alloc(8);
    readFully(fd, lenBuf, 0, path, 'the header length');
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(MAX_HEADER_BYTES)) {
      throw new ModelFileError(`${path}: header length ${headerLen} is absurd (safetensors headers are at most ${MAX_HEADER_BYTES} bytes): not a safetensors file, or corrupt`);
    }
    const n = Number(headerLen);
    if (n < 2) throw new ModelFileError(`${path}: header length ${n} is too small for a JSON header`);
    if (8 + n > size) throw new ModelFileError(`${path}: truncated: the header needs bytes 8..${8 + n} but the file has ${size} bytes`);
    const header = Buffer.alloc(n);
    readFully(fd, header, 8, path, 'the header');
    headerText = header.toString('utf8');
    dataStart = 8 + n;
  } finally {
    closeSync(fd);
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(headerText);
  } catch (err) {
    // (not the parser's message: it quotes header bytes, which may be binary)
    throw new ModelFileError(`${path}: malformed safetensors header (not JSON: ${err instanceof SyntaxError ? 'a syntax error' : String(err)})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ModelFileError(`${path}: malformed safetensors header (not a JSON object)`);

  const dataSize = size - dataStart;
  const tensors = new Map<string, SafetensorsTensor>();
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(parsed as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const where = `${path}: tensor ${quoted(name)}`;
    if (typeof entry !== 'object' || entry === null) throw new ModelFileError(`${where}: malformed header entry (not an object)`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (typeof dtype !== 'string') throw new ModelFileError(`${where}: header entry without a dtype`);
    if (!Object.hasOwn(SAFETENSORS_DTYPES, dtype)) throw new ModelFileError(`${where} has dtype ${/^\w{1,16}$/.test(dtype) ? dtype : quoted(dtype)}; supported dtypes: ${SUPPORTED_NAMES}`);
    const elemBytes = SAFETENSORS_DTYPES[dtype as SafetensorsDtype];
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0 || d > MAX_DIM)) {
      throw new ModelFileError(`${where} has an invalid shape ${JSON.stringify(shape)}`);
    }
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(elements * elemBytes)) throw new ModelFileError(`${where} has an absurd element count`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] < offsets[0]) {
      throw new ModelFileError(`${where} has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end - begin !== elements * elemBytes) {
      throw new ModelFileError(`${where}: data_offsets ${begin}..${end} hold ${end - begin} bytes but ${dtype} [${shape.join(', ')}] needs ${elements * elemBytes}`);
    }
    if (end > dataSize) {
      throw new ModelFileError(`${where} needs bytes ${dataStart + begin}..${dataStart + end} but the file has ${size} bytes (truncated?)`);
    }
    ranges.push({ name, begin, end });
    tensors.set(name, { name, file: path, dtype: dtype as SafetensorsDtype, shape: shape as number[], elements, offset: dataStart + begin, bytes: end - begin });
  }
  // The format indexes the whole data section, without holes (the reference reader refuses gaps
  // and trailing bytes too): sorted by start, each non-empty range begins where the one before ends.
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let reach: (typeof ranges)[number] | undefined;
  for (const r of ranges) {
    if (r.end === r.begin) continue;
    if (reach && r.begin < reach.end) {
      throw new ModelFileError(`${path}: tensors ${quoted(reach.name)} (bytes ${reach.begin}..${reach.end}) and ${quoted(r.name)} (bytes ${r.begin}..${r.end}) overlap`);
    }
    const from = reach?.end ?? 0;
    if (r.begin !== from) {
      throw new ModelFileError(`${path}: tensor ${quoted(r.name)}: data_offsets leave bytes ${from}..${r.begin} of the data section to no tensor (expected ${from}..${r.end - r.begin + from}, got ${r.begin}..${r.end})`);
    }
    reach = r;
  }
  if ((reach?.end ?? 0) !== dataSize) {
    throw new ModelFileError(`${path}: data section: ${dataSize - (reach?.end ?? 0)} bytes after the last tensor belong to no tensor (expected the file to end at byte ${dataStart + (reach?.end ?? 0)}, got ${size} bytes)`);
  }
  return tensors;
}

/** Reads one tensor's bytes as stored (little-endian elements, row-major). */
export function readSafetensorsBytes(t: SafetensorsTensor): Uint8Array {
  const out = new Uint8Array(t.bytes);
  const fd = openSync(t.file, 'r');
  try {
    let done = 0;
    while (done < t.bytes) {
      const n = readSync(fd, out, done, t.bytes - done, t.offset + done);
      if (n <= 0) throw new ModelFileError(`${t.file}: tensor ${quoted(t.name)} ends early (file changed while reading?)`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/**
 * The tensors of a model directory: the shards that `model.safetensors.index.json` lists (every
 * tensor of its weight_map must be in the shard it names), else `model.safetensors`, else every
 * `*.safetensors` file in the directory (a tensor name may appear in only one of them).
 */
export function openSafetensorsDir(dir: string): Map<string, SafetensorsTensor> {
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) return openIndexed(index);
  const single = join(dir, 'model.safetensors');
  const files = existsSync(single)
    ? [single]
    : readdirSync(dir)
        .filter((f) => f.endsWith('.safetensors'))
        .sort()
        .map((f) => join(dir, f));
  if (files.length === 0) throw new ModelFileError(`${dir}: no *.safetensors weights in the model directory`);
  const all = new Map<string, SafetensorsTensor>();
  for (const file of files) {
    for (const t of readSafetensorsHeader(file).values()) {
      const before = all.get(t.name);
      if (before) throw new ModelFileError(`${file}: tensor ${quoted(t.name)} is also in ${before.file}`);
      all.set(t.name, t);
    }
  }
  return all;
}

function openIndexed(index: string): Map<string, SafetensorsTensor> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(index, 'utf8'));
  } catch (err) {
    throw new ModelFileError(`${index}: malformed JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const map = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new ModelFileError(`${index}: no weight_map object`);
  const dir = dirname(index);
  const shards = new Map<string, Map<string, SafetensorsTensor>>();
  const out = new Map<string, SafetensorsTensor>();
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard !== basename(shard)) throw new ModelFileError(`${index}: tensor ${quoted(name)} maps to ${JSON.stringify(shard)}, not a file name in the model directory`);
    let tensors = shards.get(shard);
    if (!tensors) {
      const file = join(dir, shard);
      if (!existsSync(file)) throw new ModelFileError(`${index}: shard ${shard} (tensor ${quoted(name)}) is missing`);
      tensors = readSafetensorsHeader(file);
      shards.set(shard, tensors);
    }
    const t = tensors.get(name);
    if (!t) throw new ModelFileError(`${join(dir, shard)}: tensor ${quoted(name)} is listed in ${basename(index)} but not in the shard`);
    out.set(name, t);
  }
  return out;
}

/**
 * Writes a safetensors file (tests and tools): tensors in the order given, packed without gaps,
 * the header padded with spaces to a multiple of 8 bytes as the reference writer does.
 */
export function encodeSafetensors(tensors: { name: string; dtype: SafetensorsDtype; shape: number[]; data: Uint8Array }[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const need = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPES[t.dtype];
    if (t.data.byteLength !== need) throw new Error(`encodeSafetensors: tensor ${quoted(t.name)} has ${t.data.byteLength} bytes, ${t.dtype} [${t.shape.join(', ')}] needs ${need}`);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + need] };
    offset += need;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let at = 8 + head.length;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}

function readFully(fd: number, buf: Buffer, position: number, path: string, what: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw new ModelFileError(`${path}: truncated while reading ${what}`);
    done += n;
  }
}

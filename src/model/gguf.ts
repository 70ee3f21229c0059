import { openSync, readSync, closeSync, statSync } from 'node:fs';
import { GGMLQuantizationType, gguf } from '@huggingface/gguf';

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

export class ModelFileError extends Error {
  override name = 'ModelFileError';
}

const MAX_DIM = 2 ** 40;

/**
 * Reads a GGUF v2/v3 header (metadata and tensor table via @huggingface/gguf) and checks it against
 * the file: magic and version first (cheap, clear errors), then every tensor's type, shape and byte
 * range. Truncated files, unknown tensor types and absurd sizes raise ModelFileError naming the
 * file and the tensor; nothing is allocated from unchecked sizes.
 */
export async function readGguf(path: string): Promise<GgufFile> {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new ModelFileError(`${path}: cannot open model file (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const head = Buffer.alloc(8);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, head, 0, 8, 0);
  } finally {
    closeSync(fd);
  }
  if (size < 24 || head.toString('latin1', 0, 4) !== 'GGUF') {
    throw new ModelFileError(`${path}: not a GGUF file (expected the magic "GGUF" at offset 0)`);
  }
  const version = head.readUInt32LE(4);
  if (version !== 2 && version !== 3) throw new ModelFileError(`${path}: GGUF version ${version} is not supported (2 and 3 are)`);

  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(path, { allowLocalFile: true });
  } catch (err) {
    throw new ModelFileError(`${path}: malformed GGUF header: ${err instanceof Error ? err.message : String(err)}`);
  }
  const dataStart = Number(parsed.tensorDataOffset);
  // (a vocabulary-only file has no tensors and may end before the data section's alignment padding)
  if (parsed.tensorInfos.length > 0 && !(dataStart <= size)) throw new ModelFileError(`${path}: truncated: the header ends at byte ${dataStart} but the file has ${size} bytes`);

  const tensors = new Map<string, GgufTensor>();
  for (const info of parsed.tensorInfos) {
    const where = `${path}: tensor "${info.name}"`;
    if (!info.name) throw new ModelFileError(`${path}: truncated or corrupt tensor table (a tensor without a name)`);
    if (tensors.has(info.name)) throw new ModelFileError(`${where} appears twice`);
    const type = SUPPORTED_TYPES[info.dtype];
    if (!type) {
      const typeName = GGMLQuantizationType[info.dtype] ?? `unknown type id ${info.dtype}`;
      throw new ModelFileError(`${where} has type ${typeName}; supported tensor types: ${SUPPORTED_NAMES}`);
    }
    const dims = info.shape.map(Number);
    if (dims.length === 0 || dims.some((d) => !Number.isSafeInteger(d) || d <= 0 || d > MAX_DIM)) {
      throw new ModelFileError(`${where} has an invalid shape [${info.shape.join(', ')}]`);
    }
    const elements = dims.reduce((a, b) => a * b, 1);
    if (!Number.isSafeInteger(elements)) throw new ModelFileError(`${where} has an absurd element count`);
    if (dims[0] % type.blockElems !== 0) {
      throw new ModelFileError(`${where}: rows of ${dims[0]} elements are not a multiple of the ${type.name} block (${type.blockElems})`);
    }
    const bytes = (elements / type.blockElems) * type.blockBytes;
    const offset = dataStart + Number(info.offset);
    if (!Number.isSafeInteger(offset) || offset + bytes > size) {
      throw new ModelFileError(`${where} needs bytes ${offset}..${offset + bytes} but the file has ${size} bytes (truncated?)`);
    }
    tensors.set(info.name, { name: info.name, type: info.dtype, typeName: type.name, dims, elements, offset, bytes });
  }
  return { path, version, metadata: parsed.metadata as Record<string, unknown>, tensors };
}

/** Reads one tensor's raw bytes (as stored: GGUF block layout for quantised types). */
export function readTensorBytes(file: GgufFile, tensor: GgufTensor): Uint8Array {
  const out = new Uint8Array(tensor.bytes);
  const fd = openSync(file.path, 'r');
  try {
    let done = 0;
    while (done < tensor.bytes) {
      const n = readSync(fd, out, done, tensor.bytes - done, tensor.offset + done);
      if (n <= 0) throw new ModelFileError(`${file.path}: tensor "${tensor.name}" ends early (file changed while reading?)`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

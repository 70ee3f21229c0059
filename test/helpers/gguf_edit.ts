import { readFileSync } from 'node:fs';
import { type GGUFTypedMetadata, GGUFValueType, gguf, serializeGgufMetadata } from '@huggingface/gguf';

// Taking a GGUF file apart and writing it back, to plant one inconsistency at a time. Parsing and
// the metadata encoding are @huggingface/gguf's, not the reader under test's.

type Entry = { value: unknown; type: GGUFValueType; subType?: GGUFValueType };

export interface GgufParts {
  /** metadata in file order, with GGUF value types */
  metadata: Map<string, Entry>;
  /** the tensor table in file order; offsets relative to the data section */
  tensors: { name: string; shape: bigint[]; dtype: number; offset: bigint }[];
  /** the data section as stored (from the aligned end of the tensor table to the end of the file) */
  data: Buffer;
  /** where the tensor table starts and ends in the original file */
  tableRange: [number, number];
}

export async function readGgufParts(path: string): Promise<GgufParts> {
  const parsed = await gguf(path, { allowLocalFile: true, typedMetadata: true });
  const metadata = new Map<string, Entry>();
  for (const [key, entry] of Object.entries(parsed.typedMetadata)) {
    if (!['version', 'tensor_count', 'kv_count'].includes(key)) metadata.set(key, entry as Entry);
  }
  return {
    metadata,
    tensors: parsed.tensorInfos.map((t) => ({ name: t.name, shape: [...t.shape], dtype: t.dtype, offset: t.offset })),
    data: readFileSync(path).subarray(Number(parsed.tensorDataOffset)),
    tableRange: parsed.tensorInfoByteRange as [number, number],
  };
}

/** A deep enough copy to edit without touching the original. */
export function cloneParts(p: GgufParts): GgufParts {
  return {
    metadata: new Map([...p.metadata].map(([k, e]) => [k, { ...e, value: Array.isArray(e.value) ? [...e.value] : e.value }])),
    tensors: p.tensors.map((t) => ({ ...t, shape: [...t.shape] })),
    data: p.data,
    tableRange: p.tableRange,
  };
}

/**
 * Writes a GGUF v3 file: metadata, tensor table, zero padding to `layoutAlignment` (the padding
 * actually used, whatever general.alignment claims), then the data section unchanged.
 */
export function writeGguf(p: GgufParts, layoutAlignment = 32): Buffer {
  const typed = {
    version: { value: 3, type: GGUFValueType.UINT32 },
    tensor_count: { value: BigInt(p.tensors.length), type: GGUFValueType.UINT64 },
    kv_count: { value: BigInt(p.metadata.size), type: GGUFValueType.UINT64 },
    ...Object.fromEntries(p.metadata),
  } as GGUFTypedMetadata;
  const head = Buffer.from(serializeGgufMetadata(typed, { alignment: 1 }));
  const table: Buffer[] = [];
  for (const t of p.tensors) {
    const name = Buffer.from(t.name, 'utf8');
    const b = Buffer.alloc(8 + name.length + 4 + 8 * t.shape.length + 4 + 8);
    let at = b.writeBigUInt64LE(BigInt(name.length), 0);
    at += name.copy(b, at);
    at = b.writeUInt32LE(t.shape.length, at);
    for (const d of t.shape) at = b.writeBigUInt64LE(d, at);
    at = b.writeUInt32LE(t.dtype, at);
    b.writeBigUInt64LE(t.offset, at);
    table.push(b);
  }
  const headerLength = head.length + table.reduce((n, b) => n + b.length, 0);
  const pad = Buffer.alloc((layoutAlignment - (headerLength % layoutAlignment)) % layoutAlignment);
  return Buffer.concat([head, ...table, pad, p.data]);
}

/** Sets (or adds, with the given type) one metadata value. */
export function setMeta(p: GgufParts, key: string, value: unknown, type: GGUFValueType = p.metadata.get(key)?.type ?? GGUFValueType.UINT32): GgufParts {
  const q = cloneParts(p);
  q.metadata.set(key, { ...q.metadata.get(key), value, type });
  return q;
}

/** Edits one tensor's table entry. */
export function setTensor(p: GgufParts, name: string, edit: Partial<GgufParts['tensors'][number]>): GgufParts {
  const q = cloneParts(p);
  const t = q.tensors.find((x) => x.name === name);
  if (!t) throw new Error(`no tensor ${name}`);
  Object.assign(t, edit);
  return q;
}

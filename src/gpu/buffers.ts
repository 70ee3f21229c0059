import type { GpuCounters } from './counters.ts';

/**
 * GPUBufferUsage / GPUMapMode bit values from the WebGPU spec. Using them by value keeps modules
 * importable before dawn.node's globals are installed.
 */
export const Usage = {
  MAP_READ: 0x1,
  COPY_SRC: 0x4,
  COPY_DST: 0x8,
  UNIFORM: 0x40,
  STORAGE: 0x80,
  QUERY_RESOLVE: 0x200,
} as const;
export const MAP_READ_MODE = 0x1;

/** Default usage for tensors: bindable as storage, and copyable both ways (upload, readback). */
export const STORAGE_USAGE = Usage.STORAGE | Usage.COPY_SRC | Usage.COPY_DST;

/** A byte range of a buffer (a binding of part of it). */
export interface BufferRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/** Storage bindings must be a multiple of 4 bytes; round every size up to that. */
export function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/**
 * Recycles GPU buffers by (usage, size class) so that a steady-state engine step allocates no GPU
 * memory: scratch activations of step N are the buffers of step N-1. Size classes are powers of two
 * (at most 2x waste on scratch; weights are not pooled, they are allocated once at their exact size).
 */
export class BufferPool {
  private readonly free = new Map<string, GPUBuffer[]>();
  private readonly sizeOf = new WeakMap<GPUBuffer, { key: string }>();
  allocations = 0;
  allocatedBytes = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly counters: GpuCounters,
  ) {}

  /** Bytes a request of `bytes` takes: the next power of two, at least 256. */
  static sizeClass(bytes: number): number {
    return Math.max(256, 2 ** Math.ceil(Math.log2(Math.max(bytes, 1))));
  }

  acquire(bytes: number, usage = STORAGE_USAGE, label?: string): GPUBuffer {
    const size = BufferPool.sizeClass(bytes);
    const key = `${usage}:${size}`;
    const reused = this.free.get(key)?.pop();
    if (reused) return reused;
    const buffer = this.device.createBuffer({ size, usage, label });
    this.sizeOf.set(buffer, { key });
    this.allocations++;
    this.allocatedBytes += size;
    this.counters.buffersCreated++;
    this.counters.bufferBytesCreated += size;
    return buffer;
  }

  release(buffer: GPUBuffer): void {
    const entry = this.sizeOf.get(buffer);
    if (!entry) throw new Error('BufferPool.release: buffer was not acquired from this pool');
    let list = this.free.get(entry.key);
    if (!list) this.free.set(entry.key, (list = []));
    list.push(buffer);
  }

  destroy(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
  }
}

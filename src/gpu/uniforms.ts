import { BufferPool, type BufferRange, Usage, align } from './buffers.ts';
import type { Gpu } from './gpu.ts';
import type { Params } from './params.ts';

export const UNIFORM_CHUNK = 64 * 1024;

interface Chunk {
  buffer: GPUBuffer;
  words: Uint32Array;
  /** bytes staged */
  used: number;
  /** bytes already written to the buffer (a flushed part) */
  written: number;
}

/**
 * The uniforms and small uploads (token ids, positions, block tables...) of one step at a time:
 * persistent 64 KiB buffers (uniform and storage) with a CPU copy, filled from offset 0 by each step
 * and written with one writeBuffer per chunk at submit, so a step's host data costs one write. A
 * step's dispatches land at the same offsets of the same buffers as the last step's (uploads take
 * power-of-two slots, so a table that grows moves nothing until it crosses one), so their bind
 * groups are found again (BindGroupCache). Rewriting a buffer the previous step read is safe:
 * writeBuffer is ordered on the queue after the commands already submitted. A step holds its arena
 * from creation to submit; a step recorded while another holds one gets another
 * (`Gpu.takeUniformArena`).
 */
export class UniformArena {
  private readonly chunks: Chunk[] = [];
  private current = 0;
  private readonly alignment: number;

  constructor(private readonly gpu: Gpu) {
    this.alignment = Math.max(gpu.limits.minUniformBufferOffsetAlignment, gpu.limits.minStorageBufferOffsetAlignment);
  }

  /** The buffer of the last `stage()`. */
  stagedBuffer: GPUBuffer | null = null;

  /** Stages `params` and returns their offset in `stagedBuffer` (nothing allocated per call). */
  stage(params: Params): number {
    const { chunk, offset } = this.place(params.byteLength);
    params.writeWords(chunk.words, offset >> 2);
    return offset;
  }

  /**
   * Stages `data` in a slot of its pool size class (as a scratch buffer of it would be) and returns
   * the slot's range, or null when it is larger than a chunk (the caller uploads it on its own).
   */
  stageData(data: ArrayBufferView): BufferRange | null {
    const size = BufferPool.sizeClass(data.byteLength);
    if (size > UNIFORM_CHUNK) return null;
    const { chunk, offset } = this.place(size);
    const bytes = new Uint8Array(chunk.words.buffer, offset, size);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    bytes.fill(0, data.byteLength);
    return { buffer: chunk.buffer, offset, size };
  }

  /** Room for `size` bytes at the next aligned offset, in a new chunk when the current one is full. */
  private place(size: number): { chunk: Chunk; offset: number } {
    let chunk = this.chunks[this.current];
    if (chunk && align(chunk.used, this.alignment) + size > UNIFORM_CHUNK) chunk = this.chunks[++this.current];
    if (!chunk) chunk = this.addChunk();
    const offset = align(chunk.used, this.alignment);
    chunk.used = offset + size;
    this.stagedBuffer = chunk.buffer;
    return { chunk, offset };
  }

  /** Writes what was staged since the last write (at submit or flush). */
  write(): void {
    for (let i = 0; i <= this.current && i < this.chunks.length; i++) {
      const c = this.chunks[i];
      if (c.used > c.written) this.gpu.writeBytes(c.buffer, c.written, c.words.buffer, c.written, align(c.used - c.written, 4));
      c.written = c.used;
    }
  }

  /** Empties the arena for the next step. */
  reset(): void {
    for (let i = 0; i <= this.current && i < this.chunks.length; i++) this.chunks[i].used = this.chunks[i].written = 0;
    this.current = 0;
  }

  private addChunk(): Chunk {
    const chunk = {
      // STORAGE for uploads (COPY_SRC: a kernel may copy one out); COPY_DST for the writes and for ids a pipelined step copies in
      buffer: this.gpu.createBuffer(UNIFORM_CHUNK, 'step arena', Usage.UNIFORM | Usage.STORAGE | Usage.COPY_SRC | Usage.COPY_DST),
      words: new Uint32Array(UNIFORM_CHUNK / 4),
      used: 0,
      written: 0,
    };
    this.chunks.push(chunk);
    return chunk;
  }
}

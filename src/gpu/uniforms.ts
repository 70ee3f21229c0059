import { Usage, align } from './buffers.ts';
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
 * The uniforms of one step at a time: persistent 64 KiB uniform buffers with a CPU copy, filled
 * from offset 0 by each step and written with one writeBuffer per chunk at submit. A step's
 * dispatches land at the same offsets of the same buffers as the last step's, so their bind groups
 * are found again (BindGroupCache). Rewriting a buffer the previous step read is safe: writeBuffer
 * is ordered on the queue after the commands already submitted. A step holds its arena from
 * creation to submit; a step recorded while another holds one gets another (`Gpu.uniformArena`).
 */
export class UniformArena {
  private readonly chunks: Chunk[] = [];
  private current = 0;
  private readonly alignment: number;

  constructor(private readonly gpu: Gpu) {
    this.alignment = gpu.device.limits.minUniformBufferOffsetAlignment;
  }

  /** The buffer of the last `stage()`. */
  stagedBuffer: GPUBuffer | null = null;

  /** Stages `params` and returns their offset in `stagedBuffer` (nothing allocated per call). */
  stage(params: Params): number {
    const size = params.byteLength;
    let chunk = this.chunks[this.current];
    if (chunk && align(chunk.used, this.alignment) + size > UNIFORM_CHUNK) chunk = this.chunks[++this.current];
    if (!chunk) chunk = this.addChunk();
    const offset = align(chunk.used, this.alignment);
    params.writeWords(chunk.words, offset >> 2);
    chunk.used = offset + size;
    this.stagedBuffer = chunk.buffer;
    return offset;
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
      buffer: this.gpu.createBuffer(UNIFORM_CHUNK, 'uniforms', Usage.UNIFORM | Usage.COPY_DST),
      words: new Uint32Array(UNIFORM_CHUNK / 4),
      used: 0,
      written: 0,
    };
    this.chunks.push(chunk);
    return chunk;
  }
}

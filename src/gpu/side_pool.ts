import { BufferPool } from './buffers.ts';
import type { Gpu } from './gpu.ts';

/**
 * Storage buffers for what a step writes and a later step reads before the first is read back (a
 * step's sampled ids, the next step's input): held from `take` until `release`, and kept apart
 * from the shared scratch pool, so holding one across steps does not change which scratch buffers
 * the steps get (their bind groups stay cached). The last released is taken first: a serial run
 * uses one buffer, a pipelined one two in turn.
 */
export class SidePool {
  private readonly free: GPUBuffer[] = [];
  private readonly all: GPUBuffer[] = [];

  constructor(
    private readonly gpu: Gpu,
    private readonly label: string,
  ) {}

  take(bytes: number): GPUBuffer {
    for (let i = this.free.length - 1; i >= 0; i--) if (this.free[i].size >= bytes) return this.free.splice(i, 1)[0];
    const b = this.gpu.createBuffer(BufferPool.sizeClass(bytes), this.label);
    this.all.push(b);
    return b;
  }

  /** The buffer's contents are no longer needed once the work submitted so far has run (queue order covers the rest). */
  release(b: GPUBuffer): void {
    this.free.push(b);
  }

  destroy(): void {
    for (const b of this.all) b.destroy();
    this.all.length = 0;
    this.free.length = 0;
  }
}

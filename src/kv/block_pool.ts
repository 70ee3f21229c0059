/**
 * Fixed-size KV blocks from a preallocated pool. Block ids index the same slot range in every
 * layer's K and V pools, so one block table serves all layers. Free blocks are a stack: the most
 * recently freed block is reused first (warm in caches).
 */
export class BlockPool {
  private readonly freeList: number[];

  constructor(readonly numBlocks: number) {
    if (!Number.isInteger(numBlocks) || numBlocks <= 0) throw new RangeError(`KV pool needs at least one block (got ${numBlocks})`);
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get free(): number {
    return this.freeList.length;
  }

  get used(): number {
    return this.numBlocks - this.freeList.length;
  }

  /** Takes `n` blocks, or none at all (null) when fewer than `n` are free. */
  take(n: number): number[] | null {
    if (n > this.freeList.length) return null;
    return this.freeList.splice(this.freeList.length - n, n).reverse();
  }

  give(blocks: readonly number[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) this.freeList.push(blocks[i]);
  }
}

/**
 * Fixed-size KV blocks from a preallocated pool. Block ids index the same slot range in every
 * layer's K and V pools, so one block table serves all layers. Free blocks are a stack: the most
 * recently freed block is reused first (warm in caches). A block may have several holders (the
 * choices of one request share their prompt's blocks): it is free again when its last holder
 * gives it back, so `used` counts a shared block once.
 */
export class BlockPool {
  private readonly freeList: number[];
  /** holders of each block; 0: free */
  private readonly refs: Uint32Array;

  constructor(readonly numBlocks: number) {
    if (!Number.isInteger(numBlocks) || numBlocks <= 0) throw new RangeError(`KV pool needs at least one block (got ${numBlocks})`);
    this.freeList = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
    this.refs = new Uint32Array(numBlocks);
  }

  get free(): number {
    return this.freeList.length;
  }

  get used(): number {
    return this.numBlocks - this.freeList.length;
  }

  /** Takes `n` blocks (one holder each), or none at all (null) when fewer than `n` are free. */
  take(n: number): number[] | null {
    if (n > this.freeList.length) return null;
    const blocks = this.freeList.splice(this.freeList.length - n, n).reverse();
    for (const b of blocks) this.refs[b] = 1;
    return blocks;
  }

  /** One more holder of each block (all in use). */
  share(blocks: readonly number[]): void {
    for (const b of blocks) if (this.refs[b] === 0) throw new Error(`KV block ${b} is free: it cannot be shared`);
    for (const b of blocks) this.refs[b]++;
  }

  /** How many hold the block (0: free). */
  holders(block: number): number {
    return this.refs[block];
  }

  /** One holder fewer of each block; a block nobody holds any more is free. */
  give(blocks: readonly number[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) {
      const b = blocks[i];
      // a block given back more often than it was held would be handed out twice
      if (this.refs[b] === 0) throw new Error(`KV block ${b} given back while free`);
      if (--this.refs[b] === 0) this.freeList.push(b);
    }
  }
}

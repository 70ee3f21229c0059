import { BlockPool } from './block_pool.ts';

export interface KvLayout {
  nLayers: number;
  nKvHeads: number;
  headDim: number;
  /** tokens per block */
  blockSize: number;
  /** bytes per stored element (f32 today) */
  bytesPerElement: number;
}

/** Bytes one block takes across all layers, K and V. */
export function blockBytes(l: KvLayout): number {
  return 2 * l.nLayers * l.blockSize * l.headDim * l.bytesPerElement;
}

/** How many blocks a KV memory budget holds. */
export function blocksForBudget(l: KvLayout, budgetBytes: number): number {
  return Math.floor(budgetBytes / blockBytes(l));
}

/** Thrown when the pool cannot hold what a sequence needs; the engine preempts and retries. */
export class KvPoolExhausted extends Error {
  override name = 'KvPoolExhausted';
  constructor(
    readonly needed: number,
    readonly free: number,
  ) {
    super(`KV pool exhausted: ${needed} blocks needed, ${free} free`);
  }
}

interface HeadRow {
  blocks: number[];
  /** slots in use (tokens stored for this KV head) */
  length: number;
}

/**
 * Block tables of a paged KV cache. Each (sequence, KV head) pair is a "head row" with its own
 * block list and length, so a head's storage policy (full history, or sinks + a ring buffer) and
 * the set of slots it attends to can differ per head; the attention kernels read table rows
 * `seq * nKvHeads + head`. Growing a sequence appends blocks (no copying); freeing returns them.
 * A sequence forked from another (`fork`) shares its full blocks: blocks are reference-counted in
 * the pool, and a shared block is never written (the fork and its parent write past them).
 */
export class PagedKvTables {
  readonly pool: BlockPool;
  private readonly seqs = new Map<number, HeadRow[]>();

  constructor(
    readonly layout: KvLayout,
    numBlocks: number,
  ) {
    this.pool = new BlockPool(numBlocks);
  }

  /** The most tokens one sequence can hold: every one of its head rows with an equal share of the pool. */
  get maxSequenceTokens(): number {
    return Math.floor(this.pool.numBlocks / this.layout.nKvHeads) * this.layout.blockSize;
  }

  has(seq: number): boolean {
    return this.seqs.has(seq);
  }

  length(seq: number, head = 0): number {
    return this.rows(seq)[head].length;
  }

  /** Blocks needed to store `tokens` more tokens in every head row of `seq` (0 for a new sequence's first call too). */
  blocksNeeded(seq: number, tokens: number): number {
    const { blockSize, nKvHeads } = this.layout;
    const rows = this.seqs.get(seq);
    if (!rows) return nKvHeads * Math.ceil(tokens / blockSize);
    return rows.reduce((n, r) => n + Math.ceil((r.length + tokens) / blockSize) - r.blocks.length, 0);
  }

  /** Blocks freeing `seq` would return to the pool: those it holds alone (0 for an unknown sequence). */
  blocksHeld(seq: number): number {
    return this.seqs.get(seq)?.reduce((n, r) => n + r.blocks.filter((b) => this.pool.holders(b) === 1).length, 0) ?? 0;
  }

  /**
   * Makes `child` a new sequence holding the first `tokens` tokens of `parent`, in the same
   * blocks (shared: each goes back to the pool when its last holder frees it). `tokens` must be
   * a multiple of the block size, so only full blocks are shared and every later token of either
   * sequence goes into a block of its own.
   */
  fork(parent: number, child: number, tokens: number): void {
    const { blockSize } = this.layout;
    if (this.seqs.has(child)) throw new Error(`fork: sequence ${child} already holds KV`);
    const rows = this.rows(parent);
    if (!(Number.isInteger(tokens) && tokens >= 0 && tokens % blockSize === 0 && rows.every((r) => r.length >= tokens))) {
      throw new RangeError(`fork: ${tokens} tokens of sequence ${parent} are not whole blocks it holds`);
    }
    const shared = rows.map((r) => ({ blocks: r.blocks.slice(0, tokens / blockSize), length: tokens }));
    this.pool.share(shared.flatMap((r) => r.blocks));
    this.seqs.set(child, shared);
  }

  /**
   * Makes room for `tokens` more tokens in every head row of `seq` (creating it if new) and
   * returns their absolute pool slots, [token][head] (slot = block * blockSize + offset), for the
   * kernel that writes K/V. All or nothing: throws KvPoolExhausted and changes nothing if the
   * pool is short.
   */
  append(seq: number, tokens: number): Uint32Array {
    const { blockSize, nKvHeads } = this.layout;
    const rows = this.reserve(seq, tokens);
    const slots = new Uint32Array(tokens * nKvHeads);
    rows.forEach((row, h) => {
      for (let t = 0; t < tokens; t++) {
        const pos = row.length - tokens + t;
        slots[t * nKvHeads + h] = row.blocks[Math.floor(pos / blockSize)] * blockSize + (pos % blockSize);
      }
    });
    return slots;
  }

  /** append() without the slots: the block bookkeeping alone (the simulator needs no more). */
  reserve(seq: number, tokens: number): readonly HeadRow[] {
    const { blockSize, nKvHeads } = this.layout;
    let rows = this.seqs.get(seq);
    // a token that goes into a partly filled block needs the block to itself (a bug otherwise: fork shares full blocks only)
    if (rows?.some((r) => r.length % blockSize !== 0 && this.pool.holders(r.blocks[r.blocks.length - 1]) > 1)) throw new Error(`append: sequence ${seq} would write into a shared KV block`);
    const needed = this.blocksNeeded(seq, tokens);
    const fresh = this.pool.take(needed);
    if (!fresh) throw new KvPoolExhausted(needed, this.pool.free);
    if (!rows) {
      rows = Array.from({ length: nKvHeads }, () => ({ blocks: [], length: 0 }));
      this.seqs.set(seq, rows);
    }
    let next = 0;
    for (const row of rows) {
      while (row.blocks.length * blockSize < row.length + tokens) row.blocks.push(fresh[next++]);
      row.length += tokens;
    }
    return rows;
  }

  /** The pool slots of every token `seq` holds, [token][head] as append() returns them (for exporting its KV). */
  slotsOf(seq: number): Uint32Array {
    const { blockSize, nKvHeads } = this.layout;
    const rows = this.rows(seq);
    const tokens = rows[0].length;
    const slots = new Uint32Array(tokens * nKvHeads);
    rows.forEach((row, h) => {
      if (row.length !== tokens) throw new Error(`slotsOf: sequence ${seq}'s heads hold different lengths`);
      for (let t = 0; t < tokens; t++) slots[t * nKvHeads + h] = row.blocks[Math.floor(t / blockSize)] * blockSize + (t % blockSize);
    });
    return slots;
  }

  /** Shortens every head row of `seq` to `length` tokens, returning blocks no longer needed (undoes an append). */
  truncate(seq: number, length: number): void {
    for (const row of this.rows(seq)) {
      if (length > row.length) throw new Error(`truncate: sequence ${seq} has only ${row.length} tokens`);
      row.length = length;
      const keep = Math.ceil(length / this.layout.blockSize);
      this.pool.give(row.blocks.splice(keep));
    }
  }

  /** Gives back every block of `seq` (a block it shares stays with its other holders). */
  free(seq: number): void {
    const rows = this.seqs.get(seq);
    if (!rows) return;
    for (const row of rows) this.pool.give(row.blocks);
    this.seqs.delete(seq);
  }

  /**
   * Block table rows and lengths for a batch, as the attention kernels read them:
   * table [seqs.length * nKvHeads, stride] (unused entries 0), lengths [seqs.length * nKvHeads].
   */
  batchTables(seqs: readonly number[]): { table: Uint32Array; lengths: Uint32Array; stride: number } {
    const nKv = this.layout.nKvHeads;
    let stride = 1;
    for (const s of seqs) for (const r of this.rows(s)) stride = Math.max(stride, r.blocks.length);
    const table = new Uint32Array(seqs.length * nKv * stride);
    const lengths = new Uint32Array(seqs.length * nKv);
    seqs.forEach((s, i) =>
      this.rows(s).forEach((r, h) => {
        table.set(r.blocks, (i * nKv + h) * stride);
        lengths[i * nKv + h] = r.length;
      }),
    );
    return { table, lengths, stride };
  }

  private rows(seq: number): HeadRow[] {
    const rows = this.seqs.get(seq);
    if (!rows) throw new Error(`unknown sequence ${seq} in the KV cache`);
    return rows;
  }
}

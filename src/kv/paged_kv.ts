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

/** A block's content to copy to another block, in every layer's K and V pools. */
export interface BlockCopy {
  from: number;
  to: number;
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

/**
 * Head-wise storage (docs/headwise.md): head rows ("columns") [0, fullColumns) of every sequence
 * keep full history; the others are rings of `sink + recent` slots: token p goes to slot index p
 * while p < sink, else sink + (p - sink) % recent, so a ring holds the first `sink` tokens and the
 * latest `recent` ones. RoPE is applied before K is stored, so a ring is just another table and
 * length to the attention kernels.
 */
export interface HeadwiseKv {
  fullColumns: number;
  sink: number;
  recent: number;
}

/** A slot-mapping entry for a token that a ring does not keep (it is overwritten within the same append): not written. */
export const NO_SLOT = 0xffffffff;

/** Slot index in a ring (sink + recent slots) of the token at position `pos`. */
export function ringIndex(pos: number, sink: number, recent: number): number {
  return pos < sink ? pos : sink + ((pos - sink) % recent);
}

/** The position of the token a ring holds at slot index `index` after `tokens` tokens (index < its length). */
export function ringPosition(index: number, tokens: number, sink: number, recent: number): number {
  if (index < sink || tokens <= sink + recent) return index;
  const newest = ringIndex(tokens - 1, sink, recent) - sink;
  return tokens - 1 - ((newest - (index - sink) + recent) % recent);
}

interface HeadRow {
  blocks: number[];
  /** slots in use (tokens stored for this KV head) */
  length: number;
  /** tokens the sequence has passed through this row (its length, except for a ring that is full) */
  tokens: number;
  /** slots of a ring (sink + recent); Infinity for full history */
  capacity: number;
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
  /** slots per head row: Infinity (full history) or a ring's sink + recent */
  private readonly capacities: number[];

  constructor(
    readonly layout: KvLayout,
    numBlocks: number,
    readonly headwise?: HeadwiseKv,
  ) {
    this.pool = new BlockPool(numBlocks);
    const { nKvHeads } = layout;
    if (headwise) {
      const { fullColumns, sink, recent } = headwise;
      if (!(Number.isInteger(fullColumns) && fullColumns >= 0 && fullColumns <= nKvHeads)) throw new RangeError(`head-wise KV: ${fullColumns} full columns of ${nKvHeads}`);
      if (!(Number.isInteger(sink) && sink >= 0 && Number.isInteger(recent) && recent >= 1)) throw new RangeError(`head-wise KV: sink ${sink} and recent ${recent} must be integers, recent >= 1`);
    }
    this.capacities = Array.from({ length: nKvHeads }, (_, h) => (headwise && h >= headwise.fullColumns ? headwise.sink + headwise.recent : Infinity));
  }

  /**
   * The most tokens one sequence can hold: every one of its head rows with an equal share of the
   * pool; with rings, what the full columns can grow to once the rings are whole (Infinity
   * without full columns).
   */
  get maxSequenceTokens(): number {
    const { blockSize, nKvHeads } = this.layout;
    const equal = Math.floor(this.pool.numBlocks / nKvHeads) * blockSize;
    if (!this.headwise) return equal;
    const { fullColumns, sink, recent } = this.headwise;
    const ringBlocks = Math.ceil((sink + recent) / blockSize);
    // short of a whole window in every row, all rows grow alike (rings are linear up to the window)
    if (this.pool.numBlocks < nKvHeads * ringBlocks) return equal;
    const rings = (nKvHeads - fullColumns) * ringBlocks;
    return fullColumns === 0 ? Infinity : Math.floor((this.pool.numBlocks - rings) / fullColumns) * blockSize;
  }

  has(seq: number): boolean {
    return this.seqs.has(seq);
  }

  /** Slots head row `head` of `seq` holds (the tokens it attends to). */
  length(seq: number, head = 0): number {
    return this.rows(seq)[head].length;
  }

  /** Tokens `seq` holds: the next token's position (equal to every length without rings). */
  tokens(seq: number): number {
    return this.rows(seq)[0].tokens;
  }

  /** Blocks needed to store `tokens` more tokens in every head row of `seq` (0 for a new sequence's first call too). */
  blocksNeeded(seq: number, tokens: number): number {
    const rows = this.seqs.get(seq);
    if (!rows) return this.capacities.reduce((n, cap) => n + this.blocksFor(tokens, cap), 0);
    return rows.reduce((n, r) => n + this.blocksFor(r.tokens + tokens, r.capacity) - r.blocks.length, 0);
  }

  /** Blocks a head row of this capacity holds after `tokens` tokens. */
  private blocksFor(tokens: number, capacity: number): number {
    return Math.ceil(Math.min(tokens, capacity) / this.layout.blockSize);
  }

  /** Blocks freeing `seq` would return to the pool: those it holds alone (0 for an unknown sequence). */
  blocksHeld(seq: number): number {
    return this.seqs.get(seq)?.reduce((n, r) => n + r.blocks.filter((b) => this.pool.holders(b) === 1).length, 0) ?? 0;
  }

  /**
   * Whether `fork(parent, child, tokens)` can give the child what it needs: every row of the
   * parent still holds the tokens the child keeps (a ring that has moved past them has lost them).
   */
  canFork(parent: number, tokens: number): boolean {
    const { blockSize } = this.layout;
    const rows = this.seqs.get(parent);
    if (!rows || !(Number.isInteger(tokens) && tokens >= 0 && tokens % blockSize === 0)) return false;
    // a child within the sink keeps only sink tokens, which a ring never loses
    return rows.every((r) => r.tokens >= tokens && (tokens <= this.sinkOf(r.capacity) || this.oldestRecent(r.tokens, r.capacity) <= this.oldestRecent(tokens, r.capacity)));
  }

  /**
   * Makes `child` a new sequence holding the first `tokens` tokens of `parent`, in the same
   * blocks (shared: each goes back to the pool when its last holder frees it). `tokens` must be
   * a multiple of the block size, so only full blocks are shared and every later token of either
   * sequence goes into a block of its own. A ring shares only its sink blocks (never written
   * again); its other blocks are rewritten when it wraps, so the child gets blocks of its own and
   * the returned copies (block to block, in every layer's K and V pools) give them their content.
   */
  fork(parent: number, child: number, tokens: number): BlockCopy[] {
    const { blockSize } = this.layout;
    if (this.seqs.has(child)) throw new Error(`fork: sequence ${child} already holds KV`);
    const rows = this.rows(parent);
    if (!(Number.isInteger(tokens) && tokens >= 0 && tokens % blockSize === 0 && rows.every((r) => r.tokens >= tokens))) {
      throw new RangeError(`fork: ${tokens} tokens of sequence ${parent} are not whole blocks it holds`);
    }
    if (!this.canFork(parent, tokens)) throw new RangeError(`fork: the rings of sequence ${parent} no longer hold the latest of its first ${tokens} tokens`);
    const plans = rows.map((r) => {
      const n = this.blocksFor(tokens, r.capacity);
      // blocks a ring never writes again: whole blocks of sink slots
      const shared = r.capacity === Infinity ? n : Math.min(n, Math.floor(Math.min(tokens, this.sinkOf(r.capacity)) / blockSize));
      return { r, n, shared };
    });
    const own = plans.reduce((n, p) => n + p.n - p.shared, 0);
    const fresh = this.pool.take(own);
    if (!fresh) throw new KvPoolExhausted(own, this.pool.free);
    const copies: BlockCopy[] = [];
    let next = 0;
    const childRows = plans.map(({ r, n, shared }) => {
      const blocks = r.blocks.slice(0, shared);
      for (let b = shared; b < n; b++) {
        copies.push({ from: r.blocks[b], to: fresh[next] });
        blocks.push(fresh[next++]);
      }
      return { blocks, length: Math.min(tokens, r.capacity), tokens, capacity: r.capacity };
    });
    this.pool.share(plans.flatMap((p) => p.r.blocks.slice(0, p.shared)));
    this.seqs.set(child, childRows);
    return copies;
  }

  /**
   * Makes room for `tokens` more tokens in every head row of `seq` (creating it if new) and
   * returns their absolute pool slots, [token][head] (slot = block * blockSize + offset), for the
   * kernel that writes K/V; NO_SLOT where a ring does not keep the token (a later token of the
   * same append takes its slot). All or nothing: throws KvPoolExhausted and changes nothing if the
   * pool is short.
   */
  append(seq: number, tokens: number): Uint32Array {
    const { nKvHeads } = this.layout;
    const rows = this.reserve(seq, tokens);
    const slots = new Uint32Array(tokens * nKvHeads).fill(NO_SLOT);
    rows.forEach((row, h) => {
      for (const [from, to] of this.kept(row.tokens - tokens, row.tokens, row.capacity)) {
        for (let pos = from; pos < to; pos++) slots[(pos - row.tokens + tokens) * nKvHeads + h] = this.slotOf(row, pos);
      }
    });
    return slots;
  }

  /** append() without the slots: the block bookkeeping alone (the simulator needs no more). */
  reserve(seq: number, tokens: number): readonly HeadRow[] {
    let rows = this.seqs.get(seq);
    // a token written into a block another sequence holds would change that sequence's KV (a bug: fork shares only blocks never written again)
    if (rows?.some((r) => this.writesShared(r, tokens))) throw new Error(`append: sequence ${seq} would write into a shared KV block`);
    const needed = this.blocksNeeded(seq, tokens);
    const fresh = this.pool.take(needed);
    if (!fresh) throw new KvPoolExhausted(needed, this.pool.free);
    if (!rows) {
      rows = this.capacities.map((capacity) => ({ blocks: [], length: 0, tokens: 0, capacity }));
      this.seqs.set(seq, rows);
    }
    let next = 0;
    for (const row of rows) {
      const n = this.blocksFor(row.tokens + tokens, row.capacity);
      while (row.blocks.length < n) row.blocks.push(fresh[next++]);
      row.tokens += tokens;
      row.length = Math.min(row.tokens, row.capacity);
    }
    return rows;
  }

  /** The pool slots of every token `seq` holds, [token][head] as append() returns them (for exporting its KV; not for a ring that has wrapped). */
  slotsOf(seq: number): Uint32Array {
    const { nKvHeads } = this.layout;
    const rows = this.rows(seq);
    const tokens = rows[0].tokens;
    const slots = new Uint32Array(tokens * nKvHeads);
    rows.forEach((row, h) => {
      if (row.length !== tokens) throw new Error(`slotsOf: sequence ${seq}'s head row ${h} holds ${row.length} of its ${tokens} tokens (a ring: see heldSlots)`);
      for (let t = 0; t < tokens; t++) slots[t * nKvHeads + h] = this.slotOf(row, t);
    });
    return slots;
  }

  /** The slots head row `head` of `seq` holds and their tokens' positions, oldest first (what a head keeps, for exporting it). */
  heldSlots(seq: number, head: number): { slots: Uint32Array; positions: Uint32Array } {
    const row = this.rows(seq)[head];
    const positions = new Uint32Array(row.length);
    let i = 0;
    for (const [from, to] of this.kept(0, row.tokens, row.capacity)) for (let pos = from; pos < to; pos++) positions[i++] = pos;
    return { slots: positions.map((pos) => this.slotOf(row, pos)), positions };
  }

  /**
   * Shortens every head row of `seq` to `length` tokens, returning blocks no longer needed (undoes
   * an append). A ring's bookkeeping goes back too, but not the K/V a wrap overwrote: undo only
   * appends whose K/V has not been written.
   */
  truncate(seq: number, length: number): void {
    for (const row of this.rows(seq)) {
      if (length > row.tokens) throw new Error(`truncate: sequence ${seq} has only ${row.tokens} tokens`);
      row.tokens = length;
      row.length = Math.min(length, row.capacity);
      this.pool.give(row.blocks.splice(this.blocksFor(length, row.capacity)));
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
   * table [seqs.length * nKvHeads, stride] (unused entries 0), lengths [seqs.length * nKvHeads]
   * (slots each head row holds), tokens [seqs.length] (each sequence's tokens: its next position).
   */
  batchTables(seqs: readonly number[]): { table: Uint32Array; lengths: Uint32Array; stride: number; tokens: Uint32Array } {
    const nKv = this.layout.nKvHeads;
    let stride = 1;
    for (const s of seqs) for (const r of this.rows(s)) stride = Math.max(stride, r.blocks.length);
    const table = new Uint32Array(seqs.length * nKv * stride);
    const lengths = new Uint32Array(seqs.length * nKv);
    const tokens = new Uint32Array(seqs.length);
    seqs.forEach((s, i) => {
      tokens[i] = this.tokens(s);
      this.rows(s).forEach((r, h) => {
        table.set(r.blocks, (i * nKv + h) * stride);
        lengths[i * nKv + h] = r.length;
      });
    });
    return { table, lengths, stride, tokens };
  }

  /** Blocks in use by the kind of head row that holds them (a shared block once). */
  blocksByKind(): { retrieval: number; streaming: number } {
    const seen = { retrieval: new Set<number>(), streaming: new Set<number>() };
    for (const rows of this.seqs.values()) for (const r of rows) for (const b of r.blocks) seen[r.capacity === Infinity ? 'retrieval' : 'streaming'].add(b);
    return { retrieval: seen.retrieval.size, streaming: seen.streaming.size };
  }

  private slotOf(row: HeadRow, pos: number): number {
    const { blockSize } = this.layout;
    const index = row.capacity === Infinity ? pos : ringIndex(pos, this.sinkOf(row.capacity), row.capacity - this.sinkOf(row.capacity));
    return row.blocks[Math.floor(index / blockSize)] * blockSize + (index % blockSize);
  }

  /** A ring's sink (its capacity is sink + recent). */
  private sinkOf(capacity: number): number {
    return capacity === Infinity ? Infinity : this.headwise!.sink;
  }

  /** The first position past the sink that a row holds after `tokens` tokens. */
  private oldestRecent(tokens: number, capacity: number): number {
    return capacity === Infinity ? 0 : Math.max(this.sinkOf(capacity), tokens - (capacity - this.sinkOf(capacity)));
  }

  /** The ranges [from, to) of positions in [start, end) a row keeps once it holds `end` tokens. */
  private kept(start: number, end: number, capacity: number): [number, number][] {
    if (capacity === Infinity) return [[start, end]];
    const sink = this.sinkOf(capacity);
    const ranges: [number, number][] = [];
    if (start < Math.min(sink, end)) ranges.push([start, Math.min(sink, end)]);
    const from = Math.max(start, sink, this.oldestRecent(end, capacity));
    if (from < end) ranges.push([from, end]);
    return ranges;
  }

  /** Whether appending `tokens` tokens to a row writes into a block another sequence holds. */
  private writesShared(row: HeadRow, tokens: number): boolean {
    const { blockSize } = this.layout;
    if (row.capacity === Infinity) return row.length % blockSize !== 0 && this.pool.holders(row.blocks[row.blocks.length - 1]) > 1;
    for (const [from, to] of this.kept(row.tokens, row.tokens + tokens, row.capacity)) {
      for (let pos = from; pos < to; pos++) {
        const b = Math.floor(ringIndex(pos, this.sinkOf(row.capacity), row.capacity - this.sinkOf(row.capacity)) / blockSize);
        if (b < row.blocks.length && this.pool.holders(row.blocks[b]) > 1) return true;
      }
    }
    return false;
  }

  private rows(seq: number): HeadRow[] {
    const rows = this.seqs.get(seq);
    if (!rows) throw new Error(`unknown sequence ${seq} in the KV cache`);
    return rows;
  }
}

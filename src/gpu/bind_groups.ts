import type { GpuCounters } from './counters.ts';

type Key = object | number;

interface Node {
  next: Map<Key, Node>;
  group?: GPUBindGroup;
}

/** Bind groups kept before the cache starts over (each holds a few buffer references). */
const MAX_GROUPS = 1 << 15;

/**
 * Bind groups created once and found again by the identity of what they bind: a trie walked
 * with the pipeline, then each binding's buffer (and, for a byte range, its offset and size).
 * Steady-state steps bind the same buffers in the same order (pooled scratch comes back in
 * acquisition order, uniforms sit at the same offsets of persistent buffers), so they create none.
 * No string keys: every level is a Map lookup by object identity or number.
 */
export class BindGroupCache {
  private root: Node = { next: new Map() };
  private size = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly counters: GpuCounters,
  ) {}

  /** Where the current lookup stands. */
  private cursor: Node = this.root;

  /** Starts a lookup at `pipeline`; follow with `buffer()`/`range()` per binding, then `find()`. */
  begin(pipeline: GPUComputePipeline): void {
    if (this.size >= MAX_GROUPS) this.clear();
    this.cursor = this.child(this.root, pipeline);
  }

  buffer(buffer: GPUBuffer): void {
    this.cursor = this.child(this.cursor, buffer);
  }

  range(buffer: GPUBuffer, offset: number, size: number): void {
    this.cursor = this.child(this.child(this.child(this.cursor, buffer), offset), size);
  }

  /** The bind group for the bindings walked, if one was created before. */
  find(): GPUBindGroup | undefined {
    return this.cursor.group;
  }

  /** Creates the bind group for the bindings walked and keeps it. */
  create(pipeline: GPUComputePipeline, entries: GPUBindGroupEntry[]): GPUBindGroup {
    const group = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    this.cursor.group = group;
    this.size++;
    this.counters.bindGroupsCreated++;
    return group;
  }

  /** Forgets every bind group (after buffers they hold were destroyed, or when the cache is full). */
  clear(): void {
    this.root = { next: new Map() };
    this.cursor = this.root;
    this.size = 0;
  }

  private child(node: Node, key: Key): Node {
    let next = node.next.get(key);
    if (!next) node.next.set(key, (next = { next: new Map() }));
    return next;
  }
}

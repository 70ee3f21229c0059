import { type AdapterSummary, type DeviceMode, type GpuFeatures, parseDeviceMode, requestAdapter, summarizeAdapter } from './adapter.ts';
import { BindGroupCache } from './bind_groups.ts';
import { GpuCounters } from './counters.ts';
import { BufferPool, MAP_READ_MODE, STORAGE_USAGE, Usage, align } from './buffers.ts';
import { PipelineCache } from './pipelines.ts';
import { Step, type StepOptions } from './step.ts';
import { UniformArena } from './uniforms.ts';

export interface OpenOptions {
  /** auto (hardware first, software fallback), gpu or cpu. Default: $WGSERVE_DEVICE or auto. */
  mode?: DeviceMode;
  /** the index of the adapter among those Dawn lists (several GPUs in one box) */
  adapter?: number;
}

/** Limits a model needs raised above WebGPU's defaults; each is requested at the adapter's maximum. */
const RAISED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

/** An open WebGPU device with the runtime's shared pieces: pipeline cache, buffer pool, features. */
export class Gpu {
  /** the device's limits, copied once (see snapshotLimits) */
  readonly limits: GPUSupportedLimits;
  /** device.queue, taken once (a native getter) */
  readonly queue: GPUQueue;
  readonly pipelines: PipelineCache;
  readonly pool: BufferPool;
  /** always-on counts of dispatches, passes, submits, bind groups, buffers, writes */
  readonly counters = new GpuCounters();
  readonly bindGroups: BindGroupCache;
  /** uniform arenas no step holds now: sequential steps take the same one */
  private readonly freeArenas: UniformArena[] = [];
  private querySets: GPUQuerySet[] = [];

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterSummary,
    readonly features: GpuFeatures,
  ) {
    this.limits = snapshotLimits(device.limits);
    this.queue = device.queue;
    this.pipelines = new PipelineCache(device, this.counters);
    this.pool = new BufferPool(device, this.counters);
    this.bindGroups = new BindGroupCache(device, this.counters);
  }

  static async open(options: OpenOptions = {}): Promise<Gpu> {
    const adapter = await requestAdapter(options.mode ?? parseDeviceMode(process.env.WGSERVE_DEVICE), options.adapter);
    const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
    const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
    const requiredLimits: Record<string, number> = {};
    for (const name of RAISED_LIMITS) requiredLimits[name] = adapter.limits[name];
    const device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
    device.lost.then((info) => {
      if (info.reason !== 'destroyed') console.error(`wgserve: WebGPU device lost: ${info.message}`);
    });
    return new Gpu(device, summarizeAdapter(adapter), {
      shaderF16: device.features.has('shader-f16'),
      subgroups: device.features.has('subgroups'),
      timestampQuery: device.features.has('timestamp-query'),
    });
  }

  step(options?: StepOptions): Step {
    return new Step(this, options);
  }

  /**
   * Compiles, asynchronously and in parallel (createComputePipelineAsync), every pipeline that
   * `record` asks for, recording it into a dry-run step that is then discarded: nothing runs on the
   * GPU. Returns how many pipelines were compiled. `record` must not await.
   */
  async precompile(record: (step: Step) => void): Promise<number> {
    const step = new Step(this, { label: 'precompile', dryRun: true });
    let compiling: Promise<GPUComputePipeline>[];
    try {
      compiling = this.pipelines.collect(() => record(step));
    } finally {
      await step.discard();
    }
    const distinct = new Set(compiling); // a pipeline asked for again shares its compilation
    await Promise.all(distinct);
    return distinct.size;
  }

  /** A uniform arena for a step to hold until it is submitted or discarded (see UniformArena). */
  takeUniformArena(): UniformArena {
    return this.freeArenas.pop() ?? new UniformArena(this);
  }

  returnUniformArena(arena: UniformArena): void {
    arena.reset();
    this.freeArenas.push(arena);
  }

  /** A buffer of exactly `bytes` (rounded up to 4), not pooled: weights, KV pools, long-lived tables. */
  createBuffer(bytes: number, label?: string, usage: number = STORAGE_USAGE): GPUBuffer {
    const size = align(Math.max(bytes, 4), 4);
    if (size > this.limits.maxBufferSize) {
      throw new Error(`buffer "${label ?? ''}" of ${size} bytes exceeds this device's maxBufferSize (${this.limits.maxBufferSize})`);
    }
    this.countBuffer(size);
    return this.device.createBuffer({ size, usage, label });
  }

  /** A new storage buffer holding a copy of `data`. */
  upload(data: ArrayBufferView, label?: string): GPUBuffer {
    const size = align(Math.max(data.byteLength, 4), 4);
    this.countBuffer(size);
    const buffer = this.device.createBuffer({ size, usage: STORAGE_USAGE, label, mappedAtCreation: true });
    new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buffer.unmap();
    return buffer;
  }

  write(buffer: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    this.writeBytes(buffer, offset, data.buffer, data.byteOffset, align(data.byteLength, 4));
  }

  /** queue.writeBuffer, counted. */
  writeBytes(buffer: GPUBuffer, offset: number, data: ArrayBufferLike, dataOffset: number, size: number): void {
    this.counters.writeBufferCalls++;
    this.counters.writeBufferBytes += size;
    this.queue.writeBuffer(buffer, offset, data, dataOffset, size);
  }

  /** queue.submit, counted. */
  submit(commands: GPUCommandBuffer): void {
    this.counters.submits++;
    this.queue.submit([commands]);
  }

  private countBuffer(bytes: number): void {
    this.counters.buffersCreated++;
    this.counters.bufferBytesCreated += bytes;
  }

  /** Reads bytes back (outside any step; tests and tools). */
  async read(buffer: GPUBuffer, offset = 0, size = buffer.size - offset): Promise<ArrayBuffer> {
    const padded = align(size, 4);
    const staging = this.pool.acquire(padded, Usage.MAP_READ | Usage.COPY_DST, 'read');
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffer, offset, staging, 0, padded);
    this.counters.readbacks++;
    this.submit(encoder.finish());
    await staging.mapAsync(MAP_READ_MODE);
    const data = staging.getMappedRange(0, padded).slice(0, size);
    staging.unmap();
    this.pool.release(staging);
    return data;
  }

  async readF32(buffer: GPUBuffer, count: number, offset = 0): Promise<Float32Array> {
    return new Float32Array(await this.read(buffer, offset, count * 4));
  }

  async readU32(buffer: GPUBuffer, count: number, offset = 0): Promise<Uint32Array> {
    return new Uint32Array(await this.read(buffer, offset, count * 4));
  }

  /** A query set for step timestamps, reused across steps (they are resolved before reuse). */
  timestampQuerySet(count: number): GPUQuerySet {
    let set = this.querySets.find((q) => q.count >= count);
    if (!set) {
      set = this.device.createQuerySet({ type: 'timestamp', count });
      this.querySets.push(set);
    }
    return set;
  }

  destroy(): void {
    this.pool.destroy();
    this.device.destroy();
  }
}

/** The device's limits as a plain object: reading the native one crosses into dawn.node on every access, and kernels read them per dispatch. */
function snapshotLimits(limits: GPUSupportedLimits): GPUSupportedLimits {
  const copy: Record<string, unknown> = {};
  for (const name in limits) copy[name] = limits[name as keyof GPUSupportedLimits];
  return Object.freeze(copy) as unknown as GPUSupportedLimits;
}

import { type BufferRange, MAP_READ_MODE, Usage, align } from './buffers.ts';
import type { Gpu } from './gpu.ts';
import type { Params } from './params.ts';
import type { UniformArena } from './uniforms.ts';

/** A storage binding: a whole buffer, or a byte range of one. */
export type Binding = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

export interface Dispatch {
  pipeline: GPUComputePipeline;
  /** Uniform parameters, bound at @binding(0); storage buffers follow from @binding(1) in order. */
  params?: Params;
  buffers: Binding[];
  workgroups: readonly [number, number?, number?];
}

/** performance.now() marks of a step's life, for traces (`wgserve bench step --trace`). */
export interface StepTimes {
  created: number;
  /** submit() called: recording done */
  submitCalled: number;
  /** queue.submit returned */
  submitted: number;
  /** every readback mapped and the GPU done */
  completed: number;
}

export interface StepOptions {
  label?: string;
  /** time the step's compute passes with timestamp queries (when the device has them) */
  timestamps?: boolean;
  /** dispatches only ask for their pipelines and record nothing; the step is then discarded (Gpu.precompile) */
  dryRun?: boolean;
}

export interface StepResult {
  /** GPU time of the step's compute passes (timestamp queries), when requested and supported. */
  gpuTimeNs?: number;
}

interface Readback {
  staging: GPUBuffer;
  size: number;
  resolve: (d: ArrayBuffer) => void;
  reject: (e: unknown) => void;
}

const MAX_TIMED_PASSES = 64;

/**
 * One engine step: one command encoder, one compute pass per run of dispatches, one submit.
 * Uniforms of all dispatches and the step's small uploads are staged on the CPU in a persistent
 * UniformArena and written with one writeBuffer per 64 KiB. Bind groups come from the device's
 * BindGroupCache, so a step that binds what the last one bound creates none. Scratch buffers taken with `scratch()` return to the
 * pool after submit, in reverse order so that the next step gets the same buffers for the same
 * requests (queue order makes the reuse safe: the next step's commands run after this one's). Validation errors raised while the step
 * was recorded are thrown from `submit()` with the driver's message. A step is either submitted
 * or discarded, and is recorded without awaiting between its creation and submit() (its error
 * scopes sit on the device's scope stack, so steps may overlap only in their awaits after that).
 */
export class Step {
  private encoder: GPUCommandEncoder;
  private pass: GPUComputePassEncoder | null = null;
  private readonly uniforms: UniformArena;
  private readonly scratchBuffers: GPUBuffer[] = [];
  private readonly readbacks: Readback[] = [];
  /** readbacks of flushed parts, mapping as their part finishes */
  private readonly mapping: Promise<void>[] = [];
  private readonly querySet: GPUQuerySet | null;
  private passes = 0;
  private submitted = false;
  private readonly dryRun: boolean;
  readonly times: StepTimes = { created: performance.now(), submitCalled: 0, submitted: 0, completed: 0 };

  constructor(
    readonly gpu: Gpu,
    options: StepOptions = {},
  ) {
    this.dryRun = options.dryRun ?? false;
    gpu.device.pushErrorScope('validation');
    gpu.device.pushErrorScope('out-of-memory');
    this.encoder = gpu.device.createCommandEncoder({ label: options.label });
    this.uniforms = gpu.takeUniformArena();
    this.querySet = options.timestamps && gpu.features.timestampQuery ? gpu.timestampQuerySet(MAX_TIMED_PASSES * 2) : null;
  }

  dispatch(d: Dispatch): void {
    if (this.dryRun) return;
    const pass = this.computePass();
    const cache = this.gpu.bindGroups;
    cache.begin(d.pipeline);
    const uniformOffset = d.params ? this.uniforms.stage(d.params) : -1;
    if (d.params) cache.range(this.uniforms.stagedBuffer!, uniformOffset, d.params.byteLength);
    for (let i = 0; i < d.buffers.length; i++) {
      const b = d.buffers[i];
      if ('buffer' in b) cache.range(b.buffer, b.offset ?? 0, b.size ?? -1);
      else cache.buffer(b);
    }
    const bindGroup = cache.find() ?? cache.create(d.pipeline, this.bindGroupEntries(d, uniformOffset));
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, bindGroup);
    this.gpu.counters.dispatches++;
    const [x, y = 1, z = 1] = d.workgroups;
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
  }

  private bindGroupEntries(d: Dispatch, uniformOffset: number): GPUBindGroupEntry[] {
    const entries: GPUBindGroupEntry[] = [];
    if (d.params) entries.push({ binding: 0, resource: { buffer: this.uniforms.stagedBuffer!, offset: uniformOffset, size: d.params.byteLength } });
    d.buffers.forEach((b, i) => entries.push({ binding: i + 1, resource: 'buffer' in b ? b : { buffer: b } }));
    return entries;
  }

  /** A pooled storage buffer that lives until this step is submitted (a dry-run step hands it straight back: nothing will use it). */
  scratch(bytes: number, label?: string): GPUBuffer {
    const buffer = this.gpu.pool.acquire(align(bytes, 4), undefined, label);
    if (this.dryRun) this.gpu.pool.release(buffer);
    else this.scratchBuffers.push(buffer);
    return buffer;
  }

  /**
   * Read-only `data` on the GPU for this step's commands: a slot of the step's arena, written with
   * its uniforms in one writeBuffer at submit; data larger than an arena chunk gets a scratch buffer
   * of its own (written on the queue, so before this step's commands run). No kernel may bind it
   * writable (the arena is bound as uniforms in the same dispatches: a validation error at submit);
   * data a kernel writes goes in a `scratch()` buffer, filled with `gpu.write`.
   */
  upload(data: ArrayBufferView, label?: string): BufferRange {
    const staged = this.uniforms.stageData(data);
    if (staged) return staged;
    const buffer = this.scratch(data.byteLength, label);
    if (data.byteLength > 0 && !this.dryRun) this.gpu.write(buffer, data);
    return { buffer, offset: 0, size: buffer.size };
  }

  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, size: number): void {
    this.endPass();
    this.encoder.copyBufferToBuffer(src, srcOffset, dst, dstOffset, size);
  }

  /** Reads `size` bytes of `buffer` back to the CPU once the step has run. */
  readback(buffer: GPUBuffer, offset = 0, size = buffer.size - offset): Promise<ArrayBuffer> {
    const padded = align(size, 4);
    const staging = this.gpu.pool.acquire(padded, Usage.MAP_READ | Usage.COPY_DST, 'readback');
    this.copy(buffer, offset, staging, 0, padded);
    this.gpu.counters.readbacks++;
    const data = new Promise<ArrayBuffer>((resolve, reject) => this.readbacks.push({ staging, size, resolve, reject }));
    data.catch(() => {}); // a failed step also throws from submit(); an unawaited readback must not crash the process
    return data;
  }

  /**
   * Submits what is recorded so far and goes on recording into a new encoder: readbacks recorded
   * before the flush resolve as soon as that part has run, while the GPU runs later parts (the
   * prefill worker streams each layer's KV this way while later layers compute). Scratch buffers
   * stay held until submit(); errors of any part are still thrown from submit().
   */
  flush(): void {
    if (this.submitted) throw new Error('Step flushed after submit');
    this.endPass();
    this.submitUniformsAndCommands();
    this.encoder = this.gpu.device.createCommandEncoder({ label: 'step (continued)' });
    for (const r of this.readbacks.splice(0)) {
      const mapped = this.map(r);
      mapped.catch(() => {}); // awaited (and thrown) in submit() or discard()
      this.mapping.push(mapped);
    }
  }

  async submit(): Promise<StepResult> {
    if (this.submitted) throw new Error('Step submitted twice');
    this.submitted = true;
    this.times.submitCalled = performance.now();
    this.endPass();
    const device = this.gpu.device;
    let timestamps: GPUBuffer | null = null;
    if (this.querySet && this.passes > 0) {
      const bytes = this.passes * 2 * 8;
      const resolveBuf = this.gpu.pool.acquire(bytes, Usage.QUERY_RESOLVE | Usage.COPY_SRC);
      timestamps = this.gpu.pool.acquire(bytes, Usage.MAP_READ | Usage.COPY_DST);
      this.encoder.resolveQuerySet(this.querySet, 0, this.passes * 2, resolveBuf, 0);
      this.encoder.copyBufferToBuffer(resolveBuf, 0, timestamps, 0, bytes);
      this.scratchBuffers.push(resolveBuf);
    }
    this.submitUniformsAndCommands();
    this.times.submitted = performance.now();
    this.releaseHeld();

    // both pops issued in this tick, so a step recorded while this one awaits cannot take its scopes
    const [oom, validation] = await Promise.all([device.popErrorScope(), device.popErrorScope()]);
    const error = validation ?? oom;
    if (error) {
      const failure = new Error(`WebGPU error in step: ${error.message}`);
      for (const r of this.readbacks) r.reject(failure);
      await Promise.allSettled(this.mapping);
      throw failure;
    }

    await Promise.all([...this.mapping, ...this.readbacks.map((r) => this.map(r))]);
    const result: StepResult = {};
    if (timestamps) {
      await timestamps.mapAsync(MAP_READ_MODE);
      const t = new BigUint64Array(timestamps.getMappedRange(0, this.passes * 16));
      let total = 0n;
      for (let i = 0; i < this.passes; i++) total += t[2 * i + 1] - t[2 * i];
      timestamps.unmap();
      this.gpu.pool.release(timestamps);
      result.gpuTimeNs = Number(total);
    } else {
      await device.queue.onSubmittedWorkDone();
    }
    this.times.completed = performance.now();
    return result;
  }

  /**
   * Abandons a step that will not be submitted (recording failed part-way): closes its error
   * scopes, so they do not swallow later errors, and returns its pooled buffers.
   */
  async discard(): Promise<void> {
    if (this.submitted) return;
    this.submitted = true;
    this.endPass();
    this.releaseHeld();
    const failure = new Error('step discarded');
    for (const r of this.readbacks) {
      this.gpu.pool.release(r.staging);
      r.reject(failure);
    }
    await Promise.all([this.gpu.device.popErrorScope(), this.gpu.device.popErrorScope()]);
    await Promise.allSettled(this.mapping); // parts already flushed still run
  }

  /** Writes the staged uniforms and submits the encoder. */
  private submitUniformsAndCommands(): void {
    this.uniforms.write();
    this.gpu.submit(this.encoder.finish());
  }

  /** Returns the scratch buffers (last taken first back, so the next step takes them in the same order) and the uniform arena. */
  private releaseHeld(): void {
    for (let i = this.scratchBuffers.length - 1; i >= 0; i--) this.gpu.pool.release(this.scratchBuffers[i]);
    this.scratchBuffers.length = 0;
    this.gpu.returnUniformArena(this.uniforms);
  }

  private async map(r: Readback): Promise<void> {
    try {
      await r.staging.mapAsync(MAP_READ_MODE);
      r.resolve(r.staging.getMappedRange(0, align(r.size, 4)).slice(0, r.size));
      r.staging.unmap();
    } catch (err) {
      r.reject(err); // e.g. the device was lost: whoever waits on it must hear
      throw err;
    } finally {
      this.gpu.pool.release(r.staging);
    }
  }

  private computePass(): GPUComputePassEncoder {
    if (!this.pass) {
      const i = this.passes++;
      this.gpu.counters.computePasses++;
      if (this.querySet && i >= MAX_TIMED_PASSES) throw new Error(`a timed step may have at most ${MAX_TIMED_PASSES} compute passes`);
      this.pass = this.encoder.beginComputePass(
        this.querySet ? { timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } } : {},
      );
    }
    return this.pass;
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

}

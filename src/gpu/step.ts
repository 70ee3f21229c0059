import { MAP_READ_MODE, Usage, align } from './buffers.ts';
import type { Gpu } from './gpu.ts';
import type { Params } from './params.ts';

/** A storage binding: a whole buffer, or a byte range of one. */
export type Binding = GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number };

export interface Dispatch {
  pipeline: GPUComputePipeline;
  /** Uniform parameters, bound at @binding(0); storage buffers follow from @binding(1) in order. */
  params?: Params;
  buffers: Binding[];
  workgroups: readonly [number, number?, number?];
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

const UNIFORM_CHUNK = 64 * 1024;
const MAX_TIMED_PASSES = 64;

/**
 * One engine step: one command encoder, one compute pass per run of dispatches, one submit.
 * Uniforms of all dispatches are staged on the CPU and written with one writeBuffer per 64 KiB.
 * Scratch buffers taken with `scratch()` return to the pool after submit (queue order makes that
 * safe: the next step's commands run after this one's). Validation errors raised while the step
 * was recorded are thrown from `submit()` with the driver's message. A step is either submitted
 * or discarded, and is recorded without awaiting between its creation and submit() (its error
 * scopes sit on the device's scope stack, so steps may overlap only in their awaits after that).
 */
export class Step {
  private encoder: GPUCommandEncoder;
  private pass: GPUComputePassEncoder | null = null;
  private readonly uniformChunks: { buffer: GPUBuffer; staging: Uint8Array; used: number }[] = [];
  private readonly scratchBuffers: GPUBuffer[] = [];
  private readonly readbacks: Readback[] = [];
  /** readbacks of flushed parts, mapping as their part finishes */
  private readonly mapping: Promise<void>[] = [];
  private readonly querySet: GPUQuerySet | null;
  private passes = 0;
  private submitted = false;

  constructor(
    readonly gpu: Gpu,
    options: { label?: string; timestamps?: boolean } = {},
  ) {
    gpu.device.pushErrorScope('validation');
    gpu.device.pushErrorScope('out-of-memory');
    this.encoder = gpu.device.createCommandEncoder({ label: options.label });
    this.querySet = options.timestamps && gpu.features.timestampQuery ? gpu.timestampQuerySet(MAX_TIMED_PASSES * 2) : null;
  }

  dispatch(d: Dispatch): void {
    const pass = this.computePass();
    const entries: GPUBindGroupEntry[] = [];
    if (d.params) entries.push({ binding: 0, resource: this.uniform(d.params.bytes()) });
    d.buffers.forEach((b, i) => entries.push({ binding: i + 1, resource: 'buffer' in b ? b : { buffer: b } }));
    const bindGroup = this.gpu.device.createBindGroup({ layout: d.pipeline.getBindGroupLayout(0), entries });
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, bindGroup);
    const [x, y = 1, z = 1] = d.workgroups;
    if (x > 0 && y > 0 && z > 0) pass.dispatchWorkgroups(x, y, z);
  }

  /** A pooled storage buffer that lives until this step is submitted. */
  scratch(bytes: number, label?: string): GPUBuffer {
    const buffer = this.gpu.pool.acquire(align(bytes, 4), undefined, label);
    this.scratchBuffers.push(buffer);
    return buffer;
  }

  /** A scratch buffer holding `data` (written on the queue, so before this step's commands run). */
  upload(data: ArrayBufferView, label?: string): GPUBuffer {
    const buffer = this.scratch(data.byteLength, label);
    if (data.byteLength > 0) this.gpu.write(buffer, data);
    return buffer;
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
    for (const b of this.scratchBuffers) this.gpu.pool.release(b);

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
    for (const chunk of this.uniformChunks) this.gpu.pool.release(chunk.buffer);
    for (const b of this.scratchBuffers) this.gpu.pool.release(b);
    const failure = new Error('step discarded');
    for (const r of this.readbacks) {
      this.gpu.pool.release(r.staging);
      r.reject(failure);
    }
    await Promise.all([this.gpu.device.popErrorScope(), this.gpu.device.popErrorScope()]);
    await Promise.allSettled(this.mapping); // parts already flushed still run
  }

  /** Writes the staged uniforms and submits the encoder; the uniform chunks go back to the pool (queue order keeps them intact for the commands just submitted). */
  private submitUniformsAndCommands(): void {
    const queue = this.gpu.device.queue;
    for (const chunk of this.uniformChunks) queue.writeBuffer(chunk.buffer, 0, chunk.staging, 0, align(chunk.used, 4));
    queue.submit([this.encoder.finish()]);
    for (const chunk of this.uniformChunks.splice(0)) this.gpu.pool.release(chunk.buffer);
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

  private uniform(bytes: Uint8Array): GPUBufferBinding {
    const alignment = this.gpu.device.limits.minUniformBufferOffsetAlignment;
    let chunk = this.uniformChunks.at(-1);
    if (!chunk || align(chunk.used, alignment) + bytes.byteLength > UNIFORM_CHUNK) {
      chunk = { buffer: this.gpu.pool.acquire(UNIFORM_CHUNK, Usage.UNIFORM | Usage.COPY_DST, 'uniforms'), staging: new Uint8Array(UNIFORM_CHUNK), used: 0 };
      this.uniformChunks.push(chunk);
    }
    const offset = align(chunk.used, alignment);
    chunk.staging.set(bytes, offset);
    chunk.used = offset + bytes.byteLength;
    return { buffer: chunk.buffer, offset, size: bytes.byteLength };
  }
}

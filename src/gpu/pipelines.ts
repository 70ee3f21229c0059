import type { GpuCounters } from './counters.ts';
import { shaderSource } from './shaders.ts';

export type OverrideConstants = Record<string, number>;

interface Node {
  next: Map<string | number, Node>;
  pipeline?: GPUComputePipeline;
}

const NONE: OverrideConstants = {};

/** What `get` returns for a pipeline still compiling inside `collect`: only a dry-run step takes it. */
const COLLECTING = Object.freeze({ label: 'compiling' }) as unknown as GPUComputePipeline;

/**
 * Compute pipelines cached by (shader, entry point, override constants): each is compiled once.
 * The hot path (every dispatch asks) builds no string: it walks a trie of Maps by the shader and
 * entry names, then each constant's name and value in the order the caller wrote them; only a miss
 * computes the canonical key (constants sorted by name), so two call sites that order the same
 * constants differently share one pipeline.
 */
export class PipelineCache {
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly root: Node = { next: new Map() };
  /** compilations started by `compileAsync` and not finished */
  private readonly pending = new Map<string, Promise<GPUComputePipeline>>();
  /** while `collect` runs: the compilations its misses started */
  private collecting: Promise<GPUComputePipeline>[] | null = null;
  /** Shader names compiled so far (the shader coverage test reads it). */
  readonly compiledShaders = new Set<string>();

  constructor(
    private readonly device: GPUDevice,
    private readonly counters: GpuCounters,
  ) {}

  get(shader: string, entryPoint = 'main', constants: OverrideConstants = NONE): GPUComputePipeline {
    const node = this.walk(shader, entryPoint, constants);
    if (node.pipeline) return node.pipeline;
    const key = canonicalKey(shader, entryPoint, constants);
    let pipeline = this.pipelines.get(key);
    if (!pipeline && this.collecting) {
      this.collecting.push(this.compileAsync(shader, entryPoint, constants));
      return COLLECTING;
    }
    if (!pipeline) {
      pipeline = this.device.createComputePipeline(this.descriptor(key, shader, entryPoint, constants));
      this.add(key, shader, pipeline);
    }
    node.pipeline = pipeline;
    return pipeline;
  }

  /**
   * Runs `record` (which records into a dry-run step: see Gpu.precompile) with every pipeline it
   * asks for and the cache lacks compiled by `compileAsync` instead of synchronously; returns those
   * compilations.
   */
  collect(record: () => void): Promise<GPUComputePipeline>[] {
    if (this.collecting) throw new Error('PipelineCache.collect is not reentrant');
    const started: Promise<GPUComputePipeline>[] = (this.collecting = []);
    try {
      record();
    } finally {
      this.collecting = null;
    }
    return started;
  }

  /**
   * Compiles a pipeline with createComputePipelineAsync (the driver compiles off the event loop,
   * several at once), so that `get` later finds it. Start-up uses it for every pipeline the engine
   * can need (src/engine/generate.ts: precompile).
   */
  compileAsync(shader: string, entryPoint = 'main', constants: OverrideConstants = NONE): Promise<GPUComputePipeline> {
    const key = canonicalKey(shader, entryPoint, constants);
    const cached = this.pipelines.get(key) ?? this.pending.get(key);
    if (cached) return Promise.resolve(cached);
    const compiling = this.device.createComputePipelineAsync(this.descriptor(key, shader, entryPoint, { ...constants })).then(
      (pipeline) => {
        this.pending.delete(key);
        this.add(key, shader, pipeline);
        return pipeline;
      },
      (err: unknown) => {
        this.pending.delete(key);
        throw err;
      },
    );
    this.pending.set(key, compiling);
    return compiling;
  }

  module(shader: string): GPUShaderModule {
    let module = this.modules.get(shader);
    if (!module) {
      module = this.device.createShaderModule({ label: shader, code: shaderSource(shader) });
      this.modules.set(shader, module);
    }
    return module;
  }

  private descriptor(key: string, shader: string, entryPoint: string, constants: OverrideConstants): GPUComputePipelineDescriptor {
    return { label: key, layout: 'auto', compute: { module: this.module(shader), entryPoint, constants } };
  }

  private add(key: string, shader: string, pipeline: GPUComputePipeline): void {
    this.pipelines.set(key, pipeline);
    this.compiledShaders.add(shader);
    this.counters.pipelinesCreated++;
  }

  private walk(shader: string, entryPoint: string, constants: OverrideConstants): Node {
    let node = child(child(this.root, shader), entryPoint);
    for (const name in constants) node = child(child(node, name), constants[name]);
    return node;
  }
}

function child(node: Node, key: string | number): Node {
  let next = node.next.get(key);
  if (!next) node.next.set(key, (next = { next: new Map() }));
  return next;
}

function canonicalKey(shader: string, entryPoint: string, constants: OverrideConstants): string {
  const names = Object.keys(constants).sort();
  return `${shader}|${entryPoint}|${names.map((k) => `${k}=${constants[k]}`).join(',')}`;
}

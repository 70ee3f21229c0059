import { shaderSource } from './shaders.ts';

export type OverrideConstants = Record<string, number>;

/** Compute pipelines cached by (shader, entry point, override constants): each is compiled once. */
export class PipelineCache {
  private readonly modules = new Map<string, GPUShaderModule>();
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  /** Shader names compiled so far (the shader coverage test reads it). */
  readonly compiledShaders = new Set<string>();

  constructor(private readonly device: GPUDevice) {}

  get(shader: string, entryPoint = 'main', constants: OverrideConstants = {}): GPUComputePipeline {
    const key = `${shader}|${entryPoint}|${Object.keys(constants)
      .sort()
      .map((k) => `${k}=${constants[k]}`)
      .join(',')}`;
    let pipeline = this.pipelines.get(key);
    if (!pipeline) {
      pipeline = this.device.createComputePipeline({
        label: key,
        layout: 'auto',
        compute: { module: this.module(shader), entryPoint, constants },
      });
      this.pipelines.set(key, pipeline);
      this.compiledShaders.add(shader);
    }
    return pipeline;
  }

  module(shader: string): GPUShaderModule {
    let module = this.modules.get(shader);
    if (!module) {
      module = this.device.createShaderModule({ label: shader, code: shaderSource(shader) });
      this.modules.set(shader, module);
    }
    return module;
  }
}

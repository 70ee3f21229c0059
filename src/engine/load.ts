import type { AnnAttentionOptions } from '../ann/ann_attention.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { type HeadPatternCliOptions, headPatternFromOptions } from '../kv/head_pattern.ts';
import type { KvDtype } from '../../kernels/kv_cache.ts';
import { type SubgroupMode, setSubgroups } from '../../kernels/subgroups.ts';
import { GpuModel } from '../model/gpu_model.ts';
import { type ModelSource, openModel } from '../model/source.ts';
import { warmUp } from './generate.ts';

/** `--kv-dtype`: auto is f16 where the device has shader-f16 (a GPU made for f16), else f32. */
export type KvDtypeChoice = 'auto' | KvDtype;

export const kvDtypeFor = (gpu: Gpu, choice: KvDtypeChoice = 'auto'): KvDtype => (choice === 'auto' ? (gpu.features.shaderF16 ? 'f16' : 'f32') : choice);

/**
 * `--subgroups`: auto takes the subgroup kernels on a hardware GPU that offers the feature; a
 * software adapter's emulated subgroups buy nothing, and its f32 paths stay those of the tests.
 */
export function applySubgroups(gpu: Gpu, mode: SubgroupMode = 'auto'): void {
  setSubgroups(gpu, mode === 'auto' && gpu.adapter.isSoftware ? 'off' : mode);
}

export interface LoadedModel {
  gpu: Gpu;
  source: ModelSource;
  model: GpuModel;
  /** releases the model and the device (a live device keeps dawn.node's event polling running) */
  destroy(): void;
}

/**
 * What a serving process (colocated server or disaggregated worker) starts with: the device, the
 * model file opened and its weights and KV cache on the device, its pipelines compiled by a
 * warm-up. The device is released if any of it fails.
 */
export async function loadServingModel(o: { device: DeviceMode; adapter?: number; path: string; tokenizer?: string; kvMemory: number; headwise?: HeadPatternCliOptions; ann?: AnnAttentionOptions; kvDtype?: KvDtypeChoice; subgroups?: SubgroupMode; warmUp?: boolean }): Promise<LoadedModel> {
  const gpu = await Gpu.open({ mode: o.device, adapter: o.adapter });
  let model: GpuModel | undefined;
  try {
    applySubgroups(gpu, o.subgroups);
    const source = await openModel(o.path, { tokenizer: o.tokenizer });
    const headPattern = headPatternFromOptions(o.headwise ?? {}, source.config);
    model = GpuModel.load(gpu, source, { kvMemoryBytes: o.kvMemory, headPattern, ann: o.ann, kvDtype: kvDtypeFor(gpu, o.kvDtype) });
    if (o.warmUp ?? true) await warmUp(model, source.tokenizer);
    const m = model;
    return {
      gpu,
      source,
      model: m,
      destroy: () => {
        m.destroy();
        gpu.destroy();
      },
    };
  } catch (err) {
    model?.destroy();
    gpu.destroy();
    throw err;
  }
}

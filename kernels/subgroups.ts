import type { Gpu } from '../src/gpu/gpu.ts';

/**
 * Whether kernels take their subgroup variants (shaders/*_subgroup.wgsl: reductions with
 * subgroupAdd / subgroupMax instead of workgroup-memory trees). `auto`: when the device has the
 * `subgroups` feature. The default is `off`, so the f32 paths and their bit-exact tests stay what
 * they are until the caller opts in for the device with setSubgroups (`--subgroups`, src/engine/load.ts).
 */
export type SubgroupMode = 'auto' | 'on' | 'off';

const modes = new WeakMap<Gpu, SubgroupMode>();

/** Sets the subgroup mode of every kernel dispatched on `gpu`; `on` on a device without the feature throws. */
export function setSubgroups(gpu: Gpu, mode: SubgroupMode): void {
  if (mode === 'on' && !gpu.features.subgroups) throw new Error('subgroups: this device does not offer the subgroups feature');
  modes.set(gpu, mode);
}

/** The variant a kernel dispatches: `force` (a test's override) when given, else the device's mode. */
export function useSubgroups(gpu: Gpu, force?: boolean): boolean {
  if (force === true && !gpu.features.subgroups) throw new Error('subgroups: this device does not offer the subgroups feature');
  if (force !== undefined) return force;
  const mode = modes.get(gpu) ?? 'off';
  return mode === 'on' || (mode === 'auto' && gpu.features.subgroups);
}

import { rmsNorm, rmsNormRef } from '../../kernels/rmsnorm.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { normalArray } from '../util/rng.ts';

const MiB = 1024 * 1024;

/** Prints the adapter, its features and limits, and checks one kernel against its CPU reference. */
export async function doctor(mode: DeviceMode): Promise<boolean> {
  const gpu = await Gpu.open({ mode });
  try {
    const a = gpu.adapter;
    const f = gpu.features;
    const l = gpu.limits;
    const yesNo = (b: boolean) => (b ? 'yes' : 'no');
    console.log(`adapter:  ${a.description} (vendor ${a.vendor}, architecture ${a.architecture}, device ${a.device})`);
    if (a.isSoftware) console.log('          software device: a CPU fallback, correct but slow; its timings say nothing about GPUs');
    console.log(
      `features: shader-f16 ${yesNo(f.shaderF16)}, subgroups ${yesNo(f.subgroups)}` +
        (f.subgroups ? ` (sizes ${a.subgroupMinSize}-${a.subgroupMaxSize})` : '') +
        `, timestamp-query ${yesNo(f.timestampQuery)}`,
    );
    console.log(
      `limits:   storage binding ${Math.floor(l.maxStorageBufferBindingSize / MiB)} MiB, buffer ${Math.floor(l.maxBufferSize / MiB)} MiB, ` +
        `workgroup storage ${l.maxComputeWorkgroupStorageSize / 1024} KiB, ${l.maxComputeInvocationsPerWorkgroup} invocations/workgroup, ` +
        `${l.maxStorageBuffersPerShaderStage} storage buffers/stage`,
    );

    const rows = 4;
    const dim = 4096;
    const x = normalArray(rows * dim, 1);
    const w = normalArray(dim, 2);
    const xb = gpu.upload(x);
    const wb = gpu.upload(w);
    const yb = gpu.createBuffer(rows * dim * 4);
    const step = gpu.step();
    rmsNorm(step, { x: xb, weight: wb, out: yb, rows, dim, eps: 1e-5 });
    const t0 = performance.now();
    await step.submit();
    const ms = performance.now() - t0;
    const y = await gpu.readF32(yb, rows * dim);
    const ref = rmsNormRef(x, w, rows, dim, 1e-5);
    let maxErr = 0;
    for (let i = 0; i < y.length; i++) maxErr = Math.max(maxErr, Math.abs(y[i] - ref[i]) / (1 + Math.abs(ref[i])));
    const ok = maxErr < 1e-4;
    console.log(`kernel:   rmsnorm ${rows}x${dim} vs CPU reference: max error ${maxErr.toExponential(2)} in ${ms.toFixed(1)} ms: ${ok ? 'ok' : 'MISMATCH'}`);
    return ok;
  } finally {
    gpu.destroy();
  }
}

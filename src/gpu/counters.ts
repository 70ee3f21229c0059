/**
 * What the host asks of WebGPU, counted as it asks: the figures a decode step must keep small
 * (`wgserve bench step`). Plain integer fields bumped in place, so counting is always on.
 */
export class GpuCounters {
  dispatches = 0;
  computePasses = 0;
  submits = 0;
  bindGroupsCreated = 0;
  buffersCreated = 0;
  bufferBytesCreated = 0;
  writeBufferCalls = 0;
  writeBufferBytes = 0;
  pipelinesCreated = 0;
  readbacks = 0;

  snapshot(): GpuCounts {
    return { ...this };
  }
}

export type GpuCounts = { [K in keyof GpuCounters as GpuCounters[K] extends number ? K : never]: number };

/** Counts between two snapshots (b - a). */
export function countsSince(a: GpuCounts, b: GpuCounts): GpuCounts {
  const out = { ...b };
  for (const k of Object.keys(out) as (keyof GpuCounts)[]) out[k] -= a[k];
  return out;
}

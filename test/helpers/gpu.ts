import { afterAll, beforeAll } from 'vitest';
import { Gpu } from '../../src/gpu/gpu.ts';

/**
 * Opens one device for the calling test file (each file runs in its own worker process) and
 * destroys it after the file's tests: dawn.node must not be torn down with a live device.
 * Call at the top of a file or describe block; the returned getter is valid inside tests.
 */
export function useGpu(): () => Gpu {
  let gpu: Gpu | undefined;
  beforeAll(async () => {
    gpu = await Gpu.open();
  });
  afterAll(() => gpu?.destroy());
  return () => {
    if (!gpu) throw new Error('useGpu: device not open yet (call useGpu at file or describe level)');
    return gpu;
  };
}

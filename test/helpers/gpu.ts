import { afterAll, beforeAll } from 'vitest';
import { Gpu } from '../../src/gpu/gpu.ts';

/** The device every test file of this worker process shares (vitest runs files with isolate: false). */
const shared = globalThis as unknown as { wgserveTestGpu?: Promise<Gpu> };

/**
 * The device for the calling test file. By default one device per vitest worker process, shared
 * by the files it runs (vitest.config.ts: isolate false), so a pipeline compiled by one file is not
 * compiled again by the next: on the software device compilation is a large part of the suite's
 * time. It lives until the process exits. `{ own: true }` opens a device for this file alone,
 * destroyed after its tests, for tests that count what a fresh device does (pipelines created).
 * Tests must leave a shared device as they found it (setSubgroups back to off).
 * Call at the top of a file or describe block; the returned getter is valid inside tests.
 */
export function useGpu(options: { own?: boolean } = {}): () => Gpu {
  let gpu: Gpu | undefined;
  beforeAll(async () => {
    gpu = options.own ? await Gpu.open() : await (shared.wgserveTestGpu ??= Gpu.open());
  });
  afterAll(() => {
    if (options.own) gpu?.destroy();
  });
  return () => {
    if (!gpu) throw new Error('useGpu: device not open yet (call useGpu at file or describe level)');
    return gpu;
  };
}

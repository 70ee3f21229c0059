import { defineConfig } from 'vitest/config';

// Two workers match this 2-core machine. Files share their worker process (isolate: false) and
// with it one software Vulkan device (test/helpers/gpu.ts), so a pipeline is compiled once per
// worker rather than once per file: compilation is a large part of the suite on the software
// device. Spies are restored after every test so that none reaches another file.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    isolate: false,
    restoreMocks: true,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});

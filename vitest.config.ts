import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Crash and concurrency tests spawn processes; keep file parallelism to the machine's cores.
    maxWorkers: 2,
  },
});

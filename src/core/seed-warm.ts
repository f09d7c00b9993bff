// The seed pool's worker threads, started early. A thread takes ~130 ms to start (a V8 isolate,
// then the seed modules loaded again), about as long as the main thread takes to load those
// modules and open and check the master. This module loads nothing of them, so `user seed
// --pending` starts the threads first and both happen at once, instead of one after the other.

import { Worker } from 'node:worker_threads';

/**
 * Worker threads running seed-pool.js, each waiting, doing nothing (no master opened, no job
 * claimed), until the pool hands it its input; one never handed any (the command stopped on bad
 * input first) is ended by `dispose`.
 */
export interface WarmWorkers {
  take(): Worker | undefined;
  dispose(): Promise<void>;
}

export function warmSeedWorkers(count: number): WarmWorkers {
  const gone = new Set<Worker>();
  const idle = Array.from({ length: count }, () => {
    const w = new Worker(new URL('./seed-pool.js', import.meta.url), { workerData: { warm: true } });
    // Not a reason to keep the process alive: one never handed input is ended below, or with the process.
    w.unref();
    // One that died while waiting (it could not load its modules) is not handed input, which it
    // would never answer: the pool starts a thread of its own instead, and sees its error.
    w.on('error', () => gone.add(w));
    w.on('exit', () => gone.add(w));
    return w;
  });
  return {
    take: () => {
      for (let w = idle.shift(); w; w = idle.shift()) if (!gone.has(w)) return w;
      return undefined;
    },
    dispose: async () => {
      await Promise.all(idle.splice(0).map((w) => w.terminate()));
    },
  };
}

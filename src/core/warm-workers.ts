// Worker threads started early. A thread takes ~130 ms to start (a V8 isolate, then its modules
// loaded again), about as long as the main thread takes to load those same modules and open and
// check the master. This module loads none of them, so a command that fans out over threads
// (`user seed --pending`, `verify`, `backfill`) starts its threads first and both happen at once, instead
// of one after the other.

import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Worker threads, each waiting, doing nothing (no master opened, nothing read or claimed), until
 * the command hands it its input by message; one never handed any (the command stopped on bad
 * input first, or needed fewer threads) is ended by `dispose`.
 */
export interface WarmWorkers {
  take(): Worker | undefined;
  dispose(): Promise<void>;
}

/** What a warm thread finds in workerData.acm2Warm: which module's waiting loop to run. */
export type WarmKind = 'seed' | 'verify' | 'backfill';

export function warmWorkers(script: URL, kind: WarmKind, count: number, options: Omit<WorkerOptions, 'workerData'> = {}): WarmWorkers {
  const gone = new Set<Worker>();
  const idle: Worker[] = [];
  for (let i = 0; i < count; i++) {
    let w: Worker;
    try {
      w = new Worker(script, { ...options, workerData: { acm2Warm: kind } });
    } catch {
      // The system starts no more threads (ERR_WORKER_INIT_FAILED: a process, thread or memory
      // limit). Starting early is only a head start: the command goes on with the threads it has,
      // and for the others does what it does when it cannot start one (backfill plans in this thread).
      break;
    }
    // Not a reason to keep the process alive: one never handed input is ended below, or with the process.
    w.unref();
    // One that died while waiting (it could not load its modules) is not handed input, which it
    // would never answer: the command starts a thread of its own instead, and sees its error.
    w.on('error', () => gone.add(w));
    w.on('exit', () => gone.add(w));
    idle.push(w);
  }
  return {
    take: () => {
      for (let w = idle.shift(); w; w = idle.shift()) {
        if (gone.has(w)) continue;
        w.ref();
        return w;
      }
      return undefined;
    },
    dispose: async () => {
      await Promise.all(idle.splice(0).map((w) => w.terminate()));
    },
  };
}

/** The seed pool's drainers (seed-pool.js), for `user seed --pending`. */
export function warmSeedWorkers(count: number): WarmWorkers {
  return warmWorkers(new URL('./seed-pool.js', import.meta.url), 'seed', count);
}

/**
 * A verify worker's young generation, in MiB. V8's default lets each worker's nursery grow to tens of
 * MiB between scavenges, and those swings were verify's peak memory: with 8, 10,000 users peaked
 * at ~120 MiB instead of ~155 (1,000 users: ~112 instead of ~126), at no cost in time.
 */
export const VERIFY_WORKER_YOUNG_GEN_MB = 8;

/** verify's checkers (verify.js), for `acm2 verify`. */
export function warmVerifyWorkers(count: number): WarmWorkers {
  return warmWorkers(new URL('./verify.js', import.meta.url), 'verify', count, { resourceLimits: { maxYoungGenerationSizeMb: VERIFY_WORKER_YOUNG_GEN_MB } });
}

/** backfill's planning threads (backfill.js), for `acm2 backfill`. */
export function warmPlannerWorkers(count: number): WarmWorkers {
  return warmWorkers(new URL('./backfill.js', import.meta.url), 'backfill', count);
}

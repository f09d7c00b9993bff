// Worker threads started early. A thread takes ~130 ms to start (a V8 isolate, then its modules
// loaded again), about as long as the main thread takes to load those same modules and open and
// check the master. This module loads none of them, so a command that fans out over threads
// (`user seed --pending`, `verify`, `backfill`) starts its threads first and both happen at once, instead
// of one after the other.

import { Worker, isMainThread, parentPort, workerData, type MessagePort, type WorkerOptions } from 'node:worker_threads';

/**
 * Worker threads, each waiting, doing nothing (no master opened, nothing read or claimed), until
 * the command hands it its input by message; one never handed any (the command stopped on bad
 * input first, or needed fewer threads) is ended by `dispose`.
 */
export interface WarmWorkers {
  take(): Worker | undefined;
  dispose(): Promise<void>;
}

/** What a thread finds in workerData (acm2Warm if warm, acm2Cold if started with its input): which module's thread it is. */
export type WarmKind = 'seed' | 'verify' | 'backfill';

export function warmWorkers(script: URL, kind: WarmKind, count: number): WarmWorkers {
  const gone = new Set<Worker>();
  const idle: Worker[] = [];
  for (let i = 0; i < count; i++) {
    let w: Worker;
    try {
      w = new Worker(script, { ...THREAD_OPTIONS[kind], workerData: { acm2Warm: kind } });
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
const VERIFY_WORKER_YOUNG_GEN_MB = 8;

/** verify's checkers (verify.js), for `acm2 verify`. */
export function warmVerifyWorkers(count: number): WarmWorkers {
  return warmWorkers(new URL('./verify.js', import.meta.url), 'verify', count);
}

/** backfill's planning threads (backfill.js), for `acm2 backfill`. */
export function warmPlannerWorkers(count: number): WarmWorkers {
  return warmWorkers(new URL('./backfill.js', import.meta.url), 'backfill', count);
}

/** Each kind's threads start alike, warm or not. */
const THREAD_OPTIONS: Record<WarmKind, Omit<WorkerOptions, 'workerData'>> = {
  seed: {},
  verify: { resourceLimits: { maxYoungGenerationSizeMb: VERIFY_WORKER_YOUNG_GEN_MB } },
  backfill: {},
};

/**
 * A thread of `kind` (`script`: that module's own file) with `input`: a warm one is handed it by
 * message, or one is started now with it. Throws what `new Worker` throws (ERR_WORKER_INIT_FAILED).
 */
export function startOrHand(warm: Worker | undefined, script: URL, kind: WarmKind, input: unknown): Worker {
  if (!warm) return new Worker(script, { ...THREAD_OPTIONS[kind], workerData: { acm2Cold: kind, input } });
  try {
    warm.postMessage({ acm2Input: input });
  } catch (e) {
    // Input that cannot be sent: the thread, taken from its pool, would wait for it, kept alive by nothing.
    void warm.terminate();
    throw e;
  }
  return warm;
}

/**
 * On `kind`'s thread, `onInput` gets the input startOrHand gave it: at once if started with it, else
 * when handed it; any other message is the module's own (users sent before it, its to refuse).
 * Returns the port to the main thread; undefined on any other thread, where the module is only a library.
 */
export function threadInput<T>(kind: WarmKind, onInput: (input: T, port: MessagePort) => void): MessagePort | undefined {
  const data = workerData as { acm2Cold?: string; acm2Warm?: string; input?: T } | undefined;
  const port = parentPort;
  if (isMainThread || !port || (data?.acm2Cold !== kind && data?.acm2Warm !== kind)) return undefined;
  if (data.acm2Cold === kind) onInput(data.input as T, port);
  else {
    // Listens only until handed its input: a listener keeps a thread alive, and a seed drainer's
    // pool waits for it to exit once it has drained.
    const handed = (m: { acm2Input?: T } | null) => {
      if (typeof m !== 'object' || m === null || !('acm2Input' in m)) return;
      port.off('message', handed);
      onInput(m.acm2Input as T, port);
    };
    port.on('message', handed);
  }
  return port;
}

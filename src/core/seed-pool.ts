// Drains the seed queue with N drainers on this host (this thread and N - 1 worker threads, each
// with its own master connection), so seeding many users keeps every core busy. The queue itself (leases,
// SKIP LOCKED) spreads work across hosts; this only spreads it across cores.

import type { MessagePort } from 'node:worker_threads';
import type { MasterUrl } from '../config.js';
import { openMaster } from '../master/factory.js';
import { drainQueue, type DrainResult } from './users.js';
import { fromWire, toWire, type WireError } from '../errors.js';
import { startOrHand, threadInput, type WarmWorkers } from './warm-workers.js';

export interface PoolInput {
  master: MasterUrl;
  dataDir: string;
  seedsDir: string;
  lockTimeoutMs: number;
  concurrency: number;
  limit?: number;
  watch?: boolean;
  /** Aborted (SIGINT/SIGTERM): every drainer claims no more jobs, finishes those in flight, and the pool returns. */
  signal?: AbortSignal;
  onProgress?: (done: number) => void;
  /** Threads started early (warmSeedWorkers): the first round drains with them instead of starting its own. */
  warm?: WarmWorkers;
}

interface WorkerInput {
  master: MasterUrl;
  dataDir: string;
  seedsDir: string;
  lockTimeoutMs: number;
  /** Int32 [0]: jobs reserved so far (--limit across drainers); [1]: 1 once the pool is told to stop. */
  slots: SharedArrayBuffer;
  limit: number;
}

export interface PoolResult extends DrainResult {
  /** Stopped by the signal before the queue was drained (jobs not claimed stay queued). */
  interrupted: boolean;
}

export function emptyDrain(): DrainResult {
  return { claimed: 0, done: 0, retrying: 0, failed: 0, skipped: 0, failures: [] };
}

/**
 * The failures a drain keeps to report (the latest): a --watch worker runs for weeks, and a job
 * held back round after round (a package that cannot be used) would grow the list without end.
 * The counts stay exact.
 */
export const FAILURES_KEPT = 1000;

export function mergeDrain(a: DrainResult, b: DrainResult): DrainResult {
  const failures = a.failures.length + b.failures.length > FAILURES_KEPT ? [...a.failures, ...b.failures].slice(-FAILURES_KEPT) : [...a.failures, ...b.failures];
  return {
    claimed: a.claimed + b.claimed,
    done: a.done + b.done,
    retrying: a.retrying + b.retrying,
    failed: a.failed + b.failed,
    skipped: a.skipped + b.skipped,
    failures,
  };
}

export async function runSeedPool(input: PoolInput): Promise<PoolResult> {
  // Shared by every drainer of every round, so --limit holds across them and a stop reaches all.
  const slots = new SharedArrayBuffer(8);
  const flags = new Int32Array(slots);
  const stop = () => Atomics.store(flags, 1, 1);
  input.signal?.addEventListener('abort', stop);
  if (input.signal?.aborted) stop();
  try {
    let total = emptyDrain();
    for (;;) {
      total = mergeDrain(total, await drainOnce(input, slots));
      const limitHit = input.limit !== undefined && total.claimed >= input.limit;
      if (!input.watch || limitHit || input.signal?.aborted) break;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, 1000);
        function done() {
          clearTimeout(t);
          input.signal?.removeEventListener('abort', done);
          resolve();
        }
        input.signal?.addEventListener('abort', done);
      });
      if (input.signal?.aborted) break;
    }
    return { ...total, interrupted: Boolean(input.signal?.aborted) };
  } finally {
    input.signal?.removeEventListener('abort', stop);
  }
}

async function drainOnce(input: PoolInput, slots: SharedArrayBuffer): Promise<DrainResult> {
  const limit = input.limit ?? -1;
  const n = Math.max(1, input.concurrency);
  const wi: WorkerInput = { master: input.master, dataDir: input.dataDir, seedsDir: input.seedsDir, lockTimeoutMs: input.lockTimeoutMs, slots, limit };
  if (n === 1) return drainInThread(wi, input.onProgress);
  // This thread drains too (its modules are loaded already), beside n - 1 worker threads.
  const inWorker = (): Promise<DrainResult> =>
    new Promise<DrainResult>((resolve, reject) => {
      const w = startOrHand(input.warm?.take(), new URL(import.meta.url), 'seed', wi);
      let result: DrainResult | undefined;
      w.on('message', (m: { type: string; result?: DrainResult; error?: WireError }) => {
        if (m.type === 'tick') input.onProgress?.(1);
        else if (m.type === 'done') result = m.result;
        // With its class: a master gone mid-drain is exit 3, not an internal error.
        else if (m.type === 'error') reject(fromWire(m.error ?? { message: 'seed worker failed' }));
      });
      w.on('error', reject);
      w.on('exit', (code) => (result ? resolve(result) : reject(new Error(`seed worker exited with code ${code}`))));
    });
  const settled = await Promise.allSettled([...Array.from({ length: n - 1 }, inWorker), drainInThread(wi, input.onProgress)]);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  const results = settled.map((r) => (r as PromiseFulfilledResult<DrainResult>).value);
  return results.reduce(mergeDrain, emptyDrain());
}

async function drainInThread(wi: WorkerInput, tick?: (n: number) => void): Promise<DrainResult> {
  const master = await openMaster(wi.master);
  const counter = new Int32Array(wi.slots);
  try {
    let seen = 0;
    return await drainQueue(
      { master, dataDir: wi.dataDir, seedsDir: wi.seedsDir, lockTimeoutMs: wi.lockTimeoutMs },
      {
        reserve: () => {
          if (Atomics.load(counter, 1) !== 0) return false;
          if (wi.limit < 0 || Atomics.add(counter, 0, 1) < wi.limit) return true;
          Atomics.sub(counter, 0, 1);
          return false;
        },
        // A slot whose claim found the queue empty goes back, so a --watch round later can use it.
        unreserve: () => void (wi.limit >= 0 && Atomics.sub(counter, 0, 1)),
        onJob: (r) => {
          const now = r.done + r.failed + r.retrying + r.skipped;
          tick?.(now - seen);
          seen = now;
        },
      },
    );
  } finally {
    await master.close();
  }
}

function drainInWorker(wi: WorkerInput, port: MessagePort): void {
  drainInThread(wi, () => port.postMessage({ type: 'tick' }))
    .then((result) => port.postMessage({ type: 'done', result }))
    .catch((e: unknown) => port.postMessage({ type: 'error', error: toWire(e) }));
}

threadInput<WorkerInput>('seed', drainInWorker);

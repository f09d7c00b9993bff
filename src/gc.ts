// A full garbage collection on demand, for loops over thousands of users.
//
// V8 lets garbage that survived two scavenges (a parsed results_summary lives through a user's
// check) pile up in old space until its next mark-compact, so a process's peak memory grows with
// the number of users it visits, though the live heap stays a few MiB. Long loops call
// collectGarbage() every so often (a few ms per call on such a heap), which keeps peak RSS flat
// from 1,000 to 10,000 users. If the runtime refuses --expose-gc, it does nothing.

import v8 from 'node:v8';
import vm from 'node:vm';

let gc: (() => void) | undefined | null = null;

export function collectGarbage(): void {
  if (gc === null) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = undefined;
    }
  }
  gc?.();
}

/** Calls collectGarbage() on every `every`-th call. */
export function gcEvery(every: number): () => void {
  let n = 0;
  return () => {
    if (++n % every === 0) collectGarbage();
  };
}

// Ctrl-C and `kill` (SIGTERM, what systemd and Kubernetes send) for long batches: the first
// signal stops taking new work and lets what is in flight finish, so the summary and saved
// progress are exact; a second one stops at once, which is safe too (every step is crash-safe,
// and a lease left behind expires).

import type { Reporter } from '../ui/reporter.js';

const SIGNALS = ['SIGINT', 'SIGTERM'] as const;

export interface Interrupt {
  /** Aborted at the first SIGINT or SIGTERM. */
  signal: AbortSignal;
  /** Stop listening (call when the batch is over). */
  dispose(): void;
}

/** atOnce: whether a first signal stops at once too (nothing is in flight yet that should finish). */
export function onInterrupt(out: Reporter, finishing: string, atOnce: () => boolean = () => false): Interrupt {
  const ac = new AbortController();
  const handler = (sig: NodeJS.Signals) => {
    if (ac.signal.aborted || atOnce()) {
      // Second signal: leave with the default action of that signal.
      dispose();
      process.kill(process.pid, sig);
      return;
    }
    ac.abort();
    out.log(`\nInterrupted (${sig}): ${finishing} (${sig === 'SIGINT' ? 'Ctrl-C' : sig} again to stop at once)…`);
  };
  const dispose = () => {
    for (const s of SIGNALS) process.off(s, handler);
  };
  for (const s of SIGNALS) process.on(s, handler);
  return { signal: ac.signal, dispose };
}

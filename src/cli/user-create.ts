// `acm2 user create`: validate, create master rows in one transaction, seed (or queue).

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import { checkCreateInput, createUser, type CreateHooks, type CreateUserResult } from '../core/users.js';
import { renderCreate } from '../ui/users.js';
import { EXIT, isAcm2Error } from '../errors.js';
import type { Reporter } from '../ui/reporter.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // Checked before the master is opened, so bad input leaves the disk untouched.
  const input = checkCreateInput(cfg.seedsDir, {
    email: String(opts.email),
    username: String(opts.username),
    wordpressUserId: opts.wordpressUserId,
    seedVersion: cfg.seedVersion,
    async: Boolean(opts.async),
  });
  const show = (result: Omit<CreateUserResult, 'seedError'>) => {
    out.result(result, () => renderCreate(result));
    // The key exists nowhere else and is shown once: --quiet keeps the rest quiet, not the key.
    if (cfg.quiet && !cfg.json) process.stdout.write(`${result.apiKey}\n`);
  };
  const signals = guardKey(out, show);
  let result: CreateUserResult;
  try {
    result = await usingMaster(cfg.master, (master) =>
      createUser({ master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir, lockTimeoutMs: cfg.lockTimeoutMs }, input, signals.hooks),
      { pairWith: { dataDir: cfg.dataDir, write: true } },
    );
  } finally {
    signals.dispose();
  }
  const { seedError, ...shown } = result;
  show(shown);
  // Exit 1 for a failed seed, whatever stopped it (SPEC): the user and its key exist, so this is
  // not exit 3's "nothing half-done", and a script that retried the create on 3 would get
  // duplicate_email and lose the key. 70 only for a bug. The key is shown either way.
  if (seedError !== undefined) process.exitCode = isAcm2Error(seedError) ? EXIT.findings : EXIT.internal;
  else if (result.seed.status === 'failed') process.exitCode = EXIT.findings;
}

/**
 * Ctrl-C or SIGTERM while `user create` runs. Before the user is written: nothing is made (exit 1).
 * While the master writes it (its COMMIT may land even if the process dies), and once it exists,
 * its API key, shown only once, must not be lost with the process: the first signal lets the seed
 * finish and the key be shown as usual; a second one shows the key as soon as the user exists,
 * with the seed as interrupted (it is crash-safe, and `acm2 user seed <id>` finishes it), and exits.
 */
function guardKey(out: Reporter, show: (r: Omit<CreateUserResult, 'seedError'>) => void): { hooks: CreateHooks; dispose(): void } {
  const ac = new AbortController();
  let creating = false;
  let made: Parameters<NonNullable<CreateHooks['onCreated']>>[0] | undefined;
  let leaveWith: NodeJS.Signals | undefined;
  const leave = (sig: NodeJS.Signals) => {
    const m = made!;
    show({
      user: { ...m.user, seedStatus: 'failed' },
      apiKey: m.apiKey,
      seed: { status: 'failed', seedVersion: m.user.seedVersion, error: `interrupted (${sig}) before the seed finished; it is safe to run again`, jobId: m.jobId, retry: `acm2 user seed ${m.user.id}` },
    });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  const handler = (sig: NodeJS.Signals) => {
    const again = ac.signal.aborted;
    ac.abort();
    const key = sig === 'SIGINT' ? 'Ctrl-C' : sig;
    if (!creating) {
      if (again) {
        dispose();
        process.kill(process.pid, sig);
        return;
      }
      out.log(`\nInterrupted (${sig}): stopping before the user is created (${key} again to stop at once)…`);
      return;
    }
    if (!made) {
      // The master may commit the user whatever happens here: wait for it, so the key can be shown.
      if (again) leaveWith = sig;
      out.log(`\nInterrupted (${sig}): the user is being written to the master; waiting for it so that its API key can be shown${again ? ', then stopping' : ''}…`);
      return;
    }
    if (!again) {
      out.log(`\nInterrupted (${sig}): user ${made.user.id} exists; finishing its seed so that its API key can be shown (${key} again to show the key and stop now)…`);
      return;
    }
    leave(sig);
  };
  const dispose = () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  const hooks: CreateHooks = {
    signal: ac.signal,
    onCreating: () => (creating = true),
    onCreated: (m) => {
      made = m;
      if (leaveWith) leave(leaveWith);
    },
  };
  return { hooks, dispose };
}

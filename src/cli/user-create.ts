// `acm2 user create`: validate, create master rows in one transaction, seed (or queue), and show
// the API key once, marking it delivered in the master only after stdout has taken it.

import type { CommandCall } from './program.js';
import { context } from './context.js';
import { usingMaster } from '../master/factory.js';
import type { MasterDb } from '../master/types.js';
import { checkCreateInput, createUser, type CreateHooks, type CreateUserResult } from '../core/users.js';
import { renderCreate, type ShownCreate } from '../ui/users.js';
import { fstatSync, statSync } from 'node:fs';
import { EXIT, UsageError, isAcm2Error } from '../errors.js';
import type { Config } from '../config.js';
import type { Reporter } from '../ui/reporter.js';
import { jsonText, visible, visibleDeep } from '../ui/text.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  // The key's hashing (bcryptjs, loaded only by this command) is loaded before the master is
  // opened: opening an embedded master that is not there yet creates it, and a load that fails
  // (the open-file limit met, a broken install) must leave the data dir as it was. Started here,
  // alongside the checks; handled at once so that bad input, which throws first, does not leave
  // a failed load unhandled.
  const hashing = import('../core/api-key.js');
  hashing.catch(() => undefined);
  // Checked before the master is opened, so bad input leaves the disk untouched.
  const input = checkCreateInput(cfg.seedsDir, {
    email: String(opts.email),
    username: String(opts.username),
    wordpressUserId: opts.wordpressUserId,
    seedVersion: cfg.seedVersion,
    async: Boolean(opts.async),
  });
  if (stdoutGoesNowhere()) {
    const message = `stdout is /dev/null (closed or discarded), so the new user's API key, shown only once, would reach nobody: nothing was created; send stdout to a terminal, a file or a pipe`;
    // With --json the error document would go to /dev/null too: said where it can be seen.
    if (cfg.json) process.stderr.write(`acm2: ${message}\n`);
    throw new UsageError(message, 'stdout_discarded');
  }
  await hashing;
  await usingMaster(cfg.master, async (master) => {
    const deliver = (result: ShownCreate, keyId: number) => deliverKey(cfg, master, result, keyId);
    const signals = guardKey(out, deliver);
    let result: CreateUserResult;
    try {
      result = await createUser({ master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir, lockTimeoutMs: cfg.lockTimeoutMs }, input, signals.hooks);
    } catch (e) {
      signals.dispose();
      throw e;
    }
    // A second signal is showing the key already, and exits once it has: not shown twice.
    if (signals.leaving()) return new Promise<never>(() => undefined);
    // Still guarded while the key is shown and recorded as shown: a signal's default action there
    // would kill the process with the key unshown, or shown and still marked undelivered (a rerun
    // meant to finish the create would then revoke the key the operator has).
    signals.delivering();
    try {
      const { seedError, keyId, ...shown } = result;
      // Exit 1 for a failed seed, whatever stopped it (SPEC): the user and its key exist, so this is
      // not exit 3's "nothing half-done". 70 only for a bug. The key is shown either way.
      if (seedError !== undefined) process.exitCode = isAcm2Error(seedError) ? EXIT.findings : EXIT.internal;
      else if (result.seed.status === 'failed') process.exitCode = EXIT.findings;
      if (!(await deliver(shown, keyId))) process.exitCode = EXIT.unavailable;
    } finally {
      signals.dispose();
    }
  }, { pairWith: { dataDir: cfg.dataDir, write: true, notice: out.warn } });
}

/**
 * Show the result (the key in it) once, then record in the master that the key was delivered.
 * Delivered means stdout took the bytes: the write's callback came back without an error, so the
 * terminal, file or pipe holds them (what a reader does with them after is beyond any tool). A
 * write that fails (the terminal or the reader gone: EPIPE, EIO) leaves the key marked undelivered,
 * and the same create run again revokes it and shows a new one. False then (exit 3: run it again).
 * A kill between the write and the mark errs the same safe way: the key shown is replaced by a
 * rerun, never left beside a second usable one.
 */
async function deliverKey(cfg: Config, master: MasterDb, result: ShownCreate, keyId: number): Promise<boolean> {
  const doc = { user: result.user, apiKey: result.apiKey, resumed: result.resumed, seed: result.seed };
  // --json: the key is inside the one document; --quiet keeps the rest quiet, not the key.
  const text = cfg.json ? `${jsonText(doc, 2)}\n` : cfg.quiet ? `${result.apiKey}\n` : `${renderCreate(visibleDeep(result))}\n`;
  // Another run of this create (on a host that could not see this one) revoked this key and
  // issued its own meanwhile: showing this one would hand out a key ACM2 refuses. Said instead,
  // as this command's one document. Unknown (the master not answering): shown, as before.
  const marked = await master.undeliveredKey(result.user.id).catch(() => undefined);
  const replaced = marked !== undefined && marked.apiKeyId !== keyId;
  if (replaced) {
    const message = `user ${result.user.id}'s API key was replaced by another acm2 user create of the same user while this one ran, and that run shows the new key: the key this run made is revoked, so it is not shown`;
    if (cfg.json) await writeStdout(`${jsonText({ error: { code: 'key_reissued', message } })}\n`).catch(() => undefined);
    else process.stderr.write(`acm2: ${message}\n`);
    return false;
  }
  try {
    await writeStdout(text);
  } catch (e) {
    process.stderr.write(
      `acm2: the API key of user ${result.user.id} could not be written to stdout (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}), so nobody has it: ` +
        `run this same acm2 user create again to revoke it and get a new one\n`,
    );
    return false;
  }
  try {
    await master.keyDelivered(keyId);
  } catch (e) {
    // Shown, but not recorded: harmless unless the create is run again, which would replace it.
    process.stderr.write(
      `acm2: user ${result.user.id}'s API key was shown, but the master could not record that (${visible((e as Error).message)}): ` +
        `do not run this create again, or it revokes that key and shows a new one\n`,
    );
  }
  return true;
}

/**
 * stdout is /dev/null: closed when acm2 started (`>&-`, a daemon's or cron's missing stdout, which
 * Node opens on /dev/null) or sent there. Every write to it succeeds, so a key written there would
 * count as delivered, and the same create run again could not replace it (duplicate_email).
 */
function stdoutGoesNowhere(): boolean {
  try {
    const out = fstatSync(1);
    return out.isCharacterDevice() && out.rdev === statSync('/dev/null').rdev;
  } catch {
    return false;
  }
}

/** Resolves once stdout has taken text (its write callback), rejects if it cannot. */
function writeStdout(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = process.stdout;
    if (out.destroyed || !out.writable) {
      reject(Object.assign(new Error('stdout is closed'), { code: 'ERR_STREAM_DESTROYED' }));
      return;
    }
    out.write(text, (e) => (e ? reject(e) : resolve()));
  });
}

/**
 * Ctrl-C or SIGTERM while `user create` runs. Before the user is written: nothing is made (exit 1).
 * While the master writes it (its COMMIT may land even if the process dies), and once it exists,
 * its API key, shown only once, must not be lost with the process: the first signal lets the seed
 * finish and the key be shown as usual; a second one shows the key as soon as the user exists,
 * with the seed as interrupted (it is crash-safe, and `acm2 user seed <id>` finishes it), and exits.
 * A third one while that key is being shown exits at once (the key then counts as undelivered:
 * the same create run again replaces it). While the command shows the key itself (a slow reader,
 * a master slow to record it), a signal waits for that; another one exits at once.
 */
function guardKey(
  out: Reporter,
  deliver: (r: ShownCreate, keyId: number) => Promise<boolean>,
): { hooks: CreateHooks; dispose(): void; leaving(): boolean; delivering(): void } {
  const ac = new AbortController();
  let creating = false;
  // Set once the key is being shown by the command itself: signals then only wait for that.
  let delivering = false;
  let signalsWhileDelivering = 0;
  let made: Parameters<NonNullable<CreateHooks['onCreated']>>[0] | undefined;
  let leaveWith: NodeJS.Signals | undefined;
  let leaving = false;
  const leave = (sig: NodeJS.Signals) => {
    const code = sig === 'SIGINT' ? 130 : 143;
    if (leaving) process.exit(code);
    leaving = true;
    const m = made!;
    void deliver(
      {
        user: { ...m.user, seedStatus: 'failed' },
        apiKey: m.apiKey,
        resumed: m.resumed,
        seed: { status: 'failed', seedVersion: m.user.seedVersion, error: `interrupted (${sig}) before the seed finished; it is safe to run again`, jobId: m.jobId, retry: `acm2 user seed ${m.user.id}` },
        ...(m.revokedKeyPrefix === undefined ? {} : { revokedKeyPrefix: m.revokedKeyPrefix }),
      },
      m.keyId,
    )
      .catch(() => undefined)
      .finally(() => process.exit(code));
  };
  const handler = (sig: NodeJS.Signals) => {
    if (delivering) {
      if (signalsWhileDelivering++ > 0) process.exit(sig === 'SIGINT' ? 130 : 143);
      out.log(`\nInterrupted (${sig}): showing the API key and recording it as shown, then stopping (${sig === 'SIGINT' ? 'Ctrl-C' : sig} again to stop at once)…`);
      return;
    }
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
    // Not while the key is being shown and the process is about to exit: a further signal must still reach leave.
    if (leaving) return;
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
  return { hooks, dispose, leaving: () => leaving, delivering: () => void (delivering = true) };
}

// `acm2 user seed <user>` or `acm2 user seed --pending`: seed one user, or drain the queue.

import { availableParallelism } from 'node:os';
import type { CommandCall } from './program.js';
import { concurrencyOption, context, intOption, type Ctx } from './context.js';
import { onInterrupt } from './interrupt.js';
import { warmSeedWorkers, type WarmWorkers } from '../core/warm-workers.js';
import { EXIT, UsageError } from '../errors.js';
import type { MasterDb } from '../master/types.js';
import { visibleDeep } from '../ui/text.js';
import { silentProgress } from '../ui/reporter.js';

// The seeding modules (the master, the seed, the pool, the renderings) are imported where they
// are used, not above: a drain starts its worker threads before this thread loads them (warm-workers).
const seeding = () =>
  Promise.all([import('../master/factory.js'), import('../core/users.js'), import('../seed/package.js'), import('../core/seed-pool.js'), import('../ui/users.js')]).then(
    ([factory, users, pkg, pool, ui]) => ({ ...factory, ...users, ...pkg, ...pool, ...ui }),
  );

export async function run({ args, opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  if (opts.pending) {
    if (args.length > 0) throw new UsageError('give either a user or --pending, not both');
    if (opts.force) throw new UsageError('--force applies to one user, not to --pending');
    if (opts.seedVersion !== undefined) throw new UsageError('--seed-version applies to one user, not to --pending: each queued job carries its own version');
    const concurrency = concurrencyOption(opts) ?? availableParallelism();
    const limit = intOption(opts, 'limit');
    // The other drainers' threads start now, while this one opens and checks the master.
    const warm = concurrency > 1 ? warmSeedWorkers(concurrency - 1) : undefined;
    try {
      await drainPending(cfg, out, opts, concurrency, limit, warm);
    } finally {
      await warm?.dispose();
    }
    return;
  }
  if (args.length !== 1) throw new UsageError('name one user (id or email), or use --pending');
  const { checkUserRef, loadPackage, resolveVersion, usingMaster, seedOneUser, renderSeed } = await seeding();
  const drainOnly = (['limit', 'watch', 'concurrency'] as const).filter((k) => opts[k] !== undefined && opts[k] !== false);
  if (drainOnly.length > 0) throw new UsageError(`${drainOnly.map((k) => `--${k}`).join(', ')} ${drainOnly.length > 1 ? 'apply' : 'applies'} to --pending, not to one user`);
  checkUserRef(args[0]!);
  loadPackage(cfg.seedsDir, resolveVersion(cfg.seedsDir, cfg.seedVersion));
  // As for a batch, the first Ctrl-C or SIGTERM lets what is in flight finish: one user's seed,
  // which then closes its job. Dying at once would leave the job running for whoever takes it
  // over next, an unattended `user seed --pending` included, which would then do an interrupted
  // --force later, out of the operator's sight. Until the seed holds the user's lock and makes
  // its job (the wait for another seeder's lock included), nothing is in flight: a signal stops at
  // once, as a second one always does (crash-safe).
  let committing = false;
  const interrupt = onInterrupt(out, `finishing the seed of user ${args[0]!} and closing its job`, () => !committing);
  const r = await usingMaster(cfg.master, (master) =>
    seedOneUser({ master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir, lockTimeoutMs: cfg.lockTimeoutMs, onCommitting: () => (committing = true) }, args[0]!, {
      seedVersion: cfg.seedVersion,
      force: Boolean(opts.force),
    }),
    { create: false, pairWith: { dataDir: cfg.dataDir, write: true, notice: out.warn } },
  ).finally(() => interrupt.dispose());
  out.result({ user: { id: r.user.id, username: r.user.username, email: r.user.email }, seed: r.seed }, () => renderSeed(visibleDeep(r.seed), r.user.id));
  if (r.seed.status === 'failed') process.exitCode = EXIT.findings;
}

/** Drain the seed queue with `concurrency` drainers: this thread and the warm worker threads. */
async function drainPending(cfg: Ctx['cfg'], out: Ctx['out'], opts: CommandCall['opts'], concurrency: number, limit: number | undefined, warm: WarmWorkers | undefined): Promise<void> {
  const { openMaster, usingMaster, runSeedPool, renderDrain } = await seeding();
  // Each drainer opens its own connection (and would set a master up): check the master is one
  // first. The drainers apply the migrations; this check need not.
  // The data dir must be this master's (paired on first use) before any job is claimed.
  const checked = await openMaster(cfg.master, { create: false, pairWith: { dataDir: cfg.dataDir, write: true, notice: out.warn } });
  const progress = out.progress();
  // How many jobs this drain is likely to take, for the progress line's ETA (SPEC §1): the
  // ones due now, up to --limit. A --watch worker has no end to count down to, and a drain
  // that shows no progress (cron, a pipe) need not ask.
  let due: number | undefined;
  try {
    if (!opts.watch && progress !== silentProgress) due = await dueJobs(checked);
  } finally {
    await checked.close();
  }
  const interrupt = onInterrupt(out, 'claiming no more jobs and finishing the ones in flight');
  progress.start('seeding', due === undefined ? undefined : Math.min(due, limit ?? due));
  const r = await runSeedPool({
    master: cfg.master,
    dataDir: cfg.dataDir,
    seedsDir: cfg.seedsDir,
    lockTimeoutMs: cfg.lockTimeoutMs,
    concurrency,
    limit,
    watch: Boolean(opts.watch),
    signal: interrupt.signal,
    onProgress: (n) => progress.tick(n),
    warm,
  }).finally(() => {
    progress.done();
    interrupt.dispose();
  });
  // Jobs waiting for a retry's backoff were not claimed: say so, or an empty drain looks like an empty queue.
  const notDue = await usingMaster(cfg.master, (m) => m.pendingNotDue(), { create: false, migrate: false }).catch(() => undefined);
  const shown = { ...r, notDue: notDue ? { count: notDue.count, nextAttemptAt: notDue.nextAttemptAt === null ? null : new Date(notDue.nextAttemptAt).toISOString() } : null };
  out.result(shown, () => renderDrain(visibleDeep(shown)));
  // Interrupted before the queue was drained is a batch not finished (as for backfill); a
  // --watch worker is meant to be stopped that way.
  if (r.failed > 0 || r.retrying > 0 || (r.interrupted && !opts.watch)) process.exitCode = EXIT.findings;
}

/** Pending jobs due now (an estimate: others may claim some, or add more, meanwhile); undefined if the master cannot say. */
async function dueJobs(master: MasterDb): Promise<number | undefined> {
  try {
    return Math.max(0, (await master.countJobs('pending')) - (await master.pendingNotDue()).count);
  } catch {
    return undefined;
  }
}

// `acm2 backfill`: parse flags, run the core over the master, render; SIGINT/SIGTERM stop cleanly.

import { existsSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import type { CommandCall } from './program.js';
import { onInterrupt } from './interrupt.js';
import { concurrencyOption, context, intOption, shardOption, type Ctx } from './context.js';
import { folderOverlap, parseUserId } from '../userdb/paths.js';
import type { BackfillOptions, BackfillPlanners } from '../core/backfill.js';
import { warmPlannerWorkers } from '../core/warm-workers.js';
import { EXIT, UsageError } from '../errors.js';
import { visibleDeep } from '../ui/text.js';

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const dryRun = Boolean(opts.dryRun);
  const legacyLogsDir = opts.legacyLogs === undefined ? undefined : path.resolve(String(opts.legacyLogs));
  if (legacyLogsDir && !(existsSync(legacyLogsDir) && statSync(legacyLogsDir).isDirectory())) throw new UsageError(`--legacy-logs '${legacyLogsDir}' is not a folder`);
  if (legacyLogsDir) refuseOverlap(legacyLogsDir, { 'the data dir': cfg.dataDir, 'the seeds dir': cfg.seedsDir });
  // As verify: a named user outside the shard would be skipped without a word.
  if (opts.shard !== undefined && (opts.user as string[] | undefined)?.length) throw new UsageError('give either --user or --shard, not both');
  const options: BackfillOptions = {
    dryRun,
    userIds: (opts.user as string[] | undefined)?.map(parseUserId),
    limit: intOption(opts, 'limit'),
    batchSize: intOption(opts, 'batchSize'),
    concurrency: concurrencyOption(opts),
    shard: shardOption(opts.shard),
    resume: Boolean(opts.resume),
    maxErrors: intOption(opts, 'maxErrors'),
    legacyLogsDir,
  };
  // Planning threads (--concurrency > 1) boot while this thread loads backfill's modules, checks
  // the package and opens the master (warm-workers): those modules are imported here, not above.
  const warm = (options.concurrency ?? 1) > 1 ? warmPlannerWorkers(options.concurrency!) : undefined;
  try {
    const { startPlanners } = await import('../core/backfill.js');
    const { versionOrUndefined } = await import('../seed/package.js');
    // With the version the package check below settles on (a bad one is its error to report).
    const planners = startPlanners({ dataDir: cfg.dataDir, seedVersion: versionOrUndefined(cfg.seedsDir, cfg.seedVersion) }, options.concurrency, warm);
    try {
      await backfill(cfg, out, options, planners);
    } finally {
      await planners.close();
    }
  } finally {
    await warm?.dispose();
  }
}

async function backfill(cfg: Ctx['cfg'], out: Ctx['out'], options: BackfillOptions, planners: BackfillPlanners): Promise<void> {
  const [{ openMaster }, { loadPackage, resolveVersion }, { runBackfill }, { backfillJson, renderBackfill }] = await Promise.all([
    import('../master/factory.js'),
    import('../seed/package.js'),
    import('../core/backfill.js'),
    import('../ui/backfill.js'),
  ]);
  const dryRun = Boolean(options.dryRun);
  // The package is checked before anything is written (a missing user is seeded with it).
  const pkg = loadPackage(cfg.seedsDir, resolveVersion(cfg.seedsDir, cfg.seedVersion));

  // Backfill works on the users a master has: a missing embedded master is a wrong --data-dir.
  // A dry run writes nothing, the master included: it does not apply the tool's migrations
  // either (so it needs a master that a real run has set up); a real run does.
  const master = await openMaster(cfg.master, { migrate: !dryRun, create: false, pairWith: { dataDir: cfg.dataDir, write: !dryRun, notice: out.warn } });
  const interrupt = onInterrupt(out, 'finishing the users in flight and saving progress');
  const progress = out.progress();
  try {
    const r = await runBackfill({ master, dataDir: cfg.dataDir, pkg, progress, shouldStop: () => interrupt.signal.aborted, planners }, options).catch((e: unknown) => {
      if (dryRun && /no such table|doesn't exist/i.test(String((e as Error).message))) throw notSetUp(master.display, e);
      throw e;
    });
    out.result(backfillJson(r), () => renderBackfill(visibleDeep(r), out.color));
    // A plan is not a batch: a dry run exits 0 even when it predicts failures (they are listed).
    // Legacy runs left for want of their owner's lock are unfinished work too (run again), and so
    // are runs refused for what is in the way in their owner's folder (an operator must clear it).
    // Runs nobody owns, or two users hold, are not this batch's items: reported, exit 0.
    const legacyLeft = (r.legacyLogs?.busy.length ?? 0) + (r.legacyLogs?.refused.length ?? 0);
    if (r.stopped || (!r.dryRun && (r.failures.length > 0 || legacyLeft > 0))) process.exitCode = EXIT.findings;
    // The environment stopped it, not the data: exit 3, as for any full disk.
    if (r.stopped === 'disk_full') process.exitCode = EXIT.unavailable;
  } finally {
    interrupt.dispose();
    await master.close().catch(() => undefined);
  }
}

function notSetUp(display: string, cause?: unknown): UsageError {
  return new UsageError(`the master at ${display} is not set up yet, so there is nothing to plan (a run without --dry-run sets it up)`, 'master_not_ready', { cause });
}

/**
 * ACM2's old logs folder is a folder of its own: one inside the data dir (a user's runs/, say)
 * or the seeds dir, or one holding either, would have its files moved out of a user's tree or
 * a package into some run's logs/.
 */
function refuseOverlap(legacy: string, others: Record<string, string>): void {
  const real = realpathSync(legacy);
  for (const [what, dir] of Object.entries(others)) {
    if (!existsSync(dir)) continue;
    const how = folderOverlap(real, realpathSync(dir));
    // The same folder reads as inside it, as it always has.
    if (how) throw new UsageError(`--legacy-logs '${legacy}' ${how === 'holds' ? 'holds' : 'is inside'} ${what} (${dir}): it must be ACM2's old logs folder, apart from both; nothing was moved`);
  }
}

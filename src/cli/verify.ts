// `acm2 verify`: parse flags, verify the users, print the result (and a JUnit file); exit 1 on problems.

import { accessSync, chmodSync, constants, readlinkSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { availableParallelism } from 'node:os';
import type { CommandCall } from './program.js';
import { concurrencyOption, context, shardOption } from './context.js';
import { warmVerifyWorkers } from '../core/warm-workers.js';
import { parseUserId } from '../userdb/paths.js';
import { classifyFsError, EXIT, UsageError } from '../errors.js';
import { visibleDeep } from '../ui/text.js';

/** Checker threads started early, at most (see run). */
const WARM_VERIFY_MAX = 4;

export async function run({ opts }: CommandCall): Promise<void> {
  const { cfg, out } = context(opts);
  const users = ((opts.user as string[] | undefined) ?? []).map(parseUserId);
  const shard = shardOption(opts.shard);
  // Together they can select nobody, and "0 users checked, ok" would pass a CI gate.
  if (shard && users.length > 0) throw new UsageError('give either --user or --shard, not both');
  const concurrency = concurrencyOption(opts) ?? availableParallelism();
  const junit = opts.junit === undefined ? undefined : String(opts.junit);
  if (junit === '') throw new UsageError('--junit needs a file name');
  // Checked before the users are, not after a fleet-wide run that would then be lost.
  if (junit) checkWritable(junit);

  // The first checkers' threads start before this thread loads verify's modules and opens the
  // master (warm-workers); the modules are imported here, not above, for that. At most a few: the
  // pool starts the others only as batches come (a small fleet on a big host needs one or two),
  // and a thread booted for nothing costs tens of MiB.
  const warm = concurrency > 1 ? warmVerifyWorkers(Math.min(concurrency, users.length > 0 ? users.length : concurrency, WARM_VERIFY_MAX)) : undefined;
  let r;
  try {
    const [{ usingMaster }, { verifyUsers }] = await Promise.all([import('../master/factory.js'), import('../core/verify.js')]);
    r = await usingMaster(
      cfg.master,
      (master) =>
        verifyUsers({ master, dataDir: cfg.dataDir, seedsDir: cfg.seedsDir }, { users: users.length > 0 ? users : undefined, deep: Boolean(opts.deep), shard, concurrency, warm }, out.progress()),
      { create: false, readOnly: true, pairWith: { dataDir: cfg.dataDir, write: false, read: true, notice: out.warn } },
    );
  } finally {
    await warm?.dispose();
  }
  const { renderJunit, renderVerify } = await import('../ui/verify.js');
  if (junit) {
    try {
      writeReport(junit, renderJunit(r, { orphanScan: users.length === 0 }));
    } catch (e) {
      throw classifyFsError(e, junit) ?? new UsageError(`cannot write the JUnit report ${junit} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, 'usage', { cause: e });
    }
  }
  out.result(r, () => renderVerify(visibleDeep(r), { color: out.color }));
  // Not FindingsError: with --json that would print a second document after the result.
  if (!r.ok) process.exitCode = EXIT.findings;
}

/**
 * Written whole or not at all: a new file beside the report, renamed over it. A write cut short
 * (a full disk) leaves the earlier report as it was, not an empty or half one a CI job would read.
 */
function writeReport(file: string, text: string): void {
  const target = reportTarget(file);
  let mode: number | undefined;
  try {
    mode = statSync(target).mode & 0o7777;
  } catch {
    /* a new report */
  }
  // A name of our own, not the report's with more added: a report name near the file system's
  // 255-byte limit is the user's to choose, and its temp file must not be the one refused.
  const tmp = path.join(path.dirname(target), `.acm2-junit.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    writeFileSync(tmp, text, { flag: 'wx' });
    if (mode !== undefined) chmodSync(tmp, mode);
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Where the report really goes: through a symlink to it, even one whose file is not there yet, as
 * writing it did. The new report is made in that file's folder and renamed over it, never over the link.
 */
function reportTarget(file: string): string {
  let p = path.resolve(file);
  for (let hops = 0; hops < 40; hops++) {
    let link: string;
    try {
      link = readlinkSync(p);
    } catch {
      break; // not a symlink, or not there: the report itself
    }
    p = path.resolve(path.dirname(p), link);
  }
  try {
    return path.join(realpathSync(path.dirname(p)), path.basename(p));
  } catch {
    return p;
  }
}

/** The report file can be written: its folder exists and is writable, and it is not a folder itself. */
function checkWritable(file: string): void {
  // The folder the report is written in (beside its real file): a symlink's own folder is not it.
  const dir = path.dirname(reportTarget(file));
  let reason: string | undefined;
  try {
    if (!statSync(dir).isDirectory()) reason = `${dir} is not a folder`;
    else accessSync(dir, constants.W_OK);
  } catch (e) {
    reason = (e as NodeJS.ErrnoException).code === 'ENOENT' ? `folder ${dir} does not exist` : `folder ${dir} is not writable`;
  }
  if (!reason) {
    try {
      const st = statSync(file);
      if (!st.isFile()) reason = 'it is not a regular file';
      else accessSync(file, constants.W_OK);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') reason = 'it is not writable';
    }
  }
  if (reason) throw new UsageError(`cannot write the JUnit report ${file}: ${reason}`);
}

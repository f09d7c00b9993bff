// Human renderings of user results; JSON output is the result objects themselves.

import path from 'node:path';
import { makeTable } from './table.js';
import { color } from './color.js';
import type { CreateUserResult, SeedReport, UserStatus } from '../core/users.js';
import type { DrainResult } from '../core/users.js';
import { formatBytes } from './reporter.js';
import { fitStart, visible } from './text.js';
import { deadHere } from '../core/worker-name.js';

export function renderSeed(seed: SeedReport, userId: number): string {
  const closed = (seed.closedForceJobs ?? []).map((j) =>
    j.status === 'done'
      ? `Job #${j.id}, of an earlier acm2 user seed ${userId} --force whose process is gone, had finished its work: it is closed as done.`
      : color.yellow(`Job #${j.id} is closed as failed: ${j.error ?? 'its --force did not run'}`),
  );
  const line = renderSeedLine(seed, userId);
  return closed.length > 0 ? [...closed, line].join('\n') : line;
}

function renderSeedLine(seed: SeedReport, userId: number): string {
  if (seed.status === 'pending') return `Seed job ${seed.jobId ?? ''} queued for ${seed.seedVersion}: run 'acm2 user seed --pending' to process it.`;
  if (seed.status === 'failed') return color.red(`Seeding user ${userId} with ${seed.seedVersion} failed: ${seed.error}${seed.retry ? `\nRetry with: ${seed.retry}` : ''}`);
  if (seed.outcome === 'already_ready') {
    const again = seed.readyAgain;
    if (!again) return `User ${userId} is already ready with ${seed.seedVersion}; nothing to do.`;
    const was = again.from === null ? 'its user_meta row was missing and is written back' : `its user_meta named ${again.from} and now names ${seed.seedVersion}`;
    return `User ${userId} is ready with ${seed.seedVersion} again: ${was}; its ${seed.seedVersion} rows and files were in place from an earlier seed, so none was rewritten (--force restores them to the package).`;
  }
  const verb = seed.outcome === 'restored' ? 'Restored' : 'Seeded';
  const line = `${verb} user ${userId} with ${seed.seedVersion}: ${seed.rows} rows, ${seed.files} files (${formatBytes(seed.bytes ?? 0)}) in ${seed.durationMs} ms — ${color.green('ready')}`;
  return seed.backup ? `${line}\nWhat --force overwrote (the DB, and the seeded files that differed) is kept in ${seed.backup}` : line;
}

/** What `user create` shows: the result without what only the process needs (see CreateUserResult). */
export type ShownCreate = Omit<CreateUserResult, 'seedError' | 'keyId'>;

export function renderCreate(r: ShownCreate): string {
  return [
    r.resumed
      ? `User ${r.user.id} (${r.user.username}, ${r.user.email}) was made by an earlier run of this create that stopped before it showed the API key: that key${r.revokedKeyPrefix ? ` (${r.revokedKeyPrefix}…)` : ''} is revoked and a new one issued.`
      : `Created user ${r.user.id} (${r.user.username}, ${r.user.email}).`,
    `API key (shown once, store it now): ${color.bold(r.apiKey)}`,
    renderSeed(r.seed, r.user.id),
  ].join('\n');
}

const STATUS_COLOR: Record<string, (s: string) => string> = {
  ready: color.green,
  pending: color.yellow,
  failed: color.red,
  missing: color.gray,
};

export function renderStatus(s: UserStatus): string {
  const rows: Array<[string, string]> = [
    ['user', `${s.id} (${s.username}, ${s.email})`],
    ['status', (STATUS_COLOR[s.status] ?? String)(s.status)],
    ['seed version', s.seedVersion ?? '-'],
    ['seeded at', s.seededAt ?? '-'],
    ['db', `${s.db.path}${s.db.present ? '' : ' (missing)'}${s.db.error ? ` (${s.db.error})` : ''}${s.db.newerMigrations ? ` (${newerNote(s.db.newerMigrations)})` : ''}`],
    // Until ready, the DB's seeded-file list is what the seed means to write, not what is there.
    ['files', filesLine(s)],
    ['job', s.job ? jobLine(s) : '-'],
  ];
  // A failed job of a user still ready (a --force that failed before changing anything): the user's
  // last error is blank, and the job's is what the operator needs to see.
  if (s.job?.status === 'failed' && s.job.lastError && !s.lastError) rows.push(['job error', color.red(s.job.lastError)]);
  // Kept for good (the operator's way back): said with what they take, so old ones can be removed by hand.
  if (s.backups?.count) rows.push(['backups', `${s.backups.dir} (${s.backups.count} kept, ${formatBytes(s.backups.bytes)}; acm2 never removes them: delete old ones yourself)`]);
  if (s.lastError) rows.push(['last error', color.red(s.lastError)]);
  return rows.map(([k, v]) => `${k.padEnd(13)} ${v}`).join('\n');
}

/** A DB a newer acm2 migrated: shown as it is read, and what this host's acm2 needs to work on it. */
function newerNote(names: string[]): string {
  return `migrated by a newer acm2 (${names.join(', ')}): upgrade acm2 here to seed or verify it`;
}

/** The job, its attempts worded as what comes next: an open job may be tried again, a closed one is not. */
function jobLine(s: UserStatus): string {
  const j = s.job!;
  if (j.status === 'done' || j.status === 'failed') {
    return `#${j.id} ${j.status} after ${j.attempts} attempt${j.attempts === 1 ? '' : 's'}${j.status === 'failed' ? ': closed, not retried' : ''}`;
  }
  return `#${j.id} ${j.status}, attempt ${j.attempts}/${j.maxAttempts}${jobDetail(s)}`;
}

/** What the seeded-file list says; without a DB there is none to read (the folder may still hold files). */
function filesLine(s: UserStatus): string {
  if (s.rootProblem) {
    // The DB's list says what should be there, not what is: none of it can be under a plain file.
    const what = s.status === 'ready' ? 'seeded files the DB lists' : 'files listed by the unfinished seed';
    const listed = s.db.error === undefined && s.files.count > 0 ? `, so none of the ${s.files.count} ${what} (${formatBytes(s.files.bytes)}) can be there` : '';
    return `${s.rootProblem}${listed}: move it aside, then run: acm2 user seed ${s.id}${s.status === 'ready' ? ' --force' : ''}`;
  }
  if (s.db.busy) return `${s.root} (the DB was busy, so its list of seeded files was not read just now)`;
  if (!s.db.present) return `${s.root} (no DB, so no list of seeded files${s.status === 'missing' ? `; acm2 user seed ${s.id} seeds the user` : ''})`;
  if (s.db.error !== undefined) return `${s.root} (the DB cannot be read, so its list of seeded files neither)`;
  if (s.db.seedStatus === null) return `${s.root} (the DB has no user_meta of this user, so no list of seeded files${s.status === 'missing' ? `; acm2 user seed ${s.id} seeds the user` : ''})`;
  const ready = s.status === 'ready';
  // byVersion[0] is user_meta's version.
  if (s.files.byVersion.length <= 1) {
    return `${s.root} (${s.files.count} ${ready ? 'seeded files' : 'files listed by the unfinished seed'}, ${formatBytes(s.files.bytes)})`;
  }
  // A user that moved on to another version keeps the earlier one's copy: each is counted.
  const each = s.files.byVersion.map((v) => `${v.count} of ${v.version}${!ready && v.version === s.seedVersion ? ' listed by the unfinished seed' : ''} (${formatBytes(v.bytes)})`);
  return `${s.root} (${s.files.count} ${ready ? 'seeded files' : 'files'}, ${formatBytes(s.files.bytes)}: ${each.join(', ')})`;
}

/** Who holds a running job and until when (a dead worker's hold lasts that long), or when a pending one is due. */
function jobDetail(s: UserStatus): string {
  const j = s.job!;
  if (j.status === 'running' && j.lockedUntil) {
    // A holder of this host and pid space can be looked up: one that is gone is said to be.
    if (j.lockedBy && deadHere(j.lockedBy)) return ` (held by ${j.lockedBy}, a process of this host that is gone: acm2 user seed ${s.id} or the next acm2 user seed --pending takes it over now)`;
    return ` (held by ${j.lockedBy ?? '?'} until ${j.lockedUntil}; if that process is gone, acm2 user seed ${s.id} takes it over now)`;
  }
  if (j.status === 'pending' && j.nextAttemptAt) return Date.parse(j.nextAttemptAt) > Date.now() ? ` (next try at ${j.nextAttemptAt}; acm2 user seed ${s.id} tries now)` : ' (due now)';
  return '';
}

/**
 * `user list`'s table. Rows come with visible() applied; `dataDir` (absolute) is cut from the
 * paths in the last-error column, so its 60 cells show which of the user's files is at fault
 * (`user_7/runs/…`) rather than the data dir every path there starts with.
 */
export function statusTable(color: boolean, dataDir: string): { push(s: UserStatus): void; toString(): string } {
  const t = makeTable(['id', 'username', 'email', 'status', 'version', 'seeded at', 'files', 'last error'], color);
  const dirPrefix = dataDir === path.parse(dataDir).root ? null : pathStarting(visible(dataDir + path.sep));
  return {
    push: (s) =>
      t.push([s.id, s.username, s.email, (STATUS_COLOR[s.status] ?? String)(s.status), s.seedVersion ?? '', s.seededAt ?? '', s.db.busy ? '?' : s.files.count, fitStart(dirPrefix ? listNote(s).replace(dirPrefix, '') : listNote(s), 60)]),
    toString: () => t.toString(),
  };
}

/** `dir` where a path starts (the text's start, or after a space, a quote, a bracket, `:` or `=`), never inside another path. */
function pathStarting(dir: string): RegExp {
  return new RegExp(`(?<=^|[\\s'"(\\[:=])${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'g');
}

/** `user list`'s last-error column: the last error, else why the row says less than it would. */
function listNote(s: UserStatus): string {
  if (s.lastError) return s.lastError;
  // A ready user whose last job failed (a --force that changed nothing): the job's reason.
  if (s.job?.status === 'failed' && s.job.lastError) return `job #${s.job.id} failed: ${s.job.lastError}`;
  if (s.db.busy) return 'DB busy (locked by another process): not read just now';
  if (s.rootProblem) return s.rootProblem;
  return s.db.newerMigrations ? newerNote(s.db.newerMigrations) : '';
}

export function renderDrain(r: DrainResult & { interrupted?: boolean; notDue?: { count: number; nextAttemptAt: string | null } | null }): string {
  const lines = [`Seed queue: ${r.done} seeded, ${r.retrying} to retry, ${r.failed} failed, ${r.skipped} skipped (user busy).`];
  for (const f of r.failures) lines.push(color.red(`  user ${f.userId} (job ${f.jobId}): ${f.error}${f.final ? ' [job failed: not retried]' : ''}`));
  if (r.notDue && r.notDue.count > 0) {
    lines.push(`${r.notDue.count} job${r.notDue.count === 1 ? '' : 's'} waiting for a retry, the first due at ${r.notDue.nextAttemptAt}: a later drain takes ${r.notDue.count === 1 ? 'it' : 'them'}, or acm2 user seed <id> runs one now.`);
  }
  if (r.interrupted) lines.push('Stopped by a signal: jobs not claimed stay queued for the next `acm2 user seed --pending`.');
  return lines.join('\n');
}

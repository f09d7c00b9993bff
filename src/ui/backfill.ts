// Human rendering of a backfill (plan or result) and its JSON document; no decisions here.

import path from 'node:path';
import { makeTable } from './table.js';
import { color as paint } from './color.js';
import { BACKFILL_ACTIONS, type BackfillAction, type BackfillResult } from '../core/backfill.js';
import type { LegacyLogsResult } from '../core/legacy-logs.js';
import { formatBytes } from './reporter.js';

const LABEL: Record<BackfillAction, string> = {
  seed: 'seed (no DB, or an unfinished seed)',
  seed_beside: "seed beside the user's own rows",
  meta_legacy: "user_meta ready, version 'legacy'",
  adopt: 'adopt an ACM2-created DB',
  migrate: 'migrate',
  permissions: 'permissions tightened (0700/0600)',
  ok: 'nothing to do',
  fail: 'failed',
};

const COLOR: Partial<Record<BackfillAction, (s: string) => string>> = { ok: paint.gray, fail: paint.red };

/** The `--json` document: SPEC's keys first, then the details. */
export function backfillJson(r: BackfillResult): unknown {
  return {
    dryRun: r.dryRun,
    counts: r.counts,
    users: r.users.map((u) => ({
      id: u.id,
      action: u.action,
      outcome: u.outcome,
      ...(u.reason !== undefined ? { reason: u.reason } : {}),
      ...(u.code !== undefined ? { code: u.code } : {}),
      steps: u.steps,
      ...(u.backup ? { backup: u.backup } : {}),
    })),
    usersOmitted: r.usersOmitted,
    readyWithOtherVersion: r.readyWithOtherVersion,
    readyWithOtherVersionSeededBefore: r.readyWithOtherVersionSeededBefore,
    failures: r.failures,
    stopped: r.stopped ?? null,
    resumed: r.resumed,
    resumedFinished: r.resumedFinished ?? null,
    nothingToResume: r.nothingToResume ?? false,
    progress: { name: r.name, cursor: r.cursor },
    legacyLogs: r.legacyLogs ?? null,
    backups: r.backups ?? null,
    durationMs: r.durationMs,
    // Stopped by a full disk, it exits 3 like any error: a script that reads `error` whenever the
    // exit code is 2 or more finds it here too, beside the summary of what was done.
    ...(r.stopped === 'disk_full' ? { error: { code: 'disk_full', message: diskFullMessage(r) } } : {}),
  };
}

/**
 * Users left complete with another version, and what a seed of this one would do to them: add its
 * rows and files beside theirs, or, to those seeded with it before, only make them ready with it
 * again (seed-user's readyAgain).
 */
function otherVersionNote(r: BackfillResult): string {
  const n = r.readyWithOtherVersion;
  const before = r.readyWithOtherVersionSeededBefore;
  const v = r.seedVersion;
  const cmd = `acm2 user seed <id> --seed-version ${v}`;
  const base = `${n} of them ${n === 1 ? 'is' : 'are'} complete with another seed version than ${v} and ${n === 1 ? 'was' : 'were'} left so: backfill completes users, it does not move them between versions`;
  if (before === 0) return `${base} (${cmd} adds ${v}'s rows and files beside theirs).`;
  const again = (k: number) => `makes ${k === 1 ? 'it' : 'them'} ready with ${v} again, adding nothing`;
  if (before === n) return `${base}; ${n === 1 ? 'it was' : 'they were'} seeded with ${v} before, so ${cmd} ${again(n)}.`;
  return `${base} (${cmd} adds ${v}'s rows and files beside theirs); ${before} of them ${before === 1 ? 'was' : 'were'} seeded with ${v} before, and for ${before === 1 ? 'it' : 'those'} the same command only ${again(before)}.`;
}

function diskFullMessage(r: BackfillResult): string {
  const f = r.failures.find((x) => x.code === 'disk_full');
  return `the disk is full${f ? ` (user ${f.id}: ${f.reason})` : ''}; free space, then run 'acm2 backfill --resume'`;
}

export function renderBackfill(r: BackfillResult, color = false): string {
  const out: string[] = [];
  if (r.dryRun) out.push(paint.bold('Backfill plan (dry run: nothing was written)'));
  if (r.resumedFinished) {
    out.push(`The backfill '${r.name}' had already finished (at ${r.resumedFinished}): --resume went over only the users added since; run without --resume to go over every user again.`);
  } else if (r.resumed) out.push(`Resumed the backfill '${r.name}' where it stopped (counts include the earlier part).`);
  else if (r.nothingToResume) out.push(`No progress of a backfill '${r.name}' was saved, so --resume had nothing to resume: it went over every user from the start (check --shard and --user if you meant another one).`);

  if (r.dryRun && r.users.length > 0) {
    const t = makeTable(['user', 'action', 'steps / reason'], color);
    for (const u of r.users) t.push([u.id, (COLOR[u.action] ?? String)(u.action), u.reason ?? u.steps.join('\n')]);
    out.push(t.toString());
    if (r.usersOmitted > 0) out.push(`… and ${r.usersOmitted} more users (counts below cover them all; use --user to see one).`);
  }

  const summary = makeTable([r.dryRun ? 'planned' : 'outcome', 'users'], color);
  let total = 0;
  for (const a of BACKFILL_ACTIONS) {
    const n = r.counts[a] ?? 0;
    if (n === 0) continue;
    total += n;
    summary.push([(COLOR[a] ?? String)(`${a} — ${LABEL[a]}`), n]);
  }
  summary.push([paint.bold('total'), total]);
  out.push(summary.toString());
  if (r.readyWithOtherVersion > 0) out.push(otherVersionNote(r));

  if (r.failures.length > 0) {
    const n = `${r.failures.length} user${r.failures.length === 1 ? '' : 's'}`;
    out.push(paint.red(r.dryRun ? `${n} would fail (they would be skipped; nothing was tried):` : `${n} failed (skipped; everything else went on):`));
    for (const f of r.failures) out.push(paint.red(`  user ${f.id} [${f.code}]: ${f.reason}`));
  }
  if (r.backups) {
    const n = r.backups.kept;
    out.push(
      `${n === 1 ? 'The DB' : `Each of the ${n} DBs`} migrated was backed up first, in ${path.join(r.backups.dir, 'user_<id>')}/ (--json names each file); to undo, stop ACM2 for that user and copy it over user_<id>.db (removing user_<id>.db-wal and -shm). Backups are kept: remove old ones yourself.`,
    );
  }
  if (r.legacyLogs) out.push(renderLegacyLogs(r.legacyLogs));
  if (r.stopped === 'interrupted') out.push(paint.yellow(`Interrupted: users in flight finished and progress is saved. Run 'acm2 backfill --resume' to continue.`));
  if (r.stopped === 'disk_full') out.push(paint.red(`Stopped: the disk is full, so every next user would fail the same way. Free space, then run 'acm2 backfill --resume': it goes on from the user the full disk stopped.`));
  if (r.stopped === 'max_errors') out.push(paint.yellow(`Stopped early: --max-errors reached. Run 'acm2 backfill --resume' to go on with the users not reached yet; the failed ones are retried by a backfill without --resume, once their cause is fixed.`));
  out.push(`${r.dryRun ? 'Planned' : 'Done'} in ${(r.durationMs / 1000).toFixed(1)} s.`);
  return out.join('\n');
}

export function renderLegacyLogs(l: LegacyLogsResult): string {
  const verb = l.dryRun ? 'would move' : 'moved';
  const files = l.moved.reduce((a, m) => a + m.files, 0);
  const bytes = l.moved.reduce((a, m) => a + m.bytes, 0);
  const out = [`Legacy logs in ${l.dir}: ${l.runs} run folders; ${verb} ${l.moved.length} (${files} files, ${formatBytes(bytes)}) into their owners' runs/<id>/logs/.`];
  for (const c of l.clashes) out.push(paint.yellow(`  clash in user ${c.userId}: ${c.existing} already exists; the incoming file ${l.dryRun ? 'would be' : 'was'} kept as ${c.keptAs}`));
  if (l.unowned.length > 0) out.push(paint.yellow(`  ${l.unowned.length} run folder(s) no user owns, left in place: ${l.unowned.join(', ')}`));
  for (const a of l.ambiguous) out.push(paint.yellow(`  run ${a.runId} is held by users ${a.userIds.join(', ')}: left in place`));
  if (l.skipped.length > 0) out.push(paint.yellow(`  not plain files or folders (a symlinked run folder too), or files with another hard link, left in place: ${l.skipped.join(', ')}`));
  for (const r of l.refused) {
    const left = l.dryRun ? 'would be left' : 'were left';
    out.push(paint.yellow(`  run ${r.runId}: user ${r.userId}'s ${r.path} is a symlink or not a folder, so the run's logs ${left} in place; make it a plain folder (or move it away), then run the backfill again`));
  }
  for (const b of l.busy) out.push(paint.yellow(`  run ${b.runId}: user ${b.userId} is held by another process (a seed or another backfill), so its logs were left in place; run the backfill again`));
  if (l.uncheckedUsers.length > 0) out.push(paint.yellow(`  DBs of users ${l.uncheckedUsers.join(', ')} could not be read, so runs they own may show as unowned`));
  return out.join('\n');
}

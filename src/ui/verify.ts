// Renderings of a verify result for a person (summary table, problems grouped by user) and for
// CI dashboards (JUnit XML: one testcase per user). The --json document is the result itself.

import { color, plain, type Paint } from './color.js';
import Table from 'cli-table3';
import { PROBLEM_CODES, type Problem, type ProblemCode, type VerifyResult } from '../core/verify.js';
import { formatSeconds } from './reporter.js';
import { visible } from './text.js';

/** How many problems of each code, in the SPEC's order; codes that did not occur are left out. */
export function countByCode(r: VerifyResult): Array<[ProblemCode, number]> {
  const counts = new Map<ProblemCode, number>();
  for (const p of [...r.users.flatMap((u) => u.problems), ...r.orphans]) counts.set(p.code, (counts.get(p.code) ?? 0) + 1);
  return PROBLEM_CODES.filter((c) => counts.has(c)).map((c) => [c, counts.get(c)!]);
}

export function renderVerify(r: VerifyResult, opts: { color: boolean }): string {
  const c = opts.color ? color : plain;
  const summary = new Table({ head: ['users', ''], style: { head: [], border: [] } });
  summary.push(
    ['checked', String(r.checked)],
    ['ok', c.green(String(r.checked - r.failed))],
    ['failed', r.failed > 0 ? c.red(String(r.failed)) : '0'],
    ['orphans', r.orphans.length > 0 ? c.red(String(r.orphans.length)) : '0'],
  );
  const byCode = countByCode(r);
  const codes = new Table({ head: ['problem code', 'count'], style: { head: [], border: [] } });
  for (const [code, n] of byCode) codes.push([code, c.yellow(String(n))]);

  const lines: string[] = [summary.toString()];
  if (byCode.length > 0) lines.push(codes.toString());
  // Users only waiting for their seed (after a backfill stopped half way, say) are one line, not
  // three thousand: each has the same warning and the same remedy.
  const waiting = r.users.filter((u) => !u.ok && u.problems.every((p) => p.code === 'not_ready' && p.severity === 'warning'));
  const grouped = waiting.length > GROUP_AT ? new Set(waiting.map((u) => u.id)) : new Set<number>();
  for (const u of r.users) {
    if (u.ok || grouped.has(u.id)) continue;
    lines.push('', c.bold(`user ${u.id}: ${u.problems.length} problem${u.problems.length === 1 ? '' : 's'}`));
    for (const p of u.problems) lines.push(problemLine(p, c));
  }
  if (grouped.size > 0) {
    const ids = [...grouped];
    lines.push('', c.bold(`${ids.length} users not seeded yet (not_ready warnings only): ${ids.slice(0, 20).join(', ')}${ids.length > 20 ? `, … (all of them with --json)` : ''}`));
  }
  if (r.orphans.length > 0) {
    lines.push('', c.bold(`orphans (no master user): ${r.orphans.length}`));
    for (const p of r.orphans) lines.push(problemLine(p, c));
  }
  const todo = byCode.filter(([code]) => REMEDY[code] !== undefined);
  if (todo.length > 0) {
    lines.push('', c.bold('What to do'));
    for (const [code] of todo) lines.push(`  ${code.padEnd(20)} ${REMEDY[code]}`);
  }
  const warnedOnly = r.users.filter((u) => !u.ok && u.problems.every((p) => p.severity === 'warning')).length;
  const verdict = r.ok
    ? c.green('all users ok')
    : c.red(`${r.failed} of ${r.checked} users failed${warnedOnly > 0 ? ` (${warnedOnly} with warnings only)` : ''}${r.orphans.length > 0 ? `, ${r.orphans.length} orphans` : ''}`);
  lines.push('', `${verdict} (${formatSeconds(r.durationMs / 1000)})`);
  return lines.join('\n');
}

const GROUP_AT = 10;

/** The command (or step) that clears each problem; <id> is the user's. */
const REMEDY: Partial<Record<ProblemCode, string>> = {
  master_user_missing: 'restore the user in the master, or move user_<id>.db and user_<id>/ out of the data dir',
  db_missing: 'acm2 user seed <id> (the package again, with new ids)',
  db_corrupt: 'restore user_<id>.db from a backup (migration backups: .acm2/backups/user_<id>/), or move it aside, then acm2 user seed <id>',
  schema_outdated: 'acm2 backfill --user <id> (migrates and repairs the schema, with a backup)',
  schema_newer: 'upgrade acm2 on this host to the version that migrated the DB (a newer acm2 applied a migration this one does not know), then acm2 verify --user <id>',
  meta_missing: "acm2 user seed <id> for a user the tool seeded; acm2 backfill --user <id> for an ACM2 DB never seeded (marks it ready as 'legacy')",
  not_ready: 'acm2 user seed <id>, or let the queue run: acm2 user seed --pending (after a stopped backfill: acm2 backfill --resume)',
  seed_version_unknown: "acm2 seed check <version>, then put the package back in the seeds dir; for a version acm2 never seeded there (ACM2's own seeding wrote it): acm2 user seed <id>, or acm2 backfill for every such user; when the tool's seed record (acm2_seed_state) has no finished seed of the version user_meta names: acm2 user seed <id> --force --seed-version <that version>",
  seed_row_missing: "acm2 user seed <id> --force --seed-version <its version> restores that package's rows and files under the same ids (<its version>: the seed the problem names; edits to them are reset; without --seed-version, CURRENT's package is the one seeded)",
  file_missing: "acm2 user seed <id> --force --seed-version <its version> restores that package's rows and files under the same ids (<its version>: the seed the problem names; edits to them are reset; without --seed-version, CURRENT's package is the one seeded)",
  file_size_mismatch: 'acm2 user seed <id> --force --seed-version <its version>, if the change is not the user\'s own',
  file_hash_mismatch: 'acm2 user seed <id> --force --seed-version <its version>, if the change is not the user\'s own',
  seed_id_leaked: "acm2 user seed <id> --force --seed-version <its version> rewrites that package's rows and files with the user's ids; a row the user wrote must be edited",
  unresolved_reference: "acm2 diff --user <id> shows which seeded rows or files changed; acm2 user seed <id> --force --seed-version <its version> restores the package's (a reference the user's own edit broke must be fixed in ACM2)",
  path_escape: "remove a symlink inside user_<id>/ (nothing of a user's may lead out of it); when user_<id>.db or user_<id>/ itself is the link, it leads to the user's data: move what it points to into its place as the message says, never just delete the link; anything else where the folder user_<id>/ must be (a plain file, a FIFO): move it aside, then acm2 user seed <id> --force --seed-version <its version>",
  foreign_user_row: "a row names another user, so ACM2 cannot show it (nor fix it): one the seed wrote (its message names the seed) is put back by acm2 user seed <id> --force --seed-version <its version> (edits to seeded rows are reset; a backup is kept); any other row: find what wrote it (a copy of another user's DB?) and fix or remove it in the DB by hand, the tool never rewrites a row it did not write",
  fk_violation: "a row refers to one that is gone (ACM2 deletes without cascade): repair or remove it in ACM2; a seeded row that is gone comes back with acm2 user seed <id> --force --seed-version <its version>",
  job_state_mismatch: 'the acm2 user seed command its message names closes the job (acm2 user seed <id>; with --seed-version when the job is for another version than the user is ready with)',
  orphan: 'no master user owns it: move it out of the data dir, or restore the user in the master',
  bad_permissions: 'acm2 backfill --user <id> (folders 0700, files 0600); ACM2 writes new run files with its umask, so run it with umask 077',
  db_busy: 'verify the user again when it is idle: acm2 verify --user <id>',
};

function problemLine(p: Problem, c: Paint): string {
  const mark = p.severity === 'warning' ? c.yellow('!') : c.red('✗');
  const where = [p.table && (p.rowId ? `${p.table} ${p.rowId}` : p.table), p.path].filter(Boolean).join(' ');
  return `  ${mark} ${p.code.padEnd(20)} ${p.message}${where && !p.message.includes(p.path ?? '\0') ? c.gray(`  [${where}]`) : ''}`;
}

/**
 * JUnit XML: a suite with one testcase per user and a suite with one testcase for the data dir's
 * orphans, so a dashboard shows both. A dashboard reads <failure> as "checked, and found wrong",
 * <error> as "could not be checked" and <skipped> as "not checked", so each testcase gets the one
 * that is true of it (see outcome below); every problem is listed in it either way. The exit code
 * is not the report's: warnings still fail verify (a fleet in CI must be fully ready).
 */
export function renderJunit(r: VerifyResult, opts: { orphanScan?: boolean } = {}): string {
  const secs = (r.durationMs / 1000).toFixed(3);
  // With --user no orphan scan runs: the data dir's testcase is skipped, not passed.
  const scanned = opts.orphanScan ?? true;
  const users = r.users.map((u) => testcase('acm2.verify.users', `user ${u.id}`, u.problems));
  const dataDir: Case = scanned
    ? testcase('acm2.verify.datadir', 'orphans', r.orphans)
    : { kind: 'skipped', xml: `    <testcase classname="acm2.verify.datadir" name="orphans"><skipped message="not scanned: only the users given with --user were checked"/></testcase>` };
  // The counts are the testcases', so a dashboard's totals agree with what it lists.
  const counts = (cases: Case[]) => {
    const n = (kind: Outcome) => cases.filter((c) => c.kind === kind).length;
    return `tests="${cases.length}" failures="${n('failure')}" errors="${n('error')}" skipped="${n('skipped')}"`;
  };
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="acm2 verify" ${counts([...users, dataDir])} time="${secs}">`,
    `  <testsuite name="acm2 verify: users" ${counts(users)} time="${secs}">`,
    ...users.map((c) => c.xml),
    '  </testsuite>',
    `  <testsuite name="acm2 verify: data dir" ${counts([dataDir])} time="0">`,
    dataDir.xml,
    '  </testsuite>',
    '</testsuites>',
    '',
  ].join('\n');
}

type Outcome = 'passed' | 'failure' | 'error' | 'skipped';
interface Case {
  kind: Outcome;
  xml: string;
}

/**
 * What a testcase is, from its problems: an error-severity finding is a <failure> (something is
 * known to be wrong, whatever else could not be checked); otherwise a db_busy is an <error> (the
 * DB was locked or left mid-write, so it was not checked: nothing is known to be wrong); otherwise
 * only warnings (not_ready for a seed queued or running) are <skipped>: there is nothing of the
 * user's to check until the seed is done, and nothing was found wrong.
 */
function outcome(problems: Problem[]): Outcome {
  if (problems.length === 0) return 'passed';
  if (problems.some((p) => p.severity === 'error')) return 'failure';
  if (problems.some((p) => p.code === 'db_busy')) return 'error';
  return 'skipped';
}

function testcase(classname: string, name: string, problems: Problem[]): Case {
  const open = `    <testcase classname="${xml(classname)}" name="${xml(name)}"`;
  const kind = outcome(problems);
  if (kind === 'passed') return { kind, xml: `${open}/>` };
  const codes = [...new Set(problems.map((p) => p.code))].join(',');
  // One line per problem: a file name's newline or ESC is written escaped (XML 1.0 cannot carry
  // an ESC at all, and a dropped one would leave "[2J" where the name had "\x1b[2J").
  const body = problems
    .map((p) => shown(`[${p.severity}] ${p.code}: ${p.message}${p.table ? ` (table ${p.table}${p.rowId ? `, row ${p.rowId}` : ''})` : ''}${p.path ? ` (path ${p.path})` : ''}`))
    .join('\n');
  const count = `${problems.length} problem${problems.length === 1 ? '' : 's'}: ${codes}`;
  // A dashboard shows the message first: for an unchecked user, why it was not checked.
  const busy = problems.find((p) => p.code === 'db_busy');
  const element =
    kind === 'failure'
      ? `<failure message="${xml(count)}" type="${xml(codes)}">${xml(body)}</failure>`
      : kind === 'error'
        ? `<error message="${xml(shown(busy!.message))}" type="${xml(codes)}">${xml(body)}</error>`
        : `<skipped message="${xml(problems.length === 1 ? shown(problems[0]!.message) : `not checked: ${count}`)}">${xml(body)}</skipped>`;
  return { kind, xml: [`${open}>`, `      ${element}`, '    </testcase>'].join('\n') };
}

/**
 * Text the tool did not write, as the report shows it: visible()'s escapes, and a lone UTF-16
 * surrogate (JSON.parse makes one of a "\ud800" ACM2 stored, and a message may quote it) escaped
 * the same way: XML 1.0 has no character for it, and the UTF-8 encoder would silently turn it
 * into U+FFFD, losing which one it was.
 */
function shown(s: string): string {
  return visible(s).replace(LONE_SURROGATE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Escape for XML 1.0 text and attributes, dropping characters XML cannot carry. */
function xml(s: string): string {
  return s
    .replace(/[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF]/g, '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;');
}

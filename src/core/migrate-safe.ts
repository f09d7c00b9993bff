// Migrates one user DB without ever losing a row: a backup first, then every change in one
// transaction, with row counts, foreign_key_check and quick_check compared before and after.

import { fsyncPath } from '../durable.js';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { isDiskFull, NeedsOperatorError } from '../errors.js';
import type { Migration } from '../migrations.js';
import { driftRepairSql, listTables, recordBaseline, recordMigration, type SchemaDrift, type SqliteDb } from '../userdb/user-db.js';

export type MigrateFailureCode = 'rows_vanished' | 'fk_violation' | 'quick_check' | 'migration_error' | 'locked' | 'corrupt' | 'disk_full';


export interface SafeMigrateInput {
  dbPath: string;
  /** Where the backup goes (kept: backups are never deleted by the tool). */
  backupDir: string;
  /** File name stem of the backup, e.g. `user_42`. */
  label: string;
  /** A DB that ACM2 created itself: repair this drift, then record migration 1 as the baseline. */
  adopt?: SchemaDrift;
  /** Migrations to apply, in order (the pending ones). */
  migrations: Migration[];
  busyTimeoutMs?: number;
  now?: Date;
  /**
   * More changes for the same transaction, after the migrations (backfill writes the legacy
   * user_meta here, so a DB becomes current and ready in one commit). Returns what it did.
   */
  extra?: (db: SqliteDb) => string[];
  /** Test hook: runs right after the commit, before the check of the committed file. */
  afterCommit?: () => void;
}

export interface SafeMigrateFailure {
  code: MigrateFailureCode;
  message: string;
  /**
   * How the DB got back to its state before: the transaction's rollback, or the backup copy.
   * 'committed': the migration committed and only the check after it failed; nothing was
   * restored, since ACM2 may have written to the DB once the commit let it (the backup is kept).
   * 'ended': the transaction ended before the checks did (SQLite ends it on a full disk; a
   * migration may COMMIT) and another connection wrote since: nothing restored over that write.
   */
  restoredFrom: 'rollback' | 'backup' | 'untouched' | 'committed' | 'ended';
}

export interface SafeMigrateResult {
  ok: boolean;
  /** The backup copy (absent when nothing was written). */
  backupPath?: string;
  /** Statements run to repair drift, then the migrations applied. */
  repairs: string[];
  applied: string[];
  /** What `extra` did. */
  extras?: string[];
  before: Record<string, number>;
  after?: Record<string, number>;
  failure?: SafeMigrateFailure;
}

/** The savepoint migrateSafely's changes are made under (inside its BEGIN IMMEDIATE). */
const SAVEPOINT = 'acm2_migrate';

class CheckFailed extends Error {
  constructor(
    readonly code: MigrateFailureCode,
    message: string,
  ) {
    super(message);
  }
}

export function countRows(db: SqliteDb): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of listTables(db)) out[t] = (db.prepare(`SELECT COUNT(*) AS n FROM "${t.replace(/"/g, '""')}"`).get() as { n: number }).n;
  return out;
}

/** Keys of current foreign-key violations (table, row, parent); the fk index may shift on ALTER. */
export function fkViolations(db: SqliteDb): Set<string> {
  const rows = db.prepare(`PRAGMA foreign_key_check`).all() as Array<{ table: string; rowid: number | null; parent: string }>;
  return new Set(rows.map((r) => `${r.table}|${r.rowid}|${r.parent}`));
}

/** The DB's schema as text: tables, columns, indexes (to prove a rollback put it all back). */
export function schemaText(db: SqliteDb): string {
  return (db.prepare(`SELECT type || ' ' || name || ' ' || COALESCE(sql, '') FROM sqlite_master ORDER BY type, name`).raw(true).all() as [string][]).map((r) => r[0]).join('\n');
}

export function quickCheck(db: SqliteDb): string | undefined {
  const rows = db.prepare(`PRAGMA quick_check`).raw(true).all() as [string][];
  // SQLite heads its first finding with a line of its own ("*** in database main ***"): noise in a one-line message.
  return rows.length === 1 && rows[0]![0] === 'ok' ? undefined : rows.map((r) => r[0].replace(/^\*\*\* in database \S+ \*\*\*\n/, '')).slice(0, 5).join('; ');
}

/** Tables whose count went down (or vanished): "contents 12 -> 9". */
export function vanished(before: Record<string, number>, after: Record<string, number>): string[] {
  return Object.entries(before)
    .filter(([t, n]) => (after[t] ?? 0) < n)
    .map(([t, n]) => `${t} ${n} -> ${after[t] ?? 'table gone'}`);
}

function sqliteCode(e: unknown): string {
  return String((e as { code?: string } | undefined)?.code ?? '');
}

export function isBusy(e: unknown): boolean {
  return /^SQLITE_(BUSY|LOCKED)/.test(sqliteCode(e));
}

export function isCorrupt(e: unknown): boolean {
  return /^SQLITE_(NOTADB|CORRUPT)/.test(sqliteCode(e));
}

/**
 * What an operator does about a user DB that is corrupt (it fails quick_check, or reads as
 * corrupt): no retry mends it, and the tool never rewrites or removes it. `then` is the command
 * that works once it is dealt with.
 */
export function corruptDbRemedy(backupDir: string, then: string): string {
  return `restore it from a backup (the tool keeps its migration backups in ${backupDir}) or move it aside, then run: ${then}`;
}

/**
 * A user DB found corrupt, for an operator (the job fails at once), in one sentence: the file,
 * what quick_check or SQLite said (`what`), what was done to it (`done`), and the remedy ending
 * in `then`. `what` and `done` are kept so another command (backfill) can say it with its own `then`.
 */
export class CorruptUserDbError extends NeedsOperatorError {
  constructor(
    readonly file: string,
    readonly what: string,
    readonly done: string,
    backupDir: string,
    then: string,
    options?: { cause?: unknown },
  ) {
    super(corruptDbSentence(file, what, done, backupDir, then), options);
  }
}

export function corruptDbSentence(file: string, what: string, done: string, backupDir: string, then: string): string {
  return `${file} is corrupt (${what}): ${done}; ${corruptDbRemedy(backupDir, then)}`;
}


/** `<dir>/<label>-<UTC stamp>-<random>` (the caller adds `.db`); makes `dir`. Every backup the tool keeps is named so. */
export function backupStem(dir: string, label: string, now: Date): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return path.join(dir, `${label}-${stamp}-${randomBytes(3).toString('hex')}`);
}

function backupName(dir: string, label: string, now: Date): string {
  return `${backupStem(dir, label, now)}.db`;
}

/** Make a finished copy durable and give it its final name (a crash leaves only `.partial`). */
function sealBackup(tmp: string, final: string): string {
  chmodSync(tmp, 0o600);
  fsyncPath(tmp);
  renameSync(tmp, final);
  fsyncPath(path.dirname(final));
  return final;
}

/**
 * Back up, then hold the write lock for the migration. A rollback-journal DB (ACM2 @5107384) is
 * copied byte for byte while we hold its RESERVED lock: no one else can write, and there is no
 * hot journal (our own read would have rolled it back). A WAL DB goes through SQLite's backup
 * API first, and data_version proves nobody committed between the copy and the lock.
 *
 * SQLite's lock is a POSIX lock, owned by this process: closing any descriptor of the DB file
 * here drops it, and ACM2 could then write (and commit) in the middle of the migration. So the
 * copy reads through a descriptor that is kept open, in `held`, until the transaction is over.
 */
async function backupAndLock(db: SqliteDb, dbPath: string, dir: string, label: string, now: Date, held: number[]): Promise<string> {
  const wal = String(db.pragma('journal_mode', { simple: true })).toLowerCase() === 'wal';
  const final = backupName(dir, label, now);
  const tmp = `${final}.partial`;
  if (!wal) {
    db.exec('BEGIN IMMEDIATE');
    const from = openSync(dbPath, 'r');
    held.push(from);
    copyOut(from, tmp);
    return sealBackup(tmp, final);
  }
  for (let attempt = 0; ; attempt++) {
    const version = db.pragma('data_version', { simple: true });
    await db.backup(tmp);
    db.exec('BEGIN IMMEDIATE');
    if (db.pragma('data_version', { simple: true }) === version) return sealBackup(tmp, final);
    db.exec('ROLLBACK');
    if (attempt >= 2) throw Object.assign(new Error('the DB kept changing while it was being backed up'), { code: 'SQLITE_BUSY' });
  }
}

/** Copy what descriptor `from` reads into a new file `to` (`from` is left open). */
function copyOut(from: number, to: string): void {
  const out = openSync(to, 'wx', 0o600);
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (let at = 0; ; ) {
      const n = readSync(from, buf, 0, buf.length, at);
      if (n === 0) break;
      for (let off = 0; off < n; ) off += writeSync(out, buf, off, n - off);
      at += n;
    }
  } finally {
    closeSync(out);
  }
}

/** Put the backup back through the backup API (SQLite journals the write, so this is crash-safe too). */
async function restoreFrom(backupPath: string, dbPath: string): Promise<void> {
  const src = new Database(backupPath, { readonly: true, fileMustExist: true });
  try {
    await src.backup(dbPath);
  } finally {
    src.close();
  }
}

function compare(before: { counts: Record<string, number>; fk: Set<string> }, db: SqliteDb): { counts: Record<string, number>; problem?: CheckFailed } {
  const counts = countRows(db);
  const lost = vanished(before.counts, counts);
  if (lost.length > 0) return { counts, problem: new CheckFailed('rows_vanished', `rows would vanish (${lost.join(', ')})`) };
  const fresh = [...fkViolations(db)].filter((k) => !before.fk.has(k));
  if (fresh.length > 0) return { counts, problem: new CheckFailed('fk_violation', `${fresh.length} new foreign key violation(s), e.g. ${fresh[0]!.replace(/\|/g, ' row ').replace(/ row ([^ ]+)$/, ' -> $1')}`) };
  const qc = quickCheck(db);
  if (qc) return { counts, problem: new CheckFailed('quick_check', `quick_check failed: ${qc}`) };
  return { counts };
}

/**
 * Repair drift, record the baseline and apply migrations in one transaction on a backed-up DB.
 * Any vanished row, new FK violation or failed quick_check undoes everything (rollback, and the
 * backup if a statement committed on its own) and reports why. Never throws for those: it
 * returns a failure the caller records against the user.
 */
export async function migrateSafely(input: SafeMigrateInput): Promise<SafeMigrateResult> {
  const now = input.now ?? new Date();
  const result: SafeMigrateResult = { ok: false, repairs: [], applied: [], before: {} };
  let db: SqliteDb;
  try {
    db = new Database(input.dbPath, { fileMustExist: true, timeout: input.busyTimeoutMs ?? 1000 });
    // As in ACM2, foreign keys are not enforced while migrating (SQLite refuses ADD COLUMN …
    // REFERENCES with a default otherwise); foreign_key_check before and after is the guard.
    db.pragma('foreign_keys = OFF');
  } catch (e) {
    return { ...result, failure: { code: 'migration_error', message: (e as Error).message, restoredFrom: 'untouched' } };
  }
  let backupPath: string | undefined;
  // Descriptors of the DB file that must outlive our lock on it (see backupAndLock).
  const held: number[] = [];
  let before: { counts: Record<string, number>; fk: Set<string>; schema: string; version: unknown } | undefined;
  let committed = false;
  try {
    const qc = quickCheck(db);
    if (qc) return { ...result, failure: { code: 'corrupt', message: `quick_check failed before migrating: ${qc}`, restoredFrom: 'untouched' } };
    cleanPartialBackups(input.backupDir, input.label);
    backupPath = await backupAndLock(db, input.dbPath, input.backupDir, input.label, now, held);
    result.backupPath = backupPath;
    // Marks the state before any change, inside the lock: a failure goes back to it while the lock
    // is still held (see the catch below).
    db.exec(`SAVEPOINT ${SAVEPOINT}`);
    before = { counts: countRows(db), fk: fkViolations(db), schema: schemaText(db), version: db.pragma('data_version', { simple: true }) };
    result.before = before.counts;

    if (input.adopt) {
      for (const sql of driftRepairSql(input.adopt)) {
        db.exec(sql);
        result.repairs.push(sql);
      }
      recordBaseline(db, 1, now);
    }
    for (const m of input.migrations) {
      try {
        db.exec(m.sql);
        recordMigration(db, m, now);
      } catch (e) {
        throw new CheckFailed(isDiskFull(e) ? 'disk_full' : 'migration_error', `migration ${m.name} failed: ${(e as Error).message}`);
      }
      result.applied.push(m.name);
    }
    if (input.extra) result.extras = input.extra(db);
    const checked = compare(before, db);
    if (checked.problem) throw checked.problem;
    if (db.inTransaction) db.exec('COMMIT');
    committed = true;
    input.afterCommit?.();
    // Check the committed file once more: what is on disk is what counts. Only its integrity:
    // counts and references were proven before the commit, under the lock; from now on ACM2 may
    // change them (a user deleting a row is not a row the migration lost).
    const after = quickCheck(db);
    if (after) throw new CheckFailed('quick_check', `quick_check failed after the commit: ${after}`);
    result.after = countRows(db);
    result.ok = true;
    return result;
  } catch (e) {
    // Back to the savepoint first, still holding the write lock: then the DB is as before the
    // attempt, proven by SQLite itself. The savepoint is gone only if something committed on its
    // own (a migration with COMMIT in it): that case is checked, and restored, below.
    let undone = false;
    if (db.inTransaction && !committed) {
      try {
        db.exec(`ROLLBACK TO ${SAVEPOINT}`);
        undone = true;
      } catch {
        /* no such savepoint: see below */
      }
    }
    if (db.inTransaction) {
      try {
        db.exec('ROLLBACK');
      } catch {
        undone = false; // the restore below covers it
      }
    }
    const failure: SafeMigrateFailure =
      e instanceof CheckFailed
        ? { code: e.code, message: e.message, restoredFrom: 'rollback' }
        : { code: isBusy(e) ? 'locked' : isCorrupt(e) ? 'corrupt' : isDiskFull(e) ? 'disk_full' : 'migration_error', message: (e as Error).message, restoredFrom: 'rollback' };
    if (!before || !backupPath) return { ...result, failure: { ...failure, restoredFrom: 'untouched' } };
    // Our commit released the lock: from then on ACM2 may write (a row added, one deleted), and
    // the backup is older than those writes. A check failing now is reported, never undone.
    if (committed) return { ...result, failure: { ...failure, message: `${failure.message} (checked after the migration committed)`, restoredFrom: 'committed' } };
    // Undone under the lock: the DB is as before. Compared now, after the lock is released, it could
    // differ by what ACM2 wrote since (a waiting write goes in at once), and restoring the backup
    // would throw that write away.
    if (undone) return { ...result, failure };
    // A rollback is enough unless something committed on its own (a migration with COMMIT in it,
    // or a failure after our COMMIT): then the DB is not provably as before, and the backup goes back.
    let same = false;
    let othersWrote = false;
    try {
      same = JSON.stringify(countRows(db)) === JSON.stringify(before.counts) && schemaText(db) === before.schema && !quickCheck(db);
      // SQLite ends the whole transaction itself on some errors (a full disk): the lock is gone
      // then too, and ACM2 may have written since. Its writes are never restored over.
      othersWrote = db.pragma('data_version', { simple: true }) !== before.version;
    } catch {
      same = false;
    }
    if (!same && othersWrote) {
      return { ...result, failure: { ...failure, restoredFrom: 'ended' } };
    }
    if (!same) {
      db.close();
      closeHeld(held);
      await restoreFrom(backupPath, input.dbPath);
      failure.restoredFrom = 'backup';
    }
    return { ...result, failure };
  } finally {
    if (db.open) db.close();
    closeHeld(held);
  }
}

function closeHeld(held: number[]): void {
  for (const fd of held.splice(0)) closeSync(fd);
}

/**
 * Remove half-written backups left by a crash (never a finished one): files, and --force's folders,
 * with the journal SQLite's backup API writes beside a copy it is making (`….partial-journal`).
 */
export function cleanPartialBackups(dir: string, label: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) if (name.startsWith(`${label}-`) && PARTIAL.test(name)) rmSync(path.join(dir, name), { recursive: true, force: true });
}

const PARTIAL = /\.partial(-journal|-wal|-shm)?$/;

/** The whole backups kept in a backups folder, and the bytes they take. */
export interface KeptBackups {
  dir: string;
  count: number;
  bytes: number;
}

/**
 * The whole backups of `label` in `dir` (migrations' files, --force's folders; not a `.partial`),
 * read only; undefined when the folder cannot be read (an account that may not read `.acm2/`).
 */
export function keptBackups(dir: string, label: string): KeptBackups | undefined {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? { dir, count: 0, bytes: 0 } : undefined;
  }
  const kept = names.filter((n) => n.startsWith(`${label}-`) && !PARTIAL.test(n));
  return { dir, count: kept.length, bytes: kept.reduce((n, name) => n + bytesUnder(path.join(dir, name)), 0) };
}

/** A file's size, or a folder's files' sizes summed (symlinks not followed); 0 for what cannot be read. */
function bytesUnder(p: string): number {
  try {
    const st = lstatSync(p);
    if (st.isFile()) return st.size;
    if (!st.isDirectory()) return 0;
    return readdirSync(p).reduce((n, name) => n + bytesUnder(path.join(p, name)), 0);
  } catch {
    return 0;
  }
}

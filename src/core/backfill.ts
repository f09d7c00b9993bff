// Backfill: bring every existing user up to date — seed a missing DB, adopt and migrate DBs
// safely, write a missing user_meta — planned per user, then applied; resumable from the master.

import { randomUUID } from 'node:crypto';
import { chmodSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { newerToolReason, type Migration } from '../migrations.js';
import type { BackfillItem, MasterDb, MasterUser, UserLock } from '../master/types.js';
import type { SeedPackage } from '../seed/package.js';
import type { ProgressSink } from '../ui/reporter.js';
import { startOrHand, threadInput, type WarmWorkers } from './warm-workers.js';
import { UnavailableError, UsageError, isAcm2Error, needsOperator } from '../errors.js';
import { lstatOrUndefined } from '../durable.js';
import { toolDir, toolDirProblem, userDbEntryProblem, userDbPath, userRoot, type UserId } from '../userdb/paths.js';
import { describeDrift, detectSchemaDrift, listTables, openForReading, readAgainIfReadOnly, unfillableColumns, userMigrations, versionSeededHere, type SchemaDrift, type SqliteDb } from '../userdb/user-db.js';
import { dropLiveDbAliases, readyBefore, seedUserAsync, sqlNow, type SeedStep } from './seed-user.js';
import { schemaWork } from './schema-work.js';
import { workerName } from './worker-name.js';
import { tryLockNamed, tryLockUser } from './user-lock.js';
import { backoffMs, readyAt } from './users.js';
import { corruptDbSentence, CorruptUserDbError, isBusy, isCorrupt, migrateSafely, type MigrateFailureCode } from './migrate-safe.js';
import { listLegacyRuns, moveLegacyLogs, runsOwnedBy, type LegacyLogsResult } from './legacy-logs.js';

/** What a user needs, most significant first when a user needs several steps. */
export type BackfillAction = 'seed' | 'seed_beside' | 'meta_legacy' | 'adopt' | 'migrate' | 'permissions' | 'ok' | 'fail';
export const BACKFILL_ACTIONS: readonly BackfillAction[] = ['seed', 'seed_beside', 'meta_legacy', 'adopt', 'migrate', 'permissions', 'ok', 'fail'];

export type BackfillFailureCode =
  | MigrateFailureCode
  | 'unreadable'
  | 'unrecognised'
  | 'schema_newer'
  | 'schema_unrepairable'
  | 'user_busy'
  | 'seed_failed'
  /** The DB's rows name another owner (a copy, a reused id): left alone, never adopted. */
  | 'foreign_data'
  /** The disk is full: the backfill stops (every next user would fail the same way). */
  | 'disk_full'
  | 'error';

export type PlanStep =
  | { kind: 'adopt'; drift: SchemaDrift }
  | { kind: 'migrate'; migrations: Migration[] }
  /** A DB with the tool's ledger that lost part of migration 1's schema (an index dropped by hand). */
  | { kind: 'repair'; drift: SchemaDrift }
  | { kind: 'meta_legacy' }
  | { kind: 'seed'; beside: boolean }
  /** SPEC §3: folders 0700, files 0600. ACM2 created its files with the process umask (0644). */
  | { kind: 'permissions'; paths: string[] };

export interface UserPlan {
  userId: UserId;
  action: BackfillAction;
  steps: PlanStep[];
  failure?: { code: BackfillFailureCode; reason: string };
  /** The version user_meta says the user is ready with, when it is. */
  seedVersion?: string;
  /**
   * With seedVersion (another than the backfill's): the tool's seed record says the backfill's
   * version was seeded to the end in this DB before. A seed of it finds the user whole with it and
   * only makes it ready with that version again (seed-user's readyAgain), adding nothing.
   */
  seededBefore?: boolean;
}

export interface BackfillUserReport {
  id: UserId;
  /** What the plan said. */
  action: BackfillAction;
  /** What happened: the action, or 'fail'. In a dry run, the action. */
  outcome: BackfillAction;
  steps: string[];
  code?: BackfillFailureCode;
  reason?: string;
  /** Backup taken before migrating (kept). */
  backup?: string;
}

export interface BackfillFailure {
  id: UserId;
  action: BackfillAction;
  code: string;
  reason: string;
}

export interface BackfillOptions {
  dryRun?: boolean;
  userIds?: UserId[];
  limit?: number;
  batchSize?: number;
  concurrency?: number;
  shard?: { index: number; count: number };
  resume?: boolean;
  maxErrors?: number;
  legacyLogsDir?: string;
}

export interface BackfillDeps {
  master: MasterDb;
  dataDir: string;
  /** The package a missing or incomplete user is seeded with. */
  pkg: SeedPackage;
  progress?: ProgressSink;
  /** Polled before each user: true stops taking new users (SIGINT); users in flight finish. */
  shouldStop?: () => boolean;
  /** How long to wait on a user DB another process holds (default 250 ms), then fail it 'locked'. */
  busyTimeoutMs?: number;
  /** Test hook: each step of a seed this backfill runs (tests throw a full disk here). */
  onSeedStep?: (step: SeedStep) => void;
  /** Per-user migrations (default: the shipped ones). Tests inject a bad one here. */
  migrations?: Migration[];
  /** Least time between two progress saves in the master (default 200 ms; page ends always save). */
  saveEveryMs?: number;
  /**
   * Planning slots started ahead with startPlanners (same dataDir, --concurrency slots); the
   * caller closes them. Without them (or if they do not match) runBackfill starts its own.
   */
  planners?: BackfillPlanners;
  /** Called after each user (tests use it to crash at a given point). */
  onUser?: (r: BackfillUserReport) => void | Promise<void>;
}

export interface BackfillResult {
  dryRun: boolean;
  /** Name of the progress record in the master: 'default', or 'shard-i-of-n'; with --user, '-users' added. */
  name: string;
  resumed: boolean;
  /**
   * --resume was given and no progress of this backfill's name was saved (never run, or another
   * --shard/--user's name): it went over every user from the start, which is safe (a backfill
   * redoes nothing done), and the summary says so: a mistyped shard is seen, not passed over.
   */
  nothingToResume?: boolean;
  /** --resume of a backfill that had finished (when): only users added since were gone over, and counts are theirs. */
  resumedFinished?: string;
  /** Users per outcome, over the whole job (a resumed job includes the earlier part). */
  counts: Partial<Record<BackfillAction, number>>;
  /** Per-user reports, the first USERS_LISTED of this invocation only (memory stays flat). */
  users: BackfillUserReport[];
  /** Users processed beyond the listed ones (see the master's backfill items for all of them). */
  usersOmitted: number;
  failures: BackfillFailure[];
  /** The package version missing or unfinished users are seeded with. */
  seedVersion: string;
  /** Users of this invocation found complete with another version (left so: backfill does not move users between versions). */
  readyWithOtherVersion: number;
  /**
   * Of readyWithOtherVersion, those the tool had seeded with seedVersion to the end before (they
   * moved on to another version since): a seed of seedVersion makes them ready with it again,
   * adding no rows or files.
   */
  readyWithOtherVersionSeededBefore: number;
  /** Why the run stopped before the end, if it did. */
  stopped?: 'interrupted' | 'max_errors' | 'disk_full';
  /** Every selected user with id ≤ cursor is done. */
  cursor: number;
  legacyLogs?: LegacyLogsResult;
  /** Backups this invocation kept of DBs it migrated (failed users name theirs in their reason). */
  backups?: { kept: number; dir: string };
  durationMs: number;
}

/** Per-user reports kept in the result; beyond this only counts and failures grow. */
export const USERS_LISTED = 1000;
const LEASE_MS = 10 * 60 * 1000;

/**
 * The progress record: one per shard, and one beside it for runs over named users (--user), so
 * that putting a few users right while a full backfill is stopped does not replace the progress
 * its --resume continues from.
 */
export function progressName(shard?: { index: number; count: number }, named = false): string {
  return (shard ? `shard-${shard.index}-of-${shard.count}` : 'default') + (named ? '-users' : '');
}

// ---------------------------------------------------------------------------------------------
// Plan (read-only)

export interface PlanContext {
  dataDir: string;
  busyTimeoutMs: number;
  migrations: Migration[];
  /** The version this backfill seeds with: a user ready with another is asked whether it had this one whole before. */
  seedVersion?: string;
}

function failed(userId: UserId, code: BackfillFailureCode, reason: string): UserPlan {
  return { userId, action: 'fail', steps: [], failure: { code, reason } };
}

/** Actions from the most to the least significant: the order primaryAction picks in. */
const ACTION_ORDER: readonly BackfillAction[] = ['seed', 'seed_beside', 'meta_legacy', 'adopt', 'migrate', 'permissions', 'ok'];

/** The more significant of two actions (what a user's backfill did, told as one word). */
function moreSignificant(a: BackfillAction, b: BackfillAction): BackfillAction {
  return ACTION_ORDER.indexOf(a) <= ACTION_ORDER.indexOf(b) ? a : b;
}

export function primaryAction(steps: PlanStep[]): BackfillAction {
  if (steps.some((s) => s.kind === 'seed' && !s.beside)) return 'seed';
  if (steps.some((s) => s.kind === 'seed')) return 'seed_beside';
  if (steps.some((s) => s.kind === 'meta_legacy')) return 'meta_legacy';
  if (steps.some((s) => s.kind === 'adopt')) return 'adopt';
  if (steps.some((s) => s.kind === 'migrate' || s.kind === 'repair')) return 'migrate';
  if (steps.some((s) => s.kind === 'permissions')) return 'permissions';
  return 'ok';
}

export function describeSteps(steps: PlanStep[]): string[] {
  return steps.flatMap((s) => {
    switch (s.kind) {
      case 'adopt':
        return ['adopt (record migration 1 as baseline)', ...describeDrift(s.drift).map((d) => `repair: ${d}`)];
      case 'migrate':
        return s.migrations.map((m) => `migrate ${m.name}`);
      case 'repair':
        return describeDrift(s.drift).map((d) => `repair: ${d}`);
      case 'meta_legacy':
        return ["write user_meta ready, version 'legacy'"];
      case 'seed':
        return [s.beside ? 'seed beside the user’s own rows' : 'seed'];
      case 'permissions':
        return [`tighten permissions of ${s.paths.length} path${s.paths.length === 1 ? '' : 's'} (folders 0700, files 0600)`];
    }
  });
}

/** Why user `userId` failed, from what was thrown while its DB was read or written. */
function classify(e: unknown, dataDir: string, userId: UserId): { code: BackfillFailureCode; reason: string } {
  const msg = e instanceof Error ? e.message : String(e);
  if (isBusy(e)) return { code: 'locked', reason: `the DB is locked by another process (${msg})` };
  // Only ever read, or a write SQLite refused and rolled back (the legacy user_meta).
  if (isCorrupt(e)) return { code: 'corrupt', reason: corruptDb(dataDir, userId, msg, 'left alone') };
  if (isAcm2Error(e) && (e.code === 'schema_newer' || e.code === 'migration_checksum')) return { code: 'schema_newer', reason: msg };
  // A full disk under the read (a private copy in TMPDIR: the data dir is read-only) stops the run as any full disk does.
  if (isAcm2Error(e) && e.code === 'disk_full') return { code: 'disk_full', reason: msg };
  const errno = (e as NodeJS.ErrnoException).code;
  if (errno && /^E[A-Z]+$/.test(errno)) return { code: 'error', reason: `${msg}` };
  if (String(errno ?? '').startsWith('SQLITE_')) return { code: 'unreadable', reason: msg };
  return { code: 'error', reason: msg };
}

/** What one user needs. Only reads; writes nothing. */
export function planUser(ctx: PlanContext, userId: UserId): UserPlan {
  const plan = planDb(ctx, userId);
  if (plan.action === 'fail') return plan;
  try {
    const loose = loosePermissions(ctx.dataDir, userId);
    if (loose.length > 0) plan.steps.push({ kind: 'permissions', paths: loose });
  } catch (e) {
    const c = classify(e, ctx.dataDir, userId);
    return failed(userId, c.code, `cannot read the user's files: ${c.reason}`);
  }
  plan.action = primaryAction(plan.steps);
  return plan;
}

function planDb(ctx: PlanContext, userId: UserId): UserPlan {
  const file = userDbPath(ctx.dataDir, userId);
  const odd = userDbEntryProblem(ctx.dataDir, userId);
  if (odd) return failed(userId, 'unreadable', `${odd}: left alone; put the user's database file itself there or move the entry aside`);
  if (!existsSync(file)) return { userId, action: 'seed', steps: [{ kind: 'seed', beside: false }] };
  try {
    // A data dir that turned read-only since this process last asked is read from a copy.
    return readAgainIfReadOnly(file, () => {
      // Opened read-write but only read: a read-only connection to a WAL DB leaves -wal/-shm
      // files behind, while the last read-write connection removes them on close.
      const db = openForReading(file, { readonly: false, timeout: ctx.busyTimeoutMs });
      try {
        return planOpen(db, userId, ctx.migrations, file, ctx.seedVersion);
      } finally {
        db.close();
      }
    });
  } catch (e) {
    const c = classify(e, ctx.dataDir, userId);
    return failed(userId, c.code, c.reason);
  }
}

/**
 * A user DB that is corrupt, in one sentence: the file, what was done, and the operator's remedy.
 * Running the backfill again mends nothing: only a backup put back, or the file moved aside.
 */
function corruptDb(dataDir: string, userId: UserId, what: string, done: string): string {
  return corruptDbSentence(userDbPath(dataDir, userId), what, done, toolDir(dataDir, 'backups', `user_${userId}`), `acm2 backfill --user ${userId}`);
}

const modeOk = (mode: number, want: number) => (mode & 0o077) === 0 && (mode & want) === want;

/**
 * A file with a second hard link shares its inode, and so its mode, with another path (outside
 * the user's tree, or another user's file): a chmod here would change that file too, which is not
 * the user's. Such a file is left as it is (verify names it, and why).
 */
const sharedInode = (st: { isFile(): boolean; nlink: number }) => st.isFile() && st.nlink > 1;

/**
 * The user's DB and every file and folder under user_{id}/ whose mode is not 0600/0700 (a file
 * with a second hard link excepted: see sharedInode).
 */
export function loosePermissions(dataDir: string, userId: UserId): string[] {
  const out: string[] = [];
  const db = userDbPath(dataDir, userId);
  const dbSt = lstatOrUndefined(db);
  if (dbSt?.isFile() && !sharedInode(dbSt) && !modeOk(dbSt.mode, 0o600)) out.push(db);
  const root = userRoot(dataDir, userId);
  const rootSt = lstatOrUndefined(root);
  if (!rootSt?.isDirectory()) return out;
  const stack = [root];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    // An entry gone, or named in bytes that are not UTF-8 (readdir's name for it names nothing):
    // there is nothing this can tighten; verify reports such a name.
    const st = dir === root ? rootSt : lstatOrUndefined(dir);
    if (!st) continue;
    if (!modeOk(st.mode, 0o700)) out.push(dir);
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const abs = path.join(dir, e.name);
      if (e.isDirectory()) stack.push(abs);
      else if (e.isFile()) {
        const fst = lstatOrUndefined(abs);
        if (fst && !sharedInode(fst) && !modeOk(fst.mode, 0o600)) out.push(abs);
      }
    }
  }
  return out.sort();
}

function tightenPermissions(paths: string[]): void {
  for (const p of paths) {
    const st = lstatOrUndefined(p);
    // Linked since the plan was made: see sharedInode.
    if (!st || st.isSymbolicLink() || sharedInode(st)) continue;
    chmodSync(p, st.isDirectory() ? 0o700 : 0o600);
  }
}

function rowCount(db: SqliteDb, tables: Set<string>, table: string): number {
  return tables.has(table) ? (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n : 0;
}

/** The tool's ledger of seeds names at least one: the DB was seeded (or begun) by the tool. */
function seededByTool(db: SqliteDb, tables: Set<string>): boolean {
  return tables.has('acm2_seed_state') && db.prepare(`SELECT 1 FROM acm2_seed_state LIMIT 1`).get() !== undefined;
}

/**
 * Whether the tool's seed record says `version` was seeded to the end in this DB (the seed's own
 * readyBefore; asked only of a user ready with another version: the common, current user costs
 * no statement).
 */
function hadWhole(db: SqliteDb, tables: Set<string>, version: string): boolean {
  if (!tables.has('acm2_seed_state')) return false;
  try {
    return readyBefore(db, version);
  } catch {
    return false; // a seed record changed by hand (columns gone) names no version
  }
}

/** user_meta's status (and version, when it has the column) for this user, if it has a row. */
function metaOf(db: SqliteDb, tables: Set<string>, userId: UserId): { status: string; version?: string } | undefined {
  if (!tables.has('user_meta')) return undefined;
  // The usual user_meta (the columns there) in one statement; the column check only when one is missing.
  let current: Database.Statement | undefined;
  try {
    current = db.prepare(`SELECT seed_status, seed_version FROM user_meta WHERE user_id = ?`);
  } catch (e) {
    if (!/no such column/i.test(String((e as Error).message))) throw e;
  }
  if (current) {
    const row = current.get(userId) as { seed_status: unknown; seed_version: unknown } | undefined;
    return row ? { status: String(row.seed_status), version: row.seed_version == null ? undefined : String(row.seed_version) } : undefined;
  }
  const cols = new Set((db.prepare(`SELECT name FROM pragma_table_info('user_meta')`).raw(true).all() as [string][]).map((r) => r[0]));
  if (!cols.has('user_id')) return undefined;
  if (!cols.has('seed_status')) return db.prepare(`SELECT 1 FROM user_meta WHERE user_id = ?`).get(userId) ? { status: '' } : undefined;
  const row = db.prepare(`SELECT seed_status FROM user_meta WHERE user_id = ?`).get(userId) as { seed_status: unknown } | undefined;
  return row ? { status: String(row.seed_status) } : undefined;
}

/**
 * detectSchemaDrift, remembered per schema text (per thread): a fleet's DBs share a handful of
 * schemas, and reading every table's columns per user doubled backfill's planning time. Any
 * change by hand (a lost table, index or column) changes the text, so it is looked at anew.
 */
const driftBySchema = new Map<string, SchemaDrift>();
function driftOf(db: SqliteDb, key: string): SchemaDrift {
  let drift = driftBySchema.get(key);
  if (!drift) {
    drift = detectSchemaDrift(db);
    if (driftBySchema.size >= 64) driftBySchema.clear();
    driftBySchema.set(key, drift);
  }
  return drift;
}

function planOpen(db: SqliteDb, userId: UserId, migrations: Migration[], file: string, seedVersion?: string): UserPlan {
  // One read of the schema gives the tables and the key of driftOf's cache: the whole schema's
  // text, joined by SQLite into one string (cheaper than a row per table), so a DB that lost a
  // column by hand is not taken for one with every column.
  const [names, schemaKey] = db
    .prepare(
      `SELECT group_concat(CASE WHEN type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' THEN name END, char(10)),
              group_concat(type || ' ' || name || ' ' || coalesce(sql, ''), char(10)) FROM sqlite_master`,
    )
    .raw(true)
    .get() as [string | null, string | null];
  const tables = new Set(names ? names.split('\n') : []);
  const steps: PlanStep[] = [];
  if (tables.size === 0) return { userId, action: 'seed', steps: [{ kind: 'seed', beside: false }] };
  const work = schemaWork(db, tables, userId, migrations, () => driftOf(db, schemaKey ?? ''));
  if (!work.ok) {
    if (work.code === 'foreign_data') {
      return failed(userId, 'foreign_data', `the DB holds another user's data (${work.owners.join('; ')}), not user ${userId}'s: left alone; move it out of the data dir, then run: acm2 user seed ${userId}`);
    }
    // This host's acm2 is the one out of date, not the user's data: left alone, to an upgraded acm2.
    if (work.code === 'schema_newer') return failed(userId, 'schema_newer', `${file} ${newerToolReason(work.unknown)}`);
    if (work.code === 'unrecognised') return failed(userId, 'unrecognised', `the DB holds none of ACM2's tables (${work.tables.slice(0, 4).join(', ')}…); left alone`);
    return failed(userId, 'schema_unrepairable', `schema drift needs a table rebuild: ${work.unrepairable.join('; ')}; left alone`);
  }
  if (work.adopt) steps.push({ kind: 'adopt', drift: work.adopt });
  if (work.repair) steps.push({ kind: 'repair', drift: work.repair });
  if (work.migrations.length > 0) steps.push({ kind: 'migrate', migrations: work.migrations });
  const meta = metaOf(db, tables, userId);
  const status = meta?.status;
  if (status === 'ready') {
    // Ready with a version this tool never seeded here (no seed record, no ID map entry) and that
    // is not ACM2's backfill's 'legacy': ACM2's own seeding (its SEED_VERSION, '1': a preset and
    // the contents it uses, no run) or a hand edit. No package of it ever existed, so this is not
    // a user of another package version, which backfill leaves as it is: it lacks what every user
    // gets, and the package is seeded beside its rows, as for a DB with presets and no run.
    if (seedVersion !== undefined && meta?.version !== undefined && meta.version !== seedVersion && meta.version !== 'legacy' && !versionSeededHere(db, tables, meta.version)) {
      steps.push({ kind: 'seed', beside: true });
    }
  } else if (status !== undefined || seededByTool(db, tables)) {
    // A seed that never finished (in_progress/failed): finish it. Or a DB the tool seeded whose
    // user_meta row is gone: not a legacy DB, so the seed (finding itself whole) writes it back.
    steps.push({ kind: 'seed', beside: false });
  } else if (rowCount(db, tables, 'presets') > 0 && rowCount(db, tables, 'runs') > 0) {
    steps.push({ kind: 'meta_legacy' });
  } else {
    steps.push({ kind: 'seed', beside: true });
  }
  if (steps.some((s) => s.kind === 'seed')) {
    // Refused before anything is adopted or migrated: the seed's INSERT would fail on it every time.
    const unfillable = unfillableColumns(db, work.adopt ?? work.repair ?? driftOf(db, schemaKey ?? ''));
    if (unfillable.length > 0) {
      return failed(
        userId,
        'schema_unrepairable',
        `schema drift needs a table rebuild: ${unfillable.join(', ')} ${unfillable.length === 1 ? 'is' : 'are'} NOT NULL without a default (added by a later ACM2), so the seed's rows cannot be written; left alone`,
      );
    }
  }
  return {
    userId,
    action: primaryAction(steps),
    steps,
    ...(status === 'ready' && meta?.version !== undefined && !steps.some((s) => s.kind === 'seed')
      ? { seedVersion: meta.version, ...(seedVersion !== undefined && meta.version !== seedVersion && hadWhole(db, tables, seedVersion) ? { seededBefore: true } : {}) }
      : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// Apply (one user, under its lock)

/**
 * ACM2's legacy backfill rule: a DB with ≥1 preset and ≥1 run is ready as it is, version
 * 'legacy'. Runs inside the caller's transaction; false when a user_meta row is already there.
 */
export function insertLegacyMeta(db: SqliteDb, userId: UserId, now = new Date()): boolean {
  if (db.prepare(`SELECT 1 FROM user_meta WHERE user_id = ?`).get(userId)) return false;
  const t = new Set(listTables(db));
  if (!(rowCount(db, t, 'presets') > 0 && rowCount(db, t, 'runs') > 0)) throw new Error('the DB no longer has a preset and a run');
  const at = sqlNow(now);
  db.prepare(`INSERT INTO user_meta (id, user_id, seed_status, seed_version, seeded_at, created_at, updated_at) VALUES (?, ?, 'ready', 'legacy', ?, ?, ?)`).run(
    randomUUID(),
    userId,
    at,
    at,
    at,
  );
  return true;
}

/** insertLegacyMeta in a transaction of its own (a DB whose schema needs nothing). */
export function writeLegacyMeta(dataDir: string, userId: UserId, busyTimeoutMs: number, now = new Date()): boolean {
  const db = new Database(userDbPath(dataDir, userId), { fileMustExist: true, timeout: busyTimeoutMs });
  try {
    return db.transaction(() => insertLegacyMeta(db, userId, now)).immediate();
  } finally {
    db.close();
  }
}

class MasterLost extends Error {}

// ---------------------------------------------------------------------------------------------
// Planners: planning is synchronous file and SQLite work, so with --concurrency n > 1 each slot
// plans in a worker thread of its own and the cores share it; the main thread keeps the master
// I/O and every write (a plan only decides; a user with work is planned again under its lock).

export interface Planner {
  /** Whether plans come from another thread (then it pays to ask for upcoming users' plans early). */
  readonly parallel: boolean;
  /** Users asked for and not yet answered. */
  readonly load: number;
  /** One plan per user, in order; a thread gets them in one message and answers in one. */
  plan(userIds: UserId[]): Array<Promise<UserPlan>>;
  close(): Promise<void>;
}

/** Worker threads need the compiled module; under a TS runner (tests) planning stays in this thread. */
const CAN_USE_WORKERS = import.meta.url.endsWith('.js');

/** Users per message to a planner thread: one message per user costs as much as a tenth of a plan. */
const PLAN_BATCH = 16;

function inlinePlanner(ctx: PlanContext): Planner {
  return { parallel: false, load: 0, plan: (ids) => ids.map(async (id) => planUser(ctx, id)), close: async () => undefined };
}

type PlanResult = { plan: UserPlan } | { error: string };
type PlannerReply = { userIds: number[]; results: PlanResult[] } | { ready: true };

/**
 * A planner in a worker thread. Until the thread has booted (~0.1 s), and if it cannot start or
 * dies, it plans in this thread instead: a small run need not wait for threads.
 */
/** A planner on a worker thread: a warm one (started early, waiting for its context), or one started now. */
function workerPlanner(ctx: PlanContext, warm?: Worker): Planner {
  const inline = inlinePlanner(ctx);
  let w: Worker;
  try {
    w = startOrHand(warm, new URL(import.meta.url), 'backfill', ctx);
  } catch {
    return inline;
  }
  type Waiter = { userId: number; resolve: (p: UserPlan) => void; reject: (e: unknown) => void };
  // Requests are answered in the order they were sent.
  const pending: Waiter[][] = [];
  let load = 0;
  let dead = false;
  let ready = false;
  const planHere = (x: Waiter) => inline.plan([x.userId])[0]!.then(x.resolve, x.reject);
  const fallBack = () => {
    dead = true;
    load = 0;
    for (const batch of pending.splice(0)) for (const x of batch) void planHere(x);
  };
  w.on('message', (m: PlannerReply) => {
    if ('ready' in m) {
      ready = true;
      return;
    }
    const batch = pending[0];
    if (!batch || batch[0]?.userId !== m.userIds[0]) return;
    pending.shift();
    load -= batch.length;
    batch.forEach((x, k) => {
      const r = m.results[k];
      if (r && 'plan' in r) x.resolve(r.plan);
      // Not a verdict on the user: a bug or a failure in the thread itself. Plan here instead.
      else void planHere(x);
    });
  });
  w.on('error', fallBack);
  w.on('exit', fallBack);
  return {
    get parallel() {
      return ready && !dead;
    },
    get load() {
      return load;
    },
    plan: (userIds) => {
      if (dead || !ready) return inline.plan(userIds);
      const batch: Waiter[] = [];
      const out = userIds.map((userId) => new Promise<UserPlan>((resolve, reject) => batch.push({ userId, resolve, reject })));
      pending.push(batch);
      load += batch.length;
      w.postMessage(userIds);
      return out;
    },
    close: async () => {
      w.removeAllListeners('exit');
      w.removeAllListeners('error');
      dead = true;
      await w.terminate().catch(() => undefined);
    },
  };
}

// Ready once it has its context (a warm thread is handed it by message); every message of ours, users to plan.
let plannerCtx: PlanContext | undefined;
const plannerPort = threadInput<PlanContext>('backfill', (ctx, port) => {
  plannerCtx = ctx;
  port.postMessage({ ready: true } satisfies PlannerReply);
});
if (plannerPort) {
  plannerPort.on('message', (m: number[] | { acm2Input: PlanContext }) => {
    if (!Array.isArray(m)) return;
    const ctx = plannerCtx;
    const results = m.map((userId): PlanResult => {
      try {
        if (!ctx) throw new Error('backfill planner was given users before its context');
        return { plan: planUser(ctx, userId) };
      } catch (e) {
        return { error: e instanceof Error ? (e.stack ?? e.message) : String(e) };
      }
    });
    plannerPort.postMessage({ userIds: m, results } satisfies PlannerReply);
  });
}

// ---------------------------------------------------------------------------------------------
// The run

/**
 * Plan (dryRun) or apply the backfill over the selected users, in keyset order.
 * Throws UsageError for bad input (unknown --user, a resume with other options) and
 * UnavailableError when the master goes away (users in flight finish first).
 */
export async function runBackfill(deps: BackfillDeps, opts: BackfillOptions = {}): Promise<BackfillResult> {
  const started = Date.now();
  const concurrency = Math.max(1, opts.concurrency ?? 1);
  const given = deps.planners;
  const usable =
    given &&
    given.planners.length === concurrency &&
    given.ctx.dataDir === deps.dataDir &&
    given.ctx.busyTimeoutMs === (deps.busyTimeoutMs ?? 250) &&
    (deps.migrations === undefined || given.ctx.migrations === deps.migrations) &&
    given.ctx.seedVersion === deps.pkg.version
      ? given
      : undefined;
  // Otherwise started first, so that the threads boot while the master is read.
  const own = usable ? undefined : startPlanners({ ...deps, seedVersion: deps.pkg.version }, concurrency);
  const p = (usable ?? own)!;
  let lock: UserLock | undefined;
  try {
    // Bad input is refused before anything is written (the lock's file, on the embedded master).
    if (opts.userIds) await refuseUnknownUsers(deps.master, opts.userIds);
    // One run per progress record at a time: a second would reset the first's progress under it.
    if (!opts.dryRun) {
      lock = await tryLockNamed(deps.master, deps.dataDir, `backfill:${progressName(opts.shard)}`);
      if (!lock) {
        const which = opts.shard ? ` --shard ${opts.shard.index}/${opts.shard.count}` : '';
        throw new UnavailableError(`another \`acm2 backfill${which}\` is running against this master; wait for it to finish, or stop it and run again with --resume`, 'backfill_running');
      }
    }
    return await backfillWith(deps, opts, p.ctx, p.planners, started);
  } finally {
    await lock?.release();
    await own?.close();
  }
}

/** dropLiveDbAliases for every user in staging that `mine` selects; a name it cannot drop stays for the next run. */
function dropStagedAliases(dataDir: string, mine: (id: UserId) => boolean): void {
  const dir = toolDir(dataDir, 'staging');
  // Only in the data dir's own staging: a symlinked one leads to files that are not the tool's
  // (the seed refuses it, with exit 3).
  if (toolDirProblem(dataDir, 'staging')) return;
  let names: string[];
  try {
    names = existsSync(dir) ? readdirSync(dir) : [];
  } catch {
    return;
  }
  const users = new Set<UserId>();
  for (const name of names) {
    const m = /^user_([1-9][0-9]*)-.*\.db$/.exec(name);
    if (m && mine(Number(m[1]))) users.add(Number(m[1]));
  }
  for (const id of users) {
    try {
      dropLiveDbAliases(dataDir, id, names);
    } catch {
      /* the next backfill tries again: the name holds nothing but the live DB */
    }
  }
}

async function refuseUnknownUsers(master: MasterDb, userIds: UserId[]): Promise<void> {
  const ids = [...new Set(userIds)].sort((a, b) => a - b);
  const found = new Set((await master.listUsers({ afterId: 0, limit: ids.length, ids })).map((u) => u.id));
  const missing = ids.filter((id) => !found.has(id));
  if (missing.length > 0) throw new UsageError(`no user with id ${missing.join(', ')} in the master`, 'unknown_user');
}

/** The planning slots of a backfill; see BackfillDeps.planners. */
export interface BackfillPlanners {
  readonly ctx: PlanContext;
  readonly planners: readonly Planner[];
  close(): Promise<void>;
}

/**
 * Start the planning slots of a backfill with `concurrency` slots ahead of runBackfill (threads
 * take a while to boot: a caller can start them before it checks the package and opens the master).
 */
export function startPlanners(deps: Pick<BackfillDeps, 'dataDir' | 'busyTimeoutMs' | 'migrations'> & { seedVersion?: string }, concurrency = 1, warm?: WarmWorkers): BackfillPlanners {
  const n = Math.max(1, concurrency);
  const ctx: PlanContext = { dataDir: deps.dataDir, busyTimeoutMs: deps.busyTimeoutMs ?? 250, migrations: deps.migrations ?? userMigrations(), seedVersion: deps.seedVersion };
  const planners = Array.from({ length: n }, () => (n > 1 && CAN_USE_WORKERS ? workerPlanner(ctx, warm?.take()) : inlinePlanner(ctx)));
  let closing: Promise<void> | undefined;
  return { ctx, planners, close: () => (closing ??= Promise.all(planners.map((x) => x.close())).then(() => undefined)) };
}

async function backfillWith(deps: BackfillDeps, opts: BackfillOptions, ctx: PlanContext, planners: readonly Planner[], started: number): Promise<BackfillResult> {
  const { master } = deps;
  const dryRun = Boolean(opts.dryRun);
  const name = progressName(opts.shard, opts.userIds !== undefined);
  const batchSize = Math.max(1, opts.batchSize ?? 500);
  const selection = JSON.stringify({ users: opts.userIds ? [...opts.userIds].sort((a, b) => a - b) : null, shard: opts.shard ?? null, limit: opts.limit ?? null });
  const ids = opts.userIds && [...new Set(opts.userIds)].sort((a, b) => a - b);
  const inShard = (id: number) => !opts.shard || id % opts.shard.count === opts.shard.index;
  // Named as every seeder is: a job it claims and dies with is seen as its at once (worker-name.ts).
  const worker = workerName();

  let lost: unknown;
  // A master that went away is not asked again, nor is a corrupt one (more writes into a damaged
  // file can only make it worse); one that refused a statement (a grant missing, its disk full, its
  // write lock held past the wait by another process) still answers: the users in flight finish
  // and the progress is saved.
  const refusal = (e: unknown) => isAcm2Error(e) && e.code !== 'master_unreachable' && e.code !== 'master_corrupt';
  const unreachable = () => lost !== undefined && !refusal(lost);
  const m = async <T>(fn: () => Promise<T>): Promise<T> => {
    if (unreachable()) throw new MasterLost();
    try {
      return await fn();
    } catch (e) {
      // The first error is the one to report, unless the master went away after refusing one.
      if (lost === undefined || (refusal(lost) && isAcm2Error(e) && !refusal(e))) lost = e;
      throw new MasterLost();
    }
  };

  // Where to start, and what an earlier attempt of this job already did.
  let cursor = 0;
  let resumed = false;
  let resumedFinished: string | undefined;
  const savedCounts: Partial<Record<BackfillAction, number>> = {};
  const failures: BackfillFailure[] = [];
  const recordedAbove = new Map<number, BackfillItem>();
  let nothingToResume = false;
  if (opts.resume) {
    const p = await master.getBackfill(name);
    if (!p) nothingToResume = true;
    if (p) {
      if (p.options !== selection) {
        throw new UsageError(`the backfill to resume ran with other options (${p.options}); give the same --user/--shard/--limit, or run without --resume to start over`, 'resume_mismatch');
      }
      resumed = true;
      cursor = p.cursor;
      // A finished job has nothing left but users added since: its counts are not this run's.
      if (p.status === 'done') resumedFinished = p.updatedAt;
      else {
        Object.assign(savedCounts, p.counts);
        const items = await master.backfillItems(name);
        // Earlier versions recorded a user the full disk stopped as a final failure and moved the
        // cursor past it: take the cursor back below the first such user, so this resume retries it
        // (the items between are replayed, and counted again, as for any user above the cursor).
        const stuck = items.filter((i) => i.userId <= cursor && diskFullItem(i)).map((i) => i.userId);
        if (stuck.length > 0) {
          cursor = Math.min(...stuck) - 1;
          for (const item of items) {
            if (item.userId <= cursor || item.userId > p.cursor || !isAction(item.outcome)) continue;
            const n = (savedCounts[item.outcome] ?? 0) - 1;
            if (n > 0) savedCounts[item.outcome] = n;
            else delete savedCounts[item.outcome];
          }
        }
        for (const item of items) {
          if (item.userId > cursor) recordedAbove.set(item.userId, item);
          else if (item.outcome === 'fail') failures.push(itemFailure(item));
        }
      }
    }
  }
  if (!dryRun && !resumed) {
    await master.resetBackfill(name);
    await master.saveBackfill({ name, status: 'running', cursor: 0, options: selection, counts: {} });
  }

  // A seed killed between linking its build into place and removing the staged name (this run's
  // earlier attempt, or any seeder) left the live DB under a second name in staging: a ready user
  // is never seeded again to drop it, so the backfill does, for the users it goes over.
  if (!dryRun) dropStagedAliases(deps.dataDir, (id) => inShard(id) && (!ids || ids.includes(id)));

  const counts: Partial<Record<BackfillAction, number>> = { ...savedCounts };
  const users: BackfillUserReport[] = [];
  let usersOmitted = 0;
  let readyWithOtherVersion = 0;
  let readyWithOtherVersionSeededBefore = 0;
  let failuresNow = 0;
  let diskFull = false;
  let stopped: BackfillResult['stopped'];
  const already = Object.values(savedCounts).reduce((a, n) => a + (n ?? 0), 0);
  let taken = already;

  const total = await estimateTotal(master, ids, opts, already);
  deps.progress?.start(dryRun ? 'planning' : 'backfill', total);

  // Cursor bookkeeping: users are taken in id order; the cursor moves past a user only when it
  // and every user before it are done, so a resume never skips one that was in flight.
  const window: Array<{ id: number; outcome?: BackfillAction }> = [];
  const settle = {
    add() {
      while (window.length > 0 && window[0]!.outcome) {
        const e = window.shift()!;
        cursor = e.id;
        savedCounts[e.outcome!] = (savedCounts[e.outcome!] ?? 0) + 1;
      }
    },
  };

  // Final items wait here and go to the master a page at a time, always before a progress record
  // whose cursor covers them: a user's outcome is queued before the cursor can move past it, and
  // a save writes the queued items first, so the master never holds a cursor past a user whose item
  // it lacks. An item lost in a crash only means that user is planned again (and found done).
  const queued: BackfillItem[] = [];
  const queueItem = (item: BackfillItem): void => {
    queued.push(item);
  };
  let lastSave = Date.now();
  let saving: Promise<void> = Promise.resolve();
  /** The cursor of the last progress record the master took (what --resume starts after). */
  let savedCursor: number | undefined = dryRun ? undefined : cursor;
  const save = (status: 'running' | 'done' | 'interrupted', force = false): Promise<void> => {
    if (dryRun) return Promise.resolve();
    const now = Date.now();
    if (!force && now - lastSave < (deps.saveEveryMs ?? 200) && queued.length < batchSize) return saving;
    lastSave = now;
    const items = queued.splice(0);
    const snapshot = { name, status, cursor, options: selection, counts: { ...savedCounts } };
    saving = saving
      .then(async () => {
        if (items.length > 0) await m(() => master.recordBackfillItems(name, items));
        await m(() => master.saveBackfill(snapshot));
        savedCursor = snapshot.cursor;
      })
      .catch(() => undefined);
    return saving;
  };

  const stopNow = (): boolean => {
    if (lost) return true;
    if (deps.shouldStop?.()) {
      stopped ??= 'interrupted';
      return true;
    }
    if (diskFull) {
      stopped ??= 'disk_full';
      return true;
    }
    if (opts.maxErrors !== undefined && failuresNow >= opts.maxErrors) {
      stopped ??= 'max_errors';
      return true;
    }
    return opts.limit !== undefined && taken >= opts.limit;
  };

  // The rest of the current page (ids not yet taken), so a planner thread can read the next
  // user while this one is applied; such an early plan is only a read, like any plan.
  let upcoming: number[] = [];
  let upcomingAt = 0;
  const early = new Map<number, Promise<UserPlan>>();
  async function* selected(): AsyncGenerator<MasterUser> {
    let after = cursor;
    for (;;) {
      const page = await m(() => master.listUsers({ afterId: after, limit: batchSize, ids }));
      if (page.length === 0) return;
      const mine = page.filter((u) => inShard(u.id));
      upcoming = mine.map((u) => u.id);
      upcomingAt = 0;
      for (const u of mine) {
        upcomingAt++;
        yield u;
      }
      after = page[page.length - 1]!.id;
      await save('running', true);
    }
  }
  const source = selected();
  // Plans go to the least busy planner thread, so that early plans keep every thread fed.
  const leastBusy = (): Planner | undefined => {
    let best: Planner | undefined;
    for (const p of planners) if (p.parallel && (!best || p.load < best.load)) best = p;
    return best;
  };
  const planFor = (own: Planner, id: UserId): Promise<UserPlan> => {
    const got = early.get(id);
    if (got) early.delete(id);
    // This user's request first: a planner answers in order.
    const plan = got ?? (leastBusy() ?? own).plan([id])[0]!;
    // Ask for upcoming users nobody is planning yet, a batch at a time, about two batches per thread.
    let i = upcomingAt;
    while (!stopNow() && early.size < planners.length * PLAN_BATCH) {
      const to = leastBusy();
      if (!to) break;
      const batch: UserId[] = [];
      for (; i < upcoming.length && batch.length < PLAN_BATCH; i++) {
        const next = upcoming[i]!;
        if (!early.has(next) && !finalItem(recordedAbove.get(next))) batch.push(next);
      }
      if (batch.length === 0) break;
      to.plan(batch).forEach((p, k) => early.set(batch[k]!, p));
    }
    return plan;
  };

  let backupsKept = 0;
  const record = (r: BackfillUserReport) => {
    counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
    if (r.backup && r.outcome !== 'fail') backupsKept++;
    if (r.outcome === 'fail') {
      failuresNow++;
      if (r.code === 'disk_full') diskFull = true;
      failures.push({ id: r.id, action: r.action, code: r.code ?? 'error', reason: r.reason ?? '' });
    }
    if (users.length < USERS_LISTED) users.push(r);
    else usersOmitted++;
    deps.progress?.tick(1, failures.length > 0 ? `${failures.length} failed` : undefined);
  };

  const applyDeps: ApplyDeps = { deps, ctx, m, worker, name, queueItem };

  let lastYield = Date.now();
  const run = async (planner: Planner): Promise<void> => {
    for (;;) {
      if (stopNow()) return;
      let next: IteratorResult<MasterUser>;
      try {
        next = await source.next();
      } catch (e) {
        if (e instanceof MasterLost) return;
        throw e;
      }
      if (next.done || stopNow()) return;
      const user = next.value;
      taken++;
      const entry: { id: number; outcome?: BackfillAction } = { id: user.id };
      window.push(entry);
      let report: BackfillUserReport | undefined;
      const prior = recordedAbove.get(user.id);
      if (finalItem(prior)) {
        report = reportFromItem(prior);
      } else {
        const plan = await planFor(planner, user.id);
        // Ready with another version, whatever else the plan does to it (a migration, a chmod):
        // backfill leaves its version as it is, and the summary says so of every such user.
        if (plan.seedVersion !== undefined && plan.seedVersion !== deps.pkg.version) {
          readyWithOtherVersion++;
          if (plan.seededBefore) readyWithOtherVersionSeededBefore++;
        }
        report = dryRun ? planReport(plan) : await applyUser(applyDeps, plan, prior);
      }
      // Not started because the master went away: the cursor must never move past this user.
      if (!report) return;
      // A user the full disk stopped is not done: the cursor stays below it, so --resume, once
      // there is space, applies it again (its write-ahead item says what it had begun).
      if (!stoppedByDiskFull(report)) entry.outcome = report.outcome;
      record(report);
      settle.add();
      await deps.onUser?.(report);
      await save('running');
      // Let timers and signals in: the embedded master and the DB work are synchronous, so
      // without this a SIGINT would only be seen once every user is done. A few ms apart is enough.
      if (Date.now() - lastYield >= 5) {
        await new Promise((r) => setImmediate(r));
        lastYield = Date.now();
      }
    }
  };
  await Promise.all(planners.map(run));
  await source.return(undefined).catch(() => undefined);
  deps.progress?.done();

  if (lost) {
    await save('interrupted', true);
    throw stoppedByMaster(master, lost, savedCursor, 'mid-run');
  }
  await save(stopped ? 'interrupted' : 'done', true);
  if (lost) throw stoppedByMaster(master, lost, savedCursor, 'while saving progress');

  let legacyLogs: LegacyLogsResult | undefined;
  if (opts.legacyLogsDir && !stopped) legacyLogs = await legacyLogsPass(deps, ctx, opts.legacyLogsDir, ids, inShard, batchSize, dryRun);

  // Slots finish users out of order (--concurrency > 1); reports list them by id, as with one slot.
  users.sort((a, b) => a.id - b.id);
  failures.sort((a, b) => a.id - b.id);
  return { dryRun, name, resumed, ...(nothingToResume ? { nothingToResume } : {}), ...(resumedFinished ? { resumedFinished } : {}), counts, users, usersOmitted, failures, seedVersion: deps.pkg.version, readyWithOtherVersion, readyWithOtherVersionSeededBefore, stopped, cursor, legacyLogs, ...(backupsKept > 0 ? { backups: { kept: backupsKept, dir: toolDir(deps.dataDir, 'backups') } } : {}), durationMs: Date.now() - started };
}

/**
 * The one error a backfill stopped by its master ends with. A refusal (a grant missing, its disk
 * full) is thrown as it is; a master locked past the wait, or corrupt, says so, with where
 * --resume will start; anything else is the master lost.
 */
function stoppedByMaster(master: MasterDb, lost: unknown, savedCursor: number | undefined, when: 'mid-run' | 'while saving progress'): unknown {
  const code = String((isAcm2Error(lost) ? (lost.cause as { code?: unknown } | undefined)?.code : undefined) ?? (isAcm2Error(lost) ? lost.code : ''));
  const saved = savedCursor === undefined ? 'no progress saved' : `progress is saved up to user ${savedCursor}`;
  if (isAcm2Error(lost) && lost.code === 'master_busy')
    return new UnavailableError(
      `the master ${master.display} stayed locked by another process past the wait (${code}) ${when}, so the backfill stopped with the users in flight finished or rolled back and ${saved}: let that process finish, or stop it, then run 'acm2 backfill --resume'`,
      'master_busy',
      { cause: lost },
    );
  if (isAcm2Error(lost) && lost.code === 'master_corrupt')
    return new UnavailableError(
      `the master ${master.display} is corrupt (${code}) ${when}, so the backfill stopped with the users in flight finished or rolled back and wrote nothing more to it (${saved}): restore it from a backup, then run 'acm2 backfill --resume'`,
      'master_corrupt',
      { cause: lost },
    );
  // The master answered, and refused (a grant missing, its disk full, read-only): that, as it is.
  if (isAcm2Error(lost) && lost.code !== 'master_unreachable') return lost;
  const why = lost instanceof Error ? lost.message : String(lost);
  if (when === 'while saving progress')
    return new UnavailableError(`lost the master ${master.display} while saving progress (${why}); run 'acm2 backfill --resume' once it is back`, 'master_unreachable', { cause: lost });
  return new UnavailableError(
    `lost the master ${master.display} mid-run (${why}); users in flight finished or rolled back; ` +
      `${saved}: run 'acm2 backfill --resume' once it is back`,
    'master_unreachable',
    { cause: lost },
  );
}

async function estimateTotal(master: MasterDb, ids: number[] | undefined, opts: BackfillOptions, already: number): Promise<number> {
  let n = ids ? ids.length : await master.countUsers();
  if (opts.shard) n = Math.ceil(n / opts.shard.count);
  if (opts.limit !== undefined) n = Math.min(n, opts.limit);
  return Math.max(0, n - already);
}

function planReport(plan: UserPlan): BackfillUserReport {
  const r: BackfillUserReport = { id: plan.userId, action: plan.action, outcome: plan.action, steps: describeSteps(plan.steps) };
  if (plan.failure) {
    r.code = plan.failure.code;
    r.reason = plan.failure.reason;
  }
  return r;
}

/** Items keep the failure code in front of the reason: "[locked] the DB is locked…". */
function itemReason(r: BackfillUserReport): string | null {
  return r.outcome === 'fail' ? `[${r.code ?? 'error'}] ${r.reason ?? ''}` : null;
}

function parseReason(reason: string | null): { code: string; reason: string } {
  const m = /^\[([a-z_]+)\] ([\s\S]*)$/.exec(reason ?? '');
  return m ? { code: m[1]!, reason: m[2]! } : { code: 'error', reason: reason ?? '' };
}

function itemFailure(item: BackfillItem): BackfillFailure {
  const p = parseReason(item.reason);
  return { id: item.userId, action: 'fail', code: p.code, reason: p.reason };
}

function isAction(s: string | null | undefined): s is BackfillAction {
  return (BACKFILL_ACTIONS as readonly string[]).includes(String(s));
}

function stoppedByDiskFull(r: BackfillUserReport): boolean {
  return r.outcome === 'fail' && r.code === 'disk_full';
}

/**
 * An item a resume replays as this user's outcome. Not a write-ahead 'running' item (the attempt
 * was cut short: redo it), nor a failure on a full disk (recorded so by earlier versions: retry it).
 */
function finalItem(item: BackfillItem | undefined): item is BackfillItem {
  return item !== undefined && item.outcome !== 'running' && !diskFullItem(item);
}

/** A failure on a full disk, as earlier versions recorded it (final, with the cursor past it). */
function diskFullItem(item: BackfillItem): boolean {
  return item.outcome === 'fail' && parseReason(item.reason).code === 'disk_full';
}

function reportFromItem(item: BackfillItem): BackfillUserReport {
  const outcome = isAction(item.outcome) ? item.outcome : 'ok';
  const r: BackfillUserReport = { id: item.userId, action: outcome, outcome, steps: ['done by an earlier attempt of this backfill'] };
  if (outcome === 'fail') {
    const p = parseReason(item.reason);
    r.code = p.code as BackfillFailureCode;
    r.reason = p.reason;
  }
  return r;
}

interface ApplyDeps {
  deps: BackfillDeps;
  ctx: PlanContext;
  m: <T>(fn: () => Promise<T>) => Promise<T>;
  worker: string;
  name: string;
  /** Where a user's final item goes (written with the next progress save). */
  queueItem: (item: BackfillItem) => void;
}

/**
 * Apply one user's plan. A write-ahead item ('running', with the planned action) goes to the
 * master first, so a resume after a crash reports what this attempt did even if the redo finds
 * nothing left to do. Local work never depends on the master once started.
 */
async function applyUser(a: ApplyDeps, plan: UserPlan, prior: BackfillItem | undefined): Promise<BackfillUserReport | undefined> {
  const { deps, ctx, m, name } = a;
  // An earlier attempt that crashed after its write-ahead item may have done part of its plan:
  // the redo does the rest, and the user's outcome is the earlier plan's action (or the redo's,
  // if that is more significant), whatever instant the crash came at.
  const earlier = prior?.outcome === 'running' && isAction(prior.reason) ? prior.reason : undefined;
  const finish = async (r: BackfillUserReport): Promise<BackfillUserReport> => {
    if (earlier && r.outcome !== 'fail') {
      const top = moreSignificant(earlier, r.action);
      if (top !== r.action) {
        r.steps = r.action === 'ok' ? ['done by an earlier attempt of this backfill'] : ['begun by an earlier attempt of this backfill', ...r.steps];
        r.action = top;
        r.outcome = top;
      }
    }
    // Left 'running' (the write-ahead item): a resume redoes the user rather than replay the failure.
    if (!stoppedByDiskFull(r)) a.queueItem({ userId: r.id, outcome: r.outcome, reason: itemReason(r) });
    return r;
  };
  // A user an earlier attempt worked on (and seeded) may still have the seed job it claimed marked
  // running, killed between the seed's commit and the job's close: closed under the user's lock below.
  if (plan.action === 'ok' && !earlier) return finish(planReport(plan));
  if (plan.action === 'fail') return finish(planReport(plan));

  try {
    await m(() => deps.master.recordBackfillItem(name, { userId: plan.userId, outcome: 'running', reason: plan.action }));
  } catch {
    // The master is gone before this user started: leave the user untouched.
    return undefined;
  }

  let lock: UserLock | undefined;
  try {
    lock = deps.master.capabilities.advisoryLocks ? await m(() => tryLockUser(deps.master, ctx.dataDir, plan.userId)) : await tryLockUser(deps.master, ctx.dataDir, plan.userId);
  } catch (e) {
    if (e instanceof MasterLost) return undefined;
    return finish(failReport(plan, classify(e, ctx.dataDir, plan.userId)));
  }
  // A user with nothing left to do (only a job the earlier attempt may have left running to close):
  // whoever holds its lock is a seeder, which closes that job itself; not a failure of this run.
  if (!lock && plan.action === 'ok') return finish(planReport(plan));
  if (!lock) return finish(failReport(plan, { code: 'user_busy', reason: 'the user is being seeded by another process; run the backfill again later' }));
  let report: BackfillUserReport;
  try {
    // The page of users was read a while ago: a user deleted from the master since then must not
    // get a DB or files again (they would be orphans).
    const still = await m(() => deps.master.getUser(plan.userId)).catch((e) => {
      if (e instanceof MasterLost) return null;
      throw e;
    });
    if (still === null) return undefined;
    if (!still) return finish({ id: plan.userId, action: 'ok', outcome: 'ok', steps: ['deleted from the master during the backfill: left alone'] });
    // Decide again under the lock: another process may have changed the user meanwhile.
    report = await execute(a, planUser(ctx, plan.userId), lock, earlier);
  } catch (e) {
    report = failReport(plan, classify(e, ctx.dataDir, plan.userId));
  } finally {
    await lock.release().catch(() => undefined);
  }
  return finish(report);
}

function failReport(plan: UserPlan, f: { code: BackfillFailureCode; reason: string }): BackfillUserReport {
  return { ...planReport(plan), outcome: 'fail', code: f.code, reason: f.reason };
}

async function execute(a: ApplyDeps, plan: UserPlan, lock: UserLock, earlier?: BackfillAction): Promise<BackfillUserReport> {
  const { ctx } = a;
  const r = planReport(plan);
  if (plan.action === 'ok' && earlier) await closeSeededJob(a, plan.userId);
  if (plan.action === 'fail' || plan.action === 'ok') return r;
  const id = plan.userId;
  // Permissions first: the steps below can make the user ready (user_meta, a seed's commit), and a
  // kill right after that must not leave a ready user whose DB or files others may still read.
  const perms = plan.steps.find((s): s is Extract<PlanStep, { kind: 'permissions' }> => s.kind === 'permissions');
  if (perms) tightenPermissions(perms.paths);
  const adopt = plan.steps.find((s): s is Extract<PlanStep, { kind: 'adopt' | 'repair' }> => s.kind === 'adopt' || s.kind === 'repair');
  const migrate = plan.steps.find((s): s is Extract<PlanStep, { kind: 'migrate' }> => s.kind === 'migrate');
  const legacyMeta = plan.steps.some((s) => s.kind === 'meta_legacy');
  let metaDone = false;
  if (adopt || migrate) {
    const res = await migrateSafely({
      dbPath: userDbPath(ctx.dataDir, id),
      backupDir: toolDir(ctx.dataDir, 'backups', `user_${id}`),
      label: `user_${id}`,
      adopt: adopt?.drift,
      migrations: migrate?.migrations ?? [],
      busyTimeoutMs: ctx.busyTimeoutMs,
      // The legacy user_meta goes in the same commit: current and ready at once, or neither.
      extra: legacyMeta ? (db) => (insertLegacyMeta(db, id) ? ['user_meta ready (legacy)'] : []) : undefined,
    });
    metaDone = legacyMeta;
    if (res.backupPath) r.backup = res.backupPath;
    if (!res.ok) {
      const f = res.failure!;
      // A full disk stops the whole run (see record): every next user would fail the same way.
      const how =
        f.restoredFrom === 'backup'
          ? `the DB was restored from the backup ${res.backupPath}`
          : f.restoredFrom === 'rollback'
            ? `rolled back, nothing changed (backup kept at ${res.backupPath})`
            : f.restoredFrom === 'committed'
              ? `the migration was committed and ACM2 may have written since, so nothing was restored: check the user with acm2 verify --user ${id} (backup of the DB before the migration kept at ${res.backupPath})`
              : f.restoredFrom === 'ended'
                ? `the migration's transaction ended early and ACM2 wrote to the DB since, so nothing was restored over that: check the user with acm2 verify --user ${id} (backup of the DB before the migration kept at ${res.backupPath})`
              : 'nothing was changed';
      if (f.code === 'corrupt') return { ...r, outcome: 'fail', code: f.code, reason: corruptDb(ctx.dataDir, id, f.message, how) };
      return { ...r, outcome: 'fail', code: f.code, reason: `${f.message}; ${how}` };
    }
  }
  if (legacyMeta && !metaDone) writeLegacyMeta(ctx.dataDir, id, ctx.busyTimeoutMs);
  const seed = plan.steps.find((s): s is Extract<PlanStep, { kind: 'seed' }> => s.kind === 'seed');
  if (seed) {
    const err = await seedWithJob(a, id, lock);
    if (err) return { ...r, outcome: 'fail', ...err };
  }
  return r;
}

/** Seed under the lock we hold, keeping an open seed job (if the user has one) in step. */
async function seedWithJob(a: ApplyDeps, userId: UserId, lock: UserLock): Promise<{ code: BackfillFailureCode; reason: string } | undefined> {
  const { deps, m, worker } = a;
  const job = await m(async () => {
    // A user whose last seed job failed for good gets a new one, as \`user seed\` would: otherwise
    // the master would go on saying failed about a user this seed made ready.
    // Made and claimed in one transaction, as for a direct seed.
    const latest = await deps.master.latestJob(userId);
    // We hold the user's lock: a job of it marked running has no live seeder and is taken over.
    return deps.master.claimJobForUser(userId, worker, LEASE_MS, undefined, deps.pkg.version, latest?.status === 'failed' ? {} : undefined, true);
  }).catch((e) => {
    if (e instanceof MasterLost) return undefined;
    throw e;
  });
  try {
    await seedUserAsync({ dataDir: deps.dataDir, userId, pkg: deps.pkg, lock, onStep: deps.onSeedStep });
  } catch (e) {
    const error = e instanceof Error ? e.message : String(e);
    const diskFull = isAcm2Error(e) && e.code === 'disk_full';
    if (job) {
      const outcome = diskFull
        ? ({ status: 'pending', error, nextAttemptAt: Date.now() + backoffMs(1), notAttempted: true } as const)
        : job.attempts >= job.maxAttempts || needsOperator(e)
          ? ({ status: 'failed', error } as const)
          : ({ status: 'pending', error, nextAttemptAt: Date.now() + backoffMs(job.attempts) } as const);
      await m(() => deps.master.finishJob(job.id, worker, outcome)).catch(() => undefined);
    }
    if (diskFull) return { code: 'disk_full', reason: error };
    // The seed's sentence names its own rerun (acm2 user seed): this one names the backfill's.
    if (e instanceof CorruptUserDbError) return { code: 'corrupt', reason: corruptDb(deps.dataDir, userId, e.what, e.done) };
    return { code: 'seed_failed', reason: error };
  }
  if (job)
    await m(async () => {
      if (await deps.master.finishJob(job.id, worker, { status: 'done' })) await deps.master.supersedeOlderJobs(userId, job.id);
    }).catch(() => undefined);
  return undefined;
}

/**
 * An earlier attempt of this backfill seeded the user and was stopped at once (a second Ctrl-C, a
 * lost SSH session, kill -9) before it closed the seed job it had claimed: the job would stay
 * running, the user pending in the master, until a drain came by after its lease, and verify would
 * then report it. We hold the user's lock, so no live seeder has it: it is closed now.
 */
async function closeSeededJob(a: ApplyDeps, userId: UserId): Promise<void> {
  const { deps, m, worker } = a;
  if (!readyAt(deps.dataDir, userId, deps.pkg.version)) return;
  await m(async () => {
    const job = await deps.master.claimJobForUser(userId, worker, LEASE_MS, undefined, deps.pkg.version, undefined, true);
    if (job && (await deps.master.finishJob(job.id, worker, { status: 'done' }))) await deps.master.supersedeOlderJobs(userId, job.id);
  }).catch(() => undefined); // the master gone: the job stays as it was, for the next run
}

// ---------------------------------------------------------------------------------------------
// Legacy logs

async function legacyLogsPass(
  deps: BackfillDeps,
  ctx: PlanContext,
  dir: string,
  ids: number[] | undefined,
  inShard: (id: number) => boolean,
  batchSize: number,
  dryRun: boolean,
): Promise<LegacyLogsResult> {
  const candidates = new Set(listLegacyRuns(dir));
  const owners = new Map<string, UserId[]>();
  const unchecked: UserId[] = [];
  const selected = (id: number) => inShard(id) && (ids === undefined || ids.includes(id));
  if (candidates.size > 0) {
    let after = 0;
    // Every user's DB, not only this shard's or --user's: a run two users hold must be seen as
    // held twice (and left alone) whichever of them this pass was given.
    for (;;) {
      let page: MasterUser[];
      try {
        page = await deps.master.listUsers({ afterId: after, limit: batchSize });
      } catch (e) {
        throw new UnavailableError(`lost the master ${deps.master.display} while finding the owners of legacy logs (${(e as Error).message}); run the backfill again`, 'master_unreachable', {
          cause: e,
        });
      }
      if (page.length === 0) break;
      for (const u of page) {
        try {
          for (const run of runsOwnedBy(ctx.dataDir, u.id, candidates, ctx.busyTimeoutMs)) owners.set(run, [...(owners.get(run) ?? []), u.id]);
        } catch {
          unchecked.push(u.id);
        }
      }
      after = page[page.length - 1]!.id;
    }
  }
  // A run held by one user outside this selection is that user's pass's to move.
  const elsewhere = new Set([...owners].filter(([, us]) => us.length === 1 && !selected(us[0]!)).map(([run]) => run));
  // Each run is moved under its owner's lock: another backfill (a shard and a whole run at once)
  // or a seed of that user does not work in the same folders meanwhile.
  const lockOwner = (id: UserId) => tryLockUser(deps.master, ctx.dataDir, id);
  return moveLegacyLogs({ dir, dataDir: ctx.dataDir, owners, uncheckedUsers: unchecked, dryRun, elsewhere, lockOwner });
}

// Seeds one user from a package: remaps every identifier, writes DB rows and files, and makes
// one atomic step the commit point. Anything before it is invisible to ACM2 (425) and safe to
// redo; a rerun reuses the ID map an earlier attempt made durable and converges.
//
// Protocol, for a user without a DB (the common case):
//   1. build the whole DB off to the side (staging, as `.building`: template copy, map, rows,
//      seeded-file list, status `ready`) with its journal in memory; make it durable, then rename
//      it to `.db` and make that name durable ('db_staged'). Nobody can see it. A `.db` in staging
//      is a whole build whose map may name files already written: it is never thrown away but
//      adopted by the next attempt (below); a `.building` one never named a file on disk;
//   2. write every file straight to its place under user_{id}/ ('files_staged'), then make files
//      and folders durable ('files_moved');
//   3. link the staged DB into place as user_{id}.db ('linked') and make the data dir durable
//      ('committed'). The link is the commit point: the DB appears complete and ready, or not at all.
// If such an attempt fails after step 1 (say ENOSPC), or a later attempt finds its `.db` left by a
// crash, that DB is marked `failed` / `in_progress` (a commit whose journal removal is durable
// too) and only then linked into place: never `ready` before its files are durable.
// A user that already has a DB (rerun after a crash past the link, an adopted attempt, --force, a
// DB with rows of its own) persists its map in its own DB ('migrated', 'map_persisted'), writes
// its files (step 2), and one transaction writes its rows, the seeded-file list and `ready`
// ('committed').
// Files are written in place rather than staged and renamed: before the commit point the map that
// names every target is durable (in the staged DB or in the user's own DB), so a rerun rewrites
// the same paths, and the targets are under the user's fresh run folder or files this seed
// recorded before.

import { randomUUID, randomBytes, createHash } from 'node:crypto';
import { chmodSync, closeSync, constants, copyFileSync, fstatSync, ftruncateSync, existsSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, renameSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { fsyncPath, lstatOrUndefined, statOrUndefined, syncFiles, syncFilesAsync, writeAll, writeFileDurable } from '../durable.js';
import path from 'node:path';
import type { SeedPackage } from '../seed/package.js';
import type { UserLock } from '../master/types.js';
import { preparePackage, renderCell, type PreparedPackage, type PreparedTable, type Cell } from '../seed/prepared.js';
import { extendMap, render, renderBytes, type MapEntry } from '../seed/remap.js';
import { quoteIdent } from '../seed/canonical.js';
import { detectSchemaDrift, listTables, migrateUserDb, openSqlite, openUserDb, unfillableColumns, userMigrations, type SchemaDrift, type SqliteDb } from '../userdb/user-db.js';
import { schemaWork } from './schema-work.js';
import { newerToolError, type Migration } from '../migrations.js';
import { backupStem, cleanPartialBackups, CorruptUserDbError, isBusy, isCorrupt, migrateSafely, quickCheck } from './migrate-safe.js';
import { userDbTemplate } from '../userdb/template.js';
import { entryKind, resolveInside, toolDir, toolDirProblem, userDbEntryProblem, userDbPath, userRoot, userRootProblem, type UserId } from '../userdb/paths.js';
import { classifyFsError, isAcm2Error, isDiskFull, NeedsOperatorError, needsOperator, UnavailableError } from '../errors.js';

export type SeedOutcome = 'seeded' | 'already_ready' | 'restored';

export interface SeedUserResult {
  userId: UserId;
  seedVersion: string;
  outcome: SeedOutcome;
  rows: number;
  files: number;
  bytes: number;
  seededAt: string;
  durationMs: number;
  /**
   * --force only: the backup kept of what it was about to overwrite (absent when the user's seeded
   * rows and files were already at the package state, so nothing was overwritten).
   */
  backup?: ForceBackup;
  /**
   * already_ready only, when the seed wrote user_meta although it rewrote none of the version's
   * rows or files: `from` is the version user_meta named before (the user moved back to this one,
   * as after CURRENT is rolled back), null when the row was missing and is written back.
   */
  readyAgain?: { from: string | null };
}

export interface ForceBackup {
  /** The backup folder: `user_{id}.db` (the whole DB), `user_{id}/…` (the files) and `manifest.json`. */
  path: string;
  /** Seeded rows the user had changed (present and different from the package's). */
  rows: number;
  /** Seeded files whose bytes differed from the package's rendering. */
  files: number;
}

export interface SeedUserInput {
  dataDir: string;
  userId: UserId;
  pkg: SeedPackage;
  force?: boolean;
  /** Test hook: called with the name of each step before it runs (crash tests kill there). */
  onStep?: (step: SeedStep) => void;
  /**
   * The user's lock, which the caller holds: asked at each barrier before a step another holder
   * could collide with (removing staging, writing the user's files, the link or commit). When it
   * is lost the seed stops there, changing nothing more: what it left is a crashed attempt's,
   * which the next holder adopts or removes.
   */
  lock?: UserLock;
}

export type SeedStep = 'db_staged' | 'migrated' | 'backed_up' | 'map_persisted' | 'files_staged' | 'files_moved' | 'linked' | 'committed';

/** Seed one user. The caller holds the user's lock. */
export function seedUser(input: SeedUserInput): SeedUserResult {
  return seedUserWith(input, syncNow);
}

/**
 * Seed one user with `sync` as each durability barrier (seedUser passes fsyncs). Tests pass a
 * recorder to check what reached a barrier before each step became visible.
 */
export function seedUserWith(input: SeedUserInput, sync: (t: ToSync) => void): SeedUserResult {
  if (input.lock) throw new Error('seedUserWith cannot ask a lock: use seedUserAsync');
  for (let go = 1; ; go++) {
    try {
      return driveSync(input, sync);
    } catch (e) {
      if (e instanceof RacedToTarget && go === 1) continue;
      throw asDiskFull(e, input);
    }
  }
}

/**
 * A fresh user's DB appeared while its seed built it in staging: ACM2 creates an empty one on the
 * user's first request (its key is out from `user create --async` on). The whole build waits in
 * staging, and the seed goes again at once: it now finds the DB and takes its build's map into
 * it, as it does for any build left beside a DB. Not a failure (it used to be a raw EEXIST, exit 1).
 */
class RacedToTarget extends Error {}

/**
 * A full disk met anywhere in a seed is disk_full (exit 3), whichever step met it: the steps the
 * seed's own error handling covers say so already, but taking up an earlier attempt's staged build
 * (a hot journal rolled back, user_meta marked) writes before them. A drain and backfill stop and
 * retry on disk_full; any other failure would spend the job's attempt, or fail the user for good.
 */
function asDiskFull(e: unknown, input: Pick<SeedUserInput, 'dataDir' | 'userId'>): unknown {
  if (isAcm2Error(e)) return e;
  const cause = isDiskFull(e) ? e : (e as { cause?: unknown } | undefined)?.cause;
  return cause !== undefined && isDiskFull(cause) ? (classifyFsError(cause, `user ${input.userId}'s data in ${input.dataDir}`) ?? e) : e;
}

function driveSync(input: SeedUserInput, sync: (t: ToSync) => void): SeedUserResult {
  const steps = seedSteps(input);
  let r = steps.next();
  while (!r.done) {
    let failed: unknown;
    try {
      sync(r.value);
    } catch (e) {
      failed = e ?? new Error('fsync failed');
    }
    r = failed === undefined ? steps.next() : steps.throw(failed);
  }
  return r.value;
}

/**
 * The same as seedUser, with each durability barrier's fsyncs issued together on the thread
 * pool instead of one after another (the journal commits them as a group).
 */
export async function seedUserAsync(input: SeedUserInput): Promise<SeedUserResult> {
  for (let go = 1; ; go++) {
    try {
      return await driveAsync(input);
    } catch (e) {
      if (e instanceof RacedToTarget && go === 1) continue;
      throw asDiskFull(e, input);
    }
  }
}

async function driveAsync(input: SeedUserInput): Promise<SeedUserResult> {
  await migrateExistingSafely(input.dataDir, input.userId);
  const steps = seedSteps(input);
  let r = steps.next();
  while (!r.done) {
    const { files, dirs, lock } = r.value;
    const [synced, held] = await Promise.allSettled([syncFilesAsync(files, dirs), lock && input.lock ? input.lock.check() : undefined]);
    if (held.status === 'rejected') {
      // Not thrown into the seed: its error paths write (a failed DB put in place), and another
      // holder may be at work on this user now. Only its finally blocks run.
      steps.return(undefined as unknown as SeedUserResult);
      throw held.reason;
    }
    const failed = synced.status === 'rejected' ? (synced.reason ?? new Error('fsync failed')) : undefined;
    r = failed === undefined ? steps.next() : steps.throw(failed);
  }
  return r.value;
}

/** A symlink, FIFO or folder at user_{id}.db (or a symlinked staging folder) is never opened, seeded through or replaced. */
function refuseOddDbEntry(dataDir: string, userId: UserId): void {
  const odd = userDbEntryProblem(dataDir, userId);
  if (odd) throw new NeedsOperatorError(`${odd}: nothing was seeded through it; put the user's database file itself there or move the entry aside, then run: acm2 user seed ${userId}`);
  refuseOddToolDir(dataDir);
}

/**
 * Staging's removals and renames must happen in the data dir's own .acm2/staging: a symlink
 * there (or a file) stops every seed alike, so it is the environment's fault (exit 3), not a user's.
 */
export function refuseOddToolDir(dataDir: string): void {
  const odd = toolDirProblem(dataDir, 'staging');
  if (odd) throw new UnavailableError(`${odd}: nothing was seeded; make it a plain folder of the data dir (remove the link), then run again`, 'bad_tool_dir');
}

/**
 * A user DB that exists and is not current (ACM2 made it itself, maybe with an older schema, or
 * an older tool seeded it) is brought up to date the way backfill does it: drift repaired and
 * migrations applied with a backup and proven row counts, or the seed stops with nothing changed.
 * The seed's own migrateUserDb then finds nothing to do.
 */
async function migrateExistingSafely(dataDir: string, userId: UserId): Promise<void> {
  try {
    await migrateExisting(dataDir, userId);
  } catch (e) {
    // Opening the DB read-write can write (a hot journal rolled back, a WAL DB's -shm created).
    const cause = (e as { cause?: unknown }).cause ?? e;
    // A DB held locked past the wait while its schema is read (a rollback-journal DB ACM2 is
    // writing): the environment, exit 3, as when it is met later in the seed.
    // Nothing of the user's was read yet, user_meta included: which version it is ready with, if
    // any, is not known here, so the error says what is: nothing was changed.
    if (!isAcm2Error(e) && isBusy(cause)) throw metaUnread(busyDb(cause, dataDir, userId)!, userId);
    if (!isAcm2Error(e) && isDiskFull(cause)) {
      throw new UnavailableError(`disk full while opening ${userDbPath(dataDir, userId)} before seeding (${String((cause as { code?: unknown }).code)})`, 'disk_full', { cause });
    }
    // Damaged since quick_check passed it, and met by a later read: the same verdict as quick_check's.
    if (!isAcm2Error(e) && !needsOperator(e) && isCorrupt(cause)) throw corruptDb(dataDir, userId, (cause as Error).message, 'nothing was seeded and it was left alone', cause);
    throw e;
  }
}

async function migrateExisting(dataDir: string, userId: UserId): Promise<void> {
  const file = userDbPath(dataDir, userId);
  refuseOddDbEntry(dataDir, userId);
  if (!existsSync(file)) return;
  let adopt: SchemaDrift | undefined;
  let migrations: Migration[];
  // No retry mends a corrupt DB, and every seed of an existing DB writes to it (in_progress,
  // its rows, a failure record): it is left as it is, the job failed at once, for an operator.
  const corrupt = (what: string, done: string) => corruptDb(dataDir, userId, what, done);
  // Read-write but only read, as backfill's planner: a hot journal is rolled back first.
  const db = openSqlite(file);
  try {
    let tables: Set<string>;
    let damage: string | undefined;
    try {
      tables = new Set(listTables(db));
      damage = quickCheck(db);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (typeof code === 'string' && (code.startsWith('SQLITE_NOTADB') || code.startsWith('SQLITE_CORRUPT'))) {
        throw new NeedsOperatorError(`${file} is not a readable SQLite database (${code}): nothing was changed; move it aside or restore it from a backup, then run: acm2 user seed ${userId}`, { cause: e });
      }
      throw new Error(`cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (damage) throw corrupt(`quick_check: ${damage}`, 'nothing was seeded and it was left alone');
    if (tables.size === 0) return; // an empty file: the seed builds the schema in it
    const work = schemaWork(db, tables, userId, userMigrations());
    if (!work.ok) {
      if (work.code === 'foreign_data') {
        throw new NeedsOperatorError(
          `${file} holds another user's data (${work.owners.join('; ')}), not user ${userId}'s: nothing was seeded and none of it was touched; move it out of the data dir, then run: acm2 user seed ${userId}`,
        );
      }
      if (work.code === 'schema_newer') throw newerToolError(`the user DB ${file}`, work.unknown, 'schema_newer');
      // What the DB holds decides these, and no retry changes it: the job fails at once.
      if (work.code === 'unrecognised') {
        throw new NeedsOperatorError(
          `${file} holds none of ACM2's tables (${work.tables.slice(0, 4).join(', ')}…), so it is not this user's ACM2 DB: nothing was seeded and it was left alone; move it out of the data dir, then run: acm2 user seed ${userId}`,
        );
      }
      throw new NeedsOperatorError(
        `${file} has schema drift that needs a table rebuild (${work.unrepairable.join('; ')}), which acm2 does not do: nothing was changed; rebuild those tables as migration 1 has them (or restore the DB from a backup), then run: acm2 user seed ${userId}`,
      );
    }
    // Refused before anything is adopted or migrated, as backfill's planner refuses it: the
    // seed's INSERT would fail on such a column every time, after changing the DB.
    const unfillable = unfillableColumns(db, work.adopt ?? work.repair ?? detectSchemaDrift(db));
    if (unfillable.length > 0) {
      throw new NeedsOperatorError(
        `${file} has ${unfillable.join(', ')} NOT NULL without a default (added by a later ACM2), so the seed's rows cannot be written; nothing was changed (the schema drift needs a table rebuild, which acm2 does not do)`,
      );
    }
    adopt = work.adopt;
    migrations = work.migrations;
  } finally {
    db.close();
  }
  if (!adopt && migrations.length === 0) return;
  const res = await migrateSafely({ dbPath: file, backupDir: toolDir(dataDir, 'backups', `user_${userId}`), label: `user_${userId}`, adopt, migrations });
  if (!res.ok) {
    const f = res.failure!;
    if (f.code === 'disk_full') throw new UnavailableError(`disk full while migrating ${file} before seeding (${f.message})`, 'disk_full');
    if (f.code === 'locked') throw busyDb(Object.assign(new Error(f.message), { code: 'SQLITE_BUSY' }), dataDir, userId, 1000)!;
    const how = `${f.restoredFrom === 'committed' ? 'committed; backup' : f.restoredFrom === 'ended' ? 'ended early, ACM2 wrote since, nothing restored; backup' : 'nothing changed; backup'} at ${res.backupPath ?? 'none'}`;
    // Corrupt since the look above, or found so by the migration itself.
    if (f.code === 'corrupt') throw corrupt(f.message, f.restoredFrom === 'untouched' ? 'nothing was seeded and it was left alone' : `nothing was seeded (the migration before it: ${how})`);
    throw new Error(`migrating ${file} before seeding failed: ${f.message} (${how})`);
  }
}

/**
 * A user DB that quick_check or SQLite calls corrupt: an operator's to mend (no retry does), so
 * the job fails at once; `done` says what the seed did to it.
 */
function corruptDb(dataDir: string, userId: UserId, what: string, done: string, cause?: unknown): CorruptUserDbError {
  const backups = toolDir(dataDir, 'backups', `user_${userId}`);
  return new CorruptUserDbError(userDbPath(dataDir, userId), what, done, backups, `acm2 user seed ${userId}`, cause === undefined ? undefined : { cause });
}

/** What must reach the disk before the next step: files' data and folders' entries. */
export interface ToSync {
  files: string[];
  dirs: string[];
  /** The next step is one another holder of the user could collide with: ask the lock first. */
  lock?: boolean;
}

function syncNow(t: ToSync): void {
  if (t.files.length > 0) syncFiles(t.files, t.files[0]!);
  for (const d of t.dirs) fsyncPath(d);
}

/** The seeding protocol; yields at each durability barrier (the driver fsyncs, then resumes). */
function* seedSteps(input: SeedUserInput): Generator<ToSync, SeedUserResult, void> {
  const started = Date.now();
  const { dataDir, userId, pkg } = input;
  const version = pkg.version;
  const step = input.onStep ?? (() => undefined);
  const prepared = preparePackage(pkg);
  refuseOddDbEntry(dataDir, userId);

  let leftovers = committedStaged(dataDir, userId);
  // A crashed attempt's build was put in place as the user's DB (in_progress) by this attempt.
  let placed = false;
  if (!existsSync(userDbPath(dataDir, userId)) && leftovers.length === 0) return yield* seedFresh(dataDir, userId, prepared, step, started);
  // Everything below may change what another holder would see: staging removed, a DB put in place.
  yield { files: [], dirs: [], lock: true };
  dropPartialBackups(dataDir, userId);
  if (!existsSync(userDbPath(dataDir, userId))) {
    const earlier = leftovers[0];
    if (!earlier) return yield* seedFresh(dataDir, userId, prepared, step, started);
    // A crashed attempt's whole build: its files may be on disk, named by its map. Put it in
    // place (in_progress) and finish through the existing-DB path, which reuses that map.
    placeStaged(earlier.file, dataDir, userId, earlier.version, 'in_progress');
    placed = true;
    leftovers = leftovers.slice(1);
  }

  // Whole builds of this version left beside a DB (something created the DB between attempts):
  // their maps join the DB's, so the files they may have written are rewritten, not orphaned.
  const inherited = leftovers.filter((l) => l.version === version).flatMap((l) => l.map);
  // Another version's build names files this seed will not rewrite: the ones it wrote, unchanged,
  // go with it (before its record does, so a crash here leaves the record to finish the job).
  const others = leftovers.filter((l) => l.version !== version);
  if (others.length > 0) {
    const keep = listedFiles(dataDir, userId);
    for (const l of others) removeBuildFiles(dataDir, userId, l.files.filter((f) => !keep.has(f.path)));
  }
  // A build whose map this seed takes up stays in staging until that map is in the DB: removed
  // before, a failure (the DB ACM2 just created being busy) or a crash in between would leave its
  // files on disk named by no map, and the next seed would write a second copy under new ids.
  let staged = inherited.length > 0;
  const dropStaged = () => {
    if (staged) cleanStaging(dataDir, userId);
    staged = false;
  };
  if (!staged) cleanStaging(dataDir, userId);
  let db: SqliteDb | undefined;
  let meta: MetaRow | undefined;
  // user_meta was read (meta is its row, or undefined for none): until then the seed cannot say
  // whether the user was ready, nor with which version.
  let metaRead = false;
  // Until --force's backup is whole, nothing of the user's is changed: a failure then (a full
  // disk) leaves the user as it was, not marked failed.
  let backingUp = false;
  // What this attempt has changed: nothing until persistMap commits its in_progress (begun), and
  // none of the user's seeded files or rows until it starts writing them (writing).
  const done: AttemptDone = { begun: false, writing: false };
  try {
    db = openUserDb(dataDir, userId);
    migrateUserDb(db);
    step('migrated');
    meta = readMeta(db, userId);
    metaRead = true;
    if (meta?.seed_status === 'ready' && meta.seed_version === version && !input.force) {
      dropStaged();
      return alreadyReady(db, userId, version, meta.seeded_at ?? '', started);
    }
    if (!input.force && meta && meta.seed_version !== version && readyBefore(db, version)) {
      // This version made the user complete before: then a seed of another version either
      // stopped part way (a crash: nothing marked it failed) or finished (the user moved on, and
      // now back, as when CURRENT is rolled back). Either way this version's rows and files are
      // the user's now, edits and all, so they are not rewritten (that is --force): the user is
      // ready with this version again.
      dropStaged();
      return { ...alreadyReady(db, userId, version, resumeReady(db, userId, version, meta.seed_version), started), readyAgain: { from: meta.seed_version } };
    }
    if (!input.force && !meta && readyBefore(db, version)) {
      // The tool seeded this version to the end and only user_meta's row is gone (deleted, or a DB
      // restored without it): the row comes back, ready with it. The seeded rows and files are the
      // user's now, edits and all: rewriting them is --force's to do, never a plain seed's.
      const open = db;
      const seededAt = open.transaction(() => {
        const done = (open.prepare(`SELECT finished_at FROM acm2_seed_state WHERE seed_version = ?`).get(version) as { finished_at: string | null } | undefined)?.finished_at;
        const at = done && !Number.isNaN(Date.parse(done)) ? sqlNow(new Date(done)) : sqlNow();
        setMeta(open, userId, 'ready', version, at);
        return at;
      }).immediate();
      dropStaged();
      return { ...alreadyReady(open, userId, version, seededAt, started), readyAgain: { from: null } };
    }
    const wasReady = meta?.seed_status === 'ready' && meta.seed_version === version;
    // Something in the way of the user's folder fails the seed before it marks the user
    // in_progress, and before --force copies the user's DB into a backup nothing would restore.
    refuseOddUserRoot(dataDir, userId);
    let backup: ForceBackup | undefined;
    if (input.force) {
      // --force rewrites the seeded rows and files the user may have edited: what it would
      // overwrite is kept first, whole and durable, before the first write below.
      backingUp = true;
      backup = yield* backupBeforeForce(db, dataDir, userId, prepared, version, inherited);
      backingUp = false;
      step('backed_up');
    }
    done.priorState = readSeedState(db, version);
    const map = persistMap(db, userId, prepared, version, inherited);
    done.begun = true;
    dropStaged();
    step('map_persisted');
    const files = renderFiles(prepared, map);
    // What writeFiles would refuse is found before it writes anything: a ready user then stays
    // ready, its rows and files as they were, rather than failed half restored.
    refuseInTheWay(files, userRoot(dataDir, userId), userId);

    done.writing = true;
    const durable = writeFiles(files, userRoot(dataDir, userId), dataDir, userId);
    step('files_staged');
    yield { ...durable, lock: true };
    step('files_moved');

    const seededAt = sqlNow();
    const rows = commitRows(db, userId, prepared, map, version, files, seededAt);
    step('committed');
    return {
      userId,
      seedVersion: version,
      outcome: wasReady ? 'restored' : 'seeded',
      rows,
      files: files.length,
      bytes: files.reduce((a, w) => a + w.bytes, 0),
      seededAt,
      durationMs: Date.now() - started,
      ...(backup ? { backup } : {}),
    };
  } catch (e) {
    const cause = (e as { cause?: unknown } | undefined)?.cause;
    if (isCorrupt(e) || (!needsOperator(e) && isCorrupt(cause))) {
      // The DB went bad since the seed's first look passed it (a torn write, a disk fault): no
      // retry mends it, and nothing more is written into it (no failure record, no ready user
      // put back: a write into a DB SQLite calls corrupt can spread the damage). The job is failed
      // at once with the sentence instead; an operator mends the DB.
      const said = isCorrupt(e) ? e : cause;
      const stopped = done.writing
        ? "the seed stopped after writing the user's files, before its rows, and wrote nothing more into it (user_meta says in_progress)"
        : done.begun
          ? "the seed stopped before writing the user's files and rows, and wrote nothing more into it (user_meta says in_progress)"
          : placed
            ? "an earlier attempt's build was put in place as it (in_progress), then nothing more was written into it"
            : 'nothing was seeded and it was left alone';
      throw corruptDb(dataDir, userId, (said as Error).message, stopped, said);
    }
    // A user that was ready and that this attempt changed nothing of stays ready: ACM2 goes on
    // serving it (anything else is 425 to all its requests), and the job says what failed.
    let ready = !done.begun && meta?.seed_status === 'ready' ? meta : undefined;
    // The sentence the command prints is what the seed state records too (user show's last
    // error), not the driver's text ("database is locked").
    const err =
      busyDb(e, dataDir, userId, DB_BUSY_WAIT_MS, done.writing ? 'the seed stopped after writing its files, before its rows' : undefined) ??
      classifyFsError(e, `user ${userId}'s data in ${dataDir}`) ??
      e;
    let recorded = false;
    try {
      if (db && !backingUp && !ready) {
        ready = markFailed(db, userId, version, err, meta, done);
        recorded = true;
      }
    } catch {
      /* the DB itself may be the problem; the original error is what matters */
    }
    if (ready) throw stillReady(err, userId, ready);
    // Locked out before user_meta could be read, and still so when the failure was to be
    // recorded: nothing was written, and whether the user was ready is not known.
    throw !metaRead && !recorded && !placed && err instanceof UnavailableError && err.code === 'db_busy' ? metaUnread(err, userId) : err;
  } finally {
    db?.close();
  }
}

/** How long a seed waits for a user DB another process (ACM2) holds locked (openSqlite's default). */
const DB_BUSY_WAIT_MS = 5000;

/**
 * The user's DB held locked past the wait (ACM2 in a long write): the environment, not a failed
 * seed (SPEC §2: exit 3), named in one sentence. Nothing the seed committed is half-done.
 */
function busyDb(e: unknown, dataDir: string, userId: UserId, waitMs = DB_BUSY_WAIT_MS, what = 'nothing was seeded'): UnavailableError | undefined {
  if (!isBusy(e)) return undefined;
  return new UnavailableError(
    `user ${userId}'s database ${userDbPath(dataDir, userId)} is locked by another process (ACM2?) for more than ${waitMs / 1000} s: ${what}; run it again when the DB is free`,
    'db_busy',
    { cause: e },
  );
}

interface MetaRow {
  id: string;
  seed_status: string;
  seed_version: string;
  seeded_at: string | null;
}

export function readMeta(db: SqliteDb, userId: UserId): MetaRow | undefined {
  return db.prepare(`SELECT id, seed_status, seed_version, seeded_at FROM user_meta WHERE user_id = ?`).get(userId) as MetaRow | undefined;
}

function countSeedRows(db: SqliteDb, version: string): number {
  return (db.prepare(`SELECT COUNT(*) AS n FROM acm2_id_map WHERE seed_version = ? AND kind IN ('contents','documents','presets','runs','tasks','artifacts')`).get(version) as { n: number }).n;
}

/**
 * Before --force writes anything: the seeded rows the user changed (present, and not what the
 * package renders to) and the seeded files whose bytes differ from the package's rendering. When
 * there is any, a backup folder under `.acm2/backups/user_{id}/` (migrate-safe's place and naming,
 * `user_{id}-force-<stamp>-<random>`) gets a consistent copy of the whole DB (VACUUM INTO) and a
 * copy of each such file at its path under `user_{id}/`, plus manifest.json naming them. It is
 * written as `.partial`, made durable, then renamed and the rename made durable: whole before the
 * first overwrite, and a crash leaves only a `.partial` the next backup removes. Rows the user
 * deleted and files that are gone are only added back: nothing of theirs is lost, so no backup.
 */
function* backupBeforeForce(
  db: SqliteDb,
  dataDir: string,
  userId: UserId,
  prepared: PreparedPackage,
  version: string,
  inherited: MapEntry[],
): Generator<ToSync, ForceBackup | undefined, void> {
  // The map the seed is about to use (as beginSeed makes it): this version's entries, an earlier
  // attempt's, and fresh ids for anything new (which name no row or file yet: nothing to differ).
  const map = new Map(db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE seed_version = ?`).raw(true).all(version) as [string, string][]);
  for (const e of inherited) if (!map.has(e.source)) map.set(e.source, e.target);
  for (const e of extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid', userId)) map.set(e.source, e.target);
  const rows = changedRows(db, userId, prepared, map);
  const root = userRoot(dataDir, userId);
  const files = changedFiles(root, renderFiles(prepared, map));
  if (rows.length === 0 && files.length === 0) return undefined;

  const label = `user_${userId}`;
  const dir = toolDir(dataDir, 'backups', label);
  let partial: string | undefined;
  let renamed = false;
  try {
    cleanPartialBackups(dir, label);
    const made = mkdirSync(dir, { recursive: true, mode: 0o700 });
    const final = backupStem(dir, `${label}-force`, new Date());
    partial = `${final}.partial`;
    mkdirSync(partial, { mode: 0o700 });
    const dbCopy = path.join(partial, `${label}.db`);
    // A consistent snapshot however ACM2 journals (WAL or not), in one read transaction.
    db.prepare(`VACUUM INTO ?`).run(dbCopy);
    chmodSync(dbCopy, 0o600);
    const written = [dbCopy];
    const dirs = new Set<string>([partial]);
    const filesRoot = path.join(partial, label);
    for (const f of files) {
      const dest = resolveInside(filesRoot, f.path);
      for (let d = path.dirname(dest); d.startsWith(partial + path.sep) && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
      mkdirSync(path.dirname(dest), { recursive: true, mode: 0o700 });
      copyFileSync(f.abs, dest, constants.COPYFILE_EXCL);
      chmodSync(dest, 0o600);
      written.push(dest);
    }
    const manifest = {
      userId,
      seedVersion: version,
      createdAt: new Date().toISOString(),
      why: `acm2 user seed ${userId} --force restored these seeded rows and files to the package state; ${label}.db is the whole DB before it, ${label}/ holds the files as they were`,
      rows: rows.map((r) => ({ table: r.table, id: r.id })),
      files: files.map((f) => f.path),
    };
    const manifestPath = path.join(partial, 'manifest.json');
    writeFileDurable(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600, fsync: false });
    written.push(manifestPath);
    yield { files: written, dirs: [...dirs].sort((a, b) => b.length - a.length) };
    renameSync(partial, final);
    renamed = true;
    // The rename, and the backup folders' own names when this made them, must survive a power cut.
    const naming = [dir];
    if (made !== undefined) for (let d = dir, top = path.resolve(dataDir); d !== top && d !== path.dirname(d); ) naming.push((d = path.dirname(d)));
    yield { files: [], dirs: naming };
    return { path: final, rows: rows.length, files: files.length };
  } catch (e) {
    if (partial !== undefined && !renamed) {
      try {
        rmSync(partial, { recursive: true, force: true });
      } catch {
        /* the next backup's cleanPartialBackups removes it */
      }
    }
    const cause = (e as { cause?: unknown } | undefined)?.cause;
    if (isDiskFull(e) || (cause !== undefined && isDiskFull(cause))) {
      throw new UnavailableError(
        `disk full while keeping a backup of user ${userId}'s edited seeded rows and files in ${dir} before --force: nothing was changed; free some space, then run again`,
        'disk_full',
        { cause: e },
      );
    }
    throw busyDb(e, dataDir, userId) ?? classifyFsError(e, `the backup of user ${userId} in ${dir}`) ?? e;
  }
}

function sameCell(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  return (typeof a === 'number' || typeof a === 'bigint') && (typeof b === 'number' || typeof b === 'bigint') && Number(a) === Number(b);
}

/** Seeded rows present in the DB that the seed's rewrite (by id) would change. */
function changedRows(db: SqliteDb, userId: UserId, prepared: PreparedPackage, map: Map<string, string>): Array<{ table: string; id: unknown }> {
  const out: Array<{ table: string; id: unknown }> = [];
  for (const t of prepared.tables) {
    if (t.rows.length === 0) continue;
    // The rewrite updates the package's columns only: a column the package does not have (added
    // by a later schema) keeps its value.
    const get = t.idIndex < 0 ? undefined : db.prepare(`SELECT ${t.columns.map(quoteIdent).join(', ')} FROM ${quoteIdent(t.name)} WHERE "id" = ?`).raw(true);
    for (const r of t.rows) {
      const want = renderRow(t, r, userId, map);
      if (!get) {
        out.push({ table: t.name, id: null });
        continue;
      }
      const have = get.get(want[t.idIndex]) as unknown[] | undefined;
      if (!have) continue; // deleted: only added back
      if (have.some((v, i) => !sameCell(v, want[i]))) out.push({ table: t.name, id: want[t.idIndex] });
    }
  }
  return out;
}

/**
 * Seeded files the seed would overwrite with other bytes: regular files under the user's own
 * root (a symlink, FIFO or folder there is never read, and --force never writes through one).
 */
function changedFiles(root: string, rendered: RenderedFile[]): Array<{ path: string; abs: string }> {
  const out: Array<{ path: string; abs: string }> = [];
  const rootSt = lstatOrUndefined(root);
  if (!rootSt?.isDirectory()) return out;
  const realRoot = realpathSync(root);
  for (const f of rendered) {
    const abs = resolveInside(root, f.path);
    const st = lstatOrUndefined(abs);
    if (!st?.isFile()) continue;
    let dir: string;
    try {
      dir = realpathSync(path.dirname(abs));
    } catch {
      continue;
    }
    if (dir !== realRoot && !dir.startsWith(realRoot + path.sep)) continue;
    if (st.size === f.bytes && Buffer.from(f.data).equals(readFileSync(abs))) continue;
    out.push({ path: f.path, abs });
  }
  return out;
}

/** ACM2's DATETIME text form: 'YYYY-MM-DD HH:MM:SS.ffffff'. */
export function sqlNow(d = new Date()): string {
  return `${d.toISOString().replace('T', ' ').replace('Z', '')}000`;
}

function setMeta(db: SqliteDb, userId: UserId, status: string, version: string, seededAt: string | null): void {
  const now = sqlNow();
  const meta = readMeta(db, userId);
  if (meta) {
    db.prepare(`UPDATE user_meta SET seed_status = ?, seed_version = ?, seeded_at = COALESCE(?, seeded_at), updated_at = ? WHERE user_id = ?`).run(status, version, seededAt, now, userId);
  } else {
    db.prepare(`INSERT INTO user_meta (id, user_id, seed_status, seed_version, seeded_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`).run(randomUUID(), userId, status, version, seededAt, now, now);
  }
}

/** Load this version's map, add fresh ids for anything new, persist, and mark in_progress (in the caller's transaction). */
function beginSeed(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string, inherited: MapEntry[] = []): Map<string, string> {
  // 'uuid' entries the package no longer names (UUID-shaped text an older tool remapped, which is
  // now kept as it is) go: a reseed writes that text as it is, and the map must not call it an id.
  const stale = (db.prepare(`SELECT source_id FROM acm2_id_map WHERE seed_version = ? AND kind = 'uuid'`).pluck().all(version) as string[]).filter((s) => !prepared.kinds.has(s));
  const drop = db.prepare(`DELETE FROM acm2_id_map WHERE seed_version = ? AND source_id = ?`);
  for (const s of stale) drop.run(version, s);
  const rows = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE seed_version = ?`).raw(true).all(version) as [string, string][];
  const map = new Map(rows);
  // Entries an earlier attempt made durable elsewhere (its staged DB) join this DB's map first.
  const carried: MapEntry[] = [];
  for (const e of inherited) {
    if (map.has(e.source)) continue;
    map.set(e.source, e.target);
    carried.push(e);
  }
  const added = [...carried, ...extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid', userId)];
  insertMany(db, 'acm2_id_map', ['seed_version', 'kind', 'source_id', 'target_id'], added.map((a) => [version, a.kind, a.source, a.target]));
  for (const a of added) map.set(a.source, a.target);
  setMeta(db, userId, 'in_progress', version, null);
  db.prepare(`INSERT INTO acm2_seed_state (seed_version, status, started_at) VALUES (?, 'in_progress', ?)
              ON CONFLICT(seed_version) DO UPDATE SET status = 'in_progress', started_at = excluded.started_at, finished_at = NULL, last_error = NULL`).run(version, new Date().toISOString());
  return map;
}

/** The result of a seed that found this version's rows and files in place and wrote none of them. */
function alreadyReady(db: SqliteDb, userId: UserId, version: string, seededAt: string, started: number): SeedUserResult {
  const f = db.prepare(`SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM acm2_seed_files WHERE seed_version = ?`).get(version) as { n: number; b: number };
  return { userId, seedVersion: version, outcome: 'already_ready', rows: countSeedRows(db, version), files: f.n, bytes: f.b, seededAt, durationMs: Date.now() - started };
}

/** This version was seeded to the end once (the tool's own record, which a later seed of another version leaves alone). */
export function readyBefore(db: SqliteDb, version: string): boolean {
  const r = db.prepare(`SELECT status FROM acm2_seed_state WHERE seed_version = ?`).get(version) as { status: string } | undefined;
  return r?.status === 'ready';
}

/** user_meta ready with `version` again, and the stopped seed of `stopped` recorded as failed. */
function resumeReady(db: SqliteDb, userId: UserId, version: string, stopped: string): string {
  return db.transaction(() => {
    const now = sqlNow();
    db.prepare(`UPDATE user_meta SET seed_status = 'ready', seed_version = ?, seeded_at = COALESCE(seeded_at, ?), updated_at = ? WHERE user_id = ?`).run(version, now, now, userId);
    db.prepare(`UPDATE acm2_seed_state SET status = 'failed', finished_at = ?, last_error = ? WHERE seed_version = ? AND status = 'in_progress'`).run(
      new Date().toISOString(),
      `stopped before it finished (the process died); the user stayed ready with ${version}`,
      stopped,
    );
    return String((readMeta(db, userId) as MetaRow).seeded_at);
  }).immediate();
}

/** beginSeed in its own transaction, for a user whose DB exists already. */
function persistMap(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string, inherited: MapEntry[]): Map<string, string> {
  return db.transaction(() => beginSeed(db, userId, prepared, version, inherited)).immediate();
}

/** The seeded-file list of this version (its sizes and hashes are what verify checks). */
function recordSeedFiles(db: SqliteDb, version: string, files: RenderedFile[]): void {
  insertMany(db, 'acm2_seed_files', ['seed_version', 'path', 'source_path', 'bytes', 'sha256'], files.map((w) => [version, w.path, w.sourcePath, w.bytes, w.sha256]));
}

/** `ready`, in user_meta and in the tool's seed state (the caller's transaction). */
function markReady(db: SqliteDb, userId: UserId, version: string, seededAt: string): void {
  setMeta(db, userId, 'ready', version, seededAt);
  db.prepare(`UPDATE acm2_seed_state SET status = 'ready', finished_at = ?, last_error = NULL WHERE seed_version = ?`).run(new Date().toISOString(), version);
}

interface RenderedFile {
  /** Path under the user root. */
  path: string;
  sourcePath: string;
  data: Uint8Array;
  bytes: number;
  sha256: string;
}

/** Every package file with this user's identifiers, in memory, with its size and sha256. */
function renderFiles(prepared: PreparedPackage, map: Map<string, string>): RenderedFile[] {
  return prepared.files.map((f) => {
    const data = !f.text ? readFileSync(f.abs) : f.latin1 ? Buffer.from(render(f.text, map), 'latin1') : renderBytes(f.text, map);
    return { path: render(f.path, map), sourcePath: f.sourcePath, data, bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') };
  });
}

const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
// O_NONBLOCK: a FIFO at a seeded path must not hang the seed (a regular file ignores it).
const REWRITE_FLAGS = constants.O_WRONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/**
 * Write `data` at `abs`: a new file, or an earlier seed's file rewritten in place. Anything else
 * at that path (a symlink, a FIFO, a file with a second hard link, perhaps outside the data dir
 * or in a backup snapshot) is never written through: a new file is renamed over the entry.
 */
function writeFileAt(abs: string, data: Uint8Array, dataDir: string, userId: UserId): void {
  let fd: number | undefined;
  try {
    fd = openSync(abs, CREATE_FLAGS, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    fd = openOwnFile(abs);
  }
  if (fd === undefined) return replaceEntry(abs, data, dataDir, userId);
  try {
    writeAll(fd, data);
  } finally {
    closeSync(fd);
  }
}

/**
 * Whether `abs` is a regular, singly-linked file holding exactly `data` (what writeFileAt would
 * leave there). A symlink, FIFO or file with a second hard link is never one: writeFileAt
 * replaces those.
 */
function sameOwnFile(abs: string, data: Uint8Array): boolean {
  const st = lstatOrUndefined(abs);
  if (!st?.isFile() || st.nlink !== 1 || st.size !== data.length) return false;
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(readFileSync(abs));
}

/** An open, emptied fd of the regular, singly-linked file at `abs`, or undefined if it is not one. */
function openOwnFile(abs: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(abs, REWRITE_FLAGS);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // ELOOP: a symlink (O_NOFOLLOW); ENXIO: a FIFO nobody reads; others: a socket, a device.
    if (code === 'ELOOP' || code === 'ENXIO' || code === 'EOPNOTSUPP' || code === 'ENODEV' || code === 'ETXTBSY') return undefined;
    // A folder holds things that may be the user's: never replaced, and no retry would help.
    if (code === 'EISDIR') throw folderInTheWay(abs, e);
    throw e;
  }
  const st = fstatSync(fd);
  if (st.isFile() && st.nlink === 1) {
    ftruncateSync(fd, 0);
    return fd;
  }
  closeSync(fd);
  return undefined;
}

/**
 * A new file renamed over the entry at `abs`. It is written in staging under the user's prefix,
 * so a crash before the rename leaves litter the user's next seed removes (cleanStaging), not a
 * stray file in a folder ACM2 serves; beside the target only if staging is on another file system.
 */
function replaceEntry(abs: string, data: Uint8Array, dataDir: string, userId: UserId): void {
  const staging = toolDir(dataDir, 'staging');
  mkdirSync(staging, { recursive: true, mode: 0o700 });
  const tag = randomBytes(4).toString('hex');
  const write = (tmp: string): void => {
    const fd = openSync(tmp, CREATE_FLAGS, 0o600);
    try {
      writeAll(fd, data);
    } finally {
      closeSync(fd);
    }
  };
  let tmp = path.join(staging, `user_${userId}-replace-${tag}.tmp`);
  try {
    write(tmp);
    try {
      renameSync(tmp, abs);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      rmSync(tmp, { force: true });
      tmp = `${abs}.acm2-${tag}.tmp`;
      write(tmp);
      renameSync(tmp, abs);
    }
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Something else where the user's folder goes (a plain file, a FIFO, a symlink, even a dangling
 * one) fails every attempt alike until an operator moves it: the job is failed at once, not
 * retried with backoff. The seed did not make it, so it is never removed, replaced or written
 * through.
 */
function refuseOddUserRoot(dataDir: string, userId: UserId): void {
  const odd = userRootProblem(dataDir, userId);
  if (odd) throw new NeedsOperatorError(`${odd}: none of the user's files were written and it was left alone; move it aside, then run: acm2 user seed ${userId}`);
}

/**
 * Write each file at its place under the user root (replacing a file this seed wrote before;
 * never writing through a symlink, a FIFO or a hard link at the target). Folders are created
 * 0700, files 0600.
 */
function writeFiles(files: RenderedFile[], root: string, dataDir: string, userId: UserId): ToSync {
  const dirs = new Set<string>();
  refuseOddUserRoot(dataDir, userId);
  if (lstatSync(root, { throwIfNoEntry: false }) === undefined) mkdirSync(root, { mode: 0o700 });
  // The paths are checked lexically (resolveInside); a symlinked folder on the way would still
  // take the writes elsewhere, so every folder written into must really be under the root.
  const realRoot = realpathSync(root);
  const out: string[] = [];
  for (const f of files) {
    const abs = resolveInside(root, f.path);
    const dir = path.dirname(abs);
    if (!dirs.has(dir)) {
      // Every folder from the root down to this one: their entries must be durable too.
      for (let d = dir; d.length > root.length && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
      mkdirInside(root, realRoot, dir, userId);
    }
    // Already these bytes (a second --force, a rerun after a crash): rewriting it would change
    // nothing but its mtime, and truncate for a moment a file ACM2 may be serving.
    if (!sameOwnFile(abs, f.data)) writeFileAt(abs, f.data, dataDir, userId);
    out.push(abs);
  }
  dirs.add(root);
  // The user root's own entry too, whether made now or by an earlier attempt (which may not have
  // reached its barrier).
  dirs.add(path.resolve(dataDir));
  return { files: out, dirs: [...dirs].sort((a, b) => b.length - a.length) };
}

/**
 * What writeFiles would refuse, looked for without writing anything: a folder where a seeded file
 * goes, or anything but a folder (in the user's folder) on the way to one.
 */
function refuseInTheWay(files: RenderedFile[], root: string, userId: UserId): void {
  // A root that is not there holds nothing in the way (refuseOddUserRoot has judged what it is).
  if (!lstatOrUndefined(root)?.isDirectory()) return;
  const realRoot = realpathSync(root);
  const dirs = new Set<string>();
  for (const f of files) {
    const abs = resolveInside(root, f.path);
    const dir = path.dirname(abs);
    if (!dirs.has(dir)) {
      dirs.add(dir);
      mkdirInside(root, realRoot, dir, userId, false);
    }
    if (lstatOrUndefined(abs)?.isDirectory()) throw folderInTheWay(abs);
  }
}

/** A folder where the seed writes a file: it holds things that may be the user's. */
function folderInTheWay(abs: string, cause?: unknown): NeedsOperatorError {
  return new NeedsOperatorError(`${abs} is a folder where the seed writes a file: it was left alone; move it aside, then seed the user again`, cause === undefined ? undefined : { cause });
}

/**
 * Make `dir` (under root) a folder, one level at a time, never through a symlink that leads
 * out of the root (one inside it is followed) and never over something that is not a folder.
 * `make` false: only look (nothing is made; what is missing ends the look).
 */
function mkdirInside(root: string, realRoot: string, dir: string, userId: UserId, make = true): void {
  // What is there is not the seed's to move, and no retry would get past it.
  const inTheWay = (what: string) => new NeedsOperatorError(`${what}: no file is written through it and it was left alone; move it aside, then run: acm2 user seed ${userId}`);
  let at = root;
  for (const part of path.relative(root, dir).split(path.sep)) {
    if (part === '') continue;
    at = path.join(at, part);
    let st;
    try {
      st = lstatSync(at);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      if (!make) return;
      mkdirSync(at, { mode: 0o700 });
      continue;
    }
    if (st.isSymbolicLink()) {
      let real: string;
      try {
        real = realpathSync(at);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw inTheWay(`${at} is a dangling symlink, where the seed needs a folder`);
        throw e;
      }
      if (real !== realRoot && !real.startsWith(realRoot + path.sep)) throw inTheWay(`${at} is a symlink out of ${root} (to ${real}), where the seed needs a folder`);
      const to = statSync(at);
      if (!to.isDirectory()) throw inTheWay(`${at} is a symlink to ${entryKind(to)}, where the seed needs a folder`);
    } else if (!st.isDirectory()) throw inTheWay(`${at} is ${entryKind(st)}, where the seed needs a folder`);
  }
}

/** The commit point: rows, seeded-file list and `ready`, in one transaction. */
function commitRows(
  db: SqliteDb,
  userId: UserId,
  prepared: PreparedPackage,
  map: Map<string, string>,
  version: string,
  written: RenderedFile[],
  seededAt: string,
): number {
  return db.transaction(() => {
    const n = insertRows(db, userId, prepared, map, true);
    db.prepare(`DELETE FROM acm2_seed_files WHERE seed_version = ?`).run(version);
    recordSeedFiles(db, version, written);
    markReady(db, userId, version, seededAt);
    return n;
  }).immediate();
}

/** Staging folders whose name, and their parents' up to the data dir, this process made durable. */
const durableStaging = new Set<string>();

/**
 * A user without a DB (and no earlier attempt to adopt): build its whole DB, `ready` included, in
 * staging and make it durable under its `.db` name; write the files it names and make them
 * durable; then link it into place (never over a DB that appeared meanwhile). Until the link
 * nothing is visible; the link is the commit point.
 */
function* seedFresh(
  dataDir: string,
  userId: UserId,
  prepared: PreparedPackage,
  step: (s: SeedStep) => void,
  started: number,
): Generator<ToSync, SeedUserResult, void> {
  const version = prepared.pkg.version;
  const target = userDbPath(dataDir, userId);
  const stagingDir = toolDir(dataDir, 'staging');
  const base = `user_${userId}-${version}-${randomBytes(4).toString('hex')}`;
  const building = path.join(stagingDir, `${base}.building`);
  const staged = path.join(stagingDir, `${base}.db`);
  const created = mkdirSync(stagingDir, { recursive: true, mode: 0o700 });
  // The staged name must survive a power cut, and so must the folders above it, up to the data
  // dir (.acm2 may have been made by the template, which does not sync its entry): once per
  // process, or again when a folder had to be made.
  const namingDirs = [stagingDir];
  if (created !== undefined || !durableStaging.has(stagingDir)) {
    const top = path.resolve(dataDir);
    for (let d = stagingDir; d !== top && d !== path.dirname(d); ) {
      d = path.dirname(d);
      namingDirs.push(d);
    }
  }
  let named = false;
  let linked = false;
  try {
    copyFileSync(userDbTemplate(dataDir), building);
    chmodSync(building, 0o600);
    const seededAt = sqlNow();
    let files: RenderedFile[];
    const db = openSqlite(building);
    try {
      // Its rollback journal stays in memory: no -journal file is created, written and deleted per
      // user (better-sqlite3's defensive mode ignores journal_mode = OFF, which silently kept one).
      if (db.pragma('journal_mode = MEMORY', { simple: true }) !== 'memory') throw new Error(`staging DB ${building} refused an in-memory journal`);
      db.pragma('synchronous = OFF');
      files = db.transaction(() => buildStaged(db, userId, prepared, version, seededAt))();
    } finally {
      db.close();
    }
    yield { files: [building], dirs: [], lock: true };
    renameSync(building, staged);
    named = true;
    yield { files: [], dirs: namingDirs };
    durableStaging.add(stagingDir);
    step('db_staged');
    // Leftovers of this user are torn builds now (a whole one would have been adopted): they go.
    cleanStaging(dataDir, userId, path.basename(staged));
    step('migrated');
    step('map_persisted');

    const durable = writeFiles(files, userRoot(dataDir, userId), dataDir, userId);
    step('files_staged');
    yield { ...durable, lock: true };
    step('files_moved');

    try {
      linkSync(staged, target);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new RacedToTarget(`${target} was created while user ${userId}'s seed built it (ACM2's first request?)`, { cause: e });
      throw e;
    }
    linked = true;
    step('linked');
    yield { files: [], dirs: [path.dirname(target)] };
    try {
      rmSync(staged, { force: true });
    } catch {
      /* the next attempt's cleanStaging removes it; the user is ready either way */
    }
    step('committed');
    return {
      userId,
      seedVersion: version,
      outcome: 'seeded',
      rows: countRows(prepared),
      files: files.length,
      bytes: files.reduce((a, w) => a + w.bytes, 0),
      seededAt,
      durationMs: Date.now() - started,
    };
  } catch (e) {
    // Once linked the DB is ready with its files durable (only the link's own durability failed):
    // nothing more is written to it.
    if (e instanceof RacedToTarget) throw e; // the build stays in staging for the seed's second go
    const err = classifyFsError(e, `user ${userId}'s data in ${dataDir}`) ?? e;
    if (named && !linked) {
      // Files it names may be half written: in place, failed, so the user and ACM2 see why, and
      // a retry takes the existing-DB path with this map. If that fails too, the `.db` stays in
      // staging and the next attempt adopts it.
      try {
        placeStaged(staged, dataDir, userId, version, 'failed', err);
      } catch {
        /* the original error is what matters */
      }
    } else if (!named) {
      try {
        rmSync(building, { force: true });
      } catch {
        /* a leftover .building is removed by the next attempt; the original error is what matters */
      }
    }
    throw err;
  }
}

/**
 * Everything of a fresh user's DB in one go (the caller's transaction): the template holds no
 * row yet, so nothing is read first and `ready` is written as the rows are, not updated after.
 */
function buildStaged(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string, seededAt: string): RenderedFile[] {
  const map = new Map<string, string>();
  const entries = extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid', userId);
  for (const e of entries) map.set(e.source, e.target);
  insertMany(db, 'acm2_id_map', ['seed_version', 'kind', 'source_id', 'target_id'], entries.map((a) => [version, a.kind, a.source, a.target]));
  const now = sqlNow();
  const iso = new Date().toISOString();
  db.prepare(`INSERT INTO user_meta (id, user_id, seed_status, seed_version, seeded_at, created_at, updated_at) VALUES (?, ?, 'ready', ?, ?, ?, ?)`).run(randomUUID(), userId, version, seededAt, now, now);
  db.prepare(`INSERT INTO acm2_seed_state (seed_version, status, started_at, finished_at) VALUES (?, 'ready', ?, ?)`).run(version, iso, iso);
  insertRows(db, userId, prepared, map);
  const files = renderFiles(prepared, map);
  recordSeedFiles(db, version, files);
  return files;
}

interface StagedBuild {
  file: string;
  version: string;
  mtimeMs: number;
  map: MapEntry[];
  /** The files it names (it may have written them before the crash). */
  files: Array<{ path: string; bytes: number; sha256: string }>;
}

/**
 * Earlier attempts' whole builds of this user in staging (`.db`, not `.building`), newest first,
 * with their version and ID map. A torn file (corrupt, not a DB, failing quick_check, no
 * user_meta row) is skipped; the caller removes it. Any other error stops the seed: a build
 * whose map may name files on disk is never passed over because it could not be read just now.
 */
function committedStaged(dataDir: string, userId: UserId): StagedBuild[] {
  const dir = toolDir(dataDir, 'staging');
  if (!existsSync(dir)) return [];
  const prefix = `user_${userId}-`;
  const found: StagedBuild[] = [];
  // A build killed between its link into place and the removal of its staged name is the live DB
  // itself under a second name: not a leftover (its files are the user's), only a name to drop.
  const live = statOrUndefined(userDbPath(dataDir, userId));
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(prefix) || !name.endsWith('.db')) continue;
    const file = path.join(dir, name);
    // Only a regular file can be a build (a FIFO would hang the open, a symlink lead elsewhere):
    // anything else goes with the staging cleanup.
    const st = lstatOrUndefined(file);
    if (!st?.isFile()) continue;
    if (live && st.ino === live.ino && st.dev === live.dev) continue;
    let db: SqliteDb | undefined;
    try {
      // Read-write: a hot journal left by an interrupted placeStaged is rolled back first.
      db = openSqlite(file);
      if (db.pragma('quick_check', { simple: true }) !== 'ok') continue;
      const meta = db.prepare(`SELECT seed_version FROM user_meta WHERE user_id = ?`).get(userId) as { seed_version: string } | undefined;
      if (!meta) continue;
      const map = db.prepare(`SELECT kind, source_id AS source, target_id AS target FROM acm2_id_map WHERE seed_version = ?`).all(meta.seed_version) as MapEntry[];
      const files = db.prepare(`SELECT path, bytes, sha256 FROM acm2_seed_files WHERE seed_version = ?`).all(meta.seed_version) as StagedBuild['files'];
      found.push({ file, version: meta.seed_version, mtimeMs: statSync(file).mtimeMs, map, files });
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (typeof code === 'string' && (code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_NOTADB'))) continue;
      throw new Error(`cannot read ${file}, an earlier seed attempt of user ${userId} (${e instanceof Error ? e.message : String(e)}); it is kept`, { cause: e });
    } finally {
      db?.close();
    }
  }
  return found.sort((a, b) => b.mtimeMs - a.mtimeMs);
}

/**
 * Put a whole staged build in place as the user's DB, never `ready`: mark it `status` in a commit
 * whose journal removal is made durable too (so no hot journal can come back beside the staged
 * name and undo it), link it, make the link durable, drop the staged name.
 */
function placeStaged(staged: string, dataDir: string, userId: UserId, version: string, status: 'failed' | 'in_progress', error?: unknown): void {
  const db = openSqlite(staged);
  try {
    db.pragma('synchronous = EXTRA');
    const now = new Date().toISOString();
    const msg = error === undefined ? null : error instanceof Error ? error.message : String(error);
    db.transaction(() => {
      db.prepare(`UPDATE user_meta SET seed_status = ?, seeded_at = NULL, updated_at = ? WHERE user_id = ?`).run(status, sqlNow(), userId);
      db.prepare(`UPDATE acm2_seed_state SET status = ?, finished_at = ?, last_error = ? WHERE seed_version = ?`).run(status, status === 'failed' ? now : null, msg, version);
    })();
  } finally {
    db.close();
  }
  const target = userDbPath(dataDir, userId);
  linkSync(staged, target);
  fsyncPath(path.dirname(target));
  rmSync(staged, { force: true });
}

function countRows(prepared: PreparedPackage): number {
  return prepared.tables.reduce((n, t) => n + t.rows.length, 0);
}

/** A package row with this user's identifiers and user_id, as the seed writes it. */
function renderRow(t: PreparedTable, r: Cell[], userId: UserId, map: Map<string, string>): unknown[] {
  return r.map((v: Cell, i) => (i === t.userIdIndex ? userId : renderCell(v, render, map)));
}

/**
 * Insert rows with multi-row INSERTs (one statement per chunk instead of one per row); with `key`, a row whose `key` is already there is updated to these values instead.
 * Never INSERT OR REPLACE: its REPLACE deletes whatever row a value conflicts with, through any
 * UNIQUE index of the user's DB (a later ACM2's, say on (user_id, name)), so a seeded row named as
 * one of the user's own rows would delete the user's row. Here such a conflict is an error.
 */
function insertMany(db: SqliteDb, table: string, columns: string[], rows: unknown[][], key?: string): void {
  if (rows.length === 0) return;
  // SQLite allows 32,766 bound parameters; stay well under it.
  const per = Math.max(1, Math.min(500, Math.floor(8000 / columns.length)));
  const tuple = `(${columns.map(() => '?').join(', ')})`;
  const head = `INSERT INTO ${table} (${columns.join(', ')}) VALUES `;
  const others = columns.filter((c) => c !== key);
  const tail = key ? ` ON CONFLICT (${key}) DO ${others.length > 0 ? `UPDATE SET ${others.map((c) => `${c} = excluded.${c}`).join(', ')}` : 'NOTHING'}` : '';
  let full: ReturnType<SqliteDb['prepare']> | undefined;
  for (let i = 0; i < rows.length; i += per) {
    const chunk = rows.slice(i, i + per);
    const stmt = chunk.length === per ? (full ??= db.prepare(head + Array(per).fill(tuple).join(', ') + tail)) : db.prepare(head + Array(chunk.length).fill(tuple).join(', ') + tail);
    stmt.run(chunk.flat());
  }
}

/** Every package row with this user's identifiers and user_id; `rewrite`: rows already there (by id) get the package's values. */
function insertRows(db: SqliteDb, userId: UserId, prepared: PreparedPackage, map: Map<string, string>, rewrite = false): number {
  let n = 0;
  for (const t of prepared.tables) {
    if (t.rows.length === 0) continue;
    const rows = t.rows.map((r) => renderRow(t, r, userId, map));
    insertMany(db, t.name, t.columns, rows, rewrite ? t.columns[t.idIndex] : undefined);
    n += rows.length;
  }
  return n;
}

/** How far a seed attempt of a user with a DB got before it failed. */
interface AttemptDone {
  /** persistMap committed: user_meta says in_progress with this version (ACM2 answers 425). */
  begun: boolean;
  /** It started writing the seeded files (then the rows): the user's may be half restored. */
  writing: boolean;
  /** This version's acm2_seed_state row as it was before persistMap (absent: none). */
  priorState?: SeedStateRow;
}

interface SeedStateRow {
  status: string;
  started_at: string;
  finished_at: string | null;
  last_error: string | null;
}

/** The tool's record of its seed of `version` in this DB (acm2_seed_state), if it has one. */
export function readSeedState(db: SqliteDb, version: string): SeedStateRow | undefined {
  return db.prepare(`SELECT status, started_at, finished_at, last_error FROM acm2_seed_state WHERE seed_version = ?`).get(version) as SeedStateRow | undefined;
}

/**
 * Record a failed seed of `version`; returns user_meta's row when the user is left ready. A user
 * that was ready before this seed began (`prior`) stays so when none of its rows and files were
 * changed: a seed of another version (which commits none of its rows and writes its files beside
 * the user's), or one of the same version (--force) that failed before it wrote any of them. It
 * goes back to ready as it was (beginSeed marked it in_progress on the way: reading user_meta
 * now would no longer show that it was ready), and only the seed state of another version says
 * that version failed (unless it was seeded to the end before and this --force of it wrote none
 * of its files: then its record stays ready). Anything else is failed: a --force that began
 * overwriting is not served half restored. An attempt that committed nothing (`begun` false)
 * leaves a ready user as it is.
 */
function markFailed(db: SqliteDb, userId: UserId, version: string, e: unknown, prior: MetaRow | undefined, done: AttemptDone): MetaRow | undefined {
  const msg = e instanceof Error ? e.message : String(e);
  const restore = done.begun && prior?.seed_status === 'ready' && (prior.seed_version !== version || !done.writing) ? prior : undefined;
  const record = db.transaction((): MetaRow | undefined => {
    const meta = readMeta(db, userId);
    if (!done.begun && meta?.seed_status === 'ready') return meta;
    if (restore) {
      if (meta) db.prepare(`UPDATE user_meta SET seed_status = 'ready', seed_version = ?, seeded_at = ?, updated_at = ? WHERE user_id = ?`).run(restore.seed_version, restore.seeded_at, sqlNow(), userId);
      // This version's record goes back as it was when none of its files was written: for the
      // version the user is ready with, and for another one seeded to the end before (a --force of
      // it left its rows and files as that seed made them: a plain seed of it must still find it
      // ready rather than seed it over again, and verify goes on checking them as the user's).
      const keepState = restore.seed_version === version || (!done.writing && done.priorState?.status === 'ready');
      if (!keepState) {
        db.prepare(`UPDATE acm2_seed_state SET status = 'failed', finished_at = ?, last_error = ? WHERE seed_version = ?`).run(new Date().toISOString(), msg, version);
      } else if (done.priorState) {
        const s = done.priorState;
        db.prepare(`UPDATE acm2_seed_state SET status = ?, started_at = ?, finished_at = ?, last_error = ? WHERE seed_version = ?`).run(s.status, s.started_at, s.finished_at, s.last_error, version);
      } else db.prepare(`DELETE FROM acm2_seed_state WHERE seed_version = ?`).run(version);
      return meta ? { ...meta, seed_status: 'ready', seed_version: restore.seed_version, seeded_at: restore.seeded_at } : undefined;
    }
    if (meta && !(meta.seed_status === 'ready' && meta.seed_version !== version)) setMeta(db, userId, 'failed', version, null);
    db.prepare(`UPDATE acm2_seed_state SET status = 'failed', finished_at = ?, last_error = ? WHERE seed_version = ?`).run(new Date().toISOString(), msg, version);
    return meta?.seed_status === 'ready' && meta.seed_version !== version ? meta : undefined;
  });
  // Putting a ready user back waits for the DB like any write (a deferred transaction that read
  // first would be refused at once by a writer still at work, leaving the user in_progress).
  return restore ? record.immediate() : record();
}

/**
 * The error of a seed that failed and left the user ready, its rows and files as they were
 * (ACM2 goes on serving it): it says so.
 */
function stillReady(e: unknown, userId: UserId, meta: MetaRow): unknown {
  if (e instanceof Error) e.message = `${e.message}; user ${userId} stays ready with ${meta.seed_version}, its rows and files as they were`;
  return e;
}

/**
 * The error of a seed locked out of the user's DB before it could read user_meta: it cannot know
 * whether the user was ready, nor with which version, but it changed nothing, and says so.
 */
function metaUnread(e: UnavailableError, userId: UserId): UnavailableError {
  e.message = `${e.message}; user ${userId}'s user_meta could not be read, so nothing of the user was changed: it stays as it was, its rows and files as they were`;
  return e;
}

/** Every path the user's DB lists as seeded, of any version: never a crashed build's to remove. */
function listedFiles(dataDir: string, userId: UserId): Set<string> {
  const db = openUserDb(dataDir, userId);
  try {
    const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'acm2_seed_files'`).get();
    return new Set(has ? (db.prepare(`SELECT path FROM acm2_seed_files`).pluck().all() as string[]) : []);
  } finally {
    db.close();
  }
}

/**
 * Remove the files a crashed build (never put in place) wrote under the user's root: only regular
 * files inside the root with exactly the size and sha256 it recorded, which nobody else can have
 * made (their paths hold the build's own fresh ids); then the folders that leaves empty.
 */
function removeBuildFiles(dataDir: string, userId: UserId, files: StagedBuild['files']): void {
  const root = userRoot(dataDir, userId);
  if (!existsSync(root)) return;
  const realRoot = realpathSync(root);
  const emptied = new Set<string>();
  for (const f of files) {
    let abs: string;
    try {
      abs = resolveInside(root, f.path);
      const st = lstatSync(abs);
      if (!st.isFile() || st.size !== f.bytes) continue;
      const dir = realpathSync(path.dirname(abs));
      if (dir !== realRoot && !dir.startsWith(realRoot + path.sep)) continue;
      if (createHash('sha256').update(readFileSync(abs)).digest('hex') !== f.sha256) continue;
      rmSync(abs);
    } catch {
      continue; // not there, not ours, or not readable: left alone
    }
    for (let d = path.dirname(abs); d.startsWith(root + path.sep); d = path.dirname(d)) emptied.add(d);
  }
  for (const d of [...emptied].sort((a, b) => b.length - a.length)) {
    try {
      rmdirSync(d);
    } catch {
      /* not empty: something else lives there */
    }
  }
}

/**
 * Remove the half-written backups of this user a kill -9 left (we hold the user's lock, and every
 * backup of a user is written under it): a migration or --force does it before its own backup,
 * but a user whose DB needs neither any more (ACM2 migrated it since) would keep them for good.
 * Litter, so a failure to remove it stops nothing.
 */
function dropPartialBackups(dataDir: string, userId: UserId): void {
  try {
    cleanPartialBackups(toolDir(dataDir, 'backups', `user_${userId}`), `user_${userId}`);
  } catch {
    /* the next seed, migration or --force tries again */
  }
}

/**
 * Drop the staged names that are only user `userId`'s live DB under a second name: a seed killed
 * between linking its build into place and removing the staged name leaves one, and only the
 * user's next seed would drop it, which never comes for a user that is ready. Such a name holds
 * no data of its own, but it keeps the user's DB whole in staging: once the DB is deleted (to
 * start the user over), the next seed would take that name for a crashed build and put it back.
 * No lock is needed: removing a second name of the live DB changes nothing anyone reads, and a
 * seeder that still means to remove it removes it with `force`. Returns the names removed.
 */
export function dropLiveDbAliases(dataDir: string, userId: UserId, names?: readonly string[]): string[] {
  const dir = toolDir(dataDir, 'staging');
  // The DB's own entry, not what a symlink there leads to: a symlink to the staged name itself
  // would have the one copy of the DB taken for a second name.
  const live = lstatOrUndefined(userDbPath(dataDir, userId));
  if (!live?.isFile() || live.nlink < 2 || toolDirProblem(dataDir, 'staging')) return [];
  const prefix = `user_${userId}-`;
  const dropped: string[] = [];
  for (const name of names ?? (existsSync(dir) ? readdirSync(dir) : [])) {
    if (!name.startsWith(prefix) || !name.endsWith('.db')) continue;
    const file = path.join(dir, name);
    const st = lstatOrUndefined(file);
    if (!st?.isFile() || st.ino !== live.ino || st.dev !== live.dev) continue;
    rmSync(file, { force: true });
    dropped.push(name);
  }
  return dropped;
}

/** Remove staging left by an earlier crashed attempt for this user (we hold the user's lock). */
export function cleanStaging(dataDir: string, userId: UserId, keep?: string): void {
  const dir = toolDir(dataDir, 'staging');
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name.startsWith(`user_${userId}-`) && name !== keep) rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

// `seed freeze`: plan a package from an ACM2 user DB and run folder, then build it in a staging
// folder beside the target and rename it into place, so a crash never leaves a half package.

import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { assertNewVersionName, TOOL_NAME, TOOL_VERSION } from '../config.js';
import { classifyFsError, isAcm2Error, isDiskFull, UnavailableError, UsageError } from '../errors.js';
import { openForReading } from '../userdb/user-db.js';
import { entryKind } from '../userdb/paths.js';
import { isBusy } from './migrate-safe.js';
import { pidIsOfHere, STALE_ELSEWHERE_MS, whereAmI } from './worker-name.js';
import { compareStrings, dumpTable, sha256File } from '../seed/canonical.js';
import { copyRunTree, fsyncTree, RunTreeChanged, selectForFreeze, writeSeedDb, type FreezeSelection } from '../seed/freeze.js';
import { canRead, fsyncPath, processAlive, writeFileDurable } from '../durable.js';
import { computePackageSha256, PACKAGE_TABLES, SCHEMA_VERSION, unsafePathReason, type Manifest, type ManifestFile } from '../seed/manifest.js';
import { checkPackage, CURRENT_FILE, FILES_DIR, MANIFEST_FILE, SEED_DB_FILE } from '../seed/package.js';
import { renderRunReport } from '../seed/report.js';
import { silentProgress, type ProgressSink } from '../ui/reporter.js';

export interface FreezeInput {
  sourceDb?: string;
  sourceFiles?: string;
  presetId?: string;
  runId?: string;
  version?: string;
  seedsDir: string;
  renderReport?: boolean;
  setCurrent?: boolean;
  dryRun?: boolean;
  /** createdAt of the manifest (default: now). */
  now?: Date;
  /** How long to wait for a writer's lock on the source DB (default SOURCE_BUSY_TIMEOUT_MS). */
  sourceBusyTimeoutMs?: number;
  /** Recorded in the manifest (default: this tool); rebuilding an old package passes its own. */
  tool?: { name: string; version: string };
}

export interface FreezeResult {
  version: string;
  dryRun: boolean;
  /** Where the package is (or would be). */
  dir: string;
  source: { db: string; files: string; presetId: string; runId: string };
  tables: Record<string, number>;
  rows: number;
  files: number;
  /** Bytes of the run files (including a rendered report) plus seed.db once written. */
  bytes: number;
  reportRendered: boolean;
  current: boolean;
  packageSha256: string | null;
  seedDbBytes: number | null;
  warnings: string[];
  /** Staging folders of earlier crashed freezes that this run removed. */
  removedStaging: string[];
  /**
   * The version existed already with exactly this content (same packageSha256, intact): nothing
   * was written but CURRENT, if asked. A rerun after a crash between publishing and CURRENT.
   */
  unchanged: boolean;
}

// `@<host>[+<pid space>]` at the end: a seeds dir can be shared between hosts, and between
// containers of one host name (host networking), whose pids mean nothing here.
const STAGING_RE = /^\.staging-([^@]+)-(\d+)-([0-9a-f]+)(?:@(.+))?$/;
const CURRENT_TMP_RE = new RegExp(`^\\.${CURRENT_FILE}\\.tmp-(\\d+)-[0-9a-f]+(?:@(.+))?$`);
/** Freezes of a run folder that changed while it was copied, before giving up (exit 3). */
const FREEZE_ATTEMPTS = 3;

/** Check the input, select, and either describe (dry run) or write the package. */
export function freezeSeed(input: FreezeInput, progress: ProgressSink = silentProgress): FreezeResult {
  const missing = [
    input.sourceDb ? undefined : '--source',
    input.sourceFiles ? undefined : '--source-files',
    input.presetId ? undefined : '--preset (or SEED_PRESET_ID)',
    input.runId ? undefined : '--run (or SEED_RUN_ID)',
    input.version ? undefined : '--version (or SEED_VERSION)',
  ].filter((x): x is string => x !== undefined);
  if (missing.length > 0) throw new UsageError(`seed freeze needs ${missing.join(', ')}`, 'missing_flag');
  const version = assertNewVersionName(input.version as string);
  const runId = input.runId as string;
  const presetId = input.presetId as string;
  if (unsafePathReason(runId) !== undefined || runId.includes('/')) throw new UsageError(`--run '${runId}' is not a run id (it cannot name a folder)`, 'bad_run_id');
  const seedsDir = path.resolve(input.seedsDir);
  const sourceDb = path.resolve(input.sourceDb as string);
  const sourceFiles = path.resolve(input.sourceFiles as string);
  const dir = path.join(seedsDir, version);
  // A dry run cannot tell an identical rerun from a clash without building the package.
  if (input.dryRun && taken(dir)) throw versionExists(version, seedsDir);
  if (!existsSync(sourceDb)) throw new UsageError(`source database ${sourceDb} does not exist`, 'db_missing');
  // SQLite opens whatever the path names: a folder (the user's folder given for its DB) fails as an
  // I/O error that reads as a bad disk, and a FIFO waits for a writer for ever. A symlink to a
  // regular file is the operator's own path and is followed.
  const sourceStat = statSync(sourceDb);
  if (!sourceStat.isFile()) throw new UsageError(`source database ${sourceDb} is ${entryKind(sourceStat)}, not an SQLite database file`, 'db_not_file');

  const runRel = `runs/${runId}/`;
  const removedEarlier: string[] = [];
  // The run folder has no snapshot: a file that changed while it was copied (ACM2 rewriting a
  // report, appending to a log, removing one) makes the freeze start again from a new snapshot of
  // the DB and a new listing, so the package holds the rows and files of one moment.
  for (let attempt = 1; ; attempt++) {
    try {
      return freezeOnce();
    } catch (e) {
      if (!(e instanceof RunTreeChanged)) throw e;
      if (attempt >= FREEZE_ATTEMPTS) {
        throw new UnavailableError(
          `the run folder ${path.join(sourceFiles, runRel)} kept changing while it was frozen (${attempt} tries; last, ${runRel}${e.rel} ${e.why} while it was copied); nothing was frozen: try again when the run is idle`,
          'source_changing',
          { cause: e },
        );
      }
    }
  }

  function freezeOnce(): FreezeResult {
    let sel: FreezeSelection;
    try {
      sel = withSource(sourceDb, (db) => selectForFreeze(db, { sourceFiles, presetId, runId, renderReport: Boolean(input.renderReport) }), input.sourceBusyTimeoutMs);
    } catch (e) {
      // Listing the run folder failed (a folder this user may not read): the environment.
      throw (isAcm2Error(e) ? undefined : classifyFsError(e, path.join(sourceFiles, runRel))) ?? e;
    }
    if (sel.gaps.length > 0) throw new UsageError(`cannot freeze ${version}: ${sel.gaps.join('; ')}`, 'freeze_incomplete');

    const tables = Object.fromEntries(PACKAGE_TABLES.map((t) => [t, sel.rows[t].length]));
    const report = sel.renderReport ? renderRunReport(runForReport(sel)) : undefined;
    const plan: FreezeResult = {
      version,
      dryRun: Boolean(input.dryRun),
      dir,
      source: { db: sourceDb, files: sourceFiles, presetId, runId },
      tables,
      rows: Object.values(tables).reduce((a, b) => a + b, 0),
      files: sel.files.length + (report !== undefined ? 1 : 0),
      bytes: sel.files.reduce((n, f) => n + f.bytes, 0) + (report !== undefined ? Buffer.byteLength(report) : 0),
      reportRendered: report !== undefined,
      current: false,
      packageSha256: null,
      seedDbBytes: null,
      warnings: sel.warnings,
      removedStaging: [],
      unchanged: false,
    };
    if (input.dryRun) return plan;

    try {
      mkdirSync(seedsDir, { recursive: true, mode: 0o755 });
    } catch (e) {
      throw classifyFsError(e, seedsDir) ?? e;
    }
    removedEarlier.push(...removeStaleStaging(seedsDir));
    const removedStaging = [...removedEarlier];
    const staging = path.join(seedsDir, `.staging-${version}-${process.pid}-${randomBytes(4).toString('hex')}@${whereAmI()}`);
    let manifest: Manifest;
    try {
      mkdirSync(staging, { mode: 0o755 });
      manifest = buildPackage(staging, sel, sourceFiles, report, {
        version,
        createdAt: (input.now ?? new Date()).toISOString(),
        tool: input.tool ?? { name: TOOL_NAME, version: TOOL_VERSION },
        progress,
      });
      if (taken(dir)) {
        if (!sameIntactPackage(seedsDir, version, manifest.packageSha256)) throw versionExists(version, seedsDir);
        rmSync(staging, { recursive: true, force: true });
        if (input.setCurrent) moveCurrent(seedsDir, version, dir);
        return { ...plan, files: manifest.files.length, bytes: manifest.files.reduce((n, f) => n + f.bytes, 0) + manifest.seedDb.bytes, current: Boolean(input.setCurrent), packageSha256: manifest.packageSha256, seedDbBytes: manifest.seedDb.bytes, removedStaging, unchanged: true };
      }
      fsyncTree(staging);
      try {
        renameSync(staging, dir);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EEXIST' || code === 'ENOTEMPTY') {
          throw new UsageError(`seed version '${version}' appeared in ${seedsDir} while freezing; it was not overwritten`, 'version_exists', { cause: e });
        }
        throw e;
      }
      fsyncPath(seedsDir);
    } catch (e) {
      rmSync(staging, { recursive: true, force: true });
      throw classifyFsError(e, staging) ?? e;
    }
    if (input.setCurrent) moveCurrent(seedsDir, version, dir);
    return {
      ...plan,
      files: manifest.files.length,
      bytes: manifest.files.reduce((n, f) => n + f.bytes, 0) + manifest.seedDb.bytes,
      current: Boolean(input.setCurrent),
      packageSha256: manifest.packageSha256,
      seedDbBytes: manifest.seedDb.bytes,
      removedStaging,
    };
  }
}

/**
 * Run fn on the source DB, read-only, inside one read transaction: every SELECT of the freeze
 * sees the same snapshot, so ACM2 writing to its DB meanwhile cannot give the package a run
 * without its tasks or a preset without its contents.
 */
export function withSource<T>(file: string, fn: (db: Database.Database) => T, busyTimeoutMs = SOURCE_BUSY_TIMEOUT_MS): T {
  let db: Database.Database;
  try {
    // A WAL source without its -shm where it cannot be written (a read-only mount, a backup
    // snapshot) is read from a private copy: SQLite could not open it in place.
    db = openForReading(file, { readonly: true, timeout: busyTimeoutMs });
    db.pragma(`busy_timeout = ${busyTimeoutMs}`);
  } catch (e) {
    if (isAcm2Error(e)) throw e; // the temp folder cannot hold the copy: said already
    throw sourceDbError(file, 'open', e, busyTimeoutMs);
  }
  try {
    return db.transaction(() => fn(db)).deferred();
  } catch (e) {
    if ((e as { code?: string }).code?.startsWith('SQLITE_')) throw sourceDbError(file, 'read', e, busyTimeoutMs);
    throw e;
  } finally {
    db.close();
  }
}

/** How long the freeze waits for a writer's lock on the source DB. */
export const SOURCE_BUSY_TIMEOUT_MS = 5000;

/**
 * Why the source DB could not be read. A lock held past the wait and a hot journal are the
 * moment's state, not bad input (exit 3: run it again later); only a file SQLite cannot read as a
 * database is exit 2.
 */
function sourceDbError(file: string, what: 'open' | 'read', e: unknown, busyTimeoutMs: number): Error {
  const code = String((e as { code?: unknown }).code ?? '');
  if (isBusy(e)) {
    return new UnavailableError(`source database ${file} is in use: another process held it locked for more than ${busyTimeoutMs / 1000} s; nothing was frozen, try again when it is done`, 'source_busy', { cause: e });
  }
  // A writer killed mid-transaction left its journal, which only a read-write open rolls back;
  // the freeze never writes to the source.
  if (/^SQLITE_READONLY_(ROLLBACK|RECOVERY)/.test(code) || (code.startsWith('SQLITE_READONLY') && existsSync(`${file}-journal`))) {
    return new UnavailableError(
      `source database ${file} has a hot journal (a writer was interrupted mid-transaction), which seed freeze does not roll back (it never writes to the source): let ACM2 open it, or run sqlite3 ${file} 'PRAGMA quick_check', then freeze again`,
      'source_hot_journal',
      { cause: e },
    );
  }
  // SQLite says only "unable to open database file" for a source this user may not read.
  if (code === 'SQLITE_CANTOPEN' && !canRead(file)) {
    return new UnavailableError(`permission denied on source database ${file} (EACCES): run seed freeze as a user that may read it`, 'permission_denied', { cause: e });
  }
  const env = code.startsWith('SQLITE_IOERR') || isDiskFull(e) ? classifyFsError(e, file) : undefined;
  if (env) return env;
  return new UsageError(`cannot ${what} source database ${file} (${(e as Error).message})`, 'db_unreadable', { cause: e });
}

function runForReport(sel: FreezeSelection) {
  const run = sel.rows.runs[0] ?? {};
  const s = (v: unknown) => (typeof v === 'string' ? v : null);
  return {
    id: sel.runId,
    title: s(run.title),
    status: s(run.status),
    created_at: s(run.created_at),
    completed_at: s(run.completed_at),
    preset_id: s(run.preset_id),
    results_summary: run.results_summary ?? null,
  };
}

interface BuildOptions {
  version: string;
  createdAt: string;
  tool: { name: string; version: string };
  progress: ProgressSink;
}

/** seed.db, files/ and manifest.json inside the staging folder; returns the manifest written. */
function buildPackage(staging: string, sel: FreezeSelection, sourceFiles: string, report: string | undefined, o: BuildOptions): Manifest {
  const seedDb = path.join(staging, SEED_DB_FILE);
  writeSeedDb(seedDb, sel.rows);
  const filesDir = path.join(staging, FILES_DIR);
  mkdirSync(filesDir, { mode: 0o755 });
  const files: ManifestFile[] = copyRunTree(sel, sourceFiles, filesDir, o.progress);
  if (report !== undefined) {
    const reportsDir = path.join(filesDir, 'runs', sel.runId, 'reports');
    mkdirSync(reportsDir, { recursive: true, mode: 0o755 });
    const h = writeFileDurable(path.join(reportsDir, 'report.html'), report);
    files.push({ path: `runs/${sel.runId}/reports/report.html`, ...h });
  }
  files.sort((a, b) => compareStrings(a.path, b.path));

  const db = new Database(seedDb, { readonly: true, fileMustExist: true });
  let tables: Manifest['tables'];
  try {
    tables = Object.fromEntries(PACKAGE_TABLES.map((t) => [t, dumpTable(db, t)]));
  } finally {
    db.close();
  }
  const seedDbHash = sha256File(seedDb);
  const body = {
    format: 1 as const,
    version: o.version,
    tool: o.tool,
    schemaVersion: SCHEMA_VERSION,
    source: { presetId: sel.presetId, runId: sel.runId },
    tables,
    seedDb: seedDbHash,
    files,
  };
  const manifest: Manifest = { ...body, createdAt: o.createdAt, packageSha256: computePackageSha256(body) };
  const ordered: Manifest = {
    format: manifest.format,
    version: manifest.version,
    createdAt: manifest.createdAt,
    tool: manifest.tool,
    schemaVersion: manifest.schemaVersion,
    source: manifest.source,
    tables: manifest.tables,
    seedDb: manifest.seedDb,
    files: manifest.files,
    packageSha256: manifest.packageSha256,
  };
  writeFileDurable(path.join(staging, MANIFEST_FILE), `${JSON.stringify(ordered, null, 2)}\n`);
  return ordered;
}

/**
 * Something is at a version's place: a folder, or a symlink even when it leads nowhere (existsSync
 * follows it, and the rename onto a dangling one failed as an internal error). A symlinked version
 * is refused as every consumer refuses it, never replaced.
 */
function taken(dir: string): boolean {
  return lstatSync(dir, { throwIfNoEntry: false }) !== undefined;
}

/** Remove `.staging-*` folders left by freezes whose process is gone. */
function versionExists(version: string, seedsDir: string): UsageError {
  // A folder that is no intact package (a copy cut short, a hand-made folder) holds no "other
  // content" to keep: say what is wrong with it, and that moving it aside frees the name.
  let problem: string | undefined;
  try {
    problem = checkPackage(seedsDir, version).problems[0];
  } catch (e) {
    problem = (e as Error).message;
  }
  if (problem !== undefined) {
    return new UsageError(`seed version '${version}' already exists in ${seedsDir} but is not an intact package (${problem}); it was not overwritten: move that folder aside, or choose a new version name`, 'version_exists');
  }
  return new UsageError(`seed version '${version}' already exists in ${seedsDir} with other content; packages are immutable, choose a new version name`, 'version_exists');
}

/** The published version is intact and holds exactly what this freeze built (createdAt aside). */
function sameIntactPackage(seedsDir: string, version: string, packageSha256: string): boolean {
  try {
    const published = JSON.parse(readFileSync(path.join(seedsDir, version, MANIFEST_FILE), 'utf8')) as { packageSha256?: unknown };
    return published.packageSha256 === packageSha256 && checkPackage(seedsDir, version).ok;
  } catch {
    return false;
  }
}

function removeStaleStaging(seedsDir: string): string[] {
  const removed: string[] = [];
  for (const name of readdirSync(seedsDir)) {
    // A CURRENT being written by a freeze that died before its rename: never read, just litter.
    const full = path.join(seedsDir, name);
    const cur = CURRENT_TMP_RE.exec(name);
    if (cur) {
      if (isDead(full, Number(cur[1]), cur[2])) {
        rmSync(full, { force: true });
        removed.push(name);
      }
      continue;
    }
    const m = STAGING_RE.exec(name);
    if (!m || !isDead(full, Number(m[2]), m[4])) continue;
    try {
      if (!lstatSync(full).isDirectory()) continue;
      rmSync(full, { recursive: true, force: true });
      removed.push(name);
    } catch {
      // Another freeze removed it first.
    }
  }
  return removed;
}

/**
 * Left by a process that is gone: one of this host's pid space (or of a name that records no
 * host, or no pid space) by its pid; another host's, or another pid space's of this host name (a
 * container, a boot since), by an hour untouched.
 */
function isDead(full: string, pid: number, where: string | undefined): boolean {
  if (where === undefined || pidIsOfHere(where)) return pid !== process.pid && !processAlive(pid);
  try {
    return Date.now() - lstatSync(full).mtimeMs > STALE_ELSEWHERE_MS;
  } catch {
    return false;
  }
}


/**
 * CURRENT := version once the version is published. A failure here is not "nothing frozen": the
 * package is in place and only CURRENT still names the old version, which the sentence says,
 * with how to finish.
 */
function moveCurrent(seedsDir: string, version: string, dir: string): void {
  try {
    writeCurrent(seedsDir, version);
  } catch (e) {
    if (!isAcm2Error(e)) throw e;
    throw new UnavailableError(
      `seed version ${version} was frozen into ${dir}, but CURRENT was not moved to it (${e.message}): once that is fixed, run the same freeze again (it finds ${version} unchanged and moves CURRENT) or write ${version} into ${path.join(seedsDir, CURRENT_FILE)}`,
      e.code,
      { cause: e },
    );
  }
}

/** CURRENT := version, through a temp file and rename so readers never see a partial line. */
export function writeCurrent(seedsDir: string, version: string): void {
  const tmp = path.join(seedsDir, `.${CURRENT_FILE}.tmp-${process.pid}-${randomBytes(4).toString('hex')}@${whereAmI()}`);
  try {
    writeFileDurable(tmp, `${version}\n`);
    renameSync(tmp, path.join(seedsDir, CURRENT_FILE));
    fsyncPath(seedsDir);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw classifyFsError(e, path.join(seedsDir, CURRENT_FILE)) ?? e;
  }
}

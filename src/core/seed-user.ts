// Seeds one user from a package: remaps every identifier, writes DB rows and files, and makes
// one atomic step the commit point. Anything before it is invisible to ACM2 (425) and safe to
// redo; a rerun reuses the ID map an earlier attempt made durable and converges.
//
// Protocol, for a user without a DB (the common case):
//   1. build the whole DB off to the side (staging: template copy, map, rows, seeded-file list,
//      status `ready`) with its journal in memory, then make it durable ('db_staged'). Nobody can
//      see it; from here on it holds the map that names every file about to be written, so an
//      attempt that crashes later leaves it for the next attempt, which reuses that map;
//   2. write every file straight to its place under user_{id}/ ('files_staged'), then make files
//      and folders durable ('files_moved');
//   3. link the staged DB into place as user_{id}.db and make the data dir durable ('committed').
//      The link is the commit point: the DB appears complete and ready, or not at all.
// A user that already has a DB (rerun after a crash past the link, --force, a DB with rows of
// its own) persists its map in its own DB ('migrated', 'map_persisted'), writes its files
// (steps 2), and one transaction writes its rows, the seeded-file list and `ready` ('committed').
// Files are written in place rather than staged and renamed: before the commit point the map that
// names every target is durable (in the staged DB or in the user's own DB), so a rerun rewrites
// the same paths, and the targets are under the user's fresh run folder or files this seed
// recorded before.

import { randomUUID, randomBytes, createHash } from 'node:crypto';
import { chmodSync, closeSync, constants, copyFileSync, existsSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { fsyncPath, syncFiles, syncFilesAsync, writeAll } from '../durable.js';
import path from 'node:path';
import type { SeedPackage } from '../seed/package.js';
import { preparePackage, isTemplate, type PreparedPackage, type Cell } from '../seed/prepared.js';
import { extendMap, render, type MapEntry } from '../seed/remap.js';
import { migrateUserDb, openSqlite, openUserDb, type SqliteDb } from '../userdb/user-db.js';
import { userDbTemplate } from '../userdb/template.js';
import { resolveInside, toolDir, userDbPath, userRoot, type UserId } from '../userdb/paths.js';
import { classifyFsError } from '../errors.js';

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
}

export interface SeedUserInput {
  dataDir: string;
  userId: UserId;
  pkg: SeedPackage;
  force?: boolean;
  /** Test hook: called with the name of each step before it runs (crash tests kill there). */
  onStep?: (step: SeedStep) => void;
}

export type SeedStep = 'db_staged' | 'migrated' | 'map_persisted' | 'files_staged' | 'files_moved' | 'committed';

/** Seed one user. The caller holds the user's lock. */
export function seedUser(input: SeedUserInput): SeedUserResult {
  const steps = seedSteps(input);
  let r = steps.next();
  while (!r.done) {
    let failed: unknown;
    try {
      syncNow(r.value);
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
  const steps = seedSteps(input);
  let r = steps.next();
  while (!r.done) {
    let failed: unknown;
    try {
      await syncFilesAsync(r.value.files, r.value.dirs);
    } catch (e) {
      failed = e ?? new Error('fsync failed');
    }
    r = failed === undefined ? steps.next() : steps.throw(failed);
  }
  return r.value;
}

/** What must reach the disk before the next step: files' data and folders' entries. */
export interface ToSync {
  files: string[];
  dirs: string[];
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

  if (!existsSync(userDbPath(dataDir, userId))) return yield* seedFresh(dataDir, userId, prepared, step, started);

  cleanStaging(dataDir, userId);
  let db: SqliteDb | undefined;
  try {
    db = openUserDb(dataDir, userId);
    migrateUserDb(db);
    step('migrated');
    const meta = readMeta(db, userId);
    if (meta?.seed_status === 'ready' && meta.seed_version === version && !input.force) {
      const f = db.prepare(`SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM acm2_seed_files WHERE seed_version = ?`).get(version) as { n: number; b: number };
      return { userId, seedVersion: version, outcome: 'already_ready', rows: countSeedRows(db, version), files: f.n, bytes: f.b, seededAt: meta.seeded_at ?? '', durationMs: Date.now() - started };
    }
    const wasReady = meta?.seed_status === 'ready' && meta.seed_version === version;
    const map = persistMap(db, userId, prepared, version);
    step('map_persisted');
    const files = renderFiles(prepared, map);

    const durable = writeFiles(files, userRoot(dataDir, userId), dataDir);
    step('files_staged');
    yield durable;
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
    };
  } catch (e) {
    try {
      if (db) markFailed(db, userId, version, e);
    } catch {
      /* the DB itself may be the problem; the original error is what matters */
    }
    throw classifyFsError(e, `user ${userId}'s data`) ?? e;
  } finally {
    db?.close();
  }
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
function beginSeed(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string): Map<string, string> {
  const rows = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE seed_version = ?`).raw(true).all(version) as [string, string][];
  const map = new Map(rows);
  const added = extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid');
  insertMany(db, 'acm2_id_map', ['seed_version', 'kind', 'source_id', 'target_id'], added.map((a) => [version, a.kind, a.source, a.target]));
  for (const a of added) map.set(a.source, a.target);
  setMeta(db, userId, 'in_progress', version, null);
  db.prepare(`INSERT INTO acm2_seed_state (seed_version, status, started_at) VALUES (?, 'in_progress', ?)
              ON CONFLICT(seed_version) DO UPDATE SET status = 'in_progress', started_at = excluded.started_at, finished_at = NULL, last_error = NULL`).run(version, new Date().toISOString());
  return map;
}

/** beginSeed in its own transaction, for a user whose DB exists already. */
function persistMap(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string): Map<string, string> {
  return db.transaction(() => beginSeed(db, userId, prepared, version)).immediate();
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
    const data = f.text ? Buffer.from(render(f.text, map), 'utf8') : readFileSync(f.abs);
    return { path: render(f.path, map), sourcePath: f.sourcePath, data, bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') };
  });
}

const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;

/**
 * Write each file at its place under the user root (replacing a file this seed wrote before;
 * never following a symlink at the target). Folders are created 0700, files 0600.
 */
function writeFiles(files: RenderedFile[], root: string, dataDir: string): ToSync {
  const dirs = new Set<string>();
  const made = new Set<string>();
  if (!existsSync(root)) {
    mkdirSync(root, { mode: 0o700 });
    made.add(path.resolve(dataDir));
  }
  const out: string[] = [];
  for (const f of files) {
    const abs = resolveInside(root, f.path);
    const dir = path.dirname(abs);
    if (!dirs.has(dir)) {
      // Every folder from the root down to this one: their entries must be durable too.
      for (let d = dir; d.length > root.length && !dirs.has(d); d = path.dirname(d)) dirs.add(d);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    }
    const fd = openSync(abs, WRITE_FLAGS, 0o600);
    try {
      writeAll(fd, f.data);
    } finally {
      closeSync(fd);
    }
    out.push(abs);
  }
  dirs.add(root);
  for (const d of made) dirs.add(d);
  return { files: out, dirs: [...dirs].sort((a, b) => b.length - a.length) };
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
    const n = insertRows(db, userId, prepared, map, 'INSERT OR REPLACE');
    db.prepare(`DELETE FROM acm2_seed_files WHERE seed_version = ?`).run(version);
    recordSeedFiles(db, version, written);
    markReady(db, userId, version, seededAt);
    return n;
  }).immediate();
}

/**
 * A user without a DB: build its whole DB, `ready` included, in staging with its journal in memory
 * and make it durable; write the files it names and make them durable; then link it into place
 * (never over a DB that appeared meanwhile). Until the link nothing is visible; the link is the
 * commit point.
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
  // An earlier attempt that got past its first barrier may have written files named by its map:
  // take that map over, so this attempt rewrites the same paths instead of orphaning them.
  const inherited = stagedMap(dataDir, userId, version);
  const name = `user_${userId}-${version}-${randomBytes(4).toString('hex')}.db`;
  const staged = path.join(stagingDir, name);
  mkdirSync(stagingDir, { recursive: true, mode: 0o700 });
  let keep = false;
  let linked = false;
  try {
    copyFileSync(userDbTemplate(dataDir), staged);
    chmodSync(staged, 0o600);
    const seededAt = sqlNow();
    let files: RenderedFile[];
    const db = openSqlite(staged);
    try {
      // Its rollback journal stays in memory: no -journal file is created, written and deleted per
      // user (better-sqlite3's defensive mode ignores journal_mode = OFF, which silently kept one).
      if (db.pragma('journal_mode = MEMORY', { simple: true }) !== 'memory') throw new Error(`staging DB ${staged} refused an in-memory journal`);
      db.pragma('synchronous = OFF');
      files = db.transaction(() => buildStaged(db, userId, prepared, version, inherited, seededAt))();
    } finally {
      db.close();
    }
    yield { files: [staged], dirs: [stagingDir] };
    keep = true;
    step('db_staged');
    // This attempt's map is durable: earlier attempts' staged DBs (whose map it took over) can go.
    cleanStaging(dataDir, userId, name);
    step('migrated');
    step('map_persisted');

    const durable = writeFiles(files, userRoot(dataDir, userId), dataDir);
    step('files_staged');
    yield durable;
    step('files_moved');

    linkSync(staged, target);
    linked = true;
    yield { files: [], dirs: [path.dirname(target)] };
    rmSync(staged, { force: true });
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
    if (keep) {
      // Files it names may be half written. Mark it failed (a durable commit of its own), then put
      // it in place if it is not yet: the user and ACM2 see the failure and why, and a retry takes
      // the existing-DB path with this map. Never `ready` in place before its files are durable.
      try {
        const db = openSqlite(staged); // the same file as the target once linked
        try {
          markFailed(db, userId, version, e);
        } finally {
          db.close();
        }
        if (!linked) linkSync(staged, target);
      } catch {
        /* the staged DB stays for the next attempt, which takes its map over */
      }
    } else {
      // Before its barrier it named no file on disk.
      rmSync(staged, { force: true });
    }
    throw classifyFsError(e, `user ${userId}'s data`) ?? e;
  }
}

/**
 * Everything of a fresh user's DB in one go (the caller's transaction): the template holds no
 * row yet, so nothing is read first and `ready` is written as the rows are, not updated after.
 */
function buildStaged(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string, inherited: MapEntry[] | undefined, seededAt: string): RenderedFile[] {
  const map = new Map<string, string>();
  for (const e of inherited ?? []) map.set(e.source, e.target);
  const entries = [...(inherited ?? []), ...extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid')];
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

/**
 * The ID map of an earlier attempt's staged DB for this user and version, if one survives whole
 * (it passes quick_check and is `ready` inside: its build transaction finished). The newest wins.
 */
function stagedMap(dataDir: string, userId: UserId, version: string): MapEntry[] | undefined {
  const dir = toolDir(dataDir, 'staging');
  if (!existsSync(dir)) return undefined;
  const prefix = `user_${userId}-${version}-`;
  const found: { mtime: number; rows: MapEntry[] }[] = [];
  for (const name of readdirSync(dir)) {
    if (!name.startsWith(prefix) || !name.endsWith('.db')) continue;
    const file = path.join(dir, name);
    try {
      const db = openSqlite(file, { readonly: true });
      try {
        if (db.pragma('quick_check', { simple: true }) !== 'ok') continue;
        const meta = db.prepare(`SELECT seed_status, seed_version FROM user_meta WHERE user_id = ?`).get(userId) as { seed_status: string; seed_version: string } | undefined;
        if (meta?.seed_status !== 'ready' || meta.seed_version !== version) continue;
        const rows = db.prepare(`SELECT kind, source_id AS source, target_id AS target FROM acm2_id_map WHERE seed_version = ?`).all(version) as MapEntry[];
        found.push({ mtime: statSync(file).mtimeMs, rows });
      } finally {
        db.close();
      }
    } catch {
      /* torn or unreadable: an attempt that never reached its barrier, so it wrote no file */
    }
  }
  return found.sort((a, b) => b.mtime - a.mtime)[0]?.rows;
}

function countRows(prepared: PreparedPackage): number {
  return prepared.tables.reduce((n, t) => n + t.rows.length, 0);
}

/** Insert rows with multi-row INSERTs (one statement per chunk instead of one per row). */
function insertMany(db: SqliteDb, table: string, columns: string[], rows: unknown[][], verb = 'INSERT'): void {
  if (rows.length === 0) return;
  // SQLite allows 32,766 bound parameters; stay well under it.
  const per = Math.max(1, Math.min(500, Math.floor(8000 / columns.length)));
  const tuple = `(${columns.map(() => '?').join(', ')})`;
  const head = `${verb} INTO ${table} (${columns.join(', ')}) VALUES `;
  let full: ReturnType<SqliteDb['prepare']> | undefined;
  for (let i = 0; i < rows.length; i += per) {
    const chunk = rows.slice(i, i + per);
    const stmt = chunk.length === per ? (full ??= db.prepare(head + Array(per).fill(tuple).join(', '))) : db.prepare(head + Array(chunk.length).fill(tuple).join(', '));
    stmt.run(chunk.flat());
  }
}

/** Every package row with this user's identifiers and user_id. */
function insertRows(db: SqliteDb, userId: UserId, prepared: PreparedPackage, map: Map<string, string>, verb = 'INSERT'): number {
  let n = 0;
  for (const t of prepared.tables) {
    if (t.rows.length === 0) continue;
    const rows = t.rows.map((r) => r.map((v: Cell, i) => (i === t.userIdIndex ? userId : isTemplate(v) ? render(v, map) : v)));
    insertMany(db, t.name, t.columns, rows, verb);
    n += rows.length;
  }
  return n;
}

function markFailed(db: SqliteDb, userId: UserId, version: string, e: unknown): void {
  const msg = e instanceof Error ? e.message : String(e);
  db.transaction(() => {
    const meta = readMeta(db, userId);
    if (meta && !(meta.seed_status === 'ready' && meta.seed_version !== version)) setMeta(db, userId, 'failed', version, null);
    db.prepare(`UPDATE acm2_seed_state SET status = 'failed', finished_at = ?, last_error = ? WHERE seed_version = ?`).run(new Date().toISOString(), msg, version);
  })();
}

/** Remove staging left by an earlier crashed attempt for this user (we hold the user's lock). */
export function cleanStaging(dataDir: string, userId: UserId, keep?: string): void {
  const dir = toolDir(dataDir, 'staging');
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name.startsWith(`user_${userId}-`) && name !== keep) rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

// Seeds one user from a package: remaps every identifier, stages DB rows and files, and makes
// the DB transaction that writes `ready` the single commit point. Anything before it is
// invisible to ACM2 (425) and safe to redo; a rerun reuses the persisted ID map and converges.

import { randomUUID, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, readdirSync, existsSync } from 'node:fs';
import { fsyncPath, syncFiles, writeFileDurable } from '../durable.js';
import path from 'node:path';
import type { SeedPackage } from '../seed/package.js';
import { preparePackage, isTemplate, type PreparedPackage, type Cell } from '../seed/prepared.js';
import { extendMap, render } from '../seed/remap.js';
import { migrateUserDb, openUserDb, type SqliteDb } from '../userdb/user-db.js';
import { createUserDbFromTemplate } from '../userdb/template.js';
import { resolveInside, toolDir, userRoot, type UserId } from '../userdb/paths.js';
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

export type SeedStep = 'migrated' | 'map_persisted' | 'files_staged' | 'files_moved' | 'committed';

/** Seed one user. The caller holds the user's lock. */
export function seedUser(input: SeedUserInput): SeedUserResult {
  const started = Date.now();
  const { dataDir, userId, pkg } = input;
  const version = pkg.version;
  const step = input.onStep ?? (() => undefined);
  const prepared = preparePackage(pkg);

  cleanStaging(dataDir, userId);
  createUserDbFromTemplate(dataDir, userId);
  const db = openUserDb(dataDir, userId);
  try {
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

    const staging = toolDir(dataDir, 'staging', `user_${userId}-${version}-${randomBytes(4).toString('hex')}`);
    const written = stageFiles(prepared, map, staging);
    step('files_staged');
    const root = userRoot(dataDir, userId);
    moveIntoPlace(staging, root, written.map((w) => w.path));
    step('files_moved');

    const seededAt = sqlNow();
    const rows = commitRows(db, userId, prepared, map, version, written, seededAt);
    step('committed');
    rmSync(staging, { recursive: true, force: true });
    return {
      userId,
      seedVersion: version,
      outcome: wasReady ? 'restored' : 'seeded',
      rows,
      files: written.length,
      bytes: written.reduce((a, w) => a + w.bytes, 0),
      seededAt,
      durationMs: Date.now() - started,
    };
  } catch (e) {
    try {
      markFailed(db, userId, version, e);
    } catch {
      /* the DB itself may be the problem; the original error is what matters */
    }
    throw classifyFsError(e, `user ${userId}'s data`) ?? e;
  } finally {
    db.close();
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

/** Load this version's map, add fresh ids for anything new, persist, and mark in_progress. */
function persistMap(db: SqliteDb, userId: UserId, prepared: PreparedPackage, version: string): Map<string, string> {
  return db.transaction(() => {
    const rows = db.prepare(`SELECT source_id, target_id FROM acm2_id_map WHERE seed_version = ?`).raw(true).all(version) as [string, string][];
    const map = new Map(rows);
    const added = extendMap(map, prepared.kinds.keys(), (t) => prepared.kinds.get(t) ?? 'uuid');
    const ins = db.prepare(`INSERT INTO acm2_id_map (seed_version, kind, source_id, target_id) VALUES (?, ?, ?, ?)`);
    for (const a of added) {
      ins.run(version, a.kind, a.source, a.target);
      map.set(a.source, a.target);
    }
    setMeta(db, userId, 'in_progress', version, null);
    db.prepare(`INSERT INTO acm2_seed_state (seed_version, status, started_at) VALUES (?, 'in_progress', ?)
                ON CONFLICT(seed_version) DO UPDATE SET status = 'in_progress', started_at = excluded.started_at, finished_at = NULL, last_error = NULL`).run(version, new Date().toISOString());
    return map;
  }).immediate();
}

interface WrittenFile {
  path: string;
  sourcePath: string;
  bytes: number;
  sha256: string;
}

function stageFiles(prepared: PreparedPackage, map: Map<string, string>, staging: string): WrittenFile[] {
  mkdirSync(staging, { recursive: true, mode: 0o700 });
  const dirs = new Set<string>();
  const out: WrittenFile[] = [];
  const written: string[] = [];
  for (const f of prepared.files) {
    const rel = render(f.path, map);
    const abs = resolveInside(staging, rel);
    const dir = path.dirname(abs);
    if (!dirs.has(dir)) {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      dirs.add(dir);
    }
    const w = writeFileDurable(abs, f.text ? render(f.text, map) : readFileSync(f.abs), { mode: 0o600, fsync: false });
    out.push({ path: rel, sourcePath: f.sourcePath, ...w });
    written.push(abs);
  }
  syncFiles(written, staging);
  // Staging folders need no fsync: what must survive is each file's data (fsynced above) and
  // its entry in the final folder, which moveIntoPlace fsyncs after the renames.
  return out;
}

/**
 * Move each staged file to its place under the user root. Targets are under this user's new
 * run folder (a fresh id only this tool could have made) or files this seed recorded before,
 * so replacing them never touches data the tool did not create.
 */
function moveIntoPlace(staging: string, root: string, rels: string[]): void {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const dirs = new Set<string>();
  for (const rel of rels) {
    const target = resolveInside(root, rel);
    const dir = path.dirname(target);
    if (!dirs.has(dir)) {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      dirs.add(dir);
    }
    renameSync(resolveInside(staging, rel), target);
  }
  for (const d of dirs) fsyncPath(d);
  fsyncPath(root);
}

/** The commit point: rows, seeded-file list and `ready`, in one transaction. */
function commitRows(
  db: SqliteDb,
  userId: UserId,
  prepared: PreparedPackage,
  map: Map<string, string>,
  version: string,
  written: WrittenFile[],
  seededAt: string,
): number {
  return db.transaction(() => {
    let n = 0;
    for (const t of prepared.tables) {
      if (t.rows.length === 0) continue;
      const stmt = db.prepare(`INSERT OR REPLACE INTO ${t.name} (${t.columns.join(', ')}) VALUES (${t.columns.map(() => '?').join(', ')})`);
      for (const r of t.rows) {
        const values = r.map((v: Cell, i) => (i === t.userIdIndex ? userId : isTemplate(v) ? render(v, map) : v));
        stmt.run(values);
        n++;
      }
    }
    db.prepare(`DELETE FROM acm2_seed_files WHERE seed_version = ?`).run(version);
    const ins = db.prepare(`INSERT INTO acm2_seed_files (seed_version, path, source_path, bytes, sha256) VALUES (?, ?, ?, ?, ?)`);
    for (const w of written) ins.run(version, w.path, w.sourcePath, w.bytes, w.sha256);
    setMeta(db, userId, 'ready', version, seededAt);
    db.prepare(`UPDATE acm2_seed_state SET status = 'ready', finished_at = ?, last_error = NULL WHERE seed_version = ?`).run(new Date().toISOString(), version);
    return n;
  }).immediate();
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
export function cleanStaging(dataDir: string, userId: UserId): void {
  const dir = toolDir(dataDir, 'staging');
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name.startsWith(`user_${userId}-`)) rmSync(path.join(dir, name), { recursive: true, force: true });
  }
}

// Opens and migrates a per-user SQLite DB (ACM2's schema plus the tool's tables).
// Migrations are ordered and checksummed; the ledger lives in the DB itself.

import Database from 'better-sqlite3';
import { existsSync, mkdirSync, chmodSync } from 'node:fs';
import path from 'node:path';
import { loadMigrations, type Migration } from '../migrations.js';
import { UsageError } from '../errors.js';
import { userDbPath, type UserId } from './paths.js';

export type SqliteDb = Database.Database;

export const USER_MIGRATIONS = 'user';

const LEDGER_DDL = `CREATE TABLE IF NOT EXISTS acm2_migrations (
  id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)`;

export function userMigrations(): Migration[] {
  return loadMigrations(USER_MIGRATIONS);
}

export interface OpenUserDbOptions {
  /** Create the file (0600) if it does not exist. */
  create?: boolean;
  readonly?: boolean;
  /** Milliseconds to wait on a locked DB. */
  busyTimeoutMs?: number;
}

export function openSqlite(file: string, opts: OpenUserDbOptions = {}): SqliteDb {
  const exists = existsSync(file);
  if (!exists && !opts.create) throw new UsageError(`database ${file} does not exist`, 'db_missing');
  if (!exists) {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  }
  const db = new Database(file, { readonly: opts.readonly ?? false, fileMustExist: !opts.create });
  db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 5000}`);
  if (!exists) chmodSync(file, 0o600);
  return db;
}

export function openUserDb(dataDir: string, id: UserId, opts: OpenUserDbOptions = {}): SqliteDb {
  return openSqlite(userDbPath(dataDir, id), opts);
}

export interface AppliedMigration {
  id: number;
  name: string;
  checksum: string;
}

export function appliedMigrations(db: SqliteDb): AppliedMigration[] {
  const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='acm2_migrations'`).get();
  if (!has) return [];
  return db.prepare(`SELECT id, name, checksum FROM acm2_migrations ORDER BY id`).all() as AppliedMigration[];
}

export function pendingMigrations(db: SqliteDb): Migration[] {
  const applied = appliedMigrations(db);
  const all = userMigrations();
  for (const a of applied) {
    const m = all.find((x) => x.id === a.id);
    if (!m) throw new UsageError(`user DB has migration ${a.name} that this tool does not know (newer tool?)`, 'schema_newer');
    if (m.checksum !== a.checksum) throw new UsageError(`user DB migration ${a.name} was applied with a different checksum`, 'migration_checksum');
  }
  return all.filter((m) => !applied.some((a) => a.id === m.id));
}

/** Apply every pending migration, each in its own transaction with its ledger row. */
export function migrateUserDb(db: SqliteDb, now = new Date()): Migration[] {
  adoptAcm2Db(db, now);
  db.exec(LEDGER_DDL);
  const pending = pendingMigrations(db);
  for (const m of pending) {
    db.transaction(() => {
      db.exec(m.sql);
      db.prepare(`INSERT INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`).run(
        m.id,
        m.name,
        m.checksum,
        now.toISOString(),
      );
    })();
  }
  return pending;
}

/**
 * A DB that ACM2 created itself (create_all, no ledger) already has migration 1's tables:
 * record that baseline instead of running it again. Returns whether it adopted the DB.
 */
export function adoptAcm2Db(db: SqliteDb, now = new Date()): boolean {
  if (appliedMigrations(db).length > 0) return false;
  const has = db.prepare(`SELECT 1 FROM sqlite_master WHERE type='table' AND name='contents'`).get();
  if (!has) return false;
  recordBaseline(db, 1, now);
  return true;
}

/** Record migrations as applied without running them (adopting a DB ACM2 created itself). */
export function recordBaseline(db: SqliteDb, upTo: number, now = new Date()): void {
  db.exec(LEDGER_DDL);
  const ins = db.prepare(`INSERT OR IGNORE INTO acm2_migrations (id, name, checksum, applied_at) VALUES (?, ?, ?, ?)`);
  for (const m of userMigrations().filter((x) => x.id <= upTo)) ins.run(m.id, m.name, m.checksum, now.toISOString());
}

export function isSchemaCurrent(db: SqliteDb): boolean {
  try {
    return pendingMigrations(db).length === 0 && appliedMigrations(db).length > 0;
  } catch {
    return false;
  }
}

/** ACM2's eleven tables, in schema.sql order. */
export const ACM2_TABLES = [
  'documents',
  'contents',
  'github_connections',
  'provider_keys',
  'usage_stats',
  'user_meta',
  'user_settings',
  'presets',
  'runs',
  'tasks',
  'artifacts',
] as const;
export type Acm2Table = (typeof ACM2_TABLES)[number];

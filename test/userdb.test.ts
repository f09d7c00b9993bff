// The per-user DB the tool creates has ACM2's tables and columns exactly (schema.sql of 5107384),
// plus the tool's own tables; migrations are ordered, checksummed and run once.
import { afterAll, describe, expect, it } from 'vitest';
import Database from 'better-sqlite3';
import { existsSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpDir } from './helpers/env.js';
import { migrateUserDb, openUserDb, pendingMigrations, ACM2_TABLES } from '../src/userdb/user-db.js';
import { parseUserId, resolveUnderUser, toolDir, userDbPath, userRoot } from '../src/userdb/paths.js';
import { userDbTemplate } from '../src/userdb/template.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
// The schema as the ACM2 reference gives it (shared/), else our verbatim copy of it.
const SHARED = path.resolve(REPO, process.env.ACM2_SHARED_DIR ?? '../shared', 'acm2', 'schema.sql');
const SCHEMA_FILE = existsSync(SHARED) ? SHARED : path.join(REPO, 'migrations/user/0001_acm2_schema.sql');

const dir = tmpDir('acm2-userdb-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function tableInfo(db: Database.Database, table: string) {
  return db.prepare(`PRAGMA table_info(${table})`).all();
}
function indexes(db: Database.Database, table: string) {
  return (db.prepare(`PRAGMA index_list(${table})`).all() as { name: string; unique: number }[]).map((i) => [i.name, i.unique]).sort();
}

describe('per-user DB', () => {
  it("has ACM2's tables and columns exactly, as schema.sql creates them", () => {
    const reference = new Database(':memory:');
    reference.exec(readFileSync(SCHEMA_FILE, 'utf8'));
    const db = openUserDb(dir, 42, { create: true });
    migrateUserDb(db);
    const refTables = (reference.prepare(`SELECT name FROM sqlite_master WHERE type='table' ORDER BY name`).all() as { name: string }[]).map((r) => r.name);
    expect([...ACM2_TABLES].sort()).toEqual(refTables);
    for (const t of refTables) {
      expect(tableInfo(db, t), t).toEqual(tableInfo(reference, t));
      expect(indexes(db, t), t).toEqual(indexes(reference, t));
      expect(db.prepare(`PRAGMA foreign_key_list(${t})`).all(), t).toEqual(reference.prepare(`PRAGMA foreign_key_list(${t})`).all());
    }
    const tool = (db.prepare(`SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'acm2_%' ORDER BY name`).all() as { name: string }[]).map((r) => r.name);
    expect(tool).toEqual(['acm2_id_map', 'acm2_migrations', 'acm2_seed_files', 'acm2_seed_state']);
    db.close();
    reference.close();
  });

  it('runs each migration once and refuses a changed checksum', () => {
    const db = openUserDb(dir, 43, { create: true });
    expect(migrateUserDb(db).map((m) => m.id)).toEqual([1, 2]);
    expect(migrateUserDb(db)).toEqual([]);
    db.prepare(`UPDATE acm2_migrations SET checksum = 'x' WHERE id = 1`).run();
    expect(() => pendingMigrations(db)).toThrow(/different checksum/);
    db.close();
  });

  it('creates the DB file 0600 and derives every path from the id', () => {
    const db = openUserDb(dir, 44, { create: true });
    db.close();
    expect(userDbPath(dir, 44)).toBe(path.join(path.resolve(dir), 'user_44.db'));
    expect(userRoot(dir, 44)).toBe(path.join(path.resolve(dir), 'user_44'));
    expect(() => resolveUnderUser(dir, 44, '../user_45/x')).toThrow(/would leave/);
    expect(() => resolveUnderUser(dir, 44, '/etc/passwd')).toThrow(/would leave/);
    expect(resolveUnderUser(dir, 44, 'runs/a/b.md')).toBe(path.join(userRoot(dir, 44), 'runs/a/b.md'));
    for (const bad of ['0', '-1', 'abc', '1e3', '1.5', '99999999999999999']) expect(() => parseUserId(bad)).toThrow();
  });
});

describe('the user DB template', () => {
  it("removes a template a killed process left half built, and leaves a live process's alone (on this host or another)", () => {
    const data = path.join(dir, 'template-litter');
    const templates = toolDir(data, 'templates');
    mkdirSync(templates, { recursive: true });
    const dead = path.join(templates, `user-0123456789abcdef.db.${hostname()}.999999999.0a1b2c3d.tmp`);
    const deadJournal = `${dead}-journal`;
    const live = path.join(templates, `user-0123456789abcdef.db.${hostname()}.1.0a1b2c3d.tmp`); // pid 1 is always there
    // Another host's build: its pid means nothing here; only its age says it is dead.
    const elsewhere = path.join(templates, 'user-0123456789abcdef.db.other-host.example.999999999.0a1b2c3d.tmp');
    const elsewhereOld = path.join(templates, 'user-0123456789abcdef.db.other-host.example.999999998.0a1b2c3d.tmp');
    for (const f of [dead, deadJournal, live, elsewhere, elsewhereOld]) writeFileSync(f, 'half built');
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    utimesSync(elsewhereOld, twoHoursAgo, twoHoursAgo);
    const file = userDbTemplate(data);
    expect(existsSync(file)).toBe(true);
    expect(existsSync(dead)).toBe(false);
    expect(existsSync(deadJournal)).toBe(false);
    expect(existsSync(live)).toBe(true);
    expect(existsSync(elsewhere)).toBe(true);
    expect(existsSync(elsewhereOld)).toBe(false);
  });
});

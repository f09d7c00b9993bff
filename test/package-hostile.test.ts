// Hostile packages whose hashes are all correct (re-sealed with the tool's own hashing): seed.db or
// the manifest holds something a frozen package never does. seed check fails them, and every
// consumer refuses them with exit 2 before anything is written. Also: seed list on a broken CURRENT.

import Database from 'better-sqlite3';
import { cpSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { run as seedList } from '../src/cli/seed-list.js';
import type { CommandCall } from '../src/cli/program.js';
import { createUser } from '../src/core/users.js';
import { PackageError } from '../src/errors.js';
import { dumpTable, sha256File } from '../src/seed/canonical.js';
import { computePackageSha256, type Manifest } from '../src/seed/manifest.js';
import { checkPackage, clearPackageCache, currentState, listPackages, loadPackage } from '../src/seed/package.js';
import { expectPackageRefused, frozenSource, snapshotTree, sqliteWorld, tmpDir } from './helpers/env.js';

const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const base = frozenSource();
const roots: string[] = [];
afterAll(() => {
  base.cleanup();
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

/**
 * A copy of the frozen package (as v1, CURRENT) with `sql` run on its seed.db, then re-sealed as
 * freeze would: the manifest's `tables` (these names, default the same as before), seedDb and
 * packageSha256 recomputed, so only a check of what the package holds can catch it.
 */
function hostile(sql: string, tables?: string[]): string {
  const root = tmpDir('acm2-hostile-');
  roots.push(root);
  const seeds = path.join(root, 'seeds');
  cpSync(base.seedsDir, seeds, { recursive: true });
  const dir = path.join(seeds, 'v1');
  const dbFile = path.join(dir, 'seed.db');
  const w = new Database(dbFile);
  w.pragma('foreign_keys = OFF'); // as the sqlite3 shell: a tamperer is not bound by them
  w.exec(sql);
  w.close();
  const file = path.join(dir, 'manifest.json');
  const m = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
  const db = new Database(dbFile, { readonly: true });
  // A name that can no longer be dumped (a view has no primary key or rowid) keeps its old entry.
  const reseal = (t: string) => {
    try {
      return dumpTable(db, t);
    } catch {
      return m.tables[t];
    }
  };
  m.tables = Object.fromEntries((tables ?? Object.keys(m.tables)).map((t) => [t, reseal(t)]));
  db.close();
  m.seedDb = sha256File(dbFile);
  m.packageSha256 = computePackageSha256(m);
  writeFileSync(file, `${JSON.stringify(m, null, 2)}\n`);
  clearPackageCache();
  return seeds;
}

const WITHOUT = (t: string) => ['contents', 'documents', 'presets', 'runs', 'tasks', 'artifacts'].filter((x) => x !== t);

/** The data dir's bytes, but for SQLite's shared-memory index of the open master (reads touch it). */
function dataSnapshot(dir: string): Record<string, string> {
  return Object.fromEntries(Object.entries(snapshotTree(dir)).filter(([rel]) => !rel.endsWith('-shm')));
}

/** seed check fails it; loadPackage and user create refuse it (exit 2) and the master gains nothing. */
async function expectRefused(seeds: string, problem: RegExp): Promise<void> {
  expect(expectPackageRefused(seeds, problem, /tampered|malformed|unsafe/).message).toMatch(problem);

  const world = await sqliteWorld();
  try {
    const before = dataSnapshot(world.dataDir);
    const deps = { master: world.master, dataDir: world.dataDir, seedsDir: seeds, lockTimeoutMs: 1000 };
    await expect(createUser(deps, { email: 'u1@example.com', username: 'u1' })).rejects.toThrow(PackageError);
    expect(await world.master.findUserByEmail('u1@example.com')).toBeUndefined();
    expect(await world.master.countUsers()).toBe(0);
    expect(dataSnapshot(world.dataDir)).toEqual(before);
  } finally {
    await world.cleanup();
  }
}

describe('hostile packages with correct hashes', () => {
  it('the re-sealing helper alone leaves a package that passes (and seeds)', async () => {
    const seeds = hostile('SELECT 1');
    expect(checkPackage(seeds, 'v1')).toEqual({ version: 'v1', ok: true, problems: [] });
    const world = await sqliteWorld();
    try {
      const r = await createUser({ master: world.master, dataDir: world.dataDir, seedsDir: seeds, lockTimeoutMs: 1000 }, { email: 'u1@example.com', username: 'u1' });
      expect(r.seed.status).toBe('ready');
    } finally {
      await world.cleanup();
    }
  });

  // Fix 9: columns must be a subset of the user schema's, and every package table present.
  it('a package table with a column the user schema lacks (contents.evil) is refused', async () => {
    const seeds = hostile(`ALTER TABLE contents ADD COLUMN evil TEXT; UPDATE contents SET evil = 'x';`);
    await expectRefused(seeds, /table contents has column "evil", which the user schema lacks/);
  });

  it('a package table missing from both seed.db and the manifest (no tasks) is refused', async () => {
    const seeds = hostile('DROP TABLE tasks;', WITHOUT('tasks'));
    await expectRefused(seeds, /manifest tables lacks tasks \(a package holds every one of /);
  });

  it('a package table that lacks a column seeding needs (contents.user_id) is refused', async () => {
    const seeds = hostile('DROP INDEX ix_contents_user_id; ALTER TABLE contents DROP COLUMN user_id;');
    await expectRefused(seeds, /table contents lacks column user_id, which seeding needs/);
  });

  // Fix 10: only real tables (and their indexes) in seed.db.
  it('contents as a VIEW over a hidden table with an extra row, left out of the manifest, is refused', async () => {
    const seeds = hostile(
      `CREATE TABLE hidden AS SELECT * FROM contents;
       INSERT INTO hidden SELECT 'aaaaaaaa-0000-4000-8000-000000000001', user_id, created_at, updated_at, 'SMUGGLED', content_type, body, variables, description, tags, is_deleted FROM contents LIMIT 1;
       DROP TABLE contents;
       CREATE VIEW contents AS SELECT * FROM hidden;`,
      WITHOUT('contents'),
    );
    await expectRefused(seeds, /manifest tables lacks contents/);
  });

  it('contents as a VIEW while the manifest still lists contents is refused', async () => {
    const seeds = hostile(`CREATE TABLE hidden AS SELECT * FROM contents; DROP TABLE contents; CREATE VIEW contents AS SELECT * FROM hidden;`);
    await expectRefused(seeds, /seed\.db holds (a view "contents"|table "hidden")/);
    const problems = checkPackage(seeds, 'v1').problems;
    expect(problems).toContain('seed.db holds a view "contents"; a package holds only tables');
    expect(problems).toContain('seed.db holds table "hidden", which is not a package table');
  });

  it('a trigger in seed.db is refused', async () => {
    const seeds = hostile('CREATE TRIGGER t AFTER INSERT ON contents BEGIN DELETE FROM contents; END;');
    await expectRefused(seeds, /seed\.db holds a trigger "t"; a package holds only tables/);
  });

  it('an extra table in seed.db that the manifest does not list is refused', async () => {
    const seeds = hostile(`CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT); INSERT INTO notes VALUES ('n1', 'secret');`);
    await expectRefused(seeds, /seed\.db holds table "notes", which is not a package table/);
  });

  it('a table name with a backslash and an ESC is quoted as found, and shown escaped once', async () => {
    const seeds = hostile('CREATE TABLE "a\\b\u001b" (id TEXT PRIMARY KEY);');
    expect(checkPackage(seeds, 'v1').problems).toContain('seed.db holds table "a\\b\u001b", which is not a package table');
    const listed = hostile('CREATE TABLE "a\\b\u001b" (id TEXT PRIMARY KEY);', [...WITHOUT(''), 'a\\b\u001b']);
    expect(checkPackage(listed, 'v1').problems).toContainEqual(expect.stringMatching(/^manifest lists table "a\\b\u001b", which is not a package table/));
    // Not JSON.stringify'd: the terminal's escaping would double JSON's backslashes ("a\\\\b\\u001b").
    const shown = spawnSync(process.execPath, [BIN, 'seed', 'check', '--seeds', seeds], { encoding: 'utf8', env: { ...process.env, NO_COLOR: '1' } });
    expect(shown.status).toBe(1);
    expect(shown.stdout).toContain('seed.db holds table "a\\\\b\\x1b", which is not a package table');
  });

  // Fix 11: the manifest lists exactly the package tables; credentials never.
  it('a manifest listing provider_keys (a credential row) is refused as credentials', async () => {
    const seeds = hostile(
      `INSERT INTO provider_keys (id, user_id, created_at, provider, encrypted_key, is_valid)
       VALUES ('aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee', 7, '2026-01-01 00:00:00', 'openai', 'sk-LIVE-SECRET-KEY', 1);`,
      [...WITHOUT(''), 'provider_keys'],
    );
    await expectRefused(seeds, /manifest lists table provider_keys, which holds credentials or personal state that a package must never hold/);
    expect(listPackages(seeds)[0]?.error).toMatch(/provider_keys/);
  });

  it('a manifest listing a table that is not a package table is refused', async () => {
    const seeds = hostile(`CREATE TABLE notes (id TEXT PRIMARY KEY); INSERT INTO notes VALUES ('n1');`, [...WITHOUT(''), 'notes']);
    await expectRefused(seeds, /manifest lists table "notes", which is not a package table/);
  });
});

describe('seed list with a broken CURRENT', () => {
  /** Run `acm2 seed list` in-process and return what it printed on stdout. */
  async function list(seeds: string, json: boolean): Promise<string> {
    let printed = '';
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      printed += String(chunk);
      return true;
    });
    await seedList({ args: [], opts: { seeds, json, color: false } } as unknown as CommandCall);
    vi.restoreAllMocks();
    return printed;
  }

  for (const [name, current] of [
    ['a version that does not exist', 'v9'],
    ['an invalid name', '../v1'],
  ] as const) {
    it(`CURRENT naming ${name}: a warning, and currentError in --json`, async () => {
      const seeds = hostile('SELECT 1');
      writeFileSync(path.join(seeds, 'CURRENT'), `${current}\n`);
      expect(currentState(seeds).error).toMatch(/CURRENT/);

      const human = await list(seeds, false);
      expect(human).toMatch(/warning: CURRENT is broken: .*CURRENT/);
      expect(human).not.toContain('* = CURRENT');

      const doc = JSON.parse(await list(seeds, true)) as { packages: Array<{ current: boolean }>; currentError?: string };
      expect(doc.packages).toMatchObject([{ version: 'v1', current: false }]);
      expect(doc.currentError).toMatch(/CURRENT/);
    });
  }

  it('seed check of the whole folder fails (exit 1) on a CURRENT naming a missing version; naming a version checks only that', async () => {
    const seeds = hostile('SELECT 1');
    writeFileSync(path.join(seeds, 'CURRENT'), 'v9\n');
    const cli = (...args: string[]) => spawnSync(process.execPath, [BIN, 'seed', 'check', '--seeds', seeds, '--json', ...args], { encoding: 'utf8' });
    const all = cli();
    expect(all.status).toBe(1);
    expect(JSON.parse(all.stdout)).toMatchObject({ ok: false, packages: [{ version: 'v1', ok: true }], currentError: expect.stringMatching(/names 'v9'/) });
    const one = cli('v1');
    expect(one.status).toBe(0);
    expect(JSON.parse(one.stdout).currentError).toBeUndefined();
  });

  it('a good CURRENT: marked, legend, no currentError', async () => {
    const seeds = hostile('SELECT 1');
    expect(currentState(seeds)).toEqual({ version: 'v1' });
    expect(await list(seeds, false)).toContain('* = CURRENT');
    const doc = JSON.parse(await list(seeds, true)) as Record<string, unknown>;
    expect(Object.keys(doc).sort()).toEqual(['packages', 'seedsDir']);
  });

  it('no CURRENT at all is not broken: no warning, says nothing is current', async () => {
    const seeds = hostile('SELECT 1');
    rmSync(path.join(seeds, 'CURRENT'));
    expect(currentState(seeds)).toEqual({});
    const human = await list(seeds, false);
    expect(human).not.toMatch(/warning|\* = CURRENT/);
    expect(human).toContain('No version is CURRENT');
  });
});

// A read command never changes the master, nor needs to: on a master the previous acm2 set up
// (every migration but those that add acm2_data_dir and acm2_undelivered_keys, which only the
// write commands read),
// user list, user show and verify read it as it is, where it is read-only too (a snapshot of the
// data dir, a SELECT-only MySQL account in CI), and add nothing to it. A write command migrates it.

import Database from 'better-sqlite3';
import mysql from 'mysql2/promise';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openMaster } from '../src/master/factory.js';
import { parseMasterUrl } from '../src/config.js';
import { loadMigrations } from '../src/migrations.js';
import { frozenSource, tmpDir, type FrozenSource } from './helpers/env.js';
import { createMysqlTestDb, mysqlOrSkip } from './helpers/mysql.js';

const run = promisify(execFile);
const BIN = fileURLToPath(new URL('../bin/acm2.js', import.meta.url));
const gate = await mysqlOrSkip();
let pkg: FrozenSource;
const dirs: string[] = [];

beforeAll(() => {
  pkg = frozenSource();
});
afterAll(() => {
  pkg.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function acm2(dataDir: string, master: string, args: string[]) {
  try {
    const r = await run(process.execPath, [BIN, '--data-dir', dataDir, '--master', master, '--seeds', pkg.seedsDir, ...args, '--json'], { env: { ...process.env, ACM2_BCRYPT_ROUNDS: '4' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

/** The read commands, as CI and an operator run them: each answers, none refuses the master. */
async function readsWork(dataDir: string, master: string): Promise<void> {
  const list = await acm2(dataDir, master, ['user', 'list']);
  expect(list.code, list.stdout + list.stderr).toBe(0);
  expect(JSON.parse(list.stdout)).toMatchObject({ users: [{ id: 1, username: 'ann', status: 'pending' }] });
  const show = await acm2(dataDir, master, ['user', 'show', 'ann@example.com']);
  expect(show.code, show.stdout + show.stderr).toBe(0);
  expect(JSON.parse(show.stdout)).toMatchObject({ id: 1, status: 'pending', job: { status: 'pending' } });
  const verify = await acm2(dataDir, master, ['verify']);
  // Findings about the user (not seeded yet), not an error about the master.
  expect(verify.code, verify.stdout + verify.stderr).toBe(1);
  expect(JSON.parse(verify.stdout)).toMatchObject({ checked: 1, users: [{ id: 1 }] });
}

/** The tables of the migrations the previous acm2 (d5a88ac) did not have, newest last. */
const NEWER = ['acm2_data_dir', 'acm2_undelivered_keys'];
const newerMigrations = (dialect: string) => {
  const list = loadMigrations(`master/${dialect}`).slice(-NEWER.length);
  expect(list.map((m) => m.name.replace(/^\d{4}_/, ''))).toEqual(NEWER);
  return list;
};
/** The data dir as the previous acm2 left it: no pairing stamp. */
const unstamp = (dataDir: string) => rmSync(path.join(dataDir, '.acm2', 'data-dir.json'));

/** The embedded master and its data dir as the previous acm2 left them; the migrations it lacked. */
function setBackEmbedded(dataDir: string) {
  const newer = newerMigrations('sqlite');
  const db = new Database(path.join(dataDir, 'master.db'));
  for (const t of NEWER) db.exec(`DROP TABLE ${t}`);
  for (const m of newer) db.prepare('DELETE FROM acm2_master_migrations WHERE id = ?').run(m.id);
  db.close();
  unstamp(dataDir);
  return newer;
}

/**
 * A MySQL master with user ann (created with `createArgs`) and its data dir, as the previous acm2
 * left them; an admin connection to it. The caller ends the connection and drops the database.
 */
async function setBackMysql(createArgs: string[]) {
  const db = await createMysqlTestDb();
  const base = new URL(db.url);
  const dbName = base.pathname.slice(1);
  const admin = await mysql.createConnection({ host: base.hostname, port: Number(base.port || 3306), user: decodeURIComponent(base.username), password: decodeURIComponent(base.password) });
  const dataDir = tmpDir('acm2-behind-my-');
  dirs.push(dataDir);
  try {
    expect((await acm2(dataDir, db.url, ['user', 'create', '--email', 'ann@example.com', '--username', 'ann', ...createArgs])).code).toBe(0);
    for (const t of NEWER) await admin.query(`DROP TABLE \`${dbName}\`.${t}`);
    for (const m of newerMigrations('mysql')) await admin.query(`DELETE FROM \`${dbName}\`.acm2_master_migrations WHERE id = ?`, [m.id]);
    unstamp(dataDir);
  } catch (e) {
    await admin.end();
    await db.drop();
    throw e;
  }
  return { db, dbName, admin, dataDir };
}

/** The embedded master's tables and applied migrations. */
function embeddedSchema(dataDir: string): unknown[][] {
  const d = new Database(path.join(dataDir, 'master.db'), { readonly: true });
  try {
    return [d.prepare(`SELECT name FROM sqlite_master ORDER BY name`).pluck().all(), d.prepare('SELECT id FROM acm2_master_migrations ORDER BY id').pluck().all()];
  } finally {
    d.close();
  }
}

describe('read commands on a master the previous acm2 set up', () => {
  it('embedded: read as it is, nothing added to it; user create then migrates it', async () => {
    const dataDir = tmpDir('acm2-behind-');
    dirs.push(dataDir);
    const url = `sqlite:${path.join(dataDir, 'master.db')}`;
    expect((await acm2(dataDir, url, ['user', 'create', '--email', 'ann@example.com', '--username', 'ann', '--async'])).code).toBe(0);
    const newer = setBackEmbedded(dataDir);
    const schema = () => embeddedSchema(dataDir);
    const before = schema();
    await readsWork(dataDir, url);
    expect(schema()).toEqual(before);
    expect((await acm2(dataDir, url, ['user', 'create', '--email', 'ben@example.com', '--username', 'ben', '--async'])).code).toBe(0);
    for (const m of newer) expect(schema()[1]).toContain(m.id);
  });

  describe.skipIf(gate.skip)('MySQL', () => {
    beforeAll(() => gate.ready());

    it('a SELECT-only account (verify in CI) reads it; it is not told to find an account that may migrate', async () => {
      const { db, dbName, admin, dataDir } = await setBackMysql(['--async']);
      const user = `acm2_ro_${randomBytes(4).toString('hex')}`;
      try {
        for (const host of ['%', 'localhost']) {
          await admin.query(`CREATE USER '${user}'@'${host}' IDENTIFIED BY 'ro-pw'`);
          await admin.query(`GRANT SELECT ON \`${dbName}\`.* TO '${user}'@'${host}'`);
        }
        const ro = new URL(db.url);
        ro.username = user;
        ro.password = 'ro-pw';
        await readsWork(dataDir, ro.toString());
        // Still behind: nothing was applied (nor could be), and a writing open still asks for the grants.
        const refused = await openMaster(parseMasterUrl(ro.toString())).catch((e: unknown) => e);
        expect(refused).toMatchObject({ exitCode: 3, code: 'master_access_denied' });
      } finally {
        await admin.query(`DROP USER IF EXISTS '${user}'@'%'`).catch(() => undefined);
        await admin.query(`DROP USER IF EXISTS '${user}'@'localhost'`).catch(() => undefined);
        await admin.end();
        await db.drop();
      }
    });
  });
});

// A write command given a data dir that is not the master's refuses before it migrates the master,
// not after: "nothing was written" holds for the master too, and a mistyped --data-dir given to a
// new acm2 does not leave production's master migrated past what the release still running there
// accepts (it refuses a master a newer acm2 migrated: master_newer).
describe('a write command with a data dir that is not the master\'s, on a master the previous acm2 set up', () => {
  const refusedUnchanged = async (dataDir: string, master: string, schema: () => Promise<unknown>) => {
    const before = await schema();
    const wrong = tmpDir('acm2-behind-wrong-');
    dirs.push(wrong);
    for (const args of [['backfill'], ['user', 'create', '--email', 'cy@example.com', '--username', 'cy'], ['user', 'seed', '--pending']]) {
      const r = await acm2(wrong, master, args);
      expect(r.code, r.stdout + r.stderr).toBe(2);
      expect(JSON.parse(r.stdout)).toMatchObject({ error: { code: 'data_dir_not_paired', message: expect.stringContaining('nothing was written') } });
    }
    expect(await schema()).toEqual(before);
    // Its own data dir: migrated and paired as before.
    const ok = await acm2(dataDir, master, ['backfill']);
    expect(ok.code, ok.stdout + ok.stderr).toBe(0);
    expect(await schema()).not.toEqual(before);
  };

  it('embedded: refused with the master left as it was', async () => {
    const dataDir = tmpDir('acm2-behind-w-');
    dirs.push(dataDir);
    const url = `sqlite:${path.join(dataDir, 'master.db')}`;
    expect((await acm2(dataDir, url, ['user', 'create', '--email', 'ann@example.com', '--username', 'ann'])).code).toBe(0);
    setBackEmbedded(dataDir);
    await refusedUnchanged(dataDir, url, async () => embeddedSchema(dataDir));
  });

  describe.skipIf(gate.skip)('MySQL', () => {
    beforeAll(() => gate.ready());

    it('refused with the master left as it was', async () => {
      const { db, dbName, admin, dataDir } = await setBackMysql([]);
      try {
        const schema = async () => {
          const [tables] = await admin.query(`SELECT table_name AS t FROM information_schema.tables WHERE table_schema = ? ORDER BY t`, [dbName]);
          const [ids] = await admin.query(`SELECT id FROM \`${dbName}\`.acm2_master_migrations ORDER BY id`);
          return [tables, ids];
        };
        await refusedUnchanged(dataDir, db.url, schema);
      } finally {
        await admin.end();
        await db.drop();
      }
    });
  });
});

// A read command on a master behind by a migration reads need (MySQL's 0003, which makes names
// compare byte for byte): it is migrated as before, and the check before that migration applies
// the read rules, as the check after it does (a master that records no data dir is read as it is).
describe('a read command on a master behind by a migration reads need', () => {
  describe.skipIf(gate.skip)('MySQL', () => {
    beforeAll(() => gate.ready());

    it('is judged by the read rules before the migration too', async () => {
      const { db, dbName, admin } = await setBackMysql([]);
      try {
        const names = loadMigrations('master/mysql').filter((m) => m.name.endsWith('case_sensitive_names'));
        expect(names).toHaveLength(1);
        await admin.query(`DELETE FROM \`${dbName}\`.acm2_master_migrations WHERE id = ?`, [names[0]!.id]);
        // Another folder, holding none of the users' DBs: the write rules would refuse it.
        const other = tmpDir('acm2-behind-r-other-');
        dirs.push(other);
        const r = await acm2(other, db.url, ['verify']);
        expect(r.code, r.stdout + r.stderr).toBe(1);
        expect(JSON.parse(r.stdout)).toMatchObject({ checked: 1, users: [{ id: 1, problems: expect.arrayContaining([expect.objectContaining({ code: 'db_missing' })]) }] });
      } finally {
        await admin.end();
        await db.drop();
      }
    });
  });
});
